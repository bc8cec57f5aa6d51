"mmlab.core: settings precedence and errors, device choice, seeding, offline-aware loading."
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from mmlab import core
from mmlab.core import SettingsError, get_device, load_pretrained, load_processor, load_tokenizer, seed_everything, settings


@pytest.fixture
def lab(tmp_path, monkeypatch):
    "An isolated lab directory with its own settings.ini and no MMLAB_* overrides."
    for k in core.DEFAULT_SETTINGS: monkeypatch.delenv(f"MMLAB_{k.upper()}", raising=False)
    (tmp_path / "settings.ini").write_text("[mmlab]\ncache_dir = cache\ndata_dir = data\ndevice = cpu\nseed = 5\noffline = true\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_without_a_settings_file(tmp_path, monkeypatch):
    for k in core.DEFAULT_SETTINGS: monkeypatch.delenv(f"MMLAB_{k.upper()}", raising=False)
    monkeypatch.chdir(tmp_path)
    s = settings()
    if core.find_settings_file() is None:   # tmp may sit under a directory that has one
        assert s.source == "packaged defaults"
        assert s.cache_dir == (Path.home() / ".cache" / "mmlab").resolve()
        assert (s.offline, s.device, s.seed) == ("auto", "auto", 0)


def test_file_then_environment_precedence(lab, monkeypatch):
    (lab / "a" / "b").mkdir(parents=True)
    s = settings(lab / "a" / "b")
    assert (s.device, s.seed, s.offline) == ("cpu", 5, "true")
    assert s.cache_dir == lab.resolve() / "cache"        # relative to the settings file, not the cwd
    assert str(lab / "settings.ini") in s.source
    monkeypatch.setenv("MMLAB_SEED", "9")
    monkeypatch.setenv("MMLAB_DEVICE", "auto")
    s = settings(lab / "a" / "b")
    assert (s.seed, s.device) == (9, "auto")
    assert "MMLAB_SEED" in s.source


def test_settings_file_without_mmlab_section_is_skipped(lab):
    (lab / "inner").mkdir()
    (lab / "inner" / "settings.ini").write_text("[other]\nx = 1\n")
    assert core.find_settings_file(lab / "inner") == lab / "settings.ini"


@pytest.mark.parametrize("key,value,expected", [
    ("device", "gpu", "cuda"), ("offline", "maybe", "auto, true, false"), ("seed", "x", "an integer"),
    ("grade_cell_timeout", "-1", "positive"), ("grade_total_timeout", "soon", "positive"), ("device", "mps:1", "cuda:N"),
])
def test_malformed_values_name_key_value_and_allowed(lab, key, value, expected):
    (lab / "settings.ini").write_text(f"[mmlab]\n{key} = {value}\n")
    with pytest.raises(SettingsError) as e: settings()
    msg = str(e.value)
    assert f"'{key}'" in msg and repr(value) in msg and expected in msg and "settings.ini" in msg


def test_malformed_environment_value_names_the_variable(lab, monkeypatch):
    monkeypatch.setenv("MMLAB_SEED", "ten")
    with pytest.raises(SettingsError, match="MMLAB_SEED"): settings()


def test_unknown_key_is_refused(lab):
    (lab / "settings.ini").write_text("[mmlab]\ndevise = cpu\n")
    with pytest.raises(SettingsError, match="devise"): settings()


def test_device_choice(lab, monkeypatch):
    assert get_device() == torch.device("cpu")                 # from the file
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(core, "_mps_available", lambda: False)
    assert get_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA GPU"): get_device("cuda")
    with pytest.raises(RuntimeError, match="MPS"): get_device("mps")
    with pytest.raises(ValueError): get_device("tpu")
    monkeypatch.setattr(core, "_mps_available", lambda: True)
    assert get_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device("auto") == torch.device("cuda")          # CUDA before MPS


def test_autocast_dtype_is_none_on_cpu():
    assert core.autocast_dtype("cpu") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_and_autocast():
    assert get_device("auto").type == "cuda"
    assert core.autocast_dtype("cuda") in (torch.bfloat16, torch.float16)


def _draw():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    out = model(torch.randn(4, 8)).detach()
    return random.random(), np.random.rand(3).tolist(), out.tolist(), torch.randint(0, 10**6, (5,)).tolist()


@hsettings(max_examples=10, deadline=None)
@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_seed_everything_repeats_exactly(seed):
    assert seed_everything(seed) == seed
    a = _draw()
    seed_everything(seed)
    assert _draw() == a


def test_seed_everything_differs_between_seeds_and_reads_settings(lab):
    seed_everything(1); a = _draw()
    seed_everything(2); b = _draw()
    assert a != b
    assert seed_everything() == 5                              # the lab's seed


def test_seeded_runs_repeat_across_processes(lab):
    code = "from mmlab.core import seed_everything; import torch; seed_everything(3); print(torch.randn(4).tolist())"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].startswith("[")


def test_offline_policy(lab, monkeypatch):
    assert core.is_offline()                                   # the file says true
    monkeypatch.setenv("MMLAB_OFFLINE", "false")
    assert not core.is_offline()
    monkeypatch.setenv("MMLAB_OFFLINE", "auto")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert core.is_offline()


def test_tiny_clip_round_trip_gives_identical_logits(lab, capsys):
    from PIL import Image
    from transformers import CLIPModel
    name = "openai/clip-vit-base-patch32"
    model = load_pretrained(CLIPModel, name)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "tiny CLIPModel stand-in" in out   # one line says which
    assert (lab / "cache" / "tiny").is_dir()
    assert list((lab / "cache" / "tiny").rglob("model.safetensors"))
    assert not list((lab / "cache" / "tiny").rglob("*.bin"))             # safetensors only
    proc = load_processor(name)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)) for _ in range(2)]
    batch = proc(text=["a red circle", "two blue squares above a green triangle"], images=images,
                 return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad(): before = model(**batch)
    again = load_pretrained(CLIPModel, name, verbose=False)               # from the saved stand-in
    again.save_pretrained(lab / "copy")
    reloaded = load_pretrained(CLIPModel, str(lab / "copy"), verbose=False).eval()
    with torch.no_grad(): after = reloaded(**batch)
    assert before.logits_per_image.shape == (2, 2)
    assert torch.equal(before.logits_per_image, after.logits_per_image)
    assert torch.equal(before.text_embeds, after.text_embeds)


def test_stand_in_weights_are_the_same_everywhere(lab, tmp_path_factory, monkeypatch):
    from transformers import CLIPModel
    a = load_pretrained(CLIPModel, "openai/clip-vit-base-patch32", verbose=False)
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path_factory.mktemp("other")))
    b = load_pretrained(CLIPModel, "openai/clip-vit-base-patch32", verbose=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("name,cls_name", [("bert-base-uncased", "BertModel"), ("dandelin/vilt-b32-finetuned-vqa", "ViltModel"),
                                           ("gpt2", "GPT2LMHeadModel"), ("google/vit-base-patch16-224", "ViTModel")])
def test_other_architectures_load_and_run(lab, name, cls_name):
    import transformers
    model = load_pretrained(getattr(transformers, cls_name), name, verbose=False)
    assert model.config.model_type == core.CHECKPOINTS[name]["model_type"]
    if core.CHECKPOINTS[name]["tokenizer"]:
        tok = load_tokenizer(name, verbose=False)
        ids = tok("how many red circles are there?", return_tensors="pt")["input_ids"]
        assert ids.max() < model.config.vocab_size if hasattr(model.config, "vocab_size") else True
        assert tok.unk_token_id not in ids[0].tolist()                   # course words are whole tokens


def test_tiny_videomae_classifies_and_pretrains(lab):
    "MCG-NJU/videomae-base stands in as a tiny VideoMAE: 8 frames of 32 x 32, tubelets 2 x 8 x 8, mean pooling."
    from transformers import VideoMAEForPreTraining, VideoMAEForVideoClassification
    clf = load_pretrained(VideoMAEForVideoClassification, "MCG-NJU/videomae-base", verbose=False, num_labels=8,
                          ignore_mismatched_sizes=True).eval()
    assert clf.config.model_type == "videomae" and clf.config.use_mean_pooling and clf.config.num_frames == 8
    video = torch.randn(2, 8, 3, 32, 32)
    assert clf(pixel_values=video).logits.shape == (2, 8)
    mae = load_pretrained(VideoMAEForPreTraining, "MCG-NJU/videomae-base-finetuned-kinetics", verbose=False)
    masked = torch.zeros(2, 4 * 16, dtype=torch.bool); masked[:, ::2] = True             # half the 64 tubelets hidden
    assert mae(pixel_values=video, bool_masked_pos=masked).logits.shape == (2, 32, 2 * 8 * 8 * 3)


def test_clip_tokenizer_ids_match_the_tiny_config(lab):
    tok = load_tokenizer("openai/clip-vit-base-patch32", verbose=False)
    cfg = core.tiny_clip_config().text_config
    ids = tok("a small green triangle below a red circle")["input_ids"]
    assert ids[0] == cfg.bos_token_id and ids[-1] == cfg.eos_token_id and len(tok) <= cfg.vocab_size


def test_stable_diffusion_name_resolves_to_a_tiny_pipeline(lab, capsys, tmp_path_factory, monkeypatch):
    "A pipeline is not one class built from one config: its stand-in comes from a registered builder, saved and reloaded."
    diffusers = pytest.importorskip("diffusers")
    name = "stabilityai/stable-diffusion-2-1-base"
    pipe = load_pretrained(diffusers.StableDiffusionPipeline, name)
    assert "tiny StableDiffusionPipeline stand-in" in capsys.readouterr().out
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 8
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.tokenizer.model_max_length == 77
    assert list((lab / "cache" / "tiny").rglob("*.safetensors")) and not list((lab / "cache" / "tiny").rglob("*.bin"))
    ids = pipe.tokenizer("a red circle above a blue square")["input_ids"]
    assert pipe.tokenizer.unk_token_id not in ids[1:-1]                       # (unk is also eos in CLIP tokenizers)
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path_factory.mktemp("other")))
    again = load_pretrained(diffusers.StableDiffusionPipeline, name, verbose=False)     # built again elsewhere: same weights
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, part).state_dict(), getattr(again, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert "diffusers" in core.OPTIONAL_PARTS


def test_auto_class_stand_in(lab):
    from transformers import AutoModel
    model = load_pretrained(AutoModel, "bert-base-uncased", verbose=False)
    assert type(model).__name__ == "BertModel"


def test_unknown_names_are_refused_with_what_is_known(lab):
    from transformers import AutoModel
    with pytest.raises(KeyError, match="register_checkpoint"): load_pretrained(AutoModel, "someone/unknown", verbose=False)
    with pytest.raises(KeyError, match="tokenizer"): load_tokenizer("someone/unknown", verbose=False)
    with pytest.raises(KeyError, match="processor"): load_processor("bert-base-uncased", verbose=False)


def test_interrupted_build_leaves_nothing_half_written(lab, monkeypatch):
    from transformers import BertModel
    def boom(self, *a, **k): raise RuntimeError("disk full")
    monkeypatch.setattr(BertModel, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"): load_pretrained(BertModel, "bert-base-uncased", verbose=False)
    tiny = lab / "cache" / "tiny" / "bert-base-uncased"
    assert not tiny.exists() or not any(tiny.iterdir())
    monkeypatch.undo(); monkeypatch.chdir(lab)
    assert load_pretrained(BertModel, "bert-base-uncased", verbose=False) is not None


def test_cli_doctor_reports_cpu_and_offline(lab):
    env = dict(os.environ, MMLAB_OFFLINE="true")
    r = subprocess.run([sys.executable, "-c", "import sys; from mmlab.cli import main; sys.exit(main(['doctor']))"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = dict(l.split(None, 1) for l in r.stdout.splitlines() if l.strip() and len(l.split(None, 1)) == 2)
    assert lines["device"].strip() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert lines["offline"].startswith("True")
    assert "the library works here" in r.stdout
    for ref in ("ncps", "snntorch"):             # the parity references of chapter 05, with their distribution versions
        import importlib.metadata, importlib.util
        want = importlib.metadata.version(ref) if importlib.util.find_spec(ref) else "missing"
        assert lines[ref].startswith(want) and "chapter 05" in lines[ref], lines[ref]


def test_cli_doctor_fails_on_broken_settings(lab):
    (lab / "settings.ini").write_text("[mmlab]\ndevice = gpu\n")
    r = subprocess.run([sys.executable, "-c", "import sys; from mmlab.cli import main; sys.exit(main(['doctor']))"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "device" in r.stdout and "ERROR" in r.stdout


def test_cli_unknown_command_lists_the_known(capsys):
    from mmlab.cli import main
    with pytest.raises(SystemExit) as e: main(["frobnicate"])
    assert e.value.code == 2 and "doctor" in capsys.readouterr().err


def test_shipped_tiny_tokenizers_are_used_and_cover_the_course_words(tmp_path, monkeypatch):
    "Every machine gets the tokenizers the lessons were measured with, byte for byte, and they know every course word."
    from mmlab import core
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path))
    core.settings.cache_clear() if hasattr(core.settings, "cache_clear") else None
    for name, fam in (("openai/clip-vit-base-patch32", "clip"), ("dandelin/vilt-b32-mlm", "wordpiece"),
                      ("openai/clip-vit-large-patch14", "clip"), ("bert-base-uncased", "wordpiece")):
        shipped = core._shipped_tokenizer(name, fam)
        assert shipped is not None, name
        d = core.tiny_tokenizer_dir(name)
        assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in shipped.iterdir())
        for f in shipped.iterdir():
            assert (d / f.name).read_bytes() == f.read_bytes(), f"{name}: {f.name} differs from the shipped file"
        tok = core.load_tokenizer(name, verbose=False)
        ids = tok(" ".join(core.COURSE_WORDS))["input_ids"]
        assert tok.unk_token_id not in ids or fam == "clip", f"{name}: a course word is unknown to its tokenizer"
    assert core._shipped_tokenizer("gpt2", "bytebpe") is None     # byte-level BPE trains the same everywhere
