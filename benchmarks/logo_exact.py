"""Leave-one-group-out cross-validation: PSIS-LOO on the marginal log-likelihood against exact refits (issue 25).

For a Bayesian fit, ``az.loo(fit.log_likelihood("marginal"))`` estimates, by Pareto-smoothed importance sampling
over the full-data posterior, the expected log predictive density of each group's data when that group is left
out,

    elpd_j = log p(y_j | y_-j) = log E[ N(y_j | X_j gamma, Z_j T Z_j' + sigma^2 I) | y_-j ].

The exact value needs one refit per group: sample the posterior of the data without group j, and average the
group's marginal density over those draws (log-mean-exp). This script does both and prints, per group and in
total, the PSIS estimate, the exact value, their difference, and Pareto k. The exact densities are computed
densely (scipy's multivariate normal with V_j built from the draws), independently of the package's Woodbury
code.

Agreement criterion (the issue's): |elpd_psis - elpd_exact| below 2 standard errors of elpd_psis (ArviZ's
``se``, the spread over groups). A stricter scale is also printed: the Monte Carlo SE of the exact total
(delta method on each log-mean-exp), to show whether a gap is larger than the refits' own noise.

Usage::

    python benchmarks/logo_exact.py --data sleepstudy --groups 12 --draws 1000 --chains 4
    python benchmarks/logo_exact.py --data simulated --groups 12 --draws 1000 --chains 4

Writes one row per left-out group as it finishes (``--out``, CSV) and the totals at the end.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats

import bayeshlm as bh

FORMULAS = {"sleepstudy": ("Reaction ~ Days + (Days | Subject)", "Subject"),
            "simulated": ("y ~ x + (x | g)", "g")}


def sleepstudy_subset(groups: int) -> pd.DataFrame:
    """The first ``groups`` subjects of lme4's sleepstudy (10 days each)."""
    data = bh.datasets.load("sleepstudy")
    keep = sorted(data["Subject"].unique())[:groups]
    return data[data["Subject"].isin(keep)].reset_index(drop=True)


def simulated(groups: int, size: int = 8, seed: int = 11) -> pd.DataFrame:
    """y = 1 + 0.5 x + u0 + u1 x + r: u0 ~ N(0, 1), u1 ~ N(0, 0.5^2), r ~ N(0, 1), x ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), size)
    x = rng.normal(size=g.size)
    y = 1 + 0.5 * x + rng.normal(size=groups)[g] + 0.5 * rng.normal(size=groups)[g] * x + rng.normal(size=g.size)
    return pd.DataFrame({"g": [f"g{j:02d}" for j in g], "x": x, "y": y})


def load(name: str, groups: int) -> pd.DataFrame:
    return sleepstudy_subset(groups) if name == "sleepstudy" else simulated(groups)


def dense_group_log_density(fit, X: np.ndarray, Z: np.ndarray, y: np.ndarray, factor: str) -> np.ndarray:
    """(S,) log N(y | X gamma_s, Z T_s Z' + sigma_s^2 I) for every draw s of ``fit``, by dense algebra."""
    beta = fit.draws("beta").transpose("chain", "draw", ...).values.reshape(-1, X.shape[1])
    T = fit.draws(f"T_{factor}").transpose("chain", "draw", ...).values.reshape(-1, Z.shape[1], Z.shape[1])
    sigma = fit.draws("sigma").transpose("chain", "draw").values.reshape(-1)
    return np.array([stats.multivariate_normal(X @ b, Z @ t @ Z.T + s ** 2 * np.eye(len(y))).logpdf(y)
                     for b, t, s in zip(beta, T, sigma)])


def log_mean_exp(values: np.ndarray) -> tuple[float, float]:
    """log of the mean of exp(values), and its Monte Carlo SE by the delta method (independent draws)."""
    lme = special.logsumexp(values) - np.log(len(values))
    ratio = np.exp(values - lme)  # draws of p / mean(p)
    return float(lme), float(ratio.std(ddof=1) / np.sqrt(len(values)))


def exact_logo(data: pd.DataFrame, formula: str, factor: str, fit_options: dict, report=None) -> pd.DataFrame:
    """Per group: the exact elpd_j from a refit without it, its Monte Carlo SE, and the refit's seconds."""
    design = bh.HLM(formula, data).design
    f = design.factor(factor)
    rows = []
    for j, level in enumerate(f.levels):
        inside = f.codes == j
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            refit = bh.HLM(formula, data[~inside].reset_index(drop=True)).fit("bayes", **fit_options)
        values = dense_group_log_density(refit, design.X[inside], f.Z[inside], design.y[inside], factor)
        elpd, mcse = log_mean_exp(values)
        rows.append({"group": str(level), "n": int(inside.sum()), "elpd_exact": elpd, "mcse_exact": mcse,
                     "seconds": round(time.perf_counter() - start, 2)})
        if report is not None:
            report(rows[-1])
    return pd.DataFrame(rows).set_index("group")


def psis_logo(fit):
    """ArviZ's PSIS-LOO on the marginal (per group) log-likelihood of the full-data fit."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.loo(fit.log_likelihood("marginal"), pointwise=True)


def compare(data: pd.DataFrame, formula: str, factor: str, fit_options: dict, report=None) -> dict:
    """PSIS-LOO of the full fit and the exact refits, per group (table) and in total (dict)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = bh.HLM(formula, data).fit("bayes", **fit_options)
    loo = psis_logo(full)
    table = exact_logo(data, formula, factor, fit_options, report)
    table["elpd_psis"] = loo.elpd_i.values
    table["pareto_k"] = loo.pareto_k.values
    table["difference"] = table["elpd_psis"] - table["elpd_exact"]
    totals = {"groups": len(table), "elpd_psis": float(loo.elpd), "se_psis": float(loo.se), "p_loo": float(loo.p),
              "elpd_exact": float(table["elpd_exact"].sum()),
              "mcse_exact": float(np.sqrt((table["mcse_exact"] ** 2).sum())),
              "difference": float(loo.elpd - table["elpd_exact"].sum()), "max_k": float(table["pareto_k"].max()),
              "k_above_good": int((table["pareto_k"] > loo.good_k).sum()), "good_k": float(loo.good_k)}
    totals["difference_in_se"] = totals["difference"] / totals["se_psis"]
    return {"table": table, "totals": totals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=sorted(FORMULAS), default="sleepstudy")
    parser.add_argument("--groups", type=int, default=12)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=None, help="CSV, one row per left-out group as it finishes")
    args = parser.parse_args()

    formula, factor = FORMULAS[args.data]
    data = load(args.data, args.groups)
    options = {"draws": args.draws, "tune": args.tune, "chains": args.chains, "random_seed": args.seed}

    def report(row: dict) -> None:
        print(row, flush=True)
        if args.out is not None:
            frame = pd.DataFrame([row])
            frame.to_csv(args.out, mode="a", header=not args.out.exists(), index=False)

    result = compare(data, formula, factor, options, report)
    pd.set_option("display.width", 150)
    print(result["table"].round(3))
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in result["totals"].items()})


if __name__ == "__main__":
    main()
