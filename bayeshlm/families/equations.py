"""The model equations of a non-Gaussian HLM: the level-1 sampling model and the link (R&B 2002, eqs. 10.1-10.3).

The Gaussian renderer writes Y_ij = beta_0j + ... + r_ij with r_ij ~ N(0, sigma^2). For a family, level 1 is
instead Y_ij ~ family(mean_ij) and eta_ij = g(mean_ij) = beta_0j + ...: no level-1 residual, no sigma^2. This
module rewrites the rendered equations accordingly (text and LaTeX); the higher levels are unchanged.
"""

from __future__ import annotations

import dataclasses
import re

from .base import Family

_LATEX_MEAN = {"phi": r"\varphi", "lambda": r"\lambda", "mu": r"\mu"}


def on_link_scale(equations, family: Family, offset: str | None = None):
    """``equations`` (a :class:`bayeshlm.report.equations.Equations`) with level 1 written for ``family``;
    ``offset`` names a known term of eta, e.g. 'log(years)' (an exposure)."""
    return dataclasses.replace(equations, text=_text(equations.text, family, offset),
                               latex=_latex(equations.latex, family, offset))


def _text(text: str, family: Family, offset: str | None) -> str:
    def level1(match):
        outcome, sub, rhs = match.groups()
        rhs += f" + {offset}_{sub}" if offset else ""
        mean = f"{family.mean_symbol}_{sub}"
        link = family.link.equation(mean).replace("eta =", f"eta_{sub} =", 1)
        sampling = family.sampling.format(mean=mean, n=f"n_{sub}")
        return f"Level 1:  {outcome}_{sub} ~ {sampling}\n           {link} = {rhs}"

    text = re.sub(r"^Level 1:  (\S+)_(ij|ijk) = (.*) \+ (?:r_ij|e_ijk)$", level1, text, flags=re.M)
    text = text.replace("r_ij ~ N(0, sigma^2), ", "").replace("e ~ N(0, sigma^2); ", "")
    mean = family.mean_symbol
    return re.sub(r"^Combined:  (\S+) = (.*) \+ r$",
                  lambda m: f"Combined:  {family.link.equation(mean)} = {m.group(2)}"
                            f"{' + ' + offset if offset else ''}  ({m.group(1)} ~ "
                            f"{family.sampling.format(mean=mean, n='n')})", text, flags=re.M)


def _latex(latex: str, family: Family, offset: str | None) -> str:
    symbol = _LATEX_MEAN.get(family.mean_symbol, family.mean_symbol)
    known = rf" + \mathrm{{{offset}}}" if offset else ""

    def level1(match):
        outcome, sub, rhs = match.groups()
        rhs += rf"{known}_{{{sub}}}" if offset else ""
        mean = f"{symbol}_{{{sub}}}"
        sampling = family.sampling.format(mean=mean, n=f"n_{{{sub}}}")
        link = family.link.equation(mean).replace("eta =", "", 1).strip()
        return (rf"$$ \mathrm{{{outcome}}}_{{{sub}}} \sim \mathrm{{{sampling}}} $$" "\n"
                rf"$$ \eta_{{{sub}}} = {link} = {rhs} $$")

    latex = re.sub(r"^\$\$ \\mathrm\{(.+?)\}_\{(ij|ijk)\} = (.*) \+ (?:r_\{ij\}|e_\{ijk\}) \$\$$", level1, latex,
                   flags=re.M)
    latex = latex.replace(r"$ r_{ij} \sim N(0, \sigma^2) $, ", "").replace(r"$ e_{ijk} \sim N(0, \sigma^2) $, ", "")
    return re.sub(r"^\$\$ \\mathrm\{(.+?)\} = (.*) \+ r \$\$$", lambda m: rf"$$ \eta = {m.group(2)}{known} $$", latex,
                  flags=re.M)
