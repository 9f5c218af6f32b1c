"""Fitting from a multi-partition Dask DataFrame gives the in-memory numbers (issue 7).

The per-group sufficient statistics Dask adds up from partitions equal the in-memory ones to rounding; the
REML fits then agree to the optimiser's own tolerance (one model whose optimiser path is identical is held
to 1e-10)."""

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh

dd = pytest.importorskip("dask.dataframe")


@pytest.fixture(scope="module")
def hsb():
    return bh.datasets.load("hsb")


@pytest.fixture(scope="module")
def three_level():
    rng = np.random.default_rng(7)
    K, per_school, n = 20, 5, 10
    J = K * per_school
    school = np.repeat(np.arange(K), per_school * n)
    klass = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    y = (1 + 0.5 * x + rng.normal(size=K)[school] + 0.7 * rng.normal(size=J)[klass]
         + 0.3 * rng.normal(size=J)[klass] * x + rng.normal(size=J * n))
    frame = pd.DataFrame({"y": y, "x": x, "kind": rng.choice(["a", "b", "c"], size=J * n), "school": school,
                          "klass": klass, "w": rng.normal(size=K)[school]})
    frame.loc[[3, 50, 700], "x"] = np.nan
    return frame


def _relative(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.nanmax(np.abs(a - b) / np.maximum(np.abs(a), 1e-12))


def _pair(formula, frame, partitions=5, **options):
    return bh.HLM(formula, frame, **options), bh.HLM(formula, dd.from_pandas(frame, npartitions=partitions), **options)


def test_hsb_table_4_5_from_dask_matches_pandas(hsb):
    memory, out_of_core = _pair("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb)
    assert not out_of_core.design.rows_available
    a, b = memory.fit("reml"), out_of_core.fit("reml")
    assert _relative(a.deviance, b.deviance) < 1e-10
    columns = ["estimate", "se", "df", "p"]
    assert _relative(a.fixed_effects[columns], b.fixed_effects[columns]) < 1e-10
    assert _relative(a.tau["school"], b.tau["school"]) < 1e-10
    assert _relative(a.sigma2, b.sigma2) < 1e-10
    assert (a.group_effects().index == b.group_effects().index).all()
    assert _relative(a.group_effects(), b.group_effects()) < 1e-9
    assert _relative(a.ols_group_estimates(), b.ols_group_estimates()) < 1e-10
    assert _relative(a.reliability(), b.reliability()) < 1e-10
    assert b.fixed_effects["robust_se"].isna().all()  # needs rows


def test_group_centring_and_group_means_from_dask(hsb):
    memory, out_of_core = _pair("mathach ~ ses + mean_ses + sector + (ses | school)", hsb, partitions=3,
                                center={"ses": "group"}, group_means=["ses"])
    a, b = memory.fit("ml"), out_of_core.fit("ml")
    assert _relative(a.fixed_effects["estimate"], b.fixed_effects["estimate"]) < 1e-8
    assert _relative(a.deviance, b.deviance) < 1e-10


@pytest.mark.parametrize("formula", ["y ~ x + kind + w + (x | klass) + (1 | school)", "y ~ x*w + (1 | school/klass)"])
def test_three_level_chain_and_missing_values(three_level, formula):
    memory, out_of_core = _pair(formula, three_level, partitions=7)
    assert out_of_core.design.dropped.count == 3 and out_of_core.design.term_levels == memory.design.term_levels
    chain = memory.design.chain
    cp_a = memory.design.chain_crossproducts(chain)
    cp_b = out_of_core.design.chain_crossproducts(chain)
    for s_a, s_b in zip(cp_a.stats + [cp_a.top], cp_b.stats + [cp_b.top]):
        assert np.allclose(s_a, s_b, rtol=1e-12, atol=1e-12 * np.abs(s_a).max())
    for p_a, p_b in zip(cp_a.parents, cp_b.parents):
        assert np.array_equal(p_a, p_b)
    a, b = memory.fit("reml"), out_of_core.fit("reml")
    assert _relative(a.deviance, b.deviance) < 1e-10
    # the optimiser stops at the same optimum up to its tolerance (gradient 1e-9 x |criterion|)
    assert _relative(a.fixed_effects["estimate"], b.fixed_effects["estimate"]) < 1e-6
    for name in memory.design.factor_names:
        assert _relative(a.tau[name], b.tau[name]) < 1e-5
        assert np.abs(a.group_effects(name).to_numpy() - b.group_effects(name).to_numpy()).max() < 1e-6


def test_grand_mean_centring_and_categories(hsb):
    memory, out_of_core = _pair("mathach ~ ses + C(minority) + (1 | school)", hsb, center={"ses": "grand"})
    assert memory.design.fixed_names == out_of_core.design.fixed_names
    a, b = memory.fit("reml"), out_of_core.fit("reml")
    assert _relative(a.deviance, b.deviance) < 1e-10
    assert _relative(a.fixed_effects["estimate"], b.fixed_effects["estimate"]) < 1e-6


def test_crossed_and_row_level_requests_are_refused_clearly(three_level):
    ddf = dd.from_pandas(three_level, npartitions=4)
    with pytest.raises(bh.DataError, match="crossed .* needs the full data"):
        bh.HLM("y ~ x + (1 | school) + (1 | kind)", ddf)
    model = bh.HLM("y ~ x + (1 | school)", ddf)
    with pytest.raises(bh.errors.RowsUnavailableError, match="needs the individual rows"):
        _ = model.design.X
    with pytest.raises(bh.FormulaError, match="center="):
        bh.HLM("y ~ center(x) + (1 | school)", ddf)
    with pytest.raises(bh.DataError, match="Missing values in x"):
        bh.HLM("y ~ x + (1 | school)", ddf, missing="raise")


@pytest.mark.sampling
@pytest.mark.filterwarnings("ignore::bayeshlm.bayes.SamplingWarning")
@pytest.mark.parametrize("case", ["two-level", "three-level"])
def test_bayes_from_dask_matches_pandas_with_the_same_seed(hsb, three_level, case):
    """Same seed, same compiled graph: the draws differ only by the rounding of the summed statistics,
    amplified a little along the NUTS trajectories."""
    if case == "two-level":
        memory, out_of_core = _pair("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb)
    else:
        memory, out_of_core = _pair("y ~ x + w + (1 | school/klass)", three_level, partitions=7)
    options = {"draws": 50, "tune": 50, "chains": 2, "random_seed": 11}
    a, b = memory.fit("bayes", **options), out_of_core.fit("bayes", **options)
    assert b.sampler["route"] == "marginal"
    post_a, post_b = a.posterior["posterior"], b.posterior["posterior"]
    for name in ["beta", "sigma", *(f"tau_{f}" for f in memory.design.factor_names)]:
        assert np.allclose(post_a[name].values, post_b[name].values, rtol=1e-4, atol=1e-6), name
    for name in memory.design.factor_names:
        assert np.allclose(a.group_effects(name).to_numpy(), b.group_effects(name).to_numpy(), rtol=1e-4, atol=1e-5)
