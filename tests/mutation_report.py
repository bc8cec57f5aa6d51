"""Kill rate per module after `mutmut run` (used by `make mutation`).

Reads `mutmut results --all true` on stdin. A mutant counts as killed when a test failed or timed out on it;
"no tests" (no test reaches the mutated function) counts against the module, like a survivor.
"""
import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout", "caught by type check"}
IGNORED = {"skipped", "not checked"}


def kill_rates(lines):
    "{module: Counter(status)} from `mutmut results --all true` lines such as '    mmlab.losses.x_f__mutmut_3: killed'."
    by_module = defaultdict(Counter)
    for line in lines:
        key, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in key:
            continue
        by_module[key.rsplit(".", 1)[0]][status] += 1
    return by_module


def main(lines=None, goal=0.90):
    by_module = kill_rates(sys.stdin if lines is None else lines)
    if not by_module:
        print("no mutants found: run `mutmut run` first")
        return 1
    print(f"{'module':<28}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'rate':>7}")
    below = []
    for module, counts in sorted(by_module.items()):
        tested = sum(n for s, n in counts.items() if s not in IGNORED)
        killed = sum(counts[s] for s in KILLED)
        rate = killed / tested if tested else 0.0
        below += [module] if rate < goal else []
        print(f"{module:<28}{tested:>8}{killed:>8}{counts['survived']:>9}{counts['no tests']:>9}{rate:>7.1%}")
    print(f"below {goal:.0%}: {', '.join(below) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
