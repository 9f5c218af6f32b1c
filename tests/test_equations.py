"""Model rendering in the book's level notation and in combined form."""

import bayeshlm as bh


def test_two_level_equations_read_like_the_book(hsb):
    model = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb)
    text = model.equations().text
    assert "Level 1:  mathach_ij = b0_j + b1_j*(cses)_ij + r_ij" in text
    assert "b0_j = g00 + g01*(meanses)_j + g02*(sector)_j + u0_j" in text
    assert "b1_j = g10 + g11*(meanses)_j + g12*(sector)_j + u1_j" in text
    latex = model.equations("levels").latex
    assert r"\beta_{1j} = \gamma_{10} + \gamma_{11}\,(\mathrm{meanses})_j" in latex
    assert model.equations()._repr_markdown_() == model.equations().latex


def test_nonrandom_slope_has_no_u(hsb):
    model = bh.HLM.from_levels("mathach ~ cses", {"intercept": "~ sector", "cses": "~ sector"}, groups="school",
                               data=hsb, random=["intercept"])
    text = model.equations("levels").text
    assert "b1_j = g10 + g11*(sector)_j\n" in text
    assert "u1_j" not in text


def test_three_level_equations(egsingle):
    model = bh.HLM("math ~ year*lowinc + (year | childid) + (year | schoolid)", egsingle)
    text = model.equations("levels").text
    assert "math_ijk = p0_jk + p1_jk*(year)_ijk + e_ijk" in text
    assert "p1_jk = b10_k + r1_jk" in text
    assert "b10_k = g100 + g101*(lowinc)_k + u10_k" in text


def test_meta_analysis_equations_have_known_variance():
    model = bh.HLM("yi ~ weeks_c + (1 | study)", bh.datasets.load("teacher_expectancy"), known_variance="vi")
    text = model.equations().text
    assert "yi_j = b0_j + e_j" in text and "V_j known" in text


def test_crossed_models_use_combined_form(scotssec):
    text = bh.HLM("attain ~ verbal + (1 | primary) + (1 | second)", scotssec).equations().text
    assert "combined form" in text
    assert "attain = g0 + g1*verbal + u[primary]0 + u[second]0 + r" in text


# --- issue 28: a terminal shows readable text, not the LaTeX source ---------------------------------------------
def test_equations_print_as_unicode_in_a_terminal_and_latex_in_notebooks(hsb):
    equations = bh.HLM("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb).equations()
    shown = repr(equations)  # what a Python or IPython terminal prints for model.equations()
    assert shown == str(equations) == equations.unicode
    assert "Level 1:  mathach_ij = β0j + β1j (cses)_ij + r_ij" in shown
    assert "β1j = γ10 + γ11 (meanses)_j + γ12 (sector)_j + u1j" in shown
    assert "r_ij ~ N(0, σ²)" in shown
    assert "Combined:  mathach = γ0 + γ1 meanses + γ2 cses" in shown and "u[school]1 cses + r" in shown
    assert "\\beta" not in shown and "$$" not in shown and "latex=" not in shown
    assert r"$$ \beta_{0j} = \gamma_{00}" in equations._repr_markdown_()


def test_unicode_leaves_variable_names_alone():
    import pandas as pd

    data = pd.DataFrame({"b0_j": [1.0, 2.0, 3.0, 4.0, 2.0, 1.0], "g1": [0.5, 0.1, 0.3, 0.9, 0.2, 0.7],
                         "grp": list("aabbcc")})
    text = repr(bh.HLM("b0_j ~ g1 + (1 | grp)", data).equations())
    assert "Level 1:  b0_j_ij = β0j + β1j (g1)_ij + r_ij" in text
    assert "Combined:  b0_j = γ0 + γ1 g1 + u[grp]0 + r" in text


def test_three_level_unicode(egsingle):
    text = str(bh.HLM("math ~ year*lowinc + (year | childid) + (year | schoolid)", egsingle).equations("levels"))
    assert "math_ijk = π0jk + π1jk (year)_ijk + e_ijk" in text
    assert "β10k = γ100 + γ101 (lowinc)_k + u10k" in text and "T_π" in text and "T_β" in text
