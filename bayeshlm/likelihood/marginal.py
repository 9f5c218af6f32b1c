"""REML / ML with structured level-1 errors, by the marginal covariance of each top-level group.

Heterogeneous level-1 variances and autocorrelated errors break the two tricks of the profiled engine
(sigma^2 multiplying the whole residual covariance, and per-group sufficient statistics), so these models
use the marginal form of the model (Pinheiro & Bates 2000, sec. 5.1; R&B 2002, eq. 14.65):

    y_j ~ N(X_j beta, sigma^2 V_j),   V_j = sum_f Z_fj Lambda_f Lambda_f' Z_fj' (within the groups of f) + R_j,
    R_j = W_j^{1/2} C_j(phi) W_j^{1/2},

for each group j of the outermost grouping factor. W_j holds the relative level-1 variances
w_i = sigma_i^2 / sigma^2 of the design's variance function, and C_j(phi) the correlations of its correlation
structure between rows of the same innermost group (the identity without one); both are objects of
:mod:`bayeshlm.level1`, which supply ln w_i = a_i'delta with its derivatives and phi^lag with d/dphi:
exp(2 delta_s) for stratum s of a ``varIdent`` model (delta_ref = 0; P&B 2000, sec. 5.2.1), exp(sum_m alpha_m C_mi)
for the log-linear model ln sigma_i^2 = alpha_0 + sum_m alpha_m C_mi (R&B 2002, eq. 5.36; sigma^2 = exp(alpha_0)),
phi^|t - t'| for AR(1) and CAR(1) (P&B 2000, sec. 5.3.1; R&B 2002, eq. 6.31).

sigma^2 is profiled out as in the plain engine: with beta = (X'V^{-1}X)^{-1} X'V^{-1}y (GLS) and
r^2 = (y - X beta)'V^{-1}(y - X beta),

    ML:   -2 log L   = log|V| + n [1 + log(2 pi r^2 / n)]
    REML: -2 log L_R = log|V| + log|X'V^{-1}X| + (n - p) [1 + log(2 pi r^2 / (n - p))]

(nlme's REML criterion, like lme4's, omits log|X'X|). Groups are padded to a few common sizes and
factorised together (batched Cholesky), so no Python loop runs over groups. The criterion is minimised
over x = (theta, variance-function parameters, transformed phi) by L-BFGS-B with its analytic gradient
(:meth:`StructuredDeviance.value_and_gradient`): V is block diagonal over the groups j, so

    d criterion / d x_k = sum_j <M_j, dV_j / dx_k>,   <A, B> = sum_il A_il B_il,
    M_j = V_j^{-1} - [REML] H_j (X'V^{-1}X)^{-1} H_j' - (m / r^2) a_j a_j',

with H_j = V_j^{-1} X_j, a_j = V_j^{-1}(y_j - X_j beta) and m = n - p (REML) or n (ML): the derivatives of
log|V|, log|X'V^{-1}X| and m log r^2 (beta at its GLS value, so its own change does not count; Harville 1977,
JASA 72, sec. 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack, solve_triangular

from ..design import Design
from ..errors import OptionError
from .optimize import minimize_criterion, polish, verdict
from .params import Parameterization

LOG_2PI = float(np.log(2.0 * np.pi))
BUCKET_RATIO = 1.25  # groups whose sizes differ by at most this factor are padded to one size


@dataclass(frozen=True)
class Batch:
    """Groups padded to a common size s: ``rows[g, i]`` is the data row of position i of group g (-1: pad)."""

    rows: np.ndarray  # (G, s)
    valid: np.ndarray  # (G, s) bool
    X: np.ndarray  # (G, s, p), zero in pads
    y: np.ndarray  # (G, s)
    Z: tuple[np.ndarray, ...]  # per design factor (G, s, q_f), zero in pads
    same: tuple[np.ndarray | None, ...]  # per factor: (G, s, s) same-group mask (None for the outermost)
    codes: tuple[np.ndarray, ...]  # per factor: (G, s) group code of each row (-1 in pads)


def group_batches(block_codes: np.ndarray, n_blocks: int) -> list[np.ndarray]:
    """Row positions of each group, grouped into batches of similar size, as (G, s) arrays padded with -1."""
    order = np.argsort(block_codes, kind="stable")
    sizes = np.bincount(block_codes, minlength=n_blocks)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    by_size = np.argsort(sizes, kind="stable")
    buckets: list[list[int]] = []
    for block in by_size:
        if buckets and sizes[block] <= BUCKET_RATIO * sizes[buckets[-1][0]]:
            buckets[-1].append(block)
        else:
            buckets.append([block])
    out = []
    for blocks in buckets:
        s = int(sizes[blocks].max())
        rows = np.full((len(blocks), s), -1, dtype=np.int64)
        mask = np.arange(s) < sizes[blocks][:, None]
        rows[mask] = np.concatenate([order[starts[b]:starts[b] + sizes[b]] for b in blocks])
        out.append(rows)
    return out


def gather(values: np.ndarray, rows: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """values[rows] with ``fill`` where rows == -1 (pads)."""
    out = values[np.maximum(rows, 0)]
    pad = rows < 0
    if pad.any():
        out = out.copy()
        out[pad] = fill
    return out


class StructuredDeviance:
    """(theta, variance parameters, transformed phi) -> REML criterion or ML deviance of ``design``."""

    def __init__(self, design: Design, method: str):
        chain = design.chain
        if not chain:
            raise OptionError("Level-1 error structures (level1_variance, correlation) need nested grouping factors "
                              "(one chain, e.g. occasions in children in schools); this model's factors are crossed.")
        self.design = design
        self.reml = method == "reml"
        self.params = Parameterization(design)
        self.residual = design.residual
        self.errors = design.residual.errors
        self.evaluations = 0
        top = chain[-1]
        self.batches = [self._batch(rows, top.name) for rows in group_batches(top.codes, top.n_groups)]
        r, errors = self.residual, self.errors
        self.n_variance = errors.variance.size(r)
        self.has_phi = errors.correlation is not None
        self.size = self.params.size + errors.size(r)
        if self.has_phi:
            unit = design.factor(r.unit)
            # the structure's lags (AR(1): whole steps, as t / k may round; phi < 0 needs integer powers)
            lags = [errors.correlation.lags(np.abs(gather(r.time, b.rows)[:, :, None]
                                                   - gather(r.time, b.rows)[:, None, :])) for b in self.batches]
            self._same_unit = [self._same_mask(gather(unit.codes, b.rows, -1), b.valid, pads_on_diagonal=True)
                               for b in self.batches]
            # phi^|t - t'| is read from a table over the distinct lags (a few per design), position -1 holding
            # the 0 of row pairs in different units: one gather per evaluation instead of a power per pair
            within = np.concatenate([lag[same] for lag, same in zip(lags, self._same_unit)])
            self._lag_values, inverse = np.unique(within, return_inverse=True)
            self._lag_index, at = [], 0
            for lag, same in zip(lags, self._same_unit):
                index = np.full(lag.shape, len(self._lag_values))
                index[same] = inverse[at:at + int(same.sum())]
                at += int(same.sum())
                self._lag_index.append(index)

    def _batch(self, rows: np.ndarray, top: str) -> Batch:
        d = self.design
        valid = rows >= 0
        codes = tuple(gather(f.codes, rows, -1) for f in d.factors)
        same = tuple(None if f.name == top else self._same_mask(c, valid) for f, c in zip(d.factors, codes))
        return Batch(rows=rows, valid=valid, X=gather(d.X, rows), y=gather(d.y, rows),
                     Z=tuple(gather(f.Z, rows) for f in d.factors), same=same, codes=codes)

    @staticmethod
    def _same_mask(codes: np.ndarray, valid: np.ndarray, pads_on_diagonal: bool = False) -> np.ndarray:
        same = (codes[:, :, None] == codes[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        if pads_on_diagonal:
            idx = np.arange(codes.shape[1])
            same[:, idx, idx] = True
        return same

    # --- parameters ------------------------------------------------------------------------------
    def extra_names(self) -> list[str]:
        """Names of the level-1 parameters (variance function, then the transformed phi)."""
        return self.errors.parameter_names(self.residual)

    def parameter_names(self) -> list[str]:
        return self.params.names() + self.extra_names()

    def level1_parameters(self, x: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(variance-function parameters, phi) of x."""
        return self.errors.split(self.residual, x[self.params.size:])

    def relative_variances(self, x: np.ndarray) -> np.ndarray:
        """w_i = sigma_i^2 / sigma^2 for every row."""
        variance = self.level1_parameters(x)[0]
        return np.exp(self.errors.variance.log_relative_variances(self.residual, variance, self.design.n_obs))

    @property
    def start(self) -> np.ndarray:
        return np.concatenate([self.params.start, self.errors.start(self.residual)])

    # --- criterion -------------------------------------------------------------------------------
    def _residual_part(self, k: int, w: np.ndarray, phi: float | None) -> np.ndarray:
        """R_j = W_j^{1/2} C_j(phi) W_j^{1/2} of batch ``k`` (G, s, s), the identity in pad rows."""
        b = self.batches[k]
        wb = gather(w, b.rows, 1.0)
        if phi is None:
            R = np.zeros(b.rows.shape + (b.rows.shape[1],))
            idx = np.arange(b.rows.shape[1])
            R[:, idx, idx] = wb
            return R
        sqrt_w = np.sqrt(wb)
        table = np.append(self.errors.correlation.correlations(phi, self._lag_values), 0.0)
        return table[self._lag_index[k]] * sqrt_w[:, :, None] * sqrt_w[:, None, :]

    def _covariance(self, k: int, lambdas: list[np.ndarray], R: np.ndarray) -> np.ndarray:
        """V_j / sigma^2 of batch ``k``: R_j plus each factor's Z Lambda Lambda' Z' within its groups."""
        b = self.batches[k]
        V = R.copy()
        for Z, same, lam in zip(b.Z, b.same, lambdas):
            ZL = Z @ lam
            block = ZL @ ZL.swapaxes(1, 2)
            V += block if same is None else block * same
        return V

    def covariances(self, x: np.ndarray) -> list[np.ndarray]:
        """V_j / sigma^2 per batch, (G, s, s), with the identity in pad rows."""
        lambdas, phi = self.params.lambdas(x), self.level1_parameters(x)[1]
        w = self.relative_variances(x)
        return [self._covariance(k, lambdas, self._residual_part(k, w, phi)) for k in range(len(self.batches))]

    def factorize(self, x: np.ndarray) -> MarginalFactorization:
        return MarginalFactorization(self.batches, self.covariances(x), self.design.n_fixed)

    def criterion(self, fac: MarginalFactorization) -> float:
        return profiled_criterion(fac, self.design.n_obs, self.reml)

    def __call__(self, x: np.ndarray) -> float:
        self.evaluations += 1
        try:
            return float(self.criterion(self.factorize(x)))
        except np.linalg.LinAlgError:
            return np.inf

    def value_and_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """The criterion and its analytic gradient in x (module docstring) from one factorisation."""
        self.evaluations += 1
        lambdas, phi = self.params.lambdas(x), self.level1_parameters(x)[1]
        w = self.relative_variances(x)
        residual = [self._residual_part(k, w, phi) for k in range(len(self.batches))]
        try:
            fac = MarginalFactorization(self.batches, [self._covariance(k, lambdas, R) for k, R in enumerate(residual)],
                                        self.design.n_fixed)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros_like(x)
        value = float(self.criterion(fac))
        if not np.isfinite(value):
            return value, np.zeros_like(x)
        return value, self._gradient(fac, lambdas, phi, residual)

    def _gradient(self, fac: MarginalFactorization, lambdas: list[np.ndarray], phi: float | None,
                  residual: list[np.ndarray]) -> np.ndarray:
        """sum_j <M_j, dV_j/dx> (module docstring), piece by piece:

        Lambda_f entry (r, c):  dV = Z (E Lambda' + Lambda E') Z' within f's groups, E = e_r e_c', so the
            derivative is 2 [sum_j Z_j'(M_j o S_fj) Z_j Lambda_f]_rc (S_fj: same group of f);
        log w_i:  dR_il / d log w_i = R_il / 2 on row i and column i, so g_i = sum_l M_il R_il, and the variance
            function turns g into its own gradient (d / d delta_s = 2 sum_{i in s} g_i, d / d alpha = C'g);
        phi:  dR / dphi = W^{1/2} (d C / dphi) W^{1/2} within units (|t - t'| phi^(|t - t'| - 1) for AR(1) and
            CAR(1)), times the structure's dphi / dphi* (1 - phi^2 for AR(1)'s tanh, phi (1 - phi) for CAR(1)'s
            logistic).
        """
        n, p = self.design.n_obs, self.design.n_fixed
        weight = (n - p if self.reml else n) / fac.r2
        A_inv = fac.fixed_cov_relative()
        info = [np.zeros((len(lam), len(lam))) for lam in lambdas]
        g_rows = np.zeros(n)
        d_phi = 0.0
        if phi is not None:  # d phi^lag / d phi per distinct lag (0 for lag 0 and for pairs in different units)
            slope_table = np.append(self.errors.correlation.correlation_derivatives(phi, self._lag_values), 0.0)
        for k, (b, Linv) in enumerate(zip(self.batches, fac.chol_inv)):
            e = (b.y - b.X @ fac.beta)[:, :, None]
            if phi is None and all(same is None for same in b.same):
                sums, g = self._batch_sums_from_factor(Linv, b, e, A_inv, weight)
                g = g * np.diagonal(residual[k], axis1=1, axis2=2)
            else:
                M = Linv.swapaxes(1, 2) @ Linv  # V_j^{-1}
                a = M @ e
                if self.reml:
                    H = M @ b.X
                    M -= H @ A_inv @ H.swapaxes(1, 2)
                M -= weight * (a @ a.swapaxes(1, 2))
                sums = [(Z.swapaxes(1, 2) @ (M if same is None else M * same) @ Z).sum(axis=0)
                        for Z, same in zip(b.Z, b.same)]
                g = (M * residual[k]).sum(axis=2)
                if phi is not None:
                    slope = slope_table[self._lag_index[k]]
                    sqrt_w = np.sqrt(np.diagonal(residual[k], axis1=1, axis2=2))
                    d_phi += float((M * slope * sqrt_w[:, :, None] * sqrt_w[:, None, :]).sum())
            for i, total in enumerate(sums):
                info[i] += total
            g_rows[b.rows[b.valid]] = g[b.valid]
        return self._collect_gradient(info, lambdas, g_rows, phi, d_phi)

    def _batch_sums_from_factor(self, Linv: np.ndarray, b: Batch, e: np.ndarray, A_inv: np.ndarray,
                                weight: float) -> tuple[list[np.ndarray], np.ndarray]:
        """sum_j Z_j'M_j Z_j and diag(M_j) without forming M_j (s^2 instead of s^3 work per group), for a batch
        whose only factor spans the whole group and whose R_j is diagonal: with the whitened
        U = L_j^{-1}[Z X e], Z'MZ = U_Z'U_Z - [REML] (U_X'U_Z)' A^{-1} (U_X'U_Z) - (m / r^2) (U_e'U_Z)'(U_e'U_Z),
        diag(V^{-1})_i = sum_k (L^{-1})_ki^2, and H = L^{-T} U_X, a = L^{-T} U_e give the other two diagonals."""
        (Z,) = b.Z
        UZ, UX, Ue = Linv @ Z, Linv @ b.X, Linv @ e
        eZ = Ue.swapaxes(1, 2) @ UZ
        ZZ = UZ.swapaxes(1, 2) @ UZ - weight * (eZ.swapaxes(1, 2) @ eZ)
        a = Linv.swapaxes(1, 2) @ Ue
        diagonal = (Linv ** 2).sum(axis=1) - weight * a[:, :, 0] ** 2
        if self.reml:
            XZ = UX.swapaxes(1, 2) @ UZ
            ZZ = ZZ - XZ.swapaxes(1, 2) @ A_inv @ XZ
            H = Linv.swapaxes(1, 2) @ UX
            diagonal = diagonal - np.einsum("gsa,ab,gsb->gs", H, A_inv, H)
        return [ZZ.sum(axis=0)], diagonal

    def _collect_gradient(self, info: list[np.ndarray], lambdas: list[np.ndarray], g_rows: np.ndarray,
                          phi: float | None, d_phi: float) -> np.ndarray:
        """The gradient in x from the per-factor sums Z'(M o S)Z, the per-row g_i and <M, dR/dphi>."""
        out = np.empty(self.size)
        for fp, G, lam in zip(self.params.factors, info, lambdas):
            out[fp.offset:fp.offset + fp.size] = 2.0 * (G @ lam)[fp.rows, fp.cols]
        at = self.params.size
        out[at:at + self.n_variance] = self.errors.variance.gradient(self.residual, g_rows)
        if phi is not None:
            out[-1] = d_phi * self.errors.correlation.phi_derivative(phi)
        return out


def profiled_criterion(fac: MarginalFactorization, n: int, reml: bool) -> float:
    """-2 log L (ML) or -2 log L_R (REML) with sigma^2 profiled out (module docstring)."""
    p = len(fac.beta)
    if fac.r2 <= 0 or not np.isfinite(fac.logdet_z):
        return np.inf
    if reml:
        return fac.logdet_z + fac.logdet_x + (n - p) * (1.0 + LOG_2PI + np.log(fac.r2 / (n - p)))
    return fac.logdet_z + n * (1.0 + LOG_2PI + np.log(fac.r2 / n))


TRIANGULAR_LOOP_SIZE = 8  # above this size LAPACK's triangular inverse, one group at a time, beats a batched LU


def triangular_inverse(L: np.ndarray) -> np.ndarray:
    """L_j^{-1} of lower-triangular (G, s, s) factors: numpy's batched inverse (an LU per group, in C) for small
    s, LAPACK dtrtri per group beyond ``TRIANGULAR_LOOP_SIZE`` (3x faster at s = 30-50, as HS&B's schools)."""
    if L.shape[1] <= TRIANGULAR_LOOP_SIZE:
        return np.linalg.inv(L)
    out = np.empty_like(L)
    for g, factor in enumerate(L):  # dtrtri leaves the upper triangle as given: numpy's Cholesky zeros it
        out[g], info = lapack.dtrtri(factor, lower=1)
        if info != 0:
            raise np.linalg.LinAlgError("singular marginal covariance")
    return out


class MarginalFactorization:
    """Batched Cholesky factors of V_j and the GLS quantities of one parameter value.

    The inverse factors L_j^{-1} are formed once (:func:`triangular_inverse`) and give every solve by products.
    """

    def __init__(self, batches: list[Batch], covariances: list[np.ndarray], p: int):
        self.batches = batches
        self.chol = [np.linalg.cholesky(V) for V in covariances]
        self.chol_inv = [triangular_inverse(L) for L in self.chol]
        self.logdet_z = float(sum(2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum() for L in self.chol))
        cross = np.zeros((p + 1, p + 1))
        for b, Linv in zip(batches, self.chol_inv):
            W = (Linv @ np.concatenate([b.X, b.y[:, :, None]], axis=2)).reshape(-1, p + 1)
            cross += W.T @ W
        self._A = cross[:p, :p]
        chol_a = np.linalg.cholesky(self._A)
        self.beta = np.linalg.solve(self._A, cross[:p, p])
        self.r2 = float(cross[p, p] - cross[:p, p] @ self.beta)
        self.logdet_x = float(2.0 * np.log(np.diag(chol_a)).sum())

    def fixed_cov_relative(self) -> np.ndarray:
        """(X'V^{-1}X)^{-1}, to be multiplied by sigma^2."""
        return np.linalg.inv(self._A)

    def _solve(self, L: np.ndarray, B: np.ndarray) -> np.ndarray:
        return solve_triangular(L.swapaxes(1, 2), solve_triangular(L, B, lower=True), lower=False)

    def precision_residuals(self, n: int) -> np.ndarray:
        """V^{-1}(y - X beta) per data row (relative to sigma^2)."""
        out = np.zeros(n)
        for b, L in zip(self.batches, self.chol):
            e = (b.y - b.X @ self.beta)[:, :, None]
            out[b.rows[b.valid]] = self._solve(L, e)[:, :, 0][b.valid]
        return out

    def projected_information(self, factor: int, n_groups: int) -> np.ndarray:
        """sum over row pairs (i, k) of one group of ``factor``: Z_i (V^{-1})_ik Z_k', per group, (J, q, q)."""
        q = self.batches[0].Z[factor].shape[2]
        out = np.zeros((n_groups, q, q))
        for b, L in zip(self.batches, self.chol):
            s = b.rows.shape[1]
            Vinv = self._solve(L, np.broadcast_to(np.eye(s), L.shape))
            same = b.same[factor]
            H = (Vinv if same is None else Vinv * same) @ b.Z[factor]
            outer = b.Z[factor][:, :, :, None] * H[:, :, None, :]
            codes = b.codes[factor][b.valid]
            np.add.at(out, codes, outer[b.valid])
        return out


PHI_STUCK = 1e-3  # a transformed phi* that moved less than this from its start is checked from a second start


def _optimise(objective: StructuredDeviance, start: np.ndarray, maxiter: int):
    """L-BFGS-B with the analytic gradient, then Newton polishing (:mod:`.optimize`). The line search stops at
    a slope of 1e-8 |criterion|: below it the gradient of V^{-1} products is rounding (L-BFGS-B spent ~30
    evaluations there on Orthodont), which the Newton steps then remove."""
    return polish(objective, minimize_criterion(objective, start, maxiter, gtol=1e-8))


def optimise_structured(objective: StructuredDeviance, start: np.ndarray, maxiter: int) -> tuple[np.ndarray, bool, str]:
    """Minimise ``objective`` (a structured-error model on the standardised design, see the module docstring)
    from ``start``; returns the end point (canonical signs), whether it converged and the optimiser's message."""
    result = _optimise(objective, start, maxiter)
    if objective.has_phi and abs(result.x[-1] - start[-1]) < PHI_STUCK:
        # phi* did not move from its start: that may be a stationary point of phi^|t - t'| rather than a
        # minimum, so start again on the other side of it and keep the better end point
        other = result.x.copy()
        other[-1] = start[-1] - 1.0 if result.x[-1] >= start[-1] else start[-1] + 1.0
        second = _optimise(objective, other, maxiter)
        if second.fun < result.fun:
            result = second
    converged, message = verdict(result)
    return objective.params.canonical(result.x), converged, message
