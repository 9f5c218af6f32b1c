"""Runs for benchmarks/results/bayes_verbagg_geometry.md (issue 24: VerbAgg's crossed Bernoulli model, R-hat < 1.01
with default settings): one default ``fit(method="bayes", random_seed=s)`` (4 x 1000 after 1000 tuning steps) per
row, in a new process whose ``PYTHONPATH`` is ``--tree`` (a worktree of the commit to measure, extensions built in
place), with ``parameterization=`` given as JSON (``--parameterization '{"item": "centred"}'``; none: the default
rule). Per fit: CPU seconds of the fit (process CPU, nutpie's threads included), gradients per draw, divergences,
max R-hat and min bulk ESS over the fixed effects and SDs (bench_bayes_glmm.summarise), the variable with the
lowest bulk ESS and the one with the highest R-hat, every coefficient's bulk ESS, the parameterisation chosen and
the shift. Rows are appended to ``--out``.

Usage::

    python benchmarks/results/bayes_verbagg_geometry.py --tree /tmp/tree --label centred-items \\
        --parameterization '{"item": "centred"}' --models verbagg --seeds 1 2 3 --out /tmp/geometry.csv
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
          "worst_rhat", "min_ess_bulk", "worst_ess", "ess", "parameterization", "shifted", "commit"]


def one_fit(tree: str, name: str, seed: int, parameterization: str) -> dict:
    code = SETUP + BENCH_HELPERS + f"""
import json
import arviz as az
m = model({name!r})
options = {{"parameterization": json.loads({parameterization!r})}} if {parameterization!r} else {{}}
t, c = time.perf_counter(), cpu()
fit = m.fit(method="bayes", random_seed={seed}, **options)
out = summarise(fit.posterior, var_names(m), time.perf_counter() - t, cpu() - c)
names = [v for v in var_names(m) if v in fit.posterior["posterior"] and not v.startswith("corr_")]
ess, rhat = az.ess(fit.posterior, var_names=names, method="bulk"), az.rhat(fit.posterior, var_names=names)
flat_ess, flat_rhat = {{}}, {{}}
for v in names:
    labels = [str(c) for c in ess[v].coords[ess[v].dims[0]].values] if ess[v].dims else [""]
    for label, e, r in zip(labels, np.ravel(ess[v].values), np.ravel(rhat[v].values)):
        flat_ess[f"{{v}}[{{label}}]"], flat_rhat[f"{{v}}[{{label}}]"] = round(float(e)), round(float(r), 4)
out["worst_ess"] = min(flat_ess, key=flat_ess.get)
out["worst_rhat"] = max(flat_rhat, key=flat_rhat.get)
out["ess"] = json.dumps(flat_ess)
out["parameterization"] = json.dumps(fit.sampler["parameterization"])
out["shifted"] = json.dumps(fit.sampler.get("shifted"))
print(json.dumps(out))
"""
    return records_from(code, tree, 3000)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--parameterization", default="")
    parser.add_argument("--models", nargs="+", default=["verbagg"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out", required=True)
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
                       **one_fit(args.tree, name, seed, args.parameterization)}
                writer.writerow(row)
                handle.flush()
                print({k: v for k, v in row.items() if k != "ess"}, flush=True)


if __name__ == "__main__":
    main()
