"""The bad-input catalogue, continued from test_design_errors.py: each awkward input gets a clear error naming
the column, rows or option and what to do -- or is handled correctly and reported. No sampling: option
errors are raised before any model is compiled."""

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(4), 5)
    return pd.DataFrame({"y": rng.normal(size=20) + rng.normal(size=4)[g], "x": rng.normal(size=20),
                         "g": [f"s{k}" for k in g], "v": np.full(20, 0.3)})


# --- data ----------------------------------------------------------------------------------------------------
def test_text_in_a_numeric_predictor_is_located(data):
    data["x"] = data["x"].astype(object)
    data.loc[3, "x"] = "n/a"
    with pytest.raises(bh.DataError, match=r"Column 'x' is text, but 19 of its 20 values are numbers; not numbers: "
                                           r"'n/a' in row 3 .*pandas.to_numeric.*C\(x\)"):
        bh.HLM("y ~ x + (1 | g)", data)


def test_numbers_stored_as_text_are_refused_unless_marked_categorical(data):
    with pytest.raises(bh.DataError, match=r"Column 'x' is text, but 20 of its 20 values are numbers"):
        bh.HLM("y ~ x + (1 | g)", data.assign(x=data["x"].round(1).astype(str)))
    grade = data.assign(grade=np.tile(["1", "2", "3", "4", "5"], 4))
    assert bh.HLM("y ~ C(grade) + (1 | g)", grade).design.n_fixed == 5


def test_groups_of_size_one_are_fitted_and_reported(data):
    lonely = pd.concat([data, pd.DataFrame({"y": [0.3], "x": [0.1], "g": ["alone"], "v": [0.3]})],
                       ignore_index=True)
    model = bh.HLM("y ~ x + (1 | g)", lonely)
    assert "5 groups; size 1-5" in model.summary()
    fit = model.fit()
    assert fit.group_effects().shape[0] == 5 and np.isfinite(fit.tau["g"].iloc[0, 0])


@pytest.mark.filterwarnings("ignore::bayeshlm.likelihood.BoundaryFitWarning")  # the note two groups get
def test_two_groups_only_are_fitted(data):
    two = data[data["g"].isin(["s0", "s1"])]
    fit = bh.HLM("y ~ x + (1 | g)", two).fit()
    assert fit.design.factors[0].n_groups == 2 and np.isfinite(fit.fixed_effects["se"]).all()
    assert "2 groups" in fit.design.summary()


def test_outcome_constant_within_every_group_is_refused(data):
    data["y"] = data["g"].map({"s0": 1.0, "s1": 2.0, "s2": 3.0, "s3": 5.0})
    with pytest.raises(bh.DataError, match=r"'y' is constant within every group of 'g' \(zero within-group "
                                           r"variance across 4 groups\).*analyse one row per group"):
        bh.HLM("y ~ 1 + (1 | g)", data)


def test_one_row_per_group_with_known_variances_is_a_meta_analysis(data):
    studies = data.groupby("g", as_index=False).first()
    assert bh.HLM("y ~ 1 + (1 | g)", studies, known_variance="v").fit().design.n_obs == 4


def test_known_variance_given_as_an_array_names_what_to_do(data):
    for values in (np.ones(3), np.ones(len(data))):
        with pytest.raises(bh.OptionError, match=r"known_variance takes the name of a data column; got a ndarray.*"
                                                 r"data.assign\(v=variances\)"):
            bh.HLM("y ~ 1 + (1 | g)", data, known_variance=values)


def test_known_variance_column_with_text_or_missing_values(data):
    with pytest.raises(bh.DataError, match="known-variance column 'v' must be numeric"):
        bh.HLM("y ~ 1 + (1 | g)", data.assign(v="0.3"), known_variance="v")
    data.loc[[0, 9], "v"] = np.nan
    dropped = bh.HLM("y ~ 1 + (1 | g)", data, known_variance="v").design.dropped
    assert str(dropped) == "2 of 20 rows dropped for missing values in: v (2); 18 rows analysed"


def test_grouping_column_with_nan_is_dropped_and_counted(data):
    data.loc[[2, 7, 11], "g"] = np.nan
    design = bh.HLM("y ~ x + (1 | g)", data).design
    assert design.dropped.count == 3 and list(design.dropped.positions) == [2, 7, 11]
    assert "g (3)" in str(design.dropped) and design.n_obs == 17


def test_boolean_outcome_is_refused(data):
    with pytest.raises(bh.DataError, match="outcome 'y' must be numeric; its column has type bool"):
        bh.HLM("y ~ x + (1 | g)", data.assign(y=data["y"] > 0))


# --- options -------------------------------------------------------------------------------------------------
def test_misspelt_prior_name_lists_the_valid_names(data):
    with pytest.raises(bh.OptionError, match=r"no parameter 'sigmaa'.*Did you mean 'sigma'\? Valid names: beta, "
                                             r"\(Intercept\), x, sigma, tau_g"):
        bh.HLM("y ~ x + (1 | g)", data).fit("bayes", priors={"sigmaa": 1.0})


@pytest.mark.parametrize("option, value", [
    ("draws", 0), ("draws", -5), ("draws", "many"), ("chains", 0), ("chains", 1.5), ("tune", -1),
])
def test_impossible_draws_and_chains(data, option, value):
    with pytest.raises(bh.OptionError, match=rf"{option}={value!r}: give a positive whole number"):
        bh.HLM("y ~ x + (1 | g)", data).fit("bayes", **{option: value})


def test_unknown_sampler_and_bayes_option(data):
    model = bh.HLM("y ~ x + (1 | g)", data)
    with pytest.raises(bh.OptionError, match="sampler='stan': use 'nutpie' \\(default\\) or 'pymc'"):
        model.fit("bayes", sampler="stan")
    with pytest.raises(bh.OptionError, match="Unknown option 'n_draws' for method='bayes'. Did you mean 'draws'"):
        model.fit("bayes", n_draws=10)


def test_unknown_and_impossible_likelihood_options(data):
    model = bh.HLM("y ~ x + (1 | g)", data)
    with pytest.raises(bh.OptionError, match="Unknown option 'maxiters' for method='ml'. Did you mean 'maxiter'"):
        model.fit("ml", maxiters=10)
    for value in ("lots", -3, 0):
        with pytest.raises(bh.OptionError, match=rf"maxiter={value!r}: give a positive whole number"):
            model.fit("reml", maxiter=value)
    with pytest.raises(bh.OptionError, match=r"start=\[nan\] holds non-finite values"):
        model.fit("reml", start=[np.nan])
    with pytest.raises(bh.OptionError, match="start must hold 1 values of theta"):
        model.fit("reml", start=[1.0, 2.0])
