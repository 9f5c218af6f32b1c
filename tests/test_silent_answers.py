"""Inputs that used to give a wrong answer without a word (issue 21): each now gives the right number or a
clear bayeshlm error."""

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh


def _two_level(seed=0, groups=30, size=10):
    rng = np.random.default_rng(seed)
    n = groups * size
    df = pd.DataFrame({"g": np.repeat(np.arange(groups), size), "x": rng.normal(size=n)})
    df["y"] = df["x"] + np.repeat(rng.normal(size=groups), size) + rng.normal(size=n)
    return df


# --- integer and boolean predictor columns ---------------------------------------------------------------

@pytest.fixture(scope="module")
def small_integers():
    rng = np.random.default_rng(1)
    df = _two_level(1)
    df["a"] = rng.integers(100, 255, len(df)).astype("uint8")
    df["b"] = rng.integers(100, 255, len(df)).astype("uint8")
    df["h"] = rng.integers(200, 400, len(df)).astype("int16")
    df["flag"] = rng.random(len(df)) < 0.4
    return df


def test_uint8_product_and_int16_square_are_computed_in_float(small_integers):
    df = small_integers
    X = bh.HLM("y ~ a:b + I(h**2) + (1 | g)", df).design.X
    # in the columns' own types a*b wraps modulo 256 and h**2 overflows int16 (> 32767)
    np.testing.assert_array_equal(X[:, 1], df["h"].to_numpy(float) ** 2)
    np.testing.assert_array_equal(X[:, 2], df["a"].to_numpy(float) * df["b"].to_numpy(float))


def test_integer_columns_through_dask_match_pandas(small_integers):
    dd = pytest.importorskip("dask.dataframe")
    formula = "y ~ a:b + I(h**2) + (1 | g)"
    as_floats = small_integers.astype({"a": float, "b": float, "h": float})
    expected = bh.HLM(formula, as_floats).fit("reml").fixed_effects["estimate"]
    out_of_core = bh.HLM(formula, dd.from_pandas(small_integers, npartitions=3)).fit("reml").fixed_effects
    np.testing.assert_allclose(out_of_core["estimate"], expected, rtol=1e-6)


def test_boolean_predictor_is_a_zero_one_column_everywhere(small_integers):
    df = small_integers
    design = bh.HLM("y ~ flag + flag:a + I(flag * h) + (1 | g)", df).design
    values = dict(zip(design.fixed_names, design.X.T))
    flag = df["flag"].to_numpy(float)
    np.testing.assert_array_equal(values["flag"], flag)
    np.testing.assert_array_equal(values["flag:a"], flag * df["a"].to_numpy(float))
    np.testing.assert_array_equal(values["I(flag * h)"], flag * df["h"].to_numpy(float))


def test_integer_column_inside_C_keeps_its_category_labels(small_integers):
    df = small_integers.assign(k=np.arange(len(small_integers)) % 3)
    names = bh.HLM("y ~ C(k) + (1 | g)", df).design.fixed_names
    assert names == ("(Intercept)", "C(k)[T.1]", "C(k)[T.2]")


# --- degrees of freedom of a categorical random slope -----------------------------------------------------

def test_df_of_a_categorical_random_slope_is_J_minus_S_minus_1(hsb):
    fit = bh.HLM("mathach ~ C(female) + (C(female) | school)", hsb).fit("reml")
    # the female slope is random over J = 160 schools with no level-2 predictor: df = 160 - 0 - 1 (R&B eq. 3.83)
    assert fit.fixed_effects.loc["C(female)[T.1]", "df"] == 159
    assert fit.fixed_effects.loc["(Intercept)", "df"] == 159


def test_df_of_a_categorical_level2_predictor_of_a_random_slope(hsb):
    fit = bh.HLM("mathach ~ C(sector) * cses + (cses | school)", hsb).fit("reml")
    # two fixed effects in the cses equation (cses, C(sector)[T.1]:cses): df = 160 - 1 - 1
    assert fit.fixed_effects.loc["C(sector)[T.1]:cses", "df"] == 158
    assert fit.fixed_effects.loc["cses", "df"] == 158


# --- a model without grouping factor ----------------------------------------------------------------------

def test_model_without_random_term_is_refused_at_construction():
    with pytest.raises(bh.FormulaError, match=r"no grouping factor.*\(1 \| group\).*least squares"):
        bh.HLM("y ~ x", _two_level())


def test_known_variance_model_without_random_term_points_to_meta():
    df = _two_level().assign(v=0.2)
    with pytest.raises(bh.FormulaError, match=r"no grouping factor.*bayeshlm\.meta\('y ~ 1 \+ x', data, vi='v'\)"):
        bh.HLM("y ~ x", df, known_variance="v")


# --- variance explained against a base fitted to other data --------------------------------------------------

@pytest.fixture(scope="module")
def hsb_means(hsb):
    return bh.HLM("mathach ~ meanses + (1 | school)", hsb).fit("reml")


def test_variance_explained_accepts_a_base_on_the_same_data(hsb, hsb_means):
    base = bh.HLM("mathach ~ 1 + (1 | school)", hsb).fit("reml")
    table = hsb_means.variance_explained(base)
    assert table.loc["school: (Intercept)", "proportion_explained"] == pytest.approx(0.69, abs=0.01)  # R&B p. 74


@pytest.mark.parametrize("change, message", [
    (lambda d: d.iloc[: len(d) // 2], r"it analyses 3\d{3} rows, this model 7185"),
    (lambda d: d.assign(mathach=d["mathach"].sample(frac=1, random_state=0).to_numpy()), "other rows or other values"),
    (lambda d: d.assign(meanses=d["meanses"].where(d.index != 5)), "it analyses 7184 rows"),
    (lambda d: d.assign(school=d["school"].where(d["school"] != "1224", "1288")), "groups of 'school' differ"),
])
def test_variance_explained_refuses_a_base_fitted_to_other_data(hsb, hsb_means, change, message):
    base = bh.HLM("mathach ~ meanses + (1 | school)", change(hsb)).fit("reml")
    with pytest.raises(bh.OptionError, match=rf"compares two models of the same data.*{message}"):
        hsb_means.variance_explained(base)


def test_variance_explained_refuses_another_outcome(hsb, hsb_means):
    base = bh.HLM("ses ~ 1 + (1 | school)", hsb).fit("reml")
    with pytest.raises(bh.OptionError, match="its outcome is 'ses', not 'mathach'"):
        hsb_means.variance_explained(base)


# --- level-1 variance strata ----------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", [np.nan, None])
def test_missing_level1_variance_category_is_dropped_not_a_stratum(missing):
    df = _two_level(2)
    df["wave"] = pd.Series(np.where(np.arange(len(df)) % 2 == 0, "early", "late"), dtype=object)
    df.loc[df.index % 7 == 0, "wave"] = missing
    design = bh.HLM("y ~ x + (1 | g)", df, level1_variance="wave").design
    assert list(design.residual.strata_levels) == ["early", "late"]
    assert design.n_obs == len(df) - 43 and design.dropped.by_column == {"wave": 43}


# --- variances the data cannot identify ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def groups20():
    rng = np.random.default_rng(0)
    df = _two_level(0, groups=20, size=8)
    df["h"] = df["g"] * 7 + 100  # the same groups under other labels
    df["c"] = 1.0
    df["x2"] = 1 - 2 * df["x"]
    df["w"] = np.repeat(rng.normal(size=20), 8)  # constant within each group
    df["t"] = np.tile(np.arange(8.0), 20)
    return df


@pytest.mark.parametrize("formula, error, message", [
    # the dummies take every group's deviation: tau used to stay at its start value (1.16 = sigma^2 here)
    ("y ~ x + C(g) + (1 | g)", bh.FormulaError, r"random intercept of 'g' is absorbed by the fixed effects"),
    ("y ~ t + C(g):t + (t | g)", bh.FormulaError, r"random slope on 't' of 'g' is absorbed"),
    # identical groupings: the variance used to be split 50/50 (0.5026 and 0.5026)
    ("y ~ x + (1 | g/g)", bh.FormulaError, r"'g:g' and 'g' put the rows in the same 20 groups"),
    ("y ~ x + (1 | g) + (1 | h)", bh.FormulaError, r"'g' and 'h' put the rows in the same 20 groups"),
    # a constant random slope duplicates the intercept; a level-2 variable has no slope within a group
    ("y ~ x + (c | g)", bh.FormulaError, r"column\(s\) \['c'\] of 'g' are constant over all analysed rows"),
    ("y ~ x + (x + x2 | g)", bh.FormulaError, r"columns of 'g' \(\(Intercept\), x, x2\) are collinear over all rows"),
    ("y ~ x + (w | g)", bh.FormulaError, r"'w' does not vary within any group of 'g'"),
])
def test_unidentifiable_variances_are_refused(groups20, formula, error, message):
    with pytest.raises(error, match=message):
        bh.HLM(formula, groups20)


def test_constant_random_slope_is_refused_for_dask_input(groups20):
    dd = pytest.importorskip("dask.dataframe")
    data = dd.from_pandas(groups20, npartitions=2)
    with pytest.raises(bh.FormulaError, match=r"\['c'\] of 'g' are constant over all analysed rows"):
        bh.HLM("y ~ x + (c | g)", data)
    with pytest.raises(bh.FormulaError, match=r"'w' does not vary within any group of 'g'"):
        bh.HLM("y ~ x + (w | g)", data)
    assert bh.HLM("y ~ x + (t | g)", data).design.n_obs == 160


def test_outcome_exactly_linear_in_the_fixed_part_is_refused(groups20):
    # sigma^2 used to be reported as 4.5e-15
    with pytest.raises(bh.DataError, match=r"'exact' is an exact function of the fixed effects.*level-1 variance is 0"):
        bh.HLM("exact ~ x + (1 | g)", groups20.assign(exact=2 + 3 * groups20["x"]))
    # a group shift plus a group-specific slope, no noise: also nothing left for sigma^2
    shifted = groups20.assign(exact=groups20["g"] ** 2 + (1 + groups20["g"] / 10) * groups20["t"])
    with pytest.raises(bh.DataError, match="exact function"):
        bh.HLM("exact ~ t + (t | g)", shifted)


def test_exact_fit_check_on_leading_groups_then_all(groups20, monkeypatch):
    monkeypatch.setattr(bh.design.identify, "SAMPLE_ROWS", 16)  # the first two groups are tried first
    exact = groups20.assign(exact=2 + 3 * groups20["x"])
    with pytest.raises(bh.DataError, match="exact function"):
        bh.HLM("exact ~ x + (1 | g)", exact)
    # exact in the leading groups only: the whole data still have level-1 residuals
    late_noise = exact["exact"] + np.where(exact["g"] >= 10, rng_noise(exact), 0.0)
    assert bh.HLM("exact ~ x + (1 | g)", exact.assign(exact=late_noise)).design.n_obs == 160


def test_identifiable_neighbours_are_accepted(groups20):
    df = groups20
    bh.HLM("y ~ x + w + (1 | g)", df)  # a level-2 predictor in the fixed part
    bh.HLM("y ~ x + (0 + w | g)", df)  # a rescaled random intercept alone
    bh.HLM("y ~ x + C(g) + (0 + t | g)", df.assign(y=df["y"] + rng_noise(df) * df["t"]))  # fixed intercepts
    # a tiny but real level-1 noise on a large between-group spread is kept
    quiet = df.assign(y=1e3 * df["w"] + 2 * df["x"] + 1e-4 * rng_noise(df))
    assert bh.HLM("y ~ x + (1 | g)", quiet).design.n_obs == len(df)
    # known variances: a single row per study is a meta-analysis, not an exact fit
    studies = pd.DataFrame({"d": [0.1, 0.3, -0.2, 0.5], "v": 0.04, "study": list("abcd")})
    bh.HLM("d ~ 1 + (1 | study)", studies, known_variance="v")


def rng_noise(df):
    return np.random.default_rng(5).normal(size=len(df))


def test_noise_free_outcome_from_dask_input_is_refused_by_the_likelihood_engine():
    """Per-group sums cannot show an exact fit row by row; the fitted level-1 variance of 0 does (was sigma^2 NaN
    with NaN standard errors reported as a fit)."""
    dd = pytest.importorskip("dask.dataframe")
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    frame = pd.DataFrame({"y": 1 + 2 * x, "x": x, "g": np.repeat(np.arange(20), 10).astype(str)})
    with pytest.raises(bh.DataError, match=r"'y' is an exact function of the fixed effects .* level-1 variance is 0"):
        bh.HLM("y ~ x + (1 | g)", dd.from_pandas(frame, npartitions=2)).fit("reml")


@pytest.mark.parametrize("formula", ["y ~ C(g) + (1 | g)", "y ~ C(g) + (x | g)"])
def test_random_intercept_absorbed_by_group_dummies_is_refused_from_dask_input(formula):
    """The per-group sums show the absorption as the rows do (was tau 1.79, the optimiser's start, from Dask)."""
    dd = pytest.importorskip("dask.dataframe")
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    frame = pd.DataFrame({"y": rng.normal(size=200) + x, "x": x, "g": np.repeat(np.arange(20), 10).astype(str)})
    with pytest.raises(bh.FormulaError, match=r"random intercept of 'g' is absorbed by the fixed effects"):
        bh.HLM(formula, dd.from_pandas(frame, npartitions=2))
    bh.HLM("y ~ x + (1 | g)", dd.from_pandas(frame, npartitions=2))  # without the dummies: accepted


def test_identical_groupings_from_dask_input_are_named_as_such():
    """Two factors with the same groups were refused as 'crossed', which they are not."""
    dd = pytest.importorskip("dask.dataframe")
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(20), 10).astype(str)
    frame = pd.DataFrame({"y": rng.normal(size=200), "g": g, "g2": np.char.add(g, "b")})
    with pytest.raises(bh.FormulaError, match=r"'g' and 'g2' put the rows in the same 20 groups"):
        bh.HLM("y ~ 1 + (1 | g) + (1 | g2)", dd.from_pandas(frame, npartitions=2))


def test_per_group_ols_is_refused_for_enclosing_and_crossed_factors():
    """Per-group OLS of schools (children inside) or of a crossed factor gave standard errors as if rows were
    independent; the innermost factor keeps R&B eq. 3.39."""
    eg = bh.datasets.load("egsingle")
    fit = bh.HLM("math ~ year + (1 | childid) + (1 | schoolid)", eg).fit("reml")
    with pytest.raises(bh.OptionError, match=r"defined for the innermost grouping factor .* 'schoolid' encloses"):
        fit.ols_group_estimates("schoolid")
    assert fit.ols_group_estimates("childid").shape[0] == 1721
    crossed = bh.HLM("attain ~ verbal + (1 | primary) + (1 | second)", bh.datasets.load("scotssec")).fit("reml")
    with pytest.raises(bh.OptionError, match=r"not defined for 'second' here: it is crossed with 'primary'"):
        crossed.ols_group_estimates("second")
