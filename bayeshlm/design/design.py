"""The Design: backend-free numbers describing one model on one data set.

Both engines read only this object. Group effects are represented by integer codes per row plus a small
dense matrix Z (rows x coefficients) per grouping factor -- never a dense rows x groups matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..level1 import Level1Errors, level1_errors
from ..spec import ModelSpec, ResidualStructure

try:  # the compiled one-pass group_sums (_group_sums.c), optional like every extension (setup.py)
    from . import _group_sums
except ImportError:  # pragma: no cover - installs without a C compiler
    _group_sums = None


@dataclass(frozen=True, eq=False)
class GroupingFactor:
    """One grouping factor: which group each row is in, and the random-effect columns it carries.

    ``blocks`` partitions the columns of ``Z`` into independent covariance blocks: one block holding all
    columns is an unstructured (correlated) T, one block per column is lme4's ``||`` (diagonal T).
    """

    name: str
    codes: np.ndarray  # (n,) int64 in 0..J-1
    levels: pd.Index  # (J,) group labels, sorted
    Z: np.ndarray  # (n, q) random-effect covariates
    coef_names: tuple[str, ...]
    blocks: tuple[tuple[int, ...], ...]

    @property
    def n_groups(self) -> int:
        return len(self.levels)

    @property
    def n_coef(self) -> int:
        return self.Z.shape[1]

    @property
    def correlated(self) -> bool:
        """True when T is unstructured (one block holding every coefficient)."""
        return len(self.blocks) == 1

    @property
    def group_sizes(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=self.n_groups)


@dataclass(frozen=True, eq=False)
class DroppedRows:
    """Rows of the input left out of the analysis because of missing values."""

    n_input: int
    positions: np.ndarray  # positions (0-based) in the input frame
    by_column: dict[str, int]  # missing count per column among the analysed variables

    @property
    def count(self) -> int:
        return len(self.positions)

    def __str__(self) -> str:
        if not self.count:
            return f"all {self.n_input} rows used (no missing values)"
        columns = ", ".join(f"{c} ({k})" for c, k in self.by_column.items() if k)
        return (f"{self.count} of {self.n_input} rows dropped for missing values in: {columns}; "
                f"{self.n_input - self.count} rows analysed")


@dataclass(frozen=True, eq=False)
class GroupCrossproducts:
    """Per-group sufficient statistics of a Gaussian model for one grouping factor.

    With weights w (1/V for known variances, else 1): ZtZ[j] = Z_j' W_j Z_j, ZtX[j] = Z_j' W_j X_j,
    Zty[j] = Z_j' W_j y_j, and the whole-sample XtX, Xty, yty. After this one pass over the rows, a nested
    model's likelihood costs O(J q^3) (R&B 2002, ch. 3; HLM's "MDM" file holds the same numbers).
    """

    n: np.ndarray  # (J,) rows per group
    ZtZ: np.ndarray  # (J, q, q)
    ZtX: np.ndarray  # (J, q, p)
    Zty: np.ndarray  # (J, q)
    XtX: np.ndarray  # (p, p)
    Xty: np.ndarray  # (p,)
    yty: float


@dataclass(frozen=True, eq=False)
class ChainCrossproducts:
    """Sufficient statistics of a chain of nested factors (innermost first), for the nested REML/ML solver.

    ``stats[l]`` (J_l, q_l, width): per group of level l, Z_l' W [Z_l, Z_l+1, ..., Z_top, X, y] summed over its
    rows; ``top`` = [X y]' W [X y]; ``parents[l]`` (J_l,) the group of level l + 1 holding each group of level l.
    """

    stats: list[np.ndarray]
    top: np.ndarray
    parents: list[np.ndarray]


@dataclass(frozen=True, eq=False)
class ColumnSummary:
    """Column moments the default priors read: mean and SD (ddof=1) of y; mean, SD (ddof=0), range and first
    value of each column of X; SD (ddof=0) and range of each column of every factor's Z."""

    y_mean: float
    y_sd: float
    X_mean: np.ndarray
    X_sd: np.ndarray
    X_ptp: np.ndarray
    X_first: np.ndarray
    Z_sd: dict[str, np.ndarray]
    Z_ptp: dict[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class ResidualDesign:
    """Numbers of a level-1 error structure (see :class:`~bayeshlm.spec.ResidualStructure`).

    ``strata`` codes each row's variance category (0 = the reference, the first level in natural order);
    ``C`` holds the log-linear variance predictors without intercept; ``time`` the occasion of each row, and
    ``unit`` the grouping factor within which errors are correlated (the innermost one).
    """

    structure: ResidualStructure
    strata: np.ndarray | None = None  # (n,) int codes
    strata_levels: pd.Index | None = None
    C: np.ndarray | None = None  # (n, m)
    C_names: tuple[str, ...] = ()
    time: np.ndarray | None = None  # (n,)
    unit: str | None = None

    @property
    def errors(self) -> Level1Errors:
        """The structure's variance function and correlation objects (:mod:`bayeshlm.level1`)."""
        return level1_errors(self.structure)


@dataclass(frozen=True, eq=False)
class ColumnCoding:
    """How the fit turned data columns into X and each factor's Z, kept so predictions for new data code their
    columns the same way: formulaic's model specs (categorical levels and contrasts included) and the grand
    means of the columns centred on them."""

    fixed: object  # formulaic ModelSpec of X
    random: dict[str, object]  # factor name -> formulaic ModelSpec of its Z
    grand_means: dict[str, float]  # column -> the mean it was centred on


@dataclass(frozen=True, eq=False)
class Design:
    """Outcome, fixed-effects matrix and grouping factors of one model, ready for either engine."""

    spec: ModelSpec
    y: np.ndarray  # (n,)
    X: np.ndarray  # (n, p)
    fixed_names: tuple[str, ...]
    fixed_terms: tuple[tuple[str, ...], ...]  # the spec term behind each column of X
    factors: tuple[GroupingFactor, ...]
    known_variance: np.ndarray | None  # (n,) sampling variances of V-known models
    row_labels: pd.Index  # index labels (in the input frame) of the analysed rows
    dropped: DroppedRows
    nesting: dict[str, str | None]  # factor -> the factor it is nested in (None: top level / crossed)
    term_levels: dict[str, int] = field(default_factory=dict)  # formula factor -> level it varies at
    residual: ResidualDesign | None = None  # level-1 error structure (None: independent, one sigma^2)
    coding: ColumnCoding | None = field(default=None, repr=False)  # None: built from aggregates or loaded from a file
    _cache: dict = field(default_factory=dict, init=False, repr=False)  # sufficient statistics, once per chain

    @property
    def n_obs(self) -> int:
        return len(self.y)

    @property
    def error_structure(self) -> Level1Errors:
        """The level-1 error model (:mod:`bayeshlm.level1`): one sigma^2 and independent errors without
        ``residual``."""
        return level1_errors(None) if self.residual is None else self.residual.errors

    @property
    def rows_available(self) -> bool:
        """True: this design holds its rows (an :class:`~bayeshlm.design.aggregate.AggregateDesign` does not)."""
        return True

    @property
    def n_fixed(self) -> int:
        return self.X.shape[1]

    @property
    def outcome_name(self) -> str:
        return self.spec.outcome

    @property
    def structure(self) -> str:
        """'single' (one grouping factor), 'nested' (a chain of nested factors) or 'crossed'."""
        if len(self.factors) <= 1:
            return "single"
        tops = [f for f, parent in self.nesting.items() if parent is None]
        return "nested" if len(tops) == 1 else "crossed"

    @property
    def chain(self) -> list[GroupingFactor]:
        """Grouping factors from innermost to outermost when they form one nested chain, else []."""
        return nesting_chain(self.factors, self.nesting)

    def factor(self, name: str) -> GroupingFactor:
        for f in self.factors:
            if f.name == name:
                return f
        from ..errors import OptionError, closest_names

        raise OptionError(f"No grouping factor {name!r} in this model.{closest_names(name, self.factor_names)} "
                          f"Grouping factors: {', '.join(self.factor_names)}.")

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.factors)

    @property
    def weights(self) -> np.ndarray | None:
        """Precision weights 1/V of a V-known model (None otherwise)."""
        return None if self.known_variance is None else 1.0 / self.known_variance

    def crossproducts(self, factor: str | GroupingFactor) -> GroupCrossproducts:
        """Per-group sufficient statistics for ``factor`` (see :class:`GroupCrossproducts`)."""
        f = self.factor(factor) if isinstance(factor, str) else factor
        w = self.weights
        Zw = f.Z if w is None else f.Z * w[:, None]
        Xw = self.X if w is None else self.X * w[:, None]
        J = f.n_groups
        ZtZ = group_sums(f.codes, Zw, f.Z, J)
        ZtX = group_sums(f.codes, Zw, self.X, J)
        Zty = group_sums(f.codes, Zw, self.y[:, None], J)[:, :, 0]
        return GroupCrossproducts(
            n=f.group_sizes, ZtZ=ZtZ, ZtX=ZtX, Zty=Zty,
            XtX=Xw.T @ self.X, Xty=Xw.T @ self.y, yty=float((self.y if w is None else self.y * w) @ self.y),
        )

    def chain_crossproducts(self, chain: list[GroupingFactor]) -> ChainCrossproducts:
        """Sufficient statistics of a nested chain (innermost factor first), see :class:`ChainCrossproducts`.

        The one pass over the rows is done once per chain and kept: refits (REML then ML, other starts) reuse it.
        """
        key = tuple(f.name for f in chain)
        if key not in self._cache:
            self._cache[key] = self._chain_crossproducts(chain)
        return self._cache[key]

    def _chain_crossproducts(self, chain: list[GroupingFactor]) -> ChainCrossproducts:
        w = self.weights
        y = self.y[:, None]
        stats = []
        for level, f in enumerate(chain):
            left = f.Z if w is None else f.Z * w[:, None]
            stats.append(np.concatenate([group_sums(f.codes, left, B, f.n_groups)
                                         for B in [g.Z for g in chain[level:]] + [self.X, y]], axis=2))
        Xw = self.X if w is None else self.X * w[:, None]
        yw = y if w is None else y * w[:, None]
        top = np.block([[Xw.T @ self.X, Xw.T @ y], [yw.T @ self.X, yw.T @ y]])
        return ChainCrossproducts(stats=stats, top=top, parents=chain_parents(chain))

    def column_summary(self) -> ColumnSummary:
        """Means, spreads and first values of y, X and each factor's Z (what default priors are scaled by)."""
        return ColumnSummary(
            y_mean=float(np.mean(self.y)), y_sd=float(np.std(self.y, ddof=1)),
            X_mean=self.X.mean(axis=0), X_sd=np.std(self.X, axis=0), X_ptp=np.ptp(self.X, axis=0), X_first=self.X[0],
            Z_sd={f.name: np.std(f.Z, axis=0) for f in self.factors},
            Z_ptp={f.name: np.ptp(f.Z, axis=0) for f in self.factors})

    def summary(self) -> str:
        """Plain-text description of the design (sizes, factors, structure, dropped rows)."""
        lines = [
            f"Model: {self.spec.formula()}",
            f"Outcome: {self.outcome_name}   rows analysed: {self.n_obs}   ({self.dropped})",
            f"Fixed effects ({self.n_fixed}): {', '.join(self.fixed_names)}",
        ]
        if self.known_variance is not None:
            lines.append(f"Known sampling variances: column {self.spec.known_variance!r} "
                         f"(range {self.known_variance.min():.4g} to {self.known_variance.max():.4g})")
        if self.residual is not None:
            lines.append(f"Level-1 errors: {self.residual.errors.describe()}")
        for f in self.factors:
            sizes = f.group_sizes
            cov = "unstructured T" if f.correlated else "diagonal T (uncorrelated)"
            if len(f.blocks) not in (1, f.n_coef):
                cov = "block-diagonal T " + " ".join("(" + ", ".join(f.coef_names[i] for i in b) + ")"
                                                     for b in f.blocks)
            parent = self.nesting.get(f.name)
            where = f", nested in {parent}" if parent else ""
            lines.append(
                f"Grouping factor {f.name}: {f.n_groups} groups{where}; size {sizes.min()}-{sizes.max()} "
                f"(mean {sizes.mean():.1f}); random coefficients ({f.n_coef}): {', '.join(f.coef_names)}; {cov}"
            )
        if len(self.factors) > 1:
            lines.append(f"Structure: {self.structure}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Design {self.n_obs} rows x {self.n_fixed} fixed; factors {self.factor_names}>"


def chain_parents(chain: list[GroupingFactor]) -> list[np.ndarray]:
    """For each level of a nested chain (innermost first) but the top: the group of the next level up that
    holds each of its groups, (J_l,) integer codes."""
    parents = []
    for inner, outer in zip(chain[:-1], chain[1:]):
        parent = np.zeros(inner.n_groups, dtype=np.int64)
        parent[inner.codes] = outer.codes
        parents.append(parent)
    return parents


def indicator_matrix(codes: np.ndarray, Z: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """The sparse rows x (J q) random-effects model matrix of one factor: column (j, k) holds Z[:, k] on the
    rows of group j (columns group-major, so it multiplies the effects u (J, q) flattened row by row)."""
    n, q = Z.shape
    cols = (codes[:, None] * q + np.arange(q)).ravel()
    return sp.csr_matrix((Z.ravel(), (np.repeat(np.arange(n), q), cols)), shape=(n, n_groups * q))


def group_sums(codes: np.ndarray, A: np.ndarray, B: np.ndarray, n_groups: int) -> np.ndarray:
    """sum over rows i in group j of A[i, a] * B[i, b], as a (J, a, b) array.

    The one pass over the rows behind every per-group sufficient statistic (both engines use it): by the
    compiled ``_group_sums`` when it was built (all cells in one pass), else by one bincount per cell. Both add
    each cell's products in row order, so they give the same numbers to the last bit."""
    if _group_sums is not None and codes.dtype == np.int64 and A.dtype == B.dtype == np.float64:
        out = np.zeros((n_groups, A.shape[1], B.shape[1]))
        _group_sums.group_sums(codes, A, B, out)
        return out
    return _group_sums_by_bincount(codes, A, B, n_groups)


def _group_sums_by_bincount(codes: np.ndarray, A: np.ndarray, B: np.ndarray, n_groups: int) -> np.ndarray:
    """:func:`group_sums` by one bincount per cell (without the compiled extension)."""
    out = np.empty((n_groups, A.shape[1], B.shape[1]))
    for a in range(A.shape[1]):
        for b in range(B.shape[1]):
            out[:, a, b] = np.bincount(codes, weights=A[:, a] * B[:, b], minlength=n_groups)
    return out


def nesting_chain(factors, nesting: dict[str, str | None]) -> list[GroupingFactor]:
    """Factors from innermost to outermost when they form one nested chain (else an empty list)."""
    if not factors:
        return []
    by_name = {f.name: f for f in factors}
    parents = set(nesting.values())
    inner = [f for f in factors if f.name not in parents]
    if len(inner) != 1:
        return []
    chain = [inner[0]]
    while nesting.get(chain[-1].name):
        chain.append(by_name[nesting[chain[-1].name]])
    return chain if len(chain) == len(factors) else []
