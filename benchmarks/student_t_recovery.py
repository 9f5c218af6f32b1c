"""Recovery of the degrees of freedom ν of Student-t group effects (``random_effects="student_t"``).

Per replication, two data sets of J groups x n rows, y = 1 + 0.5 x + u_j + e, e ~ N(0, 1), with school effects
of variance 1 either t(3) (u_j = t_3 / sqrt(3)) or Gaussian, each fitted with t effects and ν estimated under
the default Gamma(2, 0.1) prior (2 chains, ``draws`` after as many tuning steps). One CSV row per fit: the
posterior median and 90% interval of ν, P(ν < 10), divergences, max R-hat, seconds.

    .venv/bin/python benchmarks/student_t_recovery.py 200 20 10 500 benchmarks/results/student_t_recovery.csv
"""

import sys
import time
import warnings

import numpy as np
import pandas as pd

import bayeshlm as bh


def simulated(effects: str, J: int, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, 7])
    u = rng.standard_t(3, J) / np.sqrt(3.0) if effects == "t3" else rng.standard_normal(J)
    g = np.repeat(np.arange(J), n)
    x = rng.standard_normal(J * n)
    return pd.DataFrame({"y": 1.0 + 0.5 * x + u[g] + rng.standard_normal(J * n), "x": x, "g": g.astype(str)})


def main(J: int, n: int, reps: int, draws: int, path: str) -> None:
    warnings.simplefilter("ignore")
    with open(path, "w") as out:
        out.write("rep,effects,nu_median,nu_q05,nu_q95,p_nu_lt_10,divergences,max_rhat,seconds\n")
        for rep in range(reps):
            for effects in ("t3", "normal"):
                start = time.perf_counter()
                fit = bh.HLM("y ~ x + (1 | g)", simulated(effects, J, n, rep)).fit(
                    method="bayes", random_effects="student_t", draws=draws, tune=draws, chains=2,
                    random_seed=rep, progress=False)
                nu = fit.draws("nu").values.ravel()
                d = fit.diagnostics
                out.write(f"{rep},{effects},{np.median(nu):.3f},{np.quantile(nu, 0.05):.3f},"
                          f"{np.quantile(nu, 0.95):.3f},{np.mean(nu < 10):.3f},{d['divergences']},"
                          f"{d['max_rhat']:.3f},{time.perf_counter() - start:.1f}\n")
                out.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
