"""The covariance parameters theta on the user's scale and on that of the standardised design
(:mod:`bayeshlm.design.scaling`), on which the likelihood engine optimises."""

from __future__ import annotations

import numpy as np

from ..design.scaling import Scaling
from ..level1 import correlation


def theta_from_standard(objective, scaling: Scaling, x: np.ndarray) -> np.ndarray:
    """The parameter vector of the user's design from that of its standardised form: Lambda = S^-1 Lambda*
    sqrt(ratio) with ratio = s_y^2 sigma*^2 / sigma^2 (T = sigma^2 Lambda Lambda' = s_y^2 S^-1 T* S^-1),
    alpha_m = alpha*_m / s_m, phi = phi*^(1/k)."""
    return _convert(objective, scaling, np.asarray(x, dtype=float), to_standard=False)


def theta_to_standard(objective, scaling: Scaling, x: np.ndarray) -> np.ndarray:
    """The inverse of :func:`theta_from_standard` (``objective`` is the standardised one)."""
    return _convert(objective, scaling, np.asarray(x, dtype=float), to_standard=True)


def _convert(objective, scaling: Scaling, x: np.ndarray, to_standard: bool) -> np.ndarray:
    out = x.copy()
    params = objective.params
    # ratio = s_y^2 sigma*^2 / sigma^2: 1, but s_y^2 when sigma^2 = 1 is known (meta-analysis) and
    # exp(sum_m alpha_m c_m) when the log-linear variance predictors are centred
    ratio = 1.0 if objective.design.known_variance is None else scaling.y_scale ** 2
    k = params.size
    residual = objective.design.residual
    if residual is not None:  # the variance function's own units (log-linear: alpha*_m = alpha_m s_m)
        variance = objective.errors.variance
        m = variance.size(residual)
        out[k:k + m], log_ratio = variance.convert(x[k:k + m], scaling, to_standard)
        ratio = float(np.exp(log_ratio))
        if objective.has_phi:  # each structure's own transform: the standardised one may differ (AR(1) -> CAR(1))
            standard = objective.errors.correlation
            user = correlation(scaling.correlation, standard.time)
            if to_standard:
                out[-1] = standard.transform(scaling.phi_to_standard(user.phi(x[-1])))
            else:
                out[-1] = user.transform(scaling.phi(standard.phi(x[-1])))
    for fp in params.factors:
        scale = scaling.z_scale[fp.factor.name][fp.rows]
        block = x[fp.offset:fp.offset + fp.size]
        factor = scale / np.sqrt(ratio) if to_standard else np.sqrt(ratio) / scale
        out[fp.offset:fp.offset + fp.size] = block * factor
    return out
