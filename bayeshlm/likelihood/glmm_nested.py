"""Adaptive Gauss-Hermite quadrature for a nested chain of two grouping factors, one random effect each
(e.g. classes within schools), which lme4 does not offer.

With v_k the effect of outer group k and u_j that of inner group j (inside k = parent(j)), both N(0, 1) on
lme4's scale (the factors' Lambda scale them into eta), the marginal likelihood of outer group k is

    L_k = int phi(v) prod_{j in k} I_j(v) dv,   I_j(v) = int phi(u) prod_{i in j} p(y_i | eta0_i + zo_i v + zi_i u) du

(zo = Z_outer Lambda_outer, zi = Z_inner Lambda_inner per row). Both integrals are adaptive (Pinheiro & Bates
1995; nested as in Rabe-Hesketh, Skrondal & Pickles 2005):

- outer: nodes v_km = v_k + sqrt(2 / h_k) x_m around the joint conditional mode (u_hat, v_hat) of the Laplace
  PIRLS, with h_k the curvature of v after the inner effects are profiled out, the Schur complement
  h_k = 1 + sum_i W_i zo_i^2 - sum_{j in k} (sum_i W_i zi_i zo_i)^2 / (1 + sum_i W_i zi_i^2);
- inner, for every outer node separately: the mode u_jm of u given v = v_km (Newton per (j, m), each step
  halved while that group's penalised log-likelihood would fall) and its curvature h_jm, nodes
  u_jm + sqrt(2 / h_jm) x_l.

With one node each this is the Laplace approximation itself (log|H| = sum log h_j + sum log h_k); with K nodes
it costs K^2 evaluations per row. The result is the marginal log-likelihood with every constant.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

from ..design.design import chain_parents

LOG_ROOT_2PI = 0.5 * np.log(2.0 * np.pi)


def nested_chain(design):
    """(inner, outer) when the design is one nested chain of two factors with one random effect each, else None."""
    chain = design.chain
    if len(design.factors) == 2 and len(chain) == 2 and all(f.n_coef == 1 for f in chain):
        return chain[0], chain[1]
    return None


class NestedQuadrature:
    """The nested adaptive quadrature of one objective (its design's chain, nodes and weights)."""

    def __init__(self, objective, nagq: int):
        inner, outer = nested_chain(objective.design)
        self.obj = objective
        self.k_inner, self.k_outer = objective.factors.index(inner), objective.factors.index(outer)
        self.inner_codes, self.outer_codes = inner.codes, outer.codes
        self.parent = chain_parents([inner, outer])[0]
        self.J_inner, self.J_outer = inner.n_groups, outer.n_groups
        n = len(objective.y)
        self.inner_sum = sp.csr_matrix((np.ones(n), (inner.codes, np.arange(n))), shape=(inner.n_groups, n))
        self.nodes, self.weights = np.polynomial.hermite.hermgauss(nagq)

    def _inner_sums(self, values: np.ndarray) -> np.ndarray:
        """Sums over each inner group's rows of an (n, ...) array: (J_inner, ...)."""
        return np.asarray(self.inner_sum @ values.reshape(len(values), -1)).reshape((self.J_inner, *values.shape[1:]))

    def loglik(self, u: np.ndarray, eta0: np.ndarray, ZL: list[np.ndarray]) -> float:
        obj, fam = self.obj, self.obj.family
        y, size, x, log_w = obj.y, obj.size, self.nodes, np.log(self.weights)
        zi, zo = ZL[self.k_inner][:, 0], ZL[self.k_outer][:, 0]
        ci, co = self.inner_codes, self.outer_codes
        u_in = u[obj.starts[self.k_inner]:obj.starts[self.k_inner + 1]]
        v_out = u[obj.starts[self.k_outer]:obj.starts[self.k_outer + 1]]
        w = self._weights(y, eta0 + zi * u_in[ci] + zo * v_out[co], size)
        h_in = 1.0 + np.bincount(ci, w * zi * zi, minlength=self.J_inner)
        cross = np.bincount(ci, w * zi * zo, minlength=self.J_inner)
        h_out = (1.0 + np.bincount(co, w * zo * zo, minlength=self.J_outer)
                 - np.bincount(self.parent, cross * cross / h_in, minlength=self.J_outer))
        scale_out = np.sqrt(2.0 / h_out)
        v = v_out[:, None] + scale_out[:, None] * x[None, :]  # (J_outer, K)
        base = eta0[:, None] + zo[:, None] * v[co]  # (n, K): eta without the inner effect
        modes, h = self._inner_modes(base, zi, np.repeat(u_in[:, None], len(x), axis=1))
        scale_in = np.sqrt(2.0 / h)  # (J_inner, K)
        points = modes[:, :, None] + scale_in[:, :, None] * x[None, None, :]  # (J_inner, K, K)
        rows = fam.loglik(y[:, None, None], base[:, :, None] + zi[:, None, None] * points[ci], size[:, None, None])
        inner_terms = self._inner_sums(rows) - 0.5 * points ** 2 - LOG_ROOT_2PI + x ** 2 + log_w
        log_inner = logsumexp(inner_terms, axis=2) + np.log(scale_in)  # log I_j(v_km), (J_inner, K)
        outer_terms = (np.column_stack([np.bincount(self.parent, log_inner[:, m], minlength=self.J_outer)
                                        for m in range(len(x))])
                       - 0.5 * v ** 2 - LOG_ROOT_2PI + x ** 2 + log_w)
        return float(np.sum(logsumexp(outer_terms, axis=1) + np.log(scale_out)))

    def _weights(self, y, eta, size) -> np.ndarray:
        fam = self.obj.family
        return fam.observed_weights(y, eta, size) if self.obj.information == "observed" else \
            fam.working(y, eta, size)[0]

    def _inner_modes(self, base: np.ndarray, zi: np.ndarray, a: np.ndarray):
        """Modes a_jm of each inner effect given each outer node, and the curvatures h_jm there."""
        fam, y, size, ci = self.obj.family, self.obj.y[:, None], self.obj.size[:, None], self.inner_codes

        def penalised(a):
            return self._inner_sums(fam.loglik(y, base + zi[:, None] * a[ci], size)) - 0.5 * a * a

        objective = penalised(a)
        for _ in range(100):
            w, s = fam.working(y, base + zi[:, None] * a[ci], size)
            step = (self._inner_sums(zi[:, None] * s) - a) / (1.0 + self._inner_sums(w * (zi * zi)[:, None]))
            for _ in range(30):
                new_objective = penalised(a + step)
                worse = new_objective < objective - 1e-12 * np.abs(objective)
                if not worse.any():
                    break
                step = np.where(worse, 0.5 * step, step)
            a, objective = a + step, new_objective
            if np.max(np.abs(step)) < 1e-11 * (1.0 + np.max(np.abs(a))):
                break
        w = self._weights(y, base + zi[:, None] * a[ci], size)
        return a, 1.0 + self._inner_sums(w * (zi * zi)[:, None])
