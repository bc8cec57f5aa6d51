"Video chapter, models: single frame, CNN + LSTM, C3D, (2+1)D, the video transformer, VideoMAE parity, the GPU path."
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlab.attention import BlockOutput
from mmlab.data.schema import Batch, SchemaError
from mmlab.video import (C3D, CNNLSTM, Conv2Plus1D, R2Plus1D, SingleFrame, VideoCfg, VideoTransformer, VideoTransformerCfg,
                         mid_channels, sinusoid_table, videomae_cfg, videomae_to_ours)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


# --- models --------------------------------------------------------------------------------------------------------

CFG = VideoCfg(frames=8, size=16, width=8, feature_dim=16, hidden=16)
TCFG = VideoTransformerCfg(frames=8, size=16, patch=4, dim=32, mlp_dim=64)
ALL = [(SingleFrame, CFG), (CNNLSTM, CFG), (C3D, CFG), (R2Plus1D, CFG), (VideoTransformer, TCFG),
       (VideoTransformer, VideoTransformerCfg(frames=8, size=16, patch=4, dim=32, mlp_dim=64, attention="joint"))]


@pytest.mark.parametrize("cls, cfg", ALL)
def test_models_take_a_batch_or_a_tensor(cls, cfg):
    torch.manual_seed(0)
    m = cls(cfg).eval()
    x = torch.randn(3, 8, 3, 16, 16); y = torch.tensor([0, 7, 2])
    out = m(x, y)
    assert out.logits.shape == (3, cfg.num_classes) and torch.equal(out.labels, y)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, y))
    b = Batch({"video": x}, {"video": torch.ones(3, dtype=torch.bool)}, labels={"label": y}, sample_id=["a", "b", "c"])
    ob = m(b)
    assert torch.allclose(ob.logits, out.logits) and torch.equal(ob.labels, y) and torch.allclose(ob.loss, out.loss)
    assert m(x).loss is None and m(x).labels is None
    with pytest.raises(SchemaError, match=r"expected shape \(B, 8, 3, 16, 16\), got \(3, 8, 3, 32, 32\)"): m(torch.randn(3, 8, 3, 32, 32))
    with pytest.raises(SchemaError, match="expected shape"): m(torch.randn(8, 3, 16, 16))
    with pytest.raises(SchemaError, match="floats"): m(torch.zeros(1, 8, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(SchemaError, match="no video"): m(Batch({"audio": torch.zeros(1, 5)}, {"audio": torch.ones(1, dtype=torch.bool)}))
    with pytest.raises(SchemaError, match="list"): m([x])


@pytest.mark.parametrize("cls, cfg", ALL[1:])
def test_temporal_models_see_the_order_of_frames(cls, cfg):
    torch.manual_seed(0)
    m = cls(cfg).eval()
    x = torch.randn(2, 8, 3, 16, 16)
    with torch.no_grad(): assert not torch.allclose(m(x).logits, m(x.flip(1)).logits, atol=1e-5)


def test_single_frame_sees_only_the_middle_frame():
    torch.manual_seed(0)
    m = SingleFrame(CFG).eval()
    x = torch.randn(2, 8, 3, 16, 16)
    y = torch.randn_like(x); y[:, 4] = x[:, 4]
    assert torch.equal(m(x).logits, m(y).logits)
    z = x.clone(); z[:, 4] += 1
    assert not torch.allclose(m(x).logits, m(z).logits)


def test_lstm_classifies_from_its_last_state():
    torch.manual_seed(0)
    m = CNNLSTM(CFG).eval()
    x = torch.randn(2, 8, 3, 16, 16)
    with torch.no_grad():
        h = m.encoder(x.flatten(0, 1)).view(2, 8, -1)
        out, _ = m.lstm(h)
        assert torch.allclose(m(x).logits, m.head(out[:, -1]), atol=1e-6)


@pytest.mark.parametrize("cin, cout, kt, k, expect", [(64, 64, 3, 3, 144), (3, 64, 3, 3, 23), (16, 32, 3, 3, 57), (8, 8, 5, 3, 25)])
def test_mid_channels_matches_the_paper(cin, cout, kt, k, expect):
    "Tran et al. 2018: M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out)); 144 for 64 -> 64."
    assert mid_channels(cin, cout, kt, k) == expect


@pytest.mark.parametrize("cin, cout, kt, k", [(3, 16, 3, 3), (16, 32, 3, 3), (32, 32, 5, 3), (7, 5, 3, 5)])
def test_2plus1d_has_the_parameters_and_receptive_field_of_the_3d_conv(cin, cout, kt, k):
    blk = Conv2Plus1D(cin, cout, (kt, k)).eval()
    spatial, bn, relu, temporal = blk
    assert isinstance(bn, nn.BatchNorm3d) and isinstance(relu, nn.ReLU) and spatial.bias is None and temporal.bias is None
    assert spatial.kernel_size == (1, k, k) and temporal.kernel_size == (kt, 1, 1)
    conv_w = spatial.weight.numel() + temporal.weight.numel()
    full = kt * k * k * cin * cout
    assert conv_w <= full < conv_w + k * k * cin + kt * cout
    with torch.no_grad(): bn.bias.fill_(10.)                                # every ReLU open: gradients pass
    T, H = 7, 11
    x = torch.randn(1, cin, T, H, H, requires_grad=True)
    out = blk(x)
    assert out.shape == (1, cout, T, H, H)
    out[0, :, 3, 5, 5].sum().backward()                                     # which inputs reach one output?
    reach = x.grad.abs().sum((0, 1)) > 0
    want = torch.zeros(T, H, H, dtype=torch.bool)
    want[3 - kt // 2:3 + kt // 2 + 1, 5 - k // 2:5 + k // 2 + 1, 5 - k // 2:5 + k // 2 + 1] = True
    assert torch.equal(reach, want)


def test_2plus1d_stride_and_explicit_width():
    blk = Conv2Plus1D(4, 6, (3, 3), stride=(2, 1, 2), mid=5)
    assert blk[0].out_channels == 5 and blk(torch.randn(1, 4, 8, 10, 10)).shape == (1, 6, 4, 10, 5)
    assert blk[0].stride == (1, 1, 2) and blk[3].stride == (2, 1, 1)


def test_r2plus1d_is_c3d_with_factorised_convolutions():
    c3, r21 = C3D(CFG), R2Plus1D(CFG)
    n3 = sum(p.numel() for p in c3.parameters()); n21 = sum(p.numel() for p in r21.parameters())
    assert abs(n21 - n3) / n3 < .05
    assert sum(isinstance(m, Conv2Plus1D) for m in r21.modules()) == 3 and not any(isinstance(m, Conv2Plus1D) for m in c3.modules())
    x = torch.randn(1, 8, 3, 16, 16)
    assert c3.convs(x.transpose(1, 2)).shape == r21.convs(x.transpose(1, 2)).shape == (1, 32, 2, 2, 2)


def test_c3d_first_layer_sees_three_frames():
    m = C3D(CFG).eval()
    x = torch.randn(1, 8, 3, 16, 16); x2 = x.clone(); x2[:, 5] += 1
    d = (m.convs[0](x2.transpose(1, 2)) - m.convs[0](x.transpose(1, 2))).abs().amax((0, 1, 3, 4))
    assert (d[[4, 5, 6]] > 0).all() and (d[[0, 1, 2, 3, 7]] == 0).all()


class _Skip(nn.Module):
    def forward(self, x): return BlockOutput(x)


def test_divided_attention_keeps_time_and_space_apart():
    torch.manual_seed(0)
    m = VideoTransformer(VideoTransformerCfg(frames=8, size=16, patch=4, dim=32, layers=1)).eval()
    x = torch.randn(1, 8, 3, 16, 16); x2 = x.clone(); x2[:, :2, :, :4, :4] += 1     # the first tubelet of patch 0 only
    time_only = VideoTransformer(m.cfg).eval(); time_only.load_state_dict(m.state_dict()); time_only.blocks[1] = _Skip()
    d = (time_only.tokens(x2) - time_only.tokens(x)).abs().amax((0, 2)).view(4, 16)
    assert (d[:, 0] > 0).all() and (d[:, 1:] == 0).all()                    # reached: patch 0 at every time step
    space_only = VideoTransformer(m.cfg).eval(); space_only.load_state_dict(m.state_dict()); space_only.blocks[0] = _Skip()
    d = (space_only.tokens(x2) - space_only.tokens(x)).abs().amax((0, 2)).view(4, 16)
    assert (d[0] > 0).all() and (d[1:] == 0).all()                          # reached: every patch of time step 0
    joint = VideoTransformer(VideoTransformerCfg(frames=8, size=16, patch=4, dim=32, layers=1, attention="joint")).eval()
    assert len(joint.blocks) == 1 and (((joint.tokens(x2) - joint.tokens(x)).abs().amax((0, 2))) > 0).all()


def test_transformer_config_errors():
    with pytest.raises(ValueError, match="'divided' or 'joint'"): VideoTransformerCfg(attention="sparse")
    with pytest.raises(ValueError, match="multiple of patch"): VideoTransformerCfg(size=30)
    with pytest.raises(ValueError, match="tubelet"): VideoTransformerCfg(frames=7)


def test_sinusoid_table_is_videomaes():
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table
    for n, d in [(64, 64), (10, 6), (3, 32)]:
        assert torch.allclose(sinusoid_table(n, d), get_sinusoid_encoding_table(n, d)[0], atol=1e-5)
    t = sinusoid_table(5, 4)
    assert torch.allclose(t[:, 0], torch.sin(torch.arange(5.))) and torch.allclose(t[:, 1], torch.cos(torch.arange(5.)))
    assert torch.allclose(t[:, 2], torch.sin(torch.arange(5.) / 100))


def _hf_videomae(**kw):
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification
    cfg = VideoMAEConfig(image_size=16, patch_size=4, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, num_labels=5, **kw)
    torch.manual_seed(0)
    m = VideoMAEForVideoClassification(cfg).eval()
    with torch.no_grad():                                                   # non-trivial norms and biases everywhere
        for p in m.parameters(): p.add_(torch.randn_like(p) * .1)
    return m


@pytest.mark.parametrize("kw", [{}, dict(qv_bias=False), dict(hidden_act="gelu_new", layer_norm_eps=1e-6)])
def test_videomae_to_ours_computes_the_same_function(kw):
    hf = _hf_videomae(**kw)
    ours = videomae_to_ours(hf).eval()
    assert ours.cfg.attention == "joint" and ours.cfg.eps == hf.config.layer_norm_eps and ours.cfg.num_classes == 5
    x = torch.randn(2, 4, 3, 16, 16)
    with torch.no_grad():
        gap = (hf(pixel_values=x).logits - ours(x).logits).abs().max().item()
        hidden = (hf.videomae(x).last_hidden_state - ours.tokens(x)).abs().max().item()
    assert gap < 1e-5 and hidden < 1e-5
    for blk in ours.blocks: assert torch.equal(blk.attn.k_proj.bias, torch.zeros_like(blk.attn.k_proj.bias))


def test_videomae_without_mean_pooling_is_refused():
    hf = _hf_videomae(use_mean_pooling=False)
    with pytest.raises(ValueError, match="use_mean_pooling=True"): videomae_to_ours(hf)
    with pytest.raises(ValueError, match="use_mean_pooling=True"): videomae_cfg(hf.config)


def test_a_temporal_model_learns_direction_where_one_frame_cannot():
    "Clips of a bright bar moving left or right: C3D learns it in a few steps, the single-frame model cannot."
    g = torch.Generator().manual_seed(0)
    n, T, S = 64, 8, 16
    y = torch.arange(n) % 2
    x = torch.zeros(n, T, 3, S, S)
    start = torch.randint(4, 12, (n,), generator=g)
    for i in range(n):
        for t in range(T):
            c = int(start[i] + (t - T // 2) * (1 if y[i] else -1)) % S
            x[i, t, :, :, c] = 1
    from mmlab.train import fit
    accs = {}
    for cls in (SingleFrame, C3D):
        torch.manual_seed(0)
        res = fit(cls(CFG), Batch({"video": x}, {"video": torch.ones(n, dtype=torch.bool)}, labels={"label": y}, sample_id=[str(i) for i in range(n)]),
                  epochs=15, batch_size=16, lr=3e-3, progress=False, device="cpu", monitor="train_loss")
        with torch.no_grad(): accs[cls.__name__] = (res.model.eval()(x).logits.argmax(-1) == y).float().mean().item()
    assert accs["C3D"] > .9 and accs["SingleFrame"] < .8, accs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls, cfg", [(C3D, VideoCfg()), (R2Plus1D, VideoCfg()), (VideoTransformer, VideoTransformerCfg())])
def test_bf16_autocast_matches_float32_on_cuda(cls, cfg):
    "bf16 autocast forward and backward agree with float32: logits within 5e-2, loss within 2 %, gradients' cosine > 0.99."
    torch.manual_seed(0)
    m = cls(cfg).cuda().train()
    x = torch.randn(8, cfg.frames, 3, cfg.size, cfg.size, device="cuda"); y = torch.arange(8, device="cuda") % cfg.num_classes
    ref = m(x, y); ref.loss.backward()
    g32 = torch.cat([p.grad.flatten() for p in m.parameters()]); m.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(x, y)
    out.loss.backward()
    g16 = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert (out.logits.float() - ref.logits).abs().max() < 5e-2
    assert abs(out.loss.item() - ref.loss.item()) / ref.loss.item() < .02
    assert F.cosine_similarity(g16, g32, dim=0) > .99
