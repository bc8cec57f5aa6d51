"""Mutation testing, one module at a time (`make mutation`).

    python tests/mutation.py                      # every module of [tool.mmlab.mutation] in pyproject.toml
    python tests/mutation.py mmlab/losses.py      # one module
    python tests/mutation.py --report             # the table from the runs kept in .cache/mutation/
    python tests/mutation.py --survivors mmlab/losses.py   # the diff of every mutant the tests let through
    python tests/mutation.py --retest mmlab/losses.py      # test again only the mutants that were not killed
    python tests/mutation.py --sample 200 mmlab/fusion.py  # a seeded random sample of 200 mutants (an estimate)
    python tests/mutation.py --known                       # the realistic bugs of KNOWN_BUGS: each must be caught

Each module runs in its own copy of the project (`.cache/mutation/<module>/`) with mutmut told to mutate that
module only and to run only the test files that cover it, so the tracing pass and every mutant's run stay
short. `--sample N` tests a seeded random sample of the module's mutants instead of all of them (the rate is
then an estimate: with 200 mutants and a rate near 90 %, the 95 % interval is about +-4 points). Copies are kept:
a second run re-tests only what changed. A mutant counts as killed when a test failed, timed out or crashed on it;
"no tests" (no selected test reaches the mutated function) counts against the module.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "mutation"
BIN = Path(sys.executable).parent
KILLED = {"killed", "timeout", "segfault", "caught by type check"}   # a crash under test is a failing test too
IGNORED = {"skipped", "not checked"}
GOAL = 0.90
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MMLAB_OFFLINE": "true", "PYTHONHASHSEED": "0",
       "MPLBACKEND": "Agg"}   # what `make test` runs under

# Realistic one-line bugs found by hand in the core modules, each with the tests that must catch it:
# (what, file, original text, buggy text, tests).
KNOWN_BUGS = [
 ("LateFusion: plain softmax", "mmlab/fusion.py", "alpha = _masked_softmax(self.logit_weights.expand(len(per), -1), present)",
  "alpha = torch.softmax(self.logit_weights.expand(len(per), -1), 1)",
  ["tests/test_fusion.py::test_modality_weights_are_zero_when_absent_and_sum_to_one", "tests/test_fusion.py::test_an_absent_modality_has_no_influence_at_all"]),
 ("AttentionFusion: presence mask not passed", "mmlab/fusion.py", "toks, mask=present, need_weights=True)", "toks, need_weights=True)",
  ["tests/test_fusion.py::test_modality_weights_are_zero_when_absent_and_sum_to_one", "tests/test_fusion.py::test_an_absent_modality_has_no_influence_at_all"]),
 ("TensorFusion: absent factor not zeroed", "mmlab/fusion.py", "h = self.proj[m](x) * present[:, k, None]", "h = self.proj[m](x)",
  ["tests/test_fusion.py::test_an_absent_modality_has_no_influence_at_all"]),
 ("CrossModalFusion: key mask of the query modality", "mmlab/fusion.py", "keys = present[:, idx[j], None].expand(-1, T)",
  "keys = present[:, idx[m], None].expand(-1, T)", ["tests/test_fusion.py::test_attention_maps_of_the_token_strategies_ignore_absent_modalities"]),
 ("GatedFusion: gate inverted", "mmlab/fusion.py", "self.head((g * h).sum(1))", "self.head(((1 - g) * h).sum(1))",
  ["tests/test_fusion.py::test_an_absent_modality_has_no_influence_at_all", "tests/test_fusion.py::test_architecture_fingerprint"]),
 ("modality_dropout keeps with probability p", "mmlab/fusion.py", "generator=generator, device=mask.device) >= p", "generator=generator, device=mask.device) < p",
  ["tests/test_fusion.py::test_modality_dropout_hides_a_fraction_p"]),
 ("attention dropout in eval", "mmlab/attention.py", "p = self.dropout if self.training else 0.0", "p = self.dropout",
  ["tests/test_attention.py::test_attention_dropout_only_in_training"]),
 ("co-attention sequential", "mmlab/attention.py", "new_b = self.b_from_a(b, context=a,", "new_b = self.b_from_a(b, context=new_a.hidden,",
  ["tests/test_attention.py::test_co_attention_is_simultaneous_not_sequential"]),
 ("LogitScale without clamp", "mmlab/losses.py", "return self.value.clamp(max=self.max_value)", "return self.value",
  ["tests/test_losses.py::test_logit_scale_clamps_when_read"]),
 ("fit_clip with a fixed temperature", "mmlab/clip.py", "model.encode_text(tx), model.logit_scale())", "model.encode_text(tx), model.logit_scale().detach())",
  ["tests/test_clip.py::test_fit_clip_learns_a_tiny_matching_problem"]),
 ("weight decay on biases, norms, logit scale", "mmlab/train.py", "(decay if p.ndim >= 2 and id(p) not in embeddings else no_decay)",
  "(decay if True else no_decay)", ["tests/test_train.py::test_param_groups_decay_only_weight_matrices_and_kernels"]),
 ("log-mel ignores hop_length", "mmlab/data/preprocess.py", "spec = torch.stft(x, n_fft, hop_length,", "spec = torch.stft(x, n_fft, n_fft // 4,",
  ["tests/test_data_preprocess.py::test_log_mel_hop_lengths_equal_librosa"]),
 ("top_db over the whole batch", "mmlab/data/preprocess.py", "db.amax(dim=(-2, -1), keepdim=True) - top_db", "db.amax() - top_db",
  ["tests/test_data_preprocess.py::test_log_mel_top_db_is_per_item"]),
 ("retrieval_report median of an even count", "mmlab/retrieval.py", '"medr": rank.quantile(0.5).item()', '"medr": rank.median().item()',
  ["tests/test_retrieval.py::test_report_median_of_an_even_count_is_the_mean_of_the_middle_two"]),
 ("image_text_retrieval without text normalisation", "mmlab/retrieval.py", "@ F.normalize(txt.float(), dim=-1).T", "@ txt.float().T",
  ["tests/test_retrieval.py::test_image_text_retrieval_is_cosine_on_both_sides"]),
 ("scheduler stepped before the optimizer", "mmlab/train.py",
  "            optimizer.step(); optimizer.zero_grad(set_to_none=True)\n            if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:\n                scheduler.step()",
  "            scheduler.step()\n            optimizer.step(); optimizer.zero_grad(set_to_none=True)\n            if False:\n                pass",
  ["tests/test_train.py::test_the_first_step_uses_the_first_warmup_rate"]),
 ("validation loss not weighted by batch size", "mmlab/train.py", "stats = torch.tensor([loss.item() * n, n],", "stats = torch.tensor([loss.item(), 1],",
  ["tests/test_train.py::test_validation_loss_is_a_mean_over_samples_not_batches"]),
]


def modules_and_tests() -> dict:
    "{module path: [test files]} from pyproject.toml's [tool.mmlab.mutation]."
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mmlab"]["mutation"]


def workdir(module: str) -> Path: return WORK / module.removesuffix(".py").replace("/", ".")


def project_files() -> list:
    "Tracked files and untracked ones git does not ignore: what a clean clone would hold, plus work in progress."
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def sync_copy(dest: Path):
    "Copy the project into `dest`, touching only files that changed (mutmut re-tests what is newer than its mutants)."
    for rel in project_files():
        src, dst = ROOT / rel, dest / rel
        s = src.stat()
        if dst.exists() and dst.stat().st_size == s.st_size and dst.stat().st_mtime == s.st_mtime: continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def configure(dest: Path, module: str, tests: list):
    "Point the copy's [tool.mutmut] at one module and its tests (the other settings stay the project's)."
    text = (ROOT / "pyproject.toml").read_text()
    head = "[tool.mutmut]\n"
    assert head in text, "pyproject.toml has no [tool.mutmut] table"
    lines = f"only_mutate = {[module]!r}\npytest_add_cli_args_test_selection = {tests!r}\n".replace("'", '"')
    new = text.replace(head, head + lines, 1)
    target = dest / "pyproject.toml"
    if not target.exists() or target.read_text() != new: target.write_text(new)


def _mutmut(dest: Path, *args) -> int: return subprocess.run([str(BIN / "mutmut"), *args], cwd=dest, env=ENV).returncode


def sample_names(module: str) -> list | None:
    "The sampled mutants of `module`, or None when the whole module is tested."
    f = workdir(module) / "sample.json"
    return json.loads(f.read_text()) if f.exists() else None


def draw_sample(module: str, n: int, children: int, seed: int = 0) -> list:
    "Generate the mutants (a run that matches no name does only that and the tracing pass), then draw n of them."
    dest = workdir(module)
    if not statuses(module): _mutmut(dest, "run", "--max-children", str(children), "no.such.mutant")
    names = sorted(statuses(module))
    chosen = sorted(random.Random(seed).sample(names, min(n, len(names))))
    (dest / "sample.json").write_text(json.dumps(chosen, indent=0))
    return chosen


def run_module(module: str, tests: list, children: int, retest: bool = False, sample: int = 0) -> int:
    dest = workdir(module)
    sync_copy(dest)
    configure(dest, module, tests)
    print(f"== {module} ({', '.join(tests)})", flush=True)
    chosen = sample_names(module)
    if sample and (chosen is None or len(chosen) != sample): chosen = draw_sample(module, sample, children)
    if not (sample or retest) and chosen is not None:                     # a whole run: forget the sample
        (dest / "sample.json").unlink(); chosen = None
    names = chosen or []
    if retest:   # mutmut keeps a verdict until the function changes; after new tests, name the mutants to test again
        found = statuses(module)
        names = [k for k in (chosen or found) if found.get(k) not in KILLED | IGNORED]
        if not names:
            print(f"== {module}: every mutant already killed")
            return 0
        # mutmut traces only tests with new names again; a changed test may now reach other functions
        (dest / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    return _mutmut(dest, "run", "--max-children", str(children), *names)


def statuses(module: str) -> dict:
    "{mutant name: status} of the last run of `module` (empty when it never ran)."
    dest = workdir(module)
    if not (dest / "mutants").exists(): return {}
    out = subprocess.run([str(BIN / "mutmut"), "results", "--all", "true"], cwd=dest, capture_output=True,
                         text=True).stdout
    found = {}
    for line in out.splitlines():
        key, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in key: found[key] = status
    return found


def kill_rates(found: dict) -> dict:
    "{module: Counter(status)} from {mutant name: status}; the module is the name up to the mangled function."
    by_module = defaultdict(Counter)
    for key, status in found.items(): by_module[key.rsplit(".", 1)[0]][status] += 1
    return by_module


def report(modules) -> list:
    "Print the kill rate of every module that has a run; return the modules below the goal."
    print(f"{'module':<24}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'rate':>8}")
    below = []
    for module in modules:
        found, chosen = statuses(module), sample_names(module)
        of = f"  (sample of {len(found)})" if chosen is not None else ""
        if chosen is not None: found = {k: found.get(k, "not checked") for k in chosen}
        for name, counts in sorted(kill_rates(found).items()):
            tested = sum(n for s, n in counts.items() if s not in IGNORED)
            killed = sum(counts[s] for s in KILLED)
            rate = killed / tested if tested else 0.0
            below += [name] if rate < GOAL else []
            print(f"{name:<24}{tested:>8}{killed:>8}{counts['survived']:>9}{counts['no tests']:>9}{rate:>8.1%}{of}")
    print(f"below {GOAL:.0%}: {', '.join(below) or 'none'}")
    return below


def survivors(module: str):
    "Show the diff of each mutant of `module` that no test killed."
    dest = workdir(module)
    found, chosen = statuses(module), sample_names(module)
    for name, status in sorted(found.items()):
        if status in KILLED | IGNORED or (chosen is not None and name not in chosen): continue
        print(f"--- {name}: {status}")
        print(subprocess.run([str(BIN / "mutmut"), "show", name], cwd=dest, capture_output=True, text=True).stdout)


def known_bugs() -> bool:
    "Put each of KNOWN_BUGS into a copy of the project, one at a time, and run its tests: each must fail."
    dest = WORK / "known"
    sync_copy(dest)
    run = lambda tests: subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", "-p", "no:cacheprovider",
                                        *tests], cwd=dest, env=ENV, capture_output=True, text=True)
    clean = run(sorted({t for *_, tests in KNOWN_BUGS for t in tests}))
    if clean.returncode != 0: raise SystemExit(f"the tests fail without any bug:\n{clean.stdout[-3000:]}")
    all_caught = True
    for what, path, old, new, tests in KNOWN_BUGS:
        f = dest / path
        src = (ROOT / path).read_text()
        if src.count(old) != 1: raise SystemExit(f"{path}: the text of the known bug {what!r} is no longer there once")
        try:
            f.write_text(src.replace(old, new))
            for t in tests:
                r = run([t])
                caught = r.returncode == 1          # 1: a test failed (not an error of collection or usage)
                all_caught &= caught
                print(f"{'caught' if caught else 'MISSED'}  {what}  <- {t}", flush=True)
        finally:
            f.write_text(src)
    return all_caught


def main(argv=None) -> int:
    table = modules_and_tests()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("modules", nargs="*", help=f"module paths (default: all {len(table)})")
    p.add_argument("--report", action="store_true", help="only print the table of the kept runs")
    p.add_argument("--survivors", action="store_true", help="print the surviving mutants' diffs")
    p.add_argument("--retest", action="store_true", help="run only the mutants the last run did not kill")
    p.add_argument("--known", action="store_true", help="only check that every bug of KNOWN_BUGS is caught")
    p.add_argument("--sample", type=int, default=0, help="test a seeded random sample of this many mutants")
    p.add_argument("--children", type=int, default=os.cpu_count() or 2, help="mutants tested at once")
    a = p.parse_args(argv)
    unknown = [m for m in a.modules if m not in table]
    if unknown: p.error(f"not in [tool.mmlab.mutation]: {', '.join(unknown)}; known: {', '.join(table)}")
    if a.known: return 0 if known_bugs() else 1
    modules = a.modules or list(table)
    if a.survivors:
        for m in modules: survivors(m)
        return 0
    if not a.report:
        for m in modules:
            if run_module(m, table[m], a.children, a.retest, a.sample) != 0: print(f"mutmut failed on {m}", file=sys.stderr)
    report(modules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
