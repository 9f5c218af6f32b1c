"""report(style="plain"): the ICC, slope variances and reliabilities in words, with this data's numbers."""

import numpy as np
import pytest

import bayeshlm as bh


@pytest.fixture(scope="module")
def hsb_fits(hsb):
    return {"anova": bh.HLM("mathach ~ 1 + (1 | school)", hsb).fit("reml"),
            "randcoef": bh.HLM("mathach ~ cses + (cses | school)", hsb).fit("reml"),
            "conditional": bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb).fit("reml")}


def test_plain_report_explains_the_icc(hsb_fits):
    fit = hsb_fits["anova"]
    text = str(fit.report(style="plain"))
    icc = fit.icc()
    assert icc == pytest.approx(0.180, abs=0.001)  # R&B 2002, Table 4.2
    assert "The intraclass correlation is 0.18: of the variation in mathach, 18% lies between groups of school " \
           "and 82% within them" in text
    assert "7185 rows grouped into 160 groups of school (14 to 67 rows per group)" in text
    reliability = fit.reliability_summary().loc["(Intercept)", "reliability"]
    assert f"own mean averages {reliability:.2f}: most of the differences" in text
    with_ses = bh.HLM("mathach ~ ses + (1 | school)", bh.datasets.load("hsb")).fit("reml")
    assert "of the variation in mathach left after the predictors, " in str(with_ses.report("plain"))


def test_plain_report_explains_slope_variance_and_low_reliability(hsb_fits):
    fit = hsb_fits["randcoef"]
    text = str(fit.report("plain"))
    tau = fit.tau["school"].loc["cses", "cses"]
    pv = fit.plausible_values().loc["cses"]
    assert f"standard deviation across groups is {np.sqrt(tau):.3g} (variance {tau:.3g})" in text
    assert f"between {pv['lower']:.3g} and {pv['upper']:.3g}, around an average of {pv['center']:.3g}." in text
    slope_reliability = fit.reliability_summary().loc["cses", "reliability"]
    assert slope_reliability < 0.4
    assert f"slope of cses averages {slope_reliability:.2f}: most of the differences between the groups' own " \
           "estimates are sampling noise" in text
    assert "intraclass correlation" not in text  # not one number with a random slope


def test_plain_report_says_when_ranges_hold_at_level2_predictors_zero(hsb_fits):
    text = str(hsb_fits["conditional"].report("plain"))
    assert "(for groups whose level-2 predictors are all 0)" in text
    assert "for groups whose level-2" not in str(hsb_fits["randcoef"].report("plain"))


def test_plain_report_of_crossed_factors_and_bad_style(scotssec, hsb_fits):
    text = str(bh.HLM("attain ~ verbal + (1 | primary) + (1 | second)", scotssec).fit("reml").report("plain"))
    assert text.startswith("In plain words") and "groups of primary" in text
    assert "intraclass correlation" not in text and "reliability" not in text  # both undefined for crossed factors
    with pytest.raises(bh.OptionError, match="style='prose': use 'tables'"):
        hsb_fits["anova"].report(style="prose")
