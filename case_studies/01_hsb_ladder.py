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
# # 1. High School and Beyond: the model ladder of Raudenbush & Bryk, chapter 4
#
# 7,185 students in 160 schools. We climb the book's ladder of models — one-way ANOVA, means as outcomes,
# random coefficients, intercepts and slopes as outcomes (Tables 4.2–4.5) — fitting each by REML, and the
# last one also by full Bayes. At every step we print the book's number beside ours.
#
# Draws for the Bayesian fit come from the environment variable `BAYESHLM_DRAWS` (default 1000); the
# continuous-integration run uses fewer.

# %%
import os

import bayeshlm as bh
from bayeshlm.report.book import BookComparison

DRAWS = int(os.environ.get("BAYESHLM_DRAWS", 1000))
hsb = bh.datasets.load("hsb")
book = BookComparison("Raudenbush & Bryk (2002), chapter 4")
hsb.head()

# %% [markdown]
# ## Step 1: how much do schools differ? (Table 4.2)
#
# The one-way ANOVA with random effects splits the variance of math achievement into a part between
# schools (τ00) and a part within schools (σ²). Written level by level:

# %%
anova = bh.HLM.from_levels("mathach ~ 1", {"intercept": "~ 1"}, groups="school", data=hsb)
print(anova.equations("levels"))
anova_fit = anova.fit("reml")
book.add("T4.2 gamma00", 12.64, anova_fit.fixed_effects.loc["(Intercept)", "estimate"], 0.005)
book.add("T4.2 se(gamma00)", 0.24, anova_fit.fixed_effects.loc["(Intercept)", "se"], 0.005)
book.add("T4.2 tau00", 8.61, anova_fit.tau["school"].iloc[0, 0], 0.005)
book.add("T4.2 sigma2", 39.15, anova_fit.sigma2, 0.005)
book.add("T4.2 chi-square (159 df)", 1660.2, anova_fit.chi_square().loc["(Intercept)", "chi2"], 0.05)
book.add("T4.2 ICC", 0.18, anova_fit.icc(), 0.005)
book.add("T4.2 reliability", 0.90, anova_fit.reliability().mean()["(Intercept)"], 0.005)
pv = anova_fit.plausible_values().loc["(Intercept)"]
book.add("T4.2 plausible values, lower", 6.89, pv["lower"], 0.01, "book rounds the inputs first")
book.add("T4.2 plausible values, upper", 18.39, pv["upper"], 0.01, "book rounds the inputs first")
print(anova_fit.report())

# %% [markdown]
# About 18% of the variance in math achievement lies between schools, and the school means are measured
# reliably (λ̄ = 0.90): with about 45 students each, a school's sample mean is a good estimate of its true
# mean. 95% of schools have true means between about 6.9 and 18.4.
#
# ## Step 2: do richer schools score higher? (Table 4.3)

# %%
means = bh.HLM("mathach ~ meanses + (1 | school)", hsb).fit("reml")
book.add("T4.3 gamma01 (MEAN SES)", 5.86, means.fixed_effects.loc["meanses", "estimate"], 0.005)
book.add("T4.3 tau00", 2.64, means.tau["school"].iloc[0, 0], 0.005)
book.add("T4.3 reliability", 0.74, means.reliability().mean()["(Intercept)"], 0.005)
explained = means.variance_explained(anova_fit).loc["school: (Intercept)", "proportion_explained"]
book.add("T4.3 variance between schools explained", 0.69, explained, 0.005)
means.fixed_effects

# %% [markdown]
# MEAN SES explains 69% of the variance between school means. What remains (τ00 = 2.64) is less
# reliably measured (0.74): once we know a school's SES, its mean tells us less that is new.
#
# ## Step 3: does SES matter equally in every school? (Table 4.4)

# %%
randcoef = bh.HLM("mathach ~ cses + (cses | school)", hsb).fit("reml")
lam = randcoef.reliability().mean()
book.add("T4.4 gamma10 (SES slope)", 2.19, randcoef.fixed_effects.loc["cses", "estimate"], 0.005)
book.add("T4.4 tau11", 0.68, randcoef.tau["school"].loc["cses", "cses"], 0.015, "lme4 also gives 0.694")
book.add("T4.4 sigma2", 36.70, randcoef.sigma2, 0.005)
book.add("T4.4 reliability of intercepts", 0.91, lam["(Intercept)"], 0.005)
book.add("T4.4 reliability of slopes", 0.23, lam["cses"], 0.035, "public data give 0.26 (digest)")
book.add("T4.4 chi-square of slopes", 213.4, randcoef.chi_square().loc["cses", "chi2"], 0.1)
randcoef.plausible_values()

# %% [markdown]
# The SES slope varies between schools (χ² = 213 on 159 df), but the slopes are estimated unreliably
# (0.26): each school has too few students to pin down its own slope. That is where shrinkage matters.

# %%
bh.plots.shrinkage(randcoef)

# %% [markdown]
# Every arrow starts at a school's own (OLS) estimate and ends at its empirical-Bayes estimate. Slopes
# move far more than intercepts, because they are far less reliable.
#
# ## Step 4: intercepts and slopes as outcomes (Table 4.5), by REML and by full Bayes

# %%
full = bh.HLM.from_levels("mathach ~ cses", {"intercept": "~ meanses + sector", "cses": "~ meanses + sector"},
                          groups="school", data=hsb)
full_reml = full.fit("reml")
full_bayes = full.fit("bayes", draws=DRAWS, tune=DRAWS, chains=4, random_seed=2002)
for term, printed in [("(Intercept)", 12.10), ("meanses", 5.33), ("sector", 1.23), ("cses", 2.94),
                      ("meanses:cses", 1.03), ("sector:cses", -1.64)]:
    book.add(f"T4.5 {term}", printed, full_reml.fixed_effects.loc[term, "estimate"], 0.01)
book.add("T4.5 tau00", 2.38, full_reml.tau["school"].iloc[0, 0], 0.005)
bh.compare(full_reml, full_bayes).round(3)

# %% [markdown]
# REML and Bayes agree closely here: with 160 schools the data swamp the priors. (The book's τ11 = 0.15
# does not reproduce from the public data; lme4, nlme and this package all find about 0.10.)

# %%
bh.plots.caterpillar(full_reml, coefficient="cses")

# %%
book.check()
