"""HLM-style printed report of any fit (likelihood or Bayes); fits side by side are
:func:`bayeshlm.results.comparison.compare`.

The sections follow HLM's output and the book's tables: model equations, data, fixed effects,
variance components, reliabilities, chi-square tests, plausible-value ranges, ICC, fit statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..errors import InputError, OptionError
from .equations import render_equations
from .formatting import decimals, method_name, number


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


def build_report(fit, style: str = "tables") -> Report:
    """Assemble the report of ``fit`` (any object with the methods of :class:`bayeshlm.results.FitResult`): the
    sections of the module docstring (``style="tables"``), or a few paragraphs in plain words (``style="plain"``,
    :func:`bayeshlm.report.plain.plain_summary`)."""
    if style == "plain":
        from .plain import plain_summary

        return Report((("In plain words", plain_summary(fit)),))
    if style != "tables":
        raise OptionError(f"style={style!r}: use 'tables' (the HLM-style report) or 'plain' (a paragraph in words).")
    design = fit.design
    sections: list[tuple[str, str | pd.DataFrame]] = [
        (f"Model ({method_name(fit.method)})", render_equations(design).text),
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
            try:
                sections.append((f"Intraclass correlation ({name})", f"{fit.icc(name):.3f}"))
            except InputError as err:
                sections.append((f"Intraclass correlation ({name})", f"not available: {err}"))
        elif fit.sigma2 is not None:
            sections.append((f"Intraclass correlation ({name})",
                             "not one number: with random slopes the level-2 variance depends on the predictors"))
    sections += fit.report_sections()
    messages = list(getattr(fit, "messages", []) or [])
    if messages:
        sections.append(("Warnings", "\n".join(f"* {m}" for m in messages)))
    return Report(tuple(sections))


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    """A table as text, rounded by what each column holds: R-hat to 3 decimals, effective sample sizes and counts
    as whole numbers, p-values to 3 decimals (``<0.001`` below), everything else by
    :func:`~bayeshlm.report.formatting.number`."""
    out = pd.DataFrame(index=table.index, columns=table.columns, dtype=object)
    for column in table.columns:
        name = str(column[-1] if isinstance(column, tuple) else column).lower()
        values = table[column]
        if name == "r_hat":
            out[column] = [decimals(v, 3) for v in values]
        elif name.startswith("ess") or pd.api.types.is_integer_dtype(values):
            out[column] = [decimals(v, 0) if isinstance(v, float) else str(v) for v in values]
        elif name in ("p", "p_value", "p-value") and pd.api.types.is_float_dtype(values):
            out[column] = ["<0.001" if v < 0.001 else decimals(v, 3) for v in values]
        else:
            out[column] = [number(v) if isinstance(v, float) else str(v) for v in values]
    return out


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
