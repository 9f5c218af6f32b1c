"""Formula and level notations describe the same model (R&B 2002, Tables 4.2-4.5 and chapter 8)."""

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.spec import parse_formula, parse_levels
from bayeshlm.spec.model_spec import RandomTerm

# (formula, level1, level2, groups) for the HS&B ladder of Tables 4.2-4.5
HSB_LADDER = {
    "4.2 one-way ANOVA": ("mathach ~ 1 + (1 | school)", "mathach ~ 1", {"intercept": "~ 1"}),
    "4.3 means as outcomes": ("mathach ~ meanses + (1 | school)", "mathach ~ 1", {"intercept": "~ meanses"}),
    "4.4 random coefficients": ("mathach ~ cses + (cses | school)", "mathach ~ cses",
                                {"intercept": "~ 1", "cses": "~ 1"}),
    "4.5 intercepts and slopes as outcomes": (
        "mathach ~ meanses*cses + sector*cses + (cses | school)", "mathach ~ cses",
        {"intercept": "~ meanses + sector", "cses": "~ meanses + sector"}),
}


@pytest.mark.parametrize("table", HSB_LADDER)
def test_both_notations_give_the_same_spec_and_design(table, hsb):
    formula, level1, level2 = HSB_LADDER[table]
    by_formula = bh.HLM(formula, hsb)
    by_levels = bh.HLM.from_levels(level1, level2, groups="school", data=hsb)
    assert by_formula.spec == by_levels.spec
    a, b = by_formula.design, by_levels.design
    order = [b.fixed_names.index(n) if n in b.fixed_names else
             b.fixed_names.index(":".join(reversed(n.split(":")))) for n in a.fixed_names]
    np.testing.assert_array_equal(a.X, b.X[:, order])
    np.testing.assert_array_equal(a.y, b.y)
    fa, fb = a.factors[0], b.factors[0]
    assert fa.coef_names == fb.coef_names and fa.blocks == fb.blocks
    np.testing.assert_array_equal(fa.codes, fb.codes)
    np.testing.assert_array_equal(fa.Z, fb.Z)


def test_three_level_growth_in_both_notations(egsingle):
    formula = "math ~ year*(black + hispanic + lowinc) + (year | childid) + (year | schoolid)"
    levels = bh.HLM.from_levels(
        "math ~ year", {"intercept": "~ black + hispanic", "year": "~ black + hispanic"},
        groups=["childid", "schoolid"], data=egsingle,
        level3={"intercept": "~ lowinc", "year": "~ lowinc"},
        random={"childid": ["intercept", "year"], "schoolid": ["intercept", "year"]},
    )
    assert levels.spec == bh.HLM(formula, egsingle).spec


def test_nonrandom_and_fixed_level1_coefficients():
    # beta_1 non-randomly varying (level-2 predictor, no u); beta_2 fixed (no equation)
    spec = parse_levels("y ~ x + z", {"intercept": "~ w", "x": "~ w"}, "g", random=["intercept"])
    assert spec == parse_formula("y ~ w + x + w:x + z + (1 | g)")


def test_uncorrelated_levels_match_double_bar():
    spec = parse_levels("y ~ x", {"intercept": "~ 1", "x": "~ 1"}, "g", correlated=False)
    assert spec == parse_formula("y ~ x + (x || g)")


def test_bar_expansions_follow_lme4():
    spec = parse_formula("y ~ x + (x || g) + (1 | batch/cask)")
    assert spec.random == (
        RandomTerm("g", ("g",), ((),), True),
        RandomTerm("g", ("g",), (("x",),), True),
        RandomTerm("cask:batch", ("batch", "cask"), ((),), True),
        RandomTerm("batch", ("batch",), ((),), True),
    )
    assert parse_formula("y ~ 0 + x + (0 + x | g)").fixed == (("x",),)
    assert parse_formula("y ~ x - 1 + (1 | g)").fixed == (("x",),)
    assert parse_formula("y ~ a*b + (1|g)").fixed == ((), ("a",), ("b",), ("a", "b"))


def test_term_order_does_not_change_identity():
    assert parse_formula("y ~ a + b + (1|g)") == parse_formula("y ~ b + a + (1|g)")
    assert parse_formula("y ~ a + (1|g)") != parse_formula("y ~ a + (a|g)")


def test_formula_round_trips_through_its_rendering():
    spec = parse_formula("mathach ~ meanses*cses + sector*cses + (cses | school)")
    assert parse_formula(spec.formula()) == spec


@pytest.mark.parametrize("formula, message", [
    ("y x", "looks like 'y ~ x"),
    ("~ x", "has no outcome"),
    ("y ~ x + 1 | g", "must be wrapped in parentheses"),
    ("y ~ (x | g", "never closed"),
    ("y ~ x)", "no matching"),
    ("y ~ x + (x | )", "grouping factor on the right"),
    ("y ~ x +", "dangling"),
    ("y ~ x + (x | g | h)", "Only one"),
    ("y ~ x + (1 | a + b)", "must be a column name"),
    ("y ~ x - (1 | g)", "cannot be subtracted"),
])
def test_bad_formulas_are_explained(formula, message):
    with pytest.raises(bh.FormulaError, match=message):
        parse_formula(formula)


def test_level_equation_for_an_unknown_coefficient_is_explained():
    with pytest.raises(bh.FormulaError, match="Did you mean 'cses'"):
        parse_levels("mathach ~ cses", {"intercept": "~ 1", "cse": "~ 1"}, "school")


@pytest.mark.parametrize("formula, message", [
    ("mathach ~ {ses**2} + (1 | school)", r"'\{...\}' block would change meaning.*Write I\(ses \*\* 2\)"),
    ("mathach ~ {ses + 1} + (1 | school)", r"Write I\(ses \+ 1\)"),
    ("mathach ~ cses + ({ses**2} | school)", r"Write I\(ses \*\* 2\)"),
])
def test_python_blocks_that_would_change_meaning_are_refused(formula, message, hsb):
    # the spec keeps terms as text: '{ses**2}' became 'ses**2', which formulaic reads as the formula power
    # ses**2 = ses, so the old code fitted ses in place of its square without a word
    with pytest.raises(bh.FormulaError, match=message):
        bh.HLM(formula, hsb)


def test_python_blocks_that_keep_their_meaning_are_accepted(hsb):
    assert bh.HLM("mathach ~ {log(ses + 5)} + (1 | school)", hsb).design.fixed_names == ("(Intercept)",
                                                                                        "log(ses + 5)")


def test_sqrt_and_abs_are_numpy_functions_in_formulas(hsb):
    design = bh.HLM("mathach ~ sqrt(ses + 5) + abs(ses) + (1 | school)", hsb).design
    np.testing.assert_allclose(design.X[:, 1], np.sqrt(hsb["ses"] + 5), rtol=1e-15)
    np.testing.assert_allclose(design.X[:, 2], np.abs(hsb["ses"]), rtol=1e-15)


def test_parsers_check_expressions_unless_told_not_to():
    with pytest.raises(bh.FormulaError, match="attribute access '.log'"):
        parse_formula("y ~ np.log(x) + (1 | g)")
    with pytest.raises(bh.FormulaError, match="attribute access '.log'"):
        parse_levels("y ~ x", {"intercept": "~ np.log(w)"}, "g")
    assert parse_formula("y ~ np.log(x) + (1 | g)", unsafe_formula=True).fixed == ((), ("np.log(x)",))
    assert parse_levels("y ~ x", {"intercept": "~ np.log(w)"}, "g", unsafe_formula=True).fixed[1] == ("np.log(w)",)
