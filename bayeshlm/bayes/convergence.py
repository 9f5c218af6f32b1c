"""Convergence statistics of MCMC draws, on arrays (chain, draw): rank-normalised split R-hat, bulk and tail
effective sample sizes, and the energy Bayesian fraction of missing information (E-BFMI).

Definitions: Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization, folding, and
localization: an improved R-hat for assessing convergence of MCMC", Bayesian Analysis 16(2), 667-718; Geyer
(1992) for the truncation of the autocorrelations; Betancourt (2016), arXiv:1604.00695, for E-BFMI. They are
ArviZ's (``arviz_stats.rhat`` with method "rank", ``ess`` with "bulk", and with "tail" at the paper's 5% and
95% quantiles, ``bfmi``; ArviZ 1.x's own default tail quantiles are 11% and 89%, from its interval probability
0.89): every value is checked against arviz_stats to 1e-12 in tests/test_convergence.py. They are written here
on NumPy arrays because ``import arviz_stats`` costs 0.25-0.3 CPU s in a new process (arviz_base's lazy loader
inspects the call stack and reads the source of every frame; arviz_stats loads scipy.signal), as much as
sampling a small HGLM, and every fit reports them. ArviZ itself still serves the summaries users ask for (LOO,
comparisons, plots).
"""

from __future__ import annotations

import numpy as np
from scipy.fft import next_fast_len
from scipy.special import ndtri
from scipy.stats import rankdata

BLOM_OFFSET = 3 / 8  # fractional offset of the normal scores of ranks (Blom 1958)
TAIL_PROBABILITY = 0.05  # tail ESS: the smaller of the ESS of the 5% and 95% quantiles
MIN_DRAWS = 4


def rhat(draws: np.ndarray) -> float:
    """Rank-normalised split R-hat of one quantity, ``draws`` (chain, draw): the larger of the split R-hat of the
    normal scores of the ranks (bulk) and of the folded draws |x - median| (tail). NaN with fewer than 2 chains,
    4 draws per chain, or any non-finite draw."""
    if not _valid(draws, min_chains=2):
        return float("nan")
    split = _split_chains(draws)
    folded = np.abs(split - np.median(split))
    return max(_split_rhat(_normal_scores(split)), _split_rhat(_normal_scores(folded)))


def ess_bulk(draws: np.ndarray) -> float:
    """Bulk effective sample size: the ESS of the normal scores of the ranks of the split chains."""
    if not _valid(draws, min_chains=1):
        return float("nan")
    return _ess(_normal_scores(_split_chains(draws)))


def ess_tail(draws: np.ndarray) -> float:
    """Tail effective sample size: the smaller ESS of the indicators x <= q of the 5% and 95% quantiles q (NumPy's
    linear quantile of all draws), over the split chains."""
    if not _valid(draws, min_chains=1):
        return float("nan")
    return min(_ess(_split_chains(draws <= np.quantile(draws, p)).astype(float))
               for p in (TAIL_PROBABILITY, 1 - TAIL_PROBABILITY))


def bfmi(energy: np.ndarray) -> np.ndarray:
    """E-BFMI per chain: mean squared change of the energy from draw to draw over its variance."""
    energy = np.atleast_2d(energy)
    return np.square(np.diff(energy, axis=1)).mean(axis=1) / np.var(energy, axis=1, ddof=1)


def per_entry(statistic, draws: np.ndarray) -> np.ndarray:
    """``statistic`` of each entry of ``draws`` (chain, draw, *shape): an array of ``shape``."""
    draws = np.asarray(draws, dtype=float)
    flat = draws.reshape(draws.shape[:2] + (-1,))
    return np.array([statistic(flat[:, :, k]) for k in range(flat.shape[2])]).reshape(draws.shape[2:])


def _valid(draws: np.ndarray, min_chains: int) -> bool:
    return draws.ndim == 2 and draws.shape[0] >= min_chains and draws.shape[1] >= MIN_DRAWS \
        and bool(np.isfinite(draws).all())


def _split_chains(draws: np.ndarray) -> np.ndarray:
    """Each chain's first and last halves as two chains (the middle draw of an odd length left out)."""
    half = draws.shape[1] // 2
    return np.vstack((draws[:, :half], draws[:, draws.shape[1] - half:]))


def _normal_scores(values: np.ndarray) -> np.ndarray:
    """Phi^-1((r - 3/8) / (S - 3/4 + 1)), r the average rank of each value among all S values."""
    ranks = rankdata(values, method="average").reshape(values.shape)
    return ndtri((ranks - BLOM_OFFSET) / (values.size - 2 * BLOM_OFFSET + 1))


def _split_rhat(chains: np.ndarray) -> float:
    """sqrt(((n - 1)/n W + B/n) / W) with n draws per chain, W the mean within-chain variance and B/n the
    variance of the chain means (Gelman et al., BDA3, eq. 11.4)."""
    n = chains.shape[1]
    between = n * np.var(chains.mean(axis=1), ddof=1)
    within = np.mean(np.var(chains, axis=1, ddof=1))
    return float(np.sqrt((between / within + n - 1) / n))


def _autocovariance(chains: np.ndarray) -> np.ndarray:
    """Per chain, the autocovariance at every lag (sums over the chain divided by its length), by FFT."""
    n = chains.shape[1]
    size = next_fast_len(2 * n)
    transform = np.fft.rfft(chains - chains.mean(axis=1, keepdims=True), n=size, axis=1)
    return np.fft.irfft(transform * np.conjugate(transform), n=size, axis=1)[:, :n] / n


def _ess(chains: np.ndarray) -> float:
    """Effective sample size of (chain, draw) from the combined autocorrelations rho_t = 1 - (W - mean_c
    acov_c(t)) / var+, summed over Geyer's initial positive and then monotone sequence of pairs
    (Vehtari et al. 2021, eqs. 10-11): S / tau with tau = -1 + 2 sum rho_t (+ the last even lag), at least
    1 / log10(S)."""
    n_chains, n = chains.shape
    if np.max(chains) - np.min(chains) < np.finfo(float).resolution:  # constant: every draw counts
        return float(chains.size)
    acov = _autocovariance(chains)
    within = np.mean(acov[:, 0]) * n / (n - 1.0)
    var_plus = within * (n - 1.0) / n + (np.var(chains.mean(axis=1), ddof=1) if n_chains > 1 else 0.0)
    lag_mean = acov.mean(axis=0)
    rho = np.zeros(n)
    rho[0], even, odd = 1.0, 1.0, 1.0 - (within - lag_mean[1]) / var_plus
    rho[1] = odd
    t = 1
    while t < n - 3 and even + odd > 0.0:  # initial positive sequence
        even = 1.0 - (within - lag_mean[t + 1]) / var_plus
        odd = 1.0 - (within - lag_mean[t + 2]) / var_plus
        if even + odd >= 0:
            rho[t + 1], rho[t + 2] = even, odd
        t += 2
    last = t - 2
    if even > 0:
        rho[last + 1] = even
    for t in range(1, last - 1, 2):  # initial monotone sequence
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
    tau = -1.0 + 2.0 * np.sum(rho[:last + 1]) + np.sum(rho[last + 1:last + 2])
    tau = max(tau, 1 / np.log10(chains.size))
    return float("nan") if np.isnan(rho).any() else float(chains.size / tau)
