"""Benchmark of the Bayesian engine (and Bambi, when a Python with Bambi is given).

For each model: total wall time of the fit call (graph build + compile + sampling), compile and sampling
seconds, divergences, max R-hat, minimum bulk ESS over the sampled parameters, and ESS per second of total
time. Each run is a fresh subprocess, so "warm" means a warm on-disk compile cache and "cold" an empty
``PYTENSOR_FLAGS=base_compiledir=<new temporary directory>``.

Usage::

    python benchmarks/bench_bayes.py                      # this engine, warm and cold, 4 chains x 1000
    python benchmarks/bench_bayes.py --models hsb --draws 500 --chains 2
    python benchmarks/bench_bayes.py --bambi-python /path/to/venv/bin/python   # add Bambi (its own venv:
                                                                                # Bambi pins formulae 0.6)

Measured 2026-11-23 on the project's 2-core machine while other engineers' test suites ran (load 3-4, so
times are pessimistic), HS&B intercepts- and slopes-as-outcomes, 4 chains x 1000 draws (1000 tuning):

    engine           cache  total s  compile s  sample s  div  R-hat  min ESS  ESS/s
    bayeshlm/nutpie  cold     369.9      355.3       9.4    0  1.006     1046    2.8
    bayeshlm/nutpie  warm      59.8       49.6       6.3    0  1.007     1269   21.2
    bayeshlm/pymc    cold     242.3          -     237.9    0  1.004     1590    6.6
    bayeshlm/pymc    warm     108.4          -     103.7    0  1.003     1590   14.7
    bayeshlm/nutpie  refit in the same process (compiled model cached): 0.8 s total, 2 chains x 500

"warm" is a new process with a warm PyTensor cache; nutpie still pays ~50 s there because its numba cfunc
wrappers are compiled uncached (see bayeshlm/bayes/sampling.py). With less load (same machine, earlier):
nutpie cold compile 126 s, warm sleepstudy compile 58 s, sampling 0.6-0.8 s for 2-4 chains.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

MODELS = {
    "hsb": ("hsb", "mathach ~ meanses*cses + sector*cses + (cses | school)"),
    "sleepstudy": ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    "egsingle": ("egsingle", "math ~ year + (year | childid) + (year | schoolid)"),
    "scotssec": ("scotssec", "attain ~ verbal + sex + (1 | primary) + (1 | second)"),
}

ENGINE_RUN = textwrap.dedent("""
    import json, time, warnings
    warnings.simplefilter("ignore")
    import bayeshlm as bh
    data, formula, sampler, draws, chains = {args!r}
    model = bh.HLM(formula, bh.datasets.load(data))
    start = time.perf_counter()
    fit = model.fit("bayes", draws=draws, tune=draws, chains=chains, random_seed=1, sampler=sampler)
    total = time.perf_counter() - start
    d = fit.diagnostics
    print(json.dumps({{"total_s": total, "compile_s": fit.sampler["compile_seconds"],
                      "sampling_s": fit.sampler["sampling_seconds"], "divergences": d["divergences"],
                      "max_rhat": d["max_rhat"], "min_ess_bulk": d["min_ess_bulk"],
                      "route": fit.sampler["route"], "parameterization": fit.sampler["parameterization"]}}))
""")

BAMBI_RUN = textwrap.dedent("""
    import json, time, warnings
    warnings.simplefilter("ignore")
    import arviz as az, bambi as bmb, pandas as pd
    csv, formula, draws, chains = {args!r}
    df = pd.read_csv(csv)
    start = time.perf_counter()
    model = bmb.Model(formula, df)
    idata = model.fit(draws=draws, tune=draws, chains=chains, cores=min(chains, 2), random_seed=1,
                      progressbar=False)
    total = time.perf_counter() - start
    post = idata.posterior
    # the parameters NUTS samples, as for the other engines: no per-group draws, offsets or linear predictor
    names = [v for v in post.data_vars if not v.endswith(("_offset", "_mean"))
             and not any(d.endswith("__factor_dim") for d in post[v].dims)]
    ess = az.ess(idata, var_names=names)
    min_ess = min(float(ess[v].min()) for v in ess.data_vars)
    div = int(idata.sample_stats["diverging"].sum())
    print(json.dumps({{"total_s": total, "min_ess_bulk": min_ess, "divergences": div}}))
""")

BRMS_RUN = textwrap.dedent("""
    suppressMessages({{library(brms); library(posterior)}})
    rstan::rstan_options(boost_lib = "/usr/include", auto_write = FALSE)
    args <- commandArgs(trailingOnly = TRUE)
    data <- read.csv(args[1]); draws <- as.integer(args[3]); chains <- as.integer(args[4])
    start <- Sys.time()
    fit <- brm(as.formula(args[2]), data = data, chains = chains, cores = min(chains, 2), iter = 2 * draws,
               warmup = draws, seed = 1, refresh = 0, silent = 2, backend = "rstan")
    total <- as.numeric(difftime(Sys.time(), start, units = "secs"))
    summary <- summarise_draws(subset_draws(as_draws_array(fit), variable = "^(b_|sd_|cor_|sigma)", regex = TRUE),
                               "rhat", "ess_bulk")
    np <- nuts_params(fit)
    cat(sprintf('{{"total_s": %f, "min_ess_bulk": %f, "max_rhat": %f, "divergences": %d}}\n', total,
                min(summary$ess_bulk), max(summary$rhat), sum(np$Value[np$Parameter == "divergent__"])))
""")


def run(command: list[str], cold: bool) -> dict:
    """Run one fit in a fresh process; ``cold``: with empty PyTensor and Numba caches."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        if cold:
            env["PYTENSOR_FLAGS"] = f"base_compiledir={cache}"
            env["NUMBA_CACHE_DIR"] = cache
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--samplers", nargs="+", default=["nutpie", "pymc"], choices=["nutpie", "pymc"])
    parser.add_argument("--no-cold", action="store_true", help="skip the empty-compile-cache runs")
    parser.add_argument("--bambi-python", help="a Python interpreter with bambi installed")
    parser.add_argument("--no-brms", action="store_true", help="skip brms even when R has it")
    args = parser.parse_args()
    brms = not args.no_brms and shutil.which("Rscript") is not None and subprocess.run(
        ["Rscript", "-e", "library(brms)"], capture_output=True).returncode == 0
    rows = []
    for name in args.models:
        data, formula = MODELS[name]
        for sampler in args.samplers:
            for cold in ([False] if args.no_cold else [True, False]):
                code = ENGINE_RUN.format(args=(data, formula, sampler, args.draws, args.chains))
                rows.append({"model": name, "engine": f"bayeshlm/{sampler}", "cache": "cold" if cold else "warm",
                             **run([sys.executable, "-c", code], cold)})
                print(json.dumps(rows[-1]), flush=True)
        if not (args.bambi_python or brms):
            continue
        import bayeshlm as bh

        with tempfile.TemporaryDirectory() as tmp:
            csv = os.path.join(tmp, f"{data}.csv")
            bh.datasets.load(data).to_csv(csv, index=False)
            if args.bambi_python:
                code = BAMBI_RUN.format(args=(csv, formula, args.draws, args.chains))
                rows.append({"model": name, "engine": "bambi", "cache": "warm",
                             **run([args.bambi_python, "-c", code], False)})
                print(json.dumps(rows[-1]), flush=True)
            if brms:  # the Stan model is compiled in every run (auto_write = FALSE): its total includes that
                script = os.path.join(tmp, "brms.R")
                with open(script, "w") as f:
                    f.write(BRMS_RUN.format())
                rows.append({"model": name, "engine": "brms/rstan", "cache": "cold",
                             **run(["Rscript", script, csv, formula, str(args.draws), str(args.chains)], False)})
                print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"{'model':<11} {'engine':<16} {'cache':<5} {'total s':>8} {'compile s':>9} {'sample s':>8} {'div':>4} "
          f"{'R-hat':>6} {'min ESS':>8} {'ESS/s':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<11} {r['engine']:<16} {r['cache']:<5} ERROR {r['error']}")
            continue
        print(f"{r['model']:<11} {r['engine']:<16} {r['cache']:<5} {r['total_s']:8.1f} "
              f"{r.get('compile_s') or float('nan'):9.1f} {r.get('sampling_s') or float('nan'):8.1f} "
              f"{r['divergences']:4d} {r.get('max_rhat', float('nan')):6.3f} {r['min_ess_bulk']:8.0f} "
              f"{r['min_ess_bulk'] / r['total_s']:7.1f}")


if __name__ == "__main__":
    main()
