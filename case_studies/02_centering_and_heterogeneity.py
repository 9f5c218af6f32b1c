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
# # 2. Centring, contextual effects and heterogeneous level-1 variance (R&B chapter 5)
#
# Where you centre a level-1 predictor changes what the intercept and the slope mean. With SES centred at
# each school's mean, the SES slope is the pure within-school effect; with SES centred at the grand mean,
# it blends within- and between-school effects. Adding the school mean of SES recovers the contextual
# effect: how much a school's average SES matters beyond a student's own (Tables 5.10–5.12).
# Then we let the level-1 variance differ by sector (Table 5.9).

# %%
import warnings

import numpy as np

import bayeshlm as bh
from bayeshlm.report.book import BookComparison

hsb = bh.datasets.load("hsb")
book = BookComparison("Raudenbush & Bryk (2002), chapter 5")

# %% [markdown]
# ## Table 5.10: four estimators of "the" SES effect

# %%
X = np.column_stack([np.ones(len(hsb)), hsb["ses"]])
beta_total, *_ = np.linalg.lstsq(X, hsb["mathach"], rcond=None)
means = hsb.groupby("school")[["mathach", "ses"]].mean()
beta_between, *_ = np.linalg.lstsq(np.column_stack([np.ones(160), means["ses"]]), means["mathach"], rcond=None)
within = bh.HLM("mathach ~ cses + (1 | school)", hsb).fit("reml")
blend = bh.HLM("mathach ~ ses + (1 | school)", hsb, center={"ses": "grand"}).fit("reml")
book.add("T5.10 OLS ungrouped (beta_t)", 3.184, beta_total[1], 0.0005)
book.add("T5.10 between schools (beta_b)", 5.909, beta_between[1], 0.0005)
book.add("T5.10 group-mean centred (beta_w)", 2.191, within.fixed_effects.loc["cses", "estimate"], 0.0005)
book.add("T5.10 se(beta_w)", 0.109, within.fixed_effects.loc["cses", "se"], 0.0005)
book.add("T5.10 grand-mean centred (blend)", 2.391, blend.fixed_effects.loc["ses", "estimate"], 0.0015,
         "public data give 2.390")
book.add("T5.10 se(blend)", 0.106, blend.fixed_effects.loc["ses", "se"], 0.0005)

# %% [markdown]
# The grand-mean-centred slope (2.39) lies between the within-school (2.19) and between-school (5.91)
# slopes: it is a precision-weighted blend of the two, and it answers neither question cleanly.
#
# ## Table 5.11: the contextual effect, two ways

# %%
group_centred = bh.HLM("mathach ~ cses + meanses + (1 | school)", hsb).fit("reml")
grand_centred = bh.HLM("mathach ~ ses + meanses + (1 | school)", hsb, center={"ses": "grand"}).fit("reml")
book.add("T5.11 group-centred gamma01 (= beta_b)", 5.866, group_centred.fixed_effects.loc["meanses", "estimate"],
         0.0005)
book.add("T5.11 grand-centred gamma01 (= beta_c)", 3.675, grand_centred.fixed_effects.loc["meanses", "estimate"],
         0.0005)
book.add("T5.11 se(beta_c)", 0.378, grand_centred.fixed_effects.loc["meanses", "se"], 0.0005)
contextual = (group_centred.fixed_effects.loc["meanses", "estimate"]
              - group_centred.fixed_effects.loc["cses", "estimate"])
book.add("T5.11 beta_c = beta_b - beta_w", 3.675, contextual, 0.0005)

# %% [markdown]
# Two students with the same SES, in schools whose mean SES differs by one unit, differ by 3.7 points
# on average: the contextual effect. Both centrings find it; they just put it in different coefficients.
#
# ## Table 5.12: centring changes the slope variance

# %%
grand_slopes = bh.HLM("mathach ~ ses + (ses | school)", hsb, center={"ses": "grand"}).fit("reml")
T = grand_slopes.tau["school"]
book.add("T5.12 grand: tau00", 4.83, T.iloc[0, 0], 0.005)
book.add("T5.12 grand: tau01", -0.15, T.iloc[0, 1], 0.005)
book.add("T5.12 grand: tau11", 0.42, T.iloc[1, 1], 0.01, "public data give 0.413")
book.add("T5.12 grand: sigma2", 36.83, grand_slopes.sigma2, 0.005)
T

# %% [markdown]
# With grand-mean centring the SES slope variance shrinks (0.41 against 0.69 with group-mean centring,
# case study 1): part of the variation in slopes is absorbed by differences in school mean SES. The book
# recommends group-mean centring when the slope variance itself is of interest.
#
# ## Table 5.9: is the level-1 variance the same in Catholic and public schools? (full ML)

# %%
homogeneous = bh.HLM("mathach ~ sector*cses + (cses | school)", hsb).fit("ml")
heterogeneous = bh.HLM("mathach ~ sector*cses + (cses | school)", hsb, level1_variance="~ sector").fit("ml")
for term, printed in [("(Intercept)", 11.394), ("sector", 2.807), ("cses", 2.803), ("sector:cses", -1.341)]:
    book.add(f"T5.9 homogeneous {term}", printed, homogeneous.fixed_effects.loc[term, "estimate"], 0.0005)
alpha = heterogeneous.residual_parameters
book.add("T5.9 alpha0", 3.688, alpha["alpha0"], 0.001, "nlme gives 3.6889")
book.add("T5.9 alpha1 (sector)", -0.182, alpha["alpha sector"], 0.001, "nlme gives -0.1827")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    test = bh.deviance_test(homogeneous, heterogeneous)
book.add("T5.9 likelihood-ratio statistic (1 df)", 29.139, test.statistic, 0.005)
print(f"level-1 variance: public {np.exp(alpha['alpha0']):.2f}, "
      f"Catholic {np.exp(alpha['alpha0'] + alpha['alpha sector']):.2f}")

# %% [markdown]
# Achievement varies less within Catholic schools (σ² ≈ 33) than within public schools (σ² ≈ 40), and
# the deviance test says the difference is far beyond chance. The fixed effects barely move. (The
# book's absolute deviances are 1.84 lower than ours and lme4's/nlme's: HLM drops a constant. Compare
# differences, as here.)

# %%
book.check()

# %% [markdown]
# **Exercise.** Fit `mathach ~ ses + (1 | school)` with `center={"ses": "group"}` and with
# `center={"ses": "grand"}`, each with and without `meanses` as a level-2 predictor. Which two of the four
# models give the same fit (compare `fit.loglik`), and which coefficient carries the contextual effect in
# each? Then refit the model of Table 5.9 with `level1_variance="sector"` (one σ² per category) instead of the
# log-linear `"~ sector"`, and compare `fit.loglik`: why are the two the same model here, and when would they
# differ?
