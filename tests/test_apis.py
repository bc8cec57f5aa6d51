"""Wire-level tests of mmlab.apis: the real provider SDKs against fake servers on 127.0.0.1.

Every test key contains KEY_MARK; the last tests check that no key reached a log record, captured
output, a repr, an error message or a cache file. The hostile servers are in test_apis_transport.py.
"""
import base64
import json
import logging
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from PIL import Image

import fake_apis
from fake_apis import BACKENDS, IDS, KEY_MARK, SEEN_KEYS, assert_no_test_key_in_files, jpeg, new_key, png
from mmlab import apis
from mmlab.apis import (APITimeoutError, AuthenticationError, ChatResponse, Conversation, ImageTooLargeError,
                        MissingKeyError, OfflineError, RateLimitError, RefusalError, ServerError, UnknownModelError,
                        UnknownProviderError, Usage, encode_image, estimate_cost, get_client)
from mmlab.apis_testing import FakeServer, Fault, example_for_schema


@pytest.fixture(autouse=True)
def lab_env(tmp_path, monkeypatch): return fake_apis.lab_env(tmp_path, monkeypatch)


@pytest.fixture(params=BACKENDS, ids=IDS)
def backend(request): yield from fake_apis.serve_backend(*request.param)


# ---------------------------------------------------------------- what the SDKs send

def test_request_on_the_wire(backend, tmp_path):
    provider, sdk, srv, make, key = backend
    p = tmp_path / "red.png"; p.write_bytes(png())
    c = make(cache=False)
    r = c.chat("What colours are these?", images=[p, jpeg()], system="Answer in one word.", temperature=0, max_tokens=20)
    (rec,) = srv.requests
    assert rec.problems == [] and rec.key_ok
    assert [i["media_type"] for i in rec.images] == ["image/png", "image/jpeg"]
    assert [i["bytes"] for i in rec.images] == [len(png()), len(jpeg())]
    b = rec.body
    if provider == "openai":
        assert rec.path == "/v1/chat/completions" and rec.auth == "bearer"
        assert b["model"] == "gpt-4o-mini" and b["messages"][0] == {"role": "system", "content": "Answer in one word."}
        assert b["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
        assert b["temperature"] == 0 and b["max_completion_tokens"] == 20
    elif provider == "anthropic":
        assert rec.path == "/v1/messages" and rec.auth in ("bearer", "x-api-key")
        assert b["system"] == "Answer in one word." and b["max_tokens"] == 20 and b["temperature"] == 0
        src = b["messages"][0]["content"][0]["source"]
        assert src["type"] == "base64" and src["media_type"] == "image/png" and base64.b64decode(src["data"]) == png()
    else:
        version = "v1" if sdk == "google-genai" else "v1beta"
        assert rec.path == f"/{version}/models/gemini-2.5-flash:generateContent" and rec.auth == "x-goog-api-key"
        assert b["systemInstruction"]["parts"][0]["text"] == "Answer in one word."
        cfg = b["generationConfig"]
        assert cfg["temperature"] == 0 and cfg["maxOutputTokens"] == 20
        part = b["contents"][0]["parts"][0]
        data = part.get("inlineData") or part.get("inline_data")
        assert (data.get("mimeType") or data.get("mime_type")) == "image/png"
    assert r.text.startswith(f"[fake {provider}] images: 2 (image/png, image/jpeg); system prompt: yes")
    assert r.usage == Usage(2 * 85 + 4 + 4, len(r.text.split()))     # the fake server's deterministic counts
    assert r.cost == pytest.approx(estimate_cost(provider, r.model if provider != "gemini" else "gemini-2.5-flash", r.usage))
    assert r.provider == provider and r.retries == 0 and not r.cached


def test_streaming(backend):
    provider, sdk, srv, make, key = backend
    c = make(cache=False)
    s = c.stream("describe", images=png(), max_tokens=30)
    pieces = list(s)
    assert len(pieces) >= 2 and "".join(pieces) == s.response.text
    (rec,) = srv.requests
    assert rec.stream and rec.problems == []
    if provider == "openai": assert rec.body["stream_options"] == {"include_usage": True}
    if sdk == "google-genai": assert rec.query.get("alt") == "sse"
    assert s.response.usage.input_tokens == 85 + 1 and s.response.usage.output_tokens == len(s.response.text.split())
    # chat(stream=True) with a callback gives the same answer
    got = []
    r = c.chat("describe", images=png(), max_tokens=30, stream=True, on_text=got.append)
    assert "".join(got) == r.text == s.response.text


def test_roles_of_a_conversation(backend):
    provider, sdk, srv, make, key = backend
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi", "images": [png()]},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What colour?"}]
    make(cache=False).chat(msgs)
    rec = srv.requests[-1]
    expected = {"openai": ["system", "user", "assistant", "user"], "anthropic": ["user", "assistant", "user"],
                "gemini": ["user", "model", "user"]}[provider]
    assert rec.roles == expected and rec.problems == []


def test_json_output(backend):
    provider, sdk, srv, make, key = backend
    schema = {"type": "object", "properties": {"caption": {"type": "string"}, "objects": {"type": "array", "items": {"type": "string"}},
                                               "count": {"type": "integer"}}, "required": ["caption"]}
    r = make(cache=False).chat("Caption this", images=png(), json_schema=schema)
    assert r.data == example_for_schema(schema) and json.loads(r.text) == r.data
    b = srv.requests[-1].body
    if provider == "openai": assert b["response_format"]["json_schema"]["schema"] == schema
    elif provider == "anthropic": assert b["output_config"]["format"] == {"type": "json_schema", "schema": schema}
    elif sdk == "google-genai": assert b["generationConfig"]["responseJsonSchema"] == schema
    else: assert b["generationConfig"]["responseMimeType"] == "application/json"


def test_image_url(backend):
    provider, sdk, srv, make, key = backend
    srv.images["/pics/cat.png"] = png(12, 8)
    url = srv.base_url.removesuffix("/v1") + "/pics/cat.png"
    make(cache=False).chat("what is it?", images=url)
    rec = srv.requests[-1]
    assert rec.problems == []
    if provider == "gemini": assert rec.images == [{"media_type": "image/png", "bytes": len(png(12, 8))}]   # downloaded, inlined
    else: assert rec.images == [{"url": url}]                                                               # the provider fetches it


# ---------------------------------------------------------------- faults and retries

@pytest.mark.parametrize("fault", [Fault.server_error(), Fault.server_error(503), Fault.malformed(), Fault.rate_limited(None)],
                         ids=["500", "503", "malformed", "429-no-retry-after"])
def test_transient_fault_then_success(backend, fault):
    provider, sdk, srv, make, key = backend
    srv.fail_next(fault)
    r = make(cache=False).chat("hello")
    assert r.retries == 1 and len(srv.requests) == 2 and [q.fault for q in srv.requests] == [fault.kind, None]
    assert r.text.startswith(f"[fake {provider}]")


@pytest.mark.parametrize("fault", [Fault.rate_limited(0.01), Fault.server_error(502), Fault.malformed()], ids=["429", "502", "malformed"])
def test_stream_is_retried_before_its_first_piece(backend, fault):
    provider, sdk, srv, make, key = backend
    srv.fail_next(fault)
    s = make(cache=False).stream("hello")
    pieces = list(s)
    assert s.response.retries == 1 and len(srv.requests) == 2 and srv.requests[0].stream
    assert len(pieces) >= 2 and "".join(pieces) == s.response.text


def test_stream_cut_short_after_text_is_an_error_not_a_retry(backend):
    provider, sdk, srv, make, key = backend
    srv.fail_next(Fault.truncate())
    got = []
    with pytest.raises(apis.ResponseFormatError, match="stream ended before|malformed"):
        make(cache=False).chat("hello", stream=True, on_text=got.append)
    assert len(srv.requests) == 1 and srv.requests[0].fault == "truncate"
    assert got, "some text was delivered before the stream broke"


def test_retry_after_is_honoured(backend):
    provider, sdk, srv, make, key = backend
    srv.fail_next(Fault.rate_limited(0.4), Fault.rate_limited(0.2))
    t0 = time.perf_counter()
    r = make(cache=False, backoff_base=0.001).chat("hello")
    elapsed = time.perf_counter() - t0
    assert r.retries == 2 and len(srv.requests) == 3
    assert elapsed >= 0.6 - 0.02      # the backoff alone would wait about 3 ms


def test_retry_after_longer_than_max_delay_gives_up(backend):
    provider, sdk, srv, make, key = backend
    srv.fail_next(Fault.rate_limited(30))
    t0 = time.perf_counter()
    with pytest.raises(RateLimitError, match="more than max_delay") as ei:
        make(cache=False, max_delay=1).chat("hello")
    assert time.perf_counter() - t0 < 3 and len(srv.requests) == 1 and ei.value.status == 429


def test_persistent_errors_exhaust_retries(backend):
    provider, sdk, srv, make, key = backend
    srv.fail_next(*[Fault.server_error()] * 3)
    with pytest.raises(ServerError, match="gave up after 3 attempts") as ei:
        make(cache=False, max_retries=2).chat("hello")
    assert ei.value.attempts == 3 and ei.value.status == 500 and len(srv.requests) == 3


def test_hung_response_hits_timeout(backend):
    provider, sdk, srv, make, key = backend
    srv.fail_next(Fault.hang(10), Fault.hang(10))
    t0 = time.perf_counter()
    with pytest.raises(APITimeoutError) as ei:
        make(cache=False, timeout=0.3, max_retries=1).chat("hello")
    assert ei.value.attempts == 2 and len(srv.requests) == 2
    assert time.perf_counter() - t0 < 4


def test_hung_then_success(backend):
    provider, sdk, srv, make, key = backend
    srv.fail_next(Fault.hang(10))
    r = make(cache=False, timeout=0.3).chat("hello")
    assert r.retries == 1 and len(srv.requests) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_refusal_is_not_retried(backend, stream):
    provider, sdk, srv, make, key = backend
    srv.fail_next(Fault.refuse())
    with pytest.raises(RefusalError, match=f"{provider} refused"):
        make(cache=False).chat("something forbidden", stream=stream)
    assert len(srv.requests) == 1


def test_wrong_key_is_rejected_without_retry(backend):
    provider, sdk, srv, make, key = backend
    wrong = new_key(provider)
    with pytest.raises(AuthenticationError) as ei:
        make(api_key=wrong, cache=False).chat("hello")
    assert len(srv.requests) == 1 and not srv.requests[0].key_ok and ei.value.status == 401
    assert wrong not in str(ei.value) and key not in str(ei.value)


# ---------------------------------------------------------------- cache, offline, keys

def test_cache_hit_costs_nothing(backend, lab_env):
    provider, sdk, srv, make, key = backend
    c = make()
    first = c.chat("What colour?", images=png(), temperature=0)
    again = c.chat("What colour?", images=png(), temperature=0)
    assert len(srv.requests) == 1 and again.cached and again.cost == 0 and again.text == first.text and again.usage == first.usage
    c.chat("What colour?", images=png(), temperature=0.5)             # another temperature: another request
    c.chat("What colour?", images=png(10, 10), temperature=0)          # another image: another request
    assert len(srv.requests) == 3
    files = list((lab_env / "cache" / "api" / provider).glob("*.json"))
    assert len(files) == 3 and not list((lab_env / "cache").rglob("*.tmp"))
    # the cache answers offline and without a key
    keyless = get_client(provider, base_url=srv.base_url, **({"sdk": sdk} if sdk else {}))
    assert keyless.chat("What colour?", images=png(), temperature=0).cached and len(srv.requests) == 3
    # a corrupt entry is ignored and rewritten
    for f in files: f.write_text("{not json")
    assert not c.chat("What colour?", images=png(), temperature=0).cached and len(srv.requests) == 4


def test_missing_key(backend):
    provider, sdk, srv, make, key = backend
    env = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}[provider]
    with pytest.raises(MissingKeyError, match=env):
        get_client(provider, base_url=srv.base_url, cache=False, **({"sdk": sdk} if sdk else {})).chat("hello")
    assert srv.requests == []


def test_key_from_environment(backend, monkeypatch):
    provider, sdk, srv, make, key = backend
    monkeypatch.setenv({"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GOOGLE_API_KEY"}[provider], key)
    get_client(provider, base_url=srv.base_url, cache=False, **({"sdk": sdk} if sdk else {})).chat("hello")
    assert srv.requests[-1].key_ok


@pytest.mark.parametrize("provider,sdk", BACKENDS, ids=IDS)
def test_offline_refuses_public_endpoints(provider, sdk, monkeypatch):
    import socket
    def no_network(*a, **k): raise AssertionError("a socket was opened")
    monkeypatch.setattr(socket, "create_connection", no_network)
    c = get_client(provider, api_key=new_key(provider), cache=False, **({"sdk": sdk} if sdk else {}))
    with pytest.raises(OfflineError, match="offline mode is on"):
        c.chat("hello")


def test_offline_refuses_downloading_a_remote_image(monkeypatch):
    with FakeServer("gemini") as srv:
        c = get_client("gemini", api_key=new_key("gemini"), base_url=srv.base_url, cache=False)
        with pytest.raises(OfflineError):
            c.chat("what?", images="https://example.org/cat.png")
        assert srv.requests == []


def test_no_key_in_logs_output_reprs_errors_or_cache(backend, caplog, capsys, lab_env):
    provider, sdk, srv, make, key = backend
    caplog.set_level(logging.DEBUG)                       # every logger, SDKs and HTTP clients included
    c = make()
    texts = [repr(c), str(vars(c))]
    c.chat("hello", images=png(), system="s")
    c.chat("hello", images=png(), system="s")             # from the cache
    list(c.stream("stream me", max_tokens=5))
    srv.fail_next(Fault.rate_limited(0.01), Fault.malformed())
    c.chat("retry me")
    srv.fail_next(Fault.refuse())
    for bad in (lambda: c.chat("refuse me", use_cache=False),
                lambda: make(api_key=new_key(provider), cache=False).chat("wrong key")):
        try: bad()
        except Exception as e: texts += [str(e), repr(e)]
    out = capsys.readouterr()
    texts += [caplog.text, out.out, out.err] + [r.getMessage() for r in caplog.records]
    texts += [p.read_text() for p in (lab_env / "cache").rglob("*") if p.is_file()]
    texts += [repr(srv.requests)]
    assert any("retry 1 of 3" in t for t in texts)        # the logs were captured
    for t in texts:
        assert KEY_MARK not in t, t[:200]


# ---------------------------------------------------------------- input errors

def test_input_errors():
    with pytest.raises(UnknownProviderError, match="expected one of openai, anthropic, gemini, local"):
        get_client("mistral")
    with pytest.raises(UnknownModelError, match="unknown openai model 'gpt-3'"):
        get_client("openai", model="gpt-3")
    c = get_client("openai", model="my-finetune", allow_unknown_model=True, api_key=new_key("openai"), cache=False)
    assert c.model == "my-finetune"
    with pytest.raises(TypeError, match="unknown option"):
        get_client("openai", temprature=0)
    with pytest.raises(ValueError, match="last message must come from the user"):
        apis.as_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(ValueError, match="not an image the APIs accept"):
        encode_image(b"%PDF-1.4 not an image")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        encode_image("missing.png")


def test_oversized_image_is_refused_before_sending():
    with FakeServer("anthropic") as srv:
        c = get_client("anthropic", api_key=new_key("anthropic"), base_url=srv.base_url, cache=False)
        big = png(9000, 10)                                   # small in bytes, too wide for Anthropic
        with pytest.raises(ImageTooLargeError, match="9000x10 pixels"):
            c.chat("hi", images=big)
        c2 = get_client("anthropic", api_key=new_key("anthropic"), base_url=srv.base_url, cache=False, max_image_bytes=100)
        with pytest.raises(ImageTooLargeError, match=r"accepts at most 100 bytes"):
            c2.chat("hi", images=png())
        assert srv.requests == []
        assert apis.fit_image(big, max_side=1000).width == 1000


# ---------------------------------------------------------------- conversation memory

def test_conversation_ask_trim_save_load(tmp_path):
    with FakeServer("openai") as srv:
        c = get_client("openai", api_key=new_key("openai"), base_url=srv.base_url, cache=False)
        conv = Conversation(system="You are a tutor.", budget=120)
        conv.ask(c, "What is in this picture?", images=png(60, 40))
        for i in range(5): conv.ask(c, f"follow-up question number {i} " * 3)
        rec = srv.requests[-1]
        assert conv.tokens() <= 120 + 30                      # trimmed before sending, then one answer added
        assert rec.roles[0] == "system" and rec.roles[1] == "user" and rec.roles[-1] == "user"
        assert len(rec.roles) - 1 < 2 * 6                    # older turns were dropped
        p = conv.save(tmp_path / "chat.json")
        back = Conversation.load(p)
        assert back.turns == conv.turns and back.system == conv.system
        n = len(conv)
        srv.fail_next(Fault.refuse())
        with pytest.raises(RefusalError):
            conv.ask(c, "refuse this")
        assert len(conv) == n                                 # a failed turn leaves no trace
    first = Conversation(); first.add("user", "look", images=png(60, 40))
    p2 = first.save(tmp_path / "img.json")
    assert Conversation.load(p2).turns[0].images[0].data == png(60, 40)
    with pytest.raises(ValueError, match="not a saved conversation"):
        (tmp_path / "x.json").write_text('{"format": "other"}'); Conversation.load(tmp_path / "x.json")


# ---------------------------------------------------------------- properties

@hsettings(max_examples=50, deadline=None)
@given(k=st.integers(0, 12), base=st.floats(1e-3, 5), cap=st.floats(1e-3, 60), seed=st.integers(0, 2**16))
def test_backoff_stays_in_equal_jitter_bounds(k, base, cap, seed):
    import random
    d = min(cap, base * 2 ** k)
    w = apis.backoff_delay(k, apis.RetryPolicy(3, base, cap), random.Random(seed))
    assert d / 2 - 1e-12 <= w <= d + 1e-12


@hsettings(max_examples=25, deadline=None)
@given(text=st.text(max_size=40), temp=st.one_of(st.none(), st.floats(0, 2)), w=st.integers(1, 20), h=st.integers(1, 20))
def test_fingerprint_is_stable_and_keyless(text, temp, w, h):
    msgs, system = apis.as_messages(text or "x", images=png(w, h))
    req = apis.ChatRequest(msgs, "gpt-4o", system, temp)
    fp = apis.request_fingerprint(req, "openai", "http://127.0.0.1:9/v1?key=SECRET", "openai")
    cache = apis.ResponseCache("unused")
    assert cache.key(fp) == cache.key(apis.request_fingerprint(req, "openai", "http://127.0.0.1:9/v1", "openai"))
    assert "SECRET" not in json.dumps(fp)
    other = apis.ChatRequest(apis.as_messages(text or "x", images=png(w, h, (1, 2, 3)))[0], "gpt-4o", system, temp)
    assert cache.key(apis.request_fingerprint(other, "openai", "http://127.0.0.1:9/v1", "openai")) != cache.key(fp)


@hsettings(max_examples=20, deadline=None)
@given(w=st.integers(1, 64), h=st.integers(1, 64), fmt=st.sampled_from(["PNG", "JPEG"]))
def test_encode_image_round_trips(w, h, fmt):
    enc = encode_image(Image.new("RGB", (w, h), (10, 20, 30)), fmt)
    assert (enc.width, enc.height) == (w, h) and enc.media_type == f"image/{fmt.lower()}"
    assert encode_image(enc.data_url()) == enc and base64.b64decode(enc.b64()) == enc.data


def test_chat_response_round_trips_through_json():
    r = ChatResponse("hi", "m", Usage(3, 4), 1e-6, "openai", "stop", {"a": 1}, False, 2, 0.5)
    assert ChatResponse.from_dict(json.loads(json.dumps(r.to_dict()))) == r


# ---------------------------------------------------------------- the local backend (tiny LLaVA)

def test_local_llava_plumbing():
    c = get_client("local")
    assert c.base_url == "in-process" and c.cache is None
    model, proc = c.load()
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    img = Image.new("RGB", (50, 40), "red")
    x = proc(images=[img, img], text="USER: <image>\n<image>\nsame? ASSISTANT:", return_tensors="pt")
    per_image = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2   # CLS dropped
    assert int((x["input_ids"] == model.config.image_token_index).sum()) == 2 * per_image == 32
    r = c.chat("What colour is it?", images=img, max_tokens=6)
    prompt = proc(images=[img], text=apis.llava_prompt(apis.as_messages("What colour is it?", images=img)[0]), return_tensors="pt")
    assert r.usage.input_tokens == prompt["input_ids"].shape[1] and 1 <= r.usage.output_tokens <= 6
    assert r.cost == 0.0 and r.provider == "local" and r.model == "llava-hf/llava-1.5-7b-hf"
    again = c.chat("What colour is it?", images=img, max_tokens=6)           # greedy: deterministic
    assert again.text == r.text
    s = c.stream("What colour is it?", images=img, max_tokens=6)
    assert "".join(s).strip() == s.response.text == r.text
    with pytest.raises(ValueError, match="neither api_key nor base_url"):
        get_client("local", api_key="x")
    with pytest.raises(ValueError, match="no JSON-constrained decoding"):
        c.chat("json please", json_schema=True)


def test_tiny_llava_loads_without_importing_apis(tmp_path):
    "The tiny LLaVA is registered in mmlab.core: a fresh process loads it (model and processor) without mmlab.apis."
    import subprocess, sys
    code = ("import sys\n"
            "from transformers import LlavaForConditionalGeneration\n"
            "from mmlab.core import load_pretrained, load_processor\n"
            "m = load_pretrained(LlavaForConditionalGeneration, 'llava-hf/llava-1.5-7b-hf', verbose=False)\n"
            "p = load_processor('llava-hf/llava-1.5-7b-hf', verbose=False)\n"
            "assert p.tokenizer.convert_tokens_to_ids('<image>') == m.config.image_token_index == 4\n"
            "assert not any(k.startswith('mmlab.apis') for k in sys.modules), sorted(k for k in sys.modules if 'mmlab' in k)\n"
            "print('ok', type(m).__name__)\n")
    env = {**os.environ, "MMLAB_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok LlavaForConditionalGeneration" in r.stdout, r.stderr[-2000:]


def test_methods_live_in_their_classes():
    "No `Cls.attr = function` assignments at module level: methods are defined in the class or with fastcore's @patch."
    import ast
    root = Path(apis.__file__).parent
    for path in [*root.glob("*.py"), root.parent / "apis_testing.py"]:
        tree = ast.parse(path.read_text())
        classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    assert not (isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name) and el.value.id in classes), \
                        f"{path.name}:{node.lineno} assigns {el.value.id}.{el.attr}"
    assert "def chat(self:ChatClient" in (root / "client.py").read_text()


def test_zzz_no_test_key_in_any_file_the_tests_wrote(tmp_path_factory):
    "Last in this file: no key handed out above is in any file under this run's temporary root."
    assert len(SEEN_KEYS) > 10
    files = assert_no_test_key_in_files(tmp_path_factory)
    assert any(p.suffix == ".json" for p in files)           # the caches and saved conversations are there
