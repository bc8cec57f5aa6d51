"""The API transport against hostile servers (issue: never follow a redirect to another host, never leave loopback
offline, a deadline per attempt and a budget per call, nonsense retry headers, oversized and undecodable answers),
through every provider SDK."""
import math
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st

import fake_apis
from fake_apis import BACKENDS, IDS, SEEN_KEYS, assert_no_test_key_in_files, new_key, png
from mmlab import apis
from mmlab.apis import APITimeoutError, get_client
from mmlab.apis_testing import FakeServer, Fault


@pytest.fixture(autouse=True)
def lab_env(tmp_path, monkeypatch): return fake_apis.lab_env(tmp_path, monkeypatch)


@pytest.fixture(params=BACKENDS, ids=IDS)
def backend(request): yield from fake_apis.serve_backend(*request.param)


@pytest.fixture
def other_host():
    "A second server on another loopback address (127.0.0.2): 'another host' for redirects."
    with FakeServer("openai", host="127.0.0.2") as srv:
        yield srv


@pytest.mark.parametrize("offline", ["true", "false"])
def test_redirect_to_another_host_is_refused(backend, other_host, monkeypatch, offline):
    provider, sdk, srv, make, key = backend
    monkeypatch.setenv("MMLAB_OFFLINE", offline)
    srv.fail_next(Fault.redirect(other_host.origin))
    with pytest.raises(apis.RedirectError, match="refused a redirect from http://127.0.0.1:.* to http://127.0.0.2:") as ei:
        make(cache=False).chat("hello")
    assert other_host.requests == [] and len(srv.requests) == 1          # refused before anything reached the other host
    assert key not in str(ei.value) and not ei.value.retryable


def test_offline_redirect_never_leaves_loopback(backend, monkeypatch):
    provider, sdk, srv, make, key = backend
    import socket
    connected = []
    real_connect = socket.socket.connect
    def connect(self, address):
        connected.append(address[0]); return real_connect(self, address)
    monkeypatch.setattr(socket.socket, "connect", connect)
    srv.fail_next(Fault.redirect("http://203.0.113.7:8080"))           # TEST-NET-3: a public address
    with pytest.raises(apis.OfflineError, match="offline mode is on.*203.0.113.7"):
        make(cache=False).chat("hello")
    assert connected and all(a.startswith("127.") for a in connected), connected


def test_drip_is_cut_by_the_attempt_deadline(backend):
    "One byte every 0.5 s: each attempt ends at its deadline (timeout=1), not when the server is done."
    provider, sdk, srv, make, key = backend
    srv.fail_next(Fault.drip(0.5))
    t0 = time.perf_counter()
    with pytest.raises(APITimeoutError, match=r"within the 1 s deadline of one attempt \(timeout\)") as ei:
        make(cache=False, timeout=1, max_retries=0).chat("hello")
    assert time.perf_counter() - t0 < 2.0 and len(srv.requests) == 1 and ei.value.attempts == 1


def test_drip_on_every_attempt_is_cut_by_the_total_budget(backend):
    "Retries of a dripping server stop at the call's budget (total_timeout=2.5), not after max_retries x timeout."
    provider, sdk, srv, make, key = backend
    srv.fail_next(*[Fault.drip(0.5)] * 6)
    t0 = time.perf_counter()
    with pytest.raises(APITimeoutError, match=r"2.5 s budget of the whole call \(total_timeout\)") as ei:
        make(cache=False, timeout=1, total_timeout=2.5, max_retries=5).chat("hello")
    elapsed = time.perf_counter() - t0
    assert 2.4 <= elapsed < 4.0 and 2 <= len(srv.requests) <= ei.value.attempts <= 3    # a last attempt may end before the server records it
    srv.clear_faults()


def test_endless_stream_ends_at_the_deadline(backend):
    provider, sdk, srv, make, key = backend
    srv.fail_next(Fault.endless(0.01))
    got, t0 = [], time.perf_counter()
    with pytest.raises(APITimeoutError, match="no complete answer within the 1 s deadline"):
        make(cache=False, timeout=1).chat("hello", stream=True, on_text=got.append)
    assert time.perf_counter() - t0 < 2.5 and len(srv.requests) == 1     # text was shown: not retried
    assert "".join(got).startswith("la la")


def test_endless_body_is_retried_within_the_budget(backend):
    provider, sdk, srv, make, key = backend
    srv.fail_next(*[Fault.endless(0.01)] * 5)
    t0 = time.perf_counter()
    with pytest.raises(APITimeoutError):
        make(cache=False, timeout=0.5, total_timeout=1.2).chat("hello")
    assert time.perf_counter() - t0 < 2.7 and 2 <= len(srv.requests) <= 3      # 0.5 + 0.5 + what is left of 1.2 s
    srv.clear_faults()


@pytest.mark.parametrize("fault", [Fault.rate_limited(None, "-1000"), Fault.rate_limited(None, "nan"), Fault.rate_limited(None, "inf"),
                                   Fault.rate_limited("nan"), Fault.rate_limited("-5"), Fault.rate_limited("soon", "1e999")],
                         ids=["ms=-1000", "ms=nan", "ms=inf", "s=nan", "s=-5", "garbage"])
def test_bad_retry_headers_fall_back_to_backoff(backend, fault):
    provider, sdk, srv, make, key = backend
    srv.fail_next(fault)
    t0 = time.perf_counter()
    r = make(cache=False).chat("hello")
    assert r.retries == 1 and len(srv.requests) == 2 and time.perf_counter() - t0 < 2


def test_ten_megabyte_answer(backend):
    "Refused at max_response_bytes (8 MiB by default), not retried; accepted when the limit allows it."
    provider, sdk, srv, make, key = backend
    srv.fail_next(Fault.huge(10_000_000))
    with pytest.raises(apis.ResponseFormatError, match="over max_response_bytes = 8,388,608 bytes"):
        make(cache=False).chat("hello")
    assert len(srv.requests) == 1
    srv.fail_next(Fault.huge(10_000_000))
    r = make(cache=False, max_response_bytes=None).chat("hello")
    assert len(r.text) == 10_000_000 and r.text.startswith("lorem lorem")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_invalid_utf8_is_a_malformed_answer(backend, stream):
    provider, sdk, srv, make, key = backend
    srv.fail_next(Fault.invalid_utf8())
    r = make(cache=False).chat("hello", stream=stream)                  # retried, then fine
    assert r.retries == 1 and len(srv.requests) == 2 and "\ufffd" not in r.text
    srv.fail_next(*[Fault.invalid_utf8()] * 2)
    with pytest.raises(apis.ResponseFormatError, match="not valid UTF-8"):
        make(cache=False, max_retries=1).chat("hello", stream=stream)


def test_image_download_redirects_stay_local_offline():
    ok = png(8, 6)
    with FakeServer("gemini", images={"/cat.png": ok, "/moved.png": "/cat.png", "/away.png": "http://203.0.113.7/cat.png"}) as srv:
        c = get_client("gemini", api_key=new_key("gemini"), base_url=srv.base_url, cache=False)
        c.chat("what?", images=srv.base_url + "/moved.png")
        assert srv.requests[-1].images == [{"media_type": "image/png", "bytes": len(ok)}]
        n = len(srv.requests)
        with pytest.raises(apis.OfflineError, match="following an image redirect to 203.0.113.7"):
            c.chat("what?", images=srv.base_url + "/away.png")
        assert len(srv.requests) == n


@pytest.mark.parametrize("provider,sdk,module", [("openai", None, "openai"), ("anthropic", None, "anthropic"),
                                                 ("gemini", "google-genai", "google.genai"),
                                                 ("gemini", "google-generativeai", "google.generativeai")], ids=IDS)
def test_missing_sdk_names_the_extra(provider, sdk, module, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, module, None)                     # makes `import module` fail
    with FakeServer(provider) as srv:
        c = get_client(provider, api_key=new_key(provider), base_url=srv.base_url, cache=False, **({"sdk": sdk} if sdk else {}))
        with pytest.raises(apis.MissingSDKError, match=r"pip install 'mmlab\[apis\]'"):
            c.chat("hello")
        assert srv.requests == []


@pytest.mark.parametrize("option,value", [("timeout", 0), ("timeout", float("nan")), ("timeout", float("inf")), ("total_timeout", -1),
                                          ("max_response_bytes", 0), ("max_response_bytes", 1.5)])
def test_bad_deadlines_and_limits_are_refused(option, value):
    with pytest.raises(ValueError, match=option):
        get_client("openai", api_key="k-xxxx", cache=False, **{option: value})


@hsettings(max_examples=200, deadline=None)
@given(value=st.one_of(st.text(max_size=30), st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers(-10**30, 10**30).map(str)))
def test_parse_retry_after_gives_a_usable_wait_or_none(value):
    w = apis.parse_retry_after(value, now=0.0)
    assert w is None or (math.isfinite(w) and w >= 0)


def test_zzz_no_test_key_in_any_file_the_tests_wrote(tmp_path_factory):
    "Last in this file: no key handed out in this process is in any file it wrote."
    assert SEEN_KEYS
    assert_no_test_key_in_files(tmp_path_factory)
