"ViLT and co-attention: Hugging Face parity (backbone and heads, three tiny configs), masks, bad input, the ITM data."
import math

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings, strategies as st

from mmlab.attention import CoAttentionBlock
from mmlab.clip import CLIP, ClipCfg, TextCfg, VisionCfg
from mmlab.core import load_pretrained, tiny_vilt_config
from mmlab.vilt import (ITM_KINDS, CoAttentionConfig, CoAttentionModel, DualEncoderMatcher, ImageTextMatcher, ITMHead, MLMHead,
                        PatchEmbeddings, TextEmbeddings, ViLT, ViltConfig, ViltForITM, ViltForMLM, hf_patch_order, itm_group_loss,
                        itm_logits, itm_loss, itm_pairs, load_renamed, mismatch, pairwise_accuracy, perturbed, random_vilt_inputs,
                        render_claim, scene_claims, vilt_config_from_hf, vilt_config_to_hf, vilt_head_parity, vilt_hf_parity,
                        vilt_key_table, vilt_parity_configs)

CONFIGS = vilt_parity_configs()


def hf_model(cls, config, seed=0):
    torch.manual_seed(seed)
    return perturbed(cls(config), seed=seed)


def inputs_for(config, seed=1, **kw):
    return random_vilt_inputs(config, batch=5, length=min(9, config.max_position_embeddings), seed=seed, **kw)


# ---------------------------------------------------------------- parity with Hugging Face
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_backbone_parity(name):
    cfg = CONFIGS[name]
    gaps = vilt_hf_parity(hf_model(transformers.ViltModel, cfg, seed=len(name)), *inputs_for(cfg), seed=4)
    assert max(gaps.values()) < 1e-5, gaps


def test_backbone_parity_with_images_larger_than_the_grid():
    cfg = CONFIGS["wide"]                                       # 24 x 24 grid of 6-pixel patches
    gaps = vilt_hf_parity(hf_model(transformers.ViltModel, cfg), *inputs_for(cfg, image_hw=(36, 42)), seed=0)
    assert max(gaps.values()) < 1e-5, gaps


def test_parity_accepts_a_head_model_and_compares_every_valid_patch():
    cfg = CONFIGS["tiny"]
    hf = hf_model(transformers.ViltForMaskedLM, cfg)
    ids, px, att, pm = inputs_for(cfg)
    assert max(vilt_hf_parity(hf, ids, px, att, pm).values()) < 1e-5       # `.vilt` is used
    order, valid = hf_patch_order(hf.vilt, px, pm, seed=0)
    assert valid.sum(1).tolist() == [1 + int(pm[i, ::8, ::8].sum()) for i in range(len(pm))]
    assert sorted(order[0].tolist()) == list(range(17))                     # the unpadded image: every patch, once


def test_hf_draws_a_random_patch_order_that_only_the_reproduced_draw_matches():
    "Hugging Face's order is random (see PITFALLS); comparing in raster order instead of its draw must fail."
    cfg = CONFIGS["tiny"]
    hf = hf_model(transformers.ViltModel, cfg)
    ids, px, att, pm = inputs_for(cfg)
    o1, _ = hf_patch_order(hf, px, pm, seed=1)
    o2, _ = hf_patch_order(hf, px, pm, seed=2)
    assert not torch.equal(o1[0], o2[0])
    with torch.no_grad():
        torch.manual_seed(1); a = hf(input_ids=ids, attention_mask=att, pixel_values=px, pixel_mask=pm)
        torch.manual_seed(2); b = hf(input_ids=ids, attention_mask=att, pixel_values=px, pixel_mask=pm)
        ours = ViLT.from_hf(hf).eval()(ids, px, att, pm)
    assert (a.pooler_output - b.pooler_output).abs().max() < 1e-5         # order-free outputs agree across draws
    Lt = ids.shape[1]
    assert (ours.image_states[0] - a.last_hidden_state[0, Lt:]).abs().max() > 1e-2    # raster vs random order


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_heads_parity(name):
    cfg = CONFIGS[name]
    inputs = inputs_for(cfg, seed=7)
    for cls in (transformers.ViltForImageAndTextRetrieval, transformers.ViltForMaskedLM):
        assert vilt_head_parity(hf_model(cls, cfg, seed=3), *inputs) < 1e-5, cls.__name__


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dicts_round_trip_strictly_and_exactly(name):
    cfg = CONFIGS[name]
    for hf_cls, ours_cls in ((transformers.ViltModel, ViLT), (transformers.ViltForImageAndTextRetrieval, ViltForITM),
                             (transformers.ViltForMaskedLM, ViltForMLM)):
        hf = hf_model(hf_cls, cfg)
        back = ours_cls.from_hf(hf).to_hf_state_dict()
        ref = hf.state_dict()
        assert back.keys() == ref.keys(), (hf_cls.__name__, set(back) ^ set(ref))
        assert all(torch.equal(back[k], ref[k]) for k in ref), hf_cls.__name__
        fresh = hf_cls(cfg)
        fresh.load_state_dict(back, strict=True)
    assert vilt_config_from_hf(vilt_config_to_hf(vilt_config_from_hf(cfg))) == vilt_config_from_hf(cfg)


def test_a_model_of_ours_loads_into_hugging_face_with_the_same_outputs():
    torch.manual_seed(0)
    cfg = ViltConfig(vocab_size=50, dim=24, layers=2, heads=3, mlp_dim=36, act="gelu_tanh", eps=1e-6, image_size=16, patch_size=4,
                     max_text_len=10, pad_token_id=1)
    ours = ViLT(cfg).eval()
    hf = transformers.ViltModel(vilt_config_to_hf(cfg)).eval()
    hf.load_state_dict(ours.to_hf_state_dict(), strict=True)
    ids, px, att, pm = random_vilt_inputs(hf.config, batch=3, length=8)
    with torch.no_grad():
        assert (ours(ids, px, att, pm).pooler_output - hf(input_ids=ids, attention_mask=att, pixel_values=px, pixel_mask=pm).pooler_output).abs().max() < 1e-5


def test_a_wrong_mapping_is_caught():
    "Swapping the query and key projections of one layer must break parity: the parity test can fail."
    cfg = CONFIGS["tiny"]
    hf = hf_model(transformers.ViltModel, cfg)
    ours = ViLT.from_hf(hf).eval()
    with torch.no_grad():
        q, k = ours.blocks[1].attn.q_proj.weight, ours.blocks[1].attn.k_proj.weight
        q_old = q.clone(); q.copy_(k); k.copy_(q_old)
        ids, px, att, pm = inputs_for(cfg)
        torch.manual_seed(0)
        ref = hf(input_ids=ids, attention_mask=att, pixel_values=px, pixel_mask=pm).pooler_output
        assert (ours(ids, px, att, pm).pooler_output - ref).abs().max() > 1e-3


def test_mapping_errors_name_the_key():
    cfg = vilt_config_from_hf(CONFIGS["tiny"])
    sd = transformers.ViltModel(CONFIGS["tiny"]).state_dict()
    table = vilt_key_table(cfg)
    with pytest.raises(KeyError, match="extra.weight"): load_renamed(ViLT(cfg), {**sd, "extra.weight": torch.zeros(1)}, table, "ViltModel")
    missing = dict(sd); del missing["pooler.dense.bias"]
    with pytest.raises(KeyError, match="pooler.dense.bias"): load_renamed(ViLT(cfg), missing, table, "ViltModel")
    wrong = dict(sd); wrong["layernorm.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match=r"layernorm.weight.*\(3,\).*\(64,\)"): load_renamed(ViLT(cfg), wrong, table, "ViltModel")
    with pytest.raises(ValueError, match="no pooler"): ViLT.from_hf(transformers.ViltModel(CONFIGS["tiny"], add_pooling_layer=False))
    with pytest.raises(TypeError, match="ViltModel"): ViLT.from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="ViltModel"): ViltForMLM.from_hf(transformers.ViltModel(CONFIGS["tiny"]))


def test_config_conversion_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match="qkv_bias"): vilt_config_from_hf(transformers.ViltConfig(qkv_bias=False))
    with pytest.raises(ValueError, match="tanh"): vilt_config_from_hf(transformers.ViltConfig(hidden_act="tanh"))
    with pytest.raises(ValueError, match=r"square image_size.*\(32, 48\)"): vilt_config_from_hf(transformers.ViltConfig(image_size=(32, 48)))
    c = vilt_config_from_hf(transformers.ViltConfig(hidden_act="gelu_new", image_size=[64, 64], patch_size=(16, 16)))
    assert (c.act, c.image_size, c.patch_size) == ("gelu_tanh", 64, 16)
    with pytest.raises(ValueError, match="multiple of patch_size"): ViltConfig(image_size=20, patch_size=8)
    with pytest.raises(ValueError, match="layers 0"): ViltConfig(layers=0)


def test_the_registered_checkpoint_loads_and_converts():
    hf = load_pretrained(transformers.ViltForMaskedLM, "dandelin/vilt-b32-mlm", verbose=False).eval()
    ids, px, att, pm = random_vilt_inputs(hf.config, batch=2, length=7, seed=5)
    assert vilt_head_parity(hf, ids, px, att, pm) < 1e-5
    assert ViltForMLM.from_hf(hf).cfg == vilt_config_from_hf(tiny_vilt_config()) or hf.config.hidden_size == 768


# ---------------------------------------------------------------- the model's own promises
def tiny_vilt(seed=0, **kw):
    torch.manual_seed(seed)
    return ViLT(ViltConfig(vocab_size=40, dim=16, layers=2, heads=2, mlp_dim=24, image_size=16, patch_size=4, **kw)).eval()


def test_output_shapes_and_splits():
    m = tiny_vilt()
    ids, att = torch.tensor([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0]]), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    out = m(ids, torch.randn(2, 3, 16, 16), att, need_weights=True)
    assert out.last_hidden_state.shape == (2, 5 + 17, 16) and out.pooler_output.shape == (2, 16) and out.text_len == 5
    assert torch.equal(out.text_states, out.last_hidden_state[:, :5]) and torch.equal(out.image_states, out.last_hidden_state[:, 5:])
    assert out.mask.tolist()[1][:5] == [True, True, True, False, False] and out.mask[:, 5:].all()
    assert len(out.attentions) == 2 and out.attentions[1].shape == (2, 2, 22, 22)
    assert out.attentions[0][1, :, :, 3:5].abs().max() == 0
    assert m(ids, torch.randn(2, 3, 16, 16), att).attentions is None
    assert torch.allclose(out.pooler_output, torch.tanh(m.pooler(out.last_hidden_state[:, 0])))
    assert torch.allclose(out.last_hidden_state.mean(-1), m.norm.bias.mean().expand(2, 22), atol=1e-5)   # final LayerNorm applied


def test_embed_adds_modality_types_and_concatenates():
    m = tiny_vilt()
    ids, px = torch.tensor([[2, 5, 3]]), torch.randn(1, 3, 16, 16)
    x, mask = m.embed(ids, px)
    img, img_mask = m.patch_embed(px)
    assert x.shape == (1, 3 + 17, 16) and mask.all()
    assert torch.allclose(x[:, :3], m.text_embed(ids) + m.modality_embed.weight[0])
    assert torch.allclose(x[:, 3:], img + m.modality_embed.weight[1])
    m2 = ViLT(ViltConfig(vocab_size=40, dim=16, layers=1, heads=2, mlp_dim=24, image_size=16, patch_size=4, modality_types=3))
    x2, _ = m2.embed(ids, px, image_token_type_idx=2)
    assert torch.allclose(x2[:, 3:], m2.patch_embed(px)[0] + m2.modality_embed.weight[2])
    with pytest.raises(ValueError, match=r"1\.\.2, got 3"): m2.embed(ids, px, image_token_type_idx=3)
    with pytest.raises(ValueError, match=r"1\.\.2, got 0"): m2.embed(ids, px, image_token_type_idx=0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(1, 4), w=st.integers(1, 4), n_text=st.integers(2, 6))
def test_padding_changes_nothing_that_present_tokens_compute(seed, h, w, n_text):
    "Whatever sits in padded text slots or padded pixels, the pooled output and every present token's state are unchanged."
    m = tiny_vilt(seed % 3)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 40, (1, 6), generator=g); att = (torch.arange(6) < n_text).long()[None]
    px = torch.randn(1, 3, 16, 16, generator=g)
    pm = torch.zeros(1, 16, 16, dtype=torch.long); pm[0, :4 * h, :4 * w] = 1
    ids2, px2 = ids.clone(), px.clone()
    ids2[0, n_text:] = torch.randint(4, 40, (6 - n_text,), generator=g)
    px2[:, :, 4 * h:] = torch.randn_like(px2[:, :, 4 * h:]) * 5; px2[:, :, :, 4 * w:] = 3.0
    with torch.no_grad():
        a, b = m(ids, px, att, pm), m(ids2, px2, att, pm)
    assert torch.allclose(a.pooler_output, b.pooler_output, atol=1e-5)
    assert torch.allclose(a.last_hidden_state[a.mask], b.last_hidden_state[b.mask], atol=1e-5)
    assert int(a.mask.sum()) == n_text + 1 + h * w


def test_patch_embeddings_by_hand():
    pe = PatchEmbeddings(dim=5, image_size=8, patch_size=4, channels=2)
    px = torch.randn(1, 2, 8, 12)
    tok, present = pe(px)
    assert tok.shape == (1, 1 + 6, 5) and present.all()
    for r, c in ((0, 0), (1, 2), (0, 1)):
        expect = pe.proj(px[0, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(-1)) + pe.grid_positions(2, 3, 2, 3)[3 * r + c]
        assert torch.allclose(tok[0, 1 + 3 * r + c], expect, atol=1e-6)
    assert torch.allclose(tok[0, 0], pe.cls_token + pe.pos_embed[0])
    # resizing the 2 x 2 grid to 2 x 3 (corners aligned) keeps the corner positions and averages the middle column
    grid = pe.pos_embed[1:].reshape(2, 2, 5)
    resized = pe.grid_positions(2, 3, 2, 3).reshape(2, 3, 5)
    assert torch.allclose(resized[:, 0], grid[:, 0]) and torch.allclose(resized[:, 2], grid[:, 1])
    assert torch.allclose(resized[:, 1], grid.mean(1), atol=1e-6)
    padded = pe.grid_positions(1, 2, 2, 3).reshape(2, 3, 5)
    assert padded[1].abs().sum() == 0 and padded[:, 2].abs().sum() == 0


def test_patch_mask_reads_the_top_left_pixel_of_each_patch():
    pe = PatchEmbeddings(dim=4, image_size=8, patch_size=4)
    pm = torch.zeros(2, 8, 8, dtype=torch.long)
    pm[0] = 1; pm[1, :5, :1] = 1                            # image 1: 5 x 1 real pixels -> top-left pixels of patches (0,0), (1,0)
    m = pe.patch_mask(pm, 2, 8, 8)
    assert m.dtype == torch.bool and m[0].all() and m[1].tolist() == [[True, False], [True, False]]
    assert pe.patch_mask(None, 3, 8, 12).shape == (3, 2, 3)


def test_bad_input_names_the_argument():
    m = tiny_vilt()
    ids, px = torch.tensor([[2, 5, 3]]), torch.randn(1, 3, 16, 16)
    cases = [
        (lambda: m(ids.float(), px), "input_ids", "integer"),
        (lambda: m(torch.tensor([2, 5]), px), "input_ids", "(B, L)"),
        (lambda: m(torch.tensor([[2, 40]]), px), "0..39", "2..40"),
        (lambda: m(torch.tensor([[-1, 3]]), px), "0..39", "-1..3"),
        (lambda: m(torch.zeros(1, 41, dtype=torch.long), px), "(1, 41)", "40"),
        (lambda: m(torch.zeros(1, 0, dtype=torch.long), px), "(1, 0)"),
        (lambda: m(ids, torch.randn(1, 1, 16, 16)), "pixel_values", "(1, 1, 16, 16)"),
        (lambda: m(ids, torch.randn(1, 3, 16, 18)), "multiples of 4"),
        (lambda: m(ids, torch.randn(3, 16, 16)), "pixel_values"),
        (lambda: m(ids, torch.randn(2, 3, 16, 16)), "same batch size"),
        (lambda: m(ids, px, torch.ones(1, 4)), "attention_mask", "(1, 3)", "(1, 4)"),
        (lambda: m(ids, px, pixel_mask=torch.ones(1, 16, 8)), "pixel_mask", "(1, 16, 16)", "(1, 16, 8)"),
        (lambda: m(ids, px, pixel_mask=torch.zeros(1, 16, 16)), "top-left rectangle", "[0]"),
        (lambda: m(ids, px, token_type_ids=torch.zeros(1, 2, dtype=torch.long)), "token_type_ids", "(1, 3)"),
    ]
    for fn, *needles in cases:
        with pytest.raises(ValueError) as e: fn()
        assert all(n in str(e.value) for n in needles), (str(e.value), needles)
    hole = torch.ones(1, 16, 16); hole[0, 4:8, 4:8] = 0
    with pytest.raises(ValueError, match="top-left rectangle"): m(ids, px, pixel_mask=hole)


def test_text_embeddings_match_bert_layout():
    emb = TextEmbeddings(vocab_size=12, dim=6, max_len=5, pad_token_id=1)
    ids, types = torch.tensor([[2, 7, 1]]), torch.tensor([[0, 0, 1]])
    ref = torch.nn.functional.layer_norm(emb.word(ids) + emb.token_type(types) + emb.position.weight[:3], (6,),
                                         emb.norm.weight, emb.norm.bias, eps=1e-12)
    assert torch.allclose(emb(ids, types), ref, atol=1e-6)
    assert emb.word.padding_idx == 1


# ---------------------------------------------------------------- heads
def test_itm_head_loss_and_labels():
    assert math.isclose(itm_loss(torch.zeros(4), torch.tensor([1, 0, 1, 0])).item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(itm_loss(torch.tensor([2.0]), torch.tensor([0])).item(), math.log1p(math.exp(2.0)), rel_tol=1e-6)
    with pytest.raises(ValueError, match="0 or 1"): itm_loss(torch.zeros(2), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\(2,\)"): itm_loss(torch.zeros(2), torch.tensor([[1, 0]]))
    head = ITMHead(8)
    assert head(torch.randn(3, 8)).shape == (3,)
    torch.manual_seed(0)
    m = ViltForITM(ViltConfig(vocab_size=40, dim=16, layers=1, heads=2, mlp_dim=24, image_size=16, patch_size=4))
    out = m(torch.tensor([[2, 5, 3], [2, 6, 3]]), torch.randn(2, 3, 16, 16), labels=torch.tensor([1, 0]))
    assert out.logits.shape == (2,) and torch.equal(out.labels, torch.tensor([1, 0]))
    assert torch.allclose(out.loss, itm_loss(out.logits, out.labels))
    assert m(torch.tensor([[2, 5, 3]]), torch.randn(1, 3, 16, 16)).loss is None


def test_mlm_head_ties_weights_and_ignores_unmasked_positions():
    torch.manual_seed(0)
    m = ViltForMLM(ViltConfig(vocab_size=30, dim=16, layers=1, heads=2, mlp_dim=24, image_size=16, patch_size=4))
    assert m.mlm.decoder.weight is m.backbone.text_embed.word.weight
    ids, px = torch.tensor([[2, 4, 9, 3]]), torch.randn(1, 3, 16, 16)
    labels = torch.tensor([[-100, 11, -100, -100]])
    out = m(ids, px, labels=labels)
    assert out.logits.shape == (1, 4, 30)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits[0, 1:2], torch.tensor([11])))
    h = m.backbone(ids, px).text_states
    assert torch.allclose(out.logits, m.mlm.decoder(m.mlm.norm(torch.nn.functional.gelu(m.mlm.dense(h)))), atol=1e-6)
    with pytest.raises(ValueError, match="labels"): m(ids, px, labels=labels[:, :2])
    assert isinstance(MLMHead(8, 10).act(torch.zeros(1)), torch.Tensor)


# ---------------------------------------------------------------- co-attention
def tiny_two(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=40, text_dim=16, image_dim=24, heads=2, mlp_ratio=2, pool_dim=8, image_size=16, patch_size=4)
    return CoAttentionModel(CoAttentionConfig(**{**cfg, **kw})).eval()


def test_co_attention_model_shapes_masks_and_weights():
    m = tiny_two(co_layers=2)
    ids, att = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    pm = torch.ones(2, 16, 16); pm[1, 8:] = 0
    out = m(ids, torch.randn(2, 3, 16, 16), att, pm, need_weights=True)
    assert out.text_states.shape == (2, 4, 16) and out.image_states.shape == (2, 17, 24) and out.pooler_output.shape == (2, 8)
    assert out.text_mask.tolist() == att.bool().tolist() and out.image_mask[1].sum() == 1 + 8
    assert len(out.text_to_image) == len(out.image_to_text) == 2
    assert out.text_to_image[0].shape == (2, 2, 4, 17) and out.image_to_text[1].shape == (2, 2, 17, 4)
    assert out.text_to_image[1][1, :, :, 9:].abs().max() == 0          # words never look at padded patches
    assert out.image_to_text[0][1, :, :, 3].abs().max() == 0           # patches never look at the padded word
    assert torch.allclose(out.text_to_image[0].sum(-1), torch.ones(2, 2, 4), atol=1e-5)
    assert m(ids, torch.randn(2, 3, 16, 16), att).text_to_image is None
    t = torch.tanh(m.text_pool(out.text_states[:, 0])) * torch.tanh(m.image_pool(out.image_states[:, 0]))
    assert torch.allclose(out.pooler_output, t, atol=1e-6)


def test_co_attention_is_parallel_and_streams_meet_only_there():
    "The text stream's update reads the image stream's layer input; the streams only meet in co-attention."
    m = tiny_two(text_layers=0, image_layers=0, co_layers=1)
    ids, px = torch.tensor([[2, 5, 6, 3]]), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        t, v = m.text_embed(ids), m.patch_embed(px)[0]
        co = m.co_blocks[0]
        assert isinstance(co, CoAttentionBlock)
        expect_t = co.a_from_b(t, context=v).hidden                      # text reads the image's layer input
        got = m(ids, px, need_weights=True)
        manual = m.text_norm(m.text_after[0](expect_t).hidden)
        assert torch.allclose(got.text_states, manual, atol=1e-5)
        no_co = tiny_two(text_layers=2, image_layers=2, co_layers=1)
        a = no_co(ids, px).text_states
        b = no_co(ids, px.flip(-1)).text_states
        assert not torch.allclose(a, b, atol=1e-4)                      # the image reaches the text through co-attention


def test_co_attention_config_and_input_errors():
    with pytest.raises(ValueError, match="co_layers"): CoAttentionConfig(co_layers=0)
    with pytest.raises(ValueError, match="-1"): CoAttentionConfig(text_layers=-1)
    with pytest.raises(ValueError, match="30"): CoAttentionConfig(text_dim=30, heads=4)
    m = tiny_two()
    with pytest.raises(ValueError, match="same batch size"): m(torch.tensor([[2, 3]]), torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="attention_mask"): m(torch.tensor([[2, 3]]), torch.randn(1, 3, 16, 16), torch.ones(1, 3))


def test_image_text_matcher_wraps_any_backbone():
    m = ImageTextMatcher(tiny_two(), 8)
    out = m(torch.tensor([[2, 5, 3]]), torch.randn(1, 3, 16, 16), labels=torch.tensor([1]))
    assert out.logits.shape == (1,) and out.loss is not None and out.loss.item() > 0


# ---------------------------------------------------------------- the dual encoder and the experiment's data
def tiny_dual():
    torch.manual_seed(0)
    clip = CLIP(ClipCfg(VisionCfg(width=16, layers=1, heads=2, mlp_width=24, image_size=16, patch_size=4),
                        TextCfg(width=16, layers=1, heads=2, mlp_width=24, vocab_size=40, context_length=10, eos_token_id=3), embed_dim=8))
    return DualEncoderMatcher(clip).eval()


def test_dual_encoder_logit_is_a_scaled_cosine():
    m = tiny_dual()
    with torch.no_grad(): m.bias.fill_(-0.5)
    ids, px = torch.tensor([[2, 5, 3], [2, 9, 3]]), torch.randn(2, 3, 16, 16)
    out = m(ids, px, labels=torch.tensor([1, 0]))
    img, txt = m.clip.encode_image(px, normalize=True), m.clip.encode_text(ids, normalize=True)
    expect = m.clip.logit_scale().exp() * torch.nn.functional.cosine_similarity(img, txt) - 0.5
    assert torch.allclose(out.logits, expect, atol=1e-5) and out.loss is not None
    with pytest.raises(ValueError, match="pixel_mask"): m(ids, px, pixel_mask=torch.zeros(2, 16, 16))


def test_itm_logits_batches_in_eval_mode():
    m = tiny_dual().train()
    ids, px = torch.tensor([[2, 5, 3]] * 5), torch.randn(5, 3, 16, 16)
    att = torch.ones(5, 3, dtype=torch.long)
    out = itm_logits(m, ids, px, att, batch_size=2)
    assert out.shape == (5,) and not m.training
    with torch.no_grad(): assert torch.allclose(out, m(ids, px, att).logits, atol=1e-5)


def test_claims_and_captions():
    claims = scene_claims(["red", "blue"], ["circle", "square"], "above")
    assert claims[1] == (("blue", "square"), "below", ("red", "circle"))
    assert [render_claim(claims[0], t) for t in range(3)] == [
        "a red circle above a blue square", "the red circle is above the blue square", "there is a red circle above a blue square"]
    with pytest.raises(ValueError, match="behind"): scene_claims(["red", "blue"], ["circle", "square"], "behind")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["colour", "shape", "relation"]))
def test_every_mismatch_is_false_and_minimal(seed, kind):
    rng = np.random.default_rng(seed)
    palette, shapes = ["red", "blue", "green"], ["circle", "square", "cross"]
    colors = [palette[int(i)] for i in rng.integers(0, 3, 2)]
    shp = [shapes[int(i)] for i in rng.integers(0, 3, 2)]
    if (colors[0], shp[0]) == (colors[1], shp[1]): shp[1] = shapes[(shapes.index(shp[0]) + 1) % 3]
    true = scene_claims(colors, shp, ["left", "right", "above", "below"][seed % 4])
    claim = true[seed % 2]
    false = mismatch(claim, kind, rng, palette, shapes)
    assert false not in true and false[0] != false[2]
    changed = [(x, y) for x, y in zip(claim[0] + claim[2], false[0] + false[2]) if x != y]
    if kind == "relation": assert false == (claim[2], claim[1], claim[0])
    else:
        assert len(changed) == 1 and false[1] == claim[1]
        assert changed[0][1] in (palette if kind == "colour" else shapes)


def test_itm_pairs_structure_and_determinism():
    cols = ([["red", "blue"], ["green", "red"], ["blue", "blue"], ["red", "green"]],
            [["circle", "square"], ["cross", "cross"], ["diamond", "circle"], ["square", "square"]], ["left", "above", "below", "right"])
    a = itm_pairs(*cols, negatives="all", seed=3)
    assert a == itm_pairs(*cols, negatives="all", seed=3) and a != itm_pairs(*cols, negatives="all", seed=4)
    assert len(a["caption"]) == 4 * 5 and a["kind"][:5] == ["match", *ITM_KINDS]
    for g in range(4):
        rows = [i for i, x in enumerate(a["group"]) if x == g]
        assert [a["label"][i] for i in rows] == [1, 0, 0, 0, 0] and len({a["image"][i] for i in rows}) == 1
        words = [sorted(a["caption"][i].split()) for i in rows]
        assert words[0] == words[4]                                     # the relation swap: the same words
        assert a["caption"][rows[0]] not in [a["caption"][i] for i in rows[1:]]
    b = itm_pairs(*cols, negatives="one", repeats=50, seed=0)
    assert len(b["caption"]) == 4 * 50 * 2 and sum(b["label"]) == 200 and max(b["group"]) == 199
    kinds = [k for k in b["kind"] if k != "match"]
    assert {k: kinds.count(k) for k in ITM_KINDS} == {k: kinds.count(k) for k in ITM_KINDS} and all(kinds.count(k) > 25 for k in ITM_KINDS)
    with pytest.raises(ValueError, match="negatives"): itm_pairs(*cols, negatives="two")
    with pytest.raises(ValueError, match="at least 2"): itm_pairs(*(c[:1] for c in cols))
    with pytest.raises(ValueError, match="no other scene"): itm_pairs([["red", "blue"]] * 2, [["circle", "square"]] * 2, ["left"] * 2, negatives="all")


def test_group_loss_is_the_cross_entropy_of_the_first_caption():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    expect = -(logits.log_softmax(-1)[:, 0]).mean()
    assert torch.allclose(itm_group_loss(logits), expect)
    assert math.isclose(itm_group_loss(torch.zeros(4, 5)).item(), math.log(5), rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"\(3, 1\)"): itm_group_loss(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"\(6,\)"): itm_group_loss(torch.zeros(6))


def test_pairwise_accuracy_by_hand():
    pairs = {"label": [1, 0, 0, 1, 0, 0], "group": [0, 0, 0, 1, 1, 1], "kind": ["match", "colour", "shape"] * 2}
    assert pairwise_accuracy(torch.tensor([2.0, 1.0, 3.0, -1.0, -2.0, 0.5]), pairs) == {"colour": 1.0, "shape": 0.0}
    assert pairwise_accuracy(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0]), pairs) == {"colour": 0.5, "shape": 0.5}
    with pytest.raises(ValueError, match=r"6 pairs, got logits \(5,\)"): pairwise_accuracy(torch.zeros(5), pairs)
    with pytest.raises(ValueError, match=r"got logits \(6, 1\)"): pairwise_accuracy(torch.zeros(6, 1), pairs)
    with pytest.raises(KeyError, match="kind"): pairwise_accuracy(torch.zeros(6), {k: pairs[k] for k in ("label", "group")})
    no_true = {**pairs, "label": [0, 0, 0, 1, 0, 0]}
    with pytest.raises(ValueError, match="exactly one true caption"): pairwise_accuracy(torch.zeros(6), no_true)
    later = {k: v[3:] for k, v in pairs.items()}                      # a subset of the groups is fine
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0]), later) == {"colour": 1.0, "shape": 0.0}


def test_experiment_helpers_refuse_bad_arguments():
    claim = scene_claims(["red", "blue"], ["circle", "square"], "left")[0]
    with pytest.raises(ValueError, match=r"0\.\.2, got 3"): render_claim(claim, 3)
    with pytest.raises(ValueError, match="'behind'"): render_claim((claim[0], "behind", claim[2]), 0)
    rng = np.random.default_rng(0)
    reds = scene_claims(["red", "red"], ["circle", "square"], "left")[0]
    with pytest.raises(ValueError, match="no colour"): mismatch(reds, "colour", rng, ["red"], ["circle", "square"])
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        itm_pairs([["red", "blue"]] * 2, [["circle", "square"]] * 2, ["left", "above"], repeats=0)
    m = ImageTextMatcher(ViLT(ViltConfig(vocab_size=20, dim=16, heads=2, mlp_dim=16, max_text_len=6, image_size=16)), 16)
    ids, px = torch.randint(1, 20, (4, 5)), torch.randn(4, 3, 16, 16)
    with pytest.raises(ValueError, match="have 4, 3 and 4 rows"): itm_logits(m, ids, px[:3], torch.ones(4, 5))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"): itm_logits(m, ids, px, torch.ones(4, 5), batch_size=0)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(0, 3), Lt=st.integers(0, 8), C=st.integers(1, 4), H=st.integers(0, 20), W=st.integers(0, 20),
       float_ids=st.booleans(), big_id=st.booleans(), mask_rows=st.integers(0, 20), two=st.booleans())
def test_any_input_works_or_is_refused_by_mmlab(B, Lt, C, H, W, float_ids, big_id, mask_rows, two):
    "Random shapes and dtypes: the models either run or raise a ValueError from mmlab's own checks, never from inside torch."
    import traceback
    from pathlib import Path
    import mmlab
    torch.manual_seed(0)
    model = (CoAttentionModel(CoAttentionConfig(vocab_size=30, max_text_len=6, text_dim=16, image_dim=16, heads=2, image_size=16, patch_size=4))
             if two else ViLT(ViltConfig(vocab_size=30, max_text_len=6, dim=16, heads=2, mlp_dim=16, image_size=16, patch_size=4)))
    ids = torch.randint(0, 30, (B, Lt)) + (30 if big_id else 0)
    ids = ids.float() if float_ids else ids
    px, pm = torch.randn(B, C, H, W), torch.zeros(B, H, W); pm[:, :mask_rows] = 1
    try:
        out = model(ids, px, None, pm)
    except ValueError as e:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        assert Path(frame.filename).resolve().is_relative_to(Path(mmlab.__file__).parent), (frame, e)
        return
    assert B >= 1 and 1 <= Lt <= 6 and not float_ids and not big_id and C == 3 and H % 4 == 0 and W % 4 == 0 and mask_rows >= 1
    assert torch.isfinite(out.pooler_output).all() and out.pooler_output.shape[0] == B


# ---------------------------------------------------------------- GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_forward_and_backward_agree_with_fp32_on_cuda():
    torch.manual_seed(0)
    cfg = ViltConfig(vocab_size=100, dim=64, layers=2, heads=4, mlp_dim=128, image_size=32, patch_size=8)
    m = ViltForITM(cfg).cuda()
    ids = torch.randint(4, 100, (8, 12), device="cuda"); px = torch.randn(8, 3, 32, 32, device="cuda")
    pm = torch.ones(8, 32, 32, device="cuda"); pm[1:, 16:] = 0
    y = torch.randint(0, 2, (8,), device="cuda")
    out32 = m(ids, px, pixel_mask=pm, labels=y); out32.loss.backward()
    g32 = {n: p.grad.clone() for n, p in m.named_parameters()}; m.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out16 = m(ids, px, pixel_mask=pm, labels=y)
    out16.loss.backward()
    assert (out16.logits.float() - out32.logits).abs().max() < 5e-2
    assert abs(out16.loss.item() - out32.loss.item()) < 2e-2
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in g32.values()]),
                                                torch.cat([m.get_parameter(n).grad.float().flatten() for n in g32]), dim=0)
    assert cos > 0.99


def test_config_round_trip_keeps_every_field_and_the_initialisation_is_berts():
    import dataclasses
    from mmlab.vilt import ViLT, ViltConfig, vilt_config_from_hf, vilt_config_to_hf
    cfg = ViltConfig(vocab_size=50, modality_types=3, pad_token_id=5, attn_dropout=0.15, dropout=0.05, dim=32, heads=4, mlp_dim=48,
                     layers=1, image_size=32, patch_size=8)
    hf = vilt_config_to_hf(cfg, num_images=2)
    assert hf.num_images == 2 and hf.modality_type_vocab_size == 3 and hf.pad_token_id == 5
    back = vilt_config_from_hf(hf)
    assert dataclasses.asdict(back) == dataclasses.asdict(cfg)
    assert cfg.block().attn_dropout == 0.15 and cfg.block().dropout == 0.05
    torch.manual_seed(0)
    pe = ViLT(cfg).patch_embed.pos_embed
    assert abs(pe.mean().item()) < 0.01 and abs(pe.std().item() - cfg.init_std) < 0.005
    from mmlab.vilt import _check_ids
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor of shape \(B, L\), got \(2, 3\) torch.float32"):
        _check_ids(torch.zeros(2, 3), 50, 8)
    with pytest.raises(ValueError, match=r"got list$"): _check_ids([[1, 2]], 50, 8)
