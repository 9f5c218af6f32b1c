"""The negative binomial rows of the HGLM kernel (bayes/glmm_kernel.py and its C twin _glmm_kernel.c, issue 24):
for whole counts the rows' sums of lgamma(y_i + k) - lgamma(k) and psi(y_i + k) - psi(k) come from the count table
N_m = #{i : y_i > m} as sum_m N_m log(k + m) and sum_m N_m / (k + m); with large counts (max y > 4 n) they are
taken row by row. Both paths against each other in both kernels, the table's sums against scipy, the per-row path
against the PyMC graph (test_bayes_glmm's NB cases check the table path against it).
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special
from test_bayes_glmm import CASES
from test_bayes_glmm import test_kernel_equals_pymc_graph as kernel_equals_pymc_graph

import bayeshlm as bh
import bayeshlm.bayes.glmm_kernel as glmm_kernel
import bayeshlm.bayes.glmm_kernel_numba as glmm_kernel_numba
from bayeshlm.bayes.glmm import build_kernel, resolve_glmm_priors
from bayeshlm.bayes.glmm_kernel import count_table, extension_callbacks, log_density_and_gradient, numba_callbacks

SHAPES = (0.05, 0.5, 3.0, 40.0, 1e3)


def counts(large: bool, seed=0, J=8, n=12) -> pd.DataFrame:
    """Negative binomial counts (k = 1.5) with a random intercept per g: about a fifth zeros, max y 30-60; with
    ``large``, every fourth count times 20 (max y in the hundreds, above 4 n = 384 rows' worth)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    mu = np.exp(1.0 + 0.8 * x + rng.normal(size=J)[g])
    y = rng.negative_binomial(1.5, 1.5 / (1.5 + mu))
    if large:
        y[::4] *= 20
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})


def both_paths(large: bool, monkeypatch):
    """The model's kernel with the count table (forced where max y > 4 n) and with lgamma and psi row by row."""
    model = bh.HLM("y ~ x + (1 | g)", counts(large), family="negative_binomial")
    priors, shape = resolve_glmm_priors(model.design, model.outcome, None)
    out = {}
    for path, bound in (("table", math.inf), ("per row", -1.0)):
        monkeypatch.setattr(glmm_kernel, "COUNT_TABLE_PER_ROW", bound)
        out[path] = build_kernel(model.design, model.outcome, priors, shape, {"g": "non-centred"}, None)
    return model.outcome.y, out


def test_count_table_counts_the_rows_above_each_count():
    """N_m = #{y_i > m}, m < max y; None (lgamma row by row) for counts that are not exactly whole numbers >= 0 --
    the family refuses them only beyond a relative 1e-8 -- and when max y > 4 n; empty when every count is 0."""
    np.testing.assert_array_equal(count_table([0, 3, 1, 0, 3, 2]), [4, 3, 2])
    np.testing.assert_array_equal(count_table([0.0, 0.0]), np.zeros(0))
    assert len(count_table([0, 8])) == 8 and count_table([0, 9]) is None  # 4 n = 8
    for y in ([1, 2.5], [1, 2 + 1e-12], [1, -1], [1, np.nan], [1, np.inf]):
        assert count_table(y) is None, y


def test_table_sums_are_the_lgamma_and_digamma_differences():
    """sum_m N_m log(k + m) and sum_m N_m / (k + m) against scipy's sum_i lgamma(y_i + k) - lgamma(k) and
    psi(y_i + k) - psi(k) (counts 0-300, a third zeros): within 1e-14 of the sums of the terms' magnitudes, the
    rounding of scipy's values, for k from 0.05 to 1e3."""
    rng = np.random.default_rng(5)
    y = np.where(rng.random(400) < 0.3, 0, rng.integers(0, 301, 400)).astype(float)
    table = count_table(y)
    assert len(table) == y.max()
    for k in SHAPES:
        lp, d_shape = glmm_kernel_numba._count_table_terms(table, k)
        lgamma_terms = special.gammaln(y + k) - special.gammaln(k)
        psi_terms = special.digamma(y + k) - special.digamma(k)
        size = np.sum(np.abs(special.gammaln(y + k)) + abs(special.gammaln(k)))
        assert abs(lp - math.fsum(lgamma_terms)) <= 1e-14 * size, k
        size = np.sum(np.abs(special.digamma(y + k)) + abs(special.digamma(k)))
        assert abs(d_shape - math.fsum(psi_terms)) <= 1e-14 * size, k


def test_negative_binomial_rows_logged_in_products_are_the_direct_sums():
    """The rows' terms and d/dk, whose logs of k + mu_i both kernels take of running products
    (glmm_kernel_numba._negative_binomial_rows), against y_i (eta_i - L_i) - k L_i and log k - L_i - w_i with
    L_i = logaddexp(log k, eta_i) row by row, summed exactly (math.fsum): within 1e-14 of the sums of |terms|, for
    counts 0, 1-32 (products), 33-500 and 2.5 (direct logs), eta from -800 to 700 and eta = log k; r_i = k w_i,
    w_i = (y_i - mu_i) / (k + mu_i), within 1e-14 of k (y_i + mu_i) / (k + mu_i); row by row, lgamma(y_i + k) is
    added (and psi(y_i + k), to its series' 1e-11); a NaN eta gives NaN sums."""
    rng = np.random.default_rng(13)
    y = np.r_[np.where(rng.random(2000) < 0.4, 0, rng.integers(1, 33, 2000)), rng.integers(33, 501, 50), 2.5]
    y = y.astype(float)
    for k in (0.05, 1.5, 40.0, 1e3):
        eta = np.r_[rng.normal(0.0, 3.0, len(y) - 6), -800.0, 700.0, -40.0, 40.0, math.log(k), 0.0]
        r = np.empty_like(eta)
        lp, d_shape = glmm_kernel_numba._negative_binomial_rows(y, eta, k, math.log(k), False, r)
        log_t, mu = np.logaddexp(math.log(k), eta), np.exp(eta)
        w = (y - mu) / (k + mu)
        terms, d_terms = y * (eta - log_t) - k * log_t, math.log(k) - log_t - w
        assert abs(lp - math.fsum(terms)) <= 1e-14 * math.fsum(np.abs(terms)), k
        assert abs(d_shape - math.fsum(d_terms)) <= 1e-14 * math.fsum(np.abs(d_terms)), k
        assert np.all(np.abs(r - k * w) <= 1e-14 * k * (y + mu) / (k + mu))  # y - mu: exp's last bit, amplified
        with_gamma = glmm_kernel_numba._negative_binomial_rows(y, eta, k, math.log(k), True, np.empty_like(eta))
        gamma = special.gammaln(y + k)
        assert abs(with_gamma[0] - lp - math.fsum(gamma)) <= 1e-14 * (math.fsum(np.abs(terms)) + np.sum(gamma))
        assert abs(with_gamma[1] - d_shape - math.fsum(special.digamma(y + k))) <= 1e-11 * len(y)
    eta[100] = np.nan
    assert np.all(np.isnan(glmm_kernel_numba._negative_binomial_rows(y, eta, 1.5, math.log(1.5), False, r)))


@pytest.mark.parametrize("large", [False, True], ids=["counts up to 60", "zeros and counts in the hundreds"])
def test_table_and_per_row_paths_agree_in_both_kernels(large, monkeypatch):
    """Log density and gradient with the count table and row by row, at 3 points per k (0.05 to 1e3), in the
    C extension and in Numba: log density within 1e-12 relative, gradient within 1e-10 of its largest entry (the
    per-row path rounds lgamma(y + k) - lgamma(k) at |lgamma(k)| and its psi series is truncated at 1e-11 per
    value: measured up to 3e-13 and 4e-12); the extension equals Numba bit for bit on both paths."""
    y, kernels = both_paths(large, monkeypatch)
    assert kernels["table"].buffer[glmm_kernel._N_COUNT_TABLE] == y.max() > (4 * len(y) if large else 30)
    assert kernels["per row"].buffer[glmm_kernel._N_COUNT_TABLE] == -1
    chosen = [c for c in (extension_callbacks(), numba_callbacks()) if c is not None]
    rng = np.random.default_rng(7)
    for k in SHAPES:
        for _ in range(3):
            kernel = kernels["table"]
            x = kernel.unconstrained_start(int(rng.integers(100))) + rng.normal(0, 0.3, kernel.n_dim)
            x[-1] = math.log(k)
            values = {(path, i): log_density_and_gradient(kernel, c)(x) for path, kernel in kernels.items()
                      for i, c in enumerate(chosen)}
            for i in range(len(chosen)):
                (table, grad), (per_row, grad_per_row) = values["table", i], values["per row", i]
                assert np.isfinite(table) and np.all(np.isfinite(grad))
                assert table == pytest.approx(per_row, rel=1e-12), k
                assert np.max(np.abs(grad - grad_per_row)) <= 1e-10 * np.max(np.abs(grad)), k
            for path in kernels:  # C = Numba, same operations in the same order
                assert values[path, 0][0] == values[path, len(chosen) - 1][0]
                np.testing.assert_array_equal(values[path, 0][1], values[path, len(chosen) - 1][1])


@pytest.mark.parametrize("case", ["negative_binomial", "negative_binomial_flat_partial"])
def test_per_row_path_equals_pymc_graph(case, monkeypatch):
    """test_bayes_glmm's kernel = PyMC graph check (log density to 1e-7, gradient to 1e-8) with lgamma and psi
    row by row; the same cases there run the count table (their counts are below 4 n)."""
    y = CASES[case][0]().outcome.y
    assert count_table(y) is not None  # the table path in test_bayes_glmm
    monkeypatch.setattr(glmm_kernel, "COUNT_TABLE_PER_ROW", -1.0)
    kernel_equals_pymc_graph(case)
