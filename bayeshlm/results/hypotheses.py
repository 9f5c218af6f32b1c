"""General linear hypotheses L gamma = c on the fixed effects (R&B 2002, eq. 3.91) for every engine.

A hypothesis is text such as ``"meanses:cses = 0, sector:cses = 0"`` or a contrast matrix L with a right-hand
side c. The text is parsed by a small tokenizer of its own (it is never evaluated): each comma-separated part
is a sum of terms ``[number *] name`` or ``number`` on either side of one ``=`` (no ``=`` means ``= 0``);
names are the coefficient names of ``fit.fixed_effects.index`` (``(Intercept)``, ``meanses:cses``,
``C(female)[T.1]``) written as they are, or between backticks when they hold + - * = , or spaces.

Likelihood fits (REML / ML) get the Wald statistic chi2 = d' (L V L')^{-1} d with d = L gamma - c,
V = vcov(gamma), q = rank(L) df, and F = chi2 / q with a denominator df chosen by ``df=``:

- ``"book"`` (default): R&B's J - S - 1 of the coefficients L involves (the smallest, if they differ);
- ``"satterthwaite"``: lmerTest's (Kuznetsova et al. 2017; :mod:`bayeshlm.likelihood.inference`);
- ``"kenward-roger"``: pbkrtest's (REML, two-level models; :mod:`bayeshlm.likelihood.kenward_roger`), which
  also replaces V by the adjusted covariance Phi_A (in the SEs and chi2) and scales F by its lambda;
- ``"residual"``: N - p.

Bayesian fits get the posterior of d: mean, SD, equal-tailed interval and P(d > 0) per row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import FormulaError, OptionError, closest_names
from .contract import equal_tailed_interval

DF_METHODS = ("book", "satterthwaite", "kenward-roger", "residual")
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w.(\[]))
  | (?P<quoted>`[^`]*`)
  | (?P<op>[-+*=,])
  | (?P<name>[^\s`+*=,-]+)
""", re.VERBOSE)


@dataclass(frozen=True)
class Hypotheses:
    """Rows of L (one per hypothesis), the right-hand side c and each row's text."""

    L: np.ndarray  # (q, p)
    rhs: np.ndarray  # (q,)
    labels: list[str]


def _tokens(text: str) -> list[tuple[str, str]]:
    out, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise FormulaError(f"Cannot read the hypothesis {text!r} at {text[at:]!r}: write sums of "
                               "[number *] coefficient terms, e.g. 'meanses:cses = 0, sector + sector:cses = 0' "
                               "(coefficient names holding + - * = , or spaces go between backticks).")
        kind = match.lastgroup
        if kind != "space":
            value = match.group()
            out.append(("name", value[1:-1]) if kind == "quoted" else (kind, value))
        at = match.end()
    return out


def _side(tokens: list[tuple[str, str]], names: list[str], text: str) -> tuple[np.ndarray, float]:
    """Coefficients on the names and the constant of one side of an equation."""
    coef, constant = np.zeros(len(names)), 0.0
    position = 0

    def fail(what: str):
        raise FormulaError(f"Cannot read the hypothesis {text!r}: {what}. Write sums of [number *] coefficient "
                           "terms, e.g. 'meanses:cses = 0' or '2 * sector - cses = 1'.")

    if not tokens:
        fail("one side of '=' is empty")
    while position < len(tokens):
        sign = 1.0
        while position < len(tokens) and tokens[position] in (("op", "+"), ("op", "-")):
            sign *= -1.0 if tokens[position][1] == "-" else 1.0
            position += 1
        term = tokens[position:position + 3]
        if len(term) >= 3 and term[0][0] == "number" and term[1] == ("op", "*") and term[2][0] == "name":
            weight, name, position = float(term[0][1]), term[2][1], position + 3
        elif len(term) >= 3 and term[0][0] == "name" and term[1] == ("op", "*") and term[2][0] == "number":
            weight, name, position = float(term[2][1]), term[0][1], position + 3
        elif term and term[0][0] == "name":
            weight, name, position = 1.0, term[0][1], position + 1
        elif term and term[0][0] == "number":
            constant += sign * float(term[0][1])
            position += 1
            name = None
        else:
            fail(f"expected a term at {' '.join(v for _, v in tokens[position:]) or 'the end'!r}")
        if name is not None:
            if name not in names:
                raise FormulaError(f"The hypothesis {text!r} names {name!r}, which is not a fixed effect of this "
                                   f"model.{closest_names(name, names)} Fixed effects: {', '.join(names)}.")
            coef[names.index(name)] += sign * weight
        if position < len(tokens) and tokens[position] not in (("op", "+"), ("op", "-")):
            fail(f"expected + or - before {tokens[position][1]!r}")
    return coef, constant


def parse(text: str, names: list[str], show_zero: bool = True) -> Hypotheses:
    """L and c from text such as 'meanses:cses = 0, sector:cses = 0' (see the module docstring); a part
    without '=' is labelled with ' = 0' added when ``show_zero``."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError(f"The hypothesis must be non-empty text such as 'meanses:cses = 0'; got {text!r}.")
    tokens = _tokens(text)
    parts: list[list[tuple[str, str]]] = [[]]
    for token in tokens:
        if token == ("op", ","):
            parts.append([])
        else:
            parts[-1].append(token)
    rows, rhs, labels = [], [], []
    for part in parts:
        label = " ".join(v if k != "name" or re.fullmatch(r"[^\s`+*=,-]+", v) else f"`{v}`" for k, v in part)
        sides = [[]]
        for token in part:
            if token == ("op", "="):
                sides.append([])
            else:
                sides[-1].append(token)
        if len(sides) > 2:
            raise FormulaError(f"The hypothesis {label!r} has more than one '='; separate hypotheses by commas.")
        left, left_constant = _side(sides[0], names, text)
        right, right_constant = _side(sides[1], names, text) if len(sides) == 2 else (np.zeros(len(names)), 0.0)
        row = left - right
        if not np.any(row):
            raise FormulaError(f"The hypothesis {label!r} involves no fixed effect (its coefficients cancel).")
        rows.append(row)
        rhs.append(right_constant - left_constant)
        labels.append(f"{label} = 0" if len(sides) == 1 and show_zero else label)
    return Hypotheses(np.array(rows), np.array(rhs), labels)


def from_matrix(L, rhs, names: list[str]) -> Hypotheses:
    """Check a contrast matrix (q x p, or a vector of p) and its right-hand side (default 0)."""
    frame = L if isinstance(L, pd.DataFrame) else None
    try:
        M = np.atleast_2d(np.asarray(L, dtype=float))
    except (TypeError, ValueError):
        raise OptionError(f"L must be a numeric matrix with {len(names)} columns (one per fixed effect) or text "
                          "such as 'meanses:cses = 0'.") from None
    if frame is not None:
        unknown = [c for c in frame.columns if c not in names]
        if unknown:
            raise OptionError(f"L's column {unknown[0]!r} is not a fixed effect.{closest_names(unknown[0], names)} "
                              f"Fixed effects: {', '.join(names)}.")
        M = frame.reindex(columns=names, fill_value=0.0).to_numpy(dtype=float)
    if M.ndim != 2 or M.shape[1] != len(names) or M.shape[0] == 0:
        raise OptionError(f"L has shape {np.shape(L)}; it needs {len(names)} columns, one per fixed effect in the "
                          f"order {', '.join(names)}, and at least one row.")
    if not np.all(np.isfinite(M)):
        raise OptionError("L holds non-finite values; give finite weights.")
    c = np.zeros(len(M)) if rhs is None else np.atleast_1d(np.asarray(rhs, dtype=float))
    if c.shape != (len(M),) or not np.all(np.isfinite(c)):
        raise OptionError(f"rhs must hold {len(M)} finite values (one per row of L); got {rhs!r}.")
    if not np.all(np.any(M != 0, axis=1)):
        raise OptionError("A row of L is all zeros: every row must involve a fixed effect.")
    labels = [" + ".join(f"{w:g}*{n}" for w, n in zip(row, names) if w) + f" = {v:g}" for row, v in zip(M, c)]
    return Hypotheses(M, c, labels)


def hypotheses_of(fit, hypothesis, rhs=None, show_zero: bool = True) -> Hypotheses:
    names = [str(n) for n in fit.fixed_effects.index]
    if isinstance(hypothesis, str):
        if rhs is not None:
            raise OptionError("rhs= goes with a contrast matrix L; in text, write the value after '=' "
                              "(e.g. 'sector = 1').")
        return parse(hypothesis, names, show_zero)
    return from_matrix(hypothesis, rhs, names)


def _df_method(df) -> str:
    method = "book" if df is None else df
    if method not in DF_METHODS:
        raise OptionError(f"df={df!r} is not a denominator-df method.{closest_names(str(df), DF_METHODS)} "
                          f"Choose one of {', '.join(DF_METHODS)}.")
    return method


def _is_bayes(fit) -> bool:
    return fit.method == "bayes"


def _denominator_df(fit, h: Hypotheses, method: str) -> tuple[np.ndarray, float]:
    """Denominator df per row of h.L and for the joint test (last entry), and the F statistic's scale
    (Kenward-Roger's lambda; 1 otherwise)."""
    if method == "residual":
        return np.full(len(h.L) + 1, float(fit.design.n_obs - fit.design.n_fixed)), 1.0
    if method == "book":
        book = fit.fixed_effects["df"].to_numpy(dtype=float)
        rows = [book[row != 0].min() for row in h.L]
        return np.array(rows + [book[np.any(h.L != 0, axis=0)].min()]), 1.0
    if method == "kenward-roger":
        from ..likelihood.kenward_roger import kenward_roger

        kr = kenward_roger(fit)
        rows = [kr.test(row[None, :])[0] for row in h.L]
        m, scale = kr.test(h.L)
        return np.array(rows + [m]), scale
    from ..likelihood.inference import satterthwaite

    return satterthwaite(fit, h.L), 1.0


def _posterior(fit, h: Hypotheses, level: float) -> pd.DataFrame:
    beta = fit.draws("beta").transpose("chain", "draw", "fixed").values.reshape(-1, fit.design.n_fixed)
    d = beta @ h.L.T - h.rhs
    lower, upper = equal_tailed_interval(d, level)
    return pd.DataFrame({"estimate": d.mean(axis=0), "sd": d.std(axis=0, ddof=1), "lower": lower, "upper": upper,
                         "p_greater": (d > 0).mean(axis=0)},
                        index=pd.Index(h.labels, name="hypothesis"))


def _check_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
        raise OptionError(f"level={level!r}: give the interval's coverage as a number between 0 and 1 (e.g. 0.95).")
    return float(level)


def _vcov(fit, method: str) -> np.ndarray:
    """cov(gamma): Kenward-Roger's adjusted Phi_A for df='kenward-roger', else the model-based vcov."""
    if not hasattr(fit, "vcov"):
        raise OptionError(f"Wald tests need the fixed effects' covariance matrix, which {type(fit).__name__} "
                          "does not provide.")
    if method == "kenward-roger":
        from ..likelihood.kenward_roger import kenward_roger

        return kenward_roger(fit).adjusted_cov
    return fit.vcov.to_numpy(dtype=float)


@dataclass(frozen=True)
class HypothesisTest:
    """The result of :meth:`FitResult.test`.

    ``rows``: per hypothesis row, the estimate of L gamma - c with its SE (likelihood fits; and t, the
    row's denominator df and two-sided p) or its posterior summaries (Bayes: estimate = posterior mean, sd,
    lower, upper, p_greater = P(L gamma > c)). ``joint`` (likelihood fits): one row with the Wald chi2, its
    df q and p, F = chi2 / q (times lambda for Kenward-Roger), the denominator df and the F test's p; None
    for Bayesian fits.
    """

    rows: pd.DataFrame
    joint: pd.DataFrame | None
    df_method: str | None

    def __repr__(self) -> str:
        text = self.rows.to_string()
        if self.joint is not None:
            text += f"\n\nJoint Wald test (denominator df: {self.df_method}):\n" + self.joint.to_string(index=False)
        return text


def test(fit, hypothesis, rhs=None, df=None, level: float = 0.95) -> HypothesisTest:
    """Test L gamma = c (see the module docstring)."""
    level = _check_level(level)
    h = hypotheses_of(fit, hypothesis, rhs)
    if _is_bayes(fit):
        if df is not None:
            raise OptionError("df= sets the denominator df of a Wald F test; a Bayesian fit reports the posterior "
                              "of L gamma - c instead. Leave df out.")
        return HypothesisTest(_posterior(fit, h, level), None, None)
    method = _df_method(df)
    V = _vcov(fit, method)
    d = h.L @ fit.gamma - h.rhs
    VL = h.L @ V @ h.L.T
    rank = np.linalg.matrix_rank(VL, tol=1e-10 * max(float(np.abs(VL).max()), 1e-300))
    if rank < len(h.L):
        raise OptionError(f"The {len(h.L)} hypotheses are not linearly independent (rank {rank}): drop the "
                          "redundant ones.")
    chi2 = float(d @ np.linalg.solve(VL, d))
    q = len(h.L)
    ddf, scale = _denominator_df(fit, h, method)
    se = np.sqrt(np.diag(VL))
    t = d / se
    rows = pd.DataFrame({"estimate": d, "se": se, "t": t, "df": ddf[:-1], "p": 2 * stats.t.sf(np.abs(t), ddf[:-1])},
                        index=pd.Index(h.labels, name="hypothesis"))
    F = scale * chi2 / q
    joint = pd.DataFrame([{"chi2": chi2, "df": q, "p_chi2": float(stats.chi2.sf(chi2, q)), "F": F,
                           "num_df": q, "den_df": ddf[-1], "p_F": float(stats.f.sf(F, q, ddf[-1]))}])
    return HypothesisTest(rows, joint, method)


def contrast(fit, combination, rhs=None, df=None, level: float = 0.95) -> pd.DataFrame:
    """Each linear combination l'gamma (comma-separated text or rows of L) with its interval.

    Likelihood fits: estimate, se, df, t and p for l'gamma = c (c after '=', default 0) and the t interval
    estimate -+ t_{df}(1 - (1 - level)/2) se. Bayes: posterior mean, sd, equal-tailed interval, P(l'gamma > c).
    """
    level = _check_level(level)
    h = hypotheses_of(fit, combination, rhs, show_zero=False)
    if _is_bayes(fit):
        if df is not None:
            raise OptionError("df= applies to likelihood fits; a Bayesian fit reports the posterior. Leave df out.")
        out = _posterior(fit, h, level)
        out["estimate"] += h.rhs
        out["lower"] += h.rhs
        out["upper"] += h.rhs
        out.index.name = "contrast"
        return out
    method = _df_method(df)
    estimate = h.L @ fit.gamma
    se = np.sqrt(np.einsum("ip,pq,iq->i", h.L, _vcov(fit, method), h.L))
    ddf = _denominator_df(fit, h, method)[0][:-1]
    t = (estimate - h.rhs) / se
    half = stats.t.ppf(0.5 + level / 2.0, ddf) * se
    return pd.DataFrame({"estimate": estimate, "se": se, "df": ddf, "t": t, "p": 2 * stats.t.sf(np.abs(t), ddf),
                         "lower": estimate - half, "upper": estimate + half},
                        index=pd.Index(h.labels, name="contrast"))


def ttest(fit, df=None, level: float = 0.95) -> pd.DataFrame:
    """t test and interval of every fixed effect with the chosen df (see :func:`contrast`)."""
    if _is_bayes(fit):
        raise OptionError("ttest() reports frequentist t tests of REML / ML fits. A Bayesian fit's posterior "
                          "summaries of each fixed effect are in fit.fixed_effects; use fit.contrast(...) for the "
                          "posterior of a combination.")
    names = [str(n) for n in fit.fixed_effects.index]
    out = contrast(fit, np.eye(len(names)), df=df, level=level)
    out.index = pd.Index(names, name="term")
    return out


def confint(fit, level: float = 0.95, method: str = "wald", df: str | None = None, n_boot: int | None = None,
            random_seed: int | None = None, workers: int | None = None, progress: bool = False) -> pd.DataFrame:
    """Intervals for every fixed effect and every variance-component parameter of a REML / ML fit.

    ``method="wald"``: fixed effects by the t interval with ``df`` (see :func:`ttest`), variance components as
    :func:`bayeshlm.likelihood.inference.variance_intervals`. ``method="profile"``: variance components by their
    profile; fixed effects by their profile for ML fits (lme4's ``confint(method="profile")``; the REML criterion
    does not depend on the fixed effects, so a REML fit's fixed effects get the t interval and say so in
    ``method``). ``method="bootstrap"``: percentile intervals of a seeded parametric bootstrap for every row
    (lme4's ``confint(method="boot")``; ``n_boot`` refits, default 1000, on ``workers`` processes, see
    :func:`bayeshlm.likelihood.bootstrap.parametric_bootstrap`); ``se`` is then the SD of the replicates.
    Columns: factor ('fixed' for fixed effects), term, term2, parameter, estimate, se, lower, upper, method.
    """
    from ..likelihood.inference import bootstrap_intervals, fixed_profile_intervals, variance_intervals

    if _is_bayes(fit):
        raise OptionError("confint() gives likelihood intervals of REML / ML fits. A Bayesian fit's posterior "
                          "intervals are in fit.fixed_effects and fit.variance_components.")
    if method == "bootstrap":
        return bootstrap_intervals(fit, level, n_boot, random_seed, workers, progress)
    if n_boot is not None or random_seed is not None or workers is not None:
        raise OptionError(f"n_boot, random_seed and workers set the bootstrap; method={method!r} does not use them. "
                          "Give method='bootstrap', or leave them out.")
    variance = variance_intervals(fit, method, level)
    fixed = ttest(fit, df=df, level=level)
    fixed_method = [f"t ({'book' if df is None else df} df)"] * len(fixed)
    if method == "profile" and fit.method == "ml":
        fixed["lower"], fixed["upper"] = fixed_profile_intervals(fit, fixed["estimate"].to_numpy(),
                                                                 fixed["se"].to_numpy(), level)
        fixed_method = ["profile"] * len(fixed)
    rows = pd.DataFrame({"factor": "fixed", "term": list(fixed.index), "term2": "", "parameter": "coefficient",
                         "estimate": fixed["estimate"].to_numpy(), "se": fixed["se"].to_numpy(),
                         "lower": fixed["lower"].to_numpy(), "upper": fixed["upper"].to_numpy(),
                         "method": fixed_method})
    variance = variance.assign(method=method)
    table = pd.concat([rows, variance], ignore_index=True)
    table.attrs.update(variance.attrs)
    return table


# --- estimated marginal means ---------------------------------------------------------------------------------

_CATEGORICAL_TERM = re.compile(r"C\(\s*([A-Za-z_]\w*)\s*(,.*)?\)", re.DOTALL)


def marginal_means(fit, factor: str, data: pd.DataFrame, df=None, level: float = 0.95) -> pd.DataFrame:
    """Estimated marginal means of the categorical predictor ``factor`` (emmeans; Searle, Speed & Milliken 1980).

    The reference grid crosses every level of each categorical predictor of the fixed part (a non-numeric
    column, or one written ``C(column)``) and puts each numeric predictor at its mean over the analysed rows of
    ``data`` (the frame the model was fitted to). A level's mean is the average of the population predictions
    x'gamma over the grid rows with that level, weighting the other categorical predictors' levels equally:
    l'gamma with l the average of those rows of the grid's X, reported as :func:`contrast` does (``df`` as there;
    the posterior of l'gamma for Bayes). Columns estimate, se, (df,) lower, upper; index the levels.
    """
    from ..design.build import factor_variables
    from ..design.prediction_rows import prediction_rows

    design = fit.design
    spec = design.spec
    if not isinstance(data, pd.DataFrame):
        raise OptionError(f"data must be the pandas DataFrame the model was fitted to; got {type(data).__name__}.")
    expressions = [f for term in spec.fixed for f in term]
    variables = sorted(set().union(*[factor_variables(f) for f in expressions])) if expressions else []
    if factor not in variables:
        raise OptionError(f"{factor!r} is not a predictor of the fixed part.{closest_names(factor, variables)} "
                          f"Fixed-part predictors: {', '.join(variables) or 'none'}.")
    absent = [v for v in variables if v not in data.columns]
    missing_rows = ~design.row_labels.isin(data.index)
    if absent or missing_rows.any():
        raise OptionError(
            "data must be the frame the model was fitted to: "
            + (f"it lacks the column(s) {', '.join(map(repr, absent))}." if absent else
               f"{int(missing_rows.sum())} of the {design.n_obs} analysed rows' index labels are not in it."))
    rows = data.loc[design.row_labels]
    wrapped = {m.group(1) for f in expressions if (m := _CATEGORICAL_TERM.fullmatch(f))}
    categorical = [v for v in variables if v in wrapped or not (pd.api.types.is_numeric_dtype(rows[v])
                                                                 or pd.api.types.is_bool_dtype(rows[v]))]
    if factor not in categorical:
        raise OptionError(f"{factor!r} is numeric, so the reference grid holds it at its mean (as emmeans does). "
                          f"For a mean per value, write C({factor}) in the formula and refit.")
    levels = {v: pd.Index(pd.unique(rows[v])).sort_values() for v in categorical}
    size = int(np.prod([len(x) for x in levels.values()]))
    if size > 100_000:
        raise OptionError(f"The reference grid would have {size:,} rows (the categorical predictors "
                          f"{', '.join(categorical)} crossed). Fit a model with fewer categorical predictors.")
    grid = pd.MultiIndex.from_product(list(levels.values()), names=categorical).to_frame(index=False)
    frame = pd.DataFrame({c: [rows[c].iloc[0]] * len(grid) for c in rows.columns})  # group labels etc.
    for v in categorical:
        frame[v] = grid[v].astype(rows[v].dtype).to_numpy()
    for v in variables:
        if v not in categorical:
            frame[v] = float(rows[v].astype(float).mean())
    X = prediction_rows(design, frame).X
    target = levels[factor]
    L = np.vstack([X[(grid[factor] == a).to_numpy()].mean(axis=0) for a in target])
    out = contrast(fit, L, df=df, level=level)
    out = out.drop(columns=[c for c in ("t", "p", "p_greater") if c in out.columns])
    out.index = pd.Index(target, name=factor)
    others = [v for v in categorical if v != factor]
    numeric = [v for v in variables if v not in categorical]
    described = ([f"averaged over {v} ({len(levels[v])} levels)" for v in others]
                 + [f"{v} at its mean {frame[v].iloc[0]:.4g}" for v in numeric])
    out.attrs["grid"] = "; ".join(described) or "no other predictors"
    return out
