"""REML / ML engine against lme4 (tests/reference/lme4_reference.json, written by make_reference.R) and the
book's printed HS&B numbers (R&B 2002, Tables 4.2-4.5 and 9.5).

Tolerances (issue 10): criterion 1e-6 relative; fixed effects, their SEs, variance components and sigma^2
1e-4 relative or 1e-6 absolute, whichever is larger.
"""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.likelihood import BoundaryFitWarning
from bayeshlm.results.contract import wide

REFERENCE = Path(__file__).parent / "reference"
REL, ABS = 1e-4, 1e-6

MODELS = {
    "hsb_anova": ("hsb", "mathach ~ 1 + (1 | school)"),
    "hsb_means": ("hsb", "mathach ~ meanses + (1 | school)"),
    "hsb_randcoef": ("hsb", "mathach ~ cses + (cses | school)"),
    "hsb_full": ("hsb", "mathach ~ meanses * cses + sector * cses + (cses | school)"),
    "sleep_corr": ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    "sleep_uncorr": ("sleepstudy", "Reaction ~ Days + (Days || Subject)"),
    "sleep_int": ("sleepstudy", "Reaction ~ Days + (1 | Subject)"),
    "egsingle_uncond": ("egsingle", "math ~ year + (year | childid) + (year | schoolid)"),
    "egsingle_cond": ("egsingle", "math ~ year * (black + hispanic + lowinc) + (year | childid) + (year | schoolid)"),
    "scotssec": ("scotssec", "attain ~ verbal + sex + (1 | primary) + (1 | second)"),
}
LME4_NAMES = {"sex[T.M]": "sexM"}


@cache
def lme4() -> dict:
    return json.loads((REFERENCE / "lme4_reference.json").read_text())


@cache
def metafor() -> dict:
    return json.loads((REFERENCE / "metafor_reference.json").read_text())


@cache
def data(name: str):
    return bh.datasets.load(name)


@cache
def fitted(model: str, method: str):
    dataset, formula = MODELS[model]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryFitWarning)
        return bh.HLM(formula, data(dataset)).fit(method)


def lme4_name(name: str, lme4_names) -> str:
    """Our name of a fixed effect as lme4 spells it ('sex[T.M]' -> 'sexM', 'sector:cses' -> 'cses:sector')."""
    name = LME4_NAMES.get(name, name)
    same = [n for n in lme4_names if sorted(n.split(":")) == sorted(name.split(":"))]
    return same[0] if same else name


def printed(values, expected, digits: int) -> bool:
    """Agreement to the printed precision (half a unit in the last digit, plus rounding slack)."""
    return np.allclose(values, expected, rtol=0, atol=0.6 * 10.0 ** -digits)


def as_list(names) -> list[str]:
    """jsonlite writes a length-one vector as a scalar."""
    return [names] if isinstance(names, str) else list(names)


def close(actual, expected, rel=REL, abs_=ABS) -> bool:
    return np.allclose(actual, expected, rtol=rel, atol=abs_)


CASES = [(m, meth) for m in MODELS for meth in ("reml", "ml")]


@pytest.mark.parametrize(("model", "method"), CASES)
def test_matches_lme4(model, method):
    ref = lme4()[f"{model}_{method}"]
    fit = fitted(model, method)
    assert fit.converged
    assert fit.deviance == pytest.approx(ref["criterion"], rel=1e-6)
    assert fit.loglik == pytest.approx(ref["loglik"], rel=1e-6)
    fe = fit.fixed_effects.rename(index=lambda n: lme4_name(n, ref["fixef"]))
    names = list(ref["fixef"])
    assert sorted(fe.index) == sorted(names)
    assert close(fe.loc[names, "estimate"], [ref["fixef"][n] for n in names])
    assert close(fe.loc[names, "se"], [ref["fixef_se"][n] for n in names])
    assert fit.sigma2 == pytest.approx(ref["sigma2"], rel=REL)
    for factor, vc in ref["varcorr"].items():
        names = as_list(vc["names"])
        tau = fit.tau[factor].loc[names, names].to_numpy()
        assert close(tau, np.reshape(vc["cov"], tau.shape)), (factor, tau, vc["cov"])


@pytest.mark.parametrize("model", ["hsb_randcoef", "sleep_corr", "sleep_uncorr"])
def test_conditional_modes_and_variances_match_lme4(model):
    ref = lme4()[f"{model}_reml"]["ranef"]
    fit = fitted(model, "reml")
    for factor, r in ref.items():
        re = fit.conditional_modes(factor)
        assert [str(x) for x in re.modes.index] == r["levels"]
        modes = re.modes[as_list(r["names"])].to_numpy()
        scale = np.abs(np.array(r["values"])).max(axis=0)
        assert np.allclose(modes, r["values"], rtol=REL, atol=REL * scale)
        assert close(re.condvar, np.reshape(r["condvar"], re.condvar.shape))


def test_coef_convention_matches_lme4():
    ref = lme4()["hsb_randcoef_reml"]["coef"]["school"]
    ge = wide(fitted("hsb_randcoef", "reml").group_effects("school"))
    assert close(ge[ref["names"]].to_numpy(), np.array(ref["values"]))


def test_theta_names_and_values_follow_lme4():
    ref = lme4()["sleep_corr_reml"]
    theta = fitted("sleep_corr", "reml").theta
    assert list(theta.index) == ref["theta_names"]
    assert close(theta.to_numpy(), ref["theta"])


# --- the book's printed numbers (R&B 2002, digest section 3.2) ------------------------------------------------

def test_hsb_book_tables_4_2_to_4_5():
    t42 = fitted("hsb_anova", "reml")
    assert printed(t42.fixed_effects.loc["(Intercept)", ["estimate", "se"]], [12.637, 0.244], 3)
    assert printed([t42.tau["school"].iloc[0, 0], t42.sigma2], [8.614, 39.148], 3)
    t43 = fitted("hsb_means", "reml")
    assert printed(t43.fixed_effects["estimate"], [12.648, 5.864], 3)
    assert printed(t43.fixed_effects["se"], [0.149, 0.361], 3)
    assert printed([t43.tau["school"].iloc[0, 0], t43.sigma2], [2.639, 39.157], 3)
    t44 = fitted("hsb_randcoef", "reml")
    assert printed(t44.fixed_effects["estimate"], [12.636, 2.193], 3)
    assert printed(t44.fixed_effects["se"], [0.245, 0.128], 3)
    assert printed(t44.tau["school"], [[8.681, 0.047], [0.047, 0.694]], 3)
    assert printed(t44.sigma2, 36.700, 3)
    t45 = fitted("hsb_full", "reml")
    order = ["(Intercept)", "meanses", "sector", "cses", "meanses:cses", "sector:cses"]
    assert printed(t45.fixed_effects.loc[order, "estimate"], [12.095, 5.333, 1.227, 2.939, 1.039, -1.643], 3)
    assert printed(t45.fixed_effects.loc[order, "se"], [0.199, 0.369, 0.306, 0.155, 0.299, 0.240], 3)
    assert printed([t45.tau["school"].iloc[0, 0], t45.sigma2], [2.380, 36.721], 3)


def test_robust_se_reproduce_table_9_5():
    fe = fitted("hsb_full", "reml").fixed_effects
    order = ["(Intercept)", "meanses", "sector", "cses", "meanses:cses", "sector:cses"]
    assert printed(fe.loc[order, "robust_se"], [0.174, 0.335, 0.308, 0.147, 0.333, 0.237], 3)


def test_book_degrees_of_freedom_j_minus_s_minus_1():
    fe = fitted("hsb_full", "reml").fixed_effects
    assert fe["df"].tolist() == [157] * 6  # J = 160, S = 2 in both equations (Table 4.5)
    assert fitted("hsb_means", "reml").fixed_effects["df"].tolist() == [158, 158]
    scots = fitted("scotssec", "reml").fixed_effects  # intercept random at the 19 secondaries; slopes fixed
    assert scots["df"].tolist() == [18, 3435 - 3, 3435 - 3]


def test_information_criteria_and_parameter_count():
    fit = fitted("hsb_randcoef", "ml")
    assert fit.n_params == 2 + 3 + 1
    assert fit.aic == pytest.approx(fit.deviance + 12)
    assert fit.bic == pytest.approx(fit.deviance + 6 * np.log(7185))


def test_variance_components_table():
    vc = fitted("hsb_randcoef", "reml").variance_components
    assert vc[["factor", "term", "term2"]].values.tolist() == [
        ["school", "(Intercept)", "(Intercept)"], ["school", "(Intercept)", "cses"], ["school", "cses", "cses"],
        ["Residual", "(residual)", "(residual)"]]
    tau = fitted("hsb_randcoef", "reml").tau["school"].to_numpy()
    assert vc["corr"].iloc[1] == pytest.approx(tau[0, 1] / np.sqrt(tau[0, 0] * tau[1, 1]))
    assert vc["sd"].iloc[3] == pytest.approx(np.sqrt(36.7002), rel=1e-4)


def test_ols_group_estimates_table_4_6():
    ols = fitted("hsb_randcoef", "reml").ols_group_estimates("school")
    # R&B Table 4.6: school 1308 (case 4) OLS 16.26, 0.13; school 8367 (case 135) 4.55, 0.25
    assert ols.loc["1308", "estimate"].round(2).tolist() == [16.26, 0.13]
    assert ols.loc["8367", "estimate"].round(2).tolist() == [4.55, 0.25]
    # Table 4.7 intervals use the pooled sigma^2: school 2305 (case 22) slope (-3.01, 1.45)
    est, se = ols.loc["2305", ("estimate", "cses")], ols.loc["2305", ("se", "cses")]
    assert [round(est - 1.96 * se, 2), round(est + 1.96 * se, 2)] == [-3.01, 1.45]


# --- V-known (meta-analysis) ------------------------------------------------------------------------------------

def _meta(formula, method, frame=None):
    frame = data("teacher_expectancy") if frame is None else frame
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryFitWarning)
        return bh.HLM(formula, frame, known_variance="vi").fit(method)


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_teacher_expectancy_matches_metafor(method):
    ref = metafor()[f"raudenbush1985_{method}"]
    fit = _meta("yi ~ 1 + (1 | study)", method)
    assert fit.sigma2 is None
    assert fit.fixed_effects.loc["(Intercept)", "estimate"] == pytest.approx(ref["beta"]["intrcpt"], rel=REL)
    assert fit.fixed_effects.loc["(Intercept)", "se"] == pytest.approx(ref["se"]["intrcpt"], rel=REL)
    assert fit.tau["study"].iloc[0, 0] == pytest.approx(ref["tau2"], rel=REL)
    blup = wide(fit.group_effects("study"))["(Intercept)"].to_numpy()
    assert close(blup, ref["blup"]["pred"])
    if method == "ml":  # metafor's ML log-likelihood has the same constants as ours
        assert fit.loglik == pytest.approx(ref["loglik"], rel=1e-6)


def test_teacher_expectancy_book_tables_7_2_and_7_3():
    t72 = _meta("yi ~ 1 + (1 | study)", "reml")
    assert printed(t72.fixed_effects.loc["(Intercept)", ["estimate", "se"]], [0.0837, 0.0516], 4)
    assert printed(t72.tau["study"].iloc[0, 0], 0.0188, 4)
    assert printed(_meta("yi ~ 1 + (1 | study)", "ml").tau["study"].iloc[0, 0], 0.0126, 4)
    t73 = _meta("yi ~ weeks_c + (1 | study)", "reml")
    assert printed(t73.fixed_effects["estimate"], [0.407, -0.157], 3)
    assert printed(t73.fixed_effects["se"], [0.087, 0.036], 3)
    assert t73.fixed_effects["df"].tolist() == [17, 17]
    assert abs(t73.tau["study"].iloc[0, 0]) < 1e-6
    assert t73.boundary


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_eight_schools_boundary(method):
    frame = data("eight_schools").assign(vi=lambda d: d["sigma"] ** 2)
    with pytest.warns(BoundaryFitWarning, match="variance of '\\(Intercept\\)' between school groups"):
        fit = bh.HLM("y ~ 1 + (1 | school)", frame, known_variance="vi").fit(method)
    assert abs(fit.tau["school"].iloc[0, 0]) < 1e-6
    assert printed(fit.fixed_effects.loc["(Intercept)", ["estimate", "se"]], [7.686, 4.072], 3)
    assert fit.singular and "estimated as 0" in fit.messages[0]
