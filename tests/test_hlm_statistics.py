"""HLM statistics against Raudenbush & Bryk (2002), chapter 4, at the book's published estimates.

These check the formulas independently of any engine: the estimates are plugged in from the digest's
lme4 verification (REML), and the statistics must match the book's printed numbers.
"""

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.results import FitResult


class PublishedEstimates(FitResult):
    """A FitResult holding given estimates (to test the statistics without an engine)."""

    method = "reml"

    def __init__(self, design, gamma, tau, sigma2):
        self.design = design
        coefs = list(design.factors[0].coef_names)
        self._fixed = pd.DataFrame({"estimate": gamma, "se": np.nan}, index=list(design.fixed_names))
        self._tau = {design.factors[0].name: pd.DataFrame(np.atleast_2d(tau), index=coefs, columns=coefs)}
        self._sigma2 = sigma2

    fixed_effects = property(lambda self: self._fixed)
    tau = property(lambda self: self._tau)
    sigma2 = property(lambda self: self._sigma2)
    variance_components = property(lambda self: pd.DataFrame())

    def group_effects(self, factor=None):
        raise NotImplementedError


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
