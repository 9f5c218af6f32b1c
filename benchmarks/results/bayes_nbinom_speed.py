"""Runs for benchmarks/results/bayes_nbinom_speed.md (issue 24: the salamanders negative binomial,
``count ~ cover + mined + (1 | site)``, 644 rows, at >= 10x Bambi's min bulk ESS per CPU second warm).

``kernel``: CPU microseconds per log density + gradient of ``model(name)`` (benchmarks/bench_bayes_glmm.py's
models; default ``nbinom``) with every factor non-centred, the C extension and the Numba callbacks through ctypes
at 20 points, median of 6 interleaved blocks, in this process (run it with ``PYTHONPATH`` = a tree).

``fits``: per model and tree (clean worktrees, extensions built in place, each run with ``PYTHONPATH`` = the
tree), one new process that builds the model (imports before the clock) and fits it with default settings, 4
chains x 1,000 draws after 1,000 tuning steps, ``random_seed`` 1 and then, refitting the same model object in the
same process, 2 -- the trees alternating model by model, so that old and new code see the same machine load. Per
fit: CPU seconds (process, nutpie's threads included) and wall seconds, gradients per draw, divergences, max R-hat
and min bulk ESS over the hyperparameters (bench_bayes_glmm.summarise), and a hash of every posterior draw (same
seed, same log density and gradient: same hash). Rows are appended to ``--out``.

Usage::

    for i in 1 2 3; do for t in old new; do
        PYTHONPATH=/tmp/nb-$t python benchmarks/results/bayes_nbinom_speed.py kernel; done; done
    python benchmarks/results/bayes_nbinom_speed.py fits --trees old=/tmp/nb-old new=/work/wt/nb \\
        --models nbinom cbpp poisson_olre --label a
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

FIELDS = ["label", "model", "tree", "seed", "cpu_seconds", "seconds", "load_1m", "gradients_per_draw",
          "divergences", "max_rhat", "min_ess_bulk", "ess_per_cpu_s", "draws_hash", "log_density", "commit"]


def one_process(tree: str, name: str, seeds: list[int]) -> list[dict]:
    """Fit ``model(name)`` with each seed in turn in one new process (the first fit warm, later ones refits)."""
    code = SETUP + BENCH_HELPERS + f"""
import json, os
m = model({name!r})
for seed in {seeds!r}:
    t, c = time.perf_counter(), cpu()
    fit = m.fit(method="bayes", random_seed=seed)
    out = summarise(fit.posterior, var_names(m), time.perf_counter() - t, cpu() - c)
    out |= {{"seed": seed, "draws_hash": draws_digest(fit.posterior), "log_density": fit.sampler["log_density"],
            "load_1m": round(os.getloadavg()[0], 2)}}
    print(json.dumps(out), flush=True)
"""
    return records_from(code, tree, 1800)


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
        for name in args.models:
            for tree, path in trees.items():
                for row in one_process(path, name, args.seeds):
                    row.pop("min_ess_per_s", None)
                    row |= {"label": args.label, "model": name, "tree": tree, "commit": commits[tree],
                            "ess_per_cpu_s": round(row["min_ess_bulk"] / row["cpu_seconds"], 1)}
                    writer.writerow(row)
                    handle.flush()
                    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("fits")
    run.add_argument("--trees", nargs="+", required=True, help="name=path of a worktree with built extensions")
    run.add_argument("--models", nargs="+", default=["nbinom"])
    run.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    run.add_argument("--label", default="")
    run.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bayes_nbinom_speed.csv"))
    timing = sub.add_parser("kernel")
    timing.add_argument("--model", default="nbinom")
    args = parser.parse_args()
    if args.what == "fits":
        fits(args)
    else:
        print_kernel_speed(args.model)


if __name__ == "__main__":
    main()
