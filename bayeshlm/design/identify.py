"""Refuse variance components the data cannot identify.

Each case below used to be fitted without a word, the optimiser returning its start value or an arbitrary split
of the variance as if it were an estimate:

* two grouping factors that put the rows in the same groups (``(1 | g) + (1 | h)`` with h a relabelling of g, or
  ``(1 | g/g)``) and share a random coefficient: any split of its variance between them fits equally well;
* random-effect columns collinear over all rows (a constant column beside the intercept, ``(c | g)``), or a
  random slope on a variable constant within every group (no group has a slope of its own on it);
* random coefficients absorbed by the fixed effects (``y ~ C(g) + (1 | g)``: the group dummies take every
  group's deviation, leaving none to the variance);
* an outcome that is an exact function of the fixed effects and each group's random coefficients: every
  within-group residual is 0, so the level-1 variance is 0.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError, FormulaError
from .design import Design, GroupingFactor, group_sums

ABSORBED_TOL = 1e-9  # share of a group's random-effect column left after projecting it on the fixed effects
EXACT_FIT_TOL = 1e-9  # size of the within-group residuals relative to the spread of the outcome
SAMPLE_ROWS = 20_000  # the exact-fit check first tries the groups of this many leading rows


def check_identifiable(design: Design, R_fixed: np.ndarray) -> None:
    """Raise a FormulaError or DataError saying which variance cannot be estimated and what to do.

    ``R_fixed`` is the triangular factor of X (X = QR), already computed by the rank check of X.
    """
    _check_identical_groupings(design.factors)
    for f in design.factors:
        _check_random_columns(f)
        _check_absorbed(design, f, R_fixed)
    if design.known_variance is None:
        for f in design.chain[:1] or design.factors:  # nested: the innermost groups leave the fewest residuals
            _check_exact_fit(design, f)


def r_factor(X: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """The p x p triangular factor R of X = QR, by QR of row blocks stacked under the running R (TSQR).

    R has the singular values of X, so the rank check (build.check_rank) matches an SVD of X, at O(N p^2) cost and one
    block of extra memory instead of a copy of X. Each block's R is ``numpy.linalg.qr(block, mode="r")``, from
    the gufunc that function calls (LAPACK's geqrf on the block in place), without its wrapper's ~20 us."""
    R = np.zeros((0, X.shape[1]))
    for start in range(0, X.shape[0], chunk):
        R = _upper_factor(np.vstack([R, X[start:start + chunk]]).astype(np.float64, copy=False))
    return R


def _public_upper_factor(block: np.ndarray) -> np.ndarray:
    return np.linalg.qr(block, mode="r")


try:  # the gufunc numpy.linalg.qr calls; private to NumPy, so if a release moves it numpy.linalg.qr does the work
    from numpy.linalg._umath_linalg import qr_r_raw

    def _upper_factor(block: np.ndarray) -> np.ndarray:
        """R of ``block`` = QR (overwritten: LAPACK's geqrf leaves R in its upper triangle), as
        ``numpy.linalg.qr(block, mode="r")``."""
        with np.errstate(all="ignore"):  # as numpy.linalg.qr, which refuses only invalid arguments
            qr_r_raw(block, signature="d->d")
        return np.triu(block[:min(block.shape)])
except ImportError:  # pragma: no cover - exercised by tests/test_likelihood_fixed_part.py through monkeypatch
    _upper_factor = _public_upper_factor


def _check_identical_groupings(factors: tuple[GroupingFactor, ...]) -> None:
    for i, a in enumerate(factors):
        for b in factors[i + 1:]:
            shared = [c for c in a.coef_names if c in b.coef_names]
            if not shared or a.n_groups != b.n_groups:
                continue
            pairs = np.unique(a.codes * b.n_groups + b.codes)
            if len(pairs) == a.n_groups:
                raise identical_groupings(a.name, b.name, a.n_groups, shared)


def identical_groupings(a: str, b: str, n_groups: int, shared: list[str] | None = None) -> FormulaError:
    """The error for two factors that put the rows in the same groups (``shared``: their common coefficients,
    when known; per-group sums (Dask input) do not name them)."""
    what = f"both have random {', '.join(shared)}" if shared else "a variance shared by the two"
    return FormulaError(
        f"The grouping factors {a!r} and {b!r} put the rows in the same {n_groups} groups, and {what}: the "
        "variance could be split between them in any proportion with the same fit, so neither can be estimated. "
        "Keep only one of the two terms (in '(1 | g/g)' the inner factor repeats the outer one).")


def check_constant_random_columns(factor: str, coef_names: tuple[str, ...], ptp: np.ndarray) -> None:
    """Refuse a random slope on a column constant over all analysed rows (range ``ptp`` 0) beside the random
    intercept: it duplicates the intercept."""
    if "(Intercept)" not in coef_names:
        return
    constant = [c for c, r in zip(coef_names, ptp) if c != "(Intercept)" and r == 0]
    if constant:
        raise FormulaError(
            f"The random-effect column(s) {constant} of {factor!r} are constant over all analysed rows, so a random "
            "slope on them duplicates the random intercept and their variances and covariances cannot be "
            f"estimated. Remove them from the random term '(... | {factor})'.")


def _check_random_columns(f: GroupingFactor) -> None:
    """Collinear random-effect columns over all rows; a slope on a variable constant within every group."""
    columns = np.asfortranarray(f.Z)  # NumPy reduces a tall C-ordered array along axis 0 several times slower
    check_constant_random_columns(f.name, f.coef_names, columns.max(axis=0) - columns.min(axis=0))
    if f.n_coef > 1:
        R = r_factor(f.Z / np.maximum(np.abs(columns).max(axis=0), 1e-300))
        s = np.linalg.svd(R, compute_uv=False)
        rank = int(np.sum(s > s.max() * max(f.Z.shape) * np.finfo(float).eps))
        if rank < f.n_coef:
            raise FormulaError(
                f"The random-effect columns of {f.name!r} ({', '.join(f.coef_names)}) are collinear over all rows "
                f"(rank {rank} < {f.n_coef}: one is a linear function of the others), so their variances "
                "and covariances cannot be estimated separately. Remove the redundant variable from the random "
                f"term '(... | {f.name})'.")
    if "(Intercept)" not in f.coef_names:
        return
    order = np.argsort(f.codes, kind="stable")
    sorted_codes = f.codes[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_codes[1:] != sorted_codes[:-1]]))  # each group's first row
    Z = f.Z[order]
    spread = np.maximum.reduceat(Z, starts, axis=0) - np.minimum.reduceat(Z, starts, axis=0)  # per group
    check_slopes_vary_within(f.name, f.coef_names, spread)


def check_slopes_vary_within(factor: str, coef_names: tuple[str, ...], spread: np.ndarray) -> None:
    """Refuse a random slope beside the random intercept on a column whose range within every group
    (``spread``, groups x coefficients) is 0."""
    if "(Intercept)" not in coef_names:
        return
    flat = [c for k, c in enumerate(coef_names) if c != "(Intercept)" and np.all(spread[:, k] == 0)]
    if flat:
        raise FormulaError(
            f"{', '.join(map(repr, flat))} does not vary within any group of {factor!r}, so no group has a slope "
            f"of its own on it: its random slope over {factor!r} only rescales the random intercept, and its "
            f"variance cannot be estimated as a slope variance. Keep it as a fixed (level-2) predictor, e.g. "
            f"'~ {flat[0]} + (1 | {factor})'.")


def _check_absorbed(design: Design, f: GroupingFactor, R_fixed: np.ndarray) -> None:
    if design.n_fixed < f.n_groups:
        return
    XtZ = group_sums(f.codes, design.X, f.Z, f.n_groups)  # (J, p, q)
    ZtZ = np.stack([np.bincount(f.codes, weights=f.Z[:, k] ** 2, minlength=f.n_groups)
                    for k in range(f.n_coef)], axis=1)  # (J, q)
    check_absorbed(f.name, f.coef_names, XtZ, ZtZ, R_fixed)


def check_absorbed(factor: str, coef_names: tuple[str, ...], XtZ: np.ndarray, ZtZ: np.ndarray,
                   R_fixed: np.ndarray) -> None:
    """Refuse a random coefficient whose column on every group's rows lies in the span of the fixed effects.

    For v = Z_k on the rows of group j (0 elsewhere), the part of v outside the span of X has squared length
    |v|^2 - |Q'v|^2 with Q'v = R^-T X'v (X = QR); X'v (``XtZ``, J x p x q) and |v|^2 (``ZtZ``, J x q) are
    per-group sums over the rows, so per-group sufficient statistics (Dask input) suffice. The J columns of one
    coefficient are independent, so X needs at least J columns to absorb them.
    """
    n_groups, p, q = XtZ.shape
    if p < n_groups:
        return
    projected = np.linalg.solve(R_fixed.T, XtZ.transpose(1, 0, 2).reshape(p, -1))
    inside = (projected ** 2).sum(axis=0).reshape(n_groups, q)
    present = ZtZ > 0
    left = np.where(present, ZtZ - inside, 0.0)
    for k, name in enumerate(coef_names):
        if present[:, k].any() and np.all(left[present[:, k], k] <= ABSORBED_TOL * ZtZ[present[:, k], k]):
            what = "intercept" if name == "(Intercept)" else f"slope on {name!r}"
            raise FormulaError(
                f"The random {what} of {factor!r} is absorbed by the fixed effects: on the rows of every "
                f"{factor!r} group its column is a combination of fixed-effect columns (e.g. C({factor}) dummies "
                f"or their interactions), so the fixed part takes each group's deviation and its variance cannot "
                f"be estimated (a fit would report the optimiser's start value). Remove the group dummies from "
                f"the fixed part to model the groups as random, or drop '(... | {factor})' to keep them fixed.")


def _check_exact_fit(design: Design, f: GroupingFactor) -> None:
    """Refuse an outcome reproduced exactly by the fixed effects plus each group's random coefficients.

    An exact fit of all rows is an exact fit of any set of whole groups, so the groups of the first rows are
    tried first: residuals there settle the question at a fraction of the cost.
    """
    if design.n_obs > SAMPLE_ROWS:
        rows = np.flatnonzero(np.isin(f.codes, np.unique(f.codes[:SAMPLE_ROWS])))
        if len(rows) < design.n_obs and _exact_within(design.X[rows], design.y[rows], f.Z[rows],
                                                      f.codes[rows]) is False:
            return
    if _exact_within(design.X, design.y, f.Z, f.codes):
        raise exact_fit(design.outcome_name, f"the random coefficients of {f.name!r}: every residual within a "
                                             "group is 0 (to rounding), so")


def exact_fit(outcome: str, reproduced_by: str) -> DataError:
    """The error for an outcome that the fixed effects and ``reproduced_by`` fit exactly (level-1 variance 0)."""
    return DataError(
        f"The outcome {outcome!r} is an exact function of the fixed effects and {reproduced_by} the level-1 "
        "variance is 0 and the variance components cannot be estimated. Check that the outcome is not computed from "
        "the predictors (or a predictor from the outcome); with noise-free data there is nothing to model.")


def _exact_within(X: np.ndarray, y: np.ndarray, Z: np.ndarray, codes: np.ndarray) -> bool | None:
    """Whether y - X beta - Z_j b_j can be 0 on every row (None: too few rows to tell).

    Both y and the columns of X are replaced by their residuals from a least-squares fit on Z within each group;
    the last diagonal entry of the R factor of [X y] so reduced is the length of what is left of y.
    """
    sizes = np.bincount(codes)
    if not sizes.all():  # a subset of the groups: number them 0..J-1
        codes = np.unique(codes, return_inverse=True)[1]
        sizes = np.bincount(codes)
    if int(np.maximum(sizes - Z.shape[1], 0).sum()) - X.shape[1] <= 0:
        return None
    V = np.column_stack([X, y])
    gram = group_sums(codes, Z, Z, len(sizes))  # symmetric positive semi-definite: pinv by eigh, not SVD
    coef = np.linalg.pinv(gram, hermitian=True) @ group_sums(codes, Z, V, len(sizes))
    within = V - np.einsum("nk,nkv->nv", Z, coef[codes])  # row i: V_i - Z_i b_(group of i)
    left = abs(r_factor(within)[-1, -1])
    return bool(left <= EXACT_FIT_TOL * float(np.linalg.norm(y - y.mean())))
