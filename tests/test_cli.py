from bayeshlm.cli import main


def test_datasets_command_lists_names(capsys):
    assert main(["datasets"]) == 0
    assert "teacher_expectancy" in capsys.readouterr().out


def test_describe_reports_bad_columns_without_a_traceback(capsys):
    assert main(["describe", "sleepstudy", "Reaction ~ Days + (Days | Subjct)"]) == 2
    assert "Did you mean 'Subject'" in capsys.readouterr().err


# --- issue 21: every bad input ends with a message and a non-zero exit, never a traceback or a silent default ----
import io  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
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
    err = capsys.readouterr().err  # no progress lines under pytest unless asked
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


# --- issue 28: fit a formula on the user's own CSV file -------------------------------------------------------------
SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture
def sleep_csv(tmp_path):
    path = tmp_path / "sleep.csv"
    bh.datasets.load("sleepstudy").to_csv(path, index=False)
    return str(path)


def test_fit_a_formula_on_a_csv_file(sleep_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    expected = bh.HLM(SLEEP, bh.datasets.load("sleepstudy")).fit("reml").fixed_effects["estimate"]
    assert f"{expected['Days']:.4f}" in printed.out and f"{expected['(Intercept)']:.4f}" in printed.out
    assert printed.out.startswith(f"{SLEEP}  (data: {sleep_csv})") and "Model (REML)" in printed.out
    assert "compiling" not in printed.err  # no Bayes, no compile notice
    assert {"report.txt", "estimates.nc", "shrinkage.png"} <= {p.name for p in out.iterdir()}
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--method", "ml", "--seed", "3"]) == 0
    ml = capsys.readouterr().out
    assert "Model (ML)" in ml and "(ignoring sampling options random_seed for a likelihood fit)" in ml


@pytest.mark.parametrize("content, message", [
    (None, "--data 'DATA': no such file."),
    (b"", "--data 'DATA' is empty"),
    (b"Reaction,Days,Subject\n\xff\xfe,1,2\n", "--data 'DATA' is not UTF-8 text"),
    (b"Reaction,Days,Subject\n1,2,3\n4,5,6,7,8\n", "--data 'DATA' cannot be read as CSV"),
    (b"Reaction;Days;Subject\n1;2;3\n", "is not a column"),  # semicolons: one column named 'Reaction;Days;Subject'
])
def test_bad_data_files_exit_2_with_a_message(tmp_path, capsys, content, message):
    path = tmp_path / "d.csv"
    if content is not None:
        path.write_bytes(content)
    assert main(["fit", "--data", str(path), "--formula", SLEEP]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bayeshlm: ") and "Traceback" not in err
    assert message.replace("DATA", str(path)) in err


@pytest.mark.parametrize("formula", ["Reaction ~ open(Days) + (1 | Subject)",
                                     "Reaction ~ I(Days.__class__) + (1 | Subject)",
                                     "Reaction ~ __import__('os').system('echo pwned') + (1 | Subject)"])
def test_formula_from_the_command_line_is_checked_by_the_allow_list(sleep_csv, capsys, formula):
    assert main(["fit", "--data", sleep_csv, "--formula", formula]) == 2
    printed = capsys.readouterr()
    assert printed.err.startswith("bayeshlm: ") and "pwned" not in printed.out


@pytest.mark.parametrize("option, value, message", [
    ("--tune", "0", "--tune: '0' is not a positive whole number"),
    ("--chains", "-2", "--chains: '-2' is not a positive whole number"),
    ("--chains", "two", "--chains: 'two' is not a positive whole number"),
    ("--seed", "-1", "--seed: '-1' is not a whole number >= 0"),
    ("--seed", "1.5", "--seed: '1.5' is not a whole number >= 0"),
])
def test_sampling_options_are_checked_by_argparse(sleep_csv, capsys, option, value, message):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--method", "bayes", option, value])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    ([], "give a model file, or both --data and --formula"),
    (["--data", "x.csv"], "give a model file, or both --data and --formula"),
    (["--formula", SLEEP], "give a model file, or both --data and --formula"),
    (["m.toml", "--data", "x.csv", "--formula", SLEEP], "not both"),
    (["m.toml", "--formula", SLEEP], "not both"),  # the formula would have been dropped silently
])
def test_fit_needs_a_model_file_or_data_and_formula(capsys, arguments, message):
    with pytest.raises(SystemExit) as stop:
        main(["fit", *arguments])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_data_root_is_refused_with_data(sleep_csv, tmp_path, capsys):
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--data-root", str(tmp_path)]) == 2
    assert "--data-root is for model files" in capsys.readouterr().err


def test_bayes_options_reach_the_sampler(sleep_csv, capsys, monkeypatch):
    """--progress / --no-progress reach the fit as progress= (its step lines) and progressbar= (nutpie's)."""
    seen = {}

    def fake_fit(self, method="reml", **options):
        seen.update(options, method=method)
        raise KeyboardInterrupt

    monkeypatch.setattr(bh.HLM, "fit", fake_fit)
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--method", "bayes", "--draws", "30", "--tune",
                 "40", "--chains", "3", "--seed", "0", "--progress"]) == 130
    assert {k: seen[k] for k in ("method", "draws", "tune", "chains", "random_seed", "progress", "progressbar")} == {
        "method": "bayes", "draws": 30, "tune": 40, "chains": 3, "random_seed": 0, "progress": True,
        "progressbar": True}
    seen.clear()
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--method", "bayes", "--no-progress"]) == 130
    assert (seen["progress"], seen["progressbar"]) == (False, False)
    seen.clear()
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--method", "bayes"]) == 130
    assert "progress" not in seen and "progressbar" not in seen  # default: shown when stderr is a terminal


STEP = re.compile(r"^bayeshlm \[ *(\d+\.\d) s\] (.*)$")


def _steps(err: str) -> list[tuple[float, str]]:
    return [(float(m[1]), m[2]) for m in map(STEP.match, err.splitlines()) if m]


def _fixed_effects(out: str) -> pd.DataFrame:
    """The report's fixed-effects table read back from standard output."""
    block = out.split("Fixed effects\n-------------\n", 1)[1].split("\n\n", 1)[0]
    return pd.read_fwf(io.StringIO(block), skiprows=[1], index_col=0)  # aligned columns; cells may hold spaces


def test_progress_lines_of_a_likelihood_fit_go_to_stderr(sleep_csv, capsys):
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""  # under pytest (no terminal) progress is off by default
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--progress"]) == 0
    shown = capsys.readouterr()
    assert [text for _, text in _steps(shown.err)] == ["fitting by REML...", "done"]
    assert shown.out == quiet.out  # the report on stdout is unchanged
    expected = bh.HLM(SLEEP, bh.datasets.load("sleepstudy")).fit("reml").fixed_effects
    np.testing.assert_allclose(_fixed_effects(shown.out)["estimate"], expected["estimate"], atol=5e-5)


@pytest.mark.sampling
@pytest.mark.filterwarnings("ignore")  # 50 draws on one chain: low-ESS and one-chain warnings are expected
def test_a_tiny_bayes_fit_from_the_command_line(sleep_csv, capsys):
    """With --progress the fit says what it is doing, step by step, on stderr; stdout keeps the parseable report."""
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--method", "bayes", "--draws", "50", "--tune", "50",
                 "--chains", "1", "--seed", "7", "--progress"]) == 0
    printed = capsys.readouterr()
    steps = _steps(printed.err)
    assert [text.split(" (")[0] for _, text in steps] == [
        "full Bayes: loading PyMC and building the model...", "preparing the sampler",
        "sampling 1 chain x 100 iterations", "done"]
    assert steps[0][0] == 0.0 and [t for t, _ in steps] == sorted(t for t, _ in steps)
    assert "chains: 1; draws per chain: 50 after 50 tuning draws" in printed.out and "seed: 7;" in printed.out
    table = _fixed_effects(printed.out)
    assert list(table.index) == ["(Intercept)", "Days"] and 5 < table.loc["Days", "estimate"] < 15


def test_outputs_are_replaced_atomically_when_the_disk_fills(sleep_csv, tmp_path, capsys, monkeypatch):
    """estimates.nc is written beside its target and renamed: a failed write keeps the earlier results."""
    from bayeshlm.results import storage

    out = tmp_path / "out"
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--out", str(out)]) == 0
    before = (out / "estimates.nc").read_bytes()

    def disk_full(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "_write_bytes", disk_full)
    assert main(["fit", "--data", sleep_csv, "--formula", SLEEP, "--method", "ml", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "could not write" in err and "No space left on device" in err and "Traceback" not in err
    assert (out / "estimates.nc").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part")]
