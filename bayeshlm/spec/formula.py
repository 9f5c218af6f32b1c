"""lme4-style formulas: ``y ~ x + (x | g)``, ``(x || g)``, ``(1 | a/b)``, several grouping factors.

formulaic parses every part (fixed effects and the left side of each bar term); this module only finds
the bar terms, which formulaic does not accept, and expands ``||`` and ``/`` the way lme4 does
(Bates et al. 2015, JSS 67(1), section 2.1).
"""

from __future__ import annotations

import functools

import formulaic
from formulaic.errors import FormulaicError

from ..errors import FormulaError
from .model_spec import INTERCEPT, Centering, ModelSpec, RandomTerm, Term


def parse_formula(
    formula: str,
    *,
    known_variance: str | None = None,
    centering: tuple[Centering, ...] = (),
    group_means: tuple[tuple[str, str], ...] = (),
    unsafe_formula: bool = False,
) -> ModelSpec:
    """Parse an lme4-style formula into a :class:`ModelSpec`.

    Every expression is checked against the allow-list of :mod:`bayeshlm.spec.expressions` unless
    ``unsafe_formula=True``.
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise FormulaError(
            f"A model formula looks like 'y ~ x + (x | group)'; got {formula!r}. "
            "Write the outcome, then '~', then the predictors."
        )
    lhs, rhs = formula.split("~", 1)
    outcome = lhs.strip()
    if not outcome:
        raise FormulaError(f"The formula {formula!r} has no outcome on the left of '~'.")
    fixed_text, bar_texts = split_bar_terms(rhs, formula)
    fixed = parse_terms(fixed_text, formula)
    random = tuple(r for text in bar_texts for r in _parse_bar_term(text, formula))
    return ModelSpec(
        outcome=outcome,
        fixed=fixed,
        random=random,
        centering=tuple(centering),
        group_means=tuple(group_means),
        known_variance=known_variance,
        unsafe_formula=unsafe_formula,
    )


def split_bar_terms(rhs: str, formula: str) -> tuple[str, list[str]]:
    """Separate top-level ``( ... | ... )`` chunks from the fixed part of a right-hand side."""
    chunks: list[tuple[str, str]] = []  # (sign, text) at parenthesis depth 0
    depth, start, sign = 0, 0, "+"
    for pos, char in enumerate(rhs):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"Unbalanced parentheses in {formula!r}: a ')' has no matching '('.")
        elif char in "+-" and depth == 0:
            chunks.append((sign, rhs[start:pos]))
            sign, start = char, pos + 1
    if depth != 0:
        raise FormulaError(f"Unbalanced parentheses in {formula!r}: a '(' is never closed.")
    chunks.append((sign, rhs[start:]))

    fixed_parts, bars = [], []
    for sign, text in chunks:
        text = text.strip()
        if not text and sign == "+" and not fixed_parts and not bars:
            continue  # leading "+" or empty right-hand side start
        if "|" in text:
            if not (text.startswith("(") and text.endswith(")")):
                raise FormulaError(
                    f"The random-effects term {text!r} in {formula!r} must be wrapped in parentheses, "
                    f"as in '({text})'."
                )
            if sign == "-":
                raise FormulaError(f"A random-effects term cannot be subtracted: '- {text}' in {formula!r}.")
            bars.append(text[1:-1])
        else:
            if not text:
                raise FormulaError(f"The formula {formula!r} has a dangling '{sign}' with nothing after it.")
            fixed_parts.append(f"{sign} {text}")
    fixed_text = " ".join(fixed_parts).lstrip("+ ").strip()
    return (fixed_text or "1"), bars


@functools.lru_cache(maxsize=512)
def parse_terms(rhs: str, formula: str) -> tuple[Term, ...]:
    """Expand a fixed-effects right-hand side into terms with formulaic (``a*b`` -> a, b, a:b); kept per text,
    as refitting the same formula is common and formulaic's parse is the slow part."""
    if "~" in rhs:
        raise FormulaError(f"{formula!r} has more than one '~'; write one outcome, one '~', then the predictors.")
    try:
        parsed = formulaic.Formula(rhs)
    except (FormulaicError, SyntaxError, ValueError) as err:  # formulaic passes on ast's SyntaxError
        raise FormulaError(f"Cannot parse {rhs!r} in the formula {formula!r}: {_first_line(err)}") from None
    terms: list[Term] = []
    for term in parsed:
        names = tuple(str(f) for f in term.factors if str(f) != "1")
        for factor in term.factors:
            _check_round_trip(factor, formula)
        terms.append(INTERCEPT if not names else names)
    return tuple(terms)


def _check_round_trip(factor, formula: str) -> None:
    """A spec keeps each factor as text, which the design parses again: it must mean the same factor.

    A Python block ``{x * 2}`` becomes the text 'x * 2', which would parse as x + 2 + x:2.
    """
    if str(factor) == "1":
        return
    try:
        again = [term for term in formulaic.Formula(str(factor)) if str(term) != "1"]
    except (FormulaicError, SyntaxError, ValueError):
        again = []
    if len(again) == 1 and [(f.expr, f.eval_method) for f in again[0].factors] == [(factor.expr, factor.eval_method)]:
        return
    if factor.eval_method == factor.EvalMethod.LOOKUP:
        raise FormulaError(f"The quoted column name {factor.expr!r} in {formula!r} cannot be used: rename the column "
                           "to a plain name (letters, digits, '_' and '.').")
    raise FormulaError(f"The term {str(factor)!r} in {formula!r} cannot be used as written: a '{{...}}' block "
                       f"would change meaning when the term is read again. Write I({factor.expr}) instead.")


def _parse_bar_term(text: str, formula: str) -> list[RandomTerm]:
    correlated = "||" not in text
    lhs, _, group_text = text.partition("||" if not correlated else "|")
    if "|" in group_text:
        raise FormulaError(f"Only one '|' or '||' is allowed inside ({text}) in {formula!r}.")
    group_text = group_text.strip()
    if not lhs.strip() or not group_text:
        raise FormulaError(
            f"The random-effects term ({text}) in {formula!r} needs terms on the left of '|' and a grouping "
            "factor on the right, as in '(1 + x | school)'."
        )
    terms = parse_terms(lhs, formula)
    if not terms:
        raise FormulaError(f"The random-effects term ({text}) in {formula!r} has no terms left of the bar.")
    out = []
    for group, columns in expand_groups(group_text, formula):
        if correlated or len(terms) == 1:
            out.append(RandomTerm(group, columns, terms, True))
        else:  # lme4's ||: one independent block per term
            out.extend(RandomTerm(group, columns, (t,), True) for t in terms)
    return out


def expand_groups(text: str, formula: str) -> list[tuple[str, tuple[str, ...]]]:
    """``a/b`` -> [('b:a', (a, b)), ('a', (a,))] as lme4 names them; ``a:b`` -> [('a:b', (a, b))]."""
    if "/" in text:
        parts = [p.strip() for p in text.split("/")]
        if not all(_is_name(p) for p in parts):
            raise FormulaError(f"Cannot read the nested grouping factor {text!r} in {formula!r}; "
                               "write it as 'a/b' with column names.")
        out = []
        for depth in range(len(parts), 0, -1):
            columns = tuple(parts[:depth])
            out.append((":".join(reversed(columns)), columns))
        return out
    parts = [p.strip() for p in text.split(":")]
    if not all(_is_name(p) for p in parts):
        raise FormulaError(
            f"The grouping factor {text!r} in {formula!r} must be a column name (or 'a/b', 'a:b')."
        )
    return [(":".join(parts), tuple(parts))]


def _is_name(text: str) -> bool:
    return text.replace(".", "_").isidentifier()


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0]
