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
# # 5. Cross-classified random effects: pupils in primary and secondary schools (R&B chapter 12 style)
#
# 3,435 Scottish pupils attended one of 148 primary schools and one of 19 secondary schools. Primary and
# secondary schools are crossed, not nested: pupils from one primary school spread over several
# secondary schools. Attainment at 16 gets a random effect for each kind of school.

# %%
import os

import bayeshlm as bh
from bayeshlm.datasets.references import peer_reference
from bayeshlm.report.book import BookComparison

DRAWS = int(os.environ.get("BAYESHLM_DRAWS", 1000))
scots = bh.datasets.load("scotssec")
model = bh.HLM("attain ~ verbal + sex + (1 | primary) + (1 | second)", scots)
print(model.summary())
print(model.equations())

# %%
fit = model.fit("reml")
print(fit.report())

# %% [markdown]
# Which kind of school matters more, once verbal reasoning at entry is taken into account?

# %%
tau_primary = fit.tau["primary"].iloc[0, 0]
tau_second = fit.tau["second"].iloc[0, 0]
total = tau_primary + tau_second + fit.sigma2
print(f"primary school: {tau_primary / total:.1%}, secondary school: {tau_second / total:.1%} of the variance")
print(f"correlation of two pupils from the same primary and secondary school: {(tau_primary + tau_second) / total:.3f}")

# %% [markdown]
# Against lme4 (reference numbers from the R script `tests/reference/make_reference.R`, shipped with the package):

# %%
lme4 = peer_reference("lme4", "scotssec_reml")
check = BookComparison("lme4 1.1-31 (tests/reference/make_reference.R)")
check.add("REML criterion", lme4["criterion"], fit.deviance, 1e-3)
check.add("var(primary)", lme4["varcorr"]["primary"]["cov"][0][0], tau_primary, 1e-4)
check.add("var(second)", lme4["varcorr"]["second"]["cov"][0][0], tau_second, 1e-4)
check.add("sigma2", lme4["sigma2"], fit.sigma2, 1e-4)
print(check.check())

# %% [markdown]
# ## The same model by full Bayes
#
# Crossed effects cannot all be integrated out in closed form, but most of them can: the engine integrates
# the 148 primary-school effects out exactly and samples the 19 secondary-school effects, choosing the
# non-centred form because the data say little about each secondary school once primary schools are
# accounted for (their REML reliability is about 0.2).

# %%
bayes = model.fit("bayes", draws=DRAWS, tune=DRAWS, chains=4, random_seed=12)
print(bayes.sampler["parameterization"], bayes.sampler["reliability"], bayes.diagnostics)
bh.compare(fit, bayes).round(3)

# %% [markdown]
# The fixed effects agree with REML (to a quarter of a posterior SD, checked below). The variances do
# not have to: with only 19 secondary schools, REML's point estimate of their variance (about 0.014) sits
# low in a long right-skewed posterior, and the posterior answers directly the question a REML fit cannot:
# how sure are we that primary schools matter more than secondary schools?

# %%
assert bayes.diagnostics["divergences"] == 0
gap = (bayes.fixed_effects["estimate"] - fit.fixed_effects["estimate"]).abs() / bayes.fixed_effects["se"]
assert (gap < 0.25).all(), gap
primary = bayes.draws("tau_primary").values.ravel() ** 2
second = bayes.draws("tau_second").values.ravel() ** 2
print(f"posterior mean variance: primary {primary.mean():.3f}, secondary {second.mean():.3f}")
print(f"P(primary-school variance > secondary-school variance | data) = {(primary > second).mean():.3f}")

# %% [markdown]
# **Exercise.** Fit the model with only one of the two school factors (`(1 | primary)` or `(1 | second)`) and
# compare `fit.tau` with the crossed model's. Where does the variance of the missing factor go? Then compare
# the crossed model and each one-factor model with `bh.deviance_test` (REML fits with identical fixed effects
# may be compared): is the primary-school variance needed once secondary schools are in the model?
