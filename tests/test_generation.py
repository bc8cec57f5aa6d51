"Parity, property and error tests of mmlab.generation: the schedulers against diffusers, guidance, the model and sampling."
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mmlab.generation import (BETA_SCHEDULES, PREDICTION_TYPES, DDIMScheduler, DDPMScheduler, SchedulerOutput,
                              diffusers_parity, guided_eps, make_betas)

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
