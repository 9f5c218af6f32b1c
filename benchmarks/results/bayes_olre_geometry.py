"""Runs for benchmarks/results/bayes_olre_geometry.md (issue 24: the Poisson model with an observation-level effect,
``y ~ x + (1 | g) + (1 | obs)`` with exposure, at >= 10x Bambi+nutpie's min bulk ESS per CPU second): per row, one
default ``fit(method="bayes", random_seed=s)`` (4 x 1000 after 1000 tuning steps; ``--options``: other fit
options as JSON), timed after a short warm-up fit
of the same model in the same process (so the row is a refit: imports and the kernel's callbacks loaded), in a new
process whose ``PYTHONPATH`` is ``--tree`` (a tree of the commit to measure, extensions built in place). Per fit: CPU
seconds of the fit (process CPU, nutpie's threads included), gradients per draw, divergences, max R-hat and min
bulk ESS over the fixed effects and SDs (bench_bayes_glmm.summarise), the variable with the lowest bulk ESS and the
one with the highest R-hat, min bulk ESS per CPU second, the target_accept used, ``fit.sampler``'s geometry
records, and the SHA-256 of the posterior draws of beta and the SDs (equal hashes: bitwise the same draws). Rows are
appended to ``--out``. Models: bench_bayes_glmm's, and three other models with an observation-level effect
(``OTHER_MODELS``).

Usage::

    python benchmarks/results/bayes_olre_geometry.py --tree /tmp/before --label before \\
        --models poisson_olre cbpp --seeds 1 2 3 --out benchmarks/results/bayes_olre_geometry.csv
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

# other models with an observation-level effect (a check that the geometry is not tuned to poisson_olre alone):
# simulated overdispersed counts, the salamanders counts as Poisson with (1 | obs), cbpp with (1 | obs)
OTHER_MODELS = """
_acceptance_model = model


def model(name):
    if name == "toy_overdispersed":
        rng = np.random.default_rng(7)
        g = np.repeat(np.arange(10), 20)
        x, years = rng.normal(size=200), rng.uniform(0.5, 2.0, 200)
        eta = 0.8 + 0.4 * x + rng.normal(scale=0.5, size=10)[g] + rng.normal(scale=0.4, size=200)
        data = pd.DataFrame({"y": rng.poisson(years * np.exp(eta)), "x": x, "years": years, "g": g.astype(str)})
        return bh.HLM("y ~ x + (1 | g) + (1 | obs)", data.assign(obs=np.arange(200).astype(str)),
                      family="poisson", exposure="years")
    if name == "salamanders_poisson_olre":
        data = pd.read_csv(REFERENCE / "salamanders.csv")
        data["mined"] = pd.Categorical(data["mined"], categories=["yes", "no"])
        return bh.HLM("count ~ cover + mined + (1 | site) + (1 | obs)",
                      data.assign(obs=np.arange(len(data)).astype(str)), family="poisson")
    if name == "cbpp_olre":
        data = bh.datasets.load("cbpp")
        return bh.HLM("cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)",
                      data.assign(obs=np.arange(len(data)).astype(str)), family="binomial")
    return _acceptance_model(name)
"""
FIELDS = ["model", "label", "seed", "cpu_seconds", "seconds", "gradients_per_draw", "divergences", "max_rhat",
          "worst_rhat", "min_ess_bulk", "worst_ess", "ess_per_cpu_s", "target_accept", "parameterization",
          "conditional_centring", "draws_sha256", "commit"]


def one_fit(tree: str, name: str, seed: int, options: str) -> dict:
    code = SETUP + OTHER_MODELS + BENCH_HELPERS + f"""
import json
import arviz as az
m = model({name!r})
m.fit(method="bayes", draws=20, tune=20, chains=1, random_seed=0)  # warm-up: the timed fit is a refit
t, c = time.perf_counter(), cpu()
fit = m.fit(method="bayes", random_seed={seed}, **json.loads({options!r}))
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
out["ess_per_cpu_s"] = round(out["min_ess_bulk"] / out["cpu_seconds"], 1)
out["target_accept"] = fit.sampler["target_accept"]
out["parameterization"] = json.dumps(fit.sampler["parameterization"])
out["conditional_centring"] = json.dumps(fit.sampler.get("conditional_centring"))
out["draws_sha256"] = draws_digest(fit.posterior, names)
print(json.dumps(out))
"""
    return records_from(code, tree, 3000)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--commit", default="", help="the tree's commit (default: git rev-parse in the tree)")
    parser.add_argument("--options", default="{}", help='fit options as JSON, e.g. \'{"target_accept": 0.8}\'')
    parser.add_argument("--models", nargs="+", default=["poisson_olre"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    commit = args.commit or subprocess.run(["git", "-C", args.tree, "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()
    new = not Path(args.out).exists()
    with open(args.out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for name in args.models:
            for seed in args.seeds:
                row = {"model": name, "label": args.label, "seed": seed, "commit": commit,
                       **one_fit(args.tree, name, seed, args.options)}
                writer.writerow(row)
                handle.flush()
                print(row, flush=True)


if __name__ == "__main__":
    main()
