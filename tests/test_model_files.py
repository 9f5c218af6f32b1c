"""Every ready model definition in models/ loads and fits from the command line."""

from pathlib import Path

import pytest
import xarray as xr

import bayeshlm as bh
from bayeshlm.cli import main

MODELS = sorted((Path(__file__).parent.parent / "models").glob("*.toml"))


def test_there_are_model_files():
    assert len(MODELS) >= 8


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
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
