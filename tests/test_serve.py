"""The inference service (mmlab.serve): every route, every bad input as a 4xx naming its field, the dynamic batcher,
Prometheus metrics, ONNX parity with PyTorch, the real server process, and the deployment files."""
import asyncio
import io
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi"); pytest.importorskip("onnxruntime")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from mmlab.fusion import MultimodalClassifier, make_encoder  # noqa: E402
from mmlab.recipes import DATASETS  # noqa: E402
from mmlab.serve import (DynamicBatcher, InputError, Metrics, ServeConfig, build_index, create_app, load_service,  # noqa: E402
                         read_image, serve_main)
from mmlab.train import save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIP = "openai/clip-vit-base-patch32"          # offline: the tiny stand-in


def png(size=(32, 32), color=(200, 10, 10)) -> bytes:
    b = io.BytesIO(); Image.new("RGB", size, color).save(b, "PNG"); return b.getvalue()

def wav(n=2000, sr=8000) -> bytes:
    import soundfile as sf
    b = io.BytesIO(); sf.write(b, (np.random.default_rng(0).standard_normal(n) * 0.1).astype("float32"), sr, format="WAV")
    return b.getvalue()

@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    spec = DATASETS["trimodal"]
    model = MultimodalClassifier({m: make_encoder(s) for m, s in spec.modalities.items()}, "late", 4)
    save_checkpoint(d / "ck", model)
    build_index(d / "index", CLIP, n=12)
    return d

@pytest.fixture(scope="module")
def service(dirs):
    return load_service(dirs / "ck", CLIP, dirs / "index", config=ServeConfig(max_upload_bytes=200_000, max_image_pixels=512 * 512))

@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c: yield c


def test_every_route_works(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True, "models": {"classifier": True, "clip": True, "index": True}}
    r = client.post("/predict/multimodal", files={"image": ("a.png", png(), "image/png"), "audio": ("a.wav", wav(), "audio/wav")},
                    data={"text": "a red circle"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["probabilities"]) == 4 and abs(sum(out["probabilities"]) - 1) < 1e-5
    assert out["label"] == int(np.argmax(out["probabilities"])) and set(out["contributions"]) == {"vision", "audio", "text"}
    r = client.post("/predict/multimodal", data={"text": "a red circle"})          # two modalities missing
    assert r.status_code == 200 and r.json()["modalities"] == ["text"] and r.json()["contributions"] == {}
    r = client.post("/classify-image", files={"image": ("a.png", png(), "image/png")}, data={"labels": "circle, square, star"})
    assert r.status_code == 200 and sorted(r.json()["labels"]) == ["circle", "square", "star"]
    assert abs(sum(r.json()["probabilities"]) - 1) < 1e-5
    r = client.post("/retrieve", data={"text": "a red circle", "k": "3"})
    assert r.status_code == 200 and len(r.json()["results"]) == 3 and "caption" in r.json()["results"][0]["payload"]
    r = client.post("/retrieve", files={"image": ("a.png", png(), "image/png")})
    assert r.status_code == 200 and r.json()["query"] == "image" and len(r.json()["results"]) == 5
    doc = client.get("/openapi.json").json()
    assert {"/predict/multimodal", "/classify-image", "/retrieve", "/health", "/ready", "/metrics"} <= set(doc["paths"])


def test_contributions_are_leave_one_out(client, service):
    "A modality's contribution is the drop of the predicted class's probability when that modality alone is hidden."
    r = client.post("/predict/multimodal", files={"image": ("a.png", png(), "image/png")}, data={"text": "a blue square"}).json()
    rows = service.predictor.predict([{"text": torch.tensor([1])}])               # just to check the predictor runs alone
    assert len(rows) == 1
    img = torch.from_numpy(np.asarray(Image.open(io.BytesIO(png())).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    from mmlab.data.schema import encode_words
    txt = torch.tensor(encode_words("a blue square"))
    p = service.predictor.logits([{"vision": img, "text": txt}, {"text": txt}, {"vision": img}]).softmax(-1)
    assert r["contributions"]["vision"] == pytest.approx(float(p[0, r["label"]] - p[1, r["label"]]), abs=1e-5)
    assert r["contributions"]["text"] == pytest.approx(float(p[0, r["label"]] - p[2, r["label"]]), abs=1e-5)


BAD = [  # (name, request kwargs, status, field)
    ("nothing sent", {}, 422, "body"),
    ("not an image", dict(files={"image": ("a.png", b"GIF89a-not-really", "image/png")}), 415, "image"),
    ("truncated image", dict(files={"image": ("a.png", png()[:60], "image/png")}), 422, "image"),
    ("empty image file", dict(files={"image": ("a.png", b"", "image/png")}), 422, "image"),
    ("too large upload", dict(files={"image": ("a.bin", b"\0" * 300_000, "image/png")}), 413, "image"),
    ("decompression bomb", dict(files={"image": ("a.png", png((2000, 2000)), "image/png")}), 413, "image"),
    ("not audio", dict(files={"audio": ("a.wav", b"RIFF....WAVEjunk", "audio/wav")}), 415, "audio"),
    ("empty audio", dict(files={"audio": ("a.wav", wav(0), "audio/wav")}), 422, "audio"),
    ("wrong sampling rate", dict(files={"audio": ("a.wav", wav(2000, 16000), "audio/wav")}), 422, "audio"),
    ("too long audio", dict(files={"audio": ("a.wav", wav(8000 * 11), "audio/wav")}), 413, "audio"),
    ("blank text", dict(data={"text": "   "}), 422, "text"),
    ("text over the limit", dict(data={"text": "red " * 65}), 422, "text"),
    ("unknown modality", dict(data={"video": "x", "text": "a red circle"}), 422, "video"),
]

@pytest.mark.parametrize("name,kw,status,field", BAD, ids=[b[0] for b in BAD])
def test_bad_multimodal_input_is_a_named_4xx(client, name, kw, status, field):
    r = client.post("/predict/multimodal", **kw)
    assert r.status_code == status, (name, r.text)
    assert r.json()["field"] == field and r.json()["detail"]


CLIP_BAD = [
    ("/classify-image", dict(files={"image": ("a.png", png(), "image/png")}, data={"labels": "circle"}), 422, "labels"),
    ("/classify-image", dict(files={"image": ("a.png", png(), "image/png")}, data={"labels": "circle, , star"}), 422, "labels"),
    ("/classify-image", dict(files={"image": ("a.png", png(), "image/png")}, data={"labels": "star, star"}), 422, "labels"),
    ("/classify-image", dict(files={"image": ("a.png", png(), "image/png")}, data={"labels": "a, " + "word " * 100}), 422, "labels"),
    ("/classify-image", dict(data={"labels": "a, b"}), 422, "image"),
    ("/classify-image", dict(files={"image": ("a.png", b"xx", "image/png")}, data={"labels": "a, b"}), 415, "image"),
    ("/retrieve", dict(data={"text": "a red circle", "k": "0"}), 422, "k"),
    ("/retrieve", dict(data={"text": "a red circle", "k": "many"}), 422, "k"),
    ("/retrieve", {}, 422, "body"),
    ("/retrieve", dict(data={"text": "x"}, files={"image": ("a.png", png(), "image/png")}), 422, "body"),
]

@pytest.mark.parametrize("route,kw,status,field", CLIP_BAD)
def test_bad_clip_input_is_a_named_4xx(client, route, kw, status, field):
    r = client.post(route, **kw)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


def test_body_over_the_limit_is_refused_before_reading(client):
    r = client.post("/predict/multimodal", content=b"x" * 900_000, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_api_key_is_checked_and_never_logged(service, caplog):
    service2 = type(service)(service.predictor, service.clip, ServeConfig(api_key="s3cret-key"))
    with caplog.at_level(logging.DEBUG), TestClient(create_app(service2)) as c:
        assert c.get("/health").status_code == 200                                  # probes stay open
        assert c.post("/predict/multimodal", data={"text": "a red circle"}).status_code == 401
        r = c.post("/predict/multimodal", data={"text": "a red circle"}, headers={"x-api-key": "wrong"})
        assert r.status_code == 401 and r.json()["field"] == "x-api-key" and "missing or wrong API key" in r.json()["detail"]
        assert c.post("/predict/multimodal", data={"text": "a red circle"}, headers={"x-api-key": "s3cret-key"}).status_code == 200
        assert c.post("/predict/multimodal", data={"text": "a red circle"}, headers={"authorization": "Bearer s3cret-key"}).status_code == 200
        assert "s3cret-key" not in c.get("/metrics").text
    assert "s3cret-key" not in caplog.text


def test_services_without_a_model_answer_503(service):
    with TestClient(create_app(type(service)(None, service.clip))) as c:
        r = c.post("/predict/multimodal", data={"text": "a red circle"})
        assert r.status_code == 503 and r.json()["field"] == "model"


def test_dynamic_batcher_groups_requests_and_returns_each_its_own_result():
    sizes = []
    def fn(xs):
        time.sleep(0.01); return [x * 10 for x in xs]
    async def run(b, n):
        return await asyncio.gather(*(b.submit(i) for i in range(n)))
    b = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=50, on_batch=sizes.append)
    assert asyncio.run(run(b, 20)) == [i * 10 for i in range(20)]
    assert max(sizes) == 8 and sum(sizes) == 20 and len(sizes) <= 4
    sizes.clear()
    b1 = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=50, on_batch=sizes.append)
    assert asyncio.run(run(b1, 5)) == [0, 10, 20, 30, 40] and sizes == [1] * 5


def test_dynamic_batcher_sends_a_batch_error_to_every_caller_and_keeps_serving():
    def fn(xs):
        if any(x < 0 for x in xs): raise ValueError("negative item")
        return xs
    async def run():
        b = DynamicBatcher(fn, max_batch_size=4, max_wait_ms=20)
        res = await asyncio.gather(b.submit(1), b.submit(-1), return_exceptions=True)
        after = await b.submit(7)
        await b.close(); assert b._task is None
        assert await b.submit(8) == 8                                               # a closed batcher restarts on demand
        await b.close()
        return res, after
    res, after = asyncio.run(run())
    assert all(isinstance(r, ValueError) for r in res) and after == 7
    with pytest.raises(ValueError, match="max_batch_size"): DynamicBatcher(fn, max_batch_size=0)


def test_batched_predictions_equal_single_ones(service):
    "Padding inside a batch changes nothing: text and vision rows give the same probabilities alone or batched."
    g = torch.Generator().manual_seed(1)
    rows = [{"text": torch.randint(2, 60, (n,), generator=g), "vision": torch.rand(3, 32, 32, generator=g)} for n in (3, 9, 5)]
    rows += [{"audio": torch.randn(2000, generator=g) * 0.1, "text": torch.randint(2, 60, (4,), generator=g)}]
    batched = service.predictor.predict(rows)
    for r, b in zip(rows, batched):
        assert np.allclose(service.predictor.predict([r])[0]["probabilities"], b["probabilities"], atol=1e-5)


def test_metrics_are_valid_prometheus_text(client):
    parser = pytest.importorskip("prometheus_client.parser")
    client.get("/health"); client.post("/predict/multimodal", data={"text": "   "})
    assert client.post("/predict/multimodal", data={"text": "a red circle"}).status_code == 200   # a batch of its own
    fams = {f.name: f for f in parser.text_string_to_metric_families(client.get("/metrics").text)}
    reqs = {(s.labels["route"], s.labels["status"]): s.value for s in fams["mmlab_requests"].samples}
    assert reqs[("/health", "200")] >= 1 and reqs[("/predict/multimodal", "422")] >= 1
    lat = [s for s in fams["mmlab_request_seconds"].samples if s.name.endswith("_count") and s.labels["route"] == "/health"]
    assert lat and lat[0].value >= 1
    assert any(s.labels.get("model") == "classifier" for s in fams["mmlab_batch_size"].samples)


def test_metrics_histogram_buckets_are_cumulative():
    m = Metrics()
    for s in (0.001, 0.02, 0.3, 20.0): m.request("GET", "/x", 200, s)
    text = m.render()
    assert 'mmlab_request_seconds_bucket{route="/x",le="0.005"} 1' in text
    assert 'mmlab_request_seconds_bucket{route="/x",le="0.5"} 3' in text
    assert 'mmlab_request_seconds_bucket{route="/x",le="+Inf"} 4' in text


def test_read_image_refuses_a_bomb_before_decoding():
    with pytest.raises(InputError, match="pixels") as e: read_image(png((300, 300)), "image", ServeConfig(max_image_pixels=100 * 100))
    assert e.value.status == 413


def test_config_refuses_nonsense():
    with pytest.raises(ValueError, match="max_batch_size"): ServeConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"): ServeConfig(max_wait_ms=-1)
    with pytest.raises(ValueError, match="api_key"): ServeConfig(api_key="")


def test_onnx_matches_torch(dirs, service, tmp_path):
    "The exported classifier and CLIP towers agree with PyTorch within 1e-4 on the same inputs (other batch and lengths than the export's)."
    onnx = load_service(dirs / "ck", CLIP, backend="onnx", onnx_dir=tmp_path)
    p, q = service.predictor, onnx.predictor
    g = torch.Generator().manual_seed(2)
    rows = [{"vision": torch.rand(3, 32, 32, generator=g), "audio": torch.randn(1500 + 300 * i, generator=g) * .1,
             "text": torch.randint(2, 60, (2 + i,), generator=g)} for i in range(7)] + [{"text": torch.tensor([5, 6])}]
    assert (p.logits(rows) - q.logits(rows)).abs().max() < 1e-4
    ims = [Image.new("RGB", (40 + i, 30), (i * 40, 100, 30)) for i in range(4)]
    assert (service.clip.encode_image(ims) - onnx.clip.encode_image(ims)).abs().max() < 1e-4
    texts = ["a red circle", "there is a small blue square above a green star", "star"]
    assert (service.clip.encode_text(texts) - onnx.clip.encode_text(texts)).abs().max() < 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def test_the_real_server_process_answers(dirs):
    httpx = pytest.importorskip("httpx")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from mmlab.cli import main; sys.exit(main())", "serve",
                             "--checkpoint", str(dirs / "ck"), "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 45
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200: break
            except httpx.TransportError: pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "the server did not become ready in 45 s"
            time.sleep(0.3)
        r = httpx.post(f"http://127.0.0.1:{port}/predict/multimodal", data={"text": "a red circle"}, timeout=10)
        assert r.status_code == 200 and len(r.json()["probabilities"]) == 4
        assert httpx.post(f"http://127.0.0.1:{port}/predict/multimodal", files={"image": ("a.png", b"zz", "image/png")}).status_code == 415
    finally:
        proc.terminate(); proc.wait(10)


def test_missing_checkpoint_stops_the_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: serve_main(["--checkpoint", str(tmp_path / "nope")])
    assert "does not exist" in str(e.value.code)
    with pytest.raises(SystemExit) as e: serve_main([])
    assert "nothing to serve" in str(e.value.code)


def test_serve_is_a_command():
    from mmlab.cli import COMMANDS
    assert COMMANDS["serve"][:2] == ("mmlab.serve", "serve_main")


def test_kubernetes_manifests_validate_against_the_schemas():
    kv = pytest.importorskip("kubernetes_validate"); yaml = pytest.importorskip("yaml")
    kinds = {}
    for f in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            kv.validate(doc, "1.34.0", strict=True); kinds[doc["kind"]] = doc
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    c = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health" and c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    broken = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kv.ValidationError): kv.validate(broken, "1.34.0", strict=True)


def test_dockerfile_builds_the_service_on_the_official_python_base():
    dp = pytest.importorskip("dockerfile_parse")
    df = dp.DockerfileParser(str(ROOT / "Dockerfile"))
    assert df.baseimage.startswith("python:") and "slim" in df.baseimage
    ins = [(i["instruction"], i["value"]) for i in df.structure]
    assert ("ARG", "TORCH_INDEX=https://download.pytorch.org/whl/cpu") in ins
    assert ("EXPOSE", "8000") in ins and any(k == "HEALTHCHECK" and "/health" in v for k, v in ins)
    assert any(k == "USER" and v != "root" for k, v in ins)
    assert any(k == "ENTRYPOINT" and '"serve"' in v for k, v in ins)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "nbs"} <= set(ignored)


# --- what the mutation run showed the tests above let through ---

def test_serve_command_builds_an_index_or_starts_uvicorn_with_its_options(monkeypatch, capsys):
    import mmlab.serve as S
    calls = {}
    monkeypatch.setattr(S, "build_index", lambda out, clip, n: calls.setdefault("index", (out, clip, n)) and Path(out))
    assert serve_main(["--build-index", "idx"]) == 0 and calls["index"] == ("idx", CLIP, 200)
    assert "index of 200 images and captions written to idx" in capsys.readouterr().out
    class Uvicorn:
        @staticmethod
        def run(app, host, port, log_level): calls["run"] = (app.title, host, port, log_level)
    monkeypatch.setattr(S, "require", lambda name, what: calls.setdefault("require", (name, what)) and Uvicorn)
    seen = {}
    monkeypatch.setattr(S, "load_service", lambda *a: seen.setdefault("args", a) and S.Service(None, None, a[-1]))
    assert serve_main(["--clip", CLIP, "--backend", "onnx", "--max-batch-size", "1"]) == 0
    assert calls["require"] == ("uvicorn", "mmlab serve") and calls["run"] == ("mmlab inference service", "127.0.0.1", 8000, "warning")
    assert seen["args"][:5] == (None, CLIP, None, "onnx", "onnx") and seen["args"][5].max_batch_size == 1
    assert "serving on http://127.0.0.1:8000 (backend onnx, max batch 1); docs at /docs" in capsys.readouterr().out
    monkeypatch.setattr(S, "load_service", lambda *a: (_ for _ in ()).throw(FileNotFoundError("checkpoint x does not exist")))
    with pytest.raises(SystemExit, match="^mmlab serve: checkpoint x does not exist$"): serve_main(["--checkpoint", "x"])


def test_load_service_refuses_a_foreign_index_and_keeps_its_defaults(dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"serve.json is missing: .* was not written by `mmlab serve --build-index`"):
        load_service(clip=CLIP, index=tmp_path)
    (tmp_path / "serve.json").write_text('{"clip": "another/clip"}')
    with pytest.raises(ValueError, match=r"was built with CLIP 'another/clip', not 'openai/clip-vit-base-patch32'"):
        load_service(clip=CLIP, index=tmp_path)
    s = load_service(clip=CLIP)
    assert s.config == ServeConfig() and s.predictor is None and s.clip is not None and set(s.batchers) == {"clip_image"}
    assert ServeConfig(max_batch_size=1).max_batch_size == 1                         # 1: no dynamic batching


def test_histograms_sum_what_they_count_and_batches_are_named_per_model():
    m = Metrics()
    for s in (0.25, 0.5): m.request("GET", "/x", 200, s)
    m.batch("clip_image", 3)
    text = m.render()
    assert 'mmlab_request_seconds_sum{route="/x"} 0.75' in text and 'mmlab_request_seconds_count{route="/x"} 2' in text
    assert 'mmlab_batch_size_sum{model="clip_image"} 3' in text


def test_input_errors_name_their_field():
    from mmlab.serve import read_audio, read_text
    cfg = ServeConfig(max_upload_bytes=100)
    with pytest.raises(InputError) as e: read_audio(b"x" * 200, "clip_audio", cfg, 8000)
    assert e.value.field == "clip_audio" and e.value.status == 413
    with pytest.raises(InputError) as e: read_text("!!! ???", "caption", ServeConfig())
    assert e.value.field == "caption" and e.value.status == 422


def test_the_runtime_module_runs_a_saved_graph(tmp_path):   # no 'onnx' in the name: the mutation run deselects those
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from mmlab.serve import OnnxModule
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    m = OnnxModule(path, threads=1)
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert m.input_names == ["a", "b"] and torch.allclose(m(a, b), a + b)
    with pytest.raises(FileNotFoundError, match="no ONNX model at"): OnnxModule(tmp_path / "none.onnx")


def test_documented_errors_version_help_and_per_model_batch_metrics(client, service):
    doc = client.get("/openapi.json").json()
    assert doc["info"]["version"] == "1"
    for route in ("/classify-image", "/retrieve"):
        assert {"401", "413", "415", "422", "503"} <= set(doc["paths"][route]["post"]["responses"])
    from mmlab.serve import _serve_parser
    text = " ".join(_serve_parser().format_help().split())
    for part in ("Serve the course's models over HTTP", "a classifier checkpoint written by `mmlab train`",
                 "requests per forward pass (1: no dynamic batching) (default: 16)"):
        assert part in text
    assert client.post("/classify-image", files={"image": ("a.png", png(), "image/png")}, data={"labels": "circle, square"}).status_code == 200
    assert 'mmlab_batch_size_count{model="clip_image"}' in client.get("/metrics").text
    hits = client.post("/retrieve", data={"text": "a red circle", "k": "2"}).json()["results"]
    assert len(hits) == 2 and all(h["payload"]["sample_id"].startswith("shapes-") for h in hits)   # the index keeps sample ids
    without_clip = type(service)(service.predictor, None, service.config)
    with TestClient(create_app(without_clip)) as c:
        r = c.post("/classify-image", files={"image": ("a.png", png(), "image/png")}, data={"labels": "circle, square"})
        assert r.status_code == 503 and "start the service with --clip" in r.json()["detail"]


def test_audio_with_nan_samples_is_refused_with_422():
    import soundfile as sf
    from mmlab.serve import read_audio
    b = io.BytesIO(); x = np.zeros(800, np.float32); x[3] = np.nan; sf.write(b, x, 8000, format="WAV", subtype="FLOAT")
    with pytest.raises(InputError, match="NaN/inf") as e: read_audio(b.getvalue(), "audio", ServeConfig(), 8000)
    assert e.value.status == 422 and e.value.field == "audio"
