"""Priors of the Bayesian engine: weakly informative defaults scaled to the data, the book's flat priors,
and per-parameter overrides by name.

Parameter names (the keys of ``priors={...}``):

- ``"beta"``: every fixed effect (γ in Raudenbush & Bryk's notation); a fixed-effect name such as
  ``"cses"`` or ``"(Intercept)"`` overrides that one coefficient.
- ``"sigma"``: the level-1 residual SD σ (absent in V-known models).
- ``"tau_<factor>"``: the SDs of the random coefficients of ``<factor>`` (sqrt of the diagonal of T).
- ``"corr_<factor>"``: the LKJ prior on the correlations of ``<factor>``'s random coefficients (a number
  is read as the LKJ ``eta``).
- ``"nu"``: the degrees of freedom of Student-t group effects (``random_effects="student_t"`` only).

Defaults (``priors=None``), in the spirit of rstanarm's autoscaled priors and Bambi's defaults
(Gabry & Goodrich 2020, "Prior distributions for rstanarm models"; Capretto et al. 2022, JSS 103(15)),
with s_y = sd(y) (for V-known models s_y = sqrt(var(y) + mean(V)), the marginal SD of an estimate):

- slope of column x_k: Normal(0, 2.5 s_y / sd(x_k));
- intercept: Normal(mean(y), sqrt((2.5 s_y)^2 + sum_k (2.5 s_y mean(x_k) / sd(x_k))^2)), wide enough for
  uncentred predictors;
- σ: HalfStudentT(nu=3, sigma=s_y);
- random-coefficient SDs: HalfStudentT(nu=3, sigma=s_y / sd(z_k)) for random column z_k (s_y for an intercept);
- correlations: LKJ(eta=2), mildly favouring small correlations;
- ν of Student-t group effects: Gamma(alpha=2, beta=0.1) (mean 20, mode 10, P(ν < 4) ≈ 0.06), the prior
  Juárez & Steel (2010, JBES 28(1)) recommend for the degrees of freedom of a t model: proper, it keeps ν
  away from the edge ν → 0 where the effects would have no finite moments, and it leaves room for
  near-Gaussian effects (ν of 30 and more) when the data show no heavy tails.

``priors="flat"`` gives the book's flat priors (R&B 2002, ch. 13): p(γ) ∝ 1 and a flat prior on each
variance (σ², τ_qq) over (0, ∞), with LKJ(eta=1) (uniform) correlations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..design import Design
from ..errors import OptionError, closest_names

SCALES = ("sd", "variance")
RANDOM_EFFECTS = ("normal", "student_t")
DEFAULT_NU_PRIOR = ("Gamma", {"alpha": 2.0, "beta": 0.1})
# families whose support is (0, inf), the range of the degrees of freedom ν
POSITIVE_SUPPORT = ("Gamma", "Exponential", "HalfNormal", "HalfStudentT", "HalfCauchy", "HalfFlat", "LogNormal",
                    "InverseGamma", "Weibull", "Pareto")


@dataclass(frozen=True, init=False)
class Prior:
    """A prior distribution: a PyMC distribution name and its parameters.

    ``Prior("Normal", mu=0, sigma=10)``; ``Prior("HalfFlat", on="variance")`` puts the prior on the variance
    instead of the SD (only for ``sigma`` and ``tau_*``). Array parameters give one value per coefficient.
    """

    dist: str
    params: dict = field(hash=False)
    on: str = "sd"

    def __init__(self, dist: str, *, on: str = "sd", **params):
        if str(dist) not in COMMON_FAMILIES and not _is_pymc_distribution(str(dist)):
            hint = closest_names(str(dist), _distribution_names())
            raise OptionError(f"Prior({dist!r}): not a PyMC distribution.{hint}")
        if on not in SCALES:
            raise OptionError(f"Prior(on={on!r}): use 'sd' or 'variance'.")
        object.__setattr__(self, "dist", str(dist))
        object.__setattr__(self, "params", _checked_parameters(str(dist), params))
        object.__setattr__(self, "on", on)

    def __str__(self) -> str:
        def fmt(v: np.ndarray) -> str:
            return f"{float(v):.4g}" if v.ndim == 0 else "[" + ", ".join(f"{x:.4g}" for x in v.ravel()) + "]"

        args = ", ".join(f"{k}={fmt(v)}" for k, v in self.params.items())
        where = " on the variance" if self.on == "variance" else ""
        return f"{self.dist}({args}){where}"

    __repr__ = __str__

    def signature(self) -> tuple:
        """What determines the compiled graph: the family, parameter names and shapes, and the scale."""
        return (self.dist, self.on, tuple((k, v.shape) for k, v in self.params.items()))


# the parameter names of PyMC's families that default priors and user priors mostly use (the same as the
# signatures of PyMC 6's ``dist`` methods, which a test checks): a prior of these families is checked without
# loading PyMC, which a fit on the compiled kernel never needs
COMMON_FAMILIES = {
    "Normal": ("mu", "sigma", "tau"), "Flat": (), "HalfFlat": (), "HalfNormal": ("sigma", "tau"),
    "HalfStudentT": ("nu", "sigma", "lam"), "HalfCauchy": ("beta",), "Exponential": ("lam", "scale"),
    "Gamma": ("alpha", "beta", "mu", "sigma"), "StudentT": ("nu", "mu", "sigma", "lam"), "Cauchy": ("alpha", "beta"),
    "Uniform": ("lower", "upper"), "InverseGamma": ("alpha", "beta", "mu", "sigma"),
    "LogNormal": ("mu", "sigma", "tau"),
}

# parameters that must be positive, for the families a hierarchical model's priors usually use
POSITIVE_PARAMETERS = {
    "Normal": ("sigma", "tau"), "HalfNormal": ("sigma", "tau"), "LogNormal": ("sigma", "tau"),
    "TruncatedNormal": ("sigma", "tau"), "StudentT": ("nu", "sigma", "lam"), "HalfStudentT": ("nu", "sigma", "lam"),
    "Cauchy": ("beta",), "HalfCauchy": ("beta",), "Laplace": ("b",), "Exponential": ("lam", "scale"),
    "Gamma": ("alpha", "beta", "mu", "sigma"), "InverseGamma": ("alpha", "beta", "mu", "sigma"),
    "Weibull": ("alpha", "beta"),
}


# names other libraries use for PyMC's parameters (scipy, R, Stan)
_USUAL_NAMES = {"mean": ("mu",), "loc": ("mu", "alpha"), "location": ("mu", "alpha"), "sd": ("sigma",),
                "scale": ("sigma", "beta", "b"), "df": ("nu",), "precision": ("tau",), "rate": ("lam", "beta"),
                "shape": ("alpha",), "min": ("lower",), "max": ("upper",)}


def _checked_parameters(dist: str, params: dict) -> dict[str, np.ndarray]:
    """The parameters as float arrays, after checking their names against the PyMC distribution's (a misspelt
    name would otherwise be dropped and the default used) and their values against the family's range."""
    accepted = list(COMMON_FAMILIES[dist]) if dist in COMMON_FAMILIES else pymc_parameter_names(dist)
    takes = f"{dist} takes {', '.join(accepted)}" if accepted else f"{dist} takes no parameters"
    out = {}
    for name, value in params.items():
        if name not in accepted:
            usual = [k for k in _USUAL_NAMES.get(name, ()) if k in accepted]
            hint = f" Did you mean {usual[0]!r}?" if usual else closest_names(name, accepted)
            raise OptionError(f"Prior({dist!r}, {name}=...): {dist} has no parameter {name!r}.{hint} {takes}.")
        try:
            out[name] = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise OptionError(f"Prior({dist!r}, {name}={value!r}): give a number or an array of numbers.") from None
        bounds = name in ("lower", "upper")
        if np.isnan(out[name]).any() or not (bounds or np.isfinite(out[name]).all()):
            raise OptionError(f"Prior({dist!r}, {name}={value!r}): give finite numbers.")
        if name in POSITIVE_PARAMETERS.get(dist, ()) and (out[name] <= 0).any():
            raise OptionError(f"Prior({dist!r}, {name}={value!r}): {name} must be positive for a {dist} prior.")
    if "lower" in out and "upper" in out and (out["lower"] >= out["upper"]).any():
        raise OptionError(f"Prior({dist!r}, lower=..., upper=...): lower must be below upper.")
    return out


def pymc_parameter_names(dist: str) -> list[str]:
    """The parameter names of PyMC's distribution ``dist`` (its ``dist`` method's keywords)."""
    import inspect

    import pymc as pm

    signature = inspect.signature(getattr(pm, dist).dist).parameters
    return [name for name, p in signature.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _is_pymc_distribution(dist: str) -> bool:
    import pymc as pm

    return isinstance(getattr(pm, dist, None), type)


def _distribution_names() -> list[str]:
    import pymc as pm

    return [name for name in dir(pm.distributions) if isinstance(getattr(pm.distributions, name), type)]


@dataclass(frozen=True)
class LKJ:
    """LKJ prior on a correlation matrix (Lewandowski, Kurowicka & Joe 2009); eta = 1 is uniform."""

    eta: float = 2.0

    def __str__(self) -> str:
        return f"LKJ(eta={self.eta:.4g})"

    def signature(self) -> tuple:
        return ("LKJ",)


@dataclass(frozen=True)
class PriorSet:
    """The priors of one model: one entry per fixed effect, ``sigma``, and per factor ``tau_`` / ``corr_``."""

    fixed: dict[str, Prior]
    sigma: Prior | None
    tau: dict[str, Prior]
    corr: dict[str, LKJ]
    kind: str  # 'default', 'flat' or 'default+overrides'
    # Student-t group effects: the prior of their degrees of freedom ν, or ν itself when fixed; None: Gaussian
    nu: Prior | float | None = None

    @property
    def student_t(self) -> bool:
        """True when the group effects are Student-t (a scale mixture of normals, see :mod:`.build`)."""
        return self.nu is not None

    def as_dict(self) -> dict[str, str]:
        """Human-readable table of every prior (name -> description), as printed with a fit."""
        out = {name: str(p) for name, p in self.fixed.items()}
        if self.sigma is not None:
            out["sigma"] = str(self.sigma)
        out |= {f"tau_{f}": str(p) for f, p in self.tau.items()}
        out |= {f"corr_{f}": str(p) for f, p in self.corr.items()}
        if isinstance(self.nu, Prior):
            out["nu"] = f"{self.nu} (degrees of freedom of the Student-t group effects)"
        elif self.nu is not None:
            out["nu"] = f"fixed at {self.nu:g} (degrees of freedom of the Student-t group effects)"
        return out

    def signature(self) -> tuple:
        nu = self.nu.signature() if isinstance(self.nu, Prior) else ("fixed",) if self.nu is not None else None
        return (tuple(p.signature() for p in self.fixed.values()),
                None if self.sigma is None else self.sigma.signature(),
                tuple(p.signature() for p in self.tau.values()),
                tuple(p.signature() for p in self.corr.values()), nu)


def outcome_scale(design: Design) -> float:
    """s_y: the data scale the default priors use (see the module docstring)."""
    if design.known_variance is not None:
        return float(np.sqrt(np.var(design.y, ddof=1) + np.mean(design.known_variance)))
    sd = design.column_summary().y_sd
    return sd if sd > 0 else 1.0


def _floor_sd(sd: np.ndarray) -> np.ndarray:
    """Column SDs, with 1 in place of (near-)zero ones."""
    return np.where(sd > 1e-12, sd, 1.0)


def default_priors(design: Design) -> PriorSet:
    """Weakly informative priors scaled to the data (see the module docstring for the formulas)."""
    s_y = outcome_scale(design)
    cs = design.column_summary()
    constant = cs.X_ptp == 0
    slope_sd = 2.5 * s_y / _floor_sd(cs.X_sd)
    fixed = {}
    for k, name in enumerate(design.fixed_names):
        if constant[k]:
            first = cs.X_first[k]
            spread = np.sqrt((2.5 * s_y) ** 2 + np.sum((slope_sd * cs.X_mean)[~constant] ** 2))
            fixed[name] = Prior("Normal", mu=cs.y_mean / first, sigma=spread / abs(first))
        else:
            fixed[name] = Prior("Normal", mu=0.0, sigma=slope_sd[k])
    sigma = None if design.known_variance is not None else Prior("HalfStudentT", nu=3.0, sigma=s_y)
    tau, corr = {}, {}
    for f in design.factors:
        z_sd = np.where(cs.Z_ptp[f.name] > 0, _floor_sd(cs.Z_sd[f.name]), 1.0)
        tau[f.name] = Prior("HalfStudentT", nu=np.full(f.n_coef, 3.0), sigma=s_y / z_sd)
        if any(len(b) > 1 for b in f.blocks):
            corr[f.name] = LKJ(2.0)
    return PriorSet(fixed, sigma, tau, corr, "default")


def flat_priors(design: Design) -> PriorSet:
    """The book's flat priors (R&B 2002, ch. 13): flat on γ and on every variance, uniform correlations."""
    fixed = {name: Prior("Flat") for name in design.fixed_names}
    sigma = None if design.known_variance is not None else Prior("HalfFlat", on="variance")
    tau = {f.name: Prior("HalfFlat", on="variance") for f in design.factors}
    corr = {f.name: LKJ(1.0) for f in design.factors if any(len(b) > 1 for b in f.blocks)}
    return PriorSet(fixed, sigma, tau, corr, "flat")


def resolve_priors(design: Design, priors: str | Mapping | None, random_effects: str = "normal",
                   nu: float | None = None) -> PriorSet:
    """Turn the user's ``priors=`` argument into a complete :class:`PriorSet`, validating every name.

    ``random_effects="student_t"`` makes the group effects Student-t with degrees of freedom ν, fixed at ``nu``
    or (``nu=None``) estimated under the ``"nu"`` prior (default Gamma(2, 0.1), see the module docstring)."""
    nu_value = _student_t_option(random_effects, nu)
    student_t = random_effects == "student_t"
    overrides = priors if isinstance(priors, Mapping) else {}
    if "nu" in overrides and not student_t:
        raise OptionError("priors: 'nu' is the degrees of freedom of Student-t group effects; add "
                          "random_effects='student_t' to fit them (the default group effects are Gaussian).")
    if "nu" in overrides and nu_value is not None:
        raise OptionError(f"priors['nu'] and nu={nu_value:g}: ν is either fixed (nu=) or estimated under a prior "
                          "(priors={'nu': ...}); give one of them.")
    nu_prior = Prior(DEFAULT_NU_PRIOR[0], **DEFAULT_NU_PRIOR[1]) if student_t and nu_value is None else nu_value
    if "nu" in overrides:
        nu_prior = _checked_nu_prior(overrides["nu"])
        overrides = {k: v for k, v in overrides.items() if k != "nu"}
    return dataclasses.replace(_gaussian_priors(design, overrides if isinstance(priors, Mapping) else priors),
                               nu=nu_prior)


def _student_t_option(random_effects, nu) -> float | None:
    """Check ``random_effects`` and ``nu``; the fixed ν as a float, or None (estimated, or Gaussian effects)."""
    if not isinstance(random_effects, str) or random_effects not in RANDOM_EFFECTS:
        hint = closest_names(str(random_effects), RANDOM_EFFECTS)
        raise OptionError(f"random_effects={random_effects!r}: use 'normal' (Gaussian group effects, the default) "
                          f"or 'student_t' (heavy-tailed group effects).{hint}")
    if nu is None:
        return None
    if random_effects != "student_t":
        raise OptionError(f"nu={nu!r} sets the degrees of freedom of Student-t group effects: add "
                          "random_effects='student_t', or drop nu.")
    if isinstance(nu, bool) or not isinstance(nu, int | float | np.number) or not np.isfinite(nu) or nu <= 0:
        raise OptionError(f"nu={nu!r}: give a positive finite number of degrees of freedom (e.g. nu=4), or leave "
                          "nu=None to estimate it.")
    return float(nu)


def _checked_nu_prior(value) -> Prior:
    """The prior of ν from ``priors['nu']``: a prior on (0, inf) (ν must be positive), on ν itself."""
    if not isinstance(value, Prior):
        raise OptionError(f"priors['nu'] = {value!r}: give a bayeshlm.bayes.Prior on (0, inf), e.g. "
                          "Prior('Gamma', alpha=2, beta=0.1), or fix ν with nu=<number>.")
    lower = value.params.get("lower")
    positive = value.dist in POSITIVE_SUPPORT or (
        value.dist in ("Uniform", "TruncatedNormal") and lower is not None and (lower >= 0).all())
    if not positive:
        raise OptionError(f"priors['nu'] = {value}: ν must be positive, and a {value.dist} prior allows values "
                          f"at or below zero. Use a prior on (0, inf): {', '.join(POSITIVE_SUPPORT)}, or a "
                          "Uniform with lower >= 0.")
    if value.on != "sd":
        raise OptionError("priors['nu']: on='variance' applies only to sigma and tau_* priors.")
    return value


def _gaussian_priors(design: Design, priors: str | Mapping | None) -> PriorSet:
    """The priors of every parameter but ν (see :func:`resolve_priors`)."""
    if priors is None or priors == "default":
        return default_priors(design)
    if isinstance(priors, str):
        if priors != "flat":
            raise OptionError(f"priors={priors!r}: use None (weakly informative defaults), 'flat' "
                              "(the book's flat priors) or a dict of per-parameter priors.")
        return flat_priors(design)
    if not isinstance(priors, Mapping):
        raise OptionError("priors must be None, 'flat' or a dict {parameter name: Prior(...)}.")
    base = default_priors(design)
    fixed, sigma, tau, corr = dict(base.fixed), base.sigma, dict(base.tau), dict(base.corr)
    valid = valid_prior_names(design)
    for name, value in priors.items():
        value = named_override(name, value, valid, "Prior('Normal', mu=0, sigma=10)")
        if name.startswith("corr_"):
            corr[name[5:]] = value
            continue
        if name == "beta":
            fixed = dict.fromkeys(design.fixed_names, value)
        elif name == "sigma":
            sigma = value
        elif name.startswith("tau_"):
            tau[name[4:]] = value
        else:
            fixed[name] = value
    for name in fixed:  # a per-coefficient override beats "beta", whatever the dict order
        if name in priors:
            fixed[name] = priors[name]
    for name, p in fixed.items():
        if p.on != "sd":
            raise OptionError(f"priors[{name!r}]: on='variance' applies only to sigma and tau_* priors.")
    return PriorSet(fixed, sigma, tau, corr, "default+overrides")


def named_override(name: str, value, valid: list[str], example: str) -> Prior | LKJ:
    """One entry of ``priors={...}``, checked: ``name`` must be one of ``valid`` (else the closest names are
    suggested); ``corr_<factor>`` takes the LKJ eta (a number or ``LKJ(eta=...)``), every other name a
    :class:`Prior` (``example`` shows one in the error)."""
    if name not in valid:
        raise OptionError(f"priors: no parameter {name!r} in this model.{closest_names(str(name), valid)} "
                          f"Valid names: {', '.join(valid)}.")
    if name.startswith("corr_"):
        eta = value.eta if isinstance(value, LKJ) else value
        try:
            return LKJ(float(eta))
        except (TypeError, ValueError):
            raise OptionError(f"priors[{name!r}]: give the LKJ eta as a number or LKJ(eta=...).") from None
    if not isinstance(value, Prior):
        raise OptionError(f"priors[{name!r}] = {value!r}: give a bayeshlm.bayes.Prior, e.g. {example}.")
    return value


def valid_prior_names(design: Design, random_effects: str = "normal") -> list[str]:
    """Every name ``priors={...}`` accepts for this model (with ``"nu"`` for Student-t group effects)."""
    names = ["beta", *design.fixed_names]
    if design.known_variance is None:
        names.append("sigma")
    for f in design.factors:
        names.append(f"tau_{f.name}")
        if any(len(b) > 1 for b in f.blocks):
            names.append(f"corr_{f.name}")
    if random_effects == "student_t":
        names.append("nu")
    return names
