"""Full-Bayes HGLMs (issue 24): this engine's compiled kernel beside the same model's PyMC graph, in one run.

Engines, each 4 chains x 1000 draws after 1000 tuning steps at target_accept 0.9 (this engine's default), on
cbpp (binomial, ``(1 | herd)``) and Contraception (Bernoulli, ``(urban | district)``):

- ``bayeshlm``: ``fit(method="bayes")``; *cold* = a fresh process (``python -c``) whose Numba cache is a new
  empty directory (the first fit on a machine), *cold-cache-warm* = a fresh process with the usual on-disk cache,
  *warm* = a second fit in the same process;
- ``pymc-graph+nutpie``: the model's PyMC graph (``model.pymc_model()``, the graph Bambi would also build for
  PyMC) compiled by nutpie's Numba backend; cold includes the compile, warm re-samples the compiled model;
- ``pymc-nuts``: the same graph sampled by PyMC's own NUTS (``pm.sample``, C backend; compile inside).

Bambi itself (PyMC NUTS and nutpie) and brms: ``--bambi-python <venv>/bin/python`` runs them after these rows
through benchmarks/peers_bambi.py, which fits every engine in new processes with the same cache states (and also
the VerbAgg-shaped, observation-level Poisson and negative-binomial models) and writes its own CSV
(benchmarks/results/bayes_peers.csv). Reported per row: wall seconds, divergences, max R-hat and min bulk ESS over
the fixed effects, SDs and correlations, and min ESS per second. Every row is appended to ``--out`` as it
finishes.

Usage::

    python benchmarks/bench_bayes_glmm.py [--skip-pymc] [--out benchmarks/results/bayes_glmm.csv]
                                          [--bambi-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETUP = """
import warnings, pandas as pd, bayeshlm as bh
warnings.simplefilter("ignore")
def model(name):
    if name == "cbpp":
        return bh.HLM("cbind(incidence, size - incidence) ~ period + (1 | herd)", bh.datasets.load("cbpp"),
                      family="binomial")
    data = bh.datasets.load("contraception")
    data["use"] = (data["use"] == "Y").astype(int)
    data["livch"] = pd.Categorical(data["livch"], categories=["0", "1", "2", "3+"])
    return bh.HLM("use ~ age + I(age**2) + urban + livch + (urban | district)", data, family="bernoulli")
"""
MODELS = ("cbpp", "contraception_urban")
FIELDS = ["model", "engine", "state", "seconds", "divergences", "max_rhat", "min_ess_bulk", "min_ess_per_s"]


def summarise(tree, var_names, seconds):
    import arviz as az
    import numpy as np

    names = [v for v in var_names if v in tree["posterior"]]
    ess = az.ess(tree, var_names=names, method="bulk")
    rhat = az.rhat(tree, var_names=names)
    values = [np.asarray(ess[v].values, float) for v in names]
    rhats = [np.asarray(rhat[v].values, float) for v in names]
    # the unit diagonal of a correlation Cholesky factor is constant: no ESS
    low = min(float(np.nanmin(np.where(np.isfinite(v) & (v < 1e6), v, np.nan))) for v in values)
    stats = tree["sample_stats"]
    return {"seconds": round(seconds, 2), "divergences": int(stats["diverging"].sum()),
            "max_rhat": round(max(float(np.nanmax(r)) for r in rhats), 4), "min_ess_bulk": round(low),
            "min_ess_per_s": round(low / seconds, 1)}


def bayeshlm_fresh_process(name: str, cache_dir: str | None) -> dict:
    code = SETUP + f"""
import time, json
m = model({name!r})
t = time.perf_counter()
fit = m.fit(method="bayes", random_seed=1)
seconds = time.perf_counter() - t
d = fit.diagnostics
print(json.dumps({{"seconds": seconds, "divergences": d["divergences"], "max_rhat": d["max_rhat"],
                  "min_ess_bulk": d["min_ess_bulk"]}}))
"""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=900)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["min_ess_per_s"] = round(row["min_ess_bulk"] / row["seconds"], 1)
    row["seconds"] = round(row["seconds"], 2)
    row["max_rhat"] = round(row["max_rhat"], 4)
    row["min_ess_bulk"] = round(row["min_ess_bulk"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bayes_glmm.csv"))
    parser.add_argument("--skip-pymc", action="store_true")
    parser.add_argument("--bambi-python", help="also run Bambi and brms via benchmarks/peers_bambi.py")
    args = parser.parse_args()
    namespace: dict = {}
    exec(SETUP, namespace)  # noqa: S102 -- our own constant code, shared with the fresh processes
    out = Path(args.out)
    new = not out.exists()
    with out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()

        def write(model, engine, state, row):
            writer.writerow({"model": model, "engine": engine, "state": state, **row})
            handle.flush()
            print(model, engine, state, row, flush=True)

        for name in MODELS:
            with tempfile.TemporaryDirectory() as empty:
                write(name, "bayeshlm", "cold (empty Numba cache)", bayeshlm_fresh_process(name, empty))
            write(name, "bayeshlm", "new process, disk cache", bayeshlm_fresh_process(name, None))
            model = namespace["model"](name)
            warnings.simplefilter("ignore")
            model.fit(method="bayes", random_seed=1)
            started = time.perf_counter()
            fit = model.fit(method="bayes", random_seed=2)
            seconds = time.perf_counter() - started
            var_names = ["beta", *(f"tau_{f}" for f in model.design.factor_names),
                         *(f"corr_{f}" for f in model.design.factor_names)]
            write(name, "bayeshlm", "warm", summarise(fit.posterior, var_names, seconds))
            if args.skip_pymc:
                continue
            import nutpie
            import pymc as pm

            graph = model.pymc_model()
            started = time.perf_counter()
            compiled = nutpie.compile_pymc_model(graph, backend="numba")
            tree = nutpie.sample(compiled, draws=1000, tune=1000, chains=4, seed=1, progress_bar=False,
                                 target_accept=0.9)
            write(name, "pymc-graph+nutpie", "cold (compile included)",
                  summarise(tree, var_names, time.perf_counter() - started))
            started = time.perf_counter()
            tree = nutpie.sample(compiled, draws=1000, tune=1000, chains=4, seed=2, progress_bar=False,
                                 target_accept=0.9)
            write(name, "pymc-graph+nutpie", "warm", summarise(tree, var_names, time.perf_counter() - started))
            started = time.perf_counter()
            with graph:
                tree = pm.sample(draws=1000, tune=1000, chains=4, random_seed=1, progressbar=False,
                                 nuts_sampler="pymc", nuts={"target_accept": 0.9},
                                 compute_convergence_checks=False)
            write(name, "pymc-nuts", "cold (compile included)",
                  summarise(tree, var_names, time.perf_counter() - started))
    if args.bambi_python:
        from peers_bambi import main as peers

        peers(["--bambi-python", args.bambi_python, "--models", *MODELS])


if __name__ == "__main__":
    main()
