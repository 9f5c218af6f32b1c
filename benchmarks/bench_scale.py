"""Scaling study (issue 7): cost of both engines against the number of rows N and of groups J.

Data: two-level random intercept and slope, y_ij = 10 + 2 x_ij + w_j + u_0j + u_1j x_ij + r_ij with
x ~ N(0, 1), w ~ N(0, 1) per group, T = [[1, .3], [.3, .5]], sigma^2 = 4, rows assigned to J groups at random;
model ``y ~ x + w + (x | g)``. Plus a three-level nested case (pupils in classes in schools) and a crossed
case (two crossed factors), and the out-of-core path (Parquet read by Dask) at the largest sizes.

Each cell runs in a fresh subprocess, so its peak memory (``ru_maxrss``, which includes the simulated data
frame, reported alone as ``data_mb``) and its compile time are its own. Times:

- data pass = ``design_s`` (``bh.HLM(...)``: checks and design matrices; with Dask input, both passes over
  the Parquet files and the per-group sums) + ``stats_s`` (REML, in memory: the per-group sufficient
  statistics, one more pass over the rows, kept by the design; crossed designs have none);
- ``fit_s``: REML fit (optimisation from the sufficient statistics; crossed designs: sparse Cholesky);
- Bayes: ``compile_s`` (the two- and three-level models here use the compiled kernel, whose Numba callbacks
  are cached on disk: under a second once a fit of the same kind has run on the machine),
  ``sample_s`` (4 chains x draws after as many tuning steps, on the machine's cores), ``post_s`` (the rest of
  the fit call: priors, sufficient statistics, group-effect draws, diagnostics), and the minimum bulk ESS of
  beta, sigma, tau and the correlations per second of sampling (constant entries such as the unit diagonal of
  a correlation matrix are left out: ArviZ reports the number of draws as their ESS).

Usage::

    python benchmarks/bench_scale.py --quick        # small grid (N <= 1e5), a few minutes
    python benchmarks/bench_scale.py                # the full grid up to N = 1e7 (about 20-30 minutes)
    python benchmarks/bench_scale.py --engines reml # likelihood only (keeps the table's Bayes rows)

Writes ``benchmarks/results/scale{,_quick}.csv`` / ``.md`` and a log-log plot ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

QUICK = {
    "reml": [(1e4, 1e2), (1e5, 1e2), (1e5, 1e3)],
    "bayes": [(1e4, 1e2), (1e5, 1e3)],
    "reml-nested": [(1e5, 1e3)],
    "reml-crossed": [(1e4, 1e2)],
    "reml-dask": [(1e5, 1e3)],
}
FULL = {
    "reml": [(1e4, 1e2), (1e5, 1e2), (1e6, 1e2), (1e7, 1e2), (1e5, 1e3), (1e6, 1e3), (1e6, 1e4), (1e7, 1e4),
             (1e6, 1e5), (1e7, 1e5)],
    "bayes": [(1e4, 1e2), (1e5, 1e3), (1e6, 1e3), (1e6, 1e4), (1e7, 1e4)],
    "reml-nested": [(1e6, 1e4)],
    "bayes-nested": [(1e5, 1e3)],
    "reml-crossed": [(1e5, 1e3)],
    "bayes-crossed": [(1e5, 1e3)],
    "reml-dask": [(1e6, 1e3), (1e7, 1e4)],
}

CELL = textwrap.dedent("""
    import json, resource, sys, time, warnings
    warnings.simplefilter("ignore")
    import numpy as np, pandas as pd
    import bayeshlm as bh

    engine, N, J, draws, chains, parquet = {args!r}

    def simulate(N, J, seed=1):
        rng = np.random.default_rng(seed)
        g = rng.integers(0, J, size=N)
        x = rng.standard_normal(N)
        u = rng.multivariate_normal([0, 0], [[1.0, 0.3], [0.3, 0.5]], size=J)
        w = rng.standard_normal(J)
        y = 10 + 2 * x + w[g] + u[g, 0] + u[g, 1] * x + 2 * rng.standard_normal(N)
        frame = pd.DataFrame({{"y": y, "x": x, "w": w[g], "g": g}})
        if engine.endswith("nested"):  # J classes in J/10 schools, school effects with variance 0.5
            school = g % max(J // 10, 2)
            frame["school"] = school
            frame["y"] += np.sqrt(0.5) * rng.standard_normal(school.max() + 1)[school]
        if engine.endswith("crossed"):  # a second factor crossed with g, e.g. neighbourhoods
            h = rng.integers(0, max(J // 10, 2), size=N)
            frame["h"] = h
            frame["y"] += rng.standard_normal(h.max() + 1)[h]
        return frame

    def min_bulk_ess(fit):
        # smallest bulk ESS over beta, sigma, tau and correlations, leaving out constant entries (the unit
        # diagonal of a correlation matrix, whose ESS ArviZ reports as the number of draws)
        import arviz as az
        post = fit.posterior["posterior"].to_dataset()
        names = [v for v in post.data_vars if v in ("beta", "sigma") or v.startswith(("tau_", "corr_"))]
        ess = az.ess(fit.posterior, var_names=names, method="bulk")
        varying = [ess[v].values[post[v].std(("chain", "draw")).values > 0] for v in names]
        return float(min(v.min() for v in varying if v.size))

    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    formula = {{"nested": "y ~ x + w + (x | g) + (1 | school)", "crossed": "y ~ x + w + (x | g) + (1 | h)"}}.get(
        engine.rsplit("-", 1)[-1], "y ~ x + w + (x | g)")
    if engine == "write-parquet":
        import dask.dataframe as dd
        dd.from_pandas(simulate(N, J), npartitions=max(int(N // 1_000_000), 2)).to_parquet(parquet)
        print(json.dumps({{}}))
        sys.exit()
    if engine == "reml-dask":
        import dask
        import dask.dataframe as dd
        dask.config.set(scheduler="threads", num_workers=2)
        data, data_mb = dd.read_parquet(parquet), rss_mb()
    else:
        data = simulate(N, J)
        data_mb = rss_mb()
    out = {{"data_mb": data_mb}}
    start = time.perf_counter()
    model = bh.HLM(formula, data)
    out["design_s"] = time.perf_counter() - start
    if engine.startswith("reml"):
        start = time.perf_counter()
        design = model.design
        if design.chain:  # the pass over the rows for the sufficient statistics (kept by the design)
            design.chain_crossproducts(design.chain)
        out["stats_s"] = time.perf_counter() - start
        start = time.perf_counter()
        fit = model.fit("reml")
        out["fit_s"] = time.perf_counter() - start
        out["converged"] = bool(fit.converged)
        out["tau00"] = float(fit.tau["g"].iloc[0, 0])
    else:
        start = time.perf_counter()
        fit = model.fit("bayes", draws=draws, tune=draws, chains=chains, random_seed=1)
        total = time.perf_counter() - start
        out["compile_s"] = fit.sampler["compile_seconds"]
        out["sample_s"] = fit.sampler["sampling_seconds"]
        out["post_s"] = total - out["compile_s"] - out["sample_s"]
        out["min_ess"] = min_bulk_ess(fit)
        out["ess_per_s"] = out["min_ess"] / out["sample_s"]
        out["divergences"] = int(fit.diagnostics["divergences"])
        out["route"] = fit.sampler["route"]
        out["log_density"] = fit.sampler["log_density"]
        out["tau00"] = float(fit.tau["g"].iloc[0, 0])
    out["peak_mb"] = rss_mb()
    print(json.dumps(out))
""")


def run_cell(engine: str, N: float, J: float, draws: int, chains: int, parquet: str | None = None) -> dict:
    code = CELL.format(args=(engine, int(N), int(J), draws, chains, parquet))
    env = dict(os.environ)
    env.setdefault("PYTENSOR_FLAGS", "base_compiledir=" + str(Path(tempfile.gettempdir()) / "pt_scale"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"}
    return json.loads(lines[-1])


def run_grid(grid: dict, draws: int, chains: int, engines: list[str]) -> list[dict]:
    rows = []
    for engine, cells in grid.items():
        if engine.split("-")[0] not in engines:
            continue
        for N, J in cells:
            with tempfile.TemporaryDirectory() as tmp:
                parquet = str(Path(tmp) / "data.parquet")
                if engine == "reml-dask":
                    run_cell("write-parquet", N, J, draws, chains, parquet)
                row = {"engine": engine, "N": int(N), "J": int(J), **run_cell(engine, N, J, draws, chains, parquet)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def write_table(rows: list[dict], stem: Path) -> None:
    import pandas as pd

    table = pd.DataFrame(rows)
    table.to_csv(stem.with_suffix(".csv"), index=False)
    columns = [c for c in ["engine", "N", "J", "design_s", "stats_s", "fit_s", "compile_s", "sample_s", "post_s",
                           "min_ess", "ess_per_s", "divergences", "data_mb", "peak_mb", "error"] if c in table.columns]
    shown = table[columns].copy()
    for c in shown.columns:
        if shown[c].dtype == float:
            shown[c] = shown[c].map(lambda v: "" if v != v else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) if v == v else "" for v in row) + " |" for row in shown.to_numpy()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], stem: Path) -> None:
    """Two log-log panels: seconds against N (at J = 1e2, 1e3 and 1e4) and against J (at N = 1e6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    table = pd.DataFrame(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    parts = [("reml", "design_s", "design build", "-", "C0"), ("reml", "stats_s", "sufficient statistics", "-", "C1"),
             ("reml", "fit_s", "REML fit", "-", "C2"), ("bayes", "sample_s", "Bayes sampling", "--", "C3"),
             ("bayes", "compile_s", "Bayes compile", ":", "C4")]
    for J, marker in [(100, "o"), (1000, "^"), (10_000, "s")]:
        for engine, column, label, style, color in parts:
            sub = table[(table.engine == engine) & (table.J == J)].sort_values("N")
            if column in sub and sub[column].notna().sum() > 1:
                left.plot(sub.N, sub[column], style, color=color, marker=marker, label=f"{label}, J={J:g}")
    sub = table[(table.N == 1_000_000)]
    for engine, column, label, style, color in parts:
        part = sub[sub.engine == engine].sort_values("J")
        if column in part and part[column].notna().sum() > 1:
            right.plot(part.J, part[column], style, color=color, marker="o", label=label)
    for ax, xlabel, title in [(left, "rows N", "cost against N"), (right, "groups J", "cost against J (N = 1e6)")]:
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="seconds", title=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2 if ax is left else 1, loc="lower right" if ax is left else "best")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small grid (N <= 1e5)")
    parser.add_argument("--engines", nargs="+", default=["reml", "bayes"], choices=["reml", "bayes"])
    parser.add_argument("--draws", type=int, default=1000, help="draws and tuning steps per chain")
    parser.add_argument("--chains", type=int, default=4)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / ("scale_quick" if args.quick else "scale")
    kept = []  # rows of engines not rerun now are kept from the previous table
    if stem.with_suffix(".csv").exists():
        import pandas as pd

        previous = pd.read_csv(stem.with_suffix(".csv")).to_dict("records")
        kept = [r for r in previous if r["engine"].split("-")[0] not in args.engines]
    rows = kept + run_grid(QUICK if args.quick else FULL, args.draws, args.chains, args.engines)
    write_table(rows, stem)
    plot(rows, stem)
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
