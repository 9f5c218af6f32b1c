from bayeshlm.cli import main


def test_datasets_command_lists_names(capsys):
    assert main(["datasets"]) == 0
    assert "teacher_expectancy" in capsys.readouterr().out


def test_describe_reports_bad_columns_without_a_traceback(capsys):
    assert main(["describe", "sleepstudy", "Reaction ~ Days + (Days | Subjct)"]) == 2
    assert "Did you mean 'Subject'" in capsys.readouterr().err


# --- issue 21: every bad input ends with a message and a non-zero exit, never a traceback or a silent default ----
import pytest  # noqa: E402

import bayeshlm as bh  # noqa: E402

MODEL_FILE = 'title = "schools"\nformula = "y ~ x + (1 | g)"\ndata = "d.csv"\n'


def _write(tmp_path, toml=MODEL_FILE, csv=b"y,x,g\n1.0,0.5,a\n2.0,0.1,a\n0.5,0.3,b\n1.5,0.9,b\n2.5,0.2,c\n0.1,0.7,c\n"):
    (tmp_path / "m.toml").write_text(toml)
    if csv is not None:
        (tmp_path / "d.csv").write_bytes(csv)
    return str(tmp_path / "m.toml")


@pytest.mark.parametrize("draws", ["0", "-3", "many", "2.5"])
def test_draws_must_be_a_positive_whole_number(tmp_path, capsys, draws):
    """--draws 0 used to be read as 'not given' and ran the default 4 x 1000."""
    with pytest.raises(SystemExit) as stop:
        main(["fit", _write(tmp_path), "--method", "bayes", "--draws", draws])
    assert stop.value.code == 2
    assert f"--draws: {draws!r} is not a positive whole number" in capsys.readouterr().err


@pytest.mark.parametrize("toml, csv, message", [
    (MODEL_FILE, None, "data = 'd.csv': no such file"),
    (MODEL_FILE, b"", "data = 'd.csv' is empty"),
    (MODEL_FILE, b"y,x,g\n\xff\xfe\x00,1,2\n", "data = 'd.csv' is not UTF-8"),
    (MODEL_FILE + 'fit = "reml"\n', b"y,x,g\n1,2,a\n", "'fit' must be a table"),
    ('formula = "y ~ x ~ g + (1 | g)"\ndata = "d.csv"\n', b"y,x,g\n1,2,a\n", "more than one '~'"),
    (MODEL_FILE + "[fit]\nmethod = \"bayes\"\ntune = 0\n", b"y,x,g\n1,2,a\n2,3,a\n3,1,b\n1,1,b\n", None),
])
def test_bad_model_files_and_data_exit_2_with_a_message(tmp_path, capsys, toml, csv, message):
    assert main(["fit", _write(tmp_path, toml, csv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bayeshlm: ") and "Traceback" not in err
    assert message is None or message in err
    if message is None:
        assert "tune=0: give a positive whole number" in err


def test_missing_model_file_exits_2(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "absent.toml")]) == 2
    assert "No model file at" in capsys.readouterr().err


def test_interrupt_exits_130_without_writing_a_report(tmp_path, capsys, monkeypatch):
    """Ctrl-C during sampling: the CLI exited 0 and wrote reports of an all-NaN fit."""
    def interrupted(self, method="reml", **options):
        raise KeyboardInterrupt("Sampling was interrupted; no fit was made.")

    monkeypatch.setattr(bh.HLM, "fit", interrupted)
    out = tmp_path / "out"
    assert main(["fit", _write(tmp_path), "--method", "bayes", "--draws", "10", "--out", str(out)]) == 130
    assert "interrupted (Ctrl-C); the run did not finish" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.filterwarnings("ignore::UserWarning")  # the six-row example fits on a boundary
def test_unwritable_output_folder_exits_1_with_a_message(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file where the output folder should go")
    assert main(["fit", _write(tmp_path), "--out", str(tmp_path / "taken")]) == 1
    err = capsys.readouterr().err
    assert "bayeshlm: cannot write the outputs: [Errno 17] File exists" in err and "Traceback" not in err
