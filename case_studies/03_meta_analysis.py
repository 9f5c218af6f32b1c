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
# # 3. Teacher expectancy: meta-analysis as a two-level model with known variances (R&B chapters 7 and 13)
#
# Nineteen experiments told teachers that some pupils were "bloomers" and measured the pupils' IQ later.
# Each study j reports an effect size d_j with a known sampling variance V_j. The level-1 model is
# d_j = δ_j + e_j with e_j ~ N(0, V_j) known; level 2 asks how the true effects δ_j vary:
# δ_j = γ0 + γ1 WEEKS_j + u_j. WEEKS (weeks of contact before the expectation was induced, capped at 3)
# is the book's explanation: teachers who already knew their pupils were not fooled.

# %%
import os
import warnings

import numpy as np

import bayeshlm as bh
from bayeshlm.report.book import BookComparison

DRAWS = int(os.environ.get("BAYESHLM_DRAWS", 1000))
book = BookComparison("Raudenbush & Bryk (2002), chapters 7 and 13")
studies = bh.datasets.load("teacher_expectancy")
studies[["author", "year", "weeks", "weeks_c", "yi", "vi"]]

# %% [markdown]
# ## Unconditional model (Table 7.2): is there an effect, and does it vary?

# %%
unconditional = bh.meta("yi ~ 1", studies, vi="vi", study="study")
print(unconditional.summary())
book.add("T7.2 gamma0", 0.083, unconditional.fixed_effects.loc["(Intercept)", "estimate"], 0.001)
book.add("T7.2 se(gamma0)", 0.052, unconditional.fixed_effects.loc["(Intercept)", "se"], 0.001)
book.add("T7.2 tau", 0.019, unconditional.tau2, 0.001)
book.add("T7.2 H (Q) statistic, 18 df", 35.85, unconditional.q_test.statistic, 0.03, "metafor: 35.83")
effects = unconditional.study_effects
book.add("T7.1 study 4: d = 1.18 shrinks to", 0.22, effects["eb"].iloc[3], 0.006)

# %% [markdown]
# The average effect is small (0.08 SD) and its 95% interval includes zero, but the effects vary more
# than sampling error allows (Q = 35.8 on 18 df). Study 4's striking 1.18 is shrunk to 0.22: with only 33
# pupils its estimate is unreliable, so the model trusts the other studies more.

# %%
bh.plots.forest(unconditional, labels=["author", "year"])

# %% [markdown]
# ## Conditional model (Table 7.3): prior contact explains the variation

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # tau^2 lands on its boundary: the summary explains it in words
    conditional = bh.meta("yi ~ weeks_c", studies, vi="vi", study="study")
print(conditional.summary())
book.add("T7.3 gamma0", 0.407, conditional.fixed_effects.loc["(Intercept)", "estimate"], 0.0005)
book.add("T7.3 gamma1 (weeks)", -0.157, conditional.fixed_effects.loc["weeks_c", "estimate"], 0.0005)
book.add("T7.3 tau", 0.000, conditional.tau2, 0.0005)
book.add("T7.3 residual Q, 17 df", 16.57, conditional.q_test.statistic, 0.005)

# %% [markdown]
# ## Fully Bayes with the book's flat priors (Table 13.1)
#
# REML plugs in one value of τ. Chapter 13 integrates over its uncertainty, with flat priors on γ and τ.
# The book's printed posterior SDs leave out part of the variance (see the digest), so we compare means.

# %%
bayes = unconditional.model.fit("bayes", priors="flat", draws=DRAWS, tune=DRAWS, chains=4, random_seed=13)
gamma = bayes.draws("beta").values[..., 0].ravel()
book.add("T13.1 E(gamma | d)", 0.096, gamma.mean(), 0.01)
book.add("T13.1 P(gamma <= 0 | d)", 0.063, np.mean(gamma <= 0), 0.02)
bh.compare(unconditional.likelihood_fit, bayes, names=["REML", "Bayes (flat)"]).round(3)

# %% [markdown]
# ## Eight schools: when the variance is estimated as zero
#
# With only eight schools, REML puts τ² exactly at 0 and claims complete pooling. The posterior keeps
# τ away from that knife edge: it says "τ is probably small but could be sizeable".

# %%
eight = bh.datasets.load("eight_schools").assign(vi=lambda d: d["sigma"] ** 2)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    eight_reml = bh.meta("y ~ 1", eight, vi="vi", study="school")
print(eight_reml.summary())
book.add("BDA 5.5 pooled estimate", 7.686, eight_reml.fixed_effects.loc["(Intercept)", "estimate"], 0.001)
eight_bayes = eight_reml.model.fit("bayes", draws=DRAWS, tune=DRAWS, chains=4, random_seed=8)
print(eight_bayes.diagnostics)
assert eight_bayes.diagnostics["divergences"] == 0
bh.plots.variance_posterior(eight_bayes, eight_reml.likelihood_fit)

# %%
book.check()

# %% [markdown]
# **Exercise.** Drop the study with the largest effect (study 4) and refit the unconditional model. How much do
# the average effect and τ² change? Compare with how much study 4's own *shrunken* estimate differed from its
# observed 1.18, and explain the connection. Then refit the eight schools with the book's flat priors
# (`priors="flat"`) instead of the default weakly informative ones: how far does the posterior of τ now
# reach, and which prior would you defend with eight schools?
