"""A Design that holds per-group sufficient statistics instead of rows (built from a Dask DataFrame).

Gaussian models with one grouping factor or a chain of nested factors depend on the data only through the
per-group cross-products of :class:`~bayeshlm.design.design.ChainCrossproducts` (R&B 2002, ch. 3 and 14;
Bates et al. 2015, JSS 67(1), sec. 3), so both engines can fit them from these aggregates: REML/ML through
the nested solver, Bayes through the marginal route (one grouping factor). What needs rows -- cluster-robust
SEs, residuals, posterior predictive draws, saving the design, the sampled Bayes route -- raises
:class:`~bayeshlm.errors.RowsUnavailableError` naming what is missing and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import RowsUnavailableError
from ..spec import ModelSpec
from .design import ChainCrossproducts, ColumnSummary, Design, DroppedRows, GroupCrossproducts


def _no_rows(what: str) -> RowsUnavailableError:
    return RowsUnavailableError(
        f"{what} needs the individual rows, but this model was built from per-group sufficient statistics "
        "(Dask input), which keep only aggregates. Fit the same model from a pandas DataFrame (for example "
        "ddf.compute(), if it fits in memory) to get it.")


@dataclass(frozen=True, eq=False)
class AggregateFactor:
    """A grouping factor known through its groups only: labels, sizes and (nested) parent groups."""

    name: str
    levels: pd.Index
    sizes: np.ndarray  # (J,) rows per group
    coef_names: tuple[str, ...]
    blocks: tuple[tuple[int, ...], ...]

    @property
    def n_groups(self) -> int:
        return len(self.levels)

    @property
    def n_coef(self) -> int:
        return len(self.coef_names)

    @property
    def correlated(self) -> bool:
        return len(self.blocks) == 1

    @property
    def group_sizes(self) -> np.ndarray:
        return self.sizes

    @property
    def codes(self) -> np.ndarray:
        raise _no_rows(f"The group of each row of {self.name!r}")

    @property
    def Z(self) -> np.ndarray:
        raise _no_rows(f"The random-effect columns of {self.name!r} row by row")


@dataclass(frozen=True, eq=False)
class AggregateDroppedRows(DroppedRows):
    """Rows dropped for missing values, counted by Dask (their positions are not kept)."""

    n_dropped: int = 0

    @property
    def count(self) -> int:
        return self.n_dropped


@dataclass(frozen=True, eq=False)
class ShiftedSums:
    """The chain's sums accumulated from [X - x, y - y] (the intercept column not shifted), x and y near the
    column means: the standardised fit reads these, whose cross-products of large values never cancel."""

    x: np.ndarray  # (p,), 0 at the intercept
    y: float
    intercept: int  # column of X holding the intercept
    stats: ChainCrossproducts


class AggregateDesign(Design):
    """A :class:`Design` holding the sufficient statistics of a nested chain.

    ``chain_stats`` (for the factors ``chain_names``, innermost first) are the cross-products the nested
    solver reads; ``summary_stats`` the column moments for default priors; ``level2[factor]`` the
    fixed columns that predict a random coefficient with their per-group level-2 values (see
    :func:`bayeshlm.results.hlm_statistics.fixed_part`).
    """

    def __init__(self, *, spec: ModelSpec, n_obs: int, fixed_names, fixed_terms, factors, dropped, nesting,
                 term_levels, chain_names, chain_stats: ChainCrossproducts, summary_stats: ColumnSummary,
                 level2, shifted: ShiftedSums | None = None):
        for name, value in dict(spec=spec, fixed_names=tuple(fixed_names), fixed_terms=tuple(fixed_terms),
                                factors=tuple(factors), known_variance=None, dropped=dropped, nesting=nesting,
                                term_levels=term_levels, residual=None, chain_names=tuple(chain_names),
                                chain_stats=chain_stats,
                                summary_stats=summary_stats, level2=level2, shifted=shifted,
                                _n_obs=int(n_obs)).items():
            object.__setattr__(self, name, value)

    def rescaled(self, chain_stats: ChainCrossproducts, summary_stats: ColumnSummary) -> AggregateDesign:
        """The same design with other sums (see :func:`bayeshlm.design.scaling.standardise`)."""
        return AggregateDesign(spec=self.spec, n_obs=self.n_obs, fixed_names=self.fixed_names,
                               fixed_terms=self.fixed_terms, factors=self.factors, dropped=self.dropped,
                               nesting=self.nesting, term_levels=self.term_levels, chain_names=self.chain_names,
                               chain_stats=chain_stats, summary_stats=summary_stats, level2=self.level2)

    # what the engines read ------------------------------------------------------------------------
    @property
    def n_obs(self) -> int:
        return self._n_obs

    @property
    def n_fixed(self) -> int:
        return len(self.fixed_names)

    @property
    def rows_available(self) -> bool:
        return False

    def chain_crossproducts(self, chain) -> ChainCrossproducts:
        if tuple(f.name for f in chain) != self.chain_names:
            raise _no_rows(f"Sufficient statistics for the factor order {[f.name for f in chain]}")
        return self.chain_stats

    def crossproducts(self, factor) -> GroupCrossproducts:
        f = self.factor(factor) if isinstance(factor, str) else factor
        level = self.chain_names.index(f.name)
        S, p = self.chain_stats.stats[level], self.n_fixed
        top = self.chain_stats.top
        return GroupCrossproducts(n=f.group_sizes, ZtZ=S[:, :, :f.n_coef], ZtX=S[:, :, -p - 1:-1], Zty=S[:, :, -1],
                                  XtX=top[:p, :p], Xty=top[:p, p], yty=float(top[p, p]))

    def column_summary(self) -> ColumnSummary:
        return self.summary_stats

    # what needs rows ---------------------------------------------------------------------------------
    @property
    def y(self) -> np.ndarray:
        raise _no_rows("The outcome row by row")

    @property
    def X(self) -> np.ndarray:
        raise _no_rows("The fixed-effects matrix row by row")

    @property
    def row_labels(self) -> pd.Index:
        raise _no_rows("The labels of the analysed rows")

    def __repr__(self) -> str:
        return f"<AggregateDesign {self.n_obs} rows x {self.n_fixed} fixed; factors {self.factor_names}>"
