"""Convergence diagnostics in plain words.

Thresholds follow Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization, folding, and
localization: an improved R-hat", Bayesian Analysis 16(2): R-hat < 1.01 and bulk/tail ESS >= 100 per chain;
BFMI < 0.3 flags poor exploration of the energy distribution (Betancourt 2016, arXiv:1604.00695).
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from .convergence import bfmi as energy_bfmi
from .convergence import ess_bulk, ess_tail, per_entry, rhat

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
    posterior = tree["posterior"].to_dataset()
    draws = {name: posterior[name].transpose("chain", "draw", ...).values for name in var_names}
    varying = {name: values.std(axis=(0, 1)) > 0 for name, values in draws.items()}
    with np.errstate(invalid="ignore", divide="ignore"):  # constant entries (corr[0, 0] = 1) are left out
        max_rhat = _extreme(max, rhat, draws, varying) if chains > 1 else float("nan")
        min_ess_bulk = _extreme(min, ess_bulk, draws, varying)
        min_ess_tail = _extreme(min, ess_tail, draws, varying)
    bfmi = float(np.min(energy_bfmi(stats["energy"].values))) if "energy" in stats else float("nan")
    diagnostics = {"divergences": divergences, "divergence_rate": divergences / n_draws, "max_rhat": max_rhat,
                   "min_ess_bulk": min_ess_bulk, "min_ess_tail": min_ess_tail, "min_bfmi": bfmi, "draws": n_draws}
    messages = []
    undefined = [name for name, value in (("R-hat", max_rhat if chains > 1 else 0.0), ("bulk ESS", min_ess_bulk),
                                          ("tail ESS", min_ess_tail), ("energy BFMI", bfmi)) if np.isnan(value)]
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
    if chains > 1 and max_rhat > RHAT_MAX:
        messages.append(f"Max R-hat is {max_rhat:.3f} (above {RHAT_MAX}): the chains disagree, so they have not all "
                        "converged to the posterior. Run longer (more tune and draws) and check the model.")
    elif chains == 1:
        messages.append("Only one chain: R-hat cannot check convergence. Use chains=4.")
    ess_min = ESS_PER_CHAIN_MIN * chains
    if min(min_ess_bulk, min_ess_tail) < ess_min:
        messages.append(f"Effective sample size is low (min bulk {min_ess_bulk:.0f}, min tail {min_ess_tail:.0f}; "
                        f"want at least {ess_min}, i.e. {ESS_PER_CHAIN_MIN} per chain): posterior means and especially "
                        "interval ends are imprecise. Increase draws.")
    if bfmi < BFMI_MIN:
        messages.append(f"Low energy BFMI ({bfmi:.2f} < {BFMI_MIN}): the sampler explores the variance "
                        "parameters poorly (typical of a funnel). Increase tune, or try the other "
                        "parameterisation (parameterization={'<factor>': 'centred' or 'non-centred'}).")
    return diagnostics, messages


def warn_if_problems(messages: list[str]) -> None:
    if messages:
        warnings.warn("Sampling problems:\n- " + "\n- ".join(messages), SamplingWarning, stacklevel=3)


def _extreme(pick, statistic, draws: dict[str, np.ndarray], varying: dict[str, np.ndarray]) -> float:
    """``pick`` (max or min) of ``statistic`` over the entries that change across draws: constants such as the
    unit diagonal of a correlation Cholesky factor have no meaningful R-hat or ESS. NaN entries are skipped
    (NaN when every one is)."""
    values = [value for name, entries in draws.items()
              for value in per_entry(statistic, entries.reshape(entries.shape[:2] + (-1,))[:, :, varying[name].ravel()])
              if not np.isnan(value)]
    return float(pick(values)) if values else float("nan")
