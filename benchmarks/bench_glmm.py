"""Non-Gaussian ML fits (Laplace / adaptive quadrature) beside lme4's glmer, in one run (issue 23).

Each model is fitted 3 times by each engine and the median wall time is reported: bayeshlm's ``fit()`` (the
model is built once, outside the timing) and glmer with its default settings (``Rscript`` in one process, the
data read before timing). The ratio column is the peer's time over ours (> 1: this engine is faster); the peer
is glmer, glmer.nb or glmmTMB as the model name says. The models are those of tests/test_glmm.py plus
lme4's VerbAgg (7,584 rows, 316 x 24 crossed), read from ``--verbagg`` (default
/work/shared/data/VerbAgg.csv; skipped when absent).

Usage::

    python benchmarks/bench_glmm.py                   # both engines
    python benchmarks/bench_glmm.py --no-r            # this engine only
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
  seconds <- replicate(3, system.time(suppressWarnings(suppressMessages(eval(expr))))[["elapsed"]])
  cat(name, median(seconds), "\\n")
}}
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


def time_ours(models: dict) -> dict[str, tuple[float, float]]:
    out = {}
    for name, (make, options) in models.items():
        model = make()
        seconds, fit = [], None
        for _ in range(3):
            started = time.perf_counter()
            fit = model.fit(method="ml", **options)
            seconds.append(time.perf_counter() - started)
        out[name] = (statistics.median(seconds), fit.loglik)
    return out


def time_glmer(data: Path, verbagg: Path) -> dict[str, float]:
    script = R_SETUP.format(ref=ROOT / "tests/reference/glmm", data=data, verbagg=verbagg)
    script += "".join(f"timed('{name}', quote({call}))\n" for name, call in R_MODELS.items())
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as handle:
        handle.write(script)
    result = subprocess.run(["Rscript", handle.name], capture_output=True, text=True, check=True)
    return {line.split()[0]: float(line.split()[1]) for line in result.stdout.splitlines() if line.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "bayeshlm/datasets/data")
    parser.add_argument("--verbagg", type=Path, default=Path("/work/shared/data/VerbAgg.csv"))
    parser.add_argument("--no-r", action="store_true")
    args = parser.parse_args()
    ours = time_ours(our_models(args.verbagg))
    glmer = {} if args.no_r else time_glmer(args.data, args.verbagg)
    rows = [{"model": name, "bayeshlm_s": round(s, 3), "peer_s": glmer.get(name),
             "peer/bayeshlm": round(glmer[name] / s, 2) if name in glmer else None, "loglik": round(ll, 4)}
            for name, (s, ll) in ours.items()]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
