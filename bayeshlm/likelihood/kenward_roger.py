"""Kenward-Roger adjusted covariance and denominator df for REML fits with one grouping factor.

Kenward & Roger (1997, Biometrics 53: 983-997), as pbkrtest computes it (Halekoh & Hojsgaard 2014, J. Stat.
Softw. 59(9)). The marginal covariance is linear in the variance parameters s = (entries of each covariance
block of T, sigma^2): V = sum_i s_i G_i, with G_i = Z (dT/ds_i) Z' or I, block-diagonal over the groups j.
With Phi = (X'V^{-1}X)^{-1}, P_i = -X'V^{-1} G_i V^{-1} X, Q_ij = X'V^{-1} G_i V^{-1} G_j V^{-1} X and
W = 2 [tr(P G_i P G_j)]^{-1} (the inverse of the expected REML information; P = V^{-1} - V^{-1} X Phi X'V^{-1}):

    Phi_A = Phi + 2 Phi Lambda Phi,   Lambda = sum_ij W_ij (Q_ij - P_i Phi P_j).

For q contrasts L, Theta = L'(L Phi L')^{-1} L, A1 = sum_ij W_ij tr(Theta Phi P_i Phi) tr(Theta Phi P_j Phi),
A2 = sum_ij W_ij tr(Theta Phi P_i Phi Theta Phi P_j Phi), B = (A1 + 6 A2) / (2q),
g = ((q + 1) A1 - (q + 4) A2) / ((q + 2) A2), c_1 = g / d, c_2 = (q - g) / d, c_3 = (q + 2 - g) / d with
d = 3q + 2(1 - g), E = 1 / (1 - A2 / q), V = (2 / q)(1 + c_1 B) / ((1 - c_2 B)^2 (1 - c_3 B)),
rho = V / (2 E^2), m = 4 + (q + 2) / (q rho - 1) (the df) and lambda = m / (E (m - 2)), the scale of
F = lambda (L beta)'(L Phi_A L')^{-1} (L beta) / q.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import OptionError


@dataclass
class KenwardRoger:
    """The pieces of the Kenward-Roger adjustment at a REML fit (module docstring), in the user's units."""

    Phi: np.ndarray
    P: list[np.ndarray]
    Q: list[list[np.ndarray]]
    W: np.ndarray

    @cached_property
    def adjusted_cov(self) -> np.ndarray:
        k = len(self.P)
        Lam = sum(self.W[i, j] * (self.Q[i][j] - self.P[i] @ self.Phi @ self.P[j]) for i in range(k) for j in range(k))
        return self.Phi + 2.0 * self.Phi @ Lam @ self.Phi

    def test(self, L: np.ndarray) -> tuple[float, float]:
        """(denominator df m, scale lambda) for the rows of L."""
        q = len(L)
        Theta = L.T @ np.linalg.solve(L @ self.Phi @ L.T, L)
        M = [Theta @ self.Phi @ P @ self.Phi for P in self.P]
        k = len(M)
        traces = np.array([np.trace(m) for m in M])
        A1 = float(traces @ self.W @ traces)
        A2 = float(sum(self.W[i, j] * np.trace(M[i] @ M[j]) for i in range(k) for j in range(k)))
        B = (A1 + 6.0 * A2) / (2.0 * q)
        g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
        d = 3 * q + 2 * (1 - g)
        c1, c2, c3 = g / d, (q - g) / d, (q + 2 - g) / d
        E = 1.0 / (1.0 - A2 / q)
        V = 2.0 / q * (1 + c1 * B) / ((1 - c2 * B) ** 2 * (1 - c3 * B))
        rho = V / (2.0 * E ** 2)
        m = 4.0 + (q + 2) / (q * rho - 1)
        return float(m), float(m / (E * (m - 2)))


def kenward_roger(fit) -> KenwardRoger:
    """The Kenward-Roger pieces of a REML fit with one grouping factor (made once per fit)."""
    cached = fit.__dict__.get("_kenward_roger")
    if cached is not None:
        return cached
    design = fit.design
    if fit.method != "reml":
        raise OptionError("df='kenward-roger' is defined for REML fits; refit with method='reml' (or use "
                          "df='satterthwaite').")
    if len(design.factors) != 1 or design.residual is not None or design.known_variance is not None \
            or design.weights is not None or not design.rows_available:
        raise OptionError("df='kenward-roger' is implemented for two-level models (one grouping factor, no "
                          "level-1 error structure, weights or known variances) so far; use df='satterthwaite'.")
    factor = design.factors[0]
    T = fit.tau[factor.name].to_numpy()
    sigma2 = float(fit.sigma2)
    q = factor.n_coef
    derivatives = []  # dT / ds_i for the entries of each covariance block, then sigma^2
    for block in factor.blocks:
        for j, b in enumerate(block):
            for a in block[j:]:
                E = np.zeros((q, q))
                E[a, b] = E[b, a] = 1.0
                derivatives.append(E)
    k = len(derivatives) + 1
    X, Z, codes = design.X, factor.Z, factor.codes
    p = X.shape[1]
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(factor.n_groups + 1))
    XVX = np.zeros((p, p))
    P = [np.zeros((p, p)) for _ in range(k)]
    Q = [[np.zeros((p, p)) for _ in range(k)] for _ in range(k)]
    trace_VGVG = np.zeros((k, k))
    for g in range(factor.n_groups):
        rows = order[bounds[g]:bounds[g + 1]]
        Xg, Zg = X[rows], Z[rows]
        Vinv = np.linalg.inv(Zg @ T @ Zg.T + sigma2 * np.eye(len(rows)))
        G = [Zg @ E @ Zg.T for E in derivatives] + [np.eye(len(rows))]
        VG = [Vinv @ Gi for Gi in G]  # V^{-1} G_i
        VX = Vinv @ Xg
        XVX += Xg.T @ VX
        for i in range(k):
            P[i] -= VX.T @ G[i] @ VX
            for j in range(k):
                Q[i][j] += VX.T @ G[i] @ VG[j] @ VX
                trace_VGVG[i, j] += np.sum(VG[i] * VG[j].T)
    Phi = np.linalg.inv(XVX)
    # tr(P G_i P G_j) = tr(V^-1 G_i V^-1 G_j) - 2 tr(Phi Q_ij) + tr(Phi P_i Phi P_j)
    info = np.array([[trace_VGVG[i, j] - 2.0 * np.trace(Phi @ Q[i][j]) + np.trace(Phi @ P[i] @ Phi @ P[j])
                      for j in range(k)] for i in range(k)])
    result = KenwardRoger(Phi=Phi, P=P, Q=Q, W=2.0 * np.linalg.inv(info))
    fit.__dict__["_kenward_roger"] = result
    return result
