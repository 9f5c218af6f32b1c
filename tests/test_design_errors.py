"""Bad input gets a clear, specific error: which column, which rows, what to do."""

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "y": rng.normal(size=12), "x": rng.normal(size=12), "w": np.repeat([0.0, 1.0, 0.0], 4),
        "g": np.repeat(["a", "b", "c"], 4), "v": np.full(12, 0.1),
    })


def test_unknown_column_suggests_the_closest_name(small):
    with pytest.raises(bh.DataError, match=r"'xx' is not a column\. Did you mean 'x'\?"):
        bh.HLM("y ~ xx + (1 | g)", small)


def test_unknown_grouping_column(small):
    with pytest.raises(bh.DataError, match="'group' is not a column"):
        bh.HLM("y ~ x + (1 | group)", small)


def test_random_slope_without_a_matching_column(small):
    with pytest.raises(bh.DataError, match="'z' is not a column"):
        bh.HLM("y ~ x + (z | g)", small)


def test_non_numeric_outcome(small):
    with pytest.raises(bh.DataError, match="outcome 'g' must be numeric"):
        bh.HLM("g ~ x + (1 | g)", small)


def test_missing_values_can_be_refused(small):
    small.loc[[2, 7], "x"] = np.nan
    with pytest.raises(bh.DataError, match=r"Missing values in x \(2 rows\): rows 2, 7"):
        bh.HLM("y ~ x + (1 | g)", small, missing="raise")


def test_missing_in_grouping_column_is_dropped_and_counted(small):
    small.loc[0, "g"] = None
    design = bh.HLM("y ~ x + (1 | g)", small).design
    assert design.dropped.by_column == {"g": 1} and design.n_obs == 11


def test_level2_predictor_varying_within_groups_is_refused(small):
    with pytest.raises(bh.DataError, match=r"'x' is used as a predictor at the level of 'g' but varies within 3 of"):
        bh.HLM.from_levels("y ~ 1", {"intercept": "~ x"}, groups="g", data=small)


def test_level2_predictor_constant_within_groups_is_accepted(small):
    assert bh.HLM.from_levels("y ~ 1", {"intercept": "~ w"}, groups="g", data=small).design.n_fixed == 2


def test_single_level_grouping_factor(small):
    with pytest.raises(bh.DataError, match="'g' has a single level"):
        bh.HLM("y ~ x + (1 | g)", small[small["g"] == "a"])


def test_collinear_fixed_effects_are_named(small):
    small["x2"] = 2 * small["x"]
    with pytest.raises(bh.DataError, match=r"\['x', 'x2'\] are perfectly collinear"):
        bh.HLM("y ~ x + x2 + (1 | g)", small)


def test_constant_fixed_effect_column_is_named(small):
    small["c"] = 3.0
    with pytest.raises(bh.DataError, match=r"\['c'\] are constant"):
        bh.HLM("y ~ x + c + (1 | g)", small)


def test_empty_data():
    with pytest.raises(bh.DataError, match="empty"):
        bh.HLM("y ~ x + (1 | g)", pd.DataFrame({"y": [], "x": [], "g": []}))


def test_all_rows_missing(small):
    small["x"] = np.nan
    with pytest.raises(bh.DataError, match="No rows are left"):
        bh.HLM("y ~ x + (1 | g)", small)


def test_infinite_values_are_located(small):
    small.loc[5, "x"] = np.inf
    with pytest.raises(bh.DataError, match="'x' has infinite values in row 5"):
        bh.HLM("y ~ x + (1 | g)", small)


def test_continuous_grouping_factor(small):
    with pytest.raises(bh.DataError, match="grouping factor 'x' holds non-integer numbers"):
        bh.HLM("y ~ 1 + (1 | x)", small)


def test_duplicated_column_names(small):
    frame = pd.concat([small, small[["x"]]], axis=1)
    with pytest.raises(bh.DataError, match=r"duplicated column names \['x'\]"):
        bh.HLM("y ~ x + (1 | g)", frame)


def test_constant_outcome(small):
    small["y"] = 1.0
    with pytest.raises(bh.DataError, match="outcome 'y' is constant"):
        bh.HLM("y ~ x + (1 | g)", small)


def test_non_positive_known_variances(small):
    small.loc[[1, 4], "v"] = [0.0, -0.2]
    with pytest.raises(bh.DataError, match=r"must be positive; rows 1, 4 have values <= 0"):
        bh.HLM("y ~ 1 + (1 | g)", small, known_variance="v")


def test_not_a_data_frame():
    with pytest.raises(bh.DataError, match="must be a pandas DataFrame; got dict"):
        bh.HLM("y ~ x + (1 | g)", {"y": [1.0], "x": [2.0], "g": ["a"]})


def test_bad_options(small):
    with pytest.raises(bh.OptionError, match="missing='skip' is not an option"):
        bh.HLM("y ~ x + (1 | g)", small, missing="skip")
    with pytest.raises(bh.OptionError, match="center\\['x'\\] = 'median'"):
        bh.HLM("y ~ x + (1 | g)", small, center={"x": "median"})
    with pytest.raises(bh.OptionError, match="Unknown method 'remll'. Did you mean 'reml'"):
        bh.HLM("y ~ x + (1 | g)", small).fit(method="remll")


def test_centring_a_text_column(small):
    with pytest.raises(bh.DataError, match="'g' must be numeric to be centred"):
        bh.HLM("y ~ x + (1 | g)", small, center={"g": "grand"})


def test_centring_the_outcome_is_refused(small):
    with pytest.raises(bh.OptionError, match=r"center\['y'\]: 'y' is the outcome"):
        bh.HLM("y ~ x + (1 | g)", small, center={"y": "grand"})
    with pytest.raises(bh.OptionError, match=r"center\['y'\]: 'y' is the outcome"):
        bh.HLM("y ~ x + (1 | g)", small, center={"y": "group"})


def test_centring_a_column_no_term_uses_is_refused(small):
    with pytest.raises(bh.OptionError, match=r"center\['w'\]: no term of the model uses 'w'"):
        bh.HLM("y ~ x + (1 | g)", small, center={"w": "grand"})
    with pytest.raises(bh.OptionError, match=r"no term of the model uses 'x' \(its group mean enters as mean_x"):
        bh.HLM("y ~ mean_x + (1 | g)", small, center={"x": "group"}, group_means=["x"])


def test_centring_the_outcome_is_refused_for_dask_input(small):
    dd = pytest.importorskip("dask.dataframe")
    with pytest.raises(bh.OptionError, match=r"'y' is the outcome"):
        bh.HLM("y ~ x + (1 | g)", dd.from_pandas(small, npartitions=2), center={"y": "grand"})


def test_float_group_ids_beyond_exact_integers_are_refused(small):
    ids = np.repeat([1.0, 2.0, 1e19, 2e19], 3)  # as int64, 1e19 and 2e19 both overflowed to -2^63 and merged
    with pytest.raises(bh.DataError, match=r"'g' holds IDs stored as floating-point numbers of 2\^53.*rows 6, 7"):
        bh.HLM("y ~ x + (1 | g)", small.assign(g=ids))
    exact = bh.HLM("y ~ x + (1 | g)", small.assign(g=np.repeat([1.0, 2.0, 3.0, 2.0**52], 3))).design
    assert exact.factors[0].n_groups == 4
