"""A report in plain words: what the intraclass correlation, the variances of random slopes and the reliabilities
mean for this data (R&B 2002, eq. 2.10 for the ICC, eq. 4.4 for the range of slopes, eq. 3.59 for the average
reliability), written for readers who want the words behind the equations (Robson & Pevalin 2016, ch. 1).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def plain_summary(fit) -> str:
    """A few paragraphs describing ``fit`` (any object with the methods of :class:`bayeshlm.results.FitResult`)
    in words, with its numbers rounded to 2-3 significant digits."""
    design = fit.design
    factor = design.chain[0] if design.chain else design.factors[0]
    name, y = factor.name, design.outcome_name
    sizes = factor.group_sizes
    paragraphs = [f"The model describes {y} in {design.n_obs} rows grouped into {factor.n_groups} groups of {name} "
                  f"({sizes.min()} to {sizes.max()} rows per group). " + fit.describe_estimates()]
    paragraphs += [p for p in (_icc(fit, name, y), _slopes(fit, name), _reliability(fit, name)) if p]
    messages = list(getattr(fit, "messages", []) or [])
    if messages:
        paragraphs.append(f"Caution: {len(messages)} warning{'s' if len(messages) > 1 else ''} about this fit "
                          "(see the full report, fit.report()) should be read before these numbers are used.")
    return "\n\n".join(paragraphs)


def _icc(fit, name: str, y: str) -> str | None:
    """The ICC in words, for a random-intercept model with one grouping factor and a level-1 variance."""
    if fit.sigma2 is None or len(fit.tau) != 1 or fit.tau[name].shape != (1, 1):
        return None
    icc = fit.icc(name)
    given = " left after the predictors" if len(fit.design.fixed_names) > 1 else ""
    strength = "little" if icc < 0.05 else ("a moderate share" if icc < 0.25 else "a large share")
    return (f"The intraclass correlation is {icc:.2f}: of the variation in {y}{given}, {100 * icc:.0f}% lies "
            f"between groups of {name} and {100 * (1 - icc):.0f}% within them ({strength} of it is between groups). "
            f"Two rows from the same {name} are correlated {icc:.2f}; with such clustering, an analysis that "
            "ignored the groups would overstate how much information the rows carry.")


def _slopes(fit, name: str) -> str | None:
    """Each random slope's spread across groups: its SD and the range holding 95% of the groups' slopes."""
    tau = fit.tau[name]
    slopes = [c for c in tau.index if c != "(Intercept)"]
    if not slopes:
        return None
    ranges = fit.plausible_values(name)
    parts = []
    for coefficient in slopes:
        sd = float(np.sqrt(tau.loc[coefficient, coefficient]))
        pv = ranges.loc[coefficient]
        parts.append(f"The effect of {coefficient} differs between groups of {name}: its standard deviation "
                     f"across groups is {_sig(sd)} (variance {_sig(sd ** 2)}), so about 95% of the groups have a slope "
                     f"between {_sig(pv['lower'])} and {_sig(pv['upper'])}, around an average of {_sig(pv['center'])}"
                     + (" (for groups whose level-2 predictors are all 0)." if _has_level2(fit, name) else ".")
                     + (" The slope has the same sign in nearly every group." if pv["lower"] * pv["upper"] > 0 else
                        " In some groups the slope has the opposite sign."))
    return " ".join(parts)


def _reliability(fit, name: str) -> str | None:
    """The average reliability of each coefficient's per-group OLS estimate, in words."""
    try:
        reliability = fit.reliability_summary(name)["reliability"]
    except InputError:  # an outer factor or crossed factors: no per-group OLS (the full report says why)
        return None
    parts = []
    for coefficient, value in reliability.items():
        what = "mean" if coefficient == "(Intercept)" else f"slope of {coefficient}"
        if value >= 0.7:
            meaning = ("most of the differences between the groups' own estimates are real differences, not "
                       "sampling noise, so the groups can be told apart")
        elif value >= 0.4:
            meaning = ("the groups' own estimates mix real differences with a good deal of sampling noise, so each "
                       "group's estimate is pulled part of the way toward its predicted value")
        else:
            meaning = ("most of the differences between the groups' own estimates are sampling noise, so each "
                       "group's estimate is pulled most of the way toward its predicted value and the variance "
                       "of this coefficient rests on little information")
        parts.append(f"The reliability of each group's own {what} averages {value:.2f}: {meaning}.")
    return " ".join(parts)


def _has_level2(fit, name: str) -> bool:
    """Whether the groups' predicted coefficients gamma_q'W_j differ, i.e. the model has level-2 predictors."""
    predicted = fit.predicted_group_coefficients(name)["center"].unstack().to_numpy()
    return bool(np.ptp(predicted, axis=0).max() > 1e-9 * (1 + np.abs(predicted).max()))


def _sig(value: float) -> str:
    return f"{float(value):.3g}"
