"""The Design: shapes, structure detection, sufficient statistics, centring, missing values."""

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh


def test_hsb_intercepts_and_slopes_design(hsb):
    design = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb).design
    assert design.n_fixed == 6
    assert design.fixed_names == ("(Intercept)", "meanses", "cses", "sector", "meanses:cses", "sector:cses")
    (school,) = design.factors
    assert school.name == "school" and school.n_groups == 160 and school.n_coef == 2
    assert school.coef_names == ("(Intercept)", "cses") and school.correlated
    assert design.structure == "single"
    assert design.term_levels == {"meanses": 2, "cses": 1, "sector": 2}
    assert school.group_sizes.min() == 14 and school.group_sizes.max() == 67


def test_egsingle_factors_are_nested(egsingle):
    design = bh.HLM("math ~ year + (year | childid) + (year | schoolid)", egsingle).design
    assert design.structure == "nested"
    assert design.nesting == {"childid": "schoolid", "schoolid": None}
    assert [f.name for f in design.chain] == ["childid", "schoolid"]
    assert [f.n_groups for f in design.factors] == [1721, 60]


def test_scotssec_factors_are_crossed(scotssec):
    design = bh.HLM("attain ~ verbal + sex + (1 | primary) + (1 | second)", scotssec).design
    assert design.structure == "crossed"
    assert design.nesting == {"primary": None, "second": None}
    assert design.chain == []


def test_nested_slash_builds_interaction_factor():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"batch": np.repeat(["a", "b", "c"], 6), "cask": np.tile(np.repeat([1, 2, 3], 2), 3),
                          "y": rng.normal(size=18)})
    design = bh.HLM("y ~ 1 + (1 | batch/cask)", frame).design
    assert design.factor_names == ("cask:batch", "batch")
    assert design.factor("cask:batch").n_groups == 9
    assert design.factor("cask:batch").levels[0] == "1:a"
    assert design.nesting["cask:batch"] == "batch"


def test_uncorrelated_terms_make_diagonal_blocks(sleepstudy):
    design = bh.HLM("Reaction ~ Days + (Days || Subject)", sleepstudy).design
    assert design.factors[0].blocks == ((0,), (1,))
    assert not design.factors[0].correlated


def test_crossproducts_equal_direct_sums(hsb):
    design = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb).design
    stats = design.crossproducts("school")
    school = design.factors[0]
    for j in (0, 57, 159):
        rows = school.codes == j
        Z, X, y = school.Z[rows], design.X[rows], design.y[rows]
        np.testing.assert_allclose(stats.ZtZ[j], Z.T @ Z, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats.ZtX[j], Z.T @ X, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats.Zty[j], Z.T @ y, rtol=1e-12, atol=1e-10)
        assert stats.n[j] == rows.sum()
    np.testing.assert_allclose(stats.XtX, design.X.T @ design.X, rtol=1e-12)
    assert stats.yty == pytest.approx(design.y @ design.y, rel=1e-12)


def test_known_variance_weights_the_crossproducts():
    data = bh.datasets.load("teacher_expectancy")
    design = bh.HLM("yi ~ weeks_c + (1 | study)", data, known_variance="vi").design
    stats = design.crossproducts("study")
    np.testing.assert_allclose(stats.Zty[:, 0], (data["yi"] / data["vi"]).to_numpy()[np.argsort(data["study"])])
    assert design.weights is not None and design.known_variance.shape == (19,)


def test_group_and_grand_mean_centring(hsb):
    model = bh.HLM("mathach ~ ses + mean_ses + (ses | school)", hsb,
                   center={"ses": "group", "mean_ses": "grand"}, group_means=["ses"])
    X = pd.DataFrame(model.design.X, columns=model.design.fixed_names)
    np.testing.assert_allclose(X["ses"], hsb["cses"], atol=1e-12)  # ses - school mean
    school_means = X.groupby(hsb["school"].to_numpy())["mean_ses"].first()
    assert school_means.mean() == pytest.approx(0.0, abs=1e-12)  # centred over schools, as HLM does
    assert school_means.std() == pytest.approx(hsb.groupby("school")["ses"].mean().std(), rel=1e-12)


def test_grand_mean_centring_of_a_level1_variable_uses_all_rows(hsb):
    model = bh.HLM("mathach ~ ses + (1 | school)", hsb, center={"ses": "grand"})
    assert model.design.X[:, 1].mean() == pytest.approx(0.0, abs=1e-12)


def test_missing_rows_are_dropped_and_reported(sleepstudy):
    frame = sleepstudy.copy()
    frame.loc[[3, 50, 51], "Reaction"] = np.nan
    frame.loc[[50, 90], "Days"] = np.nan
    design = bh.HLM("Reaction ~ Days + (Days | Subject)", frame).design
    assert design.n_obs == 176
    assert design.dropped.count == 4
    assert design.dropped.by_column == {"Days": 2, "Reaction": 3}
    assert list(design.dropped.positions) == [3, 50, 51, 90]
    assert "4 of 180 rows dropped for missing values in: Days (2), Reaction (3)" in str(design.dropped)
    assert "4 of 180 rows dropped" in design.summary()
    assert list(design.row_labels[:4]) == [0, 1, 2, 4]


def test_missing_values_in_unused_columns_do_not_drop_rows(sleepstudy):
    frame = sleepstudy.assign(unused=np.nan)
    assert bh.HLM("Reaction ~ Days + (1 | Subject)", frame).design.n_obs == 180


def test_categorical_predictors_expand_to_indicator_columns(scotssec):
    design = bh.HLM("attain ~ verbal + sex + (1 | primary)", scotssec).design
    assert design.fixed_names == ("(Intercept)", "verbal", "sex[T.M]")
    np.testing.assert_array_equal(design.X[:, 2], (scotssec["sex"] == "M").to_numpy(dtype=float))


def test_numeric_group_labels_sort_numerically():
    frame = pd.DataFrame({"g": [10, 2, 2, 10, 1, 1], "y": [1.0, 2, 3, 4, 5, 7]})
    factor = bh.HLM("y ~ 1 + (1 | g)", frame).design.factors[0]
    assert list(factor.levels) == ["1", "2", "10"]
    assert list(factor.codes) == [2, 1, 1, 2, 0, 0]
