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
# # 8. Binary and binomial outcomes: hierarchical generalized linear models (R&B chapter 10)
#
# When the outcome is 0/1 or a count of successes out of n trials, a normal level-1 model is wrong: the
# mean must stay between 0 and 1 and the variance depends on the mean. Raudenbush & Bryk's chapter 10 keeps
# the two-level structure but changes level 1 into three parts:
#
# - a **sampling model**: Y_ij ~ Bernoulli(φ_ij), or Binomial(n_ij, φ_ij);
# - a **link**: η_ij = log(φ_ij / (1 − φ_ij)), the log-odds;
# - a **structural model** for η_ij, written exactly like the level-1 model of a linear HLM, with
#   level-2 equations for its coefficients.
#
# There is no σ²: given φ_ij, the level-1 variance is φ_ij(1 − φ_ij). We fit by maximum likelihood — the
# Laplace approximation (lme4's default), adaptive quadrature, and for comparison penalised
# quasi-likelihood (PQL), the estimator HLM used for years — and check every number against R's `glmer`.
# No sampling here: the whole notebook runs in seconds.

# %%
import numpy as np
import pandas as pd
from scipy import stats

import bayeshlm as bh
from bayeshlm.datasets.references import peer_reference
from bayeshlm.report.book import BookComparison

glmer = BookComparison("lme4 1.1-31 glmer, tight settings (tests/reference/glmm/make_glmm_reference.R)")


def expit(eta):
    """Inverse logit: the probability whose log-odds is eta."""
    return 1 / (1 + np.exp(-eta))


def check_against_glmer(label, fit, reference):
    """Log-likelihood to 1e-6 relative; estimates, SEs and tau to 1e-4 relative (1e-6 absolute floor)."""
    glmer.add(f"{label}: log-likelihood", reference["loglik"], fit.loglik, 1e-6 * abs(reference["loglik"]))
    ours = fit.fixed_effects
    for k, (r_name, term) in enumerate(zip(reference["names"], ours.index, strict=True)):  # R: urbanY, ours: urban[T.Y]
        for column, key in (("estimate", "beta"), ("se", "se")):
            value = reference[key][k]
            glmer.add(f"{label}: {column} {r_name}", value, ours.loc[term, column], max(1e-4 * abs(value), 1e-6))
    for factor, tau in reference["tau"].items():
        tau = np.atleast_2d(tau)
        ours_tau = fit.tau[factor].to_numpy()
        for i, j in zip(*np.tril_indices(len(tau))):
            glmer.add(f"{label}: tau[{factor}]{i}{j}", tau[i, j], ours_tau[i, j], max(1e-4 * abs(tau[i, j]), 1e-6))


# %% [markdown]
# ## Part 1. Contraceptive use in Bangladesh
#
# The 1988 Bangladesh Fertility Survey: 1,934 women in 60 districts. Did a woman use contraception
# (`use`), and how does that depend on her age (centred at the sample mean), the number of her living
# children (0, 1, 2, 3+) and whether she lives in an urban area? The data code `use` as the text 'Y'/'N'.
# bayeshlm refuses a text outcome rather than guess which value is the "event", so we say it: 1 = uses
# contraception. We also give `livch` its natural order so that "no children" is the reference category.

# %%
contraception = bh.datasets.load("contraception")
contraception["use"] = (contraception["use"] == "Y").astype(int)
contraception["livch"] = pd.Categorical(contraception["livch"], categories=["0", "1", "2", "3+"])
print(f"{len(contraception)} women in {contraception['district'].nunique()} districts; "
      f"{contraception['use'].mean():.1%} use contraception")
contraception.head()

# %% [markdown]
# ### Step 1: how much do districts differ? (random intercept only)
#
# η_ij = β0j, β0j = γ00 + u0j, u0j ~ N(0, τ00). τ00 is a variance of log-odds between districts.

# %%
empty = bh.HLM("use ~ 1 + (1 | district)", contraception, family="bernoulli").fit()
print(empty.report())
print(f"Latent-scale ICC: {empty.icc():.3f}")

# %% [markdown]
# **The ICC of a binary outcome needs a caveat.** There is no level-1 variance parameter to divide by.
# `icc()` imagines a continuous latent propensity behind the 0/1 outcome, with a logistic level-1 error of
# variance π²/3 ≈ 3.29, and reports τ00 / (τ00 + π²/3) ≈ 0.07: about 7% of the variance in the *latent*
# propensity to use contraception lies between districts. It is not the correlation of two women's 0/1
# answers (that is smaller and depends on the overall rate), and it changes with the link: a probit model
# would divide by 1 instead of 3.29.
#
# ### Step 2: women's characteristics (random intercept model)

# %%
intercept_model = bh.HLM("use ~ age + I(age**2) + urban + livch + (1 | district)", contraception,
                         family="bernoulli")
print(intercept_model.equations())
intercept_fit = intercept_model.fit()
intercept_fit.fixed_effects[["estimate", "se", "z", "p", "odds_ratio", "odds_ratio_lower", "odds_ratio_upper"]]

# %% [markdown]
# The coefficients are on the log-odds scale; exponentiated, they are **odds ratios** for a woman
# compared with an otherwise identical woman *in the same district* (a unit-specific effect). Living in an
# urban area doubles the odds of using contraception (OR ≈ 2.0); having any living child raises them by a
# factor of about 2.3–2.5, with little difference between one child and three or more. Use rises and then
# falls with age (the negative quadratic term); the linear term is near 0 because age is centred at the
# mean, where the curve is at its peak. τ00 drops from 0.246 to 0.226: the covariates explain little of
# the between-district variance.
#
# ### Step 3: does the urban–rural gap vary between districts? (random slope of urban)

# %%
urban_model = bh.HLM("use ~ age + I(age**2) + urban + livch + (urban | district)", contraception,
                     family="bernoulli")
urban_fit = urban_model.fit()
print(urban_fit.report())

# %% [markdown]
# The deviance test compares the two nested models: the statistic is −2 (log L0 − log L1), referred to χ² with
# 2 degrees of freedom (the urban variance and its covariance with the intercept). Because a variance cannot go
# below 0 the null sits on the boundary of the parameter space, so this p-value is conservative (R&B 2002,
# ch. 9). Both fits must use the same family and the same approximation (here Laplace).

# %%
lr_test = bh.deviance_test(intercept_fit, urban_fit)
print(lr_test)
print(f"by hand: -2 (log L0 - log L1) = {-2 * (intercept_fit.loglik - urban_fit.loglik):.2f} on "
      f"{urban_fit.n_params - intercept_fit.n_params} df")

# %%
tau = urban_fit.tau["district"]
rural_variance = tau.iloc[0, 0]
urban_variance = tau.iloc[0, 0] + 2 * tau.iloc[0, 1] + tau.iloc[1, 1]
print(f"between-district variance of the log-odds: rural {rural_variance:.3f}, urban {urban_variance:.3f}; "
      f"correlation of intercept and urban effect {tau.iloc[0, 1] / np.sqrt(tau.iloc[0, 0] * tau.iloc[1, 1]):.2f}")

# %% [markdown]
# The urban effect does vary between districts (χ² ≈ 12.1, p ≈ 0.002). The strong negative correlation
# between a district's rural intercept and its urban effect means that districts differ mainly in their
# rural areas: where rural use is low, the urban advantage is large, and the urban areas of different
# districts are more alike (variance 0.20 against 0.38).
#
# ### Predicted probabilities: a typical woman, urban or rural
#
# Take a woman of average age (age = 0, since age is centred), either with no living children or with
# three or more (the most common group). Her linear predictor is x'γ; its inverse logit is the
# **unit-specific** probability: the probability for such a woman in a district whose random effects are 0
# (a "typical" district). The **population-average** probability is the average over all districts,
# E_u[expit(x'γ + u)]; because expit is curved, it lies closer to 0.5 than the typical district's. We
# compute it with Gauss–Hermite quadrature over u, using each area's own between-district variance from
# the urban-slope model.

# %%
gamma = urban_fit.fixed_effects["estimate"]
nodes, weights = np.polynomial.hermite_e.hermegauss(40)  # for E over a standard normal: sum(w f(z)) / sqrt(2 pi)
rows = []
for children, child_effect in (("0", 0.0), ("3+", gamma["livch[T.3+]"])):
    for area, urban_indicator, variance in (("rural", 0, rural_variance), ("urban", 1, urban_variance)):
        eta = gamma["(Intercept)"] + gamma["urban[T.Y]"] * urban_indicator + child_effect
        average = np.sum(weights * expit(eta + np.sqrt(variance) * nodes)) / np.sqrt(2 * np.pi)
        rows.append({"living children": children, "area": area, "log-odds x'γ": eta,
                     "unit-specific P": expit(eta), "population-average P": average})
predictions = pd.DataFrame(rows).set_index(["living children", "area"])
predictions.round(3)

# %% [markdown]
# In a typical district a woman with three or more children uses contraception with probability 0.47 if
# rural and 0.65 if urban; a woman with no children, 0.26 and 0.43. Averaged over districts every
# probability moves toward 0.5. How far depends on two things: the distance from 0.5 (the curvature of
# expit matters most there) and the between-district variance. The childless rural woman moves most
# (0.256 → 0.272): far from 0.5, and rural areas vary most between districts. Unit-specific and
# population-average odds ratios differ for the same reason.
#
# The same distinction for coefficients: `population_average()` turns the unit-specific coefficients of
# a random-intercept model into population-average ones (for the logit by the Zeger–Liang–Albert
# approximation b / √(1 + c²τ)); they are shrunk toward 0 by a factor of about 0.96 here because τ00 is
# small. R&B (section 10.4) explain when each is the question: "what happens to a woman who moves to the
# city" is unit-specific; "how do urban and rural women differ in the country as a whole" is
# population-average.

# %%
marginal = intercept_fit.population_average()
print(marginal.attrs["method"])
marginal.assign(odds_ratio_unit=np.exp(marginal["unit_specific"]),
                odds_ratio_population=np.exp(marginal["population_average"])).round(4)

# %% [markdown]
# ### The same fits in R
#
# `glmer(use ~ age + I(age^2) + urban + livch + (1 | district), family = binomial)` and its
# `(urban | district)` version, refitted with tight tolerances, give these numbers (shipped with the
# package, so this notebook checks itself anywhere):

# %%
check_against_glmer("contraception (1 | district)", intercept_fit,
                    peer_reference("glmer", "contraception_intercept"))
check_against_glmer("contraception (urban | district)", urban_fit, peer_reference("glmer", "contraception_urban"))

# %% [markdown]
# ## Part 2. Binomial counts: cattle herds, and three ways to approximate the likelihood
#
# `cbpp`: new cases of contagious bovine pleuropneumonia in 15 Ethiopian herds over 4 periods. Each row is a
# number of successes out of `size` trials, written `cbind(successes, failures)` as in R:
# incidence_ij ~ Binomial(size_ij, φ_ij), logit(φ_ij) = β0j + γ1 period2 + γ2 period3 + γ3 period4.

# %%
cbpp = bh.datasets.load("cbpp")
cbpp_model = bh.HLM("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
print(cbpp_model.equations())
laplace = cbpp_model.fit()
quadrature = cbpp_model.fit(nagq=25)
pql = cbpp_model.fit(method="pql")

# %% [markdown]
# The marginal likelihood integrates each herd's random effect out of a product of binomial
# probabilities; the integral has no closed form, and the three estimators approximate it differently:
#
# - **Laplace** (`fit()`): replace the integrand by a Gaussian around its mode. One evaluation per herd;
#   works for any random-effects structure.
# - **Adaptive Gauss–Hermite quadrature** (`fit(nagq=25)`): evaluate the integrand at 25 points placed
#   around the mode — for practical purposes the exact likelihood. Available for a single grouping
#   factor with a random intercept.
# - **PQL** (`fit(method="pql")`): linearise the link around the current estimates and fit a *linear* HLM
#   to the working outcome, iterating. This is the estimator of HLM's early versions. It maximises no
#   likelihood at all (so there is no log-likelihood and no deviance test), and the linearisation is poor
#   when the binomial denominators are small (binary data: n = 1) and τ is large: the fixed effects and τ
#   are then biased toward 0 (Breslow & Clayton 1993; Breslow & Lin 1995).

# %%
def estimator_column(fit):
    table = fit.fixed_effects
    column = {f"{term}": f"{table.loc[term, 'estimate']:.4f} ({table.loc[term, 'se']:.4f})" for term in table.index}
    column["tau00"] = f"{fit.tau['herd'].iloc[0, 0]:.4f}"
    column["log-likelihood"] = "none" if fit.loglik is None else f"{fit.loglik:.4f}"
    return column


pd.DataFrame({"Laplace": estimator_column(laplace), "AGQ, 25 points": estimator_column(quadrature),
              "PQL": estimator_column(pql)})

# %% [markdown]
# Laplace and quadrature agree to the second decimal: with herds of 2 to 34 animals the integrand is
# close to Gaussian. PQL pulls every fixed effect toward 0, by 1.5–2.5% (e.g. the intercept: −1.363
# against −1.399); here its τ00 is slightly *larger*, so the attenuation of the fixed effects is not a side
# effect of a smaller variance. The differences are small for these binomial counts with a moderate τ;
# they grow with τ and as the denominators shrink toward binary outcomes with few rows per group. That is
# why Laplace or quadrature are the estimators to report; PQL is here to reproduce older HLM analyses (the
# book's chapter 10 tables are PQL unless stated).
#
# **Comparing log-likelihoods with R.** Our quadrature log-likelihood is the marginal log-likelihood with
# every constant. `logLik()` of a `glmer` fit with nAGQ > 1 subtracts the saturated binomial model's
# log-likelihood, Σ log Binomial(y | n, y/n). The shipped reference records both; we check ours on the
# marginal scale and show that adding the saturated term to glmer's printed value gives the same number.

# %%
reference_laplace = peer_reference("glmer", "cbpp_laplace")
reference_agq = peer_reference("glmer", "cbpp_agq25")
check_against_glmer("cbpp Laplace", laplace, reference_laplace)
check_against_glmer("cbpp AGQ 25", quadrature, reference_agq)
saturated = stats.binom.logpmf(cbpp["incidence"], cbpp["size"], cbpp["incidence"] / cbpp["size"]).sum()
glmer.add("cbpp AGQ 25: glmer's logLik + saturated log-likelihood", reference_agq["glmer_loglik_scale"] + saturated,
          quadrature.loglik, 1e-6 * abs(quadrature.loglik), f"saturated = {saturated:.4f}")
print(f"glmer's logLik at nAGQ = 25: {reference_agq['glmer_loglik_scale']:.4f}; saturated {saturated:.4f}; "
      f"sum {reference_agq['glmer_loglik_scale'] + saturated:.4f}; ours {quadrature.loglik:.4f}")

# %% [markdown]
# ## Every number checked against glmer

# %%
glmer.check()

# %% [markdown]
# ## Exercise
#
# 1. Add a random slope for age to the Contraception model, `(urban + age | district)`. How many
#    parameters does it add? Does the deviance test against the urban-slope model support it?
# 2. Fit the random-intercept Contraception model by PQL (`fit(method="pql")`) and by quadrature
#    (`fit(nagq=25)`). How far is each from the Laplace fit, and why is the gap smaller than in the
#    textbook examples of PQL's bias? (Hint: how many women does a district hold?)
# 3. Refit cbpp with `link="probit"`. Divide the logit coefficients by about 1.6–1.7: do you get the
#    probit ones? What does `icc()` report now, and why does it differ from the logit model's?
