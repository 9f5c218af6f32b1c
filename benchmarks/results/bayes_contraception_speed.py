"""Runs for benchmarks/results/bayes_contraception_speed.md (issue 24: a warm Contraception ``(urban | district)``
Bayesian fit, 4 x 1,000 draws, under 3 s wall).

``fits``: one default ``fit(method="bayes", random_seed=s)`` of benchmarks/bench_bayes_glmm.py's
``model("contraception_urban")`` per new process (imports before the clock, as peers_bambi.py times a warm fit;
the fit's own first-use imports inside it), alternating over ``--trees`` (clean worktrees, extensions built in
place, each run with ``PYTHONPATH`` = the tree) seed by seed, so that old and new code see the same machine load.
Per fit: CPU seconds (process, nutpie's threads included) and wall seconds of the fit, the sampler's own wall
seconds, the 1-minute load average at the end, gradients per draw, divergences, max R-hat and min bulk ESS
(bench_bayes_glmm.summarise), and a hash of the beta and tau draws (same seed, same tree: same hash).
``--options`` adds fit options (e.g. '{"target_accept": 0.8}'), ``--nutpie`` extra keyword arguments of
``nutpie.sample`` (e.g. '{"use_grad_based_mass_matrix": false}'), both as JSON. Rows are appended to ``--out``.

``kernel``: CPU microseconds per log density + gradient of the model's kernel (every factor non-centred, as the
default fit chooses), the C extension and the Numba callbacks through ctypes at 20 points, median of 6
interleaved blocks, in this process (run it with ``PYTHONPATH`` = a tree).

Usage::

    python benchmarks/results/bayes_contraception_speed.py fits --trees old=/tmp/cs/old new=/tmp/cs/new \\
        --seeds 1 2 3 --label alternating --out benchmarks/results/bayes_contraception_speed.csv
    PYTHONPATH=/tmp/cs/new python benchmarks/results/bayes_contraception_speed.py kernel
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_bayes_glmm import BENCH_HELPERS, SETUP, print_kernel_speed, records_from  # noqa: E402

FIELDS = ["label", "tree", "seed", "options", "nutpie", "cpu_seconds", "seconds", "sampling_seconds", "load_1m",
          "gradients_per_draw", "divergences", "max_rhat", "min_ess_bulk", "draws_hash", "log_density", "commit"]


def one_fit(tree: str, seed: int, options: str, nutpie_extra: str) -> dict:
    code = SETUP + BENCH_HELPERS + f"""
import json, os
m = model("contraception_urban")
extra = json.loads({nutpie_extra!r})
t, c = time.perf_counter(), cpu()
if extra:  # nutpie.sample with these options, imported inside the clock, instead of nutpie's core (bayes.nuts)
    import nutpie
    from bayeshlm.bayes import nuts
    sample = nutpie.sample
    nutpie.sample = lambda *a, **k: sample(*a, **(k | extra))
    nuts.use_core = lambda progressbar: False
fit = m.fit(method="bayes", random_seed={seed}, **json.loads({options!r}))
out = summarise(fit.posterior, var_names(m), time.perf_counter() - t, cpu() - c)
post = fit.posterior["posterior"]
out["draws_hash"] = draws_digest(fit.posterior, ["beta", "tau_district"])
out |= {{"sampling_seconds": fit.sampler["sampling_seconds"], "log_density": fit.sampler["log_density"],
        "load_1m": round(os.getloadavg()[0], 2)}}
print(json.dumps(out))
"""
    return records_from(code, tree, 600)[-1]


def fits(args) -> None:
    trees = dict(item.split("=", 1) for item in args.trees)
    commits = {name: subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=path).stdout.strip() for name, path in trees.items()}
    out = Path(args.out)
    new = not out.exists()
    with out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for seed in args.seeds:
            for name, path in trees.items():
                row = {"label": args.label, "tree": name, "seed": seed, "options": args.options,
                       "nutpie": args.nutpie, **one_fit(path, seed, args.options, args.nutpie),
                       "commit": commits[name]}
                row.pop("min_ess_per_s", None)
                writer.writerow(row)
                handle.flush()
                print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("fits")
    run.add_argument("--trees", nargs="+", required=True, help="name=path of a worktree with built extensions")
    run.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    run.add_argument("--options", default="{}")
    run.add_argument("--nutpie", default="{}")
    run.add_argument("--label", default="")
    run.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bayes_contraception_speed.csv"))
    sub.add_parser("kernel")
    args = parser.parse_args()
    if args.what == "fits":
        fits(args)
    else:
        print_kernel_speed("contraception_urban", "Contraception (urban | district)")


if __name__ == "__main__":
    main()
