"""The NumPy path for plain numeric columns (design.build._plain_matrix) builds the designs formulaic builds.

Each formula is built twice, with the fast path and with it switched off (every matrix by formulaic), and
the designs must agree exactly: X, every Z, column names, the spec term of each column, the REML estimates
(to 1e-12) and predictions for new data through the deferred formulaic model spec.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.design import build
from bayeshlm.errors import DataError

FORMULAS = [
    "y ~ x + (1 | g)",  # numeric, random intercept
    "y ~ x + (x | g)",  # random slope
    "y ~ x * z + (x | g)",  # interaction
    "y ~ z:x + x:w:z + (1 | g)",  # interactions written out of formulaic's order; three-way product
    "y ~ 0 + x + z + (0 + x | g)",  # no intercepts
    "y ~ k + b + (1 + k | g)",  # integer and boolean columns (read as float64)
    "y ~ x + C(k) + (1 | g)",  # a categorical beside a numeric: formulaic builds X, NumPy builds Z
    "y ~ x + cat + (x | g)",  # a text column (NumPy: treatment contrasts)
    "y ~ x + cat + word + (1 + cat | g)",  # two text columns, one also in Z; categories in formulaic's order
    "y ~ x * cat + (1 | g)",  # a text column in an interaction (formulaic)
    "y ~ 0 + cat + x + (1 | g)",  # a text column without intercept (formulaic: full dummy coding)
    "y ~ log(w) + I(x**2) + center(z) + (x || g)",  # transforms, uncorrelated random terms
    "y ~ x + f32 + (1 | g) + (1 | h)",  # float32 (left to formulaic), crossed factors
    "y ~ x + (1 | h/g)",  # nested factors
]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n, J = 240, 12
    g = rng.integers(0, J, n)
    x, z = rng.normal(size=n), rng.normal(size=n)
    data = pd.DataFrame({
        "g": g, "h": rng.integers(0, 5, n), "x": x, "z": z, "w": rng.uniform(1, 3, n),
        "k": rng.integers(0, 4, n).astype(np.int16), "b": rng.random(n) < 0.4,
        "cat": rng.choice(["a", "b", "c"], n), "f32": rng.normal(size=n).astype(np.float32),
        "word": pd.Series(rng.choice(["b", "B", "a10", "a2", "Z z"], n), dtype=object),
    })
    data["y"] = 1 + 0.5 * x - 0.3 * z + rng.normal(size=J)[g] + rng.normal(size=J)[g] * x + rng.normal(size=n)
    data.loc[[3, 50], "x"] = np.nan  # rows dropped for missing values
    data.loc[[9], "y"] = np.nan
    return data


def _build(formula: str, data: pd.DataFrame, fast: bool, monkeypatch) -> bh.HLM:
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(build, "_plain_matrix", lambda *args, **kwargs: None)
        return bh.HLM(formula, data)


@pytest.mark.parametrize("formula", FORMULAS)
def test_fast_path_builds_formulaics_design(formula, frame, monkeypatch):
    fast, slow = _build(formula, frame, True, monkeypatch), _build(formula, frame, False, monkeypatch)
    a, b = fast.design, slow.design
    assert a.n_obs == b.n_obs < len(frame)  # rows with missing values dropped
    np.testing.assert_array_equal(a.dropped.positions, b.dropped.positions)
    assert a.fixed_names == b.fixed_names and a.fixed_terms == b.fixed_terms
    np.testing.assert_array_equal(a.X, b.X)
    assert a.factor_names == b.factor_names
    for fa, fb in zip(a.factors, b.factors):
        assert fa.coef_names == fb.coef_names and fa.blocks == fb.blocks
        np.testing.assert_array_equal(fa.Z, fb.Z)
        np.testing.assert_array_equal(fa.codes, fb.codes)
    np.testing.assert_array_equal(a.y, b.y)
    fit_a, fit_b = fast.fit("reml"), slow.fit("reml")
    assert abs(fit_a.deviance - fit_b.deviance) <= 1e-12 * abs(fit_b.deviance)
    np.testing.assert_allclose(fit_a.theta, fit_b.theta, rtol=1e-12, atol=1e-12)
    # new data are coded by the (deferred) model specs as by formulaic's own
    newdata = frame.dropna().iloc[:25]
    np.testing.assert_allclose(fit_a.predict(newdata)["estimate"], fit_b.predict(newdata)["estimate"],
                               rtol=1e-12, atol=1e-12)


def test_fast_path_used_only_for_plain_numeric_columns(frame):
    plain = bh.HLM("y ~ x * z + k + b + cat + (x | g)", frame).design.coding
    assert isinstance(plain.fixed, build.DeferredModelSpec) and isinstance(plain.random["g"], build.DeferredModelSpec)
    mixed = bh.HLM("y ~ x + cat + f32 + log(w) + (1 | g)", frame).design.coding
    assert not isinstance(mixed.fixed, build.DeferredModelSpec)
    assert isinstance(mixed.random["g"], build.DeferredModelSpec)


def test_deferred_spec_is_formulaics_spec(frame):
    """The spec made from the first row codes other rows as a spec learned from all rows does."""
    import formulaic

    model = bh.HLM("y ~ x:z + k + word + (x | g)", frame)
    deferred = model.design.coding.fixed
    numbers = build.float_predictors(frame.dropna(), model.spec)
    full = formulaic.model_matrix(deferred.rhs, numbers).model_spec
    assert deferred.term_slices.keys() == full.term_slices.keys()
    np.testing.assert_array_equal(deferred.get_model_matrix(numbers.iloc[40:80]).to_numpy(),
                                  full.get_model_matrix(numbers.iloc[40:80]).to_numpy())
    np.testing.assert_array_equal(deferred.get_model_matrix(numbers).to_numpy(), model.design.X)


def test_fast_path_refuses_an_overflowing_product():
    data = pd.DataFrame({"y": np.arange(8.0) % 3, "x": [1e200] * 7 + [1.0], "z": [1e200] * 8,
                         "g": [0, 0, 1, 1, 2, 2, 3, 3]})
    with pytest.raises(DataError, match="'x:z' is infinite"):
        bh.HLM("y ~ x:z + (1 | g)", data)


def test_a_pd_na_string_column_is_refused_at_fit_as_prediction_would_refuse_it():
    """pandas' "string" dtype (missing value pd.NA) is what formulaic cannot code for new data; the NumPy path
    built it and the fit went through, then predict() failed. Both paths now refuse it at the fit."""
    rng = np.random.default_rng(3)
    data = pd.DataFrame({"y": rng.normal(size=60), "g": np.repeat(np.arange(6), 10),
                         "s": pd.Series(rng.choice(["u", "v"], 60), dtype="string")})
    with pytest.raises(DataError, match="non-numeric values"):
        bh.HLM("y ~ s + (1 | g)", data)
    data["s"] = data["s"].astype(str)  # pandas' default text dtype: the NumPy path, and predictions work
    fit = bh.HLM("y ~ s + (1 | g)", data).fit("reml")
    assert fit.predict(data.head(4))["estimate"].notna().all()
