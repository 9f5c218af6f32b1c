"""The model specification shared by both notations and both engines.

A :class:`ModelSpec` is the combined (mixed) form of a hierarchical linear model, as in Raudenbush & Bryk
(2002, eq. 2.4-2.5 and 3.34-3.40): an outcome, a list of fixed-effect terms (each a product of
formula factors), and random-effect terms, one per grouping factor and covariance block. It holds names
only, no numbers: :mod:`bayeshlm.design` turns it into matrices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A term is the product of formula factors; ``()`` is the intercept. Factors are formula expressions
# as formulaic understands them ("ses", "C(type)", "log(hours)"), checked against the allow-list of
# spec/expressions.py unless the model was built with unsafe_formula=True.
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


@dataclass(frozen=True)
class ResidualStructure:
    """Level-1 error structure beyond e_ij ~ N(0, sigma^2) independent.

    ``variance_by``: a separate level-1 variance per category of this column (nlme ``varIdent``;
    Pinheiro & Bates 2000, sec. 5.2.1; R&B 2002 ch. 6, sigma^2_t per occasion). ``variance_formula``: the
    right-hand side of the log-linear model ln sigma^2_ij = alpha_0 + sum_m alpha_m C_mij (R&B 2002, eq. 5.36).
    ``correlation``: the name of a registered correlation structure of the errors within each group of the
    innermost grouping factor, ordered by ``time``: ``"ar1"`` -- cor(e_ti, e_t'i) = phi^|t - t'| for integer
    occasions (nlme ``corAR1``, P&B 2000 sec. 5.3.1; R&B eq. 6.31) -- or ``"car1"``, the same for real-valued
    times (nlme ``corCAR1``, 0 < phi < 1). Names only: :mod:`bayeshlm.level1` holds the structures' objects.
    """

    variance_by: str | None = None
    variance_formula: str | None = None
    correlation: str | None = None
    time: str | None = None

    def columns(self) -> tuple[str, ...]:
        """Data columns named directly (the log-linear formula's variables are found by the design)."""
        return tuple(c for c in (self.variance_by, self.time) if c)


def residual_structure(level1_variance: str | None, correlation: str | None,
                       time: str | None) -> ResidualStructure | None:
    """Read the ``level1_variance`` / ``correlation`` / ``time`` options of a model into a ResidualStructure.

    ``level1_variance="sector"`` gives one variance per category of ``sector``; ``"~ sector + female"`` the
    log-linear model of R&B (2002) eq. 5.36. ``correlation="ar1"`` (or ``"car1"``) needs ``time``.
    """
    from ..errors import OptionError

    if level1_variance is None and correlation is None:
        if time is not None:
            raise OptionError(f"time={time!r} is only used with correlation='ar1' or 'car1'; add one, or drop time.")
        return None
    by = formula = None
    if level1_variance is not None:
        text = str(level1_variance).strip()
        if text.startswith("~"):
            formula = text[1:].strip()
            if not formula:
                raise OptionError("level1_variance='~': give the predictors of ln sigma^2, e.g. '~ sector'.")
        elif text.isidentifier():
            by = text
        else:
            raise OptionError(f"level1_variance={level1_variance!r}: give a column name (one variance per category, "
                              "e.g. 'sector') or a formula starting with '~' (log-linear model, e.g. '~ sector').")
    if correlation is not None:  # the name is checked against the registered structures (bayeshlm.level1)
        if not isinstance(correlation, str):
            raise OptionError(f"correlation={correlation!r}: give the name of a correlation structure, e.g. 'ar1' "
                              "(integer occasions) or 'car1' (continuous times).")
        if time is None:
            raise OptionError(f"correlation={correlation!r} needs the time variable that orders the occasions: "
                              "pass time='<column>'.")
    elif time is not None:
        raise OptionError(f"time={time!r} is only used with correlation='ar1' or 'car1'; add one, or drop time.")
    if time is not None and not isinstance(time, str):
        raise OptionError(f"time={time!r}: give the name of the column holding the occasions or times.")
    return ResidualStructure(variance_by=by, variance_formula=formula, correlation=correlation, time=time)


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
    residual: ResidualStructure | None = None  # level-1 error structure (None: independent, one sigma^2)
    # Python API only: skip the allow-list of formula expressions (see spec/expressions.py)
    unsafe_formula: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if not self.unsafe_formula:
            from .expressions import check_spec

            check_spec(self)

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
            self.residual,
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
