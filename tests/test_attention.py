"Parity, mask and property tests for mmlab.attention."
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from mmlab.attention import (CoAttentionBlock, MultiHeadAttention, load_torch_mha,
                             scaled_dot_product_attention)

SETTINGS = settings(max_examples=15, deadline=None)
shapes = st.fixed_dictionaries(dict(B=st.integers(1, 4), H=st.integers(1, 4), Lq=st.integers(1, 7),
                                    Lk=st.integers(1, 9), d=st.sampled_from([1, 4, 8]), seed=st.integers(0, 10_000)))


def _inputs(B, H, Lq, Lk, d, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, d, generator=g, dtype=torch.float64) for L in (Lq, Lk, Lk)], g


@SETTINGS
@given(shapes)
def test_sdpa_matches_torch_with_bool_mask(s):
    (q, k, v), g = _inputs(**s)
    mask = torch.rand(s["B"], 1, s["Lq"], s["Lk"], generator=g) > 0.4
    mask[..., 0] = True                                          # rows keep one key here; dead rows tested below
    ours, w = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1], dtype=w.dtype))
    assert (w[~mask.expand_as(w)] == 0).all()


@SETTINGS
@given(shapes)
def test_sdpa_matches_torch_with_additive_mask_and_scale(s):
    (q, k, v), g = _inputs(**s)
    add = torch.randn(s["Lq"], s["Lk"], generator=g, dtype=torch.float64)
    ours, _ = scaled_dot_product_attention(q, k, v, mask=add, scale=0.3)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=add, scale=0.3))


@SETTINGS
@given(shapes)
def test_masked_keys_cannot_change_the_output(s):
    (q, k, v), g = _inputs(**s)
    mask = torch.rand(s["B"], 1, 1, s["Lk"], generator=g) > 0.5
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    hidden = ~mask.transpose(-1, -2).expand_as(k)                # positions of masked keys in k and v
    k2, v2 = k.clone(), v.clone()
    k2[hidden] = 1e3; v2[hidden] = -1e3
    out2, _ = scaled_dot_product_attention(q, k2, v2, mask=mask)
    torch.testing.assert_close(out, out2)
    assert torch.isfinite(out).all()


def test_fully_masked_rows_are_zero_with_finite_grads():
    q, k, v = (torch.randn(2, 3, 4, requires_grad=True) for _ in range(3))
    mask = torch.ones(3, 3, dtype=torch.bool); mask[1] = False
    add = torch.zeros(3, 3); add[1] = float("-inf")
    for m in (mask, add):
        out, w = scaled_dot_product_attention(q, k, v, mask=m)
        assert out[:, 1].abs().sum() == 0 and w[:, 1].abs().sum() == 0
        out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_sdpa_errors_name_the_shapes():
    q = torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match=r"q \(1, 2, 4\) and k \(1, 3, 5\)"):
        scaled_dot_product_attention(q, torch.randn(1, 3, 5), torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="same length"):
        scaled_dot_product_attention(q, torch.randn(1, 3, 4), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="dropout_p"):
        scaled_dot_product_attention(q, q, q, dropout_p=1.0)
    with pytest.raises(TypeError, match="int64"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(2, 2, dtype=torch.long))


def test_dropout_is_unbiased():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 3)
    ref, _ = scaled_dot_product_attention(q, k, v)
    n = 4000                                                      # independent draws, as one batch
    out, w = scaled_dot_product_attention(q.expand(n, 2, 4), k.expand(n, 5, 4), v.expand(n, 5, 3), dropout_p=0.3)
    mean = out.mean(0, keepdim=True)
    assert abs((w == 0).float().mean().item() - 0.3) < 0.02
    torch.testing.assert_close(mean, ref, atol=0.08, rtol=0)


@SETTINGS
@given(B=st.integers(1, 3), H=st.sampled_from([1, 2, 4]), Lq=st.integers(1, 6), Lk=st.integers(1, 8),
       kv_dim=st.sampled_from([8, 12]), seed=st.integers(0, 10_000))
def test_cross_attention_matches_torch_mha(B, H, Lq, Lk, kv_dim, seed):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(8, H, kdim=kv_dim, vdim=kv_dim, batch_first=True).eval()
    ours = load_torch_mha(MultiHeadAttention(8, H, kv_dim=kv_dim), mha).eval()
    x, ctx = torch.randn(B, Lq, 8), torch.randn(B, Lk, kv_dim)
    keep = torch.rand(B, Lk) > 0.3; keep[:, 0] = True
    ref_out, ref_w = mha(x, ctx, ctx, key_padding_mask=~keep, need_weights=True)
    got = ours(x, ctx, mask=keep, need_weights=True)
    torch.testing.assert_close(got.output, ref_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.weights.mean(1), ref_w, atol=1e-6, rtol=1e-4)
    fused = ours(x, ctx, mask=keep)                               # the fused-kernel path
    assert fused.weights is None
    torch.testing.assert_close(fused.output, ref_out, atol=1e-5, rtol=1e-4)


def test_cross_attention_dead_rows_and_backward_on_both_paths():
    torch.manual_seed(0)
    att = MultiHeadAttention(8, 2, kv_dim=6)
    x, ctx = torch.randn(3, 4, 8), torch.randn(3, 5, 6)
    keep = torch.ones(3, 5, dtype=torch.bool); keep[2] = False   # sample 2's context is entirely missing
    for need in (False, True):
        att.zero_grad()
        out = att(x, ctx, mask=keep, need_weights=need).output
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[2], att.out_proj.bias.expand(4, 8))   # nothing but the output bias
        out.square().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in att.parameters())


def test_cross_attention_errors():
    att = MultiHeadAttention(8, 2, kv_dim=6)
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(9, 2)
    with pytest.raises(ValueError, match=r"query must be \(B, Lq, 8\), got \(2, 3, 6\)"):
        att(torch.randn(2, 3, 6), torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match=r"context must be \(2, Lk, 6\)"):
        att(torch.randn(2, 3, 8), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="key mask"):
        att(torch.randn(2, 3, 8), torch.randn(2, 4, 6), mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="sizes differ"):
        load_torch_mha(att, nn.MultiheadAttention(8, 4, kdim=6, vdim=6))


def test_co_attention_batch_of_one_and_mask_invariance():
    torch.manual_seed(0)
    co = CoAttentionBlock(8, 12, num_heads=2).eval()
    a, b = torch.randn(1, 3, 8), torch.randn(1, 4, 12)
    ma = torch.tensor([[True, True, False]])
    out = co(a, b, mask_a=ma, need_weights=True)
    assert out.a.shape == (1, 3, 8) and out.b.shape == (1, 4, 12)
    assert out.weights_b_to_a[..., 2].abs().sum() == 0
    a2 = a.clone(); a2[0, 2] = 50.0
    torch.testing.assert_close(co(a2, b, mask_a=ma).b, out.b)     # b never sees a's missing position


def test_attention_dropout_only_in_training():
    "Dropout on the weights applies in training; in eval mode two calls agree and match p = 0."
    torch.manual_seed(0)
    att = MultiHeadAttention(8, 2, dropout=0.5)
    q, kv = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    clean = MultiHeadAttention(8, 2); clean.load_state_dict(att.state_dict())
    att.eval(); clean.eval()
    for w in (False, True):
        torch.testing.assert_close(att(q, kv, need_weights=w).output, clean(q, kv, need_weights=w).output)
    att.train()
    assert not torch.allclose(att(q, kv).output, att(q, kv).output)


def test_co_attention_is_simultaneous_not_sequential():
    "Stream b's update reads stream a's input to the layer, not a's update."
    torch.manual_seed(0)
    co = CoAttentionBlock(8, 6, num_heads=2).eval()
    a, b = torch.randn(2, 3, 8), torch.randn(2, 4, 6)
    out = co(a, b)
    torch.testing.assert_close(out.b, co.b_from_a(b, context=a).hidden)
    torch.testing.assert_close(out.a, co.a_from_b(a, context=b).hidden)
    assert not torch.allclose(out.b, co.b_from_a(b, context=out.a).hidden)


def test_transformer_block_matches_pytorch_layer_with_padding():
    from mmlab.attention import BlockConfig, TransformerBlock, load_torch_encoder_layer
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(12, 3, dim_feedforward=20, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    blk = load_torch_encoder_layer(TransformerBlock(BlockConfig(dim=12, heads=3, mlp_dim=20)), layer)
    x = torch.randn(3, 6, 12); keep = torch.rand(3, 6) > 0.3; keep[:, 0] = True
    torch.testing.assert_close(blk(x, mask=keep).hidden, layer(x, src_key_padding_mask=~keep), atol=1e-5, rtol=1e-5)


def test_causal_self_attention_ignores_the_future():
    torch.manual_seed(0)
    att = MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 6, 8); y = x.clone(); y[:, 3:] = torch.randn(1, 3, 8)
    for w in (False, True):
        a, b = att(x, is_causal=True, need_weights=w), att(y, is_causal=True, need_weights=w)
        torch.testing.assert_close(a.output[:, :3], b.output[:, :3])
        assert not torch.allclose(a.output[:, 3:], b.output[:, 3:])


def test_quick_gelu_value():
    from mmlab.attention import quick_gelu
    assert abs(quick_gelu(torch.tensor(1.0)).item() - 1 / (1 + math.exp(-1.702))) < 1e-6


# --- what the mutation run showed the tests above let through ---

def test_quick_gelu_equals_transformers():
    from transformers.activations import QuickGELUActivation
    from mmlab.attention import quick_gelu
    x = torch.linspace(-6, 6, 49, dtype=torch.float64)
    torch.testing.assert_close(quick_gelu(x), QuickGELUActivation()(x))


def test_block_config_checks_and_defaults():
    from mmlab.attention import BlockConfig
    assert BlockConfig(dim=1, heads=1).mlp_dim == 4                       # the smallest block is allowed
    assert BlockConfig(dim=24, heads=3).mlp_dim == 96 and BlockConfig(dim=24, heads=3, mlp_dim=7).mlp_dim == 7
    for dim, heads in ((6, 4), (0, 1), (8, 0)):
        with pytest.raises(ValueError, match=f"dim {dim} must be a positive multiple of heads {heads}"):
            BlockConfig(dim=dim, heads=heads)
    with pytest.raises(ValueError, match=r"needs self-attention, cross-attention \(cross_dim\) or both"):
        BlockConfig(self_attention=False)


def test_masks_of_every_shape_and_their_errors():
    "A (B, 1, Lq, Lk) mask works through the module; a mask that fits nothing is refused with both shapes."
    torch.manual_seed(0)
    att = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 3, 8)
    m4 = torch.rand(2, 1, 3, 3) > 0.3
    m4[..., 0] = True
    q, k, v = (att._heads(p(x)) for p in (att.q_proj, att.k_proj, att.v_proj))
    ref = att.out_proj(scaled_dot_product_attention(q, k, v, mask=m4)[0].transpose(1, 2).reshape(2, 3, 8))
    for w in (True, False):
        torch.testing.assert_close(att(x, mask=m4, need_weights=w).output, ref)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 1, 4, 3\) does not broadcast to \(B, H, Lq, Lk\) = \(2, 'H', 3, 3\)"):
        att(x, mask=torch.ones(2, 1, 4, 3, dtype=torch.bool))
    q = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"mask of shape \(5,\) does not broadcast to the scores' shape \(2, 3, 3\)"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(5, dtype=torch.bool))


def test_causal_combines_with_a_key_mask_and_an_additive_mask():
    from mmlab.attention import causal_mask
    torch.manual_seed(0)
    att = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 5, 8)
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    causal = causal_mask(5, 5)
    both = keep[:, None, None, :] & causal
    add = torch.randn(1, 1, 5, 5)
    for w in (True, False):
        torch.testing.assert_close(att(x, mask=keep, is_causal=True, need_weights=w).output,
                                   att(x, mask=both, need_weights=w).output)
        torch.testing.assert_close(att(x, mask=add, is_causal=True, need_weights=w).output,
                                   att(x, mask=add.masked_fill(~causal, float("-inf")), need_weights=w).output)


def test_fused_path_zeroes_dead_query_rows_and_applies_dropout():
    "Per-query dead rows (no key allowed) are zero on the fused path as on the written-out one; dropout reaches both."
    torch.manual_seed(0)
    att = MultiHeadAttention(8, 2, bias=False).eval()
    x = torch.randn(2, 4, 8)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1] = False                                                   # query 1 of item 0 sees nothing
    fused, written = att(x, mask=mask).output, att(x, mask=mask, need_weights=True).output
    torch.testing.assert_close(fused, written)
    assert (fused[0, 1] == 0).all() and (fused[0, 0] != 0).all()
    att.dropout = 0.5
    att.train()
    for w in (False, True):
        for m in (None, mask):                                              # the fused path has a branch for bool masks
            torch.manual_seed(1)
            assert not torch.allclose(att(x, mask=m, need_weights=w).output, att.eval()(x, mask=m, need_weights=w).output)
            att.train()


def test_bias_false_and_dropout_reach_every_layer():
    from mmlab.attention import MLP, BlockConfig, TransformerBlock
    att = MultiHeadAttention(8, 2, kv_dim=6, bias=False)
    assert all(getattr(att, f"{p}_proj").bias is None for p in "qkv") and att.out_proj.bias is None
    assert MLP(8, 16, bias=False).fc2.bias is None and MLP(8, 16, bias=False).fc1.bias is None
    blk = TransformerBlock(BlockConfig(dim=8, heads=2, cross_dim=6, bias=False, attn_dropout=0.3, dropout=0.2))
    assert not [n for n, _ in blk.named_parameters() if n.endswith("proj.bias") or n.startswith("mlp.") and n.endswith("bias")]
    assert blk.attn.dropout == 0.3 and blk.cross_attn.dropout == 0.3 and blk.drop.p == 0.2 and blk.mlp.drop.p == 0.2
    co = CoAttentionBlock(8, 6, num_heads=2, dropout=0.1, eps=1e-12)
    for b in (co.a_from_b, co.b_from_a):
        assert b.cfg.eps == 1e-12 and b.norm2.eps == 1e-12 and b.cfg.dropout == 0.1 and b.cfg.attn_dropout == 0.1
        assert b.cross_attn.dropout == 0.1


def test_block_returns_weights_and_is_causal_when_asked():
    from mmlab.attention import BlockConfig, TransformerBlock, causal_mask
    torch.manual_seed(0)
    blk = TransformerBlock(BlockConfig(dim=8, heads=2, cross_dim=6)).eval()
    x, ctx = torch.randn(2, 4, 8), torch.randn(2, 3, 6)
    out = blk(x, context=ctx, need_weights=True)
    assert out.self_weights.shape == (2, 2, 4, 4) and out.cross_weights.shape == (2, 2, 4, 3)
    torch.testing.assert_close(blk(x, context=ctx, is_causal=True).hidden, blk(x, mask=causal_mask(4, 4)[None, None], context=ctx).hidden)
    assert not torch.allclose(blk(x, context=ctx, is_causal=True).hidden, out.hidden)
    plain = TransformerBlock(BlockConfig(dim=8, heads=2))
    with pytest.raises(ValueError, match=r"has no cross-attention \(BlockConfig.cross_dim is None\) but was given a context"):
        plain(x, context=ctx)


def test_co_attention_masks_each_context_and_returns_both_weights():
    torch.manual_seed(0)
    co = CoAttentionBlock(8, 6, num_heads=2).eval()
    a, b = torch.randn(2, 4, 8), torch.randn(2, 3, 6)
    ma, mb = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool(), torch.tensor([[1, 0, 1], [1, 1, 0]]).bool()
    out = co(a, b, mask_a=ma, mask_b=mb, need_weights=True)
    assert out.weights_a_to_b.shape == (2, 2, 4, 3) and out.weights_b_to_a.shape == (2, 2, 3, 4)
    b2 = b.clone(); b2[~mb] = 100.0                                          # hidden positions of b change...
    a2 = a.clone(); a2[~ma] = 100.0
    out2 = co(a2, b2, mask_a=ma, mask_b=mb)
    torch.testing.assert_close(out2.a[ma], out.a[ma])                        # ...nothing a's present positions read
    torch.testing.assert_close(out2.b[mb], out.b[mb])
