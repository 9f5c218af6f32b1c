"""Does ``bh.compare_models`` pick the random-slope model when the data have random slopes, and neither model
when they do not? (issue 25)

Each replication simulates a two-level data set

    y_ij = 1 + 0.5 x_ij + u0j + u1j x_ij + r_ij,   u0j ~ N(0, 1),  u1j ~ N(0, slope_sd^2),  r_ij ~ N(0, 1),

with ``--groups`` groups of ``--size`` rows and x_ij ~ N(0, 1), fits ``y ~ x + (1 | g)`` and ``y ~ x + (x | g)``
by full Bayes (default priors) and ranks them with ``bh.compare_models`` (leave one group out, PSIS-LOO).
A model is *preferred* when it ranks first by at least 4 units of elpd and by more than 2 standard errors of the
difference (dse); otherwise neither is. Below 4, ArviZ flags the pair as making similar predictions and its
normal approximation of the difference as unreliable (Sivula et al. 2025, cited in ``az.compare``); nested
models that differ by one near-zero variance have a tiny dse, so 2 dse alone would call noise a preference.
With a slope SD above 0 the slope model should be preferred; at 0 neither should be (the extra variance costs
little predictive accuracy).

Usage::

    python benchmarks/compare_models_simulation.py --reps 40 --out benchmarks/results/compare_models.csv
    python benchmarks/compare_models_simulation.py --summarise benchmarks/results/compare_models.csv

Writes one row per replication as it goes, then prints the summary per slope SD.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import bayeshlm as bh

MODELS = {"intercept": "y ~ x + (1 | g)", "slope": "y ~ x + (x | g)"}


def simulate(rng: np.random.Generator, groups: int, size: int, slope_sd: float) -> pd.DataFrame:
    g = np.repeat(np.arange(groups), size)
    x = rng.normal(size=g.size)
    u0, u1 = rng.normal(size=groups), slope_sd * rng.normal(size=groups)
    y = 1.0 + 0.5 * x + u0[g] + u1[g] * x + rng.normal(size=g.size)
    return pd.DataFrame({"g": g.astype(str), "x": x, "y": y})


def one_replication(data: pd.DataFrame, draws: int, seed: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sampling notes at small draws; compare_models' Pareto-k notes are counted
        fits = {name: bh.HLM(formula, data).fit("bayes", draws=draws, tune=draws, chains=2, random_seed=seed)
                for name, formula in MODELS.items()}
        table = bh.compare_models(fits)
    winner, loser = table.index[0], table.index[1]
    diff, dse = -table.loc[loser, "elpd_diff"], table.loc[loser, "dse"]
    return {"winner": winner, "elpd_diff": diff, "dse": dse, "pareto_messages": len(table.attrs["messages"])}


def preferred(row) -> str:
    return row["winner"] if row["elpd_diff"] >= 4 and row["elpd_diff"] > 2 * row["dse"] else "neither"


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.assign(preferred=rows.apply(preferred, axis=1))
    return rows.groupby("slope_sd").agg(
        replications=("winner", "size"),
        slope_ranked_first=("winner", lambda w: (w == "slope").mean()),
        slope_preferred=("preferred", lambda p: (p == "slope").mean()),
        intercept_preferred=("preferred", lambda p: (p == "intercept").mean()),
        neither_preferred=("preferred", lambda p: (p == "neither").mean()),
        median_elpd_diff=("elpd_diff", "median"),
        median_dse=("dse", "median"),
        pareto_messages=("pareto_messages", "sum"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--groups", type=int, default=30)
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--slope-sds", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compare_models.csv")
    parser.add_argument("--summarise", type=Path, help="only print the summary of a finished (or stopped) run")
    args = parser.parse_args()
    if args.summarise:
        print(summarise(pd.read_csv(args.summarise)).round(3).to_string())
        return
    rng = np.random.default_rng(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for rep in range(args.reps):
        for slope_sd in args.slope_sds:
            started = time.perf_counter()
            row = {"slope_sd": slope_sd, "rep": rep,
                   **one_replication(simulate(rng, args.groups, args.size, slope_sd), args.draws, seed=rep)}
            row["seconds"] = round(time.perf_counter() - started, 2)
            rows.append(row)
            pd.DataFrame(rows).to_csv(args.out, index=False)
            print(row, flush=True)
    print(summarise(pd.DataFrame(rows)).round(3).to_string())


if __name__ == "__main__":
    main()
