"""Four levels (pupils in classes in schools in districts): the design links each factor to the one it sits
directly in, the likelihood engine fits the chain with its nested solver and matches lme4
(tests/reference/lme4_fourlevel.json and the simulated data fourlevel.csv, both written by make_fourlevel.R),
the Dask path accepts the chain, and the Bayesian engine integrates all three factors out.

Tolerances as in test_likelihood.py: criterion 1e-6 relative; fixed effects, SEs, variances 1e-4 relative.
"""

import json
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.bayes.build import build_model
from bayeshlm.bayes.priors import resolve_priors
from bayeshlm.likelihood.fit import ProfiledDeviance
from bayeshlm.likelihood.nested import NestedSolver

REFERENCE = Path(__file__).parent / "reference"
FORMULA = "y ~ x + w + (1 | district) + (x | school) + (1 | class)"


@pytest.fixture(scope="module")
def data():
    return pd.read_csv(REFERENCE / "fourlevel.csv")


@pytest.fixture(scope="module")
def model(data):
    return bh.HLM(FORMULA, data)


def test_each_factor_is_linked_to_the_factor_it_sits_directly_in(model):
    design = model.design
    assert design.nesting == {"district": None, "school": "district", "class": "school"}
    assert [f.name for f in design.chain] == ["class", "school", "district"]
    assert design.structure == "nested"
    assert isinstance(ProfiledDeviance(design, "reml").solver, NestedSolver)


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_four_level_fit_matches_lme4(model, method):
    ref = json.loads((REFERENCE / "lme4_fourlevel.json").read_text())[method]
    fit = model.fit(method)
    assert fit.converged
    assert fit.deviance == pytest.approx(ref["criterion"], rel=1e-6)
    names = list(ref["fixef"])
    fe = fit.fixed_effects.loc[names]
    np.testing.assert_allclose(fe["estimate"], [ref["fixef"][n] for n in names], rtol=1e-4)
    np.testing.assert_allclose(fe["se"], [ref["se"][n] for n in names], rtol=1e-4)
    assert fit.tau["district"].iloc[0, 0] == pytest.approx(ref["tau_district"], rel=1e-4)
    assert fit.tau["class"].iloc[0, 0] == pytest.approx(ref["tau_class"], rel=1e-4)
    np.testing.assert_allclose(fit.tau["school"].to_numpy(), ref["T_school"], rtol=1e-4, atol=1e-6)
    assert fit.sigma2 == pytest.approx(ref["sigma2"], rel=1e-4)


def test_four_level_chain_from_dask_matches_pandas(model, data):
    out_of_core = bh.HLM(FORMULA, dd.from_pandas(data, npartitions=4))
    assert out_of_core.design.nesting == model.design.nesting
    a, b = model.fit("reml"), out_of_core.fit("reml")
    assert b.deviance == pytest.approx(a.deviance, rel=1e-10)
    # Dask sums the partitions in another order, so the sufficient statistics differ in the last bits and
    # the optimiser stops a few 1e-8 away (relative) along the flat direction of the criterion
    np.testing.assert_allclose(b.fixed_effects["estimate"], a.fixed_effects["estimate"], rtol=1e-6)


def test_bayes_integrates_the_whole_chain(model):
    design = model.design
    _, info = build_model(design, resolve_priors(design, None))
    assert info.route == "marginal"
    assert info.chain == ("class", "school", "district") and info.sampled == ()
    assert info.kernel is None  # three integrated factors: the PyMC graph, not the compiled kernel
