"""Coverage and recovery of the Bayes HGLM engine: a two-level Bernoulli model with a random slope (issue 24).

True model (logit link), J = 40 groups x n = 25 rows, x_ij ~ N(0, 1) per row:

    logit P(y_ij = 1) = gamma_0 + u_0j + (gamma_1 + u_1j) x_ij,   (u_0j, u_1j) ~ N(0, T),
    gamma = (-0.5, 1.0),  sd(u_0) = 1.0,  sd(u_1) = 0.5,  corr(u_0, u_1) = 0.3.

Each replication simulates a new data set (seed = --seed + replication), fits ``y ~ x + (x | g)`` with
``HLM(..., family="bernoulli").fit(method="bayes")`` under the default priors (2 chains x 500 draws after 500
tuning steps, random_seed = replication) and writes one CSV row as soon as it finishes: per parameter the
posterior mean, the equal-tailed 90% interval (5% and 95% quantiles) and whether it covers the truth; the
share of the 80 group effects u_qj whose 90% interval covers the simulated value; divergences, max R-hat and
min bulk ESS. Replications already in the CSV are skipped, so a run can be split into chunks:

    .venv/bin/python benchmarks/calibration_bernoulli.py --start 0 --stop 25     # about 5 minutes each
    .venv/bin/python benchmarks/calibration_bernoulli.py --summary               # coverage table (markdown)

``--parameterization non-centred --out benchmarks/results/calibration_bernoulli_noncentred.csv`` repeats the
study with the factor forced non-centred (the engine's default choice is recorded in each row).

Results: benchmarks/results/calibration_bernoulli.csv; discussion in docs/calibration.md.
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "calibration_bernoulli.csv"
GROUPS, ROWS_PER_GROUP = 40, 25
GAMMA = {"gamma_0": -0.5, "gamma_1": 1.0}
TAU = {"tau_0": 1.0, "tau_1": 0.5}
CORR = 0.3
TRUTH = {**GAMMA, **TAU, "corr": CORR}
LEVEL = (0.05, 0.95)
FIELDS = (["replication", "data_seed", "seconds", "divergences", "max_rhat", "min_ess_bulk", "parameterization",
           "target_accept"]
          + [f"{k}_{p}" for p in TRUTH for k in ("mean", "q05", "q95", "covered")]
          + ["group_effects_covered"])


def simulate(seed: int):
    """One data set from the true model: a DataFrame (y, x, g) and the simulated group effects (J x 2)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    sd = np.array([TAU["tau_0"], TAU["tau_1"]])
    T = np.outer(sd, sd) * np.array([[1.0, CORR], [CORR, 1.0]])
    u = rng.multivariate_normal(np.zeros(2), T, size=GROUPS)
    g = np.repeat(np.arange(GROUPS), ROWS_PER_GROUP)
    x = rng.standard_normal(GROUPS * ROWS_PER_GROUP)
    eta = GAMMA["gamma_0"] + u[g, 0] + (GAMMA["gamma_1"] + u[g, 1]) * x
    y = rng.binomial(1, 1.0 / (1.0 + np.exp(-eta)))
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{j:02d}" for j in g]}), u


def posterior_draws(fit) -> dict[str, np.ndarray]:
    """Flat draws of gamma_0, gamma_1, tau_0, tau_1 and the correlation (from the Cholesky factor of corr_g)."""
    post = fit.posterior["posterior"]
    beta = post["beta"].values.reshape(-1, 2)
    tau = post["tau_g"].values.reshape(-1, 2)
    chol = post["corr_g"].values.reshape(-1, 2, 2)
    corr = (chol @ np.swapaxes(chol, 1, 2))[:, 1, 0]
    return {"gamma_0": beta[:, 0], "gamma_1": beta[:, 1], "tau_0": tau[:, 0], "tau_1": tau[:, 1], "corr": corr}


def replicate(replication: int, base_seed: int, parameterization: str | None = None) -> dict:
    import bayeshlm as bh

    data, u_true = simulate(base_seed + replication)
    options = {"parameterization": {"g": parameterization}} if parameterization else {}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sampler problems are recorded in the row, not printed
        fit = bh.HLM("y ~ x + (x | g)", data, family="bernoulli").fit(
            method="bayes", draws=500, tune=500, chains=2, random_seed=replication, **options)
    row = {"replication": replication, "data_seed": base_seed + replication,
           "seconds": round(time.perf_counter() - start, 2), "divergences": fit.diagnostics["divergences"],
           "max_rhat": round(fit.diagnostics["max_rhat"], 4), "min_ess_bulk": round(fit.diagnostics["min_ess_bulk"]),
           "parameterization": fit.sampler["parameterization"]["g"], "target_accept": fit.sampler["target_accept"]}
    for name, draws in posterior_draws(fit).items():
        lo, hi = np.quantile(draws, LEVEL)
        row |= {f"mean_{name}": round(float(draws.mean()), 5), f"q05_{name}": round(float(lo), 5),
                f"q95_{name}": round(float(hi), 5), f"covered_{name}": int(lo <= TRUTH[name] <= hi)}
    u = fit.posterior["posterior"]["u_g"]                       # chain, draw, group, coefficient
    u = u.sel(g=[f"g{j:02d}" for j in range(GROUPS)]).values.reshape(-1, GROUPS, 2)
    lo, hi = np.quantile(u, LEVEL, axis=0)
    row["group_effects_covered"] = round(float(np.mean((lo <= u_true) & (u_true <= hi))), 4)
    return row


def run(start: int, stop: int, base_seed: int, out: Path, parameterization: str | None = None) -> None:
    done = set()
    if out.exists():
        with out.open() as fh:
            done = {int(r["replication"]) for r in csv.DictReader(fh)}
    new_file = not out.exists()
    with out.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for replication in range(start, stop):
            if replication in done:
                continue
            row = replicate(replication, base_seed, parameterization)
            writer.writerow(row)
            fh.flush()
            print(f"replication {replication}: {row['seconds']} s, {row['divergences']} divergences, "
                  f"max R-hat {row['max_rhat']}", flush=True)


def summary(out: Path) -> str:
    """Markdown table: coverage with its binomial SE, mean bias and RMSE of the posterior mean, per parameter."""
    import pandas as pd

    rows = pd.read_csv(out)
    R = len(rows)
    lines = ["| parameter | true | 90% coverage | binomial SE | mean of posterior means | bias | RMSE |",
             "|---|---|---|---|---|---|---|"]
    for name, truth in TRUTH.items():
        cover = rows[f"covered_{name}"].mean()
        means = rows[f"mean_{name}"]
        lines.append(f"| {name} | {truth} | {cover:.3f} | {np.sqrt(cover * (1 - cover) / R):.3f} | "
                     f"{means.mean():.3f} | {means.mean() - truth:+.3f} | "
                     f"{np.sqrt(np.mean((means - truth) ** 2)):.3f} |")
    ge = rows["group_effects_covered"]
    lines += ["", f"replications: {R}; group effects u_qj covered: {ge.mean():.3f} (80 per replication); "
              f"divergences: {int(rows['divergences'].sum())} in total, in {int((rows['divergences'] > 0).sum())} "
              f"replications; max R-hat above 1.01 in {int((rows['max_rhat'] > 1.01).sum())}, largest "
              f"{rows['max_rhat'].max():.3f}; min bulk ESS median {rows['min_ess_bulk'].median():.0f}, smallest "
              f"{rows['min_ess_bulk'].min():.0f}; parameterization: "
              f"{rows['parameterization'].value_counts().to_dict()}; target_accept: "
              f"{rows['target_accept'].value_counts().to_dict()}; seconds per fit: median "
              f"{rows['seconds'].median():.1f}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, default=100)
    parser.add_argument("--seed", type=int, default=24000)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--parameterization", choices=("centred", "non-centred"),
                        help="force the factor's parameterisation (default: the engine's own choice)")
    parser.add_argument("--summary", action="store_true", help="print the coverage table of --out and exit")
    args = parser.parse_args()
    if args.summary:
        print(summary(args.out))
    else:
        run(args.start, args.stop, args.seed, args.out, args.parameterization)


if __name__ == "__main__":
    main()
