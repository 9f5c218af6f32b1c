"""Benchmark of the Bayesian engine beside Bambi and brms, on the models of issue 8, in one run.

For each model and engine: total wall time of the fit call (model build + compile + sampling), compile and
sampling seconds where the engine reports them, divergences, max R-hat and minimum bulk ESS over the
hyperparameters (fixed effects, σ, the τ's, correlations), minimum bulk ESS over the group effects, and ESS per
second of total time (hyperparameters). Every engine runs 4 chains x 1000 draws after 1000 tuning steps on the
machine's 2 cores, seed 1.

Cache states, the same for every engine:

- ``cold``: a new process with empty compile caches (PyTensor's ``base_compiledir`` and Numba's cache moved to
  a new empty directory; brms compiles its Stan model in every new process);
- ``warm``: a new process that finds the caches the cold run has just filled;
- ``refit``: a second fit (seed 2) in the process of the warm run, for brms ``update()`` of the cold run's fit,
  which reuses the compiled Stan model.

For this engine ``total_s`` is the fit call in a process that has imported ``bayeshlm`` (lazily: a fit on a
compiled kernel loads nutpie's sampler core inside the fit, and Numba only for kernels without a C extension;
PyMC and PyTensor only for a graph) and ``import_s`` the import before it; ``compile_s`` is the time to
compile the kernel's C callback (cold) or load it from the cache (warm), about 0 for the two-level models that
the ahead-of-time compiled extension covers (HS&B, sleepstudy; ``bayeshlm.bayes.kernel.extension_callbacks``).
``benchmarks/cold_start_breakdown.py`` splits one HS&B fit into its stages in CPU seconds.

Usage::

    python benchmarks/bench_bayes.py --bambi-python /path/to/venv/bin/python      # everything
    python benchmarks/bench_bayes.py --models hsb --engines bayeshlm               # this engine only

Bambi needs its own environment (it pins formulae 0.6): ``python -m venv bambi-venv &&
bambi-venv/bin/pip install bambi nutpie``. It runs with its default sampler (PyMC's NUTS) and with nutpie.
brms runs when ``Rscript`` can load it (Debian: ``apt-get install r-cran-brms``). Notes on the peers: Bambi 0.21
fits group effects without correlations (its LKJ prior is not implemented), so on random-slope models it samples
fewer hyperparameters than the other two; Bambi cannot fix per-observation sampling variances, so it has no
eight-schools row. Results go to ``benchmarks/results/bayes.csv`` (``--out``) and the table is printed with the
ratios of this engine's ESS per second to each peer's in the same cache state.
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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Case:
    data: str
    formula: str
    known_variance: str | None = None  # expression in the data's columns giving each row's sampling variance
    brms_formula: str | None = None  # when brms needs other syntax (known variances: ``y | se(sd) ~ ...``)
    bambi: bool = True
    options: tuple = ()  # further HLM options, (name, value) pairs
    brms: bool = True


MODELS = {
    "hsb": Case("hsb", "mathach ~ meanses*cses + sector*cses + (cses | school)"),
    "sleepstudy": Case("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    "egsingle": Case("egsingle", "math ~ year + (year | childid) + (year | schoolid)"),
    "scotssec": Case("scotssec", "attain ~ verbal + sex + (1 | primary) + (1 | second)"),
    "eight_schools": Case("eight_schools", "y ~ 1 + (1 | school)", known_variance="sigma**2",
                          brms_formula="y | se(sigma) ~ 1 + (1 | school)", bambi=False),
    # AR(1) errors within boy (nlme's Oxboys model): on the compiled kernel since 2026-12-06; Bambi has no AR(1)
    "oxboys_ar1": Case("oxboys", "height ~ age + (age | Subject)", bambi=False, brms=False,
                       options=(("correlation", "ar1"), ("time", "Occasion"))),
}
ENGINES = ("bayeshlm", "bambi", "bambi/nutpie", "brms")

ENGINE_RUN = textwrap.dedent("""
    import json, time, warnings
    warnings.simplefilter("ignore")
    import arviz as az
    start = time.perf_counter()
    import bayeshlm as bh
    imported = time.perf_counter() - start
    data, formula, known_variance, options, draws, chains, refit = {args!r}
    df = bh.datasets.load(data)
    if known_variance:
        df = df.assign(known_variance=df.eval(known_variance))
    model = bh.HLM(formula, df, known_variance="known_variance" if known_variance else None, **dict(options))

    def fit_once(seed):
        start = time.perf_counter()
        fit = model.fit("bayes", draws=draws, tune=draws, chains=chains, random_seed=seed)
        total = time.perf_counter() - start
        d = fit.diagnostics
        groups = [v for v in fit.posterior["posterior"].data_vars if v.startswith("u_")]
        ess = az.ess(fit.posterior, var_names=groups, method="bulk")
        return {{"total_s": total, "compile_s": fit.sampler["compile_seconds"],
                "sampling_s": fit.sampler["sampling_seconds"], "divergences": d["divergences"],
                "max_rhat": d["max_rhat"], "min_ess_bulk": d["min_ess_bulk"],
                "min_ess_groups": min(float(ess[v].min()) for v in groups),
                "log_density": fit.sampler["log_density"]}}

    print(json.dumps(fit_once(1) | {{"import_s": imported}}), flush=True)
    if refit:
        print(json.dumps(fit_once(2)), flush=True)
""")

BAMBI_RUN = textwrap.dedent("""
    import json, time, warnings
    warnings.simplefilter("ignore")
    import arviz as az, bambi as bmb, pandas as pd
    csv, formula, sampler, draws, chains, refit = {args!r}
    df = pd.read_csv(csv)

    def fit_once(seed):
        start = time.perf_counter()
        model = bmb.Model(formula, df)
        idata = model.fit(draws=draws, tune=draws, chains=chains, cores=min(chains, 2), random_seed=seed,
                          inference_method=sampler, progressbar=False)
        total = time.perf_counter() - start
        post = idata.posterior
        # hyperparameters: what the other engines report as beta, sigma and tau (no offsets, no linear predictor)
        groups = [v for v in post.data_vars if any(d.endswith("__factor_dim") for d in post[v].dims)]
        hyper = [v for v in post.data_vars if v not in groups and not v.endswith(("_offset", "_mean"))
                 and v != "mu"]
        ess, ess_groups = az.ess(idata, var_names=hyper), az.ess(idata, var_names=groups)
        rhat = az.rhat(idata, var_names=hyper)
        return {{"total_s": total, "divergences": int(idata.sample_stats["diverging"].sum()),
                "max_rhat": max(float(rhat[v].max()) for v in rhat.data_vars),
                "min_ess_bulk": min(float(ess[v].min()) for v in ess.data_vars),
                "min_ess_groups": min(float(ess_groups[v].min()) for v in ess_groups.data_vars)}}

    print(json.dumps(fit_once(1)), flush=True)
    if refit:
        print(json.dumps(fit_once(2)), flush=True)
""")

BRMS_RUN = textwrap.dedent("""
    suppressMessages({{library(brms); library(posterior)}})
    rstan::rstan_options(boost_lib = "/usr/include", auto_write = FALSE)
    args <- commandArgs(trailingOnly = TRUE)
    data <- read.csv(args[1]); draws <- as.integer(args[3]); chains <- as.integer(args[4])
    report <- function(fit, total) {{
      d <- as_draws_array(fit)  # constant draws (sigma = 0 in se() models) have NA diagnostics
      hyper <- summarise_draws(subset_draws(d, variable = "^(b_|sd_|cor_|sigma)", regex = TRUE), "rhat", "ess_bulk")
      groups <- summarise_draws(subset_draws(d, variable = "^r_", regex = TRUE), "ess_bulk")
      np <- nuts_params(fit)
      cat(sprintf('{{"total_s": %f, "min_ess_bulk": %f, "max_rhat": %f, "divergences": %d, "min_ess_groups": %f}}\\n',
                  total, min(hyper$ess_bulk, na.rm = TRUE), max(hyper$rhat, na.rm = TRUE),
                  sum(np$Value[np$Parameter == "divergent__"]), min(groups$ess_bulk)))
    }}
    start <- Sys.time()
    fit <- brm(as.formula(args[2]), data = data, chains = chains, cores = min(chains, 2), iter = 2 * draws,
               warmup = draws, seed = 1, refresh = 0, silent = 2, backend = "rstan")
    report(fit, as.numeric(difftime(Sys.time(), start, units = "secs")))
    start <- Sys.time()
    refit <- update(fit, seed = 2, refresh = 0, silent = 2)
    report(refit, as.numeric(difftime(Sys.time(), start, units = "secs")))
""")


def run(command: list[str], cache: str | None) -> list[dict]:
    """Run ``command`` in a fresh process and return the JSON records it prints; ``cache``: the directory for
    PyTensor's and Numba's compile caches (None: the user's default caches)."""
    env = dict(os.environ)
    if cache is not None:
        env["PYTENSOR_FLAGS"] = f"base_compiledir={cache}"
        env["NUMBA_CACHE_DIR"] = cache
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    try:
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    except json.JSONDecodeError as err:
        return [{"error": f"unreadable record ({err}): {proc.stdout.strip().splitlines()[-1]}"}]
    if proc.returncode or not records:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
        return [{"error": message}]
    return records


def python_engine_rows(name: str, engine: str, command_for, cold: bool, workdir: str) -> list[dict]:
    """Cold run (new empty cache directory), then warm run and refit (the same directory, now filled)."""
    cache = tempfile.mkdtemp(dir=workdir, prefix="cache-") if cold else None
    rows = []
    if cold:
        rows.append({"model": name, "engine": engine, "cache": "cold", **run(command_for(refit=False), cache)[0]})
    for state, record in zip(("warm", "refit"), run(command_for(refit=True), cache), strict=False):
        rows.append({"model": name, "engine": engine, "cache": state, **record})
    return rows


def results_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    table["ess_per_s"] = table["min_ess_bulk"] / table["total_s"] if "min_ess_bulk" in table else float("nan")
    return table


def report(table: pd.DataFrame) -> None:
    """Print the results and the ratios of this engine's ESS per second to each peer's, same cache state."""
    print(table.drop(columns=[c for c in ("log_density", "error") if c in table]).round(3).to_string(index=False))
    ours = table.loc[table["engine"] == "bayeshlm", ["model", "cache", "ess_per_s"]]
    peers = table.loc[table["engine"] != "bayeshlm", ["model", "cache", "engine", "ess_per_s"]]
    ratios = peers.merge(ours, on=["model", "cache"], suffixes=("_peer", "_bayeshlm")).dropna()
    if len(ratios):
        ratios["ratio"] = ratios["ess_per_s_bayeshlm"] / ratios["ess_per_s_peer"]
        print("\nESS per second (hyperparameters, total time): bayeshlm / peer, in the same cache state")
        print(ratios.round(1).to_string(index=False))
    if "error" in table:
        print("\nerrors:\n" + table.dropna(subset=["error"])[["model", "engine", "cache", "error"]].to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--no-cold", action="store_true", help="skip the empty-cache runs (default caches)")
    parser.add_argument("--bambi-python", help="a Python interpreter with bambi and nutpie installed")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bayes.csv"))
    parser.add_argument("--report", metavar="CSV", nargs="+",
                        help="print the tables of earlier runs' CSVs (read as one table); run nothing")
    args = parser.parse_args()
    if args.report:
        report(pd.concat([pd.read_csv(path) for path in args.report], ignore_index=True))
        return
    engines = [e for e in args.engines if not e.startswith("bambi") or args.bambi_python]
    if "brms" in engines and (shutil.which("Rscript") is None or subprocess.run(
            ["Rscript", "-e", "library(brms)"], capture_output=True).returncode):
        engines.remove("brms")
    print(f"engines: {', '.join(engines)}", flush=True)
    import bayeshlm as bh

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            case = MODELS[name]
            csv = os.path.join(workdir, f"{case.data}.csv")
            bh.datasets.load(case.data).to_csv(csv, index=False)
            for engine in engines:
                if engine.startswith("bambi") and not case.bambi or engine == "brms" and not case.brms:
                    continue
                if engine == "bayeshlm":
                    def command(refit, case=case):
                        code = ENGINE_RUN.format(args=(case.data, case.formula, case.known_variance, case.options,
                                                       args.draws, args.chains, refit))
                        return [sys.executable, "-c", code]
                    new = python_engine_rows(name, engine, command, not args.no_cold, workdir)
                elif engine.startswith("bambi"):
                    sampler = "nutpie" if engine.endswith("nutpie") else "pymc"

                    def command(refit, case=case, sampler=sampler, csv=csv):
                        code = BAMBI_RUN.format(args=(csv, case.formula, sampler, args.draws, args.chains, refit))
                        return [args.bambi_python, "-c", code]
                    new = python_engine_rows(name, engine, command, not args.no_cold, workdir)
                else:
                    script = os.path.join(workdir, "brms.R")
                    Path(script).write_text(BRMS_RUN.format())
                    records = run(["Rscript", script, csv, case.brms_formula or case.formula, str(args.draws),
                                   str(args.chains)], None)
                    new = [{"model": name, "engine": engine, "cache": state, **record}
                           for state, record in zip(("cold", "refit"), records, strict=False)]
                for row in new:
                    print(json.dumps(row), flush=True)
                rows += new
                results_table(rows).to_csv(args.out, index=False)  # after every run: a cut-off run keeps its rows
    print()
    report(results_table(rows))


if __name__ == "__main__":
    main()
