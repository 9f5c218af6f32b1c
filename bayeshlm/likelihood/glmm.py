"""Generalized linear mixed models by maximum likelihood: the Laplace approximation and adaptive quadrature.

Model (Bates et al. 2015, JSS 67(1), section 1; R&B 2002, ch. 10): eta = X beta + Z Lambda_theta u + offset,
u ~ N(0, I), y_i | u from the family with mean g^{-1}(eta_i). For each (beta, theta):

1. Penalised IRLS (PIRLS) finds the conditional mode u_hat of  l(u) = sum_i log p(y_i | eta_i) - ||u||^2 / 2
   by Fisher scoring: u <- u + (U'WU + I)^{-1} (U's - u), U = Z Lambda, with the family's working weights W
   and eta-scale scores s, halving the step whenever l(u) would fall (lme4's ``src/predModule.cpp``).
2. Laplace:  log L(beta, theta) ~ sum_i log p(y_i | eta_i(u_hat)) - ||u_hat||^2 / 2 - log|L|
   with L L' = U'W(u_hat)U + I, W the EXPECTED (Fisher) information weights as lme4 uses (equal to the
   observed information for the logit-binomial/Bernoulli and the log-Poisson; for probit and cloglog links
   glmmTMB's observed-information Laplace differs slightly). Every normalising constant (log-choose, -log y!)
   is included, so this is on the scale of glmer's ``logLik`` with nAGQ = 1.
3. Adaptive Gauss-Hermite quadrature (one grouping factor, one random intercept): per group, with the
   conditional mode u_j and curvature h_j = (U'WU + I)_jj,
   L_j = sqrt(2 / h_j) sum_k w_k exp(z_k^2) p(y_j | u_j + sqrt(2 / h_j) z_k) phi(u_j + sqrt(2 / h_j) z_k)
   (Pinheiro & Bates 1995). With one node this is the Laplace value. The result is the marginal
   log-likelihood itself; glmer's ``logLik`` at nAGQ > 1 subtracts the saturated model's log-likelihood
   (sum of log p(y_i | mu_i = y_i)), so add that back to compare.

beta and theta are optimised jointly, as glmer's second stage (nAGQ > 0) does, by BFGS on the gradient of the
deviance -2 log L (analytic in beta for the Laplace deviance, central differences in theta), then polished by
Newton steps on a finite-difference Hessian, which also gives the standard errors: cov(beta, theta) = 2 H^{-1}
(lme4's default ``use.hessian = TRUE``). The columns
of X other than the intercept are standardised internally and the results mapped back exactly.
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import logsumexp

from ..design import Design
from ..errors import OptionError
from ..families.outcome import GLMOutcome
from .params import Parameterization

PIRLS_TOL = 1e-11
GRADIENT_STEP = 1e-4  # central differences of the deviance (relative to max(1, |x|))
HESSIAN_STEP = 1e-3
COMPILED_ROWS = 50_000  # from here, one scalar random effect: conditional modes by the compiled kernel


class FixedScaling:
    """X_s = (X - m) / s for the non-intercept columns (centred only when an intercept is present).

    beta = A beta_s maps the standardised coefficients back; cov(beta) = A cov(beta_s) A'.
    """

    def __init__(self, X: np.ndarray):
        p = X.shape[1]
        intercept = np.flatnonzero(np.all(X == 1.0, axis=0))
        self.intercept = int(intercept[0]) if len(intercept) else None
        center = X.mean(axis=0) if self.intercept is not None else np.zeros(p)
        scale = X.std(axis=0)
        scale[scale == 0] = 1.0
        if self.intercept is not None:
            center[self.intercept], scale[self.intercept] = 0.0, 1.0
        self.X = (X - center) / scale
        A = np.diag(1.0 / scale)
        if self.intercept is not None:
            A[self.intercept] -= center / scale
            A[self.intercept, self.intercept] = 1.0
        self.A = A


class GLMMObjective:
    """The Laplace (or adaptive-quadrature) deviance -2 log L(beta_s, theta) of one model."""

    def __init__(self, design: Design, outcome: GLMOutcome, nagq: int = 1, information: str = "expected"):
        self.design, self.outcome = design, outcome
        self.family = copy.copy(outcome.family)  # its own parameters (e.g. a shape) change during the fit
        self.nagq, self.information = nagq, information
        self.scaling = FixedScaling(design.X)
        self.params = Parameterization(design)
        self.p, self.n_theta = design.n_fixed, self.params.size
        self.n_extra = len(self.family.extra_names)
        self.y, self.size, self.offset = outcome.y, outcome.size, outcome.offset
        self.factors = design.factors
        sizes = [f.n_groups * f.n_coef for f in self.factors]
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.q = int(self.starts[-1])
        self._columns = [self.starts[k] + f.codes[:, None] * f.n_coef + np.arange(f.n_coef)
                         for k, f in enumerate(self.factors)]
        self.u = np.zeros(self.q)  # warm start: the last conditional mode
        self._schur = None
        if len(self.factors) > 1:
            self._schur = SchurAlgebra.for_objective(self)
            if self._schur is None:
                self._pair_pattern()
        self._glm_beta = None  # the GLM fit without random effects (glm_start)
        self._compiled = None  # the kernel's family code when the compiled conditional modes are used
        if (len(self.factors) == 1 and self.factors[0].n_coef == 1 and len(self.y) >= COMPILED_ROWS
                and self.family.name in ("binomial", "bernoulli", "poisson")):
            from .glmm_kernel import family_code

            self._compiled = family_code(self.family)
        self._nested = None  # the nested-chain quadrature (two nested factors, one random effect each)
        if nagq > 1 and len(self.factors) == 2:
            from .glmm_nested import NestedQuadrature

            self._nested = NestedQuadrature(self, nagq)
        elif nagq > 1:
            self.nodes, self.weights = np.polynomial.hermite.hermgauss(nagq)
            f = self.factors[0]  # group sums of (n, K) arrays of the quadrature, as one sparse product
            self._group_sum = sp.csr_matrix((np.ones(len(self.y)), (f.codes, np.arange(len(self.y)))),
                                            shape=(f.n_groups, len(self.y)))

    # --- random-effect algebra -----------------------------------------------------------------------
    def _ZL(self, theta: np.ndarray) -> list[np.ndarray]:
        return [f.Z @ lam for f, lam in zip(self.factors, self.params.lambdas(theta))]

    def _times_u(self, ZL: list[np.ndarray], u: np.ndarray) -> np.ndarray:
        if len(ZL) == 1 and ZL[0].shape[1] == 1:  # one random intercept or slope: the common case, kept short
            return ZL[0][:, 0] * u[self.factors[0].codes]
        out = np.zeros(len(self.y))
        for k, (f, zl) in enumerate(zip(self.factors, ZL)):
            block = u[self.starts[k]:self.starts[k + 1]].reshape(f.n_groups, f.n_coef)
            out += np.einsum("ij,ij->i", zl, block[f.codes])
        return out

    def _transpose_times(self, ZL: list[np.ndarray], v: np.ndarray) -> np.ndarray:
        if len(ZL) == 1 and ZL[0].shape[1] == 1:
            f = self.factors[0]
            return np.bincount(f.codes, ZL[0][:, 0] * v, minlength=f.n_groups)
        parts = []
        for f, zl in zip(self.factors, ZL):
            parts.append(np.column_stack([np.bincount(f.codes, zl[:, c] * v, minlength=f.n_groups)
                                          for c in range(f.n_coef)]).ravel())
        return np.concatenate(parts)

    def _factorize(self, ZL: list[np.ndarray], w: np.ndarray):
        """Cholesky of U'WU + I: batched blocks for one factor, else one dense (or sparse LU) matrix."""
        if len(self.factors) == 1:
            f, zl = self.factors[0], ZL[0]
            q = f.n_coef
            if q == 1:  # diagonal: L_j = sqrt(1 + sum_i w_i zl_i^2)
                diag = np.bincount(f.codes, w * zl[:, 0] ** 2, minlength=f.n_groups) + 1.0
                return ("blocks", np.sqrt(diag)[:, None, None])
            H = np.empty((f.n_groups, q, q))
            for a in range(q):
                for b in range(a, q):
                    H[:, a, b] = H[:, b, a] = np.bincount(f.codes, w * zl[:, a] * zl[:, b], minlength=f.n_groups)
            H += np.eye(q)
            return ("blocks", np.linalg.cholesky(H))
        if self._schur is not None:
            return ("schur", self._schur.factorize(ZL, w))
        sums = np.bincount(self._pair_index, (w[:, None, None] * self._row_products(ZL)).ravel(),
                           minlength=len(self._pair_rows))
        if self.q <= 3000:
            H = np.zeros((self.q, self.q))
            H[self._pair_rows, self._pair_cols] = sums
            H[np.diag_indices(self.q)] += 1.0
            return ("dense", la.cho_factor(H, lower=True, check_finite=False))
        H = sp.csc_matrix((sums, (self._pair_rows, self._pair_cols)), shape=(self.q, self.q)) + sp.identity(self.q)
        return ("sparse", sp.linalg.splu(H.tocsc()))

    @staticmethod
    def _row_products(ZL: list[np.ndarray]) -> np.ndarray:
        values = np.concatenate(ZL, axis=1)  # (n, k): each row's entries of U
        return values[:, :, None] * values[:, None, :]

    def _pair_pattern(self) -> None:
        """Where each row's products U_ia U_ib land in U'WU: unique (row, column) pairs and each product's pair."""
        columns = np.concatenate(self._columns, axis=1)  # (n, k)
        flat = (columns[:, :, None] * self.q + columns[:, None, :]).ravel()
        unique, self._pair_index = np.unique(flat, return_inverse=True)
        self._pair_rows, self._pair_cols = np.divmod(unique, self.q)

    @staticmethod
    def _solve(fac, rhs: np.ndarray) -> np.ndarray:
        kind, F = fac
        if kind == "blocks":
            J, q, _ = F.shape
            if q == 1:
                return rhs / F[:, 0, 0] ** 2
            b = rhs.reshape(J, q, 1)
            z = np.linalg.solve(F, b)
            return np.linalg.solve(np.swapaxes(F, 1, 2), z).ravel()
        if kind == "dense":
            return la.cho_solve(F, rhs, check_finite=False)
        return F.solve(rhs)  # Schur or sparse LU

    @staticmethod
    def _logdet(fac) -> float:
        kind, F = fac
        if kind == "blocks":
            return 2.0 * float(np.sum(np.log(np.diagonal(F, axis1=1, axis2=2))))
        if kind == "dense":
            return 2.0 * float(np.sum(np.log(np.diag(F[0]))))
        if kind == "schur":
            return F.logdet()
        return float(np.sum(np.log(np.abs(F.U.diagonal()))))

    # --- PIRLS ---------------------------------------------------------------------------------------
    def pirls(self, beta_s: np.ndarray, theta: np.ndarray, u: np.ndarray | None = None):
        """Conditional mode u_hat at (beta_s, theta): (u_hat, fixed part of eta, ZL, factorization at u_hat)."""
        fam, y, size = self.family, self.y, self.size
        ZL = self._ZL(theta)
        eta0 = self.scaling.X @ beta_s + self.offset
        u = (self.u if u is None else u).copy()
        if self._compiled is not None:
            from .glmm_kernel import scalar_modes

            u = scalar_modes(self._compiled, y, size, eta0, ZL[0][:, 0], self.factors[0].codes, u, PIRLS_TOL, 100)
            eta = eta0 + self._times_u(ZL, u)
        else:
            u, eta = self._scoring_steps(eta0, ZL, u)
        w = fam.observed_weights(y, eta, size) if self.information == "observed" else fam.working(y, eta, size)[0]
        fac = self._factorize(ZL, w)
        self.u = u
        return u, eta0, ZL, fac

    def _scoring_steps(self, eta0: np.ndarray, ZL: list[np.ndarray], u: np.ndarray):
        """Fisher scoring on u from ``u``, each step halved while the penalised log-likelihood would fall."""
        fam, y, size = self.family, self.y, self.size
        eta = eta0 + self._times_u(ZL, u)
        objective = fam.loglik(y, eta, size).sum() - 0.5 * u @ u
        for _ in range(100):
            w, s = fam.working(y, eta, size)
            fac = self._factorize(ZL, w)
            step = self._solve(fac, self._transpose_times(ZL, s) - u)
            for _ in range(30):  # step halving
                new_u = u + step
                new_eta = eta0 + self._times_u(ZL, new_u)
                new_objective = fam.loglik(y, new_eta, size).sum() - 0.5 * new_u @ new_u
                if new_objective >= objective - 1e-12 * abs(objective):
                    break
                step *= 0.5
            done = np.max(np.abs(step), initial=0.0) < PIRLS_TOL * (1.0 + np.max(np.abs(u), initial=0.0))
            u, eta, objective = new_u, new_eta, new_objective
            if done:
                break
        return u, eta

    def loglik(self, x: np.ndarray) -> float:
        """Laplace (nagq = 1) or adaptive-quadrature log-likelihood at x = (beta_s, theta)."""
        beta_s, theta = self.split(x)
        u, eta0, ZL, fac = self.pirls(beta_s, theta)
        if self._nested is not None:
            return self._nested.loglik(u, eta0, ZL)
        if self.nagq > 1:
            return self._quadrature(u, eta0, ZL[0][:, 0], fac)
        eta = eta0 + self._times_u(ZL, u)
        return float(self.family.loglik(self.y, eta, self.size).sum() - 0.5 * u @ u - 0.5 * self._logdet(fac))

    def _quadrature(self, u: np.ndarray, eta0: np.ndarray, zl: np.ndarray, fac) -> float:
        codes = self.factors[0].codes
        scale = np.sqrt(2.0) / fac[1][:, 0, 0]  # sqrt(2 / h_j), h_j = L_j^2
        points = u[:, None] + scale[:, None] * self.nodes[None, :]  # (J, K)
        eta = eta0[:, None] + zl[:, None] * points[codes]
        rows = self.family.loglik(self.y[:, None], eta, self.size[:, None])  # (n, K)
        per_group = self._group_sum @ rows
        log_terms = per_group - 0.5 * points ** 2 - 0.5 * np.log(2.0 * np.pi) + self.nodes ** 2
        return float(np.sum(logsumexp(log_terms, b=self.weights[None, :], axis=1) + np.log(scale)))

    def conditional_covariance(self, x: np.ndarray, u: np.ndarray, k: int) -> np.ndarray:
        """(J, q, q) conditional covariances of factor ``k``'s spherical effects u_j at the parameters ``x``: the
        diagonal blocks of (Lambda'Z'WZ Lambda + I)^{-1} at the PIRLS mode (started from ``u``)."""
        beta_s, theta = self.split(x)
        _, _, _, fac = self.pirls(beta_s, theta, u)
        if fac[0] == "blocks":
            inv_chol = np.linalg.inv(fac[1])
            return np.swapaxes(inv_chol, 1, 2) @ inv_chol
        idx = np.arange(self.starts[k], self.starts[k + 1])
        columns = self._solve(fac, np.eye(self.q)[:, idx])[idx]
        J, q = self.design.factors[k].n_groups, self.design.factors[k].n_coef
        return np.stack([columns[j * q:(j + 1) * q, j * q:(j + 1) * q] for j in range(J)])

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(beta_s, theta) from x = (beta_s, theta, family parameters); sets the family's parameters."""
        if self.n_extra:
            self.family.set_extra(x[self.p + self.n_theta:])
        return x[:self.p], x[self.p:self.p + self.n_theta]

    def start(self) -> np.ndarray:
        """GLM coefficients, lme4's Lambda = I and the family's own start."""
        extra = self.family.extra_start(self.y)
        self.family.set_extra(extra)
        return np.concatenate([glm_start(self), self.params.start, extra])

    def deviance(self, x: np.ndarray) -> float:
        value = -2.0 * self.loglik(x)
        return value if np.isfinite(value) else np.inf

    # --- derivatives ----------------------------------------------------------------------------------
    def gradient(self, x: np.ndarray) -> np.ndarray:
        """Gradient of the deviance: analytic (``score``) where available, central differences for the rest
        (the family's own parameters; everything on the sparse path)."""
        g = np.empty(len(x))
        m = self._n_analytic()
        if m:
            g[:m] = -2.0 * self.score(x)
        u0 = self.u.copy()
        h = GRADIENT_STEP * np.maximum(1.0, np.abs(x))
        for k in range(m, len(x)):
            e = np.zeros(len(x))
            e[k] = h[k]
            self.u = u0.copy()
            up = self.deviance(x + e)
            self.u = u0.copy()
            g[k] = (up - self.deviance(x - e)) / (2.0 * h[k])
        self.u = u0
        return g

    def score(self, x: np.ndarray) -> np.ndarray:
        """d log L / d (beta_s, theta) of the Laplace approximation (of the quadrature: ``_quadrature_score``).

        With s, W the family's eta-scale score and expected weights at the mode u, W_o the observed information
        (-ds/deta; W_o = W for canonical links), H = U'WU + I, H_o = U'W_o U + I and lev_i = U_i H^{-1} U_i':
            d log L / d beta    = X's - (1/2) sum_i (dW_i/deta_i) lev_i deta_i/dbeta,
            d log L / d theta_k = s'(dU_k u) - (1/2) [2 sum_i W_i (dU_k)_i H^{-1} U_i'
                                                      + sum_i (dW_i/deta_i) lev_i deta_i/dtheta_k],
        with dU_k = Z dLambda/dtheta_k, deta/dbeta = X - U H_o^{-1} U'W_o X and
        deta/dtheta_k = dU_k u + U H_o^{-1} (dU_k's - U'W_o dU_k u): the mode moves with the parameters
        (implicit function theorem on U's - u = 0), while the terms through u itself vanish at the mode
        (envelope theorem). dW/deta and W_o are central differences in eta of the family's weights and scores.
        """
        p, m = self.p, self._n_analytic()
        u, eta0, ZL, fac = self.pirls(*self.split(x))
        eta = eta0 + self._times_u(ZL, u)
        fam, X = self.family, self.scaling.X
        w, s, w_obs, dw = self._weights_at_mode(eta)
        if self.nagq > 1:
            return self._quadrature_score(u, eta0, ZL[0][:, 0], fac, w, s, w_obs, dw)
        fac_obs = fac if fam.canonical or self.information == "observed" else self._factorize(ZL, w_obs)
        inverse = self._pair_inverse(fac) if m > p else None
        values = np.concatenate(ZL, axis=1)
        if inverse is None:
            lev = self._leverages(ZL, fac)
        else:
            lev = np.einsum("ia,iab,ib->i", values, inverse, values)
        weighted_lev = dw * lev
        moved = np.column_stack([self._times_u(ZL, self._solve(fac_obs, self._transpose_times(ZL, w_obs * X[:, c])))
                                 for c in range(p)])
        out = [X.T @ s - 0.5 * (X - moved).T @ weighted_lev]
        if inverse is None:
            return out[0]
        first_column = np.cumsum([0] + [f.n_coef for f in self.factors])
        for k, fp in enumerate(self.params.factors):
            f = fp.factor
            u_f = u[self.starts[k]:self.starts[k + 1]].reshape(f.n_groups, f.n_coef)
            for r, c in zip(fp.rows, fp.cols):
                dz = f.Z[:, r]
                moved_by = dz * u_f[f.codes, c]  # dU_k u
                rhs = -self._transpose_times(ZL, w_obs * moved_by)
                rhs[self.starts[k] + np.arange(f.n_groups) * f.n_coef + c] += np.bincount(f.codes, dz * s,
                                                                                         minlength=f.n_groups)
                deta = moved_by + self._times_u(ZL, self._solve(fac_obs, rhs))
                cross = np.einsum("ib,ib->i", values, inverse[:, first_column[k] + c, :])
                out.append(np.array([s @ moved_by - (w * dz) @ cross - 0.5 * weighted_lev @ deta]))
        return np.concatenate(out)

    def _weights_at_mode(self, eta: np.ndarray):
        """(W, s, W_o, dW/deta) per row: the log-determinant's weights (expected, or observed with
        information='observed'), the score, the observed information -ds/deta and the weights' slope in eta
        (central differences in eta)."""
        fam, y, size = self.family, self.y, self.size
        w, s = fam.working(y, eta, size)
        h = 1e-5 * np.maximum(1.0, np.abs(eta))
        w_up, s_up = fam.working(y, eta + h, size)
        w_down, s_down = fam.working(y, eta - h, size)
        w_obs = -(s_up - s_down) / (2.0 * h)
        if self.information == "observed" and not fam.canonical:  # the log-determinant uses W_o
            w = fam.observed_weights(y, eta, size)
            w_up, w_down = fam.observed_weights(y, eta + h, size), fam.observed_weights(y, eta - h, size)
        return w, s, w_obs, (w_up - w_down) / (2.0 * h)

    def _quadrature_score(self, u, eta0, zl, fac, w, s, w_obs, dw) -> np.ndarray:
        """d log L / d (beta_s, lambda) of the adaptive-quadrature log-likelihood (one scalar random effect
        per group; zl = z lambda).

        Per group, log L_j = log sum_k w_k e^{z_k^2} f_j(a_jk) + log sigma_j with a_jk = u_j + sigma_j z_k,
        sigma_j = sqrt(2 / h_j) and l = log f_j(a) = sum_i log p(y_i | eta0_i + zl_i a) - a^2 / 2 + const.
        With pi_jk the normalised terms:
            d log L_j / dp = sum_k pi_jk [dl_jk/dp (a fixed) + l'_jk (du_j/dp + z_k dsigma_j/dp)]
                             + (dsigma_j/dp) / sigma_j,
        l' = sum_i zl_i s_i - a; du_j/dp from the mode equation sum_i zl_i s_i = u_j (implicit function theorem,
        d/du = -h_o,j = -(1 + sum_i W_o,i zl_i^2)); dsigma_j/dp = -sigma_j / (2 h_j) dh_j/dp with
        h_j = 1 + sum_i W_i zl_i^2 at the mode, so dh_j/dp = sum_i zl_i^2 dW_i/deta deta_i/dp (+ 2 W_i zl_i z_i
        for lambda)."""
        fam, y, size, X = self.family, self.y, self.size, self.scaling.X
        f = self.factors[0]
        codes, z, J, p = f.codes, f.Z[:, 0], f.n_groups, self.p

        def sums(values):
            return np.bincount(codes, values, minlength=J)

        h = fac[1][:, 0, 0] ** 2
        h_obs = 1.0 + sums(w_obs * zl * zl)
        u_row = u[codes]
        mode_slopes = np.column_stack([sums(-zl * w_obs * X[:, c]) for c in range(p)]
                                      + [sums(z * s - zl * w_obs * z * u_row)])
        du = mode_slopes / h_obs[:, None]  # (J, p + 1)
        deta = np.column_stack([X, z * u_row]) + zl[:, None] * du[codes]
        dh = np.column_stack([sums(dw * zl * zl * deta[:, c]) for c in range(p + 1)])
        dh[:, p] += sums(2.0 * w * zl * z)
        sigma = np.sqrt(2.0 / h)
        dsigma = -(sigma / (2.0 * h))[:, None] * dh
        points = u[:, None] + sigma[:, None] * self.nodes[None, :]  # (J, K)
        eta = eta0[:, None] + zl[:, None] * points[codes]
        rows = fam.loglik(y[:, None], eta, size[:, None])
        score = fam.working(y[:, None], eta, size[:, None])[1]  # (n, K)
        log_terms = self._group_sum @ rows - 0.5 * points ** 2 + self.nodes ** 2 + np.log(self.weights)
        pi = np.exp(log_terms - logsumexp(log_terms, axis=1, keepdims=True))  # (J, K)
        slope = self._group_sum @ (score * zl[:, None]) - points  # l'(a_jk)
        mean_slope = np.sum(pi * slope, axis=1)
        mean_slope_node = np.sum(pi * slope * self.nodes, axis=1)
        weighted_score = np.sum(pi[codes] * score, axis=1)  # sum_k pi_jk s_ik, (n,)
        direct = np.concatenate([X.T @ weighted_score,
                                 [np.sum(z * np.sum(pi[codes] * score * points[codes], axis=1))]])
        return (direct + mean_slope @ du + mean_slope_node @ dsigma + (dsigma / sigma[:, None]).sum(axis=0))

    def _pair_inverse(self, fac) -> np.ndarray | None:
        """(n, k, k): the entries of (U'WU + I)^{-1} at each row's pairs of random-effect columns
        (block and dense paths; None otherwise)."""
        kind, F = fac
        if kind == "blocks":
            codes = self.factors[0].codes
            if F.shape[1] == 1:
                return (1.0 / F[codes, 0, 0] ** 2)[:, None, None]
            inv_chol = np.linalg.inv(F)
            return (np.swapaxes(inv_chol, 1, 2) @ inv_chol)[codes]
        if kind == "schur":
            return F.pair_inverse()
        if kind != "dense":
            return None
        H_inv = la.cho_solve(F, np.eye(self.q), check_finite=False)
        k = sum(f.n_coef for f in self.factors)
        return H_inv[self._pair_rows, self._pair_cols][self._pair_index].reshape(len(self.y), k, k)

    def _leverages(self, ZL: list[np.ndarray], fac) -> np.ndarray:
        """lev_i = U_i (U'WU + I)^{-1} U_i' for every row."""
        if fac[0] == "schur":
            return fac[1].leverages(ZL)
        values = np.concatenate(ZL, axis=1)
        return np.einsum("ia,iab,ib->i", values, self._pair_inverse(fac), values)

    def _n_analytic(self) -> int:
        """How many leading entries of x (beta_s, then theta) ``score`` differentiates: it needs the
        log-determinant's (or the quadrature scale's) weights in closed form (the expected information; the observed one
        when the family gives it in closed form or it equals the expected one, for canonical links) and
        H^{-1} at each row's pairs of columns (block, dense and Schur paths)."""
        exact_weights = (self.information == "expected" or self.family.canonical
                         or self.family.observed_weights_exact)
        if (not exact_weights or self._nested is not None
                or (len(self.factors) > 1 and self.q > 3000 and self._schur is None)):
            return 0
        return self.p + self.n_theta

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """Hessian of the deviance: the rows of ``score``'s parameters by central differences of it, the rest by
        second differences of the deviance."""
        u0, d = self.u.copy(), len(x)
        h = HESSIAN_STEP * np.maximum(1.0, np.abs(x))
        f0 = self.deviance(x)

        def at(step):
            self.u = u0.copy()
            return self.deviance(x + step)

        H = np.empty((d, d))
        m = self._n_analytic()
        if m:
            for k in range(d):
                e = np.zeros(d)
                e[k] = h[k]
                self.u = u0.copy()
                up = self.score(x + e)
                self.u = u0.copy()
                H[:m, k] = -2.0 * (up - self.score(x - e)) / (2.0 * h[k])
            H[:m, :m] = 0.5 * (H[:m, :m] + H[:m, :m].T)
            H[m:, :m] = H[:m, m:].T
        for i in range(m, d):
            ei = np.zeros(d)
            ei[i] = h[i]
            H[i, i] = (at(ei) - 2.0 * f0 + at(-ei)) / h[i] ** 2
            for j in range(m, i):
                ej = np.zeros(d)
                ej[j] = h[j]
                H[i, j] = H[j, i] = (at(ei + ej) - at(ei - ej) - at(ej - ei) + at(-ei - ej)) / (4.0 * h[i] * h[j])
        self.u = u0
        return H


class SchurAlgebra:
    """U'WU + I for several factors as [[A, B], [B', C]]: A block-diagonal over the groups of the factor with
    the most random effects (the 'big' factor), C dense over the others. Cholesky: L_A, then W = L_A^{-1} B and
    the Schur complement S = C - W'W = L_S L_S', so log|H| = log|A| + log|S| (as lme4 and MixedModels.jl
    exploit the first block's diagonal structure)."""

    def __init__(self, objective: GLMMObjective, big: int):
        self.obj, self.big = objective, big
        factors = objective.factors
        f = factors[big]
        self.codes, self.q1, self.J = f.codes, f.n_coef, f.n_groups
        self.rest = [k for k in range(len(factors)) if k != big]
        shift, rest_columns, self.rest_global = 0, [], []
        for k in self.rest:
            size = int(objective.starts[k + 1] - objective.starts[k])
            rest_columns.append(objective._columns[k] - objective.starts[k] + shift)
            self.rest_global.append(np.arange(objective.starts[k], objective.starts[k + 1]))
            shift += size
        self.q_rest = shift
        self.rest_global = np.concatenate(self.rest_global)
        self.big_global = np.arange(objective.starts[big], objective.starts[big + 1])
        self.columns = np.concatenate(rest_columns, axis=1)  # (n, k_rest) in the rest's numbering
        big_cols = self.codes[:, None] * self.q1 + np.arange(self.q1)  # (n, q1)
        self.b_index = (big_cols[:, :, None] * self.q_rest + self.columns[:, None, :]).ravel()
        first = np.cumsum([0] + [g.n_coef for g in factors])  # where each factor sits in a row's k columns
        self.row_big = first[big] + np.arange(self.q1)
        self.row_rest = np.concatenate([first[k] + np.arange(factors[k].n_coef) for k in self.rest])
        self.c_index = (self.columns[:, :, None] * self.q_rest + self.columns[:, None, :]).ravel()

    @classmethod
    def for_objective(cls, objective: GLMMObjective):
        sizes = [f.n_groups * f.n_coef for f in objective.factors]
        big = int(np.argmax(sizes))
        rest = objective.q - sizes[big]
        if sizes[big] * rest > 2e7 or len(objective.y) * rest > 5e7:
            return None
        return cls(objective, big)

    def factorize(self, ZL: list[np.ndarray], w: np.ndarray) -> SchurFactor:
        zb = ZL[self.big]
        zr = np.concatenate([ZL[k] for k in self.rest], axis=1)
        q1, J, qr = self.q1, self.J, self.q_rest
        A = np.empty((J, q1, q1))
        for a in range(q1):
            for b in range(a, q1):
                A[:, a, b] = A[:, b, a] = np.bincount(self.codes, w * zb[:, a] * zb[:, b], minlength=J)
        A += np.eye(q1)
        L_A = np.sqrt(A) if q1 == 1 else np.linalg.cholesky(A)
        B = np.bincount(self.b_index, (w[:, None, None] * zb[:, :, None] * zr[:, None, :]).ravel(),
                        minlength=J * q1 * qr).reshape(J, q1, qr)
        W = B / L_A if q1 == 1 else np.linalg.solve(L_A, B)
        C = np.bincount(self.c_index, (w[:, None, None] * zr[:, :, None] * zr[:, None, :]).ravel(),
                        minlength=qr * qr).reshape(qr, qr)
        S = C + np.eye(qr) - np.einsum("jaq,jar->qr", W, W)
        return SchurFactor(self, L_A, W, np.linalg.cholesky(S), zb, zr)


class SchurFactor:
    """The factorisation made by :class:`SchurAlgebra` at one (theta, W)."""

    def __init__(self, algebra: SchurAlgebra, L_A, W, L_S, zb, zr):
        self.alg, self.L_A, self.W, self.L_S, self.zb, self.zr = algebra, L_A, W, L_S, zb, zr

    def _forward_big(self, r: np.ndarray) -> np.ndarray:  # L_A^{-1} r, r (J, q1, m)
        return r / self.L_A if self.alg.q1 == 1 else np.linalg.solve(self.L_A, r)

    def _backward_big(self, r: np.ndarray) -> np.ndarray:  # L_A^{-T} r
        return r / self.L_A if self.alg.q1 == 1 else np.linalg.solve(np.swapaxes(self.L_A, 1, 2), r)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        alg = self.alg
        matrix = rhs.reshape(len(rhs), -1)
        y1 = self._forward_big(matrix[alg.big_global].reshape(alg.J, alg.q1, -1))
        r2 = matrix[alg.rest_global] - np.einsum("jaq,jam->qm", self.W, y1)
        x2 = la.solve_triangular(self.L_S.T, la.solve_triangular(self.L_S, r2, lower=True, check_finite=False),
                                 lower=False, check_finite=False)
        x1 = self._backward_big(y1 - np.einsum("jaq,qm->jam", self.W, x2))
        out = np.empty_like(matrix, dtype=float)
        out[alg.big_global] = x1.reshape(alg.J * alg.q1, -1)
        out[alg.rest_global] = x2
        return out.reshape(rhs.shape)

    def pair_inverse(self) -> np.ndarray:
        """(n, k, k): H^{-1} at each row's columns, from the blocks of the inverse with T_j = A_j^{-1} B_j:
        big-big A_j^{-1} + T_j S^{-1} T_j', big-rest -T_j S^{-1}, rest-rest S^{-1}."""
        alg, codes = self.alg, self.alg.codes
        inv_chol = np.linalg.inv(self.L_A)  # (J, q1, q1)
        T = np.swapaxes(inv_chol, 1, 2) @ self.W  # A^{-1} B, with W = L_A^{-1} B
        S_inv = la.cho_solve((self.L_S, True), np.eye(alg.q_rest), check_finite=False)
        TS = T @ S_inv
        big_big = np.swapaxes(inv_chol, 1, 2) @ inv_chol + TS @ np.swapaxes(T, 1, 2)
        n, q1, cols = len(codes), alg.q1, alg.columns
        k = q1 + cols.shape[1]
        out = np.empty((n, k, k))
        big, rest = alg.row_big, alg.row_rest
        out[:, big[:, None], big[None, :]] = big_big[codes]
        cross = -TS[codes[:, None, None], np.arange(q1)[None, :, None], cols[:, None, :]]
        out[:, big[:, None], rest[None, :]] = cross
        out[:, rest[:, None], big[None, :]] = np.swapaxes(cross, 1, 2)
        out[:, rest[:, None], rest[None, :]] = S_inv[cols[:, :, None], cols[:, None, :]]
        return out

    def logdet(self) -> float:
        diag_A = np.diagonal(self.L_A, axis1=1, axis2=2)
        return 2.0 * float(np.sum(np.log(diag_A)) + np.sum(np.log(np.diag(self.L_S))))

    def leverages(self, ZL) -> np.ndarray:
        """U_i H^{-1} U_i' = ||v_i||^2 + ||L_S^{-1}(c_i - W_j' v_i)||^2 with v_i = L_A,j^{-1} a_i."""
        alg = self.alg
        codes = alg.codes
        if alg.q1 == 1:
            v = self.zb / self.L_A[codes, 0]
        else:
            v = np.linalg.solve(self.L_A[codes], self.zb[:, :, None])[:, :, 0]
        c = np.zeros((len(codes), alg.q_rest))
        np.put_along_axis(c, alg.columns, self.zr, axis=1)
        c -= np.einsum("ia,iaq->iq", v, self.W[codes])
        z = la.solve_triangular(self.L_S, c.T, lower=True, check_finite=False)
        return np.sum(v * v, axis=1) + np.sum(z * z, axis=0)


def glm_start(objective: GLMMObjective) -> np.ndarray:
    """beta_s of the GLM without random effects (IRLS from beta = 0), lme4's usual start. Kept on the objective
    when the family has no parameters of its own (the separation check and the start both need it)."""
    if objective._glm_beta is not None:
        return objective._glm_beta.copy()
    fam, X, y, size, offset = objective.family, objective.scaling.X, objective.y, objective.size, objective.offset
    beta = np.zeros(X.shape[1])
    for _ in range(50):
        eta = X @ beta + offset
        w, s = fam.working(y, eta, size)
        step = np.linalg.lstsq(X.T @ (w[:, None] * X), X.T @ s, rcond=None)[0]
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    if not objective.n_extra:
        objective._glm_beta = beta.copy()
    return beta


def optimise(objective: GLMMObjective, maxiter: int = 500, start: np.ndarray | None = None,
             start_inverse_hessian: np.ndarray | None = None):
    """BFGS from ``start`` (default: the GLM fit and Lambda = I; with ``start_inverse_hessian`` as its first
    curvature, e.g. the Laplace fit's for quadrature), then Newton polish.

    Returns (x, deviance, gradient, Hessian, optimiser message)."""
    if start is None:
        start = objective.start()
    # the deviance's gradient and curvature grow with the rows, so its tolerance does too (the same step size)
    options = {"gtol": 1e-4 * max(1.0, len(objective.y) / 1e4), "maxiter": maxiter}
    if start_inverse_hessian is not None:
        options["hess_inv0"] = start_inverse_hessian
    result = minimize(objective.deviance, start, jac=objective.gradient, method="BFGS", options=options)
    x, f, g, message = result.x, objective.deviance(result.x), result.jac, result.message
    H = objective.hessian(x)
    for _ in range(4):  # Newton polish; the Hessian is refreshed only while the steps are not tiny
        try:
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            break
        trial = objective.deviance(x - step)
        while trial > f and np.max(np.abs(step)) > 1e-12:
            step = step / 2
            trial = objective.deviance(x - step)
        if trial > f:
            break
        x, f = x - step, trial
        g = objective.gradient(x)
        if np.max(np.abs(step)) < 1e-3:
            break
        H = objective.hessian(x)
    objective.deviance(x)  # leave the conditional modes at the optimum
    return x, f, g, H, message


def separation_direction(objective: GLMMObjective, max_rows: int = 200_000) -> np.ndarray | None:
    """A direction d (standardised scale) in which the fixed-effect likelihood rises without bound, or None.

    Complete or quasi-complete separation (Albert & Anderson 1984): some d != 0 has x_i'd >= 0 for every row
    whose outcomes are all events, <= 0 where all are non-events (or zero counts), and x_i'd = 0 for rows with
    both; then the ML estimate is infinite. Found by the linear program of Konis (2007): maximise
    sum_i s_i x_i'd under these constraints with |d_k| <= 1 (s_i = +1 / -1 for all events / none).
    Above 5,000 rows the program runs only when the GLM fit without random effects drifts (a standardised
    coefficient beyond 8, which separation produces within its 50 IRLS steps), and never above ``max_rows``.
    """
    from scipy.optimize import linprog

    X, y, size = objective.scaling.X, objective.y, objective.size
    if len(y) > max_rows or (len(y) > 5000 and np.max(np.abs(glm_start(objective)), initial=0.0) < 8.0):
        return None
    if objective.family.counts:
        sign = np.where(y == 0, -1.0, 0.0)
    else:
        sign = np.where(y >= size, 1.0, np.where(y <= 0, -1.0, 0.0))
    one_sided, mixed = sign != 0, sign == 0
    A_ub = -(sign[one_sided, None] * X[one_sided])
    result = linprog(-(sign @ X), A_ub=A_ub if len(A_ub) else None, b_ub=np.zeros(len(A_ub)) if len(A_ub) else None,
                     A_eq=X[mixed] if mixed.any() else None, b_eq=np.zeros(mixed.sum()) if mixed.any() else None,
                     bounds=[(-1.0, 1.0)] * X.shape[1], method="highs")
    if result.status != 0 or -result.fun <= 1e-7 * len(y):
        return None
    return result.x


def laplace_start(objective: GLMMObjective) -> tuple[np.ndarray, np.ndarray | None]:
    """The Laplace optimum and BFGS's inverse-Hessian approximation there (None unless positive definite):
    where quadrature starts, as glmer's nAGQ > 1 fits do, and the curvature of its first steps."""
    laplace = GLMMObjective(objective.design, objective.outcome, nagq=1, information=objective.information)
    result = minimize(laplace.deviance, laplace.start(), jac=laplace.gradient, method="BFGS",
                      options={"gtol": 1e-4})
    objective.u = laplace.u.copy()
    inverse = 0.5 * (result.hess_inv + result.hess_inv.T)
    return result.x, inverse if np.linalg.eigvalsh(inverse)[0] > 0 else None


def check_nagq(design: Design, nagq) -> int:
    """nagq must be a whole number >= 1; above 1 only for one grouping factor with one random effect, or two
    nested factors with one each (glmm_nested)."""
    from .glmm_nested import nested_chain

    if isinstance(nagq, bool) or not isinstance(nagq, (int, np.integer)) or nagq < 1:
        raise OptionError(f"nagq={nagq!r}: give the number of quadrature points, a whole number >= 1 "
                          "(1 = Laplace approximation; 25 is accurate for most data).")
    single = len(design.factors) == 1 and design.factors[0].n_coef == 1
    if nagq > 1 and not single and nested_chain(design) is None:
        raise OptionError(f"nagq={nagq} (adaptive quadrature) is available for one grouping factor with a random "
                          "intercept only (as in lme4), or two nested factors with a random intercept each; this "
                          "model has "
                          f"{', '.join(f'{f.name}: {f.n_coef} coefficient(s)' for f in design.factors)}. "
                          "Use nagq=1 (Laplace).")
    return int(nagq)
