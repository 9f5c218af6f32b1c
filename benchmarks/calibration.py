"""Coverage of nominal 90% intervals, by simulation from known true parameters, for both engines.

Design: a "true model" study. Each scenario fixes the parameters (``Scenario.truth``) and the shapes (groups,
group sizes, studies), simulates a fresh data set per replication, fits it by REML and by full Bayes (default
weakly informative priors), and records whether each 90% interval covers the true value. This measures the
frequentist coverage the issue asks for, for both engines alike. (Simulating the parameters from the prior
instead, as in simulation-based calibration, would check the Bayes engine's exact calibration but says
nothing about the likelihood intervals, and the data-scaled default priors are not a fixed generative prior.)

Intervals:

- likelihood, fixed effects: Wald, estimate +- t(df, 0.95) SE with the fit's R&B degrees of freedom
  (HLM fits), or +- z(0.95) SE (``bh.meta``, metafor's normal-theory default);
- likelihood, variances: ``LikelihoodFit`` offers no interval for variance components (no profile, no
  Wald), so none is reported for the two- and three-level models; the meta-analysis reports the Wald
  interval tau^2 +- z(0.95) SE(tau^2) from ``MetaFit.se_tau2``;
- Bayes: equal-tailed 90% posterior intervals (5% and 95% quantiles of the draws).

Scenarios (same shapes in every replication, so each Bayesian model graph compiles once per process):

- ``two_level``: y = g00 + g01 w_j + (g10 + u1j) x_ij + u0j + r_ij, 30 groups of 10, correlated intercept
  and slope (marginal route);
- ``three_level``: y = g0 + g1 x + u_school + u_class + r, 15 schools x 4 classes x 5 pupils (the engine's
  default route; the ``route`` column of the results says which it took);
- ``meta``: V-known random-effects meta-analysis with one moderator, 25 studies, V_j fixed (marginal route).

With R replications the Monte Carlo SE of a 90% coverage is sqrt(0.9 * 0.1 / R) (0.021 at R = 200).

Usage::

    PYTENSOR_FLAGS=base_compiledir=/tmp/pt_calib python benchmarks/calibration.py            # full study
    python benchmarks/calibration.py --quick                                              # smoke run
    python benchmarks/calibration.py --scenarios two_level meta --reps 100

Writes ``benchmarks/results/calibration.csv`` (one row per scenario, engine and parameter) and prints it.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import bayeshlm as bh
from bayeshlm.bayes import SamplingWarning
from bayeshlm.likelihood import BoundaryFitWarning

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Scenario:
    """A data-generating model: true values, a simulator, and how each engine fits the data."""

    name: str
    formula: str
    truth: dict[str, float]
    simulate: Callable[[np.random.Generator], pd.DataFrame]
    hlm_options: dict = field(default_factory=dict)
    meta: bool = False


def _simulate_two_level(rng: np.random.Generator, groups: int = 30, size: int = 10) -> pd.DataFrame:
    t = TWO_LEVEL_TRUTH
    T = np.array([[t["var((Intercept)) g"], t["cov((Intercept), x) g"]],
                  [t["cov((Intercept), x) g"], t["var(x) g"]]])
    g = np.repeat(np.arange(groups), size)
    w = rng.normal(size=groups)
    x = rng.normal(size=groups * size)
    u = rng.multivariate_normal(np.zeros(2), T, size=groups)
    y = (t["(Intercept)"] + t["w"] * w[g] + u[g, 0] + (t["x"] + u[g, 1]) * x
         + rng.normal(scale=np.sqrt(t["sigma2"]), size=len(g)))
    return pd.DataFrame({"y": y, "x": x, "w": w[g], "g": g})


def _simulate_three_level(rng: np.random.Generator, schools: int = 15, classes: int = 4,
                          pupils: int = 5) -> pd.DataFrame:
    t = THREE_LEVEL_TRUTH
    school = np.repeat(np.arange(schools), classes * pupils)
    klass = np.repeat(np.arange(schools * classes), pupils)
    x = rng.normal(size=len(school))
    y = (t["(Intercept)"] + t["x"] * x + rng.normal(scale=np.sqrt(t["var((Intercept)) school"]), size=schools)[school]
         + rng.normal(scale=np.sqrt(t["var((Intercept)) class:school"]), size=schools * classes)[klass]
         + rng.normal(scale=np.sqrt(t["sigma2"]), size=len(school)))
    return pd.DataFrame({"y": y, "x": x, "school": school, "class": klass % classes})


# fixed sampling variances of the 25 studies (the same in every replication, like a fixed set of study sizes)
META_VI = np.linspace(0.01, 0.12, 25)


def _simulate_meta(rng: np.random.Generator) -> pd.DataFrame:
    t = META_TRUTH
    k = len(META_VI)
    w = rng.normal(size=k)
    delta = t["(Intercept)"] + t["w"] * w + rng.normal(scale=np.sqrt(t["var((Intercept)) study"]), size=k)
    return pd.DataFrame({"yi": delta + rng.normal(scale=np.sqrt(META_VI)), "w": w, "vi": META_VI,
                         "study": np.arange(k)})


TWO_LEVEL_TRUTH = {"(Intercept)": 1.0, "w": 0.5, "x": 0.3, "var((Intercept)) g": 0.5,
                   "cov((Intercept), x) g": 0.1, "var(x) g": 0.2, "sigma2": 1.0}
THREE_LEVEL_TRUTH = {"(Intercept)": 1.0, "x": 0.5, "var((Intercept)) class:school": 0.2,
                     "var((Intercept)) school": 0.3, "sigma2": 1.0}
META_TRUTH = {"(Intercept)": 0.3, "w": 0.15, "var((Intercept)) study": 0.04}

SCENARIOS = {
    "two_level": Scenario("two_level", "y ~ w + x + (x | g)", TWO_LEVEL_TRUTH, _simulate_two_level),
    "meta": Scenario("meta", "yi ~ w + (1 | study)", META_TRUTH, _simulate_meta,
                     hlm_options={"known_variance": "vi"}, meta=True),
    "three_level": Scenario("three_level", "y ~ x + (1 | school/class)", THREE_LEVEL_TRUTH, _simulate_three_level),
}


def likelihood_intervals(scenario: Scenario, data: pd.DataFrame, level: float) -> tuple[pd.DataFrame, dict]:
    """REML estimates and ``level`` intervals (NaN where the fit offers none), plus a note on the fit."""
    if scenario.meta:
        fit = bh.meta("yi ~ w", data, vi="vi", method="reml")
        z = stats.norm.ppf(0.5 + level / 2)
        fe = fit.fixed_effects
        rows = {name: (r.estimate, r.estimate - z * r.se, r.estimate + z * r.se) for name, r in fe.iterrows()}
        rows["var((Intercept)) study"] = (fit.tau2, fit.tau2 - z * fit.se_tau2, fit.tau2 + z * fit.se_tau2)
        return _table(rows), {"boundary": bool(fit.boundary)}
    fit = bh.HLM(scenario.formula, data).fit("reml")
    fe = fit.fixed_effects
    half = stats.t.ppf(0.5 + level / 2, fe["df"]) * fe["se"]
    rows = {name: (est, est - h, est + h) for name, est, h in zip(fe.index, fe["estimate"], half)}
    for f in fit.design.factors:
        T = fit.tau[f.name]
        for name, (a, b) in _tau_entries(f).items():
            rows[f"{name} {f.name}"] = (T.iloc[a, b], np.nan, np.nan)
    rows["sigma2"] = (fit.sigma2, np.nan, np.nan)
    return _table(rows), {"boundary": bool(fit.boundary)}


def bayes_intervals(scenario: Scenario, data: pd.DataFrame, level: float, seed: int,
                    **sampling) -> tuple[pd.DataFrame, dict]:
    """Posterior means and equal-tailed ``level`` intervals, plus the sampler's diagnostics."""
    model = bh.HLM(scenario.formula, data, **scenario.hlm_options)
    fit = model.fit("bayes", random_seed=seed, **sampling)
    q = (0.5 - level / 2, 0.5 + level / 2)

    def summary(draws: np.ndarray) -> tuple[float, float, float]:
        lo, hi = np.quantile(draws, q)
        return float(draws.mean()), float(lo), float(hi)

    beta = fit.draws("beta").transpose("chain", "draw", "fixed").values.reshape(-1, model.design.n_fixed)
    rows = {name: summary(beta[:, k]) for k, name in enumerate(model.design.fixed_names)}
    for f in model.design.factors:
        T = fit.draws(f"T_{f.name}").values.reshape(-1, f.n_coef, f.n_coef)
        for name, (a, b) in _tau_entries(f).items():
            rows[f"{name} {f.name}"] = summary(T[:, a, b])
    if model.design.known_variance is None:
        rows["sigma2"] = summary(fit.draws("sigma").values.ravel() ** 2)
    d = fit.diagnostics
    return _table(rows), {"divergences": int(d["divergences"]), "max_rhat": float(d["max_rhat"]),
                          "route": fit.sampler["route"]}


def _tau_entries(f) -> dict[str, tuple[int, int]]:
    """Names of T's free entries (variances, and covariances within a block) -> their (row, column)."""
    out = {}
    for a in range(f.n_coef):
        for b in range(a + 1):
            if a == b:
                out[f"var({f.coef_names[a]})"] = (a, a)
            elif any(a in block and b in block for block in f.blocks):
                out[f"cov({f.coef_names[b]}, {f.coef_names[a]})"] = (a, b)
    return out


def _table(rows: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index", columns=["estimate", "lower", "upper"])


def run_scenario(name: str, reps: int, *, level: float = 0.9, seed: int = 2026, engines=("likelihood", "bayes"),
                 draws: int = 500, tune: int = 500, chains: int = 2, log: Callable[[str], None] | None = None
                 ) -> pd.DataFrame:
    """Simulate ``reps`` data sets of scenario ``name``, fit each by the given engines; one row per replication,
    engine and parameter (truth, estimate, interval, covered, diagnostics). A failed fit is a row with
    ``error`` set and no interval."""
    scenario = SCENARIOS[name]
    rows = []
    for rep in range(reps):
        data = scenario.simulate(np.random.default_rng([seed, rep]))
        for engine in engines:
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", BoundaryFitWarning)
                    warnings.simplefilter("ignore", SamplingWarning)
                    if engine == "likelihood":
                        table, info = likelihood_intervals(scenario, data, level)
                    else:
                        table, info = bayes_intervals(scenario, data, level, seed=seed * 100_000 + rep,
                                                      draws=draws, tune=tune, chains=chains)
            except Exception as err:  # a failed replication is recorded, not fatal
                rows.append({"scenario": name, "engine": engine, "rep": rep, "error": f"{type(err).__name__}: {err}"})
                if log is not None:
                    log(f"{name}: replication {rep + 1}, {engine} failed: {rows[-1]['error']}")
                continue
            seconds = time.perf_counter() - start
            for param, truth in scenario.truth.items():
                est, lo, hi = table.loc[param]
                covered = bool(lo <= truth <= hi) if np.isfinite(lo) else np.nan
                rows.append({"scenario": name, "engine": engine, "rep": rep, "parameter": param, "truth": truth,
                             "level": level, "estimate": est, "lower": lo, "upper": hi, "covered": covered,
                             "seconds": seconds, **info})
        if log is not None:
            log(f"{name}: replication {rep + 1}/{reps} done")
    return pd.DataFrame(rows)


def coverage_table(reps: pd.DataFrame) -> pd.DataFrame:
    """Coverage per scenario, engine and parameter, with the Monte Carlo SE of a coverage at the nominal level,
    sqrt(level (1 - level) / R), bias, mean interval width and failed fits; the share of REML fits on the
    boundary; for Bayes the shares of fits with a divergence and with max R-hat above 1.01."""
    ok = reps[reps["parameter"].notna()] if "parameter" in reps else reps.iloc[:0]
    failed = (reps[reps["error"].notna()].groupby(["scenario", "engine"]).size()
              if "error" in reps else pd.Series(dtype=int))
    out = []
    for (scenario, engine, param), g in ok.groupby(["scenario", "engine", "parameter"], sort=False):
        covered = g["covered"].dropna().astype(float)
        r, level = len(covered), g["level"].iloc[0]
        row = {"scenario": scenario, "engine": engine, "parameter": param, "truth": g["truth"].iloc[0],
               "reps": len(g), "coverage": covered.mean() if r else np.nan,
               "mc_se": np.sqrt(level * (1 - level) / r) if r else np.nan,
               "mean_estimate": g["estimate"].mean(), "bias": g["estimate"].mean() - g["truth"].iloc[0],
               "mean_width": (g["upper"] - g["lower"]).mean(), "failed_fits": int(failed.get((scenario, engine), 0)),
               "median_seconds": g["seconds"].median()}
        if engine == "likelihood":
            row["boundary_fits"] = float(g["boundary"].mean())
        else:
            row["divergent_fits"] = float((g["divergences"] > 0).mean())
            row["rhat_over_1.01_fits"] = float((g["max_rhat"] > 1.01).mean())
            row["route"] = "/".join(sorted(g["route"].unique()))
        out.append(row)
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--reps", type=int, default=200, help="replications of two_level and meta")
    parser.add_argument("--reps-three-level", type=int, default=100)
    parser.add_argument("--draws", type=int, default=500, help="retained draws per chain")
    parser.add_argument("--tune", type=int, default=500)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 replications, 100 draws")
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration.csv")
    parser.add_argument("--reps-out", type=Path, help="also write one row per replication, engine and parameter")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps = args.reps_three_level = 3
        args.draws = args.tune = 100
    all_reps = []
    for name in args.scenarios:
        reps = args.reps_three_level if name == "three_level" else args.reps
        start = time.perf_counter()
        all_reps.append(run_scenario(name, reps, seed=args.seed, draws=args.draws, tune=args.tune,
                                     chains=args.chains, log=lambda msg: print(msg, flush=True)))
        print(f"{name}: {reps} replications in {time.perf_counter() - start:.0f} s", flush=True)
        table = coverage_table(pd.concat(all_reps, ignore_index=True))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False, float_format="%.4g")  # rewritten after each scenario
    reps = pd.concat(all_reps, ignore_index=True)
    if args.reps_out:
        reps.to_csv(args.reps_out, index=False)
    if "error" in reps and reps["error"].notna().any():
        print("Failed fits:\n" + reps.loc[reps["error"].notna(), ["scenario", "engine", "rep", "error"]].to_string())
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"Written to {args.out}")


if __name__ == "__main__":
    main()
