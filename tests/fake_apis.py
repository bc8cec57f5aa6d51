"""What the API tests share: test keys that are easy to grep for, images, the lab environment and one fake
server per backend (the real provider SDKs against mmlab.apis_testing on 127.0.0.1)."""
import io
import uuid

from PIL import Image

from mmlab.apis import get_client
from mmlab.apis_testing import FakeServer

KEY_MARK = "mmlab-TESTKEY-"
BACKENDS = [("openai", None), ("anthropic", None), ("gemini", "google-genai"), ("gemini", "google-generativeai")]
IDS = ["openai", "anthropic", "google-genai", "google-generativeai"]
KEY_ENVS = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY",
            "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL"]
SEEN_KEYS = []    # every key handed out in this process, for the final grep


def new_key(provider):
    k = f"{KEY_MARK}{provider}-{uuid.uuid4().hex}"
    SEEN_KEYS.append(k)
    return k


def png(w=40, h=30, colour=(200, 20, 20)):
    buf = io.BytesIO(); Image.new("RGB", (w, h), colour).save(buf, "PNG"); return buf.getvalue()


def jpeg(w=20, h=20):
    buf = io.BytesIO(); Image.new("RGB", (w, h), (0, 0, 200)).save(buf, "JPEG"); return buf.getvalue()


def lab_env(tmp_path, monkeypatch):
    "Offline mode on, a private cache, no provider keys or endpoints from the environment (each test file's autouse fixture)."
    monkeypatch.setenv("MMLAB_OFFLINE", "true")
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path / "cache"))
    for v in KEY_ENVS: monkeypatch.delenv(v, raising=False)
    return tmp_path


def serve_backend(provider, sdk):
    "Yield (provider, sdk, server, make_client, key): a fake server for one backend and a client factory for it."
    key = new_key(provider)
    with FakeServer(provider, api_key=key) as srv:
        def make(**kw):
            opts = dict(api_key=key, base_url=srv.base_url, backoff_base=0.001, timeout=5, seed=0)
            if sdk: opts["sdk"] = sdk
            opts.update(kw)
            return get_client(provider, **opts)
        yield provider, sdk, srv, make, key


def assert_no_test_key_in_files(tmp_path_factory):
    "No key handed out in this process is in any file under this run's temporary root."
    root = tmp_path_factory.getbasetemp()
    files = [p for p in root.rglob("*") if p.is_file()]
    for p in files:
        assert KEY_MARK.encode() not in p.read_bytes(), p
    return files
