"""Time REML fits, formula to estimates, of bayeshlm against statsmodels MixedLM and the PyPI package mixedlm.

    .venv/bin/python benchmarks/bench_likelihood.py [--repeats 5] [--quick] [--case lecture_crossed ...]
    .venv/bin/python benchmarks/bench_likelihood.py --structured    (level-1 error structures beside nlme)

Each cell is the median wall-clock time of ``--repeats`` fits after one untimed warm-up; bayeshlm and mixedlm
are timed in alternation (one fit of each per round) and also in CPU seconds of this process (every thread's),
the steadier comparison on a shared machine,
and the table is written to ``--output`` (CSV). The fair setting is ``--blas-threads 1``: bayeshlm runs its fit
on one BLAS thread whatever the setting, while mixedlm's many small products slow down several times on
several threads of a busy machine, so the default setting flatters this engine. statsmodels runs
with ``method="lbfgs"`` (its default silently fails to converge on random-slope models) and only where it
finishes in reasonable time; egsingle's three-level model is not expressible in MixedLM (no random slopes at
two nested levels), so it is skipped there. lme4 timings are read from benchmarks/reference_timings_lme4.json
when present (written by tests/reference/make_reference.R on the same machine kind). Peak memory of the
bayeshlm fits is the process's maximum resident set size after they ran (Linux ru_maxrss). ``load_avg`` is the
machine's 1-minute load average over each row's timing (mean of its start and end): on a shared machine, other
jobs' load slows the Python-heavy parts of a fit more than a compiled package.

``--structured`` times the level-1 error structures (AR(1), CAR(1), varIdent, log-linear variance) on nlme's
Orthodont, BodyWeight and Ovary and on HS&B, beside nlme::lme's times read from
benchmarks/reference_timings_nlme.json, which ``Rscript benchmarks/nlme_timing.R`` writes in the same run
(it also writes the nlme data, benchmarks/nlme_data/*.csv, so both fit the same rows; HS&B is the bundled copy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import bayeshlm as bh

HERE = Path(__file__).parent


def lecture_like(seed: int = 0) -> pd.DataFrame:
    """73,000 ratings: 3,000 students x 1,100 instructors (each in one of 28 departments), as lme4's InstEval."""
    rng = np.random.default_rng(seed)
    n, S, D, K = 73_000, 3_000, 1_100, 28
    s = rng.integers(0, S, n)
    d = rng.integers(0, D, n)
    dept_of = rng.integers(0, K, D)
    service = rng.integers(0, 2, n)
    y = (3 + 0.1 * service + 0.3 * rng.normal(size=S)[s] + 0.5 * rng.normal(size=D)[d]
         + 0.1 * rng.normal(size=K)[dept_of[d]] + rng.normal(size=n))
    return pd.DataFrame({"y": y, "service": service, "s": s, "d": d, "dept": dept_of[d]})


def big_nested(seed: int = 0) -> pd.DataFrame:
    """1,000,000 rows in 10,000 groups with a random intercept and slope."""
    rng = np.random.default_rng(seed)
    n, J = 1_000_000, 10_000
    g = rng.integers(0, J, n)
    x = rng.normal(size=n)
    u = rng.normal(size=(J, 2)) @ np.array([[1.0, 0.0], [0.3, 0.5]])
    y = 2 + 0.5 * x + u[g, 0] + u[g, 1] * x + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def cases():
    hsb = bh.datasets.load("hsb")
    eg = bh.datasets.load("egsingle")
    scots = bh.datasets.load("scotssec")
    sleep = bh.datasets.load("sleepstudy")
    return [
        ("sleepstudy_reml", "sleepstudy (lme4)", sleep, "Reaction ~ Days + (Days | Subject)",
         dict(formula="Reaction ~ Days", groups="Subject", re_formula="~Days")),
        ("hsb_full_reml", "HS&B full (Table 4.5)", hsb, "mathach ~ meanses*cses + sector*cses + (cses | school)",
         dict(formula="mathach ~ meanses*cses + sector*cses", groups="school", re_formula="~cses")),
        ("egsingle_uncond_reml", "egsingle 3-level growth", eg, "math ~ year + (year | childid) + (year | schoolid)",
         None),
        ("scotssec_reml", "ScotsSec crossed", scots, "attain ~ verbal + sex + (1 | primary) + (1 | second)",
         "crossed"),
        ("lecture_crossed", "crossed 73k (3000x1100x28)", lecture_like(),
         "y ~ service + (1 | s) + (1 | d) + (1 | dept)", None),
        ("nested_1e6", "nested 1e6 rows, 10k groups, slope", big_nested(), "y ~ x + (x | g)", None),
    ]


def structured_cases():
    """(key, formula, options, method) of the models of benchmarks/nlme_timing.R, in the same order."""
    return [
        ("orthodont_ar1", "orthodont", "distance ~ age + (age | Subject)",
         dict(correlation="ar1", time="occ"), "reml"),
        ("orthodont_varident", "orthodont", "distance ~ age * Sex + (1 | Subject)", dict(level1_variance="Sex"),
         "reml"),
        ("bodyweight_car1", "bodyweight", "weight ~ Time * C(Diet) + (Time | Rat)",
         dict(correlation="car1", time="Time"), "reml"),
        ("bodyweight_loglinear", "bodyweight", "weight ~ Time * C(Diet) + (Time | Rat)",
         dict(level1_variance="~ Time10"), "reml"),
        ("ovary_ar1", "ovary", "follicles ~ s + c + (1 | Mare)", dict(correlation="ar1", time="occ"), "reml"),
        ("hsb_varident", "hsb", "mathach ~ sector * cses + (cses | school)", dict(level1_variance="sector"),
         "ml"),
    ]


def structured(repeats: int) -> None:
    """Time the structured-error fits beside nlme (see the module docstring), printing rows as they finish.
    nlme is timed first in the same run when Rscript is on the PATH; otherwise the stored timings are read.
    Wall-clock and CPU seconds (this process's, R's user + system) are both medians of ``repeats`` fits; on a
    shared machine the CPU times are the steadier comparison."""
    if shutil.which("Rscript"):
        subprocess.run(["Rscript", "benchmarks/nlme_timing.R", str(repeats)], cwd=HERE.parent, check=True)
    reference = json.loads((HERE / "reference_timings_nlme.json").read_text())
    rows = []
    for key, dataset, formula, options, method in structured_cases():
        frame = bh.datasets.load("hsb") if dataset == "hsb" else pd.read_csv(HERE / "nlme_data" / f"{dataset}.csv")
        fit_once = lambda f=formula, d=frame, o=options, m=method: bh.HLM(f, d, **o).fit(m)  # noqa: E731
        wall, cpu = median_time(fit_once, repeats), median_time(fit_once, repeats, clock=time.process_time)
        fit = fit_once()
        nlme = reference[key]
        row = {"model": key, "bayeshlm_s": wall, "nlme_s": nlme["median_seconds"],
               "ratio": wall / nlme["median_seconds"], "bayeshlm_cpu_s": cpu, "nlme_cpu_s": nlme["median_cpu_seconds"],
               "cpu_ratio": cpu / nlme["median_cpu_seconds"], "evals": fit.n_evaluations,
               "loglik_minus_nlme": fit.loglik - nlme["loglik"]}
        rows.append(row)
        print(f"{key}: bayeshlm {wall:.4f} s (CPU {cpu:.4f}), nlme {nlme['median_seconds']:.4f} s (CPU "
              f"{nlme['median_cpu_seconds']:.4f}), ratio {row['ratio']:.2f} (CPU {row['cpu_ratio']:.2f}), "
              f"loglik - nlme's {row['loglik_minus_nlme']:.2g}", flush=True)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(pd.DataFrame(rows).set_index("model"))


def median_time(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def paired_times(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median wall-clock and CPU seconds of each of ``fns`` (name -> callable) over ``repeats`` rounds, after one
    untimed warm-up each; a round calls every function once in turn, so a change in the machine's load during
    the run falls on all of them alike."""
    for fn in fns.values():
        fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def statsmodels_fit(frame: pd.DataFrame, spec):
    import statsmodels.formula.api as smf

    if spec == "crossed":
        one = frame.assign(one=1)
        model = smf.mixedlm("attain ~ verbal + sex", one, groups="one", re_formula="0",
                            vc_formula={"primary": "0 + C(primary)", "second": "0 + C(second)"})
    else:
        model = smf.mixedlm(spec["formula"], frame, groups=frame[spec["groups"]], re_formula=spec["re_formula"])
    return lambda: model.fit(reml=True, method="lbfgs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="skip the two large synthetic designs")
    parser.add_argument("--case", nargs="+", metavar="KEY",
                        help="run only these cases (sleepstudy_reml, hsb_full_reml, egsingle_uncond_reml, "
                             "scotssec_reml, lecture_crossed, nested_1e6)")
    parser.add_argument("--structured", action="store_true", help="time level-1 error structures beside nlme")
    parser.add_argument("--output", type=Path, metavar="CSV", help="write the table to this CSV file")
    parser.add_argument("--no-statsmodels", action="store_true",
                        help="skip statsmodels (its fits take seconds each): many --repeats of the small models")
    parser.add_argument("--blas-threads", type=int, metavar="N",
                        help="limit BLAS to N threads for every package timed (default: the machine's setting); "
                             "mixedlm's many small products run several times faster on one thread of a busy machine")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.blas_threads, user_api="blas")
        print(f"BLAS limited to {args.blas_threads} thread(s) for every package.")
    if args.structured:
        structured(args.repeats)
        return
    lme4 = {}
    path = HERE / "reference_timings_lme4.json"
    if path.exists():
        lme4 = {k: v["default_control"]["median_seconds"] for k, v in json.loads(path.read_text()).items()
                if k != "_meta" and "default_control" in v}
    try:
        import mixedlm
    except ImportError:
        mixedlm = None
        print("mixedlm (PyPI) is not installed: its column is empty (pip install mixedlm).")
    try:
        import statsmodels  # noqa: F401
    except ImportError:
        statsmodels = None
        print("statsmodels is not installed: its column is empty (pip install statsmodels).")
    if args.no_statsmodels:
        statsmodels = None
    rows = []
    for key, label, frame, formula, sm_spec in cases():
        if args.quick and key in ("lecture_crossed", "nested_1e6") or args.case and key not in args.case:
            continue
        ours_fit = lambda f=formula, d=frame: bh.HLM(f, d).fit("reml")  # noqa: E731
        fns = {"bayeshlm": ours_fit}
        if mixedlm is not None:
            fns["mixedlm"] = lambda f=formula, d=frame: mixedlm.lmer(f, d, REML=True)  # noqa: E731
        load_before = os.getloadavg()[0]
        times = paired_times(fns, args.repeats)
        ours = times["bayeshlm"][0]
        fit = ours_fit()
        row = {"model": label, "rows": len(frame), "bayeshlm_s": ours, "bayeshlm_cpu_s": times["bayeshlm"][1],
               "evals": fit.n_evaluations, "criterion": fit.deviance,
               "load_avg": 0.5 * (load_before + os.getloadavg()[0])}  # the machine's 1-minute load, other jobs
        if mixedlm is not None:
            row["mixedlm_s"], row["mixedlm_cpu_s"] = times["mixedlm"]
            row["mixedlm_criterion"] = float(fns["mixedlm"]().REMLcrit())
        if sm_spec is not None and statsmodels is not None:
            row["statsmodels_lbfgs_s"] = median_time(statsmodels_fit(frame, sm_spec), max(1, args.repeats // 2))
        row["lme4_s"] = lme4.get(key, np.nan)
        rows.append(row)
        versus = (f", mixedlm {row['mixedlm_s']:.4f} s (ratio {ours / row['mixedlm_s']:.2f}; CPU "
                  f"{row['bayeshlm_cpu_s']:.4f} vs {row['mixedlm_cpu_s']:.4f} s, ratio "
                  f"{row['bayeshlm_cpu_s'] / row['mixedlm_cpu_s']:.2f})") if mixedlm else ""
        print(f"{label}: bayeshlm {ours:.4f} s{versus}", flush=True)
    table = pd.DataFrame(rows).set_index("model")
    if "mixedlm_s" in table:  # ours / theirs: at or below 1 is the target of issue 27
        table["bayeshlm/mixedlm"] = table["bayeshlm_s"] / table["mixedlm_s"]
        table["bayeshlm/mixedlm_cpu"] = table["bayeshlm_cpu_s"] / table["mixedlm_cpu_s"]
    for peer in ("mixedlm_s", "statsmodels_lbfgs_s", "lme4_s"):
        if peer in table:
            table[f"{peer[:-2]}/bayeshlm"] = table[peer] / table["bayeshlm_s"]
    table["blas_threads"] = args.blas_threads or "default"
    if args.output:
        table.to_csv(args.output)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(table)
    print(f"peak RSS of this process: {peak_mb:.0f} MB; statsmodels uses method='lbfgs'; "
          "lme4 = lmerControl() defaults from reference_timings_lme4.json (NaN: not timed there).")


if __name__ == "__main__":
    main()
