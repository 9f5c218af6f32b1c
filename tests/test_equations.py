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
