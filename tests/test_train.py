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
