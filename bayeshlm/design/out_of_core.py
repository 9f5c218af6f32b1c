"""Build an :class:`~bayeshlm.design.aggregate.AggregateDesign` from a Dask DataFrame, in passes over the data.

Only aggregates leave the partitions, so the data may be larger than memory (partitioned Parquet, CSV):

1. per grouping factor, Dask's group-by gives each group's size and the sums, minima and maxima that
   centring, group means and the data checks need; per text predictor, its categories; missing counts.
2. every partition builds its rows of y, X and each factor's Z with the same formulaic code as the in-memory
   path (categories fixed to the whole data's), sums per group Z_l'[Z_l, ..., Z_top, X, y], X and y with
   ``numpy.bincount``, and Dask's group-by adds the partial sums of all partitions. Whole-sample numbers
   ([X y]'[X y], column moments for the priors, the R factor of X for the rank check, R&B's level-2
   predictor test) are reduced per partition the same way.

Two-level models and chains of nested factors only: a crossed design's likelihood does not split into
per-group sums, and is refused with that reason. Stateful formula transforms (``center(x)``, ``scale(x)``,
splines) would be evaluated per partition, so they are refused too; use ``center=`` instead.
"""

from __future__ import annotations

import formulaic
import numpy as np
import pandas as pd

from ..errors import DataError, FormulaError, OptionError
from ..level1 import level1_errors
from ..spec import ModelSpec
from ..spec.expressions import FORMULAIC_CONTEXT, check_spec
from .aggregate import AggregateDesign, AggregateDroppedRows, AggregateFactor, ShiftedSums
from .build import (
    MISSING_OPTIONS,
    _check_centering_targets,
    _check_columns_exist,
    _fixed_matrix,
    _grouping_factor,
    _natural_order,
    _required_variables,
    check_constant_columns,
    check_rank,
    factor_variables,
    float_predictors,
    group_labels,
    r_factor,
    same_name_stem,
)
from .design import ChainCrossproducts, ColumnSummary, group_sums
from .identify import check_absorbed, check_constant_random_columns, check_slopes_vary_within, identical_groupings

CODE = "__code"
LEVEL2_TOL = 1e-9  # the relative spread below which a ratio X_c / Z_k counts as constant within groups


def is_dask_frame(data) -> bool:
    """True for a ``dask.dataframe.DataFrame`` (checked without importing Dask)."""
    return type(data).__module__.split(".")[0] == "dask" and hasattr(data, "map_partitions")


def build_aggregate_design(spec: ModelSpec, ddf, *, missing: str = "drop") -> AggregateDesign:
    """Per-group sufficient statistics of ``spec`` on the Dask DataFrame ``ddf`` (see the module docstring)."""
    import dask

    if missing not in MISSING_OPTIONS:
        raise OptionError(f"missing={missing!r} is not an option; use 'drop' (default) or 'raise'.")
    _check_supported(spec)
    _check_centering_targets(spec)
    if not spec.unsafe_formula:
        check_spec(spec)  # again here: a spec may have been edited after it was built
    meta = ddf._meta
    derived = {f"mean_{column}" for column, _ in spec.group_means}
    variables = _required_variables(spec)
    _check_columns_exist(variables - derived, meta)
    source = sorted(variables - derived)
    y_meta = meta[spec.outcome] if spec.outcome in meta.columns else None
    if y_meta is None or not pd.api.types.is_numeric_dtype(y_meta) or pd.api.types.is_bool_dtype(y_meta):
        raise DataError(f"The outcome {spec.outcome!r} must be a numeric column of the Dask DataFrame.")
    terms = spec.fixed + tuple(t for r in spec.random for t in r.terms)
    text = [c for c in source if c in {f for t in terms for f in t} | _term_variables(spec)
            and not pd.api.types.is_numeric_dtype(meta[c])]

    # pass 1: missing values, categories, group sizes and the per-group numbers centring needs
    n_input, n_missing = dask.compute(ddf.shape[0], ddf[source].isna().sum())
    by_column = {c: int(k) for c, k in n_missing.items() if k}
    if by_column and missing == "raise":
        raise DataError(f"Missing values in {', '.join(f'{c} ({k} rows)' for c, k in by_column.items())}. "
                        "Fill them in, or pass missing='drop' to analyse the complete rows only.")
    clean = ddf.dropna(subset=source) if by_column else ddf
    groups = list(spec.groups)
    labelled = clean.map_partitions(_add_labels, spec)
    first_pass = {g: labelled.groupby(f"__label_{g}").agg(_first_pass_aggregations(spec)) for g in groups}
    nunique = {(a, b): labelled.groupby(f"__label_{a}")[f"__label_{b}"].nunique().max()
               for a in groups for b in groups if a != b}
    categories = {c: clean[c].unique() for c in text}
    first_pass, nunique, categories = dask.compute(first_pass, nunique, categories)
    levels, sizes = {}, {}
    for g, table in first_pass.items():
        table = table.iloc[_natural_order(np.asarray(table.index, dtype=object))]
        first_pass[g] = table
        levels[g] = pd.Index(np.asarray(table.index, dtype=object), name=g, dtype="str")
        sizes[g] = table[(spec.outcome, "count")].to_numpy(dtype=np.int64)
        if len(levels[g]) < 2:
            raise DataError(f"The grouping factor {g!r} has a single level among the analysed rows: a variance "
                            f"between groups needs at least two groups. Drop the term '(... | {g})' or check "
                            "the data.")
    n_rows = int(sizes[groups[0]].sum())
    chain, nesting = _nested_chain(groups, levels, nunique)
    _check_outcome(spec, first_pass)
    categories = {c: sorted(v.tolist(), key=str) for c, v in categories.items()}
    derive = _derived_columns(spec, first_pass)

    def prepare(frame: pd.DataFrame) -> pd.DataFrame:
        """Fix categories to the whole data's, add group codes and the centred / group-mean columns."""
        frame = frame.copy()
        for c, cats in categories.items():
            frame[c] = pd.Categorical(frame[c], categories=cats)
        codes = {g: levels[g].get_indexer(group_labels(frame, _term_of(spec, g)).astype(str)) for g in groups}
        for g in groups:
            frame[f"__code_{g}"] = codes[g]
        frame = float_predictors(frame, spec)
        raw = frame.copy()
        for column, how, g, value in derive:
            source_column = column[len("mean_"):] if how == "mean" else column
            values = raw[source_column].to_numpy(dtype=float)
            if how == "mean":
                frame[column] = value[codes[g]]
            elif how == "group":
                frame[column] = values - value[codes[g]]
            else:
                frame[column] = values - value
        return frame

    # pass 2: design matrices per partition; per-group sums added up by Dask's group-by
    prepared = clean.map_partitions(prepare)
    sample = prepare(clean.head(1000, npartitions=-1))
    layout = _Layout(spec, sample, chain, levels)
    per_group = {g: prepared.map_partitions(layout.group_frame, level, meta=layout.group_meta(level))
                 .groupby(CODE).agg(layout.group_aggregations(level)) for level, g in enumerate(chain)}
    whole = prepared.map_partitions(layout.whole_frame, meta=layout.whole_meta())
    per_group, whole = dask.compute(per_group, whole)
    dropped = AggregateDroppedRows(n_input=int(n_input), positions=np.zeros(0, dtype=np.int64),
                                   by_column=by_column, n_dropped=int(n_input) - n_rows)
    return layout.design(n_rows, dropped, sizes, nesting, per_group, whole)


def _check_supported(spec: ModelSpec) -> None:
    if spec.known_variance is not None:
        raise OptionError("Dask input does not support known_variance models (V-known meta-analyses are small: "
                          "fit them from a pandas DataFrame).")
    if spec.residual is not None:
        raise OptionError(f"Dask input does not support level-1 error structures "
                          f"({level1_errors(spec.residual).describe()}): they need the rows of each group in order. "
                          "Fit from a pandas DataFrame.")
    if not spec.random:
        raise OptionError("The model has no grouping factor: add a term such as (1 | group).")


def _term_variables(spec: ModelSpec) -> set[str]:
    return {v for t in spec.fixed + tuple(t for r in spec.random for t in r.terms) for f in t
            for v in factor_variables(f)}


def _term_of(spec: ModelSpec, group: str):
    return next(r for r in spec.random if r.group == group)


def _add_labels(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    frame = frame.copy()
    for g in spec.groups:
        frame[f"__label_{g}"] = group_labels(frame, _term_of(spec, g)).astype(str)
    return frame


def _first_pass_aggregations(spec: ModelSpec) -> dict[str, list[str]]:
    """Per group: rows and outcome range (checks), and sum / range of each centred or averaged column."""
    columns = [spec.outcome] + [c.column for c in spec.centering] + [column for column, _ in spec.group_means]
    return {c: ["count", "min", "max", "sum"] for c in dict.fromkeys(columns)}


def _nested_chain(groups, levels, nunique) -> tuple[list[str], dict[str, str | None]]:
    """Factors innermost first, each nested in the next (every group of the inner sits in one outer group; the
    next is the enclosing factor with most groups, as in the in-memory design)."""
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            if len(levels[a]) == len(levels[b]) and nunique[(a, b)] == 1 and nunique[(b, a)] == 1:
                raise identical_groupings(a, b, len(levels[a]))
    nesting: dict[str, str | None] = {}
    for inner in groups:
        outer = [b for b in groups if b != inner and len(levels[b]) < len(levels[inner]) and nunique[(inner, b)] == 1]
        nesting[inner] = max(outer, key=lambda b: len(levels[b])) if outer else None
    inner = [g for g in groups if g not in set(nesting.values())]
    chain = [inner[0]] if len(inner) == 1 else []
    while chain and nesting.get(chain[-1]):
        chain.append(nesting[chain[-1]])
    if len(chain) != len(groups):
        raise DataError(f"The grouping factors {', '.join(groups)} are crossed (not one nested chain). A crossed "
                        "design's likelihood does not split into per-group sums, so it needs the full data: fit "
                        "it from a pandas DataFrame (ddf.compute() if it fits in memory), or on a sample.")
    return chain, nesting


def _check_outcome(spec: ModelSpec, first_pass) -> None:
    y = spec.outcome
    table = next(iter(first_pass.values()))
    if table[(y, "max")].max() == table[(y, "min")].min():
        raise DataError(f"The outcome {y!r} is constant in every analysed row: there is no variance to model.")
    for g, table in first_pass.items():
        if table[(y, "count")].max() > 1 and np.all(table[(y, "max")] == table[(y, "min")]):
            raise DataError(f"The outcome {y!r} is constant within every group of {g!r} (zero within-group "
                            "variance): the level-1 variance is 0 and the model cannot be fitted.")


def _derived_columns(spec: ModelSpec, first_pass) -> list[tuple[str, str, str | None, object]]:
    """(column, how, factor, value) for group means ('mean'), group-mean ('group') and grand-mean ('grand')
    centring, by the in-memory rules (:func:`bayeshlm.design.build._apply_centering`): a grand mean is the
    mean over groups for a column constant within the groups of some factor, else the mean over rows."""

    def factor(g, what):
        if g is None:
            if len(spec.groups) != 1:
                raise OptionError(f"{what}: say which grouping factor to use, e.g. 'group:school' (the model "
                                  f"has {', '.join(spec.groups)}).")
            return spec.groups[0]
        if g not in first_pass:
            raise OptionError(f"{what}: {g!r} is not a grouping factor of the model.")
        return g

    def means(g, column):
        table = first_pass[g]
        return (table[(column, "sum")] / table[(column, "count")]).to_numpy(dtype=float)

    out = []
    for column, g in spec.group_means:
        g = factor(g, f"group_means[{column!r}]")
        out.append((f"mean_{column}", "mean", g, means(g, column)))
    for c in spec.centering:
        if c.how == "group":
            g = factor(c.group, f"center[{c.column!r}]")
            out.append((c.column, "group", g, means(g, c.column)))
            continue
        value = next((float(t[(c.column, "min")].mean()) for t in first_pass.values()
                      if np.all(t[(c.column, "min")] == t[(c.column, "max")])), None)
        if value is None:
            table = next(iter(first_pass.values()))
            value = float(table[(c.column, "sum")].sum() / table[(c.column, "count")].sum())
        out.append((c.column, "grand", None, value))
    return out


class _Layout:
    """Names and shapes of the design (from a sample of prepared rows) and the per-partition reductions."""

    def __init__(self, spec: ModelSpec, sample: pd.DataFrame, chain: list[str], levels: dict[str, pd.Index]):
        self.spec, self.chain, self.levels = spec, chain, levels
        _check_stateless(spec, sample)
        X, self.fixed_names, self.fixed_terms = _fixed_matrix(spec, sample)
        self.p = X.shape[1]
        self.intercept = self.fixed_names.index("(Intercept)") if "(Intercept)" in self.fixed_names else None
        self.shift = self._sample_shift(X, sample[spec.outcome].to_numpy(dtype=float))
        self.factors = {g: _grouping_factor(spec, g, (np.zeros(len(sample), dtype=np.int64), levels[g]), sample)
                        for g in chain}
        self.q = [self.factors[g].n_coef for g in chain]
        fixed_factors = dict.fromkeys(f for t in spec.fixed for f in t)
        self.term_variables = {f: sorted(factor_variables(f) & set(sample.columns)) for f in fixed_factors}
        level_variables = {v for f, g in spec.level_predictors for v in factor_variables(f) & set(sample.columns)}
        self.variables = sorted({v for vs in self.term_variables.values() for v in vs} | level_variables)
        # (fixed column, random coefficient) pairs that may hold a level-2 predictor times Z (names first)
        self.pairs = {g: [(c, k) for c in range(self.p) for k in range(self.q[level])
                          if same_name_stem(self.fixed_names[c], self.factors[g].coef_names[k])]
                      for level, g in enumerate(chain)}

    # one partition -------------------------------------------------------------------------------------
    def _matrices(self, frame: pd.DataFrame):
        X, names, _ = _fixed_matrix(self.spec, frame)
        if names != self.fixed_names:
            raise DataError(f"A partition gives the fixed-effect columns {list(names)} instead of "
                            f"{list(self.fixed_names)}; categorical predictors must have the same categories "
                            "in every partition.")
        Z = {g: _grouping_factor(self.spec, g, (frame[f"__code_{g}"].to_numpy(), self.levels[g]), frame).Z
             for g in self.chain}
        return X, Z, frame[self.spec.outcome].to_numpy(dtype=float)

    def _sample_shift(self, X: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """[x, y] each partition subtracts from the columns of X but the intercept and from y before summing:
        their means in the sample of rows (None without an intercept). Sums of products of large values
        (y + 1e8) would lose their digits; :func:`bayeshlm.design.scaling.standardise` reads the shifted sums."""
        if self.intercept is None or not len(y):
            return None
        shift = np.concatenate([X.mean(axis=0), [y.mean()]])
        shift[self.intercept] = 0.0
        return shift

    def _shifted(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        XY = np.column_stack([X, y])
        return XY if self.shift is None else XY - self.shift

    def _unshift(self, shifted: ChainCrossproducts) -> tuple[list[np.ndarray], np.ndarray]:
        """The sums of the unshifted columns: [X y] = [X - x, y - y] M with M the identity plus the shift in
        the intercept's row."""
        if self.shift is None:
            return shifted.stats, shifted.top
        p = self.p
        M = np.eye(p + 1)
        M[self.intercept, :] += self.shift
        stats = [np.concatenate([S[:, :, :-p - 1], S[:, :, -p - 1:] @ M], axis=2) for S in shifted.stats]
        return stats, M.T @ shifted.top @ M

    def _width(self, level: int) -> int:
        return sum(self.q[level:]) + self.p + 1

    def group_frame(self, frame: pd.DataFrame, level: int) -> pd.DataFrame:
        """Per group of chain level ``level`` present in the partition, the partial sums (and ranges)."""
        g = self.chain[level]
        if len(frame) == 0:
            return self.group_meta(level)
        X, Z, y = self._matrices(frame)
        codes = frame[f"__code_{g}"].to_numpy()
        J = len(self.levels[g])
        right = np.column_stack([Z[h] for h in self.chain[level:]] + [self._shifted(X, y)])
        S = group_sums(codes, Z[g], right, J)
        n = np.bincount(codes, minlength=J)
        present = np.flatnonzero(n)
        cols = {CODE: present, "n": n[present]}
        cols |= {f"s{i}": v for i, v in enumerate(S[present].reshape(len(present), -1).T)}
        extra = pd.DataFrame(index=pd.RangeIndex(len(frame)))
        if level + 1 < len(self.chain):
            extra["parent_min"] = extra["parent_max"] = frame[f"__code_{self.chain[level + 1]}"].to_numpy()
        for v in self.variables:
            values = frame[v]
            values = values.cat.codes if isinstance(values.dtype, pd.CategoricalDtype) else values
            extra[f"v_{v}_min"] = extra[f"v_{v}_max"] = values.to_numpy(dtype=float)
        for k in range(self.q[level]):
            extra[f"z_{k}_min"] = extra[f"z_{k}_max"] = Z[g][:, k]
        bad = {}
        for c, k in self.pairs[g]:
            z = Z[g][:, k]
            nonzero = z != 0
            bad[f"bad_{c}_{k}"] = float(np.count_nonzero(X[~nonzero, c]))
            ratio = np.where(nonzero, X[:, c] / np.where(nonzero, z, 1.0), np.nan)
            extra[f"r_{c}_{k}_min"] = extra[f"r_{c}_{k}_max"] = extra[f"r_{c}_{k}_sum"] = ratio
            extra[f"r_{c}_{k}_cnt"] = nonzero.astype(float)
        if len(extra.columns):
            agg = {col: col.rsplit("_", 1)[1].replace("cnt", "sum") for col in extra.columns}
            reduced = extra.groupby(codes).agg(agg).reindex(present)
            cols |= {col: reduced[col].to_numpy() for col in extra.columns}
        cols |= {col: np.full(len(present), value) for col, value in bad.items()}
        return pd.DataFrame(cols)[list(self.group_meta(level).columns)]

    def group_meta(self, level: int) -> pd.DataFrame:
        g = self.chain[level]
        names = [CODE, "n"] + [f"s{i}" for i in range(self.q[level] * self._width(level))]
        if level + 1 < len(self.chain):
            names += ["parent_min", "parent_max"]
        names += [f"v_{v}_{s}" for v in self.variables for s in ("min", "max")]
        names += [f"z_{k}_{s}" for k in range(self.q[level]) for s in ("min", "max")]
        names += [f"r_{c}_{k}_{s}" for c, k in self.pairs[g] for s in ("min", "max", "sum", "cnt")]
        names += [f"bad_{c}_{k}" for c, k in self.pairs[g]]
        frame = pd.DataFrame({name: np.zeros(0) for name in names})
        return frame.astype({CODE: np.int64, "n": np.int64})

    def group_aggregations(self, level: int) -> dict[str, str]:
        names = self.group_meta(level).columns[1:]
        return {n: "min" if n.endswith("_min") else "max" if n.endswith("_max") else "sum" for n in names}

    def whole_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per partition: [X y]'[X y], the R factor of X, and each column's count, mean and sum of
        squared deviations (combined later by Chan et al.'s parallel formula), minimum and maximum."""
        if len(frame) == 0:
            return self.whole_meta()
        X, Z, y = self._matrices(frame)
        XY = np.column_stack([X, y])
        shifted = self._shifted(X, y)
        R = np.zeros((self.p, self.p))
        r = r_factor(X)
        R[:len(r)] = r
        columns = np.column_stack([XY] + [Z[g] for g in self.chain])
        mean = columns.mean(axis=0)
        values = np.concatenate([[len(y)], (shifted.T @ shifted).ravel(), R.ravel(), mean,
                                 ((columns - mean) ** 2).sum(axis=0), columns.min(axis=0), columns.max(axis=0)])
        return pd.DataFrame(values[None, :], columns=self.whole_meta().columns)

    def _check_absorbed(self, stats: list[np.ndarray], top: np.ndarray) -> None:
        """Random coefficients taken over by the fixed effects (``y ~ C(g) + (1 | g)``), from the per-group sums."""
        p = self.p
        if p < min(len(self.levels[g]) for g in self.chain):
            return  # too few fixed columns to absorb any factor's groups
        try:
            R_fixed = np.linalg.cholesky(top[:p, :p]).T
        except np.linalg.LinAlgError:  # X'X too ill-conditioned to factor: its rank was checked already by QR
            return
        for level, g in enumerate(self.chain):
            q = self.q[level]
            S = stats[level]  # (J, q, width): Z_j'[Z_j ... X y]
            diagonal = np.einsum("jkk->jk", S[:, :, :q])
            check_absorbed(g, self.factors[g].coef_names, S[:, :, -p - 1:-1].transpose(0, 2, 1), diagonal, R_fixed)

    def whole_meta(self) -> pd.DataFrame:
        m = self.p + 1 + sum(self.q)
        count = 1 + (self.p + 1) ** 2 + self.p ** 2 + 4 * m
        return pd.DataFrame({f"w{i}": np.zeros(0) for i in range(count)})

    # after the passes -----------------------------------------------------------------------------------
    def design(self, n_rows: int, dropped, sizes, nesting, per_group, whole: pd.DataFrame) -> AggregateDesign:
        p, spec = self.p, self.spec
        W = whole.to_numpy()
        n_k = W[:, 0]
        at = 1
        top = W[:, at:at + (p + 1) ** 2].sum(axis=0).reshape(p + 1, p + 1)
        at += (p + 1) ** 2
        R = np.linalg.qr(W[:, at:at + p * p].reshape(-1, p), mode="r")
        at += p * p
        m = p + 1 + sum(self.q)
        means_k, m2_k, mins_k, maxs_k = (W[:, at + i * m:at + (i + 1) * m] for i in range(4))
        mean = n_k @ means_k / n_rows
        m2 = m2_k.sum(axis=0) + n_k @ (means_k - mean) ** 2
        lo, hi = mins_k.min(axis=0), maxs_k.max(axis=0)
        check_constant_columns(hi[:p] - lo[:p], self.fixed_names)
        check_rank(R, n_rows, self.fixed_names)
        sd0 = np.sqrt(m2 / n_rows)
        bounds = np.cumsum([p + 1] + self.q)
        summary = ColumnSummary(
            y_mean=float(mean[p]), y_sd=float(np.sqrt(m2[p] / (n_rows - 1))), X_mean=mean[:p], X_sd=sd0[:p],
            X_ptp=(hi - lo)[:p], X_first=lo[:p],
            Z_sd={g: sd0[bounds[i]:bounds[i + 1]] for i, g in enumerate(self.chain)},
            Z_ptp={g: (hi - lo)[bounds[i]:bounds[i + 1]] for i, g in enumerate(self.chain)})
        for g in self.chain:
            check_constant_random_columns(g, self.factors[g].coef_names, summary.Z_ptp[g])
        stats, parents, level2, varying = [], [], {}, {}
        for level, g in enumerate(self.chain):
            table = per_group[g].reindex(range(len(self.levels[g])))
            if not np.array_equal(table["n"].fillna(0).to_numpy(dtype=np.int64), sizes[g]):
                raise DataError(f"The group sizes of {g!r} differ between the two passes over the data: the Dask "
                                "DataFrame changed while it was read (or is not deterministic). Persist or write "
                                "it to Parquet first.")
            q, width = self.q[level], self._width(level)
            stats.append(table[[f"s{i}" for i in range(q * width)]].to_numpy().reshape(-1, q, width))
            if level + 1 < len(self.chain):
                parents.append(table["parent_min"].to_numpy(dtype=np.int64))
            varying[g] = {v: table[f"v_{v}_max"].to_numpy() > table[f"v_{v}_min"].to_numpy() for v in self.variables}
            spread = np.column_stack([table[f"z_{k}_max"] - table[f"z_{k}_min"] for k in range(q)])
            check_slopes_vary_within(g, self.factors[g].coef_names, spread)
            level2[g] = self._level2(g, table)
        _check_level_predictors(spec, varying, self.levels)
        shifted = ChainCrossproducts(stats=stats, top=top, parents=parents)
        stats, top = self._unshift(shifted)
        self._check_absorbed(stats, top)
        factors = tuple(AggregateFactor(name=g, levels=self.levels[g], sizes=sizes[g],
                                        coef_names=self.factors[g].coef_names, blocks=self.factors[g].blocks)
                        for g in spec.groups)
        return AggregateDesign(
            spec=spec, n_obs=n_rows, fixed_names=self.fixed_names, fixed_terms=self.fixed_terms, factors=factors,
            dropped=dropped, nesting=nesting, term_levels=self._term_levels(varying), chain_names=self.chain,
            chain_stats=ChainCrossproducts(stats=stats, top=top, parents=parents),
            shifted=None if self.shift is None else ShiftedSums(x=self.shift[:-1], y=float(self.shift[-1]),
                                                                intercept=self.intercept, stats=shifted),
            summary_stats=summary, level2=level2)

    def _level2(self, g: str, table: pd.DataFrame) -> dict[int, tuple[int, np.ndarray]]:
        """Fixed column c -> (coefficient k, per-group W) where X_c = Z_k W_j within every group (the same
        test as :func:`bayeshlm.results.hlm_statistics._attached_columns`, from per-group ranges)."""
        out = {}
        for c, k in self.pairs[g]:
            if c in out or table[f"bad_{c}_{k}"].iloc[0] > 0:
                continue
            seen = table[f"r_{c}_{k}_cnt"].to_numpy() > 0
            lo, hi = table[f"r_{c}_{k}_min"].to_numpy()[seen], table[f"r_{c}_{k}_max"].to_numpy()[seen]
            if (hi - lo).max() <= LEVEL2_TOL * (1 + np.abs(hi).max()):
                w = np.zeros(len(table))
                w[seen] = table[f"r_{c}_{k}_sum"].to_numpy()[seen] / table[f"r_{c}_{k}_cnt"].to_numpy()[seen]
                out[c] = (k, w)
        return out

    def _term_levels(self, varying) -> dict[str, int]:
        """Level each fixed formula factor varies at (:func:`bayeshlm.design.build._term_levels`)."""
        levels = {}
        for f, variables in self.term_variables.items():
            level = 1
            for depth, g in enumerate(self.chain, start=2):
                if any(varying[g][v].any() for v in variables):
                    break
                level = depth
            levels[f] = level
        return levels


def _check_level_predictors(spec: ModelSpec, varying, levels) -> None:
    for factor, group in spec.level_predictors:
        if group not in varying:
            continue
        for v in sorted(factor_variables(factor) & set(varying[group])):
            bad = np.flatnonzero(varying[group][v])
            if len(bad):
                raise DataError(f"{v!r} is used as a predictor at the level of {group!r} but varies within "
                                f"{len(bad)} of its {len(levels[group])} groups (e.g. group {levels[group][bad[0]]!r})."
                                f" Use its group mean (group_means=[{v!r}]) or move it to the level-1 equation.")


def _check_stateless(spec: ModelSpec, sample: pd.DataFrame) -> None:
    """Refuse formula transforms that learn from the data (center(), scale(), splines): per partition they
    would learn different values."""
    terms = [":".join(t) for t in spec.fixed + tuple(t for r in spec.random for t in r.terms) if t]
    state = formulaic.model_matrix(" + ".join(["1", *terms]), sample,
                                   context=FORMULAIC_CONTEXT).model_spec.transform_state
    if state:
        raise FormulaError(f"The formula uses a transform that learns from the data ({', '.join(state)}); "
                           "with Dask input it would be evaluated per partition. Use center={...} for centring, "
                           "or add the transformed column to the data first.")
