"""The rows to predict, coded as the fitted design was: the fitted rows themselves, or new data whose fixed and
random-effect columns are built by the fit's own column coding (formulaic's model specs kept in
:class:`~bayeshlm.design.design.ColumnCoding`: categorical levels, contrasts, the grand means centred on), each
row's group matched per grouping factor against the fitted groups (-1: a group the fit did not see)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from formulaic.errors import DataMismatchWarning, FormulaicError

from ..errors import DataError, OptionError, closest_names, describe_rows
from .build import factor_variables, float_predictors, group_labels


@dataclass(frozen=True)
class PredictionRows:
    """The rows to predict: X (m, p), each factor's Z (m, q) and group codes (m,) into the fitted groups
    (-1: a group the fit did not see), the new groups' labels, and the rows' index labels."""

    X: np.ndarray
    Z: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    index: pd.Index

    @property
    def n(self) -> int:
        return self.X.shape[0]

    def new_groups(self) -> np.ndarray:
        """Per row, the factors whose group is new, as text ('' when every group is known)."""
        names = [np.where(codes < 0, name, "") for name, codes in self.codes.items()]
        return np.array([", ".join(n for n in row if n) for row in zip(*names)], dtype=object) if names else \
            np.full(self.n, "", dtype=object)


def prediction_rows(design, newdata: pd.DataFrame | None) -> PredictionRows:
    """X, Z and group codes of the fitted rows (``newdata=None``) or of ``newdata``, coded as the fit was."""
    if not design.rows_available:
        raise OptionError("This model was built from aggregates (a Dask DataFrame), which keep no rows: there are "
                          "no fitted values, residuals or per-row predictions to compute. Build the model from a "
                          "pandas DataFrame to predict.")
    if newdata is None:
        labels = {f.name: np.asarray(f.levels)[f.codes] for f in design.factors}
        return PredictionRows(X=design.X, Z={f.name: f.Z for f in design.factors},
                              codes={f.name: f.codes for f in design.factors}, labels=labels,
                              index=design.row_labels)
    return _new_rows(design, newdata)


def _new_rows(design, newdata) -> PredictionRows:
    spec, coding = design.spec, design.coding
    if coding is None:
        raise OptionError("This fit keeps the numbers of its design but not how its columns were coded (it was "
                          "loaded from a file, or built from aggregates), so it cannot code new data. Rebuild the "
                          "model with bayeshlm.HLM and refit to predict for new data; fit.predict() without "
                          "newdata predicts the fitted rows.")
    if not isinstance(newdata, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame; got {type(newdata).__name__}.")
    if len(newdata) == 0:
        raise DataError("newdata is empty (0 rows): there is nothing to predict.")
    if spec.group_means or any(c.how == "group" for c in spec.centering):
        raise OptionError("This model centres columns on their group means (center='group' or group_means), which "
                          "new data cannot reproduce without their groups' other rows. Compute the centred and "
                          "group-mean columns in the data before fitting; then predict with those columns.")
    variables = set()
    for term in spec.fixed + tuple(t for r in spec.random for t in r.terms):
        for factor in term:
            variables |= factor_variables(factor)
    variables |= {c for r in spec.random for c in r.group_columns}
    absent = sorted(v for v in variables if v not in newdata.columns)
    if absent:
        hints = " ".join(f"{name!r} is missing.{closest_names(name, newdata.columns)}" for name in absent)
        raise DataError(f"newdata lacks columns the model uses: {hints} newdata has columns: "
                        f"{', '.join(map(str, newdata.columns))}.")
    used = sorted(variables)
    missing = newdata[used].isna()
    if missing.any(axis=None):
        rows = np.flatnonzero(missing.any(axis=1).to_numpy())
        columns = [c for c in used if missing[c].any()]
        raise DataError(f"newdata has missing values in {', '.join(map(repr, columns))} ({describe_rows(rows)}, "
                        "0-based positions): a prediction needs every predictor and group label. Fill them in or "
                        "drop those rows.")
    frame = newdata.copy()
    for column, mean in coding.grand_means.items():
        frame[column] = frame[column].astype(float) - mean
    numbers = float_predictors(frame, spec)
    X = _coded_matrix(coding.fixed, numbers, design.fixed_names, "fixed effects")
    Z, codes, labels = {}, {}, {}
    for f in design.factors:
        term = next(r for r in spec.random if r.group == f.name)
        Z[f.name] = _coded_matrix(coding.random[f.name], numbers, f.coef_names, f"random effects for {f.name!r}")
        labels[f.name] = group_labels(frame, term).astype(str).to_numpy()
        codes[f.name] = f.levels.get_indexer(labels[f.name])
    return PredictionRows(X=X, Z=Z, codes=codes, labels=labels, index=newdata.index)


def _coded_matrix(model_spec, numbers: pd.DataFrame, names, what: str) -> np.ndarray:
    """The model matrix of ``numbers`` by a fitted model spec; a category the fit did not see is refused (formulaic
    would code it as zeros with a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataMismatchWarning)
        try:
            matrix = model_spec.get_model_matrix(numbers, na_action="raise")
        except DataMismatchWarning:
            raise DataError(_unseen_levels(model_spec, numbers, what)) from None
        except (FormulaicError, ValueError, TypeError, NameError) as err:
            raise DataError(f"Cannot build the {what} for newdata: {str(err).splitlines()[0]}") from None
    values = matrix.to_numpy(dtype=float)
    if values.shape[1] != len(names):  # a safeguard: the fitted spec always gives the fitted columns
        raise DataError(f"newdata gives {values.shape[1]} columns for the {what}; the fit has {len(names)}.")
    return values


def _unseen_levels(model_spec, numbers: pd.DataFrame, what: str) -> str:
    problems = []
    for factor, (_, state) in model_spec.encoder_state.items():
        categories = state.get("categories") if isinstance(state, dict) else None
        if categories is None:
            continue
        for column in sorted(factor_variables(factor) & set(numbers.columns)):
            unseen = sorted({str(v) for v in numbers[column].unique() if v not in set(categories)})
            if unseen:
                problems.append(f"column {column!r} ({factor}) has {', '.join(map(repr, unseen))}, not among the "
                                f"fitted categories {', '.join(map(repr, map(str, categories)))}")
    detail = "; ".join(problems) or "a categorical predictor has a category the fit did not see"
    return (f"newdata cannot be coded like the fitted data ({what}): {detail}. The model has no coefficient for an "
            "unseen category; predict only rows whose categories were in the fitted data.")
