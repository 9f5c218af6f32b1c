"""Raudenbush & Bryk level-by-level equations, translated to the combined form.

Two levels (R&B 2002, eq. 2.22-2.25)::

    level 1:  Y_ij  = sum_q beta_qj X_qij + r_ij
    level 2:  beta_qj = sum_s gamma_qs W_sj + u_qj          (u_qj only for random coefficients)

Substituting level 2 into level 1 gives one fixed term ``W_s:X_q`` per pair (q, s) and one random term
``X_q`` per random coefficient. Three levels (eq. 8.9-8.11) substitute twice: ``W_s:X_q:a_p`` fixed, ``a_p``
random over level-2 units (r_pjk) and ``X_q:a_p`` random over level-3 units (u_pqk).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import FormulaError, closest_names
from .formula import parse_terms
from .model_spec import INTERCEPT, Centering, ModelSpec, RandomTerm, Term

_INTERCEPT_ALIASES = {"intercept", "(Intercept)", "1", "Intercept"}


def coefficient_name(term: Term) -> str:
    """Name of the level-1 coefficient multiplying ``term``: 'intercept' or the term's formula name."""
    return "intercept" if term == INTERCEPT else ":".join(term)


def parse_levels(
    level1: str,
    level2: Mapping[str, str] | None,
    groups: str | Sequence[str],
    *,
    level3: Mapping[str | tuple[str, str], str] | None = None,
    random: Sequence[str] | Mapping[str, Sequence] | None = None,
    correlated: bool = True,
    known_variance: str | None = None,
    centering: tuple[Centering, ...] = (),
    group_means: tuple[tuple[str, str], ...] = (),
    unsafe_formula: bool = False,
) -> ModelSpec:
    """Build the :class:`ModelSpec` of a model written as level equations.

    ``level2`` maps each level-1 coefficient ('intercept', 'cses', ...) to the right side of its level-2
    equation ('~ meanses + sector'); a coefficient left out is fixed (beta_q = gamma_q0). ``random`` lists
    the coefficients that get a random effect; by default every coefficient with a level-2 equation does
    (pass ``random=[]`` for non-randomly varying coefficients). With three levels, ``groups`` is
    ``[level-2 unit, level-3 unit]``, ``level3`` maps 'p' (for beta_p0) or ('p', 'q') to its level-3
    equation, and ``random`` may be a dict ``{group: [...]}`` per level. Expressions are checked as in
    :func:`~bayeshlm.spec.parse_formula` unless ``unsafe_formula=True``.
    """
    _check_arguments(level1, level2, groups, level3, random)
    group_list = [groups] if isinstance(groups, str) else list(groups)
    if len(group_list) not in (1, 2):
        raise FormulaError(f"groups must name the level-2 unit, or the level-2 and level-3 units; got {groups!r}.")
    if len(group_list) == 1 and level3:
        raise FormulaError("A level-3 equation needs two grouping columns: groups=[level-2 unit, level-3 unit].")
    if "~" not in level1:
        raise FormulaError(f"The level-1 equation looks like 'mathach ~ cses'; got {level1!r}.")
    outcome, rhs1 = (part.strip() for part in level1.split("~", 1))
    if "|" in rhs1:
        raise FormulaError("Level equations have no '|' terms: random effects are chosen with `random=`.")
    level1_terms = parse_terms(rhs1 or "1", level1)
    coefficients = {coefficient_name(t): t for t in level1_terms}

    equations2 = _resolve_keys(level2 or {}, coefficients, "level2")
    random2, random3 = _random_lists(random, group_list, equations2, level3)

    fixed: list[Term] = []
    random_terms: list[RandomTerm] = []
    level_predictors: list[tuple[str, str]] = []
    random_level2 = [coefficients[c] for c in _resolve_list(random2, coefficients, "random")]
    random_level3: list[Term] = []
    equations3 = level3 or {}
    used3: set = set()
    for name, term in coefficients.items():
        level2_terms = parse_terms(_rhs(equations2.get(name, "1")), f"level2[{name!r}]")
        level_predictors += [(f, group_list[0]) for t in level2_terms for f in t]
        for q_term in level2_terms:
            key = name if q_term == INTERCEPT else (name, coefficient_name(q_term))
            equation3 = equations3.get(key, equations3.get((name, "intercept")) if q_term == INTERCEPT else None)
            if equation3 is not None:
                used3.add(key if key in equations3 else (name, "intercept"))
            level3_terms = parse_terms(_rhs(equation3 or "1"), f"level3[{key!r}]") if len(group_list) == 2 \
                else (INTERCEPT,)
            if len(group_list) == 2:
                level_predictors += [(f, group_list[1]) for t in level3_terms for f in t]
            for s_term in level3_terms:
                fixed.append(_product(s_term, q_term, term))
            if key in random3 or (q_term == INTERCEPT and (name, "intercept") in random3):
                random_level3.append(_product(q_term, term))
    unknown3 = set(equations3) - used3
    if unknown3:
        raise FormulaError(
            f"level3 has equations for {sorted(map(str, unknown3))}, which match no level-2 coefficient. "
            "Use 'p' for the intercept of coefficient p's level-2 equation, or ('p', 'q') for its q slope."
        )
    for group, terms in zip(group_list, (random_level2, random_level3)):
        if terms:
            random_terms += _random_blocks(group, terms, correlated)
    return ModelSpec(
        outcome=outcome,
        fixed=tuple(dict.fromkeys(fixed)),
        random=tuple(random_terms),
        centering=tuple(centering),
        group_means=tuple(group_means),
        known_variance=known_variance,
        notation="levels",
        level_predictors=tuple(dict.fromkeys(level_predictors)),
        unsafe_formula=unsafe_formula,
    )


def _check_arguments(level1, level2, groups, level3, random) -> None:
    """Refuse arguments of the wrong kind with a message instead of a Python error deep inside."""
    if not isinstance(level1, str):
        raise FormulaError(f"The level-1 equation is text such as 'mathach ~ cses'; got {level1!r}.")
    for name, table in (("level2", level2), ("level3", level3)):
        if table is not None and not isinstance(table, Mapping):
            raise FormulaError(f"{name} maps coefficients to equations, e.g. {{'intercept': '~ meanses'}}; "
                               f"got {table!r}.")
    names = [groups] if isinstance(groups, str) else groups
    if not isinstance(names, Sequence) or not all(isinstance(g, str) for g in names):
        raise FormulaError(f"groups names the grouping column(s), e.g. 'school' or ['childid', 'schoolid']; "
                           f"got {groups!r}.")
    if random is not None and not isinstance(random, str | Sequence | Mapping):
        raise FormulaError(f"random lists coefficients with a random effect, e.g. ['intercept', 'cses']; "
                           f"got {random!r}.")


def _random_blocks(group: str, terms: list[Term], correlated: bool) -> list[RandomTerm]:
    columns = tuple(group.split(":"))
    if correlated:
        return [RandomTerm(group, columns, tuple(terms), True)]
    return [RandomTerm(group, columns, (t,), True) for t in terms]


def _product(*terms: Term) -> Term:
    """Product of terms, higher-level factors first (meanses:cses), dropping intercepts."""
    return tuple(dict.fromkeys(f for t in terms for f in t))


def _rhs(equation: str) -> str:
    text = str(equation).strip()
    return (text[1:] if text.startswith("~") else text).strip() or "1"


def _resolve_keys(equations: Mapping[str, str], coefficients: Mapping[str, Term], what: str) -> dict[str, str]:
    resolved = {}
    for key, equation in equations.items():
        name = "intercept" if key in _INTERCEPT_ALIASES else key
        if name not in coefficients:
            raise FormulaError(
                f"{what} has an equation for {key!r}, which is not a level-1 coefficient."
                f"{closest_names(key, coefficients)} Level-1 coefficients: {', '.join(coefficients)}."
            )
        resolved[name] = equation
    return resolved


def _resolve_list(names: Sequence[str], coefficients: Mapping[str, Term], what: str) -> list[str]:
    return list(_resolve_keys({n: "" for n in names}, coefficients, what))


def _random_lists(random, groups, equations2, level3):
    """Split ``random`` into the level-2 coefficient list and the set of level-3 keys."""
    level3_keys = set(level3 or {})
    if random is None:
        return list(equations2), level3_keys
    if isinstance(random, Mapping):
        unknown = set(random) - set(groups)
        if unknown:
            raise FormulaError(f"random has entries for {sorted(unknown)}; its keys must be the groups {groups}.")
        level2 = list(random.get(groups[0], equations2))
        level3_random = set(random.get(groups[1], level3_keys)) if len(groups) == 2 else set()
        return level2, level3_random
    if isinstance(random, str):
        random = [random]
    return list(random), level3_keys
