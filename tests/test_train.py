"Tests of mmlab.train: schedule, checkpoints, exact resume, accumulation, early stopping, errors, 2-process DDP."
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mmlab.train import (EpochShuffleSampler, FitConfig, MLPClassifier, fit, load_checkpoint, read_checkpoint_meta,
                         save_checkpoint, warmup_cosine)

torch.set_num_threads(1)   # tiny models: one thread is fastest on shared cores


class Blobs(torch.utils.data.Dataset):
    "Two Gaussian blobs in 4-d as dict samples."
    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.randn(n, 4, generator=g) + 2.0 * self.y[:, None]
    def __len__(self): return len(self.y)
    def __getitem__(self, i): return {"x": self.x[i], "labels": self.y[i]}


def _weights(model): return {k: v.clone() for k, v in model.state_dict().items()}


def test_warmup_cosine_values():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(7): lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
    assert lrs[:3] == pytest.approx([1.0, 2.0, 2.0])
    assert lrs[4] == pytest.approx(1.0)          # half-way through the cosine
    assert lrs[6] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="warmup_steps <= total_steps"):
        warmup_cosine(opt, 7, 6)


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    net = nn.Linear(3, 2); opt = torch.optim.AdamW(net.parameters()); sched = warmup_cosine(opt, 1, 5)
    net(torch.randn(4, 3)).sum().backward(); opt.step(); sched.step()
    save_checkpoint(tmp_path / "ck", net, opt, sched, {"epoch": 3, "history": [{"a": 1.0}]})
    net2 = nn.Linear(3, 2); opt2 = torch.optim.AdamW(net2.parameters()); sched2 = warmup_cosine(opt2, 1, 5)
    assert load_checkpoint(tmp_path / "ck", net2, opt2, sched2)["epoch"] == 3
    assert torch.equal(net.weight, net2.weight)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert all(torch.equal(s1["state"][0][k], s2["state"][0][k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert sched2.last_epoch == 1
    # no pickles anywhere: every file is safetensors or JSON
    assert {p.suffix for p in (tmp_path / "ck").iterdir()} == {".safetensors", ".json"}
    with pytest.raises(ValueError, match="does not fit the model"):
        load_checkpoint(tmp_path / "ck", nn.Linear(3, 5))
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        read_checkpoint_meta(tmp_path)


def test_exact_resume_with_dropout_accumulation_and_clipping(tmp_path):
    train, val = Blobs(96, 0), Blobs(32, 1)
    def run(d, **kw):
        torch.manual_seed(0)
        return fit(MLPClassifier(4, 2, hidden=16, dropout=0.3), train, val, epochs=4, batch_size=16, lr=1e-2,
                   grad_accum=2, max_grad_norm=0.5, checkpoint_dir=str(d), progress=False, device="cpu", **kw)
    straight = run(tmp_path / "a")
    part = run(tmp_path / "b", stop_after=2)
    assert len(part.history) == 2 and read_checkpoint_meta(part.last_checkpoint)["trainer"]["epoch"] == 2
    resumed = run(tmp_path / "b", resume_from=part.last_checkpoint)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_grad_accumulation_equals_larger_batch():
    "Two accumulated batches of 8 take the same step as one batch of 16 (mean loss, no dropout)."
    data = Blobs(64, 0)
    res = {}
    for bs, acc in ((16, 1), (8, 2)):
        torch.manual_seed(0)
        res[bs] = fit(MLPClassifier(4, 2, hidden=8, dropout=0.0), data, epochs=2, batch_size=bs, grad_accum=acc,
                      monitor="train_loss", progress=False, device="cpu").model
    for a, b in zip(res[16].parameters(), res[8].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_early_stopping_and_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    # with lr = 0 the validation loss never improves after epoch 1: patience 2 stops after epoch 3
    res = fit(MLPClassifier(4, 2), Blobs(32), Blobs(16, 1), epochs=10, lr=0.0, patience=2, monitor="val_loss",
              checkpoint_dir=str(tmp_path), progress=False, device="cpu")
    assert res.stopped_early and len(res.history) == 3
    assert read_checkpoint_meta(res.best_checkpoint)["trainer"]["epoch"] == 1
    assert read_checkpoint_meta(res.last_checkpoint)["trainer"]["epoch"] == 3


def test_fit_errors():
    with pytest.raises(ValueError, match="mixed_precision"):
        FitConfig(mixed_precision="fp8")
    with pytest.raises(TypeError, match="unknown fit option"):
        fit(MLPClassifier(4, 2), Blobs(8), epochs=1, learning_rate=1.0)
    with pytest.raises(ValueError, match="without a `.loss`"):
        fit(MLPClassifier(4, 2), [{"x": torch.randn(4)}] * 4, epochs=1, progress=False, device="cpu")
    with pytest.raises(KeyError, match="monitor 'val_acc'"):
        fit(MLPClassifier(4, 2), Blobs(8), epochs=1, monitor="val_acc", progress=False, device="cpu")


def test_loss_fn_and_tuple_batches():
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    net = nn.Linear(4, 2)
    res = fit(net, loader, loader, epochs=2, loss_fn=lambda out, b: nn.functional.cross_entropy(out, b[1]),
              forward_fn=lambda m, b: m(b[0]), progress=False, device="cpu")
    assert len(res.history) == 2 and "val_loss" in res.history[0]


def test_sampler_is_deterministic_per_epoch():
    s = EpochShuffleSampler(10, seed=1)
    a = list(s); s.set_epoch(1); b = list(s); s.set_epoch(0)
    assert a == list(s) and a != b and sorted(b) == list(range(10))


DDP_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from accelerate import PartialState
    from safetensors.torch import save_file
    sys.path.insert(0, {tests!r})
    from test_train import Blobs
    from mmlab.train import MLPClassifier, fit
    torch.set_num_threads(1)
    torch.manual_seed(0)
    res = fit(MLPClassifier(4, 2, hidden=8, dropout=0.0), Blobs(64), Blobs(32, 1), epochs=2, batch_size=8,
              lr=1e-2, progress=False, device="cpu", mixed_precision="no")
    state = PartialState()     # the state fit's Accelerator set up (asking earlier would pin a non-distributed one)
    w = {{k: v.contiguous() for k, v in res.model.state_dict().items()}}
    save_file(w, f"{{sys.argv[1]}}/rank{{state.process_index}}.safetensors")
    json.dump({{"world": state.num_processes, "history": res.history}}, open(f"{{sys.argv[1]}}/rank{{state.process_index}}.json", "w"))
""")


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate launcher is not installed")
def test_two_process_ddp_matches_one_process_with_double_batch(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])))
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", str(script), str(tmp_path)]
    if torch.cuda.device_count() < 2: env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in infos] == [2, 2]
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    for k in w0: assert torch.equal(w0[k], w1[k]), k            # DDP keeps the replicas identical
    torch.manual_seed(0)
    single = fit(MLPClassifier(4, 2, hidden=8, dropout=0.0), Blobs(64), Blobs(32, 1), epochs=2, batch_size=16,
                 lr=1e-2, progress=False, device="cpu")
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(w0[k], v, atol=1e-5, rtol=1e-4)
    assert infos[0]["history"][-1]["val_loss"] == pytest.approx(single.history[-1]["val_loss"], abs=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["--fusion-strategy", "sum"], "unknown fusion strategy 'sum'; valid fusion strategies: early, weighted, late"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; valid datasets: trimodal, av_digits, sentiment"),
    (["--modalities", "vision", "smell"], "unknown modality 'smell'; valid modalities of trimodal: vision, audio, text"),
    (["--modalities", "vision", "vision"], "2 or more different modalities"),
])
def test_train_command_rejects_unknown_names(argv, message):
    from mmlab.cli import train_main
    with pytest.raises(SystemExit, match=message):
        train_main(argv)


def test_evaluate_command_rejects_a_non_checkpoint(tmp_path):
    from mmlab.cli import evaluate_main
    with pytest.raises(SystemExit, match="is not an mmlab checkpoint"):
        evaluate_main([str(tmp_path)])
    with pytest.raises(SystemExit):
        from mmlab.cli import main
        main(["train", "--fusion-strategy", "nope"])


def test_encoder_pretraining_skips_samples_without_the_modality():
    "A probe trains and is scored only on samples that have its modality (half of them here)."
    from mmlab.fusion import FeatureEncoder
    from mmlab.data.schema import Batch
    from mmlab.recipes import pretrain_encoders
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (200,), generator=g)
    x = torch.nn.functional.one_hot(y, 3).float() * 3 + 0.3 * torch.randn(200, 3, generator=g)
    has = torch.arange(200) % 2 == 0
    x[~has] = 0.0
    data = Batch({"a": x}, {"a": has}, labels={"label": y})
    accs = pretrain_encoders({"a": FeatureEncoder(out_dim=3)}, data, data, {"a": "label"}, 3, epochs=4, lr=3e-2)
    assert accs["a"] > 0.9


class _Scalar(nn.Module):
    "loss = w (gradient 1): Adam's first step moves w by exactly the learning rate of that step."
    def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(()))
    def forward(self, x, labels=None):
        from mmlab.train import ClassifierOutput
        return ClassifierOutput(logits=torch.zeros(len(x), 2), loss=self.w * 1.0 + 0 * x.sum())


def test_the_first_step_uses_the_first_warmup_rate():
    "The scheduler steps after the optimizer: 4 steps with W = 2 use lr x 1/2, 1, 1, 1/2 (a scheduler stepped first would not)."
    torch.manual_seed(0)
    res = fit(_Scalar(), Blobs(64), epochs=1, batch_size=16, lr=0.8, warmup=0.5, weight_decay=0.0, max_grad_norm=None,
              monitor="train_loss", progress=False, device="cpu")
    assert res.model.w.item() == pytest.approx(-(0.4 + 0.8 + 0.8 + 0.4), rel=1e-4)


def test_validation_loss_is_a_mean_over_samples_not_batches():
    "Batches of 4, 4 and 1: the validation loss weighs each sample once."
    class PerSample(nn.Module):
        def __init__(self): super().__init__(); self.b = nn.Parameter(torch.zeros(()))
        def forward(self, x, labels=None):
            from mmlab.train import ClassifierOutput
            return ClassifierOutput(logits=torch.zeros(len(x), 2), loss=x[:, 0].mean() + 0 * self.b)
    data = Blobs(9, 3)
    res = fit(PerSample(), data, data, epochs=1, batch_size=4, lr=0.0, progress=False, device="cpu", monitor="val_loss")
    assert res.history[0]["val_loss"] == pytest.approx(data.x[:, 0].mean().item(), rel=1e-5)


def test_param_groups_decay_only_weight_matrices_and_kernels():
    "No weight decay on biases, norms, embeddings or the CLIP temperature (a decayed temperature drifts to 1)."
    from torch import nn
    from mmlab.losses import LogitScale
    from mmlab.train import param_groups
    model = nn.ModuleDict({"lin": nn.Linear(4, 3), "conv": nn.Conv1d(3, 2, 3), "norm": nn.LayerNorm(3),
                           "emb": nn.Embedding(10, 3), "scale": LogitScale()})
    model["norm"].bias.requires_grad_(False)                                      # frozen: in neither group
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}
    assert ids(decay["params"]) == ids([model["lin"].weight, model["conv"].weight])
    assert ids(no_decay["params"]) == ids([model["lin"].bias, model["conv"].bias, model["norm"].weight, model["emb"].weight, model["scale"].value])


def test_batch_size_of_every_batch_shape_and_ties_are_not_better():
    from mmlab.train import _batch_size, _is_better
    x = torch.zeros(5, 2)
    assert [_batch_size(b) for b in ({"x": x, "y": x[:, 0]}, (x, x), [x], x, 3.0)] == [5, 5, 5, 5, 1]
    assert _is_better(0.5, None, "val_acc") and _is_better(0.6, 0.5, "val_acc") and not _is_better(0.5, 0.5, "val_acc")
    assert _is_better(0.4, 0.5, "val_loss") and not _is_better(0.5, 0.5, "val_loss") and not _is_better(0.6, 0.5, "val_loss")


def test_training_order_is_the_epoch_shuffle_and_validation_is_in_order():
    from mmlab.train import _make_loader
    data = torch.utils.data.TensorDataset(torch.arange(10))
    cfg = FitConfig(batch_size=10, seed=3)
    (train,), = list(_make_loader(data, cfg, None, train=True))
    assert train.tolist() == [i for i in EpochShuffleSampler(10, 3)] and train.tolist() != list(range(10))
    (val,), = list(_make_loader(data, cfg, None, train=False))
    assert val.tolist() == list(range(10))


def test_rng_state_round_trip_restores_every_generator():
    "Python, NumPy (with its cached Gaussian and position) and torch continue exactly where they were saved."
    import random
    import numpy as np
    from mmlab.train import _rng_state, _set_rng_state
    random.random(); np.random.random(7); np.random.standard_normal(); torch.rand(3)   # a half-used Gaussian pair
    saved = _rng_state()
    first = (random.random(), np.random.standard_normal(3).tolist(), np.random.random(), torch.rand(2).tolist())
    _set_rng_state(*saved)
    assert (random.random(), np.random.standard_normal(3).tolist(), np.random.random(), torch.rand(2).tolist()) == first


def test_model_errors_and_checkpoint_meta_errors_name_the_problem(tmp_path):
    from mmlab.train import CheckpointError, _loss_of
    with pytest.raises(ValueError, match=r"the model returned dict without a `.loss`"): _loss_of({"logits": 1}, None, None)
    model = MLPClassifier(4, 3)
    save_checkpoint(tmp_path / "ck", model)
    for bad in ("[1, 2]", '{"trainer": 3}', '"text"'):
        (tmp_path / "ck" / "trainer_state.json").write_text(bad)
        with pytest.raises(CheckpointError, match=r"trainer_state.json does not hold a trainer state"):
            read_checkpoint_meta(tmp_path / "ck")
    save_checkpoint(tmp_path / "ck", model)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match=r"checkpoint .*ck has no optimizer state"):
        load_checkpoint(tmp_path / "ck", model, optimizer=opt)


def test_fit_config_precisions_and_the_mlp_classifier():
    for mp in ("auto", "no", "bf16", "fp16"): assert FitConfig(mixed_precision=mp).mixed_precision == mp
    with pytest.raises(ValueError, match="mixed_precision must be one of auto, no, bf16, fp16; got 'fp8'"):
        FitConfig(mixed_precision="fp8")
    m = MLPClassifier(4, 3)
    assert m.net[0].out_features == 64 and m.net[2].p == 0.1                       # defaults: hidden 64, dropout 0.1
    out = m(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    assert out.logits.shape == (5, 3) and out.loss.ndim == 0 and out.labels.tolist() == [0, 1, 2, 0, 1]


def test_history_table_and_plot():
    from mmlab.train import history_table, plot_history
    assert history_table([]) == "(no epochs)"
    rows = [{"epoch": 1, "train_loss": 0.123456, "val_loss": 0.5, "val_acc": 0.87654, "lr": 0.00123456, "seconds": 1.26},
            {"epoch": 2, "train_loss": 0.1, "val_loss": 0.4, "val_acc": 0.9, "lr": 0.001, "seconds": 2.0}]
    table = history_table(rows)
    for text in ("0.1235", "0.877", "0.001235", "1.3"): assert text in table
    assert "0.8765" not in table and "1.26" not in table
    fig = plot_history(rows)
    loss_ax, acc_ax = fig.axes
    assert [l.get_label() for l in loss_ax.get_lines()] == ["train", "validation"]
    assert list(loss_ax.get_lines()[1].get_xdata()) == [1, 2] and list(loss_ax.get_lines()[1].get_ydata()) == [0.5, 0.4]
    assert loss_ax.get_ylabel() == "loss" and list(acc_ax.get_lines()[0].get_ydata()) == [0.87654, 0.9]
    assert list(acc_ax.get_lines()[0].get_xdata()) == [1, 2] and acc_ax.get_lines()[0].get_color() == "C2"
    assert tuple(fig.get_size_inches()) == (8, 3)
    only_train = plot_history([{"epoch": 1, "train_loss": 1.0}])
    assert len(only_train.axes[0].get_lines()) == 1 and not only_train.axes[1].get_lines()


@pytest.mark.parametrize("monitor", ["val_acc", "val_loss"])
def test_tune_searches_in_the_monitors_direction(monitor):
    pytest.importorskip("optuna")
    from mmlab.train import tune
    seen = []
    def build(trial):
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        seen.append(lr)
        return MLPClassifier(4, 2, hidden=8), {"epochs": 2, "batch_size": 16, "lr": lr, "device": "cpu"}
    study = (tune(build, Blobs(32), Blobs(16, 1), n_trials=3, monitor=monitor, seed=0) if monitor == "val_loss" else
             tune(build, Blobs(32), Blobs(16, 1), n_trials=3, seed=0))                # val_acc is the default
    assert len(study.trials) == 3 and len(seen) == 3
    assert study.direction.name == ("MAXIMIZE" if monitor == "val_acc" else "MINIMIZE")
    values = [t.value for t in study.trials if t.value is not None]
    assert study.best_value == (max(values) if monitor == "val_acc" else min(values))
    assert all(set(t.intermediate_values) == {1, 2} for t in study.trials if t.state.name == "COMPLETE")
    assert isinstance(study.pruner, __import__("optuna").pruners.MedianPruner)


def test_warmup_as_a_step_count_and_a_floor_on_the_cosine():
    "warmup >= 1 is a number of steps; min_lr_ratio is the floor the cosine ends on (Adam moves w by lr per step here)."
    torch.manual_seed(0)
    res = fit(_Scalar(), Blobs(64), epochs=1, batch_size=16, lr=0.8, warmup=1, min_lr_ratio=0.5, weight_decay=0.0,
              max_grad_norm=None, monitor="train_loss", progress=False, device="cpu")
    # factors: warm-up 1/1, then 0.5 + 0.25 (1 + cos(pi p)) for p = 0, 1/3, 2/3
    assert res.model.w.item() == pytest.approx(-0.8 * (1 + 1 + 0.875 + 0.625), rel=1e-4)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, warmup_steps=0, total_steps=2, min_lr_ratio=0.25)
    lrs = []
    for _ in range(3): lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
    assert lrs == pytest.approx([2.0, 2.0 * (0.25 + 0.75 * 0.5), 0.5])


def test_fit_result_history_and_checkpointed_config(tmp_path):
    class Constant(nn.Module):
        def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(()))
        def forward(self, x, labels=None):
            from mmlab.train import ClassifierOutput
            return ClassifierOutput(logits=torch.zeros(len(x), 2), loss=2.0 + 0 * self.w + 0 * x.sum(), labels=labels)
    res = fit(Constant(), Blobs(40), Blobs(8, 1), epochs=2, batch_size=16, lr=0.0, patience=1, checkpoint_dir=str(tmp_path),
              progress=False, device="cpu")
    assert [r["epoch"] for r in res.history] == [1, 2] and set(res.history[0]) == {"epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"}
    assert res.history[0]["train_loss"] == pytest.approx(2.0) and res.history[0]["val_loss"] == pytest.approx(2.0)
    assert res.stopped_early is True and res.seconds > 0
    assert res.best_checkpoint == tmp_path / "best" and res.last_checkpoint == tmp_path / "last"
    saved = read_checkpoint_meta(res.last_checkpoint)["trainer"]["config"]
    assert saved["epochs"] == 2 and saved["patience"] == 1 and saved["checkpoint_dir"] == str(tmp_path)
    resumed = fit(Constant(), Blobs(40), Blobs(8, 1), epochs=3, batch_size=16, lr=0.0, checkpoint_dir=str(tmp_path),
                  progress=False, device="cpu", resume_from=res.last_checkpoint)
    assert resumed.best_checkpoint == tmp_path / "best" and [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_fit_uses_collate_fn_for_validation_too():
    "Rows the default collate cannot feed to the model: only the given collate_fn renames them."
    rows = [{"features": torch.randn(4), "y": int(i % 2)} for i in range(12)]
    collate = lambda rs: {"x": torch.stack([r["features"] for r in rs]), "labels": torch.tensor([r["y"] for r in rs])}
    res = fit(MLPClassifier(4, 2), rows, rows, epochs=1, batch_size=4, collate_fn=collate, progress=False, device="cpu")
    assert 0.0 <= res.history[0]["val_acc"] <= 1.0


def test_accelerator_keeps_the_asked_precision_and_names_fit_when_accelerate_is_missing(monkeypatch):
    import sys
    from mmlab.core import MissingExtraError
    from mmlab.train import _make_accelerator, tune
    acc = _make_accelerator(FitConfig(device="cpu", mixed_precision="bf16"))
    assert acc.mixed_precision == "bf16" and acc.device.type == "cpu"
    for name in ("accelerate", "optuna"): monkeypatch.setitem(sys.modules, name, None)   # import fails as if absent
    with pytest.raises(MissingExtraError, match=r"^fit needs the package 'accelerate'"): _make_accelerator(FitConfig())
    with pytest.raises(MissingExtraError, match=r"^tune needs the package 'optuna'"): tune(None, None, None)
