"""Every ready model definition in models/ loads and fits from the command line."""

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayeshlm as bh
from bayeshlm.cli import main

MODELS = sorted((Path(__file__).parent.parent / "models").glob("*.toml"))


def test_there_are_model_files():
    assert len(MODELS) >= 8


GAUSSIAN = [p for p in MODELS if "family" not in tomllib.loads(p.read_text())]  # REML is for Gaussian outcomes


@pytest.mark.parametrize("path", GAUSSIAN, ids=[p.stem for p in GAUSSIAN])
def test_model_file_fits_by_reml_and_writes_outputs(path, tmp_path, capsys):
    assert main(["fit", str(path), "--method", "reml", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Fixed effects" in out and "deviance:" in out
    estimates = xr.open_dataset(tmp_path / "estimates.nc")
    assert estimates.attrs["method"] == "reml" and "fixed_estimate" in estimates
    assert (tmp_path / "report.txt").read_text().startswith("Model (REML)")


def test_level_file_and_formula_file_describe_the_same_model():
    levels = bh.load_model(Path(__file__).parent.parent / "models" / "hsb_random_coefficients.toml")
    assert levels.spec == bh.HLM("mathach ~ cses + (cses | school)", bh.datasets.load("hsb")).spec
    assert levels.fit_options == {"method": "reml"}


def test_bad_model_files_are_explained(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('dataset = "hsb"\nformula = "mathach ~ ses + (ses | scool)"\n')
    assert main(["fit", str(bad)]) == 2
    assert "'scool' is not a column. Did you mean 'school'" in capsys.readouterr().err
    bad.write_text('dataset = "hsb"\nformla = "mathach ~ 1 + (1 | school)"\n')
    with pytest.raises(bh.OptionError, match=r"unknown keys \['formla'\]"):
        bh.load_model(bad)
    with pytest.raises(bh.OptionError, match="No model file"):
        bh.load_model(tmp_path / "missing.toml")
    bad.write_text('dataset = "hsb"\nformula = "y ~ 1\n')
    with pytest.raises(bh.OptionError, match="not valid TOML"):
        bh.load_model(bad)


def test_sampling_options_are_set_aside_for_a_likelihood_refit_and_others_are_checked(tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text('dataset = "sleepstudy"\nformula = "Reaction ~ Days + (Days | Subject)"\n'
                    '[fit]\nmethod = "bayes"\ndraws = 10\nchains = 2\n')
    assert main(["fit", str(path), "--method", "reml"]) == 0
    assert "ignoring sampling options chains, draws for a likelihood fit" in capsys.readouterr().out
    path.write_text('dataset = "sleepstudy"\nformula = "Reaction ~ Days + (Days | Subject)"\n'
                    '[fit]\nmethod = "reml"\nmaxiterr = 10\n')
    assert main(["fit", str(path)]) == 2
    assert "maxiterr" in capsys.readouterr().err


def test_subset_keeps_the_selected_groups_and_a_bad_subset_is_explained(tmp_path):
    few = bh.load_model(MODELS[0].parent / "hsb_few_schools.toml")
    assert few.design.factors[0].n_groups == 8 and few.design.n_obs == 281
    bad = tmp_path / "bad.toml"
    bad.write_text('dataset = "hsb"\nsubset = "scool == 1"\nformula = "mathach ~ 1 + (1 | school)"\n')
    with pytest.raises(bh.OptionError, match="cannot select rows with subset = 'scool == 1'"):
        bh.load_model(bad)
    bad.write_text('dataset = "hsb"\nsubset = "school == \'none\'"\nformula = "mathach ~ 1 + (1 | school)"\n')
    with pytest.raises(bh.OptionError, match="keeps no rows"):
        bh.load_model(bad)


def test_data_path_is_read_relative_to_the_model_file(tmp_path, sleepstudy):
    (tmp_path / "data").mkdir()
    sleepstudy.to_csv(tmp_path / "data" / "sleep.csv", index=False)
    path = tmp_path / "m.toml"
    path.write_text('data = "data/sleep.csv"\nformula = "Reaction ~ Days + (Days | Subject)"\n'
                    '[data_columns]\nweeks = "Days / 7"\n')
    model = bh.load_model(path)
    assert model.design.n_obs == len(sleepstudy) == 180
    assert model.data["weeks"].tolist() == (sleepstudy["Days"] / 7).tolist()


def test_unknown_keys_in_levels_are_explained(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('dataset = "hsb"\n[levels]\nlevel1 = "mathach ~ 1"\ngroups = "school"\ngroup = "x"\n')
    with pytest.raises(bh.OptionError, match=r"unknown keys \['group'\] in \[levels\]"):
        bh.load_model(path)


_DATA = 'data = "d.csv"\n'
_FORMULA = 'formula = "y ~ x + (1 | g)"\n'
_LEVELS = '[levels]\nlevel1 = "y ~ x"\ngroups = "g"\n'


@pytest.mark.parametrize(("text", "error", "message"), [
    (_DATA + _LEVELS + 'level2 = "x"\n', bh.FormulaError, "level2 maps coefficients to equations"),
    (_DATA + '[levels]\nlevel1 = "y ~ x"\ngroups = ["g", "h"]\nlevel3 = ["a"]\n', bh.FormulaError,
     "level3 maps coefficients to equations"),
    (_DATA + '[levels]\nlevel1 = "y ~ x"\ngroups = 5\n', bh.FormulaError, "groups names the grouping column"),
    (_DATA + '[levels]\nlevel1 = "y ~ x"\n', bh.OptionError, r"\[levels\] needs groups"),
    (_DATA + '[levels]\nlevel1 = 5\ngroups = "g"\n', bh.FormulaError, "level-1 equation is text"),
    (_DATA + _LEVELS + 'random = 5\n', bh.FormulaError, "random lists coefficients"),
    (_DATA + _FORMULA + 'correlation = "ar1"\ntime = ["x"]\n', bh.OptionError, "time=\\['x'\\]: give the name"),
    (_DATA + 'formula = "y ~ x ~ z + (1 | g)"\n', bh.FormulaError, "more than one '~'"),
    (_DATA + _LEVELS + 'level2 = { intercept = "~ x ~ z" }\n', bh.FormulaError, "more than one '~'"),
    (_DATA + 'levels = "x"\n', bh.OptionError, "'levels' must be a table"),
    (_DATA + _FORMULA + 'data_columns = "x"\n', bh.OptionError, "'data_columns' must be a table"),
    (_DATA + _FORMULA + '[data_columns]\nz = 5\n', bh.OptionError, "expected an expression in quotes"),
    (_DATA + _FORMULA + '[data_columns]\nz = "\'abc\'"\n', bh.OptionError, "is text, not a computed column"),
    (_DATA + _FORMULA + 'subset = "x + 1"\n', bh.OptionError, "is not a condition on the rows"),
    (_DATA + _FORMULA + 'subset = "1 == 1"\n', bh.OptionError, "is not a condition on the rows"),
    (_DATA + _FORMULA + 'subset = "x > \'a\'"\n', bh.OptionError, "cannot compare"),
    (_DATA + _FORMULA + 'subset = "x is None"\n', bh.OptionError, "the comparison 'x is None' is not allowed"),
    (_DATA + _FORMULA + 'subset = ""\n', bh.OptionError, "is not a valid expression"),
    ('data = 5\n' + _FORMULA, bh.OptionError, "'data' must be a CSV path"),
    ('dataset = "../../etc/passwd"\n' + _FORMULA, bh.OptionError, "No bundled dataset"),
])
def test_malformed_model_files_are_explained(text, error, message, tmp_path):
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(6), 8)
    pd.DataFrame({"y": rng.normal(size=48), "x": rng.normal(size=48), "g": g, "h": g // 2}).to_csv(
        tmp_path / "d.csv", index=False)
    (tmp_path / "m.toml").write_text(text)
    with pytest.raises(error, match=message):
        bh.load_model(tmp_path / "m.toml")


def test_a_binomial_model_file_fits_by_laplace_and_writes_its_outputs(tmp_path, capsys):
    """family = "binomial" in a model file: cbpp by Laplace against glmer (tests/reference/glmm), and the command
    line writes the report and estimates (it stopped at the level-1 variance an HGLM does not have)."""
    import json

    from bayeshlm.cli import main

    path = Path(__file__).parent.parent / "models" / "cbpp_binomial.toml"
    glmer = json.loads((Path(__file__).parent / "reference" / "glmm" / "glmm_reference.json").read_text())
    model = bh.load_model(path)
    fit = model.fit(**model.fit_options)
    assert fit.loglik == pytest.approx(glmer["cbpp_laplace"]["loglik"], rel=1e-6)
    assert main(["fit", str(path), "--out", str(tmp_path)]) == 0
    assert "odds_ratio" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["estimates.nc", "report.txt"]
