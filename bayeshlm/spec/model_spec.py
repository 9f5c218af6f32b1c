"""The model specification shared by both notations and both engines.

A :class:`ModelSpec` is the combined (mixed) form of a hierarchical linear model, as in Raudenbush & Bryk
(2002, eq. 2.4-2.5 and 3.34-3.40): an outcome, a list of fixed-effect terms (each a product of
formula factors), and random-effect terms, one per grouping factor and covariance block. It holds names
only, no numbers: :mod:`bayeshlm.design` turns it into matrices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A term is the product of formula factors; ``()`` is the intercept. Factors are formula expressions
# as formulaic understands them ("ses", "C(type)", "np.log(hours)").
Term = tuple[str, ...]
INTERCEPT: Term = ()


def term_name(term: Term) -> str:
    """The lme4-style name of a term: '(Intercept)' or factors joined by ':'."""
    return "(Intercept)" if term == INTERCEPT else ":".join(term)


def term_key(term: Term) -> frozenset[str]:
    """Order-free identity of a term: ``a:b`` and ``b:a`` are the same product."""
    return frozenset(term)


@dataclass(frozen=True)
class RandomTerm:
    """Random effects ``(terms | group)`` for one grouping factor and one covariance block.

    ``group`` is the factor's name as lme4 prints it (``school``, ``cask:batch``); ``group_columns`` are the
    data columns whose combination defines it. ``correlated=False`` gives each term its own variance with
    no covariances, as lme4's ``||``.
    """

    group: str
    group_columns: tuple[str, ...]
    terms: tuple[Term, ...]
    correlated: bool = True

    def key(self) -> tuple:
        return (self.group, frozenset(self.group_columns), frozenset(map(term_key, self.terms)), self.correlated)


@dataclass(frozen=True)
class Centering:
    """Centre ``column`` at its grand mean (``how='grand'``) or at the mean of its ``group`` (``how='group'``)."""

    column: str
    how: str
    group: str | None = None


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A two- or three-level (or cross-classified) linear model in combined form.

    Equality ignores the order in which terms were written, so a formula and the level equations of the
    same model compare equal.
    """

    outcome: str
    fixed: tuple[Term, ...]
    random: tuple[RandomTerm, ...]
    centering: tuple[Centering, ...] = ()
    group_means: tuple[tuple[str, str], ...] = ()  # (column, group): adds column "mean_<column>"
    known_variance: str | None = None
    notation: str = field(default="formula", compare=False)
    # Level notation only: (formula factor, group) pairs declared as level-2/3 predictors, which the
    # design checks to be constant within that group.
    level_predictors: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def has_intercept(self) -> bool:
        return INTERCEPT in self.fixed

    @property
    def fixed_names(self) -> tuple[str, ...]:
        return tuple(term_name(t) for t in self.fixed)

    @property
    def groups(self) -> tuple[str, ...]:
        """Grouping-factor names in order of first appearance."""
        return tuple(dict.fromkeys(r.group for r in self.random))

    def key(self) -> tuple:
        return (
            self.outcome,
            frozenset(map(term_key, self.fixed)),
            frozenset(r.key() for r in self.random),
            frozenset(self.centering),
            frozenset(self.group_means),
            self.known_variance,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelSpec) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def formula(self) -> str:
        """The model as one lme4-style formula (random terms merged per factor and block)."""
        fixed = " + ".join(term_name(t) for t in self.fixed if t != INTERCEPT)
        parts = [("1" if self.has_intercept else "0") + (f" + {fixed}" if fixed else "")]
        for r in self.random:
            lhs = " + ".join("1" if t == INTERCEPT else ":".join(t) for t in r.terms)
            if INTERCEPT not in r.terms:
                lhs = "0 + " + lhs
            bar = "|" if r.correlated or len(r.terms) == 1 else "||"
            parts.append(f"({lhs} {bar} {r.group})")
        return f"{self.outcome} ~ " + " + ".join(parts)
