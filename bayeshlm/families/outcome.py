"""The outcome of a non-Gaussian model: successes and trials, counts and exposures, checked row by row.

lme4 writes a binomial outcome as ``cbind(successes, failures)``; this module reads the two forms lme4 users
write, ``cbind(s, f)`` and ``cbind(s, n - s)``, as plain column names (nothing is evaluated), and turns the
left side into the successes column plus the trials (``f + s`` or ``n``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import DataError, FormulaError, OptionError, closest_names, describe_rows
from .base import Family

_NAME = r"[A-Za-z_.][A-Za-z0-9_.]*"
_CBIND = re.compile(rf"^cbind\(\s*({_NAME})\s*,\s*({_NAME})\s*(?:-\s*({_NAME})\s*)?\)$")


@dataclass(frozen=True)
class Trials:
    """How the number of trials is found: the column ``total``, or ``successes + failures``."""

    successes: str
    failures: str | None = None
    total: str | None = None

    def columns(self) -> list[str]:
        return [c for c in (self.successes, self.failures, self.total) if c is not None]

    def values(self, frame: pd.DataFrame) -> np.ndarray:
        if self.total is not None:
            return frame[self.total].to_numpy(dtype=float)
        return frame[self.successes].to_numpy(dtype=float) + frame[self.failures].to_numpy(dtype=float)


def split_cbind(formula: str) -> tuple[str, Trials | None]:
    """``'cbind(s, n - s) ~ x'`` -> (``'s ~ x'``, Trials('s', total='n')); other formulas pass unchanged."""
    if not isinstance(formula, str) or "~" not in formula:
        return formula, None
    lhs, rhs = formula.split("~", 1)
    lhs = lhs.strip()
    if not lhs.startswith("cbind"):
        return formula, None
    match = _CBIND.match(lhs)
    if match is None:
        raise FormulaError(f"Cannot read the outcome {lhs!r}: write cbind(successes, failures) or "
                           "cbind(successes, trials - successes) with column names, or give the successes as "
                           "the outcome and trials='<column of trials>'.")
    successes, second, subtracted = match.groups()
    if subtracted is None:
        trials = Trials(successes, failures=second)
    elif subtracted == successes:
        trials = Trials(successes, total=second)
    else:
        raise FormulaError(f"In {lhs!r} the failures must be '{second} - {successes}' (trials minus the "
                           f"successes); '{second} - {subtracted}' subtracts another column.")
    return f"{successes} ~{rhs}", trials


@dataclass(frozen=True)
class Offset:
    """A known part of the linear predictor: the column itself, or its log (an exposure)."""

    column: str
    log: bool = True

    def values(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame[self.column].to_numpy(dtype=float)
        return np.log(x) if self.log else x


_OFFSET = re.compile(rf"offset\(\s*(?:log\(\s*({_NAME})\s*\)|({_NAME}))\s*\)")


def split_offset(formula: str) -> tuple[str, Offset | None]:
    """``'y ~ x + offset(log(t)) + (1 | g)'`` -> (``'y ~ x + (1 | g)'``, Offset('t')); ``offset(o)`` likewise.

    Only these two forms are read (column names, nothing evaluated); any other ``offset(...)`` is refused.
    """
    if not isinstance(formula, str) or "offset" not in formula or "~" not in formula:
        return formula, None
    lhs, rhs = formula.split("~", 1)
    matches = list(_OFFSET.finditer(rhs))
    if len(matches) != 1 or rhs.count("offset(") != 1:
        raise FormulaError(f"Cannot read the offset in {formula!r}: write one offset(log(column)) (an exposure) or "
                           "offset(column), with a column name; or pass exposure='<column>'.")
    match = matches[0]
    log_column, column = match.groups()
    before, after = rhs[:match.start()].rstrip(), rhs[match.end():].lstrip()
    if after and after[0] not in "+-":
        raise FormulaError(f"The offset in {formula!r} must be added as its own term ('+ offset(log(t))').")
    if before.endswith("+"):
        rest = before[:-1] + " " + after
    elif after.startswith("+") and not before.strip():
        rest = after[1:]
    elif not before.strip() and not after:
        rest = "1"
    else:
        raise FormulaError(f"The offset in {formula!r} must be added as its own term ('+ offset(log(t))').")
    return f"{lhs}~ {rest.strip()}", Offset(log_column or column, log=log_column is not None)


@dataclass(frozen=True, eq=False)
class GLMOutcome:
    """Per analysed row: the outcome y, the trials (1 unless binomial) and the offset log(exposure)."""

    family: Family
    y: np.ndarray
    size: np.ndarray
    offset: np.ndarray
    trials: Trials | None = None
    offset_term: Offset | None = None


def prepare_data(data: pd.DataFrame, outcome: str, family: Family, trials: Trials | None,
                 offset: Offset | None, missing: str) -> pd.DataFrame:
    """Check the outcome columns before the design is built; return the frame the design should read.

    Bool outcomes become 0/1. Rows missing a trials or exposure value are dropped (or refused with
    ``missing='raise'``) here, because the design does not know these columns.
    """
    if not isinstance(data, pd.DataFrame):
        return data  # the design explains what it needs
    if trials is not None and family.name != "binomial":
        raise OptionError(f"Trials (cbind(...) or trials=) belong to family='binomial'; this model has "
                          f"family={family.name!r}.")
    if family.name == "binomial" and trials is None:
        raise OptionError("family='binomial' needs the number of trials: write the outcome as "
                          "cbind(successes, failures) or pass trials='<column>'. For a 0/1 outcome use "
                          "family='bernoulli'.")
    extra = [c for c in (trials.columns() if trials else []) + ([offset.column] if offset else []) if c != outcome]
    for column in [outcome, *extra]:
        if column not in data.columns:
            raise DataError(f"Column {column!r} is not in the data.{closest_names(column, data.columns)}")
    frame = data
    missing_extra = data[extra].isna().any(axis=1).to_numpy() if extra else np.zeros(len(data), bool)
    if missing_extra.any():
        if missing == "raise":
            raise DataError(f"Missing values in {', '.join(map(repr, extra))} "
                            f"({describe_rows(np.flatnonzero(missing_extra))}); use missing='drop' to drop them.")
        frame = data.loc[~missing_extra]
    column = frame[outcome]
    if pd.api.types.is_bool_dtype(column):
        frame = frame.assign(**{outcome: column.astype(int)})
    elif not pd.api.types.is_numeric_dtype(column):
        levels = pd.unique(column.dropna())[:5]
        raise DataError(f"The outcome {outcome!r} holds text ({', '.join(map(repr, levels))}); a {family.name} "
                        f"outcome must be numeric. Say which value is the event, e.g. "
                        f"data[{outcome!r}] = (data[{outcome!r}] == {str(levels[-1]) if len(levels) else 'Y'!r})"
                        ".astype(int), or pass a bool column (True = the event).")
    positions = np.flatnonzero(~missing_extra)
    present = frame[outcome].notna().to_numpy()
    y = frame[outcome].to_numpy(dtype=float)[present]
    size = trials.values(frame)[present] if trials else np.ones(len(y))
    family.check_outcome(y, size, positions[present], outcome)
    if offset is not None:
        _check_offset(frame[offset.column], positions, offset)
    return frame


def _check_offset(values: pd.Series, positions: np.ndarray, offset: Offset) -> None:
    what = "exposure" if offset.log else "offset"
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise DataError(f"The {what} {offset.column!r} must be numeric; it has type {values.dtype}.")
    x = values.to_numpy(dtype=float)
    bad = ~(np.isfinite(x) & (x > 0)) if offset.log else ~np.isfinite(x)
    if bad.any():
        need = "positive and finite (its log is the offset)" if offset.log else "finite"
        raise DataError(f"The {what} {offset.column!r} must be {need}; it is not in {describe_rows(positions[bad])}.")


def count_all_dropped(design, data: pd.DataFrame, outcome_columns: list[str]):
    """The design's record of dropped rows, extended by the rows ``prepare_data`` dropped for missing trials or
    exposures (positions in ``data``), so that ``design.dropped`` describes the input the user gave."""
    import dataclasses

    if not isinstance(data, pd.DataFrame) or len(data) == design.dropped.n_input:
        return design
    missing_extra = data[outcome_columns].isna().any(axis=1).to_numpy()
    kept = np.flatnonzero(~missing_extra)
    positions = np.union1d(np.flatnonzero(missing_extra), kept[design.dropped.positions])
    by_column = dict(design.dropped.by_column)
    for column in outcome_columns:
        count = int(data[column].isna().sum())
        if count:
            by_column[column] = count
    dropped = dataclasses.replace(design.dropped, n_input=len(data), positions=positions, by_column=by_column)
    return dataclasses.replace(design, dropped=dropped)


def outcome_arrays(frame: pd.DataFrame, design, family: Family, trials: Trials | None,
                   offset: Offset | None) -> GLMOutcome:
    """The outcome, trials and offsets of the rows the design kept (``frame``: what the design read)."""
    kept = np.setdiff1d(np.arange(len(frame)), design.dropped.positions)
    rows = frame.iloc[kept]
    size = trials.values(rows) if trials else np.ones(len(kept))
    values = offset.values(rows) if offset else np.zeros(len(kept))
    return GLMOutcome(family, design.y, size, values, trials, offset)
