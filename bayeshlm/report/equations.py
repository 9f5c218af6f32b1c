"""Render a Design as Raudenbush & Bryk level equations and as the combined (mixed) model.

Two levels use the book's chapter 2-5 symbols (Y_ij, beta_qj, gamma_qs, u_qj, r_ij, T, sigma^2); three
levels use the chapter 8 symbols (pi_pjk, beta_pqk, gamma_pqs, e_ijk, r_pjk, u_pqk). The level of each
predictor is read off the data (``design.term_levels``): a variable constant within schools is a school
(level-2) predictor, as in the book. Cross-classified models are shown in combined form only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..design import Design

_LATEX_GREEK = {"beta": r"\beta", "gamma": r"\gamma", "pi": r"\pi", "sigma": r"\sigma", "tau": r"\tau"}


@dataclass(frozen=True)
class Equations:
    """Model equations as LaTeX (``latex``, shown rendered in notebooks), ASCII text (``text``) and Unicode text
    with the book's Greek letters (``unicode``: what ``print`` and a terminal show)."""

    latex: str
    text: str

    @property
    def unicode(self) -> str:
        return _unicode(self.text)

    def _repr_markdown_(self) -> str:
        return self.latex

    def __str__(self) -> str:
        return self.unicode

    def __repr__(self) -> str:
        return self.unicode


@dataclass(frozen=True)
class _Coef:
    """A coefficient at one level: its name, the predictors of its next-level equation, and randomness."""

    name: str  # predictor it multiplies ("1" for the intercept)
    predictors: tuple[str, ...]  # next-level predictors ("1" = intercept term), in design order
    random: bool


def render_equations(design: Design, form: str = "both") -> Equations:
    """Render ``design`` in level notation (``form='levels'``), combined form (``'mixed'``) or ``'both'``."""
    from ..errors import OptionError

    if form not in ("levels", "mixed", "both"):
        raise OptionError(f"form={form!r}: use 'levels', 'mixed' or 'both'.")
    chain = design.chain
    sections_latex, sections_text = [], []
    if form in ("levels", "both"):
        if chain and len(chain) <= 2:
            latex, text = (_two_level if len(chain) == 1 else _three_level)(design)
        else:
            latex = text = "(Cross-classified factors: the model is shown in combined form.)"
        sections_latex.append(latex)
        sections_text.append(text)
    if form in ("mixed", "both"):
        latex, text = _mixed(design)
        sections_latex.append(latex)
        sections_text.append(text)
    return Equations("\n\n".join(sections_latex), "\n\n".join(sections_text))


# --- splitting columns into level parts ---------------------------------------------------------

def _split(design: Design, column: str, term: tuple[str, ...], depth: int) -> tuple[str, ...]:
    """Split a column name into its parts at levels 1..depth ('1' where a level contributes nothing)."""
    if column == "(Intercept)":
        return ("1",) * depth
    pieces = column.split(":")
    if len(pieces) != len(term):  # a name formulaic built differently: treat it as one level-1 predictor
        return (column,) + ("1",) * (depth - 1)
    parts: list[list[str]] = [[] for _ in range(depth)]
    for piece, factor in zip(pieces, term):
        level = min(design.term_levels.get(factor, 1), depth)
        parts[level - 1].append(piece)
    return tuple(":".join(p) if p else "1" for p in parts)


def _ordered(names) -> list[str]:
    """Unique names, intercept ('1') first, otherwise in order of appearance."""
    unique = list(dict.fromkeys(names))
    return (["1"] if "1" in unique else []) + [n for n in unique if n != "1"]


# --- two levels ----------------------------------------------------------------------------------

def _two_level(design: Design) -> tuple[str, str]:
    factor = design.factors[0]
    split = [_split(design, c, t, 2) for c, t in zip(design.fixed_names, design.fixed_terms)]
    random = [_split(design, c, c.split(":"), 1)[0] if c != "(Intercept)" else "1" for c in factor.coef_names]
    coefs = [
        _Coef(q, tuple(_ordered(w for l1, w in split if l1 == q)), q in random)
        for q in _ordered([s[0] for s in split] + random)
    ]
    y, known = design.outcome_name, design.known_variance is not None
    # Level 1
    l1_latex = [rf"\beta_{{{q}j}}" + ("" if c.name == "1" else rf"\,({_tex(c.name)})_{{ij}}")
                for q, c in enumerate(coefs)]
    l1_text = [f"b{q}_j" + ("" if c.name == "1" else f"*({c.name})_ij") for q, c in enumerate(coefs)]
    # V-known models have one observation per group: d_j = delta_j + e_j (R&B 2002, eq. 7.1)
    sub, resid = ("j", ("e_j", "e_{j}")) if known else ("ij", ("r_ij", "r_{ij}"))
    latex = [r"**Level 1**", "", rf"$$ {_tex(y)}_{{{sub}}} = " + " + ".join(l1_latex).replace("_{ij}", f"_{{{sub}}}")
             + rf" + {resid[1]} $$", "", r"**Level 2**", ""]
    text = [f"Level 1:  {y}_{sub} = " + " + ".join(l1_text).replace(")_ij", f")_{sub}") + f" + {resid[0]}",
            "Level 2:"]
    for q, c in enumerate(coefs):
        rhs_latex = [rf"\gamma_{{{q}{s}}}" + ("" if w == "1" else rf"\,({_tex(w)})_j") for s, w in _indexed(c)]
        rhs_text = [f"g{q}{s}" + ("" if w == "1" else f"*({w})_j") for s, w in _indexed(c)]
        if c.random:
            rhs_latex.append(rf"u_{{{q}j}}")
            rhs_text.append(f"u{q}_j")
        latex += [rf"$$ \beta_{{{q}j}} = " + (" + ".join(rhs_latex) or "0") + " $$"]
        text += [f"  b{q}_j = " + (" + ".join(rhs_text) or "0")]
    n_random = sum(c.random for c in coefs)
    errors = design.error_structure
    variance_text, variance_latex = ("V_j known", r"V_j \text{ known}") if known else errors.variance.variance_text(sub)
    latex += ["", rf"$ {resid[1]} \sim N(0, {variance_latex}) $" +
              (rf", $ u_j \sim N(0, T) $ with $T$ {n_random}x{n_random}" if n_random else "") +
              f" over {factor.n_groups} groups of `{factor.name}`."]
    text += [f"  {resid[0]} ~ N(0, {variance_text})" +
             (f", u_j ~ N(0, T), T {n_random}x{n_random}" if n_random else "") +
             f"; j = 1..{factor.n_groups} ({factor.name})"]
    for line_text, line_latex in errors.equation_lines("r", sub):
        latex += ["", line_latex]
        text += ["  " + line_text]
    return "\n".join(latex), "\n".join(text)


def _indexed(coef: _Coef):
    """(s, predictor) pairs: s = 0 for the intercept, then 1, 2, ... as the book numbers gamma_qs."""
    start = 0 if coef.predictors and coef.predictors[0] == "1" else 1
    return list(enumerate(coef.predictors, start=start))


# --- three levels --------------------------------------------------------------------------------

def _three_level(design: Design) -> tuple[str, str]:
    inner, outer = design.chain
    split = [_split(design, c, t, 3) for c, t in zip(design.fixed_names, design.fixed_terms)]
    random2 = {_split(design, c, c.split(":"), 1)[0] if c != "(Intercept)" else "1" for c in inner.coef_names}
    random3 = {_split(design, c, c.split(":"), 2) if c != "(Intercept)" else ("1", "1") for c in outer.coef_names}
    y = design.outcome_name
    pis = _ordered([s[0] for s in split] + sorted(random2))
    latex = ["**Level 1**", "", rf"$$ {_tex(y)}_{{ijk}} = " + " + ".join(
        rf"\pi_{{{p}jk}}" + ("" if a == "1" else rf"\,({_tex(a)})_{{ijk}}") for p, a in enumerate(pis)) +
        r" + e_{ijk} $$", "", "**Level 2**", ""]
    text = [f"Level 1:  {y}_ijk = " + " + ".join(
        f"p{p}_jk" + ("" if a == "1" else f"*({a})_ijk") for p, a in enumerate(pis)) + " + e_ijk", "Level 2:"]
    level3_latex, level3_text = ["", "**Level 3**", ""], ["Level 3:"]
    for p, a in enumerate(pis):
        xs = _ordered([s[1] for s in split if s[0] == a] + [q for (l1, q) in random3 if l1 == a])
        rhs_latex = [rf"\beta_{{{p}{q}k}}" + ("" if x == "1" else rf"\,({_tex(x)})_{{jk}}") for q, x in enumerate(xs)]
        rhs_text = [f"b{p}{q}_k" + ("" if x == "1" else f"*({x})_jk") for q, x in enumerate(xs)]
        if a in random2:
            rhs_latex.append(rf"r_{{{p}jk}}")
            rhs_text.append(f"r{p}_jk")
        latex.append(rf"$$ \pi_{{{p}jk}} = " + (" + ".join(rhs_latex) or "0") + " $$")
        text.append(f"  p{p}_jk = " + (" + ".join(rhs_text) or "0"))
        for q, x in enumerate(xs):
            ws = _ordered([s[2] for s in split if s[0] == a and s[1] == x])
            start = 0 if ws and ws[0] == "1" else 1
            rhs_latex = [rf"\gamma_{{{p}{q}{s}}}" + ("" if w == "1" else rf"\,({_tex(w)})_k")
                         for s, w in enumerate(ws, start=start)]
            rhs_text = [f"g{p}{q}{s}" + ("" if w == "1" else f"*({w})_k") for s, w in enumerate(ws, start=start)]
            if (a, x) in random3:
                rhs_latex.append(rf"u_{{{p}{q}k}}")
                rhs_text.append(f"u{p}{q}_k")
            level3_latex.append(rf"$$ \beta_{{{p}{q}k}} = " + (" + ".join(rhs_latex) or "0") + " $$")
            level3_text.append(f"  b{p}{q}_k = " + (" + ".join(rhs_text) or "0"))
    errors = design.error_structure
    variance_text, variance_latex = errors.variance.variance_text("ijk")
    summary = (f"e ~ N(0, {variance_text}); r_jk ~ N(0, T_pi) over {inner.n_groups} {inner.name}; "
               f"u_k ~ N(0, T_beta) over {outer.n_groups} {outer.name}")
    latex += level3_latex + ["", rf"$ e_{{ijk}} \sim N(0, {variance_latex}) $, $ r_{{jk}} \sim N(0, T_\pi) $ over "
                             f"{inner.n_groups} `{inner.name}`, $ u_k \\sim N(0, T_\\beta) $ over "
                             f"{outer.n_groups} `{outer.name}`."]
    lines = errors.equation_lines("e", "ijk")
    latex += [part for _, line_latex in lines for part in ("", line_latex)]
    return "\n".join(latex), "\n".join(text + level3_text + ["  " + summary] + ["  " + t for t, _ in lines])


# --- combined form -------------------------------------------------------------------------------

def _mixed(design: Design) -> tuple[str, str]:
    y = design.outcome_name
    fixed_latex = [rf"\gamma_{{{i}}}" + ("" if c == "(Intercept)" else rf"\,{_tex(c)}")
                   for i, c in enumerate(design.fixed_names)]
    fixed_text = [f"g{i}" + ("" if c == "(Intercept)" else f"*{c}") for i, c in enumerate(design.fixed_names)]
    random_latex, random_text = [], []
    for f in design.factors:
        for q, c in enumerate(f.coef_names):
            random_latex.append(rf"u^{{({_tex(f.name)})}}_{{{q}}}" + ("" if c == "(Intercept)" else rf"\,{_tex(c)}"))
            random_text.append(f"u[{f.name}]{q}" + ("" if c == "(Intercept)" else f"*{c}"))
    error = "e" if design.known_variance is not None else "r"
    latex = ("**Combined (mixed) model**\n\n" + rf"$$ {_tex(y)} = " + " + ".join(fixed_latex) +
             (" + " + " + ".join(random_latex) if random_latex else "") + rf" + {error} $$")
    text = (f"Combined:  {y} = " + " + ".join(fixed_text) +
            (" + " + " + ".join(random_text) if random_text else "") + f" + {error}")
    return latex, text


# --- Unicode text --------------------------------------------------------------------------------

# A symbol of the ASCII text stands where a term starts: after '= ', '+ ', or at the start of a level line; variable
# names never do (they follow '*', sit in parentheses or before ' = '), so a column called 'b0_j' is left alone.
_SYMBOL = re.compile(r"(?:(?<== )|(?<=\+ )|(?<=^  ))(?P<letter>b|g|p|u|r)(?P<index>\d+)(?P<sub>_[a-z]+)?(?P<times>\*)?",
                     re.MULTILINE)
_GREEK = {"b": "β", "g": "γ", "p": "π", "u": "u", "r": "r"}


def _unicode(text: str) -> str:
    """The ASCII rendering with Greek symbols: 'b1_j*(cses)_ij' -> 'β1j (cses)_ij', 'g01*(meanses)_j' ->
    'γ01 (meanses)_j', 'sigma^2' -> 'σ²'."""
    def symbol(match: re.Match) -> str:
        sub = (match["sub"] or "").removeprefix("_")
        return f"{_GREEK[match['letter']]}{match['index']}{sub}" + (" " if match["times"] else "")

    text = re.sub(r"(?<= )(u\[[^\]\n]*\]\d+)\*", r"\1 ", _SYMBOL.sub(symbol, text))  # u[school]1*cses
    return (text.replace("N(0, sigma^2)", "N(0, σ²)").replace("T_pi", "T_π").replace("T_beta", "T_β"))


def _tex(name: str) -> str:
    r"""A variable name as upright LaTeX text (\mathrm{meanses}), escaping underscores."""
    escaped = name.replace("\\", "").replace("_", r"\_").replace("%", r"\%").replace("$", r"\$")
    return rf"\mathrm{{{escaped}}}"
