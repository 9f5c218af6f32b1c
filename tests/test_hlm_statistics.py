"""HLM statistics against Raudenbush & Bryk (2002), chapter 4, at the book's published estimates.

These check the formulas independently of any engine: the estimates are plugged in from the digest's
lme4 verification (REML), and the statistics must match the book's printed numbers.
"""

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.results import FitResult
from bayeshlm.results.base import residual_row, t_interval, variance_component_pairs, variance_components_frame


class PublishedEstimates(FitResult):
    """A FitResult holding given estimates (to test the statistics without an engine)."""

    method = "reml"

    def __init__(self, design, gamma, tau, sigma2):
        self.design = design
        coefs = list(design.factors[0].coef_names)
        self._fixed = pd.DataFrame({"estimate": gamma, "se": np.nan}, index=list(design.fixed_names))
        self._tau = {design.factors[0].name: pd.DataFrame(np.atleast_2d(tau), index=coefs, columns=coefs)}
        self._sigma2 = sigma2

    tau = property(lambda self: self._tau)
    sigma2 = property(lambda self: self._sigma2)
    vcov = property(lambda self: pd.DataFrame())

    def fixed_effects_at(self, level=0.95):  # not cached: the tests change the estimates in place
        return self._fixed_effects_table(level)

    def variance_components_at(self, level=0.95):
        return self._variance_components_table(level)

    def _fixed_effects_table(self, level):
        lower, upper = t_interval(self._fixed["estimate"], self._fixed["se"], level)
        return self._fixed.assign(lower=lower, upper=upper)

    def _variance_components_table(self, level):
        f = self.design.factors[0]
        T = self._tau[f.name].to_numpy()
        rows = [{"factor": f.name, "term": f.coef_names[b], "term2": f.coef_names[a], "estimate": T[a, b]}
                for b, a in variance_component_pairs(f)]
        rows.append(residual_row(self._sigma2, np.nan, np.nan, np.nan))
        return variance_components_frame(rows)

    def _group_table(self, kind, factor, level):
        raise NotImplementedError

    def report_sections(self):
        return []

    def describe_estimates(self):
        return "Numbers are published estimates."


@pytest.fixture(scope="module")
def ladder():
    hsb = bh.datasets.load("hsb")

    def fit(formula, gamma, tau, sigma2):
        return PublishedEstimates(bh.HLM(formula, hsb).design, gamma, tau, sigma2)

    return {
        "anova": fit("mathach ~ 1 + (1 | school)", [12.637], 8.614, 39.148),
        "means": fit("mathach ~ meanses + (1 | school)", [12.648, 5.864], 2.639, 39.157),
        "randcoef": fit("mathach ~ cses + (cses | school)", [12.636, 2.193], [[8.681, 0.047], [0.047, 0.694]],
                        36.700),
        "full": fit("mathach ~ meanses*cses + sector*cses + (cses | school)",
                    [12.095, 5.333, 2.939, 1.227, 1.039, -1.643], [[2.380, 0.192], [0.192, 0.101]], 36.721),
    }


def test_table_4_2_one_way_anova(ladder):
    fit = ladder["anova"]
    chi = fit.chi_square().loc["(Intercept)"]
    assert chi["chi2"] == pytest.approx(1660.2, abs=0.1) and chi["df"] == 159 and chi["groups_used"] == 160
    assert fit.icc() == pytest.approx(0.18, abs=0.005)
    assert fit.reliability().mean()["(Intercept)"] == pytest.approx(0.90, abs=0.005)
    pv = fit.plausible_values().loc["(Intercept)"]
    # the book computes 12.64 +/- 1.96 sqrt(8.61) from rounded estimates: 0.01 covers that rounding
    assert (pv["lower"], pv["upper"]) == pytest.approx((6.89, 18.39), abs=0.01)


def test_table_4_3_means_as_outcomes(ladder):
    fit = ladder["means"]
    chi = fit.chi_square().loc["(Intercept)"]
    assert chi["chi2"] == pytest.approx(633.52, abs=0.05) and chi["df"] == 158
    assert fit.reliability().mean()["(Intercept)"] == pytest.approx(0.74, abs=0.005)
    pv = fit.plausible_values().loc["(Intercept)"]
    assert (pv["lower"], pv["upper"]) == pytest.approx((9.47, 15.83), abs=0.01)
    explained = fit.variance_explained(ladder["anova"]).loc["school: (Intercept)", "proportion_explained"]
    assert explained == pytest.approx(0.69, abs=0.005)


def test_table_4_4_random_coefficients(ladder):
    fit = ladder["randcoef"]
    chi = fit.chi_square()
    assert chi.loc["(Intercept)", "chi2"] == pytest.approx(1771.0, abs=0.1)
    assert chi.loc["cses", "chi2"] == pytest.approx(213.46, abs=0.01)
    assert chi.loc["cses", "p"] == pytest.approx(0.003, abs=0.0005)
    lam = fit.reliability().mean()
    assert lam["(Intercept)"] == pytest.approx(0.908, abs=0.001)
    assert lam["cses"] == pytest.approx(0.26, abs=0.005)  # the book prints .23; the digest recomputes .26
    pv = fit.plausible_values().loc["cses"]
    assert (pv["lower"], pv["upper"]) == pytest.approx((0.56, 3.83), abs=0.01)  # book (0.57, 3.81) with tau 0.68
    explained = fit.variance_explained(ladder["anova"]).loc["level-1 (sigma^2)", "proportion_explained"]
    assert explained == pytest.approx(0.063, abs=0.001)
    with pytest.raises(bh.OptionError, match="random coefficients"):
        fit.icc()


def test_table_4_5_chi_square_degrees_of_freedom(ladder):
    chi = ladder["full"].chi_square()
    assert chi.loc["(Intercept)", "chi2"] == pytest.approx(605.00, abs=0.05)
    assert chi.loc["cses", "chi2"] == pytest.approx(162.22, abs=0.05)
    assert list(chi["df"]) == [157, 157]  # J - S_q - 1 with S_q = 2 level-2 predictors each


def test_report_has_the_hlm_sections(ladder):
    text = str(ladder["randcoef"].report())
    for section in ("Model (REML)", "Level 1:  mathach_ij = b0_j + b1_j*(cses)_ij + r_ij", "Fixed effects",
                    "Variance components", "Reliability of OLS coefficients (school", "Chi-square tests",
                    "Plausible-value ranges", "not one number"):
        assert section in text
    assert "0.9076" in text  # intercept reliability
    anova = str(ladder["anova"].report())
    assert "Intraclass correlation (school)\n-------------------------------\n0.180" in anova
    assert "### Fixed effects" in ladder["anova"].report()._repr_markdown_()


def test_compare_sets_fits_side_by_side(ladder):
    fit = ladder["randcoef"]
    other = PublishedEstimates(fit.design, [12.736, 2.193], [[8.0, 0.0], [0.0, 0.7]], 36.0)
    other._fixed["se"] = 0.2
    fit._fixed["se"] = [0.25, 0.13]
    table = bh.compare(fit, other, names=["book", "other"])
    assert table.loc["fixed: (Intercept)", ("other", "diff/se")] == pytest.approx(0.1 / 0.25)
    assert table.loc["school: var(cses)", ("book", "estimate")] == pytest.approx(0.694)
    assert table.loc["sigma^2", ("other", "estimate")] == 36.0
    assert table.loc["fixed: cses", ("book", "lower")] == pytest.approx(2.193 - 1.959964 * 0.13, abs=1e-6)
    with pytest.raises(bh.OptionError, match="same model"):
        bh.compare(fit, ladder["anova"])


# --- enclosing and crossed factors (R&B 2002, ch. 8 and 12) ------------------------------------------------

@pytest.fixture(scope="module")
def egsingle_three_level():
    return bh.HLM("math ~ 1 + (1 | childid) + (1 | schoolid)", bh.datasets.load("egsingle")).fit("reml")


def test_level3_reliability_is_eq_8_8_on_egsingle(egsingle_three_level):
    fit = egsingle_three_level
    tau_pi, tau_beta = fit.tau["childid"].iloc[0, 0], fit.tau["schoolid"].iloc[0, 0]
    children, schools = fit.design.factor("childid"), fit.design.factor("schoolid")
    n = children.group_sizes
    school_of_child = np.zeros(children.n_groups, dtype=int)
    school_of_child[children.codes] = schools.codes
    # eq. 8.8: the precision of a school's mean is the sum of its children's precisions 1 / (tau_pi + sigma^2/n)
    error = 1 / np.bincount(school_of_child, weights=1 / (tau_pi + fit.sigma2 / n))
    by_school = fit.reliability("schoolid")["(Intercept)"]
    np.testing.assert_allclose(by_school.to_numpy(), tau_beta / (tau_beta + error), rtol=1e-10)
    # the digest's 0.873 (the per-group OLS of the rows, as if independent, gave 0.944)
    assert fit.reliability_summary("schoolid").loc["(Intercept)", "reliability"] == pytest.approx(0.873, abs=5e-4)
    # eq. 8.7 for the children: tau_pi / (tau_pi + sigma^2 / n_jk)
    np.testing.assert_allclose(fit.reliability("childid")["(Intercept)"].to_numpy(),
                               tau_pi / (tau_pi + fit.sigma2 / n), rtol=1e-10)


def test_level3_chi_square_is_refused_with_the_alternative(egsingle_three_level):
    with pytest.raises(bh.OptionError, match=r"no formula for an enclosing level.*deviance_test"):
        egsingle_three_level.chi_square("schoolid")
    assert egsingle_three_level.chi_square("childid").loc["(Intercept)", "df"] == 1720


def _dense_reliability(design, taus, sigma2, factor):
    """Reliability of an enclosing factor's groups from dense matrices: V_k = sigma^2 I + sum of Z T Z'."""
    outer = design.factor(factor)
    out = []
    for k in range(outer.n_groups):
        rows = outer.codes == k
        V = sigma2 * np.eye(rows.sum())
        for f in design.chain:
            if f.name == factor:
                break
            for j in np.unique(f.codes[rows]):
                inner = f.codes[rows] == j
                Zj = np.where(inner[:, None], f.Z[rows], 0.0)
                V += Zj @ taus[f.name] @ Zj.T
        Zk = outer.Z[rows]
        error = np.diag(np.linalg.inv(Zk.T @ np.linalg.solve(V, Zk)))
        out.append(np.diag(taus[factor]) / (np.diag(taus[factor]) + error))
    return np.array(out)


@pytest.mark.parametrize("outer", ["class", "school"])
def test_enclosing_reliability_with_random_slopes_matches_dense_gls(outer):
    rng = np.random.default_rng(4)
    school = np.repeat(np.arange(6), 24)
    klass = school * 4 + np.repeat(np.arange(4), 6)[np.arange(144) % 24]
    child = np.arange(144) // 2
    df = pd.DataFrame({"school": school, "class": klass, "child": child, "x": rng.normal(size=144)})
    df["y"] = df["x"] + rng.normal(size=144) + np.repeat(rng.normal(size=72), 2)
    design = bh.HLM("y ~ x + (1 | child) + (x | class) + (x | school)", df).design
    taus = {"child": np.array([[0.7]]), "class": np.array([[0.5, 0.1], [0.1, 0.3]]),
            "school": np.array([[0.9, -0.2], [-0.2, 0.4]])}
    names = [f.name for f in design.chain]
    assert names == ["child", "class", "school"]
    chain_taus = [taus[n][None] for n in names[:names.index(outer) + 1]]
    usable, lam = bh.results.hlm_statistics.outer_reliability(design, outer, chain_taus, np.array([1.3]))
    assert usable.all()
    np.testing.assert_allclose(lam[0], _dense_reliability(design, taus, 1.3, outer), rtol=1e-10)
    # several draws at once give each draw's values (the Bayesian path)
    stacked = [np.concatenate([t, 2 * t]) for t in chain_taus]
    _, both = bh.results.hlm_statistics.outer_reliability(design, outer, stacked, np.array([1.3, 2.6]), chunk=1)
    np.testing.assert_allclose(both[1], lam[0], rtol=1e-10)  # T and sigma^2 doubled: the same reliability


def test_crossed_factors_refuse_per_group_statistics():
    fit = bh.HLM("attain ~ 1 + (1 | primary) + (1 | second)", bh.datasets.load("scotssec")).fit("reml")
    for factor in ("primary", "second"):
        with pytest.raises(bh.OptionError, match=rf"not defined for '{factor}' here: it is crossed with"):
            fit.reliability(factor)
        with pytest.raises(bh.OptionError, match="crossed with .*likelihood-ratio test"):
            fit.chi_square(factor)


def test_bayes_level3_reliability_is_eq_8_8_per_draw():
    rng = np.random.default_rng(4)
    school, child = np.repeat(np.arange(8), 20), np.arange(160) // 4
    df = pd.DataFrame({"school": school, "child": child, "x": rng.normal(size=160)})
    df["y"] = df["x"] + rng.normal(size=160) + np.repeat(rng.normal(size=40), 4) + np.repeat(rng.normal(size=8), 20)
    fit = bh.HLM("y ~ x + (1 | child) + (1 | school)", df).fit("bayes", draws=60, tune=60, chains=1, random_seed=1,
                                                                 progressbar=False)
    tau_pi = fit.draws("T_child").values.reshape(-1)
    tau_beta = fit.draws("T_school").values.reshape(-1)
    sigma2 = fit.draws("sigma").values.reshape(-1) ** 2
    # every child has 4 rows and every school 5 children: eq. 8.8 per draw, then the posterior mean
    lam = tau_beta / (tau_beta + (tau_pi + sigma2 / 4) / 5)
    summary = fit.reliability_summary("school").loc["(Intercept)"]
    assert summary["reliability"] == pytest.approx(lam.mean(), rel=1e-10)
    assert summary["sd"] == pytest.approx(lam.std(ddof=1), rel=1e-10)
    np.testing.assert_allclose(fit.reliability("school")["(Intercept)"], lam.mean(), rtol=1e-10)


def test_icc_of_a_three_level_model_counts_every_variance(egsingle_three_level):
    fit = egsingle_three_level
    sigma2, tau_pi, tau_beta = fit.sigma2, fit.tau["childid"].iloc[0, 0], fit.tau["schoolid"].iloc[0, 0]
    total = sigma2 + tau_pi + tau_beta
    # R&B eq. 8.4-8.6: the school share tau_beta / total (0.134 here; tau_beta / (tau_beta + sigma^2) gave 0.175)
    assert fit.icc("schoolid") == pytest.approx(tau_beta / total, rel=1e-12)
    assert fit.icc("schoolid") == pytest.approx(0.134, abs=5e-4)
    # two scores of one child share the child's and the school's effects
    assert fit.icc("childid") == pytest.approx((tau_pi + tau_beta) / total, rel=1e-12)


def test_icc_of_crossed_factors_counts_the_other_factor():
    fit = bh.HLM("attain ~ 1 + (1 | primary) + (1 | second)", bh.datasets.load("scotssec")).fit("reml")
    total = fit.sigma2 + fit.tau["primary"].iloc[0, 0] + fit.tau["second"].iloc[0, 0]
    assert fit.icc("second") == pytest.approx(fit.tau["second"].iloc[0, 0] / total, rel=1e-12)  # R&B eq. 12.6


def test_level3_reliability_refuses_what_it_does_not_cover():
    rng = np.random.default_rng(6)
    school, child = np.repeat(np.arange(6), 24), np.arange(144) // 4
    df = pd.DataFrame({"school": school, "child": child, "x": rng.normal(size=144),
                       "half": np.where(np.arange(144) % 2 == 0, "a", "b")})
    df["y"] = df["x"] + rng.normal(size=144) + np.repeat(rng.normal(size=36), 4) + np.repeat(rng.normal(size=6), 24)
    formula = "y ~ x + (1 | child) + (1 | school)"
    hetero = bh.HLM(formula, df, level1_variance="half").fit("reml")
    with pytest.raises(bh.OptionError, match=r"reliability of 'school'.*independent level-1 errors with one variance"):
        hetero.reliability("school")
    dd = pytest.importorskip("dask.dataframe")
    aggregated = bh.HLM(formula, dd.from_pandas(df, npartitions=2)).fit("reml")
    with pytest.raises(bh.errors.RowsUnavailableError, match="reliability of 'school'"):
        aggregated.reliability("school")


def test_compare_uses_the_t_intervals_of_the_likelihood_fit():
    """REML intervals in compare() were estimate +/- 1.96 SE while the fit's t tests use t(J - S - 1)."""
    fit = bh.HLM("mathach ~ cses + (cses | school)", bh.datasets.load("hsb")).fit("reml")
    table = bh.compare(fit, fit, names=["a", "b"])
    t = fit.ttest()
    np.testing.assert_allclose(table[("a", "lower")].loc[[f"fixed: {n}" for n in t.index]], t["lower"], rtol=1e-12)
    assert table.loc["fixed: cses", ("a", "upper")] > fit.fixed_effects.loc["cses", "estimate"] + 1.96 * \
        fit.fixed_effects.loc["cses", "se"]  # t(159) is wider than the normal
