"Parity, property and error tests of mmlab.generation: the schedulers against diffusers, guidance, the model and sampling."
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mmlab.data.schema import Batch
from mmlab.data.synth import RELATIONS, SHAPES
from mmlab.generation import (ATTRIBUTES, BETA_SCHEDULES, PREDICTION_TYPES, AttributeClassifier, CaptionEncoder,
                              ConditionalUNet, DDIMScheduler, DDPMScheduler, DiffusersTextToImage, ResBlock, SchedulerOutput,
                              SpatialTransformer, TextToImage, UNetConfig, attribute_scores, clip_score, diffusers_block_parity,
                              diffusers_parity, guided_eps, make_betas, pairwise_diversity, sample, scene_labels, scene_pixels,
                              timestep_embedding)

diffusers = pytest.importorskip("diffusers")

SCHEDULERS = {"ddpm": (DDPMScheduler, diffusers.DDPMScheduler), "ddim": (DDIMScheduler, diffusers.DDIMScheduler)}


# ---------------------------------------------------------------- schedulers: parity with diffusers

@pytest.mark.parametrize("scheduler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("clip_sample", [True, False])
def test_whole_trajectories_match_diffusers(scheduler, eta, prediction_type, beta_schedule, clip_sample):
    gaps = diffusers_parity(scheduler, 25, eta=eta, prediction_type=prediction_type, beta_schedule=beta_schedule,
                            clip_sample=clip_sample, seed=3)
    assert set(gaps) == {"schedule", "add_noise", "velocity", "timesteps", "trajectory", "x0"}
    assert max(gaps.values()) <= 1e-6, gaps


@settings(max_examples=25, deadline=None)
@given(scheduler=st.sampled_from(["ddpm", "ddim"]), T=st.integers(2, 400), steps_frac=st.floats(0.0, 1.0),
       full_chain=st.booleans(), eta=st.sampled_from([0.0, 0.3, 1.0]), prediction_type=st.sampled_from(PREDICTION_TYPES),
       beta_schedule=st.sampled_from(BETA_SCHEDULES), clip_sample=st.booleans(), beta_start=st.floats(1e-5, 1e-3),
       beta_end=st.floats(5e-3, 5e-2), batch=st.integers(1, 3), side=st.integers(1, 5), seed=st.integers(0, 10_000),
       per_row=st.booleans())
def test_random_configurations_match_diffusers(scheduler, T, steps_frac, full_chain, eta, prediction_type, beta_schedule,
                                               clip_sample, beta_start, beta_end, batch, side, seed, per_row):
    steps = None if (full_chain and scheduler == "ddpm" and T <= 60) else max(1, min(T, round(steps_frac * min(T, 40))))
    gaps = diffusers_parity(scheduler, steps, eta=eta, shape=(batch, 2, side, side), seed=seed, per_row_generators=per_row,
                            num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end, beta_schedule=beta_schedule,
                            prediction_type=prediction_type, clip_sample=clip_sample)
    assert max(gaps.values()) <= 1e-6, gaps


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 2000), n=st.integers(1, 2000))
def test_timesteps_are_diffusers_leading_spacing(T, n):
    n = min(n, T)
    for name, (ours_cls, theirs_cls) in SCHEDULERS.items():
        ours, theirs = ours_cls(num_train_timesteps=T), theirs_cls(num_train_timesteps=T)
        assert torch.equal(ours.timesteps, theirs.timesteps)       # before set_timesteps: every timestep
        ours.set_timesteps(n); theirs.set_timesteps(n)
        assert ours.timesteps.dtype == torch.int64 and torch.equal(ours.timesteps, theirs.timesteps), name
        assert ours.num_inference_steps == n and len(ours) == T


def test_single_ddpm_steps_without_set_timesteps_match_diffusers():
    for t in (0, 1, 17, 999):
        ours, theirs = DDPMScheduler(), diffusers.DDPMScheduler()
        x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        a = ours.step(out, t, x, generator=torch.Generator().manual_seed(t))
        b = theirs.step(out, t, x, generator=torch.Generator().manual_seed(t))
        assert torch.equal(a.prev_sample, b.prev_sample) and torch.equal(a.pred_original_sample, b.pred_original_sample)


def test_timestep_may_be_a_tensor_like_the_pipelines_pass_it():
    s = DDIMScheduler(); s.set_timesteps(10)
    x, out = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    assert torch.equal(s.step(out, s.timesteps[3], x).prev_sample, s.step(out, int(s.timesteps[3]), x).prev_sample)


def test_double_precision_samples_stay_double_like_diffusers():
    for name, (ours_cls, theirs_cls) in SCHEDULERS.items():
        ours, theirs = ours_cls(), theirs_cls()
        ours.set_timesteps(10); theirs.set_timesteps(10)
        x, out = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
        a = ours.step(out, 500, x, generator=torch.Generator().manual_seed(0))
        b = theirs.step(out, 500, x, generator=torch.Generator().manual_seed(0))
        assert a.prev_sample.dtype == b.prev_sample.dtype == torch.float64, name
        assert torch.equal(a.prev_sample, b.prev_sample), name


# ---------------------------------------------------------------- schedulers: properties of the math

def _abar(s, t): return float(s.alphas_cumprod[t]) if t >= 0 else 1.0


@settings(max_examples=30, deadline=None)
@given(prediction_type=st.sampled_from(PREDICTION_TYPES), beta_schedule=st.sampled_from(BETA_SCHEDULES),
       n=st.integers(2, 50), i=st.integers(0, 49), seed=st.integers(0, 10_000))
def test_ddim_with_the_true_noise_lands_on_the_forward_process(prediction_type, beta_schedule, n, i, seed):
    s = DDIMScheduler(prediction_type=prediction_type, beta_schedule=beta_schedule, clip_sample=False)
    s.set_timesteps(n)
    i = min(i, n - 1)
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = int(s.timesteps[i])
    xt = s.add_noise(x0, eps, torch.tensor([t]))
    out = eps if prediction_type == "epsilon" else s.get_velocity(x0, eps, torch.tensor([t]))
    step = s.step(out, t, xt)
    prev = s.add_noise(x0, eps, torch.tensor([t - 1000 // n])) if t - 1000 // n >= 0 else x0
    assert torch.allclose(step.pred_original_sample, x0, atol=1e-4)
    assert torch.allclose(step.prev_sample, prev, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(prediction_type=st.sampled_from(PREDICTION_TYPES), beta_schedule=st.sampled_from(BETA_SCHEDULES),
       t=st.integers(1, 999), seed=st.integers(0, 10_000))
def test_ddpm_step_is_the_gaussian_posterior(prediction_type, beta_schedule, t, seed):
    "Mean and noise of q(x_{t-1} | x_t, x0), written out in float64 from the paper's formulas."
    s = DDPMScheduler(prediction_type=prediction_type, beta_schedule=beta_schedule, clip_sample=False)
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    xt = s.add_noise(x0, eps, torch.tensor([t]))
    out = eps if prediction_type == "epsilon" else s.get_velocity(x0, eps, torch.tensor([t]))
    step = s.step(out, t, xt, generator=torch.Generator().manual_seed(seed))
    z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ab, ab_prev = _abar(s, t), _abar(s, t - 1)
    beta = 1 - ab / ab_prev
    mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * xt
    sigma = math.sqrt((1 - ab_prev) / (1 - ab) * beta)
    assert torch.allclose(step.prev_sample, mean + sigma * z, atol=1e-4, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(eta=st.floats(0.05, 1.0), n=st.integers(2, 50), seed=st.integers(0, 10_000))
def test_ddim_noise_level_follows_eta(eta, n, seed):
    "prev(eta) - prev(eta, z=0) = sigma z with sigma = eta sqrt((1-ab')/(1-ab)) sqrt(1 - ab/ab')."
    s = DDIMScheduler(clip_sample=False); s.set_timesteps(n)
    t = int(s.timesteps[0]); tp = t - 1000 // n
    x, out = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(1, 3, 4, 4, dtype=torch.float64)
    noisy = s.step(out, t, x, eta=eta, generator=torch.Generator().manual_seed(seed)).prev_sample
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ab, ab_prev = _abar(s, t), _abar(s, tp)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    x0 = (x - math.sqrt(1 - ab) * out) / math.sqrt(ab)
    expected = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma ** 2) * out + sigma * z
    assert torch.allclose(noisy, expected, atol=1e-5, rtol=1e-5)


def test_clipping_bounds_the_estimate_of_x0():
    for cls in (DDPMScheduler, DDIMScheduler):
        s = cls(); s.set_timesteps(10)
        x, out = torch.randn(2, 3, 4, 4) * 5, torch.randn(2, 3, 4, 4) * 5
        x0 = s.step(out, 900, x, generator=torch.Generator().manual_seed(0)).pred_original_sample
        assert x0.abs().max() <= 1.0 and (x0.abs() == 1.0).any()
        s = cls(clip_sample=False); s.set_timesteps(10)
        assert s.step(out, 900, x, generator=torch.Generator().manual_seed(0)).pred_original_sample.abs().max() > 1.0


def test_deterministic_steps_draw_no_random_numbers():
    x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    g = torch.Generator().manual_seed(0); state = g.get_state()
    ddim = DDIMScheduler(); ddim.set_timesteps(10)
    for t in ddim.timesteps: ddim.step(out, t, x, generator=g)
    DDPMScheduler().step(out, 0, x, generator=g)
    assert torch.equal(g.get_state(), state)
    DDPMScheduler().step(out, 1, x, generator=g)                 # a DDPM step before the last one does draw
    assert not torch.equal(g.get_state(), state)


def test_per_row_generators_make_rows_independent_of_the_batch():
    "With one generator per row, a row's noise does not depend on the other rows (diffusers' list semantics)."
    s = DDPMScheduler()
    x, out = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    full = s.step(out, 500, x, generator=[torch.Generator().manual_seed(i) for i in range(3)]).prev_sample
    alone = s.step(out[1:2], 500, x[1:2], generator=[torch.Generator().manual_seed(1)]).prev_sample
    assert torch.equal(full[1:2], alone)


def test_add_noise_broadcasts_one_timestep_and_keeps_dtype():
    s = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    x0, eps = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    one = s.add_noise(x0, eps, torch.tensor(300))
    assert one.dtype == torch.float64
    assert torch.equal(one, s.add_noise(x0, eps, torch.full((4,), 300)))
    assert torch.allclose(s.add_noise(x0, torch.zeros_like(eps), torch.tensor(0)), x0, atol=1e-4)
    assert s.add_noise(x0, eps, torch.tensor(999)).sub(eps).abs().max() < 0.01     # cosine: pure noise at T


def test_beta_schedules_against_their_definitions():
    assert torch.equal(make_betas(5, 0.1, 0.5), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert torch.equal(make_betas(), diffusers.DDPMScheduler().betas)               # defaults: Ho et al.'s 1000 linear betas
    T = 50
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    ref = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    assert torch.allclose(make_betas(T, beta_schedule="squaredcos_cap_v2"), ref)
    abar = torch.cumprod(1 - make_betas(T, beta_schedule="squaredcos_cap_v2"), 0)
    assert torch.allclose(abar[:-1], torch.tensor([f((i + 1) / T) / f(0) for i in range(T - 1)]), atol=1e-5)


def test_scheduler_interface_for_sampling_loops():
    for cls in (DDPMScheduler, DDIMScheduler):
        s = cls(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False)
        assert s.init_noise_sigma == 1.0 and s.order == 1
        assert s.config.num_train_timesteps == 100 and s.config.prediction_type == "v_prediction" and not s.config.clip_sample
        x = torch.randn(1, 2)
        assert s.scale_model_input(x, 5) is x
        s.set_timesteps(7, device="cpu")
        out = s.step(torch.randn(1, 2), s.timesteps[0], x)
        assert isinstance(out, SchedulerOutput) and out.prev_sample.shape == (1, 2)
        assert "100" in repr(s) and cls.__name__ in repr(s)


# ---------------------------------------------------------------- schedulers: bad input

def test_bad_scheduler_input_names_the_argument():
    with pytest.raises(ValueError, match=r"beta_schedule.*'linear'.*'scaled_linear'"): DDPMScheduler(beta_schedule="scaled_linear")
    with pytest.raises(ValueError, match=r"prediction_type.*'epsilon'.*'sample'"): DDIMScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match=r"num_train_timesteps.*0"): DDPMScheduler(num_train_timesteps=0)
    s = DDPMScheduler()
    for bad in (0, 1001, 2.5, True):
        with pytest.raises(ValueError, match=r"num_inference_steps.*1\.\.1000"): s.set_timesteps(bad)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"timesteps.*\[0, 1000\).*-1 to 3"): s.add_noise(x, x, torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match=r"timesteps.*integers.*float"): s.add_noise(x, x, torch.tensor([1.0, 3.0]))
    with pytest.raises(ValueError, match=r"timesteps.*one per sample \(2\).*\(3,\)"): s.add_noise(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"noise.*\(2, 3, 4, 4\).*\(2, 3, 4\)"): s.add_noise(x, x[..., 0], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"noise.*list"): s.get_velocity(x, [1.0], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"model_output.*\(2, 3, 4, 4\).*\(3, 4, 4\)"): s.step(x[0], 5, x)
    with pytest.raises(ValueError, match=r"timestep.*\[0, 1000\).*1000"): s.step(x, 1000, x)
    with pytest.raises(ValueError, match=r"timestep.*\[0, 1000\)"): s.step(x, torch.tensor([1, 2]), x)
    with pytest.raises(ValueError, match=r"generator.*one generator per batch row \(2\).*3"):
        s.step(x, 5, x, generator=[torch.Generator() for _ in range(3)])
    d = DDIMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"): d.step(x, 5, x)
    d.set_timesteps(10)
    with pytest.raises(ValueError, match=r"eta.*-0\.5"): d.step(x, 900, x, eta=-0.5)
    with pytest.raises(ValueError, match=r"eta.*\[0.0, 1.0\].*1\.5"): d.step(x, 900, x, eta=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_draws_noise_for_cuda_samples_like_diffusers():
    x, out = torch.randn(2, 3, 4, 4, device="cuda"), torch.randn(2, 3, 4, 4, device="cuda")
    a = DDPMScheduler().step(out, 500, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = diffusers.DDPMScheduler().step(out, 500, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert a.device.type == "cuda" and torch.allclose(a, b, atol=1e-6)


# ---------------------------------------------------------------- guidance

@settings(max_examples=30, deadline=None)
@given(w=st.floats(-2.0, 10.0), seed=st.integers(0, 10_000))
def test_guided_eps_is_the_cfg_extrapolation(w, seed):
    g = torch.Generator().manual_seed(seed)
    u, c = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    out = guided_eps(u, c, w)
    assert torch.allclose(out, (1 - w) * u + w * c, atol=1e-9)
    assert torch.equal(guided_eps(u, c, 0.0), u) and torch.allclose(guided_eps(u, c, 1.0), c)


def test_guided_eps_refuses_mismatched_halves():
    with pytest.raises(ValueError, match=r"eps_cond.*\(2, 3\).*\(3, 3\)"): guided_eps(torch.zeros(2, 3), torch.zeros(3, 3), 2.0)


# ---------------------------------------------------------------- the UNet

def test_resblock_and_timestep_features_equal_diffusers():
    gaps = diffusers_block_parity(seed=3)
    assert len(gaps) == 3 and max(gaps.values()) < 1e-5, gaps


def test_timestep_embedding_values():
    e = timestep_embedding(torch.tensor([0, 3]), 4)             # frequencies 1 and 1/100
    assert torch.allclose(e[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(e[1], torch.tensor([math.cos(3), math.cos(0.03), math.sin(3), math.sin(0.03)]), atol=1e-6)
    with pytest.raises(ValueError, match="dim.*even.*5"): timestep_embedding(torch.tensor([1]), 5)


def _unet(**kw):
    torch.manual_seed(0)
    m = ConditionalUNet(UNetConfig(**kw)).eval()
    for mod in m.modules():                          # leave no zero-initialised projection: every path must matter
        if isinstance(mod, SpatialTransformer): torch.nn.init.normal_(mod.proj_out.weight, std=0.2)
    return m


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3), seed=st.integers(0, 1000))
def test_unet_ignores_padded_caption_tokens(lengths, seed):
    m = _unet(channels=(8, 16), attention=(True, True), context_dim=12, groups=4, heads=2, image_size=8)
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), 6
    x, ctx = torch.randn(B, 3, 8, 8, generator=g), torch.randn(B, L, 12, generator=g)
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    noisy = torch.where(mask[..., None], ctx, torch.randn(B, L, 12, generator=g) * 50)
    with torch.no_grad():
        a, b = m(x, 5, ctx, mask).sample, m(x, 5, noisy, mask).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_unet_output_depends_on_caption_timestep_and_every_level():
    m = _unet(channels=(8, 16, 16), attention=(False, True, True), context_dim=12, groups=4, heads=2, image_size=8)
    x, ctx = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 12)
    with torch.no_grad():
        base = m(x, 10, ctx).sample
        assert base.shape == (2, 3, 8, 8)
        assert not torch.allclose(base, m(x, 10, ctx + 1).sample, atol=1e-4)          # the caption matters
        assert not torch.allclose(base, m(x, 500, ctx).sample, atol=1e-4)             # the timestep matters
        assert torch.allclose(m(x, torch.tensor([10, 10]), ctx).sample, base)           # one value = one per row
        rows = torch.stack([m(x[i:i + 1], t, ctx[i:i + 1]).sample[0] for i, t in enumerate((10, 500))])
        assert torch.allclose(m(x, torch.tensor([10, 500]), ctx).sample, rows, atol=1e-5)   # rows are independent
    out = m(x, 10, ctx).sample.pow(2).sum()
    out.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_spatial_transformer_starts_as_identity_and_uses_the_course_block():
    from mmlab.attention import TransformerBlock
    st_ = SpatialTransformer(16, context_dim=10, heads=2, groups=4)
    assert isinstance(st_.block, TransformerBlock) and st_.block.cfg.cross_dim == 10 and st_.block.cfg.self_attention
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(st_(x, torch.randn(2, 3, 10)), x)
    y, w = st_(x, torch.randn(2, 3, 10), torch.tensor([[True, True, False], [True, False, False]]), need_weights=True)
    assert w.shape == (2, 2, 16, 3) and torch.allclose(w.sum(-1), torch.ones(2, 2, 16))
    assert (w[0, :, :, 2] == 0).all() and (w[1, :, :, 1:] == 0).all()          # padded tokens get no attention


def test_unet_bad_input_names_the_argument():
    m = _unet()
    x, ctx = torch.randn(2, 3, 16, 16), torch.randn(2, 5, 64)
    with pytest.raises(ValueError, match=r"sample.*\(B, 3, 16, 16\).*\(2, 1, 16, 16\)"): m(torch.randn(2, 1, 16, 16), 1, ctx)
    with pytest.raises(ValueError, match=r"encoder_hidden_states.*B=2.*\(3, 5, 64\)"): m(x, 1, torch.randn(3, 5, 64))
    with pytest.raises(ValueError, match=r"encoder_attention_mask.*bool.*\(2, 5\)"): m(x, 1, ctx, torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"channels.*attention.*one entry per level"): UNetConfig(channels=(8, 16), attention=(True,))
    with pytest.raises(ValueError, match=r"in_channels 12.*groups 8"): ResBlock(12, 16, 8)
    assert UNetConfig(channels=(8, 16)).time_dim == 32


def test_full_path_configuration_trains_one_step():
    "The FULL (GPU) configuration builds and runs forward and backward (checked on the CPU at batch 1)."
    m = ConditionalUNet(UNetConfig(image_size=32, channels=(64, 128, 256), attention=(False, True, True), context_dim=64))
    out = m(torch.randn(1, 3, 32, 32), 999, torch.randn(1, 7, 64)).sample
    out.mean().backward()
    assert out.shape == (1, 3, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_unet_bf16_autocast_matches_fp32_on_cuda():
    m = _unet(channels=(32, 64), attention=(False, True)).cuda().train()
    x, ctx = torch.randn(8, 3, 16, 16, device="cuda"), torch.randn(8, 9, 64, device="cuda")
    t = torch.randint(0, 1000, (8,), device="cuda")
    ref = m(x, t, ctx).sample
    ref.pow(2).mean().backward()
    g_ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(x, t, ctx).sample
    out.float().pow(2).mean().backward()
    assert (out.float() - ref).abs().max() / ref.abs().max() < 0.05
    cos = [torch.nn.functional.cosine_similarity(p.grad.flatten().float(), g_ref[n].flatten(), dim=0) for n, p in m.named_parameters()]
    assert min(cos) > 0.95


# ---------------------------------------------------------------- caption encoder, training objective, sampling

class _Tok:
    "A whitespace tokenizer over a fixed vocabulary, with bos 1 and eos 2 (pad 0), returning torch tensors."
    vocab = {w: i + 3 for i, w in enumerate("a red blue green circle square above below left of the".split())}
    def __call__(self, texts, padding=True, return_tensors="pt"):
        rows = [[1] + [self.vocab[w] for w in t.split()] + [2] for t in texts]
        L = max(map(len, rows))
        ids = torch.tensor([r + [0] * (L - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (torch.arange(L)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()}


class _Tower(torch.nn.Module):
    "A stand-in text tower: token embeddings plus a running mean, so every state depends on the words so far."
    def __init__(self, dim=12):
        super().__init__(); torch.manual_seed(1); self.emb = torch.nn.Embedding(20, dim)
    def token_states(self, ids, mask):
        e = self.emb(ids)
        return e + e.cumsum(1) / torch.arange(1, ids.shape[1] + 1)[None, :, None]


def _model(prediction_type="v_prediction", p_uncond=0.1):
    unet = _unet(channels=(8, 16), attention=(False, True), context_dim=12, groups=4, heads=2, image_size=8)
    sched = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    return TextToImage(unet, sched, CaptionEncoder(_Tok(), _Tower()), p_uncond=p_uncond)


def _rows(model, n=6, captions=("a red circle", "the blue square above a green circle")):
    states, mask = model.encoder([captions[i % len(captions)] for i in range(n)])
    return Batch(inputs={"vision": torch.rand(n, 3, 8, 8) * 2 - 1, "text": states},
                 mask={"vision": torch.ones(n, dtype=torch.bool), "text": torch.ones(n, dtype=torch.bool)}, pad_mask={"text": mask})


def test_caption_encoder_is_frozen_and_masks_padding():
    enc = CaptionEncoder(_Tok(), _Tower())
    states, mask = enc(["a red circle", "a blue square above a green circle"])
    assert states.shape == (2, 9, 12) and mask.dtype == torch.bool and mask.sum(1).tolist() == [5, 9]
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train(); assert not enc.training
    with pytest.raises(ValueError, match="prompts.*non-empty list"): enc("a red circle")
    with pytest.raises(ValueError, match="prompts.*non-empty list"): enc([])
    with pytest.raises(ValueError, match="token_states"): CaptionEncoder(_Tok(), torch.nn.Linear(2, 2))


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_training_target_follows_the_prediction_type(prediction_type):
    m = _model(prediction_type).eval()
    batch = _rows(m)
    torch.manual_seed(3)
    out = m(batch)
    torch.manual_seed(3)
    t = torch.randint(0, 100, (6,)); noise = torch.randn_like(batch.inputs["vision"])
    want = noise if prediction_type == "epsilon" else m.scheduler.get_velocity(batch.inputs["vision"], noise, t)
    assert torch.equal(out.timesteps, t) and torch.allclose(out.target, want)
    assert torch.allclose(out.loss, ((out.prediction - out.target) ** 2).mean())


def test_absent_captions_are_the_empty_caption_and_dropout_rate_is_p():
    m = _model(p_uncond=0.25)
    seen = {}
    real_denoise = m.denoise
    def spy(x, t, ctx, mask): seen["ctx"], seen["mask"] = ctx, mask; return real_denoise(x, t, ctx, mask)
    m.denoise = spy
    batch = _rows(m, n=4000)
    empty = m.encoder([""])[0][0]
    m.eval(); m(batch.hide(["text"]))                     # absent captions: every row reads ""
    assert torch.allclose(seen["ctx"][:, :len(empty)], empty.expand(4000, -1, -1)) and (seen["mask"].sum(1) == len(empty)).all()
    m.eval(); m(batch)                                      # eval: no caption is dropped
    assert torch.equal(seen["ctx"], batch.inputs["text"])
    m.train(); torch.manual_seed(0); m(batch)               # training: a fraction p of them
    dropped = (seen["mask"].sum(1) == len(empty)) & (seen["ctx"][:, :len(empty)] - empty).abs().amax((1, 2)).lt(1e-6)
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    with pytest.raises(ValueError, match=r"p_uncond.*\[0, 1\).*1.5"): TextToImage(m.unet, m.scheduler, m.encoder, p_uncond=1.5)


def test_sample_runs_one_batched_forward_per_step_and_only_the_needed_half():
    m = _model().eval()
    calls = []
    real_denoise = m.denoise
    def spy(x, t, ctx, mask): calls.append(len(x)); return real_denoise(x, t, ctx, mask)
    m.denoise = spy
    prompts = ["a red circle", "a blue square", "a green circle"]
    for w, per_call in ((0.0, 3), (1.0, 3), (3.0, 6)):
        calls.clear()
        x = sample(m, prompts, steps=4, guidance_scale=w, generator=torch.Generator().manual_seed(0))
        assert calls == [per_call] * 4 and x.shape == (3, 3, 8, 8)


def test_sample_is_the_guided_ddim_loop_and_schedulers_are_interchangeable():
    m = _model().eval()
    prompts = ["a red circle", "the blue square above a green circle"]
    ours = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    theirs = diffusers.DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    a = sample(m, prompts, steps=5, guidance_scale=2.5, scheduler=ours, generator=torch.Generator().manual_seed(4), eta=0.5)
    b = sample(m, prompts, steps=5, guidance_scale=2.5, scheduler=theirs, generator=torch.Generator().manual_seed(4), eta=0.5)
    assert torch.equal(a, b)
    # written out by hand: both halves, the guided combination, the step
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, 8, generator=g)
    cond, uncond = m.encode_prompts(prompts), m.encode_prompts(["", ""])
    L = cond[0].shape[1]
    uc = (torch.nn.functional.pad(uncond[0], (0, 0, 0, L - uncond[0].shape[1])), torch.nn.functional.pad(uncond[1], (0, L - uncond[1].shape[1])))
    ours.set_timesteps(5)
    with torch.no_grad():
        for t in ours.timesteps:
            e = guided_eps(m.denoise(x, t, *uc), m.denoise(x, t, *cond), 2.5)
            x = ours.step(e, t, x, eta=0.5, generator=g).prev_sample
    assert torch.allclose(a, x, atol=1e-5)


def test_sample_seeds_and_per_prompt_generators():
    m = _model().eval()
    p = ["a red circle", "a blue square"]
    a = sample(m, p, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, sample(m, p, steps=3, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(a, sample(m, p, steps=3, generator=torch.Generator().manual_seed(1)))
    both = sample(m, p, steps=3, scheduler=DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
                  generator=[torch.Generator().manual_seed(i) for i in (5, 6)])
    one = sample(m, p[1:], steps=3, scheduler=DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
                 generator=[torch.Generator().manual_seed(6)])
    assert torch.allclose(both[1:], one, atol=1e-5)          # a prompt's image does not depend on the others
    with pytest.raises(ValueError, match="prompts.*non-empty list"): sample(m, "a red circle")
    with pytest.raises(ValueError, match=r"guidance_scale.*\[0\.0, inf\].*-1"): sample(m, p, guidance_scale=-1)


def test_fit_trains_the_text_to_image_model():
    from mmlab.train import fit
    m = _model(p_uncond=0.2)
    before = [p.detach().clone() for p in m.unet.parameters()]
    res = fit(m, _rows(m, n=64), epochs=2, batch_size=16, lr=1e-3, monitor="train_loss", progress=False, device="cpu")
    assert len(res.history) == 2 and math.isfinite(res.history[-1]["train_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, m.unet.parameters()))
    assert not any(p.requires_grad for p in m.encoder.parameters())


def test_diffusers_pipeline_through_our_loop_equals_its_own_call():
    from mmlab.core import load_pretrained
    pipe = load_pretrained(diffusers.StableDiffusionPipeline, "stabilityai/stable-diffusion-2-1-base", verbose=False)
    pipe.set_progress_bar_config(disable=True)
    sd = DiffusersTextToImage(pipe)
    prompts = ["a red circle", "two blue squares"]
    for w in (1.0, 5.0):
        ours = sample(sd, prompts, steps=4, guidance_scale=w, generator=torch.Generator().manual_seed(2))
        theirs = pipe(prompts, num_inference_steps=4, guidance_scale=w, generator=torch.Generator().manual_seed(2),
                      height=16, width=16, output_type="pt").images
        assert ((ours / 2 + 0.5).clamp(0, 1) - theirs).abs().max() < 1e-5
    assert sd.sample_shape == (4, 8, 8)


# ---------------------------------------------------------------- judges

COLS = ["red", "green", "blue", "yellow"]
scene = st.tuples(st.sampled_from(COLS), st.sampled_from(SHAPES), st.sampled_from(COLS), st.sampled_from(SHAPES),
                  st.sampled_from(list(RELATIONS)))


@settings(max_examples=50, deadline=None)
@given(scenes=st.lists(scene, min_size=1, max_size=5))
def test_scene_labels_do_not_depend_on_how_the_scene_is_told(scenes):
    "'A above B' and 'B below A' are one picture: the canonical labels are the same."
    told = scene_labels([[c0, c1] for c0, s0, c1, s1, r in scenes], [[s0, s1] for c0, s0, c1, s1, r in scenes],
                        [r for *_, r in scenes], COLS)
    retold = scene_labels([[c1, c0] for c0, s0, c1, s1, r in scenes], [[s1, s0] for c0, s0, c1, s1, r in scenes],
                          [RELATIONS[r][1] for *_, r in scenes], COLS)
    assert torch.equal(told, retold) and told.shape == (len(scenes), len(ATTRIBUTES))
    for (c0, s0, c1, s1, r), row in zip(scenes, told.tolist()):
        first = (c0, s0) if r in ("left", "above") else (c1, s1)
        assert (COLS[row[0]], SHAPES[row[1]]) == first and row[4] == int(r in ("above", "below"))


@settings(max_examples=50, deadline=None)
@given(target=st.lists(st.integers(0, 3), min_size=5, max_size=5), pred=st.lists(st.integers(0, 3), min_size=5, max_size=5))
def test_attribute_scores_against_their_definitions(target, pred):
    t, p = torch.tensor([target]), torch.tensor([pred])
    t[0, 4] %= 2; p[0, 4] %= 2
    s = {k: bool(v) for k, v in attribute_scores(p, t).items()}
    T, P = t[0].tolist(), p[0].tolist()
    assert s["colour"] == (sorted([P[0], P[2]]) == sorted([T[0], T[2]]))
    assert s["shape"] == (sorted([P[1], P[3]]) == sorted([T[1], T[3]]))
    same = sum(a == b for a, b in zip(P[:4], T[:4])); swapped = sum(a == b for a, b in zip(P[:4], T[2:4] + T[:2]))
    assert s["relation"] == (P[4] == T[4] and (same > swapped or T[:2] == T[2:4]))
    assert s["all"] == (P == T)
    assert all(attribute_scores(t, t)[k].all() for k in ("colour", "shape", "relation", "all"))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 12), k=st.integers(1, 4), seed=st.integers(0, 1000))
def test_pairwise_diversity_is_the_mean_distance_within_prompts(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x, groups = torch.randn(n, 3, 2, generator=g, dtype=torch.float64), torch.randint(0, k, (n,), generator=g)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if groups[i] == groups[j]]
    if not pairs:
        with pytest.raises(ValueError, match="two samples"): pairwise_diversity(x, groups)
        return
    ref = sum((x[i] - x[j]).norm().item() for i, j in pairs) / len(pairs)
    assert pairwise_diversity(x, groups) == pytest.approx(ref, rel=1e-6)


def test_clip_score_and_pixels():
    a, b = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), torch.tensor([[3.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    assert torch.allclose(clip_score(a, b), torch.tensor([100.0, 0.0, 100 / math.sqrt(2)]))
    with pytest.raises(ValueError, match=r"text_embeds.*\(3, 2\).*\(2, 2\)"): clip_score(a, b[:2])
    from PIL import Image
    arr = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    x = scene_pixels([Image.fromarray(arr)], 2)
    full = scene_pixels([Image.fromarray(arr)])
    assert full.shape == (1, 3, 4, 4) and full.min() >= -1 and full.max() <= 1
    assert torch.allclose(x[0, :, 0, 0], full[0, :, :2, :2].mean((1, 2)))
    with pytest.raises(ValueError, match="size must divide.*4.*3"): scene_pixels([Image.fromarray(arr)], 3)


def test_attribute_classifier_heads_loss_and_errors():
    torch.manual_seed(0)
    clf = AttributeClassifier(n_colors=4, image_size=8, width=8)
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([[0, 1, 2, 3, 1]] * 5)
    out = clf(x, y)
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {"first_color": (5, 4), "first_shape": (5, 5), "second_color": (5, 4),
                                                                  "second_shape": (5, 5), "axis": (5, 2)}
    ref = sum(torch.nn.functional.cross_entropy(out.logits[a], y[:, i]) for i, a in enumerate(ATTRIBUTES))
    assert torch.allclose(out.loss, ref) and clf(x).loss is None
    pred = clf.predict(x)
    assert pred.shape == (5, 5) and torch.equal(pred[:, 0], out.logits["first_color"].argmax(-1)) and not clf.training
    with pytest.raises(ValueError, match=r"pixel_values.*\(B, 3, 8, 8\).*\(5, 3, 16, 16\)"): clf(torch.randn(5, 3, 16, 16))
    with pytest.raises(ValueError, match="image_size.*multiple of 4.*10"): AttributeClassifier(4, image_size=10)
    with pytest.raises(ValueError, match=r"colour.*'teal'"): scene_labels([["red", "teal"]], [["circle", "square"]], ["left"], COLS)
    with pytest.raises(ValueError, match="one entry per scene"): scene_labels([["red", "blue"]], [], ["left"], COLS)
    with pytest.raises(ValueError, match=r"pred and target.*\(1, 4\)"): attribute_scores(torch.zeros(1, 4), torch.zeros(1, 5))


# ---------------------------------------------------------------- bad input over the public entry points

PKG = __import__("pathlib").Path(__import__("mmlab").__file__).parent


def _refused_by_mmlab(fn, *words):
    "fn() must raise a ValueError from mmlab's own code whose message holds every word."
    with pytest.raises(ValueError) as e: fn()
    frame = __import__("traceback").extract_tb(e.value.__traceback__)[-1]
    assert __import__("pathlib").Path(frame.filename).resolve().is_relative_to(PKG), f"raised at {frame.filename}: {e.value}"
    assert all(w in str(e.value) for w in words), (str(e.value), words)


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.booleans(), st.none(), st.just("3"))


@settings(max_examples=40, deadline=None)
@given(beta_start=numbers, beta_end=numbers, eta=numbers, w=numbers)
def test_numbers_are_finite_and_in_range_or_refused(beta_start, beta_end, eta, w):
    ok = lambda v, lo=-math.inf: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= lo
    if ok(beta_start, 0) and ok(beta_end, beta_start) and beta_end <= 1: make_betas(10, beta_start, beta_end)
    else: _refused_by_mmlab(lambda: make_betas(10, beta_start, beta_end), "beta_")
    d = DDIMScheduler(); d.set_timesteps(10)
    x = torch.randn(2, 3)
    if ok(eta, 0) and eta <= 1: assert torch.isfinite(d.step(x, 900, x, eta=eta, generator=torch.Generator().manual_seed(0)).prev_sample).all()
    else: _refused_by_mmlab(lambda: d.step(x, 900, x, eta=eta), "eta", repr(eta))
    if ok(w): guided_eps(x, x, w)
    else: _refused_by_mmlab(lambda: guided_eps(x, x, w), "guidance_scale", repr(w))
    m = _model()
    if not ok(w, 0): _refused_by_mmlab(lambda: sample(m, ["a red circle"], steps=2, guidance_scale=w), "guidance_scale", repr(w))


def test_sampling_training_and_judging_refuse_bad_input_by_name():
    m = _model()
    for bad in ("a red circle", [], ["a red circle", 3], None):
        _refused_by_mmlab(lambda: sample(m, bad, steps=2), "prompts", "non-empty list of strings")
        _refused_by_mmlab(lambda: m.encoder(bad), "prompts")
    _refused_by_mmlab(lambda: sample(torch.nn.Linear(2, 2), ["a red circle"], steps=2), "model", "encode_prompts", "Linear")
    _refused_by_mmlab(lambda: sample(m, ["a red circle"], steps=0), "num_inference_steps", "0")
    rows = _rows(m, 4)
    no_text = Batch(inputs={"vision": rows.inputs["vision"]}, mask={"vision": rows.mask["vision"]})
    _refused_by_mmlab(lambda: m(no_text), "batch", "'text'", "['vision']")
    _refused_by_mmlab(lambda: m({"vision": rows.inputs["vision"]}), "batch", "inputs", "dict")
    unet = m.unet
    x, ctx = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 12)
    _refused_by_mmlab(lambda: unet(x, torch.tensor([1, 2, 3]), ctx), "timestep", "one per sample (2)", "(3,)")
    _refused_by_mmlab(lambda: timestep_embedding(torch.zeros(2, 2), 8), "timesteps", "1-D", "(2, 2)")
    _refused_by_mmlab(lambda: scene_labels([["red"]], [["circle", "square"]], ["left"], ["red", "blue"]), "two objects", "['red']")
    _refused_by_mmlab(lambda: scene_pixels([]), "images", "none")
    from PIL import Image
    _refused_by_mmlab(lambda: scene_pixels([Image.new("RGB", (8, 8)), Image.new("RGB", (4, 4))]), "one size", "(4, 4)", "(8, 8)")
    _refused_by_mmlab(lambda: scene_pixels([Image.new("RGB", (8, 8))], 0), "size", "0")
    judge = AttributeClassifier(n_colors=3, image_size=8)
    _refused_by_mmlab(lambda: judge(torch.randn(2, 3, 8, 8), torch.zeros(2, 4, dtype=torch.long)), "labels", "(2, 5)", "(2, 4)")
    _refused_by_mmlab(lambda: judge(torch.randn(2, 3, 8, 8), torch.zeros(2, 5)), "labels", "float32")


def test_attribute_scores_by_hand_and_small_settings_reach_their_layers():
    "Rows are scored one by one: a right relation needs the objects in their slots (or two identical objects)."
    from mmlab.generation import ResBlock, _randn, attribute_scores
    target = torch.tensor([[0, 1, 2, 3, 0], [0, 1, 2, 3, 1], [4, 4, 4, 4, 0]])
    pred = torch.tensor([[0, 1, 2, 3, 0], [2, 3, 0, 1, 1], [4, 4, 4, 4, 0]])
    s = attribute_scores(pred, target)
    assert s["colour"].tolist() == [True, True, True] and s["relation"].tolist() == [True, False, True]
    assert s["all"].tolist() == [True, False, True]
    assert ResBlock(8, 16, 4, groups=4, eps=1e-3).norm1.eps == 1e-3
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    assert _randn((2, 3), gens, torch.device("cpu"), torch.float64).dtype == torch.float64
    assert "empty_mask" not in _model().state_dict()                          # rebuilt from the encoder, not saved
