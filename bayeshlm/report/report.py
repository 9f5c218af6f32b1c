"""HLM-style printed report of any fit (likelihood or Bayes), and side-by-side comparison of fits.

The sections follow HLM's output and the book's tables: model equations, data, fixed effects,
variance components, reliabilities, chi-square tests, plausible-value ranges, ICC, fit statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError, OptionError
from ..results import FitResult
from .equations import render_equations


@dataclass(frozen=True)
class Report:
    """A report as plain text (terminal) and Markdown (notebooks)."""

    sections: tuple[tuple[str, str | pd.DataFrame], ...]

    def __str__(self) -> str:
        parts = []
        for title, body in self.sections:
            text = _rounded(body).to_string(justify="right") if isinstance(body, pd.DataFrame) else body
            parts.append(f"{title}\n{'-' * len(title)}\n{text}")
        return "\n\n".join(parts)

    def _repr_markdown_(self) -> str:
        parts = []
        for title, body in self.sections:
            if isinstance(body, pd.DataFrame):
                table = _rounded(body)
                text = table.to_markdown(disable_numparse=True) if _has_tabulate() else f"```\n{table.to_string()}\n```"
            else:
                text = body
            parts.append(f"### {title}\n\n{text}")
        return "\n\n".join(parts)


def build_report(fit: FitResult, style: str = "tables") -> Report:
    """Assemble the report of ``fit``: the sections of the module docstring (``style="tables"``), or a few
    paragraphs in plain words (``style="plain"``, :func:`bayeshlm.report.plain.plain_summary`)."""
    if style == "plain":
        from .plain import plain_summary

        return Report((("In plain words", plain_summary(fit)),))
    if style != "tables":
        raise OptionError(f"style={style!r}: use 'tables' (the HLM-style report) or 'plain' (a paragraph in words).")
    design = fit.design
    sections: list[tuple[str, str | pd.DataFrame]] = [
        (f"Model ({_method_name(fit.method)})", render_equations(design).text),
        ("Data", design.summary().split("\n", 1)[1]),
        ("Fixed effects", fit.fixed_effects),
        ("Variance components", fit.variance_components),
    ]
    per_group = design.chain[:1] if design.chain else []
    for factor in per_group:
        name = factor.name
        for title, compute in (
            (f"Reliability of OLS coefficients ({name}, average over groups)",
             fit.reliability_summary),
            (f"Chi-square tests of variance components ({name})", fit.chi_square),
            (f"Plausible-value ranges, 95% ({name})", fit.plausible_values),
        ):
            try:
                sections.append((title, compute(name)))
            except InputError as err:
                sections.append((title, f"not available: {err}"))
        if fit.tau[name].shape == (1, 1) and fit.sigma2 is not None:
            sections.append((f"Intraclass correlation ({name})", f"{fit.icc(name):.3f}"))
        elif fit.sigma2 is not None:
            sections.append((f"Intraclass correlation ({name})",
                             "not one number: with random slopes the level-2 variance depends on the predictors"))
    if fit.method == "bayes":
        sections += [("Sampling", _sampling(fit)), ("Priors", _priors(fit))]
    sections.append(("Diagnostics" if fit.method == "bayes" else "Fit", _fit_statistics(fit)))
    messages = list(getattr(fit, "messages", []) or [])
    if messages:
        sections.append(("Warnings", "\n".join(f"* {m}" for m in messages)))
    return Report(tuple(sections))


def compare(*fits: FitResult, names: list[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Estimates, SEs (posterior SDs) and intervals of several fits of one model, side by side.

    The layout of R&B (2002) Table 13.4: one row per parameter, one column group per fit. ``diff/se``
    columns give each fit's difference from the first fit in units of the first fit's SE (or posterior
    SD), so large disagreements stand out.
    """
    if len(fits) < 2:
        raise OptionError("compare() needs at least two fits.")
    first = fits[0]
    for other in fits[1:]:
        if other.design.spec != first.design.spec or other.design.n_obs != first.design.n_obs:
            raise OptionError("compare() sets fits of the same model on the same data side by side; "
                              f"got {first.design.spec.formula()!r} and {other.design.spec.formula()!r}.")
    names = names or [_method_name(f.method) for f in fits]
    if len(set(names)) != len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    z = _normal_quantile(level)
    columns = {}
    for name, fit in zip(names, fits):
        table = _parameters(fit, level)
        columns[(name, "estimate")] = table["estimate"]
        columns[(name, "se")] = table["se"]
        normal_lower, normal_upper = table["estimate"] - z * table["se"], table["estimate"] + z * table["se"]
        lower = table["lower"].fillna(normal_lower) if "lower" in table else normal_lower
        upper = table["upper"].fillna(normal_upper) if "upper" in table else normal_upper
        columns[(name, "lower")], columns[(name, "upper")] = lower, upper
    out = pd.DataFrame(columns)
    base, base_se = out[(names[0], "estimate")], out[(names[0], "se")]
    for name in names[1:]:
        out[(name, "diff/se")] = (out[(name, "estimate")] - base) / base_se
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["fit", "statistic"])
    return out


def _parameters(fit: FitResult, level: float = 0.95) -> pd.DataFrame:
    """Fixed effects then variance components, with estimate / se (and interval where the fit has one: the
    posterior's equal-tailed interval, or for likelihood fits the t(df) interval of their t tests)."""
    fixed = fit.fixed_effects
    rows = pd.DataFrame({"estimate": fixed["estimate"], "se": fixed["se"]})
    if {"eti_lower", "eti_upper"} <= set(fixed.columns):  # Bayesian fits: equal-tailed posterior intervals
        rows["lower"], rows["upper"] = fixed["eti_lower"], fixed["eti_upper"]
    elif "df" in fixed.columns:
        from scipy import stats

        half = stats.t.ppf(0.5 + level / 2, fixed["df"].to_numpy(dtype=float)) * fixed["se"]
        rows["lower"], rows["upper"] = fixed["estimate"] - half, fixed["estimate"] + half
    rows.index = [f"fixed: {n}" for n in rows.index]
    variances = _variance_rows(fit)
    return pd.concat([rows, variances])


def _variance_rows(fit: FitResult) -> pd.DataFrame:
    """Each factor's T entries and sigma^2: point estimates, with the posterior SD and 95% equal-tailed interval
    from the draws (Bayes) or the observed-information SE and Wald interval, clipped to the parameter's range
    (likelihood fits; NaN where :meth:`variance_intervals` is not defined, e.g. under level-1 error structures)."""
    records: dict[str, np.ndarray | float] = {}
    bayes = fit.method == "bayes"
    for factor, tau in fit.tau.items():
        draws = fit.draws(f"T_{factor}").values if bayes else None
        for i, a in enumerate(tau.index):
            for b in range(i + 1):
                label = f"{factor}: var({a})" if i == b else f"{factor}: cov({tau.index[b]}, {a})"
                records[label] = draws[..., i, b].ravel() if bayes else tau.iloc[i, b]
    if fit.sigma2 is not None:
        records["sigma^2"] = (fit.draws("sigma").values ** 2).ravel() if bayes else fit.sigma2
    if not bayes:
        return pd.DataFrame({"estimate": pd.Series(records, dtype=float)}).join(_wald_variance_rows(fit))
    return pd.DataFrame({label: {"estimate": d.mean(), "se": d.std(ddof=1), "lower": np.quantile(d, 0.025),
                                 "upper": np.quantile(d, 0.975)} for label, d in records.items()}).T


def _wald_variance_rows(fit: FitResult) -> pd.DataFrame:
    """se / lower / upper of the variance-scale rows of ``fit.variance_intervals()``, labelled as in
    :func:`_variance_rows`."""
    columns = ["se", "lower", "upper"]
    try:
        table = fit.variance_intervals()
    except InputError:  # not defined for this model: say nothing rather than a wrong number
        return pd.DataFrame(columns=columns, dtype=float)
    table = table[table["parameter"].isin(["variance", "covariance", "sigma2"])]
    labels = [("sigma^2" if r.parameter == "sigma2" else
               f"{r.factor}: var({r.term})" if r.parameter == "variance" else f"{r.factor}: cov({r.term}, {r.term2})")
              for r in table.itertuples()]
    return pd.DataFrame(table[columns].to_numpy(dtype=float), index=labels, columns=columns)


def _sampling(fit: FitResult) -> str:
    """How the posterior was drawn: sampler, chains x draws after tuning, seed, target acceptance, route."""
    s = getattr(fit, "sampler", {}) or {}
    if not s:
        return "not recorded"
    kernel = f" ({s['log_density']})" if s.get("log_density") else ""
    lines = [f"sampler: {s.get('sampler', '?')} NUTS{kernel}",
             f"chains: {s.get('chains')}; draws per chain: {s.get('draws')} after {s.get('tune')} tuning draws",
             f"seed: {s.get('seed')}; target acceptance: {s.get('target_accept')}"]
    if s.get("parameterization"):
        routes = ", ".join(f"{k}: {v}" for k, v in s["parameterization"].items())
        lines.append(f"random effects: {routes} (route: {s.get('route', '?')})")
    timing = [f"{label} {_sig(s[key])} s" for label, key in (("compile", "compile_seconds"),
                                                              ("sampling", "sampling_seconds")) if key in s]
    if timing:
        lines.append("time: " + ", ".join(timing))
    return "\n".join(lines)


def _priors(fit: FitResult) -> str:
    priors = getattr(fit, "priors", {}) or {}
    return "\n".join(f"{name}: {prior}" for name, prior in priors.items()) or "not recorded"


def _fit_statistics(fit: FitResult) -> str:
    if fit.method == "bayes":
        d = getattr(fit, "diagnostics", {}) or {}
        if not d:
            return "no diagnostics recorded"
        rate = d.get("divergence_rate", float("nan"))
        return "\n".join([
            f"divergences: {d.get('divergences')} of {d.get('draws')} draws ({_sig(100 * rate)}%)",
            f"max R-hat: {_fixed(d.get('max_rhat'), 3)} (want < 1.01; needs 2 or more chains)",
            f"min ESS: bulk {_fixed(d.get('min_ess_bulk'), 0)}, tail {_fixed(d.get('min_ess_tail'), 0)} "
            "(want >= 100 per chain)",
            f"min energy BFMI: {_fixed(d.get('min_bfmi'), 2)} (want > 0.3)"])
    parts = []
    for label, attribute in (("deviance", "deviance"), ("parameters", "n_params"), ("AIC", "aic"), ("BIC", "bic")):
        value = getattr(fit, attribute, None)
        if value is not None:
            parts.append(f"{label}: {_fmt(value)}")
    return "   ".join(parts)


def _method_name(method: str) -> str:
    return {"reml": "REML", "ml": "ML", "bayes": "Bayes"}.get(method, method)


def _normal_quantile(level: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(0.5 + level / 2))


def _fmt(value) -> str:
    """Four decimals, or four significant digits for values too large or too small for them (sigma^2 = 4.5e-15
    must not print as 0.0000)."""
    if not isinstance(value, float):
        return f"{value}"
    if np.isnan(value):
        return "NaN"
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.4g}"


def _sig(value, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits (no exponent below 1e6)."""
    return "NaN" if value is None or np.isnan(value) else f"{float(value):.{digits}g}"


def _fixed(value, decimals: int) -> str:
    return "not defined" if value is None or np.isnan(value) else f"{float(value):.{decimals}f}"


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    """A table as text, rounded by what each column holds: R-hat to 3 decimals, effective sample sizes and counts
    as whole numbers, p-values to 3 decimals (``<0.001`` below), everything else by :func:`_fmt`."""
    out = pd.DataFrame(index=table.index, columns=table.columns, dtype=object)
    for column in table.columns:
        name = str(column[-1] if isinstance(column, tuple) else column).lower()
        values = table[column]
        if name == "r_hat":
            out[column] = [_fixed(v, 3) for v in values]
        elif name.startswith("ess") or pd.api.types.is_integer_dtype(values):
            out[column] = [_fixed(v, 0) if isinstance(v, float) else str(v) for v in values]
        elif name in ("p", "p_value", "p-value") and pd.api.types.is_float_dtype(values):
            out[column] = ["<0.001" if v < 0.001 else _fixed(v, 3) for v in values]
        else:
            out[column] = [_fmt(v) if isinstance(v, float) else str(v) for v in values]
    return out


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
