# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Growth with structured level-1 errors: Oxford boys and sleep deprivation (R&B chapter 6)
#
# A random-coefficient growth model assumes that, once each person's line is known, the leftover errors
# are independent with one variance. Repeated measures often break both assumptions: errors close in
# time are correlated, and the spread can change over occasions. We fit the alternatives by ML, compare
# deviances, and check every likelihood against nlme (reference numbers from the committed R script).

# %%
import warnings

import bayeshlm as bh
from bayeshlm.datasets.references import peer_reference
from bayeshlm.report.book import BookComparison

ox = bh.datasets.load("oxboys")
nlme = {name: peer_reference("nlme", name) for name in ("oxboys_lme_ml", "oxboys_lme_ar1_ml", "oxboys_lme_varident_ml")}
check = BookComparison("nlme 3.1-162 (tests/reference/make_reference.R)")

# %% [markdown]
# ## Three models for the heights of 26 boys at 9 occasions

# %%
formula = "height ~ age + (age | Subject)"
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # boundary notes are printed in each report
    plain = bh.HLM(formula, ox).fit("ml")
    ar1 = bh.HLM(formula, ox, correlation="ar1", time="Occasion").fit("ml")
    by_occasion = bh.HLM(formula, ox, level1_variance="Occasion").fit("ml")
for name, fit in (("oxboys_lme_ml", plain), ("oxboys_lme_ar1_ml", ar1), ("oxboys_lme_varident_ml", by_occasion)):
    check.add(f"{name}: log-likelihood", nlme[name]["loglik"], fit.loglik, 1e-3)
    check.add(f"{name}: slope", nlme[name]["fixef"]["age"], fit.fixed_effects.loc["age", "estimate"], 1e-3)
check.add("AR(1) phi", nlme["oxboys_lme_ar1_ml"]["ar1_phi"], ar1.residual_parameters["phi (AR1)"], 1e-3)
print(ar1.report())

# %% [markdown]
# The AR(1) parameter is about 0.98: after each boy's own line is removed, his errors from one
# occasion to the next are almost the same. Growth spurts are not straight lines.

# %%
print(bh.deviance_test(plain, ar1))
print(bh.deviance_test(plain, by_occasion))

# %% [markdown]
# ## A Table 6.12-style comparison of covariance structures (sleep study)
#
# Six structures for 18 subjects' reaction times over 10 days, from compound symmetry to an unrestricted
# 10 x 10 covariance matrix, with deviance, parameter count and information criteria.

# %%
sleep = bh.datasets.load("sleepstudy")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    table = bh.growth.covariance_structures(sleep, "Reaction", "Days", "Subject", method="ml")
table

# %% [markdown]
# Compound symmetry (a random intercept only) fits far worse than letting each subject have a slope.
# The unrestricted matrix has the smallest deviance, as it must, but pays for 55 parameters.

# %%
sleep_fit = bh.HLM("Reaction ~ Days + (Days | Subject)", sleep).fit("reml")
bh.plots.growth(sleep_fit, time="Days", person="Subject")

# %%
check.check()

# %% [markdown]
# **Exercise.** For the Oxford boys, add a quadratic term of age (`bh.growth.polynomial_time(ox, "age")` adds
# the columns `age_c` and `age_c2`) with random curvature, and refit with and without AR(1) errors. How much of
# the AR(1) correlation of about 0.98 was curvature that a straight line could not follow? Use
# `bh.deviance_test` to decide whether AR(1) is still needed.
