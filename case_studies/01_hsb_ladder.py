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

import arviz as az
import numpy as np
import pandas as pd

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

# %% [markdown]
# ## Step 5: is the model any good? The Bayesian workflow on the ladder
#
# Fitting is one step of a workflow (Gelman et al., *Bayesian Workflow*, 2020): check what the priors imply
# before the data speak, check the fitted model against the data it was fitted to, and compare the candidate
# models by how well they predict data they have not seen.
#
# ### Prior predictive check
#
# Simulate whole data sets from the priors alone. bayeshlm's default priors are weakly informative, with widths
# set by the outcome's spread, so simulated scores should be far more spread out than the real ones (the priors
# rule out nothing plausible) without being absurd by orders of magnitude.

# %%
prior = full_bayes.prior_predictive(draws=500, seed=1)
simulated = prior["prior_predictive"]["y"].values.ravel()
quantiles = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
prior_check = pd.DataFrame({"prior predictive": np.quantile(simulated, quantiles),
                            "observed": np.quantile(hsb["mathach"], quantiles)},
                           index=pd.Index(quantiles, name="quantile"))
assert prior_check["prior predictive"].iloc[0] < hsb["mathach"].min() < hsb["mathach"].max() < \
    prior_check["prior predictive"].iloc[-1]  # the priors cover every observed score
prior_check.round(1)

# %% [markdown]
# The priors put scores anywhere from about −100 to +150 on a test whose scores run from −3 to 25: wide, but
# the right order of magnitude. With 7,185 students the data overwhelm such priors (compare REML and Bayes in
# step 4); case study 7 shows when they do not.
#
# ### Posterior predictive check
#
# Now replicate the data from the posterior: for every draw, the school effects and then every student's score
# (`fit.posterior_predictive()` adds them to the fit's DataTree, so ArviZ's checks work on it directly). Each
# blue line is one replicated data set, the black line the observed scores.

# %%
full_bayes.posterior_predictive(random_seed=1)
ppc_plot = az.plot_ppc_dist(full_bayes.posterior, num_samples=50)

# %% [markdown]
# The model replicates the centre and spread, but the observed scores are flatter on top and stop at 25: MATHACH
# is a test with a ceiling, and a normal model puts students above it. Checks by school make this sharper.
# `bh.checks.group_statistics` computes a statistic of each school's scores, observed and in every replicate,
# and its posterior predictive p-value Pr(T(y_rep) ≥ T(y)). If the model were right, about 2.5% of the 160
# schools (4) would fall in each tail by chance.

# %%
group_checks = {stat: bh.checks.group_statistics(full_bayes, stat, random_seed=1) for stat in ("mean", "var", "max")}
tails = pd.DataFrame({stat: {"ppp < 0.025 (observed above the replicates)": int((table["ppp"] < 0.025).sum()),
                             "ppp > 0.975 (observed below the replicates)": int((table["ppp"] > 0.975).sum())}
                      for stat, table in group_checks.items()}).T
assert tails.loc["mean"].sum() <= 8  # school means are reproduced: that is what the model is built for
assert tails.loc["max", "ppp > 0.975 (observed below the replicates)"] >= 10  # the test's ceiling
tails

# %% [markdown]
# School means are reproduced, as they should be: the model fits them directly. The highest score in a school
# is too low in many schools, because of the ceiling. And more schools than chance have a larger spread than
# the model allows: σ² is not the same in every school. Case study 2 models exactly this heterogeneity
# (R&B chapter 5). None of it shows in the fixed-effect table.
#
# ### Comparing the ladder by leave-one-school-out cross-validation
#
# Which rung of the ladder predicts new schools best? `bh.compare_models` ranks Bayesian fits by their expected
# log predictive density (elpd), estimated by Pareto-smoothed importance sampling leave-one-out (PSIS-LOO,
# `az.loo`, `az.compare`). By default the unit left out is a whole school, with its effects integrated out: the
# question a multilevel model exists to answer. (`kind="conditional"` leaves out one student at a time; with
# 7,185 students and four models it takes minutes rather than seconds.) WAIC is not shown: ArviZ 1.x removed
# `az.waic`, because PSIS-LOO estimates the same quantity more reliably and reports when it fails (Pareto k).

# %%
ladder = {name: model.fit("bayes", draws=DRAWS, tune=DRAWS, chains=4, random_seed=2002) for name, model in [
    ("T4.2 one-way ANOVA", anova),
    ("T4.3 means as outcomes", bh.HLM("mathach ~ meanses + (1 | school)", hsb)),
    ("T4.4 random coefficients", bh.HLM("mathach ~ cses + (cses | school)", hsb)),
]}
ladder["T4.5 intercepts and slopes as outcomes"] = full_bayes
comparison = bh.compare_models(ladder)
print("unit left out:", comparison.attrs["unit"])
for message in comparison.attrs["messages"]:
    print(message)
assert list(comparison.index) == ["T4.5 intercepts and slopes as outcomes", "T4.4 random coefficients",
                                  "T4.3 means as outcomes", "T4.2 one-way ANOVA"]
assert -comparison.loc["T4.2 one-way ANOVA", "elpd_diff"] > 4 * comparison.loc["T4.2 one-way ANOVA", "dse"]
comparison[["rank", "elpd", "se", "p", "elpd_diff", "dse", "weight"]].round(1)

# %% [markdown]
# Each rung predicts new schools better than the one below it, and the full model of Table 4.5 is best by a
# margin of many standard errors (`elpd_diff` against `dse`) over the empty model. `p` is the effective number
# of parameters of each school's predictive distribution. The ordering agrees with the book's deviance tests,
# but the question differs: not "is this variance component zero?" but "how well would this model predict the
# scores of a school it has never seen?"

# %%
comparison_plot = az.plot_compare(comparison)

# %% [markdown]
# **Exercise.** Fit the model of Table 4.5 without the random slope (`(1 | school)` in place of
# `(cses | school)`), add it to `ladder` and compare again. Does the slope variance, which the χ² test of step 4
# finds significant, improve the prediction of new schools? Then rerun `group_statistics(full_bayes, "var")`
# and list the schools in the upper tail: what do they have in common (sector? mean SES?)?

# %%
book.check()
