"""Non-Gaussian ML fits (Laplace / adaptive quadrature) beside lme4's glmer, in one run (issue 23).

Each model is fitted 3 times by each engine and the median wall time is reported: bayeshlm's ``fit()`` (the
model is built once, outside the timing) and glmer with its default settings (``Rscript`` in one process, the
data read before timing), as wall-clock and CPU seconds (the CPU time is the steadier number on a shared
machine). The ratio columns are the peer's time over ours (> 1: this engine is faster); the peer
is glmer, glmer.nb or glmmTMB as the model name says. The models are those of tests/test_glmm.py plus
lme4's VerbAgg (7,584 rows, 316 x 24 crossed), read from ``--verbagg`` (default
/work/shared/data/VerbAgg.csv; skipped when absent), and with ``--large`` a simulated two-level Bernoulli
model with 1e6 rows in 1e4 groups (one fit each, in a fresh process whose peak memory is recorded; the data
are written once to a CSV that both engines read before timing). Every timing is appended to ``--out`` (CSV)
as it finishes, so a run cut short keeps what it measured.

Usage::

    python benchmarks/bench_glmm.py                   # both engines
    python benchmarks/bench_glmm.py --no-r            # this engine only
    python benchmarks/bench_glmm.py --large           # and the 1e6-row model
"""

from __future__ import annotations

import argparse
import csv
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

R_MODELS = {
    "cbpp_laplace": "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)",
    "cbpp_probit": "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial(link = 'probit'))",
    "cbpp_agq25": "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial, nAGQ = 25)",
    "contraception_intercept": "glmer(use ~ age + I(age^2) + urban + livch + (1 | district), contra, binomial)",
    "contraception_urban": "glmer(use ~ age + I(age^2) + urban + livch + (urban | district), contra, binomial)",
    "bernoulli_crossed": "glmer(y ~ x + (1 | subject) + (1 | item), crossed, binomial)",
    "bernoulli_nested": "glmer(y ~ x + (1 + x | school) + (1 | school:class), nested, binomial)",
    "poisson_exposure": "glmer(y ~ x + (1 | g) + offset(log(years)), pois, poisson)",
    "nbinom_glmmtmb": "glmmTMB(count ~ cover + mined + (1 | site), salamanders, family = nbinom2)",
    "nbinom_glmer": "glmer.nb(count ~ cover + mined + (1 | site), salamanders)",
    "cbpp_probit_glmmtmb": "glmmTMB(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, "
                           "family = binomial(link = 'probit'))",
    "verbagg": "glmer(r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), verbagg, binomial)",
}

R_SETUP = """
suppressPackageStartupMessages(library(lme4))
ref <- "{ref}"
cbpp <- read.csv("{data}/cbpp.csv", colClasses = c(herd = "factor", period = "factor"))
contra <- read.csv("{data}/Contraception.csv", colClasses = c(district = "factor", livch = "factor",
                   urban = "factor", use = "factor"))
crossed <- read.csv(file.path(ref, "bernoulli_crossed.csv"))
nested <- read.csv(file.path(ref, "bernoulli_nested.csv")); nested$class <- factor(nested$class)
pois <- read.csv(file.path(ref, "poisson_exposure.csv"))
suppressPackageStartupMessages(library(glmmTMB))
salamanders <- read.csv(file.path(ref, "salamanders.csv"))
salamanders$mined <- factor(salamanders$mined, levels = c("yes", "no"))
verbagg <- if (file.exists("{verbagg}")) read.csv("{verbagg}", stringsAsFactors = TRUE) else NULL
timed <- function(name, expr) {{
  if (name == "verbagg" && is.null(verbagg)) return(invisible())
  times <- replicate(3, system.time(suppressWarnings(suppressMessages(eval(expr)))))
  cat(name, median(times["elapsed", ]), median(times["user.self", ] + times["sys.self", ]), "\\n")
  flush(stdout())
}}
"""

LARGE = "bernoulli_1e6"
LARGE_FORMULA = "y ~ x + w + (1 | g)"
R_LARGE = """
large <- read.csv("{path}")
large$g <- factor(large$g)
times <- system.time(suppressWarnings(glmer(y ~ x + w + (1 | g), large, binomial)))  # one fit
cat("{name}", times[["elapsed"]], times[["user.self"]] + times[["sys.self"]], "\\n")
"""


def our_models(verbagg_path: Path) -> dict:
    from test_glmm import MODELS, PEERS

    import bayeshlm as bh

    models = {name: (make, options) for name, (make, options) in {**MODELS, **PEERS}.items()}
    if verbagg_path.exists():
        def verbagg():
            data = pd.read_csv(verbagg_path, dtype={"id": str, "item": str})
            data["r2"] = (data["r2"] == "Y").astype(int)
            for column in ("Gender", "btype", "situ"):
                data[column] = data[column].astype("category")
            return bh.HLM("r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", data, family="bernoulli")
        models["verbagg"] = (verbagg, {})
    return models


def record(out: Path, **row) -> None:
    """Append one timing to the CSV ``out`` (header written with the first row)."""
    new = not out.exists()
    with out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["model", "engine", "seconds", "cpu_s", "loglik", "peak_mb"])
        if new:
            writer.writeheader()
        writer.writerow({"cpu_s": "", "loglik": "", "peak_mb": "", **row})
    print(row, flush=True)


def time_ours(models: dict, out: Path) -> dict[str, tuple[float, float, float]]:
    """(median wall seconds, median CPU seconds, loglik) of 3 fits per model."""
    result = {}
    for name, (make, options) in models.items():
        model = make()
        wall, cpu, fit = [], [], None
        for _ in range(3):
            started, cpu_started = time.perf_counter(), time.process_time()
            fit = model.fit(method="ml", **options)
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        result[name] = (statistics.median(wall), statistics.median(cpu), fit.loglik)
        record(out, model=name, engine="bayeshlm", seconds=round(result[name][0], 4),
               cpu_s=round(result[name][1], 4), loglik=round(fit.loglik, 4))
    return result


def run_r(script: str, out: Path, engine: str = "glmer") -> dict[str, tuple[float, float]]:
    """Run an R script that prints 'name wall cpu' lines; record each line as it arrives."""
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as handle:
        handle.write(script)
    seconds = {}
    with subprocess.Popen(["Rscript", handle.name], stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            if line.strip():
                name, wall, cpu = line.split()[:3]
                seconds[name] = (float(wall), float(cpu))
                record(out, model=name, engine=engine, seconds=float(wall), cpu_s=float(cpu))
    return seconds


def time_glmer(data: Path, verbagg: Path, out: Path) -> dict[str, float]:
    script = R_SETUP.format(ref=ROOT / "tests/reference/glmm", data=data, verbagg=verbagg)
    script += "".join(f"timed('{name}', quote({call}))\n" for name, call in R_MODELS.items())
    return run_r(script, out)


def large_data(path: Path, n_groups: int = 10_000, per_group: int = 100) -> None:
    """Two-level Bernoulli data: logit P(y = 1) = -0.5 + 0.8 x + 0.3 w + u_g, u_g ~ N(0, 0.49) (seed fixed)."""
    rng = np.random.default_rng(20261206)
    g = np.repeat(np.arange(n_groups), per_group)
    x = rng.normal(size=len(g)).round(4)
    w = rng.normal(size=n_groups).round(4)[g]
    eta = -0.5 + 0.8 * x + 0.3 * w + rng.normal(0.0, 0.7, n_groups)[g]
    y = (rng.random(len(g)) < 1.0 / (1.0 + np.exp(-eta))).astype(int)
    pd.DataFrame({"y": y, "x": x, "w": w, "g": g}).to_csv(path, index=False)


def fit_large(path: Path) -> None:
    """In a fresh process: read, build, fit once; print wall and CPU seconds of the fit, loglik and peak
    resident MB (CPU time is the steadier number on a shared machine)."""
    import bayeshlm as bh

    data = pd.read_csv(path, dtype={"g": str})
    model = bh.HLM(LARGE_FORMULA, data, family="bernoulli")
    started, cpu = time.perf_counter(), time.process_time()
    fit = model.fit()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(seconds, cpu, fit.loglik, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def time_large(out: Path, with_r: bool) -> dict[str, float]:
    path = Path(tempfile.gettempdir()) / "bench_glmm_bernoulli_1e6.csv"
    if not path.exists():
        large_data(path)
    result = subprocess.run([sys.executable, __file__, "--fit-large", str(path)], capture_output=True, text=True,
                            check=True)
    seconds, cpu, loglik, peak = map(float, result.stdout.split()[-4:])
    record(out, model=LARGE, engine="bayeshlm", seconds=round(seconds, 3), cpu_s=round(cpu, 3),
           loglik=round(loglik, 4), peak_mb=round(peak))
    peers = run_r("suppressPackageStartupMessages(library(lme4))\n" + R_LARGE.format(path=path, name=LARGE), out) \
        if with_r else {}
    return {"ours": (seconds, cpu, loglik), **peers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "bayeshlm/datasets/data")
    parser.add_argument("--verbagg", type=Path, default=Path("/work/shared/data/VerbAgg.csv"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/glmm.csv")
    parser.add_argument("--no-r", action="store_true")
    parser.add_argument("--large", action="store_true", help="also the 1e6-row two-level Bernoulli model")
    parser.add_argument("--only-large", action="store_true", help="only the 1e6-row model")
    parser.add_argument("--fit-large", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_large:
        fit_large(args.fit_large)
        return
    ours, glmer = {}, {}
    if not args.only_large:
        ours = time_ours(our_models(args.verbagg), args.out)
        glmer = {} if args.no_r else time_glmer(args.data, args.verbagg, args.out)
    if args.large or args.only_large:
        large = time_large(args.out, not args.no_r)
        ours[LARGE] = large.pop("ours")
        glmer.update(large)
    rows = []
    for name, (wall, cpu, loglik) in ours.items():
        peer_wall, peer_cpu = glmer.get(name, (np.nan, np.nan))
        rows.append({"model": name, "bayeshlm_s": round(wall, 3), "peer_s": peer_wall,
                     "ratio_wall": round(peer_wall / wall, 2), "bayeshlm_cpu_s": round(cpu, 3),
                     "peer_cpu_s": peer_cpu, "ratio_cpu": round(peer_cpu / cpu, 2), "loglik": round(loglik, 4)})
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
