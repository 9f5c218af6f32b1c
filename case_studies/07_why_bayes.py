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
# # 7. Why Bayes? Few groups, prior sensitivity, and what REML intervals miss
#
# With 160 schools, REML and Bayes agree (case study 1). With few groups they part ways, and the
# difference is the uncertainty about the variance τ itself, which REML ignores (R&B chapter 13).
# We keep the first 8 HS&B schools and fit the random-intercept model both ways.

# %%
import os
import warnings

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

import bayeshlm as bh

DRAWS = int(os.environ.get("BAYESHLM_DRAWS", 1000))
hsb = bh.datasets.load("hsb")
few = hsb[hsb["school"].isin(sorted(hsb["school"].unique())[:8])]
model = bh.HLM("mathach ~ meanses + (1 | school)", few)
print(model.summary())

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    reml = model.fit("reml")
bayes = model.fit("bayes", draws=DRAWS, tune=DRAWS, chains=4, random_seed=7)
bh.compare(reml, bayes).round(3)

# %% [markdown]
# The REML standard error of the MEAN SES effect treats τ00 as known. The posterior integrates over τ00,
# so its interval is wider — honestly so. Look at the posterior of τ00 beside the REML point estimate:

# %%
bh.plots.variance_posterior(bayes, reml)

# %% [markdown]
# ## Likelihood, prior and posterior for one school
#
# Where do a school's estimates come from? Take the school whose mean lies farthest from what its MEANSES
# predicts. Its own data say its true mean β0j is near its sample mean ȳj, with sampling variance σ²/nj: that
# is the **likelihood**. The level-2 model says, before seeing this school's scores, that
# β0j ~ N(γ00 + γ01 MEANSESj, τ00): schools like it score about this much, give or take √τ00. That is the
# **prior** for this school, learned from all the schools.
# The **posterior** combines the two with weights equal to their precisions (R&B eq. 3.56):
#
# β*0j = λj ȳj + (1 − λj)(γ00 + γ01 MEANSESj), with reliability λj = τ00 / (τ00 + σ²/nj) and variance λj σ²/nj.

# %%
gamma = reml.fixed_effects["estimate"]
by_school = few.groupby("school").agg(ybar=("mathach", "mean"), n=("mathach", "size"), meanses=("meanses", "first"))
by_school["predicted"] = gamma["(Intercept)"] + gamma["meanses"] * by_school["meanses"]
school = (by_school["ybar"] - by_school["predicted"]).abs().idxmax()
n_j, ybar, prior_mean = by_school.loc[school, "n"], by_school.loc[school, "ybar"], by_school.loc[school, "predicted"]
tau00, sigma2 = reml.tau["school"].iloc[0, 0], reml.sigma2
reliability = tau00 / (tau00 + sigma2 / n_j)
eb_mean, eb_var = reliability * ybar + (1 - reliability) * prior_mean, reliability * sigma2 / n_j
eb_table = reml.group_effects("school").loc[(school, "(Intercept)"), "estimate"]
assert abs(eb_mean - eb_table) < 1e-6 * abs(eb_table)  # eq. 3.56 is what the fit reports
print(f"school {school}: n = {n_j}, sample mean {ybar:.2f}, predicted from MEANSES {prior_mean:.2f}, "
      f"reliability {reliability:.2f}, empirical-Bayes estimate {eb_mean:.2f}")

full_bayes_draws = bayes.group_coefficient_draws("school").sel(school=school).values.ravel()
grid = np.linspace(min(ybar, prior_mean) - 4 * np.sqrt(tau00), max(ybar, prior_mean) + 4 * np.sqrt(tau00), 400)
figure, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(grid, stats.norm.pdf(grid, ybar, np.sqrt(sigma2 / n_j)), label="likelihood: this school's scores")
ax.plot(grid, stats.norm.pdf(grid, prior_mean, np.sqrt(tau00)), label="prior: the level-2 model")
ax.plot(grid, stats.norm.pdf(grid, eb_mean, np.sqrt(eb_var)), label="posterior given REML γ, τ00, σ²")
ax.hist(full_bayes_draws, bins=40, density=True, alpha=0.3, color="grey", label="full Bayes (draws)")
ax.set_xlabel(f"true mean math achievement of school {school}")
ax.set_yticks([])
ax.legend(frameon=False, fontsize=8)
figure.tight_layout()

# %% [markdown]
# The posterior sits between the two, closer to whichever is more precise. Empirical Bayes plugs in the REML
# estimates of γ, τ00 and σ²; full Bayes also averages over their uncertainty, so its draws spread a little
# wider. With eight schools, τ00 itself is uncertain, which is what the next sections are about.

# %% [markdown]
# ## Did the sampler work? Convergence diagnostics in pictures
#
# Every interval above assumes the chains explored the posterior. Four chains started at different points should
# agree; the trace plot overlays them (left: each chain's density, right: its path over the draws). Chains that
# agree look like one "hairy caterpillar" and give matching densities.

# %%
print(bayes.diagnostics)
trace_plot = az.plot_trace_dist(bayes.posterior, var_names=["tau_school", "sigma", "beta"])

# %% [markdown]
# R-hat compares the spread between and within chains (near 1 when they agree); the effective sample size
# (ESS) says how many independent draws the correlated ones are worth. Rank plots show the same thing more
# sharply: pool all draws, rank them, and plot a histogram of each chain's ranks. If the chains sample the same
# distribution every histogram is flat; a chain stuck in one region piles up at one end.

# %%
rank_plot = az.plot_rank(bayes.posterior, var_names=["tau_school", "sigma"])

# %% [markdown]
# The energy plot compares the distribution of the Hamiltonian's energy with its changes from one draw to the
# next; when the changes are much narrower (a low BFMI, the `min_bfmi` above), the sampler cannot move through
# the tails, typically in the "funnel" between a group-level SD and the group effects. A **divergence** is a
# numerical breakdown of a trajectory in such a region of high curvature: draws near it are missing, so the
# posterior is biased there, even if R-hat looks fine. bayeshlm integrates the school effects out before
# sampling (they are drawn afterwards from their exact conditional posterior), so the sampler never meets that
# funnel. Sampled directly in the centred form (`route="sampled"`, `parameterization={"school": "centred"}`),
# this model gave 14 divergences in 4,000 draws in one run, and a lower ESS; the exercise below repeats it.

# %%
assert bayes.diagnostics["divergence_rate"] < 0.01
energy_plot = az.plot_energy(bayes.posterior)

# %% [markdown]
# ## Prior sensitivity
#
# With eight groups the data say little about τ00, so the prior matters. Compare the default weakly
# informative prior with the book's flat prior.

# %%
flat = model.fit("bayes", priors="flat", draws=DRAWS, tune=DRAWS, chains=4, random_seed=7)
tau_default = bayes.draws("T_school").values[..., 0, 0].ravel()
tau_flat = flat.draws("T_school").values[..., 0, 0].ravel()
print(f"posterior median of tau00: default prior {np.median(tau_default):.2f}, flat prior {np.median(tau_flat):.2f}")
print(f"REML tau00: {reml.tau['school'].iloc[0, 0]:.2f}")
assert np.median(tau_flat) > np.median(tau_default) * 0.5  # both priors leave tau00 clearly positive

# %% [markdown]
# The flat prior puts more weight on large variances, so its posterior for τ00 sits higher. With 160
# schools the two would be indistinguishable; with 8 the choice of prior is part of the analysis and
# should be reported, as the fit's report does.
#
# **Exercise.** Refit the eight-school model with the school effects sampled, `route="sampled"`, and the
# centred parameterisation, `parameterization={"school": "centred"}`. Count the divergences
# (`fit.diagnostics`), draw the rank plot of `tau_school`, and compare the posterior median of τ00 with the one
# above. Which would you report, and why?
