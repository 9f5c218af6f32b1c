"""Seeded parametric bootstrap of a REML / ML fit (lme4's ``bootMer(type="parametric")``; Davison & Hinkley
1997, ch. 2).

Replicate b draws new outcomes from the fitted model, y* = X gamma-hat + sum_f Z_f u*_f + e*, with u*_fj ~ N(0,
T-hat_f) for every group of every grouping factor and e* ~ N(0, sigma-hat^2), refits by the fit's own criterion
starting at its estimates (theta-hat), and records ``statistic(refit)``. Intervals are percentiles of the
replicates. Replicate b takes its random numbers from the b-th child of ``numpy.random.SeedSequence(seed)``,
so the same seed gives the same replicates however many workers share the work. Workers are processes
(forked, so the statistic need not be picklable): a refit is many small NumPy / SciPy calls that hold the
GIL, so threads do not run them in parallel (100 HS&B refits: 4.4 s in one process, 5.3 s on two threads).
Measured on 2 cores shared with other jobs (load 10): 1,000 HS&B refits (intercepts-and-slopes model) in 57 s
with 2 workers, 65 s with 1; an unloaded refit takes about 31 ms.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import OptionError


def default_statistic(fit) -> pd.Series:
    """Every fixed effect and variance-component parameter, keyed as the rows of ``fit.confint()``:
    (factor, term, term2, parameter) with parameter 'coefficient', 'sd', 'corr', 'sigma' (lme4's scale) and
    'variance', 'covariance', 'sigma2'."""
    keys, values = _default_values(fit)
    return pd.Series(values, index=pd.MultiIndex.from_tuples(keys, names=["factor", "term", "term2", "parameter"]))


def _default_values(fit) -> tuple[list[tuple], np.ndarray]:
    """The keys and values of :func:`default_statistic` without building tables (``fit.gamma`` comes from the
    factorisation; ``fixed_effects`` would also compute SEs, tests and the sandwich: a third of a refit's time)."""
    gamma = fit.gamma
    keys = [("fixed", name, "", "coefficient") for name in fit.design.fixed_names]
    values = list(gamma)
    variance_keys, variances = [], []
    for f in fit.design.factors:
        T = fit.tau[f.name].to_numpy(dtype=float)  # rows and columns in f.coef_names order
        for block in f.blocks:
            for i, a in enumerate(block):
                name_a = f.coef_names[a]
                keys.append((f.name, name_a, "", "sd"))
                values.append(np.sqrt(max(T[a, a], 0.0)))
                variance_keys.append((f.name, name_a, "", "variance"))
                variances.append(T[a, a])
                for b in block[i + 1:]:
                    denominator = np.sqrt(T[a, a] * T[b, b])
                    keys.append((f.name, name_a, f.coef_names[b], "corr"))
                    values.append(T[a, b] / denominator if denominator > 0 else np.nan)
                    variance_keys.append((f.name, name_a, f.coef_names[b], "covariance"))
                    variances.append(T[a, b])
    keys += [("Residual", "", "", "sigma")] + variance_keys + [("Residual", "", "", "sigma2")]
    values += [np.sqrt(fit.sigma2)] + variances + [fit.sigma2]
    return keys, np.array(values, dtype=float)


@dataclass(frozen=True)
class BootstrapResult:
    """``replicates``: one row per replicate (NaN where the refit failed), one column per statistic;
    ``estimate``: the statistic of the original fit; ``seed``, ``seconds``, ``workers``."""

    replicates: pd.DataFrame
    estimate: pd.Series
    seed: int | None
    seconds: float
    workers: int

    @property
    def n_failed(self) -> int:
        """Replicates whose refit raised an error or did not converge."""
        return int(self.replicates.isna().all(axis=1).sum())

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """estimate, bootstrap SE (SD of the replicates), bias (replicate mean - estimate) and the percentile
        interval lower / upper at ``level``, per statistic."""
        _check_level(level)
        tail = 100 * (1 - level) / 2
        lower, upper = np.nanpercentile(self.replicates.to_numpy(), [tail, 100 - tail], axis=0)
        return pd.DataFrame({"estimate": self.estimate.to_numpy(), "se": self.replicates.std(ddof=1).to_numpy(),
                             "bias": self.replicates.mean().to_numpy() - self.estimate.to_numpy(),
                             "lower": lower, "upper": upper}, index=self.estimate.index)


def _check_level(level) -> None:
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
        raise OptionError(f"level={level!r}: give the interval's coverage as a number between 0 and 1 (e.g. 0.95).")


def parametric_bootstrap(fit, n_boot: int = 1000, statistic: Callable | None = None, random_seed: int | None = None,
                         workers: int | None = None, progress: bool = False) -> BootstrapResult:
    """Refit ``fit`` to ``n_boot`` data sets simulated from it (module docstring) and collect ``statistic``.

    ``statistic(refit)`` returns a number, a sequence or a pandas Series (default: :func:`default_statistic`).
    ``workers``: processes to share the refits (default: the CPUs available, at most ``n_boot``; 1 runs them
    here). ``progress=True`` writes a progress line to stderr. Summarise with ``.summary(level)``.
    """
    if fit.method not in ("reml", "ml"):
        raise OptionError(f"The parametric bootstrap refits by REML / ML; this is a {fit.method!r} fit, whose "
                          "posterior draws already give intervals for any function of the parameters.")
    design = fit.design
    if design.residual is not None or design.known_variance is not None or not design.rows_available:
        raise OptionError(
            "The parametric bootstrap simulates rows from one level-1 variance sigma^2 with independent rows and "
            "needs the design's rows; this fit has a level-1 error structure, known variances or no rows "
            "(Dask input). Use confint(method='profile') or 'wald' instead.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 2:
        raise OptionError(f"n_boot={n_boot!r}: give the number of bootstrap refits as a whole number >= 2 "
                          "(1,000 or more for 95% percentile intervals).")
    if random_seed is not None and (isinstance(random_seed, bool) or not isinstance(random_seed, int | np.integer)
                                    or random_seed < 0):
        raise OptionError(f"random_seed={random_seed!r}: give a whole number >= 0, or None for a fresh seed.")
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers is None:
        workers = available
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise OptionError(f"workers={workers!r}: give the number of processes as a whole number >= 1.")
    workers = int(min(workers, n_boot))
    if workers > 1 and "fork" not in _start_methods():  # Windows: no fork, so the refits run here
        workers = 1
    estimate = default_statistic(fit) if statistic is None else _as_series(statistic(fit))
    seeds = np.random.SeedSequence(random_seed).spawn(int(n_boot))
    job = _Job(fit, _simulator(fit), statistic, len(estimate))
    started = time.perf_counter()
    if workers == 1:
        rows = []
        for b, seed in enumerate(seeds):
            rows.append(job.replicate(seed))
            _report(progress, b + 1, n_boot, started)
    else:
        rows = _in_processes(job, seeds, workers, progress, started)
    seconds = time.perf_counter() - started
    if progress:
        sys.stderr.write("\n")
    replicates = pd.DataFrame(np.array(rows), columns=estimate.index)
    return BootstrapResult(replicates, estimate, None if random_seed is None else int(random_seed), seconds, workers)


def _as_series(value) -> pd.Series:
    if isinstance(value, pd.Series):
        return value.astype(float)
    return pd.Series(np.atleast_1d(np.asarray(value, dtype=float)).ravel())


@dataclass(frozen=True)
class _Simulator:
    """Draws y* = X gamma + sum_f Z_f u*_f + e* (module docstring)."""

    mean: np.ndarray  # X gamma-hat
    factors: tuple  # (codes, Z, n_groups, root of T-hat)
    sigma: float

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        y = self.mean + self.sigma * rng.standard_normal(len(self.mean))
        for codes, Z, n_groups, root in self.factors:
            u = rng.standard_normal((n_groups, root.shape[1])) @ root.T
            y += np.einsum("nq,nq->n", Z, u[codes])
        return y


def _simulator(fit) -> _Simulator:
    design = fit.design
    gamma = fit.gamma
    factors = []
    for f in design.factors:
        T = fit.tau[f.name].reindex(index=list(f.coef_names), columns=list(f.coef_names)).to_numpy(dtype=float)
        values, vectors = np.linalg.eigh(T)  # a root that also works for a singular T (boundary fits)
        factors.append((f.codes, f.Z, f.n_groups, vectors * np.sqrt(np.clip(values, 0.0, None))))
    return _Simulator(design.X @ gamma, tuple(factors), float(np.sqrt(fit.sigma2)))


@dataclass(frozen=True)
class _Job:
    fit: object  # refitted to each simulated outcome by its own ``refit(y)``
    simulator: _Simulator
    statistic: Callable | None  # None: default_statistic
    size: int

    def replicate(self, seed: np.random.SeedSequence) -> np.ndarray:
        y = self.simulator.draw(np.random.default_rng(seed))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                refit = self.fit.refit(y)
            if not refit.converged:
                return np.full(self.size, np.nan)
            if self.statistic is None:
                values = _default_values(refit)[1]
            else:
                values = _as_series(self.statistic(refit)).to_numpy()
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            return np.full(self.size, np.nan)
        return values if len(values) == self.size else np.full(self.size, np.nan)


_JOB: _Job | None = None  # set before forking: the workers inherit it instead of unpickling it


def _run_chunk(seeds: list) -> list[np.ndarray]:
    return [_JOB.replicate(seed) for seed in seeds]


def _in_processes(job: _Job, seeds: list, workers: int, progress: bool, started: float) -> list[np.ndarray]:
    """The replicates in ``workers`` forked processes, in chunks, in order. A ``multiprocessing.Pool`` forks its
    workers before it starts its helper threads (a ``ProcessPoolExecutor`` forks from a threaded process)."""
    import multiprocessing

    global _JOB
    chunk = max(1, min(25, len(seeds) // (4 * workers)))
    pieces = [seeds[i:i + chunk] for i in range(0, len(seeds), chunk)]
    _JOB = job
    try:
        with warnings.catch_warnings():
            if threading.active_count() == 1:
                # Python 3.12 warns when forking a process with several OS threads; with no Python threads
                # running those are the BLAS library's workers, which reinitialise in a forked child.
                warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
            pool = multiprocessing.get_context("fork").Pool(workers)
        with pool:
            rows = []
            for result in pool.imap(_run_chunk, pieces):
                rows.extend(result)
                _report(progress, len(rows), len(seeds), started)
    finally:
        _JOB = None
    return rows


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def _report(progress: bool, done: int, total: int, started: float) -> None:
    if progress:
        sys.stderr.write(f"\rbootstrap: {done}/{total} refits, {time.perf_counter() - started:.1f} s")
        sys.stderr.flush()
