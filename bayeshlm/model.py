"""``HLM``: one model, described in either notation, fitted by either engine.

>>> import bayeshlm as bh
>>> hsb = bh.datasets.load("hsb")
>>> model = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb)
>>> model.design.n_fixed
6
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .design import Design, build_design
from .design.out_of_core import is_dask_frame
from .errors import FormulaError, OptionError, closest_names
from .families import Family, get_family
from .progress import LOADING, reporting
from .spec import Centering, ModelSpec, parse_formula, parse_levels
from .spec.model_spec import residual_structure

METHODS = ("reml", "ml", "bayes")


class HLM:
    """A hierarchical linear model on a data frame.

    Parameters
    ----------
    formula
        lme4-style formula, e.g. ``"mathach ~ meanses*cses + sector*cses + (cses | school)"``.
        ``(x | g)`` correlated random effects, ``(x || g)`` uncorrelated, ``(1 | a/b)`` nested,
        several bar terms for several grouping factors (nested or crossed).
    data
        pandas DataFrame holding every variable, or a Dask DataFrame (``pip install 'bayeshlm[dask]'``):
        then Dask computes the per-group sufficient statistics and only those aggregates are kept
        (one grouping factor or a nested chain; see :mod:`bayeshlm.design.out_of_core` and docs/limits.md).
    known_variance
        Column of known sampling variances (V-known / meta-analysis models, R&B 2002 ch. 7).
    center
        ``{"ses": "group"}`` centres ``ses`` at its group mean, ``"grand"`` at its grand mean;
        ``"group:school"`` names the grouping factor when there are several.
    group_means
        Columns whose group means are added as ``mean_<column>`` (to use as level-2 predictors);
        a list of columns, or a dict ``{column: group}``.
    missing
        ``"drop"`` (default) drops rows with missing values in any model variable and reports how many
        and which columns (``model.design.dropped``); ``"raise"`` refuses them.
    level1_variance
        Heterogeneous level-1 variance: a column name gives one sigma^2 per category (nlme ``varIdent``;
        e.g. per occasion, R&B 2002 ch. 6); ``"~ sector"`` the log-linear model
        ln sigma^2_ij = alpha_0 + sum_m alpha_m C_mij (R&B 2002, eq. 5.36, Table 5.9).
    correlation, time
        ``correlation="ar1"`` with ``time="<occasion column>"``: first-order autoregressive errors,
        cor(e_t, e_t') = phi^|t - t'| within each group of the innermost grouping factor (nlme ``corAR1``,
        integer occasions; R&B 2002, eq. 6.31); ``"car1"`` accepts real-valued times (nlme ``corCAR1``).
    unsafe_formula
        Formula terms may use only column names, numbers, arithmetic and the functions listed in
        :data:`bayeshlm.spec.expressions.FORMULA_FUNCTIONS` (``log(x)``, ``C(x)``, ``I(x**2)``, ...), because
        formulaic evaluates them as Python. ``True`` lifts this check (e.g. for ``np.log1p(x)``) for formulas
        you wrote yourself; never for text from a file or another person. Model files cannot set it.
    family, link, trials, exposure
        Outcome family (:mod:`bayeshlm.families`): ``"gaussian"`` (default), ``"bernoulli"`` (0/1 or bool
        outcome, True/1 = the event), ``"binomial"`` (successes out of ``trials="<column>"`` or lme4's
        ``cbind(successes, failures)`` / ``cbind(successes, n - successes)`` on the left of ``~``),
        ``"poisson"`` or ``"negative_binomial"`` (counts; NB2 with its shape estimated). ``exposure="<column>"``
        or ``offset(log(<column>))`` in the formula adds log(exposure) to the linear predictor;
        ``offset(<column>)`` adds a column as it is. ``link``: logit
        (default), probit or cloglog for binary outcomes, log for counts. Non-Gaussian models are fitted by
        ``fit(method="ml")`` (Laplace) or ``fit(method="ml", nagq=25)`` (adaptive quadrature);
        ``information="observed"`` uses glmmTMB's Laplace instead of lme4's (only non-canonical links differ).
    """

    def __init__(self, formula: str, data: pd.DataFrame, known_variance: str | None = None, *,
                 center: Mapping[str, str] | None = None, group_means: Sequence[str] | Mapping | None = None,
                 missing: str = "drop", level1_variance: str | None = None, correlation: str | None = None,
                 time: str | None = None, unsafe_formula: bool = False, family: str | Family | None = None,
                 link: str | None = None, trials: str | None = None, exposure: str | None = None):
        self.family = get_family(family, link)
        formula, cbind = _binomial_outcome(formula, trials, self.family)
        formula, offset = _offset(formula, exposure, self.family)
        spec = parse_formula(formula, known_variance=known_variance, centering=_centering(center),
                             group_means=_group_means(group_means, formula), unsafe_formula=unsafe_formula)
        spec = dataclasses.replace(spec, residual=residual_structure(level1_variance, correlation, time))
        if self.family.gaussian:
            self._init(spec, data, missing)
            if family is None:
                _warn_binary_gaussian(self.design)
            return
        self._init_glm(spec, data, missing, cbind, offset)

    @classmethod
    def from_levels(cls, level1: str, level2: Mapping[str, str] | None = None, *, groups: str | Sequence[str],
                    data: pd.DataFrame, level3: Mapping | None = None, random=None, correlated: bool = True,
                    known_variance: str | None = None, center: Mapping[str, str] | None = None,
                    group_means: Sequence[str] | Mapping | None = None, missing: str = "drop",
                    level1_variance: str | None = None, correlation: str | None = None,
                    time: str | None = None, unsafe_formula: bool = False, family: str | Family | None = None,
                    link: str | None = None, trials: str | None = None, exposure: str | None = None) -> HLM:
        """Build the model from Raudenbush & Bryk's level equations.

        ``level1="mathach ~ cses"``; ``level2={"intercept": "~ meanses + sector", "cses": "~ meanses + sector"}``
        gives each listed level-1 coefficient its level-2 equation (with a random effect unless ``random``
        says otherwise); ``groups="school"`` (or ``[level-2 unit, level-3 unit]`` with ``level3=``).
        See :func:`bayeshlm.spec.parse_levels` for the rules; ``level1_variance``, ``correlation`` and ``time``
        describe the level-1 errors and ``unsafe_formula`` lifts the formula check as in :class:`HLM`;
        ``family``, ``link``, ``trials`` and ``exposure`` as in :class:`HLM` (``level1`` may be
        ``"cbind(s, n - s) ~ x"`` or hold ``offset(log(t))``).
        """
        model = cls.__new__(cls)
        model.family = get_family(family, link)
        level1, cbind = _binomial_outcome(level1, trials, model.family)
        level1, offset = _offset(level1, exposure, model.family)
        spec = parse_levels(level1, level2, groups, level3=level3, random=random, correlated=correlated,
                            known_variance=known_variance, centering=_centering(center),
                            group_means=_group_means(group_means, level1, groups), unsafe_formula=unsafe_formula)
        spec = dataclasses.replace(spec, residual=residual_structure(level1_variance, correlation, time))
        if not model.family.gaussian:
            model._init_glm(spec, data, missing, cbind, offset)
            return model
        model._init(spec, data, missing)
        if family is None:
            _warn_binary_gaussian(model.design)
        return model

    def _init_glm(self, spec: ModelSpec, data: pd.DataFrame, missing: str, trials, offset) -> None:
        """Check the outcome, trials and exposure for the family, then build the design as for any model."""
        from .families.outcome import count_all_dropped, outcome_arrays, prepare_data

        if spec.known_variance is not None or spec.residual is not None or is_dask_frame(data):
            raise OptionError(f"family={self.family.name!r} models take a pandas DataFrame and no known_variance, "
                              "level1_variance or correlation (the family fixes the level-1 variance).")
        _check_has_groups(spec)
        frame = prepare_data(data, spec.outcome, self.family, trials, offset, missing)
        self._init(spec, frame, missing)
        self.data = data
        self.outcome = outcome_arrays(frame, self.design, self.family, trials, offset)
        columns = [c for c in (trials.columns() if trials else []) + ([offset.column] if offset else [])
                   if c != spec.outcome]  # the outcome's own missing values the design counted already
        self.design = count_all_dropped(self.design, data, columns)

    def _init(self, spec: ModelSpec, data: pd.DataFrame, missing: str) -> None:
        _check_has_groups(spec)
        self.spec: ModelSpec = spec
        self.data = data
        if is_dask_frame(data):
            from .design.out_of_core import build_aggregate_design

            self.design: Design = build_aggregate_design(spec, data, missing=missing)
        else:
            from .likelihood.fit import single_threaded_blas

            with single_threaded_blas():  # small products (QR of X, group sums): threads only add synchronisation
                self.design = build_design(spec, data, missing=missing)

    # --- description ----------------------------------------------------------------------------
    def equations(self, form: str = "both"):
        """The model in level notation (beta, gamma, u, r), combined form, or both, as Markdown/LaTeX."""
        from .report.equations import render_equations

        equations = render_equations(self.design, form=form)
        if not getattr(self, "family", None) or self.family.gaussian:
            return equations
        from .families.equations import on_link_scale

        term = self.outcome.offset_term
        offset = None if term is None else (f"log({term.column})" if term.log else term.column)
        return on_link_scale(equations, self.family, offset)

    def summary(self) -> str:
        """Plain-text design summary: sizes, grouping factors, structure, dropped rows."""
        return self.design.summary()

    def __repr__(self) -> str:
        return f"HLM({self.spec.formula()!r}; {self.design.n_obs} rows)"

    # --- fitting --------------------------------------------------------------------------------
    def fit(self, method: str | None = None, **options):
        """Fit by restricted ML ('reml', the default for Gaussian outcomes), full ML ('ml'; the Laplace
        approximation, or adaptive quadrature with ``nagq=``, for other families), PQL ('pql', other families)
        or full Bayes ('bayes', Gaussian outcomes).

        Parameters
        ----------
        method
            ``"reml"``, ``"ml"``, ``"pql"`` or ``"bayes"``.
        **options
            Likelihood fits: ``maxiter``, ``start``; ``nagq`` for other families
            (:func:`bayeshlm.results.likelihood_fit.fit_likelihood`). Bayesian fits (:func:`bayeshlm.bayes.fit_bayes`):
            ``draws`` and ``tune`` (retained draws and tuning steps per chain, default 1000 each), ``chains``
            (default 4), ``random_seed`` (recorded in ``fit.sampler``), ``priors`` (None: weakly informative
            defaults scaled to the data; ``"flat"``: the book's ch. 13 priors; or a dict by parameter name),
            ``sampler`` (``"nutpie"``, the default, or ``"pymc"``), ``target_accept`` (default 0.9; 0.95 for an
            HGLM with an observation-level factor, see :func:`bayeshlm.bayes.glmm.default_target_accept`),
            ``route``, ``parameterization``, and ``random_effects="student_t"`` (heavy-tailed group effects,
            Gaussian outcomes only) with ``nu`` (fixed degrees of freedom; None: estimated). An unknown option
            raises :class:`~bayeshlm.errors.OptionError`.
            ``progress`` (Bayes): one line per step (loading, compiling, sampling) on standard error; None
            (default): shown in a terminal or notebook; ``progress=False`` (or ``progressbar=False``) silences it.
        """
        progress = options.pop("progress", None)
        if progress is None and "progressbar" in options:
            progress = options["progressbar"]
            if not isinstance(progress, bool):
                raise OptionError(f"progressbar={progress!r}: give True or False.")
        family = getattr(self, "family", None)
        _check_student_t(options, method, family)
        if family is not None and not family.gaussian and method == "bayes":
            with reporting(progress, LOADING):
                from .bayes.glmm import fit_bayes_glmm
                from .likelihood.glmm_fit import fit_glmm
                from .results.bayes_glmm_fit import BayesGLMMFit
                from .results.glmm_fit import GLMMFit

                def laplace_fit():
                    return GLMMFit(fit_glmm(self.design, self.outcome, method="ml"))

                return BayesGLMMFit(fit_bayes_glmm(self.design, self.outcome, **options, laplace_fit=laplace_fit))
        if family is not None and not family.gaussian:
            from .likelihood.glmm_fit import fit_glmm
            from .results.glmm_fit import GLMMFit
            from .results.pql_fit import PQLFit

            optimum = fit_glmm(self.design, self.outcome, method=method or "ml", **options)
            return PQLFit(optimum) if method == "pql" else GLMMFit(optimum)
        method = method or "reml"
        if method not in METHODS:
            raise OptionError(f"Unknown method {method!r}.{closest_names(str(method), METHODS)} "
                              f"Use one of {', '.join(METHODS)}.")
        if method == "bayes":
            with reporting(progress, LOADING):
                from .bayes import fit_bayes
                from .results.bayes_fit import BayesFit

                return BayesFit(fit_bayes(self.design, reference_fit=self._reference_fit, **options))
        from .results.likelihood_fit import fit_likelihood

        return fit_likelihood(self.design, method=method, **options)

    def _reference_fit(self):
        """The REML fit the Bayesian engine reads its choice of centred or non-centred sampled effects from;
        fitted on the first request and kept, so refits do not repeat it."""
        if "_reml_reference" not in self.__dict__:
            from .results.likelihood_fit import fit_likelihood

            self._reml_reference = fit_likelihood(self.design, method="reml")
        return self._reml_reference

    def prior_predictive(self, draws: int = 1000, random_seed: int | None = None, priors=None):
        """Prior predictive draws on the probability / count scale for binomial, Bernoulli and count models
        (:func:`bayeshlm.bayes.glmm.prior_predictive`; ``.summary()`` gives quantiles of the pooled proportion)."""
        family = getattr(self, "family", None)
        if family is None or family.gaussian:
            raise OptionError("prior_predictive() simulates binomial, Bernoulli and count models (family=...); for "
                              "a Gaussian model use pymc.sample_prior_predictive(model=model.pymc_model()).")
        from .bayes.glmm import prior_predictive
        from .results.bayes_glmm_fit import GLMMPriorPredictive

        return GLMMPriorPredictive(prior_predictive(self.design, self.outcome, priors, draws=draws,
                                                    random_seed=random_seed))

    def pymc_model(self, priors=None, route: str = "auto", parameterization=None):
        """The PyMC model that ``fit(method="bayes")`` samples (see :func:`bayeshlm.bayes.pymc_model`; for other
        families :func:`bayeshlm.bayes.glmm.glmm_pymc_model`, with its observed outcome ``y``)."""
        family = getattr(self, "family", None)
        if family is not None and not family.gaussian:
            from .bayes.glmm import glmm_pymc_model

            if route != "auto":
                raise OptionError(f"route={route!r}: a {family.name} model samples every group effect; use "
                                  "route='auto'.")
            return glmm_pymc_model(self.design, self.outcome, priors, parameterization)
        from .bayes import pymc_model

        return pymc_model(self.design, priors=priors, route=route, parameterization=parameterization,
                          reference_fit=self._reference_fit)


def _check_student_t(options: Mapping, method: str | None, family: Family | None) -> None:
    """Refuse Student-t group effects where no engine fits them: they need method='bayes' and a Gaussian outcome."""
    if options.get("random_effects", "normal") == "normal" and options.get("nu") is None:
        return
    if method != "bayes":
        raise OptionError(f"random_effects= and nu= (Student-t group effects) are fitted by method='bayes' only; "
                          f"method={method or 'reml'!r} assumes Gaussian group effects.")
    if family is not None and not family.gaussian:
        raise OptionError(f"random_effects= and nu= (Student-t group effects) apply to Gaussian outcomes; this model "
                          f"has family={family.name!r}, whose Bayesian fit assumes Gaussian group effects.")


def _binomial_outcome(formula: str, trials: str | None, family: Family):
    """Read lme4's cbind(successes, failures) outcome, or the trials= column; (formula, Trials or None)."""
    from .families.outcome import Trials, split_cbind

    formula, cbind = split_cbind(formula)
    if cbind is not None and trials is not None:
        raise OptionError("Give the trials once: either cbind(successes, failures) in the formula or trials=.")
    if cbind is None and trials is not None:
        if not isinstance(trials, str):
            raise OptionError(f"trials takes the name of a data column; got a {type(trials).__name__}.")
        cbind = Trials(formula.split("~", 1)[0].strip(), total=trials)
    if cbind is not None and family.name != "binomial":
        raise OptionError(f"A cbind(...) outcome or trials= describes successes out of trials: use "
                          f"family='binomial' (this model has family={family.name!r}).")
    return formula, cbind


def _offset(formula: str, exposure: str | None, family: Family):
    """Read ``offset(log(t))`` / ``offset(o)`` from a non-Gaussian formula, or ``exposure=``; (formula, Offset)."""
    from .families.outcome import Offset, split_offset

    if exposure is not None and not family.counts:
        raise OptionError(f"exposure= applies to count outcomes (family='poisson' or 'negative_binomial'); this "
                          f"model has family={family.name!r}. Write offset(log({exposure})) in the formula for "
                          "another family.")
    if exposure is not None and not isinstance(exposure, str):
        raise OptionError(f"exposure takes the name of a data column; got a {type(exposure).__name__}.")
    if family.gaussian:
        return formula, None
    formula, offset = split_offset(formula)
    if offset is not None and exposure is not None:
        raise OptionError("Give the exposure once: either offset(log(...)) in the formula or exposure=.")
    return formula, offset or (Offset(exposure) if exposure else None)


def _warn_binary_gaussian(design) -> None:
    """A 0/1 outcome fitted as Gaussian is a linear probability model: say so and name the family to use."""
    y = design.y if design.rows_available else None  # a design built from aggregates (Dask) keeps no rows
    if y is not None and len(y) and np.isin(y, (0.0, 1.0)).all():
        warnings.warn(f"The outcome {design.outcome_name!r} takes only the values 0 and 1, but the model is "
                      "Gaussian (a linear probability model). For a binary outcome use family='bernoulli' "
                      "(logistic model); pass family='gaussian' explicitly to keep this model.",
                      UserWarning, stacklevel=3)


def _check_has_groups(spec: ModelSpec) -> None:
    """Refuse a model without a grouping factor: it has no level 2, so no hierarchical model to fit."""
    if spec.random:
        return
    if spec.known_variance is not None:
        raise FormulaError(
            f"The model {spec.formula()!r} has no grouping factor. For a meta-analysis with known variances "
            f"(one row per study), use bayeshlm.meta({spec.formula()!r}, data, vi={spec.known_variance!r}), "
            "which adds the random study effect; in HLM, add a term such as (1 | study).")
    raise FormulaError(
        f"The model {spec.formula()!r} has no grouping factor, so there is no level 2 to model. Add a random "
        "term such as (1 | group), e.g. 'y ~ x + (1 | school)'; for a single-level regression use ordinary "
        "least squares (e.g. statsmodels.formula.api.ols).")


def _centering(center: Mapping[str, str] | None) -> tuple[Centering, ...]:
    out = []
    for column, how in (center or {}).items():
        kind, _, group = str(how).partition(":")
        if kind not in ("group", "grand"):
            raise OptionError(f"center[{column!r}] = {how!r}: use 'group', 'group:<factor>' or 'grand'.")
        if kind == "grand" and group:
            raise OptionError(f"center[{column!r}] = {how!r}: grand-mean centring takes no grouping factor.")
        out.append(Centering(column, kind, group or None))
    return tuple(out)


def _group_means(group_means, formula: str, groups=None) -> tuple[tuple[str, str], ...]:
    if not group_means:
        return ()
    if isinstance(group_means, Mapping):
        return tuple(group_means.items())
    if isinstance(group_means, str):
        group_means = [group_means]
    if groups is None:
        from .spec.formula import split_bar_terms

        bars = split_bar_terms(formula.split("~", 1)[-1], formula)[1]
        names = list(dict.fromkeys(b.split("|")[-1].strip() for b in bars))
    else:
        names = [groups] if isinstance(groups, str) else list(groups)[:1]
    if len(names) != 1:
        raise OptionError("group_means: the model has several grouping factors; pass a dict "
                          "{column: grouping factor}.")
    return tuple((column, names[0]) for column in group_means)
