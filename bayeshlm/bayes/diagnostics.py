"""Convergence diagnostics in plain words.

Thresholds follow Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization, folding, and
localization: an improved R-hat", Bayesian Analysis 16(2): R-hat < 1.01 and bulk/tail ESS >= 100 per chain;
BFMI < 0.3 flags poor exploration of the energy distribution (Betancourt 2016, arXiv:1604.00695).
"""

from __future__ import annotations

import warnings

import arviz_stats as azs  # what `arviz` re-exports, without importing arviz-plots and matplotlib
import numpy as np
import xarray as xr

RHAT_MAX = 1.01
ESS_PER_CHAIN_MIN = 100
BFMI_MIN = 0.3


class SamplingWarning(UserWarning):
    """The sampler reported a problem: the posterior summaries may be unreliable."""


def diagnose(tree: xr.DataTree, var_names: list[str], chains: int) -> tuple[dict, list[str]]:
    """Divergences, max R-hat, min bulk/tail ESS and min BFMI over ``var_names``, with plain-English problems."""
    stats = tree["sample_stats"].to_dataset()
    divergences = int(stats["diverging"].sum()) if "diverging" in stats else 0
    n_draws = int(stats.sizes["chain"] * stats.sizes["draw"])
    varying = _varying_entries(tree["posterior"].to_dataset(), var_names)
    with np.errstate(invalid="ignore", divide="ignore"):  # constant entries (corr[0, 0] = 1) are left out
        rhat = _max(azs.rhat(tree, var_names=var_names), varying) if chains > 1 else float("nan")
        ess_bulk = _min(azs.ess(tree, var_names=var_names, method="bulk"), varying)
        ess_tail = _min(azs.ess(tree, var_names=var_names, method="tail"), varying)
    bfmi = float(np.min(np.asarray(azs.bfmi(tree)["energy"]))) if "energy" in stats else float("nan")
    diagnostics = {"divergences": divergences, "divergence_rate": divergences / n_draws, "max_rhat": rhat,
                   "min_ess_bulk": ess_bulk, "min_ess_tail": ess_tail, "min_bfmi": bfmi, "draws": n_draws}
    messages = []
    undefined = [name for name, value in (("R-hat", rhat if chains > 1 else 0.0), ("bulk ESS", ess_bulk),
                                          ("tail ESS", ess_tail), ("energy BFMI", bfmi)) if np.isnan(value)]
    if undefined:
        per_chain = stats.sizes["draw"]
        messages.append(f"The convergence diagnostics {', '.join(undefined)} could not be computed (NaN) from "
                        f"{per_chain} draw{'s' if per_chain != 1 else ''} per chain: they need at least 4 finite draws "
                        "per chain that change from draw to draw. Nothing shows that these "
                        "draws represent the posterior; refit with more draws (e.g. draws=1000).")
    if divergences:
        messages.append(f"{divergences} of {n_draws} draws ended in a divergent transition: the sampler could not "
                        "follow the posterior's curvature, so intervals may be biased. Refit with "
                        "target_accept=0.95 or 0.99; if divergences persist, the model is too weakly identified "
                        "(consider more informative priors on the variance components).")
    if chains > 1 and rhat > RHAT_MAX:
        messages.append(f"Max R-hat is {rhat:.3f} (above {RHAT_MAX}): the chains disagree, so they have not all "
                        "converged to the posterior. Run longer (more tune and draws) and check the model.")
    elif chains == 1:
        messages.append("Only one chain: R-hat cannot check convergence. Use chains=4.")
    ess_min = ESS_PER_CHAIN_MIN * chains
    if min(ess_bulk, ess_tail) < ess_min:
        messages.append(f"Effective sample size is low (min bulk {ess_bulk:.0f}, min tail {ess_tail:.0f}; want at "
                        f"least {ess_min}, i.e. {ESS_PER_CHAIN_MIN} per chain): posterior means and especially "
                        "interval ends are imprecise. Increase draws.")
    if bfmi < BFMI_MIN:
        messages.append(f"Low energy BFMI ({bfmi:.2f} < {BFMI_MIN}): the sampler explores the variance "
                        "parameters poorly (typical of a funnel). Increase tune, or try the other "
                        "parameterisation (parameterization={'<factor>': 'centred' or 'non-centred'}).")
    return diagnostics, messages


def warn_if_problems(messages: list[str]) -> None:
    if messages:
        warnings.warn("Sampling problems:\n- " + "\n- ".join(messages), SamplingWarning, stacklevel=3)


def _varying_entries(posterior: xr.Dataset, var_names: list[str]) -> dict[str, np.ndarray]:
    """Per variable, which entries change across draws: constants such as the unit diagonal of a correlation
    Cholesky factor have no meaningful R-hat or ESS (ArviZ reports ESS = number of draws for them)."""
    return {name: np.asarray(posterior[name].std(("chain", "draw")).values > 0) for name in var_names}


def _max(ds: xr.Dataset, varying: dict[str, np.ndarray]) -> float:
    values = [float(np.nanmax(v.values[varying[k]])) for k, v in ds.data_vars.items() if varying[k].any()]
    return max(values) if values else float("nan")


def _min(ds: xr.Dataset, varying: dict[str, np.ndarray]) -> float:
    values = [float(np.nanmin(v.values[varying[k]])) for k, v in ds.data_vars.items() if varying[k].any()]
    return min(values) if values else float("nan")
