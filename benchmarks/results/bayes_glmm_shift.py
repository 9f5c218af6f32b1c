"""Before/after runs for benchmarks/results/bayes_glmm_shift.md (issue 24: the exact shift of the fixed effects by
the mean of the non-centred group effects in the HGLM kernel).

Each fit is a default ``fit(method="bayes", random_seed=s)`` (4 x 1000 after 1000 tuning steps) of a model of
benchmarks/bench_bayes_glmm.py (``model(name)``), in a new process whose ``PYTHONPATH`` is ``--tree`` (a clean
worktree of the commit to measure, extensions built in place), so two trees are measured with the same script.
Per fit: CPU seconds of the fit (process CPU, nutpie's threads included), gradients per draw, divergences, max
R-hat and min bulk ESS over the fixed effects, SDs and correlations (bench_bayes_glmm.summarise), the min bulk
ESS of the fixed effects alone, and which log density ran. Rows are appended to ``--out``.

Usage::

    python benchmarks/results/bayes_glmm_shift.py --tree /tmp/d/old --label before --seeds 1 2 3 \\
        --models verbagg contraception_urban cbpp --out benchmarks/results/bayes_glmm_shift.csv
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_bayes_glmm import BENCH_HELPERS, SETUP, records_from  # noqa: E402

FIELDS = ["model", "label", "seed", "cpu_seconds", "seconds", "gradients_per_draw", "divergences", "max_rhat",
          "min_ess_bulk", "min_ess_bulk_beta", "log_density", "shifted", "commit"]


def one_fit(tree: str, name: str, seed: int) -> dict:
    code = SETUP + BENCH_HELPERS + f"""
import json
import arviz as az
m = model({name!r})
t, c = time.perf_counter(), cpu()
fit = m.fit(method="bayes", random_seed={seed})
out = summarise(fit.posterior, var_names(m), time.perf_counter() - t, cpu() - c)
out["min_ess_bulk_beta"] = round(float(np.min(az.ess(fit.posterior, var_names=["beta"], method="bulk")["beta"])))
out["log_density"] = fit.sampler["log_density"]
out["shifted"] = json.dumps(fit.sampler.get("shifted"))
print(json.dumps(out))
"""
    return records_from(code, tree, 3000)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--models", nargs="+", default=["verbagg", "contraception_urban", "cbpp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bayes_glmm_shift.csv"))
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", args.tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    new = not Path(args.out).exists()
    with open(args.out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for name in args.models:
            for seed in args.seeds:
                row = {"model": name, "label": args.label, "seed": seed, "commit": commit,
                       **one_fit(args.tree, name, seed)}
                writer.writerow(row)
                handle.flush()
                print(row, flush=True)


if __name__ == "__main__":
    main()
