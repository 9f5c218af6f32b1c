"""Build a :class:`Design` from a ModelSpec and a pandas DataFrame, checking the data on the way.

Order of work: check columns exist -> drop (and count) rows with missing values -> check values
(infinite, non-numeric outcome, grouping factors) -> centre -> build X and each factor's Z with formulaic
-> check X (constant and collinear columns) -> detect nesting.
"""

from __future__ import annotations

import functools
import re

import formulaic
import numpy as np
import pandas as pd
from formulaic.errors import FormulaicError

from ..errors import DataError, FormulaError, OptionError, closest_names, describe_rows
from ..level1 import level1_errors
from ..spec import ModelSpec
from ..spec.expressions import FORMULAIC_CONTEXT, check_spec
from ..spec.model_spec import INTERCEPT, RandomTerm, Term, term_name
from .design import ColumnCoding, Design, DroppedRows, GroupingFactor, ResidualDesign, nesting_chain
from .identify import check_identifiable, r_factor

MISSING_OPTIONS = ("drop", "raise")


def build_design(spec: ModelSpec, data: pd.DataFrame, *, missing: str = "drop") -> Design:
    """Turn ``spec`` and ``data`` into a :class:`Design` (see the module docstring for the steps)."""
    if missing not in MISSING_OPTIONS:
        raise OptionError(f"missing={missing!r} is not an option; use 'drop' (default: drop and report rows "
                          "with missing values) or 'raise'.")
    frame = _check_frame(data)
    if not spec.unsafe_formula:
        check_spec(spec)  # again here: a spec may have been edited after it was built
    if spec.known_variance is not None and not isinstance(spec.known_variance, str):
        raise OptionError(f"known_variance takes the name of a data column; got a {type(spec.known_variance).__name__}."
                          " Add the variances to the data first, e.g. data.assign(v=variances), then pass "
                          "known_variance='v'.")
    derived = {f"mean_{column}" for column, _ in spec.group_means}
    variables = _required_variables(spec)
    _check_columns_exist(variables - derived, frame)
    source_columns = [c for c in dict.fromkeys(sorted(variables - derived)) if c in frame.columns]

    frame, dropped, columns = _drop_missing(frame, source_columns, missing)
    if len(frame) == 0:
        raise DataError(f"No rows are left to analyse: {dropped}.")
    _check_finite(columns, source_columns)
    _check_text_predictors(columns, spec)
    y = _outcome(columns, spec.outcome)
    group_codes = {r.group: _group_codes(columns, r) for r in spec.random}
    _check_within_group_variation(y, spec, group_codes)
    grand_means: dict[str, float] = {}
    frame = _apply_centering(frame, spec, group_codes, grand_means)
    _check_centering_targets(spec)
    if frame is not columns.frame:
        columns = Columns(frame)
    # what formulaic reads (``frame`` keeps the labels of categories); converted only when formulaic is called
    numbers = FloatPredictors(frame, spec, columns)

    formulaic_specs: dict = {}  # "fixed" and each factor's name -> formulaic's model spec (its column coding)
    X, fixed_names, fixed_terms = _fixed_matrix(spec, numbers, formulaic_specs)
    R_fixed = _check_fixed_matrix(X, fixed_names)
    factors = tuple(_grouping_factor(spec, group, group_codes[group], numbers, formulaic_specs)
                    for group in spec.groups)
    coding = ColumnCoding(fixed=formulaic_specs.pop("fixed"), random=formulaic_specs, grand_means=grand_means)
    known = _known_variance(spec, columns, y)
    nesting = _nesting(factors)
    term_levels = _term_levels(spec, columns, factors, nesting)
    _check_level_predictors(spec, columns, group_codes)
    residual = _residual_design(spec, numbers.frame() if spec.residual else frame, factors, nesting, labels=frame)
    design = Design(
        spec=spec, y=y, X=X, fixed_names=fixed_names, fixed_terms=fixed_terms, factors=factors,
        known_variance=known, row_labels=frame.index, dropped=dropped, nesting=nesting, term_levels=term_levels,
        residual=residual, coding=coding,
    )
    check_identifiable(design, R_fixed)
    return design


# --- columns and missing values ------------------------------------------------------------------

def _check_frame(data) -> pd.DataFrame:
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame; got {type(data).__name__}. "
                        "Convert it with pandas.DataFrame(...) first.")
    if data.shape[0] == 0:
        raise DataError("The data frame is empty (0 rows): there is nothing to fit.")
    if not data.columns.is_unique:
        duplicated = data.columns[data.columns.duplicated()].unique().tolist()
        raise DataError(f"The data frame has duplicated column names {duplicated}; rename them so each "
                        "column name is unique.")
    return data


@functools.lru_cache(maxsize=512)
def factor_variables(expression: str) -> frozenset[str]:
    """The data columns a formula expression reads (``log(x) * z`` reads x and z; not the formula functions)."""
    try:
        return frozenset(formulaic.Formula(expression).required_variables) - FORMULAIC_CONTEXT.keys()
    except FormulaicError as err:
        raise FormulaError(f"Cannot read {expression!r}: {str(err).splitlines()[0]}") from None


def _required_variables(spec: ModelSpec) -> set[str]:
    names = {spec.outcome} if spec.outcome.isidentifier() else set(factor_variables(spec.outcome))
    for term in spec.fixed + tuple(t for r in spec.random for t in r.terms):
        for factor in term:
            names |= factor_variables(factor)
    for r in spec.random:
        names |= set(r.group_columns)
    names |= {c.column for c in spec.centering} | {column for column, _ in spec.group_means}
    if spec.known_variance:
        names.add(spec.known_variance)
    if spec.residual is not None:
        names |= set(spec.residual.columns())
        if spec.residual.variance_formula:
            names |= factor_variables(spec.residual.variance_formula)
    return names


def _check_centering_targets(spec: ModelSpec) -> None:
    """Refuse centring the outcome or a column no term uses: the option would have no effect on the model."""
    used = {v for term in spec.fixed + tuple(t for r in spec.random for t in r.terms) for f in term
            for v in factor_variables(f)}
    if spec.residual is not None and spec.residual.variance_formula:
        used |= factor_variables(spec.residual.variance_formula)
    for c in spec.centering:
        if c.column == spec.outcome:
            raise OptionError(f"center[{c.column!r}]: {c.column!r} is the outcome. Centring applies to predictors "
                              "(it changes what the intercept means); to centre the outcome, subtract its mean "
                              "from the column before fitting.")
        if c.column not in used:
            mean = " (its group mean enters as mean_" + c.column + ", computed before centring)" \
                if any(column == c.column for column, _ in spec.group_means) else ""
            raise OptionError(f"center[{c.column!r}]: no term of the model uses {c.column!r}{mean}, so centring it "
                              f"would change nothing. Add {c.column!r} to the formula or drop it from center.")


def _check_columns_exist(variables: set[str], frame: pd.DataFrame) -> None:
    absent = sorted(v for v in variables if v not in frame.columns)
    if absent:
        hints = " ".join(f"{name!r} is not a column.{closest_names(name, frame.columns)}" for name in absent)
        raise DataError(f"{hints} The data has columns: {', '.join(map(str, frame.columns))}.")


class Columns:
    """Read access to a frame's columns, each taken out once (``DataFrame.__getitem__`` costs ~10 us a call, and
    a build reads each column several times): ``columns[name]``, ``.columns``, ``.index``, ``len()``."""

    def __init__(self, frame: pd.DataFrame, read: dict[str, pd.Series] | None = None):
        self.frame = frame
        self.columns = frame.columns
        self.index = frame.index
        self._read = dict(read or {})

    def __getitem__(self, name: str) -> pd.Series:
        if name not in self._read:
            self._read[name] = self.frame[name]
        return self._read[name]

    def __len__(self) -> int:
        return len(self.frame)


def _drop_missing(frame: pd.DataFrame, columns: list[str], missing: str) -> tuple[pd.DataFrame, DroppedRows, Columns]:
    """The rows without missing values in ``columns``, what was dropped, and :class:`Columns` of the result."""
    read = {c: frame[c] for c in columns}
    isna = {c: _missing(values) for c, values in read.items()}  # column by column: no copy of the frame
    by_column = {c: int(k) for c, k in ((c, mask.sum()) for c, mask in isna.items()) if k}
    bad = np.flatnonzero(np.logical_or.reduce(list(isna.values()))) if by_column else np.array([], dtype=np.intp)
    if len(bad) and missing == "raise":
        raise DataError(
            f"Missing values in {', '.join(f'{c} ({k} rows)' for c, k in by_column.items())}: "
            f"{describe_rows(bad)} (0-based positions). Fill them in, or pass missing='drop' to analyse "
            "the complete rows only."
        )
    dropped = DroppedRows(n_input=len(frame), positions=bad, by_column=by_column)
    if not len(bad):
        return frame, dropped, Columns(frame, read)
    kept = frame.drop(index=frame.index[bad])
    return kept, dropped, Columns(kept)


def _missing(values: pd.Series) -> np.ndarray:
    """Series.isna() as a boolean array; for NumPy float and integer columns straight from the values (NaN only;
    integers have none), which pandas' own check takes several times longer to say."""
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in "fiu":
        data = values.to_numpy()
        return np.isnan(data) if data.dtype.kind == "f" else np.zeros(len(data), dtype=bool)
    return np.asarray(values.array.isna())  # what Series.isna() reads, without the Series around it (~15 us)


def _check_finite(frame: pd.DataFrame | Columns, columns: list[str]) -> None:
    for column in columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            infinite = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
            if len(infinite):
                raise DataError(f"Column {column!r} has infinite values in {describe_rows(infinite)} "
                                "(positions among the analysed rows). Replace or remove them before fitting.")


def _check_text_predictors(frame: pd.DataFrame | Columns, spec: ModelSpec) -> None:
    """Refuse a text column used as a bare predictor when most of its values are numbers.

    Such a column (typically numbers read with a code like '.' or 'n/a' for missing) would otherwise become a
    categorical predictor with one dummy per distinct value. Writing ``C(column)`` keeps a categorical
    reading.
    """
    bare = {factor for term in spec.fixed + tuple(t for r in spec.random for t in r.terms) for factor in term}
    for column in sorted(bare & set(frame.columns)):
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) or isinstance(values.dtype, pd.CategoricalDtype):
            continue
        codes, uniques = pd.factorize(values)  # each distinct value read once, not once per row
        text = np.flatnonzero(pd.to_numeric(pd.Series(uniques), errors="coerce").isna().to_numpy()[codes])
        if len(text) < len(values) / 2:
            example = "" if not len(text) else (f"; not numbers: {values.iloc[text[0]]!r} in "
                                                f"{describe_rows(text)} (positions among the analysed rows)")
            raise DataError(
                f"Column {column!r} is text, but {len(values) - len(text)} of its {len(values)} values are numbers"
                f"{example}. If it is numeric, convert it with pandas.to_numeric(data[{column!r}], errors='coerce') "
                f"(non-numbers become missing and are dropped and counted); if it is categorical, write "
                f"C({column}) in the formula.")


def _check_within_group_variation(y: np.ndarray, spec: ModelSpec, group_codes) -> None:
    """Refuse an outcome that is constant within every group: its level-1 variance would be exactly 0."""
    if spec.known_variance is not None:
        return
    for group, (codes, _) in group_codes.items():
        sizes = np.bincount(codes)
        if sizes.max() > 1 and _constant_within(y, codes):
            raise DataError(
                f"The outcome {spec.outcome!r} is constant within every group of {group!r} (zero within-group "
                f"variance across {len(sizes)} groups): the level-1 variance is 0 and the model cannot be fitted. "
                "Check that the outcome column is the measured outcome and not a group-level score; to model "
                "group-level values, analyse one row per group.")


def _outcome(frame: pd.DataFrame | Columns, outcome: str) -> np.ndarray:
    values = frame[outcome] if outcome in frame.columns else None
    if values is None or not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        kind = "missing" if values is None else str(values.dtype)
        example = "" if values is None else f" (e.g. {values.iloc[0]!r})"
        raise DataError(f"The outcome {outcome!r} must be numeric; its column has type {kind}{example}. "
                        "Convert it to numbers, or model a numeric column.")
    y = values.to_numpy(dtype=float)
    if np.ptp(y) == 0:
        raise DataError(f"The outcome {outcome!r} is constant ({y[0]:g} in every analysed row): "
                        "there is no variance to model.")
    return y


def float_predictors(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Integer and boolean predictor columns as float64, before formulaic evaluates any term.

    numpy arithmetic keeps a column's type, so products of uint8 columns wrap modulo 256 (``a:b``) and squares
    of int16 columns overflow (``I(x**2)``); booleans become 0/1, as formulaic reads them. A column used only
    as ``C(column)`` keeps its type, so its category labels stay '2', not '2.0'.
    """
    numeric_uses = set()
    factors = [f for term in spec.fixed + tuple(t for r in spec.random for t in r.terms) for f in term]
    if spec.residual is not None and spec.residual.variance_formula:
        factors.append(spec.residual.variance_formula)
    for factor in factors:
        if not _CATEGORICAL_CALL.fullmatch(factor):
            numeric_uses |= factor_variables(factor)
    convert = [c for c in sorted(numeric_uses & set(frame.columns))
               if pd.api.types.is_integer_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])]
    return frame.astype({c: np.float64 for c in convert}) if convert else frame


_CATEGORICAL_CALL = re.compile(r"C\(\s*[A-Za-z_]\w*\s*(,.*)?\)", re.DOTALL)

# NumPy dtypes formulaic reads as plain numbers once float_predictors made them float64 (exactly, for these)
_PLAIN_NUMERIC_KINDS = "fiub"


class FloatPredictors:
    """The predictor columns a design is built from: :func:`float_predictors` of ``frame``, converted on first
    use only, since a model whose terms are plain numeric columns never needs the converted frame (see
    :func:`_plain_matrix`). ``spec=None``: ``frame`` is already converted."""

    def __init__(self, frame: pd.DataFrame, spec: ModelSpec | None = None, columns: Columns | None = None):
        """``columns``: :class:`Columns` of ``frame`` already read, if any."""
        self.source = frame
        self.columns = columns if columns is not None and columns.frame is frame else Columns(frame)
        self._spec = spec
        self._converted = frame if spec is None else None

    def frame(self) -> pd.DataFrame:
        if self._converted is None:
            self._converted = float_predictors(self.source, self._spec)
        return self._converted

    def plain_column(self, factor: str) -> np.ndarray | None:
        """The column a bare name ``factor`` reads as float64, as float_predictors gives it (integers and
        booleans converted exactly); None for anything formulaic must evaluate or code (expressions, text,
        categories, float32 or nullable columns)."""
        if not factor.isidentifier() or factor not in self.source.columns:
            return None
        values = self.columns[factor]
        if not isinstance(values.dtype, np.dtype) or values.dtype.kind not in _PLAIN_NUMERIC_KINDS \
                or values.dtype.kind == "f" and values.dtype != np.float64:
            return None
        return values.to_numpy(dtype=np.float64)

    def text_codes(self, factor: str) -> tuple[np.ndarray, list[str]] | None:
        """A bare name ``factor`` of a text column (object dtype or pandas' default ``str`` dtype, every value a
        str): each row's category number and the categories in sorted order, as formulaic orders them; else
        None. A ``"string"`` column (missing value pd.NA) is left to formulaic, which codes new data for
        predictions: it refuses such columns, and the fit must not accept what prediction then refuses."""
        if not factor.isidentifier() or factor not in self.source.columns:
            return None
        values = self.columns[factor]
        text_dtype = values.dtype == object or isinstance(values.dtype, pd.StringDtype) \
            and values.dtype.na_value is not pd.NA
        if not text_dtype or pd.api.types.infer_dtype(values, skipna=False) != "string":
            return None
        codes, uniques = pd.factorize(values)
        levels = sorted(uniques)
        position = {level: k for k, level in enumerate(levels)}
        return np.array([position[u] for u in uniques], dtype=np.int64)[codes], levels


# --- grouping factors ------------------------------------------------------------------------------

def _group_codes(frame: pd.DataFrame | Columns, term: RandomTerm) -> tuple[np.ndarray, pd.Index]:
    codes, levels = sorted_codes(group_labels(frame, term), term.group)
    if len(levels) < 2:
        raise DataError(
            f"The grouping factor {term.group!r} has a single level ({levels[0]!r}) among the analysed rows: "
            "a variance between groups needs at least two groups. Drop the term "
            f"'(... | {term.group})' or check the data."
        )
    return codes, levels


def group_labels(frame: pd.DataFrame | Columns, term: RandomTerm) -> pd.Series:
    """Each row's group label: text, or the integers of a single integer ID column (they number the same way,
    and skip a slow conversion of every row to text); for ``b:a`` (``a/b`` nesting) "b-level:a-level", as lme4
    does."""
    parts = []
    for column in term.group_columns:
        values = frame[column]
        if pd.api.types.is_float_dtype(values) and not np.all(np.mod(values.to_numpy(), 1) == 0):
            raise DataError(
                f"The grouping factor {column!r} holds non-integer numbers (e.g. {values.iloc[0]!r}); "
                "a grouping column must contain group labels or IDs. Did you put a continuous variable on the "
                "right of '|'?"
            )
        if pd.api.types.is_float_dtype(values):
            large = np.flatnonzero(np.abs(values.to_numpy()) >= 2.0 ** 53)
            if len(large):
                raise DataError(
                    f"The grouping factor {column!r} holds IDs stored as floating-point numbers of 2^53 or more "
                    f"(e.g. {values.iloc[large[0]]:.17g} in {describe_rows(large)}): at that size neighbouring "
                    "integers share one floating-point value, so distinct IDs may already have merged. Read the "
                    f"column as text or as integers, e.g. pandas.read_csv(..., dtype={{{column!r}: str}}).")
            values = values.astype(np.int64)
        if len(term.group_columns) == 1 and pd.api.types.is_integer_dtype(values):
            return values
        parts.append(values if str(values.dtype) == "str" else values.astype(str))  # str: as astype gives it
    return parts[0] if len(parts) == 1 else pd.Series(
        [":".join(row) for row in zip(*reversed([p.to_numpy() for p in parts]))], index=frame.index)


def sorted_codes(labels: pd.Series, name: str) -> tuple[np.ndarray, pd.Index]:
    """Integer codes 0..K-1 of labels (text or integers), numbered in natural order of their text
    (see :func:`_natural_order`)."""
    # a text column's own array (pandas' str dtype is Arrow-backed): factorised without the Series wrapping
    first_seen, uniques = pd.factorize(labels if isinstance(labels.dtype, np.dtype) else labels.array)
    if isinstance(uniques.dtype, np.dtype) and uniques.dtype.kind in "iu":
        order = np.argsort(np.asarray(uniques), kind="stable")  # distinct integers: their natural order
    else:
        order = None
    text = np.asarray(uniques).astype(str)
    order = _natural_order(text) if order is None else order
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    if str(uniques.dtype) == "str":  # pandas' str array: taken in order, without converting the text back (~35 us)
        return rank[first_seen], pd.Index(uniques.take(order), name=name)
    return rank[first_seen], pd.Index(text[order], name=name, dtype="str")


def _natural_order(labels: np.ndarray) -> np.ndarray:
    """Sorting order of group labels: numerically when all are numbers ('2' < '10'), else as text."""
    text = labels.astype(str)
    numeric = _digit_ids(text)
    if numeric is None:
        numeric = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy()
    if not np.isnan(numeric).any():
        return np.lexsort((text, numeric))
    return np.argsort(text, kind="stable")


def _digit_ids(text: np.ndarray) -> np.ndarray | None:
    """The labels as integers when every one is 1 to 15 ASCII digits (IDs read as text; pandas.to_numeric gives
    the same numbers, at many times the cost), else None."""
    try:
        raw = text.astype(bytes)
    except UnicodeEncodeError:
        return None
    if not len(raw) or not (np.strings.isdigit(raw).all() and np.strings.str_len(raw).max() <= 15):
        return None
    return raw.astype(np.int64)


def _grouping_factor(spec: ModelSpec, group: str, codes_levels, frame: FloatPredictors | pd.DataFrame,
                     formulaic_specs: dict | None = None) -> GroupingFactor:
    codes, levels = codes_levels
    terms: list[Term] = []
    blocks: list[tuple[Term, ...]] = []
    for r in spec.random:
        if r.group == group:
            repeated = [t for t in r.terms if t in terms]
            if repeated:
                raise FormulaError(f"The random term {term_name(repeated[0])!r} appears twice for {group!r}.")
            terms += r.terms
            blocks.append(r.terms)
    Z, names, _, coding = _design_matrix(terms, frame, f"random effects for {group!r}")
    if formulaic_specs is not None:
        formulaic_specs[group] = coding
    columns_of = _columns_of_terms(terms, names)
    block_columns = tuple(tuple(i for t in block for i in columns_of[t]) for block in blocks)
    return GroupingFactor(name=group, codes=codes, levels=levels, Z=Z, coef_names=names, blocks=block_columns)


def _nesting(factors: tuple[GroupingFactor, ...]) -> dict[str, str | None]:
    """For each factor, the factor it is directly nested in: of the factors each of its groups sits in one
    group of, the one with most groups (classes in schools in districts: classes -> schools -> districts)."""
    parents: dict[str, str | None] = {}
    for inner in factors:
        candidates = [outer for outer in factors if outer is not inner and outer.n_groups < inner.n_groups
                      and _is_nested(inner.codes, outer.codes, inner.n_groups)]
        parents[inner.name] = max(candidates, key=lambda f: f.n_groups).name if candidates else None
    return parents


def _is_nested(inner: np.ndarray, outer: np.ndarray, n_inner: int) -> bool:
    pairs = np.unique(inner * (outer.max() + 1) + outer)
    return len(pairs) == n_inner


# --- centering --------------------------------------------------------------------------------------

def _apply_centering(frame: pd.DataFrame, spec: ModelSpec, group_codes, grand_means: dict) -> pd.DataFrame:
    """Centre the columns ``spec.centering`` names; records each grand mean used in ``grand_means``."""
    if not spec.centering and not spec.group_means:
        return frame
    frame = frame.copy()
    for column, group in spec.group_means:
        codes = _codes_for(group, group_codes, f"group_means[{column!r}]")
        frame[f"mean_{column}"] = _numeric(frame, column).groupby(codes).transform("mean").to_numpy()
    for c in spec.centering:
        values = _numeric(frame, c.column)
        if c.how == "group":
            codes = _codes_for(c.group, group_codes, f"center[{c.column!r}]")
            if _constant_within(values, codes):
                raise DataError(f"center[{c.column!r}] = {c.how!r}: {c.column!r} takes one value in each group, so "
                                "centring it on its group means leaves zeros (it is a group-level variable). "
                                "Centre it on the grand mean ('grand') or leave it uncentred.")
            frame[c.column] = values - values.groupby(codes).transform("mean").to_numpy()
        else:
            grand_means[c.column] = _grand_mean(values, group_codes)
            frame[c.column] = values - grand_means[c.column]
    return frame


def _grand_mean(values: pd.Series, group_codes) -> float:
    """Mean over rows; for a variable constant within the groups of a factor, the mean over those groups
    (as HLM centres level-2 predictors, e.g. MEAN SES in R&B 2002, Table 4.5)."""
    for codes, _ in group_codes.values():
        if _constant_within(values, codes):
            return float(values.groupby(codes).first().mean())
    return float(values.mean())


def _codes_for(group: str | None, group_codes, what: str) -> np.ndarray:
    if group is None:
        if len(group_codes) != 1:
            raise OptionError(f"{what}: say which grouping factor to use, e.g. 'group:school' "
                              f"(the model has {', '.join(group_codes) or 'no grouping factors'}).")
        group = next(iter(group_codes))
    if group not in group_codes:
        raise OptionError(f"{what}: {group!r} is not a grouping factor of the model."
                          f"{closest_names(group, group_codes)}")
    return group_codes[group][0]


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    if not pd.api.types.is_numeric_dtype(values):
        raise DataError(f"Column {column!r} must be numeric to be centred; it has type {values.dtype}.")
    return values.astype(float)


# --- fixed effects ------------------------------------------------------------------------------------

def _right_hand_side(terms: list[Term]) -> str:
    return " + ".join(["1" if INTERCEPT in terms else "0"] + [":".join(t) for t in terms if t != INTERCEPT])


def _design_matrix(terms: list[Term], numbers: FloatPredictors | pd.DataFrame, what: str):
    """X or a factor's Z as :func:`_model_matrix` returns it: by NumPy when every factor is a plain numeric
    column (:func:`_plain_matrix`), else by formulaic."""
    if isinstance(numbers, pd.DataFrame):
        numbers = FloatPredictors(numbers)
    plain = _plain_matrix(terms, numbers, what)
    return plain if plain is not None else _model_matrix(terms, numbers.frame(), what)


@functools.lru_cache(maxsize=512)
def formulaic_terms(rhs: str) -> tuple[tuple[str, ...], ...]:
    """The terms of a right-hand side in formulaic's column order (by degree), each as its factors' text;
    ``("1",)`` is the intercept."""
    return tuple(tuple(str(f) for f in term.factors) for term in formulaic.Formula(rhs))


def _plain_matrix(terms: list[Term], numbers: FloatPredictors, what: str):
    """The model matrix of terms made of plain columns only, built as formulaic builds it, without formulaic's
    per-call cost; None when any factor is something else.

    Column order and names come from :func:`formulaic_terms`; the intercept is 1.0, an interaction of numeric
    columns the product of its columns in term order. A text column is allowed as a main effect beside the
    intercept and in no interaction: formulaic then codes it by treatment contrasts, one 0/1 column per
    category after the first (categories in sorted order), named ``column[T.category]``.
    """
    factors = {f for t in terms for f in t}
    columns = {f: numbers.plain_column(f) for f in factors}
    categories = {}
    for f in [f for f, c in columns.items() if c is None]:
        if INTERCEPT not in terms or any(f in t for t in terms if t != (f,)):
            return None
        categories[f] = numbers.text_codes(f)
        if categories[f] is None:
            return None
    rhs = _right_hand_side(terms)
    ordered = formulaic_terms(rhs)
    blocks, names, slices = [], [], {}
    for term in ordered:
        start = len(names)
        if term == ("1",):
            blocks.append(np.ones((len(numbers.source), 1)))
            names.append("(Intercept)")
        elif len(term) == 1 and term[0] in categories:
            codes, levels = categories[term[0]]
            blocks.append((codes[:, None] == np.arange(1, len(levels))).astype(float))
            names += [f"{term[0]}[T.{level}]" for level in levels[1:]]
        else:
            blocks.append(functools.reduce(np.multiply, (columns[f] for f in term))[:, None])
            names.append(":".join(term))
        slices[":".join(term)] = slice(start, len(names))
    values = np.hstack(blocks) if blocks else np.empty((len(numbers.source), 0))
    names = tuple(names)
    _check_finite_matrix(values, names, what)
    data = {f: columns[f] if columns[f] is not None else numbers.columns[f].to_numpy() for f in sorted(factors)}
    return values, names, slices, DeferredModelSpec(rhs, data)


class DeferredModelSpec:
    """formulaic's model spec of a matrix built by :func:`_plain_matrix`, made from the same columns
    (``data``: name -> values) on first use, for predictions on new data: fits that never predict skip it."""

    def __init__(self, rhs: str, data: dict[str, np.ndarray]):
        self.rhs = rhs
        self.data = data

    @functools.cached_property
    def model_spec(self):
        return formulaic.model_matrix(self.rhs, pd.DataFrame(self.data), na_action="raise",
                                      context=FORMULAIC_CONTEXT).model_spec

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("rhs", "data", "model_spec"):
            raise AttributeError(name)  # copying and unpickling look attributes up before __init__ ran
        return getattr(self.model_spec, name)


def _model_matrix(terms: list[Term], frame: pd.DataFrame, what: str):
    rhs = _right_hand_side(terms)
    try:
        # a fixed namespace (data columns, formulaic's transforms, sqrt/abs), not this module's variables
        matrix = formulaic.model_matrix(rhs, frame, na_action="raise", context=FORMULAIC_CONTEXT)
    except (FormulaicError, ValueError, TypeError, NameError) as err:
        raise FormulaError(f"Cannot build the {what} from {rhs!r}: {str(err).splitlines()[0]}") from None
    names = tuple("(Intercept)" if n == "Intercept" else str(n) for n in matrix.columns)
    if not np.issubdtype(matrix.to_numpy().dtype, np.number):
        raise DataError(f"The {what} contain non-numeric values; convert text columns to categories.")
    slices = {str(t): s for t, s in matrix.model_spec.term_slices.items()}
    values = np.ascontiguousarray(matrix.to_numpy(dtype=float))
    _check_finite_matrix(values, names, what)
    return values, names, slices, matrix.model_spec


def _check_finite_matrix(values: np.ndarray, names: tuple[str, ...], what: str) -> None:
    infinite = ~np.isfinite(values)
    if infinite.any():  # finite data, but an expression overflowed (exp(x * 1000), I(x**400), x:y:z)
        column = names[int(np.flatnonzero(infinite.any(axis=0))[0])]
        rows = describe_rows(np.flatnonzero(infinite.any(axis=1)))
        raise DataError(f"The {what} column {column!r} is infinite in {rows} of the analysed rows: its expression "
                        "overflows. Rescale the variable inside the expression "
                        "(e.g. exp(x / 1000)) or add the transformed column to the data.")


def _columns_of_terms(terms: list[Term], names: tuple[str, ...]) -> dict[Term, list[int]]:
    """Column positions produced by each term (a categorical term may produce several columns)."""
    out: dict[Term, list[int]] = {}
    for t in terms:
        if t == INTERCEPT:
            out[t] = [names.index("(Intercept)")]
            continue
        stem = ":".join(t)
        out[t] = [i for i, n in enumerate(names) if n == stem or _same_term(n, t)]
    return out


def _same_term(column: str, term: Term) -> bool:
    parts = column.split(":")
    return len(parts) == len(term) and all(p == f or p.startswith(f + "[") for p, f in zip(parts, term))


def same_name_stem(column: str, coefficient: str) -> bool:
    """Whether a fixed-effect column may carry a level-2 predictor of a random coefficient, by name: the
    coefficient is the intercept, or one of the parts of the column's interaction name (``ses`` in ``ses:sector``).
    A guard against columns that are proportional to Z_q by coincidence."""
    return coefficient == "(Intercept)" or coefficient in column.split(":") or column == coefficient


def _fixed_matrix(spec: ModelSpec, frame: FloatPredictors | pd.DataFrame, formulaic_specs: dict | None = None):
    if not spec.fixed:
        raise FormulaError("The model has no fixed effects; write at least '1' (an intercept) on the right of '~'.")
    X, names, slices, coding = _design_matrix(list(spec.fixed), frame, "fixed effects")
    term_of_column: list[tuple[str, ...]] = [()] * len(names)
    by_key = {frozenset(t): t for t in spec.fixed}
    for label, cols in slices.items():
        key = frozenset() if label == "1" else frozenset(label.split(":"))
        for i in range(cols.start, cols.stop):
            term_of_column[i] = by_key.get(key, tuple(label.split(":")))
    if formulaic_specs is not None:
        formulaic_specs["fixed"] = coding
    return X, names, tuple(term_of_column)


def _check_fixed_matrix(X: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Refuse constant or collinear columns; returns the R factor of X (X = QR) for later checks."""
    columns = np.asfortranarray(X)  # NumPy reduces a tall C-ordered array along axis 0 several times slower
    check_constant_columns(columns.max(axis=0) - columns.min(axis=0), names)
    R = r_factor(X)
    check_rank(R, X.shape[0], names)
    return R


def check_constant_columns(ptp: np.ndarray, names: tuple[str, ...]) -> None:
    """Refuse non-intercept columns with zero range (``ptp``) when the model has an intercept."""
    constant = [n for n, r in zip(names, ptp) if n != "(Intercept)" and r == 0]
    if constant and "(Intercept)" in names:
        raise DataError(f"Fixed-effect column(s) {constant} are constant among the analysed rows, so they "
                        "duplicate the intercept. Remove them from the formula.")


def check_rank(R: np.ndarray, n_rows: int, names: tuple[str, ...]) -> None:
    """Refuse a rank-deficient fixed-effects matrix, given its R factor (numpy.linalg.matrix_rank's
    tolerance on the singular values: largest x max(N, p) x machine epsilon), after centring the columns
    (:func:`_centred_columns`), so a predictor's location (x + 1e8) does not decide the rank."""
    p = R.shape[1]
    R = _centred_columns(R, n_rows, names)
    s = np.linalg.svd(R, compute_uv=False)
    rank = int(np.sum(s > s.max() * max(n_rows, p) * np.finfo(float).eps))
    if rank < p:
        raise DataError(f"Fixed-effect columns {_collinear_columns(R, n_rows, names)} are perfectly collinear (the "
                        f"design has rank {rank} < {p} columns): one is a linear combination of the "
                        "others. Remove one of them.")


def _centred_columns(R: np.ndarray, n_rows: int, names: tuple[str, ...]) -> np.ndarray:
    """The R factor of X A, with A centring every column but the intercept on its mean: X A = Q (R A), the
    means from R'R = X'X (the intercept's row / n). Without an intercept, R itself."""
    if "(Intercept)" not in names:
        return R
    c = names.index("(Intercept)")
    A = np.eye(R.shape[1])
    A[c] -= (R.T @ R[:, c]) / n_rows
    A[c, c] = 1.0
    return R @ A


def _collinear_columns(R: np.ndarray, n_rows: int, names: tuple[str, ...]) -> list[str]:
    """Columns taking part in an exact linear dependence (from the null space of X, via its R factor)."""
    norms = np.linalg.norm(R, axis=0)  # the column norms of X
    _, s, vt = np.linalg.svd(R / np.maximum(norms, 1e-300), full_matrices=False)
    null = vt[s < s.max() * n_rows * np.finfo(float).eps * 10]
    if not len(null):  # a column tiny beside the others (rank-deficient only before scaling): the unscaled
        _, s, vt = np.linalg.svd(R, full_matrices=False)  # direction of the smallest singular value
        null = vt[[np.argmin(s)]]
    involved = np.flatnonzero(np.abs(null).max(axis=0) > 1e-8)
    return [names[i] for i in involved]


# --- level-1 error structure -------------------------------------------------------------------------

def _residual_design(spec: ModelSpec, frame: pd.DataFrame, factors, nesting, *,
                     labels: pd.DataFrame) -> ResidualDesign | None:
    """The level-1 error structure; variance categories are named from ``labels`` (the columns before integer
    predictors became floats, so category 0 reads '0', not '0.0')."""
    r = spec.residual
    if r is None:
        return None
    if spec.known_variance is not None:
        raise OptionError("A model with known level-1 variances (known_variance=...) has no level-1 variance to "
                          "model: drop level1_variance / correlation, or drop known_variance.")
    errors = level1_errors(r)  # refuses a correlation structure that is not registered
    strata = strata_levels = C = time = unit = None
    C_names: tuple[str, ...] = ()
    if r.variance_by:
        strata, strata_levels = sorted_codes(labels[r.variance_by].astype(str), r.variance_by)
        if len(strata_levels) < 2:
            raise DataError(f"level1_variance={r.variance_by!r}: the column takes one value ({strata_levels[0]!r}) "
                            "among the analysed rows, so there is only one level-1 variance. Drop the option.")
    if r.variance_formula:
        matrix, names, _, _ = _model_matrix([(r.variance_formula,)], frame, "log-linear level-1 variance model")
        keep = [i for i, n in enumerate(names) if n != "(Intercept)"]
        C, C_names = matrix[:, keep], tuple(names[i] for i in keep)
        constant = [n for n, col in zip(C_names, C.T) if np.ptp(col) == 0]
        if constant:
            raise DataError(f"level1_variance='~ {r.variance_formula}': {constant} constant among the analysed "
                            "rows, so it duplicates alpha_0 (the log of the reference variance). Remove it.")
    if r.correlation:
        chain = nesting_chain(factors, nesting)
        if not chain:
            raise OptionError(f"correlation={r.correlation!r} needs one chain of nested grouping factors (errors "
                              "are correlated within the innermost one); this model's factors are crossed.")
        unit = chain[0]
        time = _occasions(frame, r, unit, errors.correlation)
    return ResidualDesign(structure=r, strata=strata, strata_levels=strata_levels, C=C, C_names=C_names,
                          time=time, unit=None if unit is None else unit.name)


def _occasions(frame: pd.DataFrame, r, unit: GroupingFactor, correlation) -> np.ndarray:
    """The time of each row, checked: numeric, distinct within each unit, and usable by the correlation
    structure (AR(1): integer occasions)."""
    values = frame[r.time]
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise DataError(f"time={r.time!r} must be numeric (occasion numbers or ages); it has type {values.dtype}.")
    t = values.to_numpy(dtype=float)
    correlation.check_times(t, r.time)
    pairs = pd.DataFrame({"unit": unit.codes, "t": t})
    repeated = pairs.duplicated()
    if repeated.any():
        first = int(np.flatnonzero(repeated.to_numpy())[0])
        raise DataError(f"time={r.time!r} repeats within {unit.name} {unit.levels[unit.codes[first]]!r} "
                        f"(time {t[first]:g} occurs more than once): AR(1) errors need one row per occasion and "
                        f"{unit.name}. Check the time column or the grouping factor.")
    return t


# --- known variances and level checks -----------------------------------------------------------------

# A known variance below this fraction of the outcome's variance is numerically zero: its weight 1/v swamps
# every other study's in double precision (1e-12 of the variance is 1e-6 of the outcome's spread in SD units).
NEGLIGIBLE_KNOWN_VARIANCE = 1e-12


def _known_variance(spec: ModelSpec, frame: pd.DataFrame | Columns, y: np.ndarray) -> np.ndarray | None:
    if spec.known_variance is None:
        return None
    column = spec.known_variance
    values = frame[column]
    if not pd.api.types.is_numeric_dtype(values):
        raise DataError(f"The known-variance column {column!r} must be numeric; it has type {values.dtype}.")
    v = values.to_numpy(dtype=float)
    bad = np.flatnonzero(v <= 0)
    if len(bad):
        raise DataError(f"The known sampling variances in {column!r} must be positive; {describe_rows(bad)} "
                        f"have values <= 0 (e.g. {v[bad[0]]:g}). A variance of 0 would make that study's "
                        "effect exact; check the column (is it a standard error that needs squaring?).")
    spread = float(np.var(y))  # an outcome too large to square is refused later with its own message
    tiny = np.flatnonzero(v < NEGLIGIBLE_KNOWN_VARIANCE * spread) if np.isfinite(spread) else []
    if len(tiny):
        raise DataError(f"The known sampling variances in {column!r} are numerically zero in {describe_rows(tiny)} "
                        f"(e.g. {v[tiny[0]]:g}, against an outcome variance of {spread:g}): those effects would count "
                        "as exact and swamp every other row. Check the column's units (variances, not standard errors "
                        "or precisions), or drop those rows.")
    return v


def _term_levels(spec: ModelSpec, frame: pd.DataFrame | Columns, factors, nesting) -> dict[str, int]:
    """The level each formula factor varies at: 1 within the innermost groups, 2 between them, 3 above."""
    chain = nesting_chain(factors, nesting)
    levels: dict[str, int] = {}
    for factor in dict.fromkeys(f for t in spec.fixed for f in t):
        variables = factor_variables(factor) & set(frame.columns)
        level = 1
        for depth, f in enumerate(chain, start=2):
            if all(_constant_within(frame[v], f.codes) for v in variables):
                level = depth
            else:
                break
        levels[factor] = level
    return levels


def _constant_within(values: pd.Series | np.ndarray, codes: np.ndarray) -> bool:
    """True when ``values`` take one value in each group (compared with each group's first value)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        numbers = values
    else:
        numbers = pd.factorize(values)[0] if not pd.api.types.is_numeric_dtype(values) else values.to_numpy()
    first = np.empty(codes.max() + 1, dtype=numbers.dtype)
    first[codes[::-1]] = numbers[::-1]  # the last write per group is its first row
    return bool(np.array_equal(numbers, first[codes]))


def _check_level_predictors(spec: ModelSpec, frame: pd.DataFrame | Columns, group_codes) -> None:
    for factor, group in spec.level_predictors:
        codes = group_codes.get(group, (None,))[0]
        if codes is None:
            continue
        for variable in sorted(factor_variables(factor) & set(frame.columns)):
            counts = frame[variable].groupby(codes).nunique(dropna=False)
            varying = np.flatnonzero(counts.to_numpy() > 1)
            if len(varying):
                labels = group_codes[group][1]
                raise DataError(
                    f"{variable!r} is used as a predictor at the level of {group!r} but varies within "
                    f"{len(varying)} of its {len(counts)} groups (e.g. group {labels[varying[0]]!r} has "
                    f"{counts.iloc[varying[0]]} different values). Use its group mean "
                    f"(group_means=[{variable!r}]) or move it to the level-1 equation."
                )
