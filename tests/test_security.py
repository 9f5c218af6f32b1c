"""A model file is data, never code (issue 21).

Every payload would create a marker file if any of it were evaluated as Python; each is tried in every
place a user expression enters (model-file fields and the Python API) and must raise a bayeshlm error
while the marker stays absent. Then: data paths outside the model file's folder are refused without
echoing the file, CSV errors do not quote contents, the CLI strips control characters, and the API's
``unsafe_formula=True`` opt-out works while a model file cannot set it. Design building and REML only.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.cli import main

TOUCH = "__import__('pathlib').Path(MARK_Q).touch()"  # MARK_Q: the quoted marker path, MARK_RAW: unquoted

# Python-expression payloads: each creates the marker if evaluated
PAYLOADS = {
    "attribute chain": "I(x + 0*x.__class__.__init__.__globals__['__builtins__']['__import__']('pathlib')"
                       ".Path(MARK_Q).touch())",
    "import via call": f"I(x + 0*len(str({TOUCH})))",
    "dunder name": "I(__builtins__['__import__']('pathlib').Path(MARK_Q).touch())",
    "subscript": "I(x + 0*len(str(vars(__import__('pathlib'))['Path'](MARK_Q).touch())))",
    "lambda": f"I((lambda: {TOUCH})())",
    "comprehension": f"I(x + 0*len([{TOUCH} for _ in [0]]))",
    "python block": f"{{{TOUCH}}}",
    "python block attribute": "{x.__class__.__init__.__globals__['__builtins__']['__import__']('pathlib')"
                              ".Path(MARK_Q).touch()}",
    "backtick trick": "I(`x`.__class__.__init__.__globals__['__builtins__']['__import__']('pathlib')"
                      ".Path(MARK_Q).touch())",
    "backtick inside quotes": "I('`' + x.__class__.__init__.__globals__['__builtins__']['__import__']"
                              "('pathlib').Path(MARK_Q).touch() + '`')",
    "nested I()": f"I(I(x) + I({TOUCH}))",
    "np attribute": "np.__builtins__['__import__']('pathlib').Path(MARK_Q).touch()",
    "allowed function, bad keyword": f"C(x, levels={TOUCH})",
    "double-star keywords": f"C(x, **{{'levels': {TOUCH}}})",
    "starred argument": f"I(*[{TOUCH}])",
    "walrus": f"I((z := {TOUCH}))",
    "f-string": f"I(f'{{{TOUCH}}}')",
    "eval of text": "I(eval(\"__import__('pathlib').Path(MARK_Q).touch()\"))",
    "conditional": f"I(x if {TOUCH} else x)",
    "os.system via attribute chain": "I(x + 0*x.__class__.__init__.__globals__['__builtins__']['__import__']('os')"
                                     ".system('touch MARK_RAW'))",
    "pandas @ variable": "@pd.io.common.os.system('touch MARK_RAW')",
    "pandas @ variable, concatenated": "@pd.io.common.os.system('touch ' + MARK_Q)",
    "pandas attribute": "x.__class__.__init__.__globals__['__builtins__']['__import__']('os').system('touch MARK_RAW')",
}

# where an expression enters a model file: (description, TOML text with {P} for the payload)
DATA = 'data = "d.csv"\n'
MODEL_FILE_FIELDS = {
    "formula fixed part": DATA + 'formula = """y ~ {P} + (1 | g)"""\n',
    "formula random part": DATA + 'formula = """y ~ x + ({P} | g)"""\n',
    "formula outcome": DATA + 'formula = """{P} ~ x + (1 | g)"""\n',
    "level1": DATA + '[levels]\nlevel1 = """y ~ {P}"""\ngroups = "g"\nlevel2 = {{ intercept = "~ 1" }}\n',
    "level2": DATA + '[levels]\nlevel1 = "y ~ x"\ngroups = "g"\nlevel2 = {{ intercept = """~ {P}""" }}\n',
    "level3": DATA + '[levels]\nlevel1 = "y ~ x"\ngroups = ["g", "h"]\nlevel2 = {{ intercept = "~ 1" }}\n'
                     'level3 = {{ intercept = """~ {P}""" }}\n',
    "random": DATA + '[levels]\nlevel1 = "y ~ x"\ngroups = "g"\nlevel2 = {{ intercept = "~ 1" }}\n'
                     'random = ["""{P}"""]\n',
    "level1_variance": DATA + 'formula = "y ~ x + (1 | g)"\nlevel1_variance = """~ {P}"""\n',
    "data_columns": DATA + 'formula = "y ~ x + (1 | g)"\n[data_columns]\nz = """{P}"""\n',
    "subset": DATA + 'formula = "y ~ x + (1 | g)"\nsubset = """{P}"""\n',
}

CLEAR = re.compile(r"not allowed|not a valid expression|cannot be used|Cannot read|Cannot parse|is not a level-1 "
                   r"coefficient|is not a column")


def frame(n_groups: int = 6, per_group: int = 8, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per_group)
    x = rng.normal(size=g.size)
    return pd.DataFrame({"y": 1 + 0.5 * x + rng.normal(size=n_groups)[g] + rng.normal(size=g.size),
                         "x": x, "g": g.astype(str), "h": (g // 2).astype(str),
                         "w": rng.normal(size=n_groups)[g]})


def payload(name: str, marker: Path) -> str:
    return PAYLOADS[name].replace("MARK_Q", repr(str(marker))).replace("MARK_RAW", str(marker))


def assert_refused(call, marker: Path) -> None:
    try:
        call()
        outcome = None
    except Exception as err:  # checked below: it must be a bayeshlm error, raised before anything ran
        outcome = err
    assert not marker.exists(), "the payload was executed"
    assert isinstance(outcome, bh.InputError), f"not refused with a bayeshlm error: {outcome!r}"
    assert CLEAR.search(str(outcome)), str(outcome)


@pytest.fixture()
def model_dir(tmp_path):
    frame().to_csv(tmp_path / "d.csv", index=False)
    return tmp_path


@pytest.mark.parametrize("name", PAYLOADS)
@pytest.mark.parametrize("field", MODEL_FILE_FIELDS)
def test_model_file_payloads_are_refused_and_not_run(field, name, model_dir):
    marker = model_dir / "marker"
    path = model_dir / "m.toml"
    path.write_text(MODEL_FILE_FIELDS[field].format(P=payload(name, marker)))
    assert_refused(lambda: bh.load_model(path), marker)


API_FIELDS = {
    "HLM fixed part": lambda p, d: bh.HLM(f"y ~ {p} + (1 | g)", d),
    "HLM random part": lambda p, d: bh.HLM(f"y ~ x + ({p} | g)", d),
    "HLM level1_variance": lambda p, d: bh.HLM("y ~ x + (1 | g)", d, level1_variance=f"~ {p}"),
    "from_levels level1": lambda p, d: bh.HLM.from_levels(f"y ~ {p}", {"intercept": "~ 1"}, groups="g", data=d),
    "from_levels level2": lambda p, d: bh.HLM.from_levels("y ~ x", {"intercept": f"~ {p}"}, groups="g", data=d),
    "from_levels level3": lambda p, d: bh.HLM.from_levels("y ~ x", {"intercept": "~ 1"}, groups=["g", "h"], data=d,
                                                          level3={"intercept": f"~ {p}"}),
    "growth fixed part": lambda p, d: bh.growth.UnrestrictedFit(d.assign(t=d.index % 8), "y", "t", "g", f"~ {p}",
                                                                "ml"),
    "meta formula": lambda p, d: bh.meta(f"y ~ {p}", d.assign(v=0.1, s=d.index.astype(str)), vi="v", study="s"),
}


@pytest.mark.parametrize("name", PAYLOADS)
@pytest.mark.parametrize("field", API_FIELDS)
def test_api_payloads_are_refused_and_not_run(field, name, tmp_path):
    marker = tmp_path / "marker"
    data = frame()
    assert_refused(lambda: API_FIELDS[field](payload(name, marker), data), marker)


def test_dask_input_checks_the_formula_too(tmp_path):
    dd = pytest.importorskip("dask.dataframe")
    marker = tmp_path / "marker"
    ddf = dd.from_pandas(frame(), npartitions=2)
    assert_refused(lambda: bh.HLM(f"y ~ {payload('attribute chain', marker)} + (1 | g)", ddf), marker)


def test_a_spec_edited_after_parsing_is_checked_again_before_formulaic_runs(tmp_path):
    import dataclasses

    from bayeshlm.design import build_design

    marker = tmp_path / "marker"
    spec = bh.HLM("y ~ x + (1 | g)", frame()).spec
    with pytest.raises(bh.FormulaError, match="not allowed"):  # the spec refuses a payload term...
        dataclasses.replace(spec, fixed=((), (payload("import via call", marker),)))
    object.__setattr__(spec, "fixed", ((), (payload("import via call", marker),)))  # ...even forced in
    assert_refused(lambda: build_design(spec, frame()), marker)


def test_messages_name_the_offending_piece_and_the_allowed_functions():
    data = frame()
    with pytest.raises(bh.FormulaError, match=r"attribute access '\.__class__' is not allowed in formula term "
                                              r"'I\(x \+ x\.__class__\)' \(the fixed effects\).*functions I, C, "):
        bh.HLM("y ~ I(x + x.__class__) + (1 | g)", data)
    with pytest.raises(bh.FormulaError, match=r"Write log\(\.\.\.\) instead of np\.log\(\.\.\.\)"):
        bh.HLM("y ~ np.log(x + 5) + (1 | g)", data)
    with pytest.raises(bh.FormulaError, match=r"the function 'getattr' is not allowed"):
        bh.HLM("y ~ I(getattr(x, 'size')) + (1 | g)", data)
    with pytest.raises(bh.FormulaError, match=r"constant power '10 \*\* 10 \*\* 10'"):
        bh.HLM("y ~ I(x + 10**10**10) + (1 | g)", data)  # would hang Python's integer arithmetic


REFUSED = ["I(x)(1)", "C(x)[0]", "log(x, x)", "log(x, out=x)", "I(x, x)", "C(g, contr)", "poly(x, degree=np)",
           "center(x, _state=x)", "I(x if x else x)", "I(not x)", "I(x and x)", "I(x @ x)", "I(x is x)", "I(x in x)",
           "I(...)", "I(b'a')", "I({'a': x})", "I(x[::1])", "I(\uff58.__class__)", "I(\uff3f\uff3fimport\uff3f\uff3f)",
           "I(x * 'a')", "I(len(x))", "I(__builtins__)", "Q('x')", "lag(x)", "I(x.size)",
           "poly(x, 10**6)", "poly(x, 51)", "bs(x, df=1000)", "cr(x, df=x)", "poly(x, True)"]  # a basis of 1e6 columns


@pytest.mark.parametrize("term", REFUSED)
def test_other_expressions_outside_the_allow_list_are_refused(term):
    with pytest.raises(bh.FormulaError, match="not allowed|not a valid expression|Cannot parse"):
        bh.HLM(f"y ~ {term} + (1 | g)", frame())


ALLOWED = ["I(x**2)", "log(x + 5)", "log2(x + 5)", "log10(x + 5)", "exp(x)", "sqrt(x + 5)", "abs(x)",
           "C(h)", "C(h, Treatment('1'))", "C(h, Sum)", "C(h, Sum())", "C(h, levels=['2', '1', '0'])",
           "center(x)", "scale(x)", "standardize(x)", "poly(x, degree=2)", "bs(x, df=4)", "cr(x, df=4) - 1",
           "I(x > 0)", "I(-x / 2 + 1)", "I(x * 10**6)", "x:w", "I(2**-1 * x)"]


@pytest.mark.parametrize("term", ALLOWED)
def test_allowed_terms_build_a_design(term):
    design = bh.HLM(f"y ~ {term} + (1 | g)", frame()).design
    assert design.X.shape[0] == 48 and np.isfinite(design.X).all()


def test_every_formula_in_the_model_files_loads():
    for path in sorted((Path(__file__).parent.parent / "models").glob("*.toml")):
        assert bh.load_model(path).design.n_obs > 0, path


# --- the API opt-out ------------------------------------------------------------------------------------

def test_unsafe_formula_opt_out_works_in_the_api():
    data = frame().assign(x=lambda d: d["x"] + 5)
    with pytest.raises(bh.FormulaError):
        bh.HLM("y ~ np.log(x) + (1 | g)", data)
    unsafe = bh.HLM("y ~ np.log(x) + (1 | g)", data, unsafe_formula=True).fit("reml")
    safe = bh.HLM("y ~ log(x) + (1 | g)", data).fit("reml")
    np.testing.assert_allclose(unsafe.deviance, safe.deviance, rtol=1e-12)
    levels = bh.HLM.from_levels("y ~ np.log(x)", {"intercept": "~ 1"}, groups="g", data=data, unsafe_formula=True)
    assert levels.spec == bh.HLM("y ~ np.log(x) + (1 | g)", data, unsafe_formula=True).spec


@pytest.mark.parametrize("where", ["top", "levels", "fit"])
def test_a_model_file_cannot_opt_out(where, model_dir):
    text = {"top": DATA + 'unsafe_formula = true\nformula = "y ~ x + (1 | g)"\n',
            "levels": DATA + '[levels]\nlevel1 = "y ~ x"\ngroups = "g"\nunsafe_formula = true\n',
            "fit": DATA + 'formula = "y ~ x + (1 | g)"\n[fit]\nunsafe_formula = true\n'}[where]
    (model_dir / "m.toml").write_text(text)
    with pytest.raises(bh.OptionError, match="unsafe_formula cannot be set in a model file"):
        bh.load_model(model_dir / "m.toml")


# --- data_columns and subset --------------------------------------------------------------------------------

@pytest.mark.parametrize(("expression", "expected"), [
    ("x**2 + 1", lambda d: d["x"] ** 2 + 1),
    ("log(x + 5) - sqrt(abs(x)) * exp(-x)", lambda d: np.log(d["x"] + 5) - np.sqrt(np.abs(d["x"])) * np.exp(-d["x"])),
    ("`x` / 2 // 1 % 3", lambda d: d["x"] / 2 // 1 % 3),
])
def test_data_columns_are_computed_like_pandas_did(expression, expected, model_dir):
    (model_dir / "m.toml").write_text(DATA + f'formula = "y ~ z + (1 | g)"\n[data_columns]\nz = "{expression}"\n')
    model = bh.load_model(model_dir / "m.toml")
    np.testing.assert_allclose(model.data["z"], expected(frame()), rtol=1e-15)


@pytest.mark.parametrize(("subset", "keep"), [
    ("g in [1, 2]", lambda d: d["g"].isin([1, 2])),
    ("g not in (1, 2) and x > -1", lambda d: ~d["g"].isin([1, 2]) & (d["x"] > -1)),
    ("not (x < 0) or h == 0", lambda d: (d["x"] >= 0) | (d["h"] == 0)),
    ("-1 < x <= 1", lambda d: (d["x"] > -1) & (d["x"] <= 1)),
])
def test_subset_selects_the_rows_pandas_query_did(subset, keep, model_dir):
    (model_dir / "m.toml").write_text(DATA + f'formula = "y ~ x + (1 | g)"\nsubset = "{subset}"\n')
    model = bh.load_model(model_dir / "m.toml")
    data = pd.read_csv(model_dir / "d.csv")
    assert list(model.data.index) == list(data.index[keep(data)]) == list(data.query(subset).index)
    assert 0 < len(model.data) < len(data)


def test_restricted_evaluator_limits():
    from bayeshlm.spec.expressions import evaluate

    data = frame()
    with pytest.raises(bh.OptionError, match="cannot compute"):
        evaluate("10**10**10", data, "z")  # float arithmetic: overflow, not a hang
    with pytest.raises(bh.OptionError, match="'xx' in 'xx > 1' is not a column. Did you mean 'x'"):
        evaluate("xx > 1", data, "subset")
    with pytest.raises(bh.OptionError, match="arithmetic on text"):
        evaluate("'a' * 100000000", data, "z")


# --- data paths -------------------------------------------------------------------------------------------

SECRET = "TOP-SECRET-FIRST-LINE"


@pytest.fixture()
def outside(tmp_path):
    """A model folder and, beside it, a file holding a secret first line."""
    models = tmp_path / "models"
    models.mkdir()
    frame().to_csv(models / "d.csv", index=False)
    secret = tmp_path / "secret.csv"
    secret.write_text(f"{SECRET}\n1\n")
    return models, secret


@pytest.mark.parametrize("kind", ["relative", "absolute", "symlink", "symlinked folder"])
def test_data_paths_outside_the_model_folder_are_refused_without_echo(kind, outside, capsys):
    models, secret = outside
    if kind == "symlink":
        (models / "link.csv").symlink_to(secret)
    if kind == "symlinked folder":
        (models / "up").symlink_to(secret.parent, target_is_directory=True)
    data = {"relative": "../secret.csv", "absolute": str(secret), "symlink": "link.csv",
            "symlinked folder": "up/secret.csv"}[kind]
    path = models / "m.toml"
    path.write_text(f'data = "{data}"\nformula = "y ~ x + (1 | g)"\n')
    with pytest.raises(bh.OptionError, match="outside the model file's folder|absolute path") as caught:
        bh.load_model(path)
    assert SECRET not in str(caught.value)
    assert main(["fit", str(path)]) == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "outside" in captured.err or "absolute path" in captured.err


def test_data_root_allows_a_folder(outside, capsys):
    models, secret = outside
    frame().to_csv(secret.parent / "shared.csv", index=False)
    path = models / "m.toml"
    path.write_text('data = "../shared.csv"\nformula = "y ~ x + (1 | g)"\n')
    with pytest.raises(bh.OptionError, match="outside"):
        bh.load_model(path)
    assert bh.load_model(path, data_root=secret.parent).design.n_obs == 48
    assert main(["fit", str(path), "--data-root", str(secret.parent)]) == 0
    assert "deviance" in capsys.readouterr().out
    path.write_text(f'data = "{secret.parent / "shared.csv"}"\nformula = "y ~ x + (1 | g)"\n')
    assert bh.load_model(path, data_root=secret.parent).design.n_obs == 48  # absolute, inside the root
    with pytest.raises(bh.OptionError, match="outside the data root"):
        bh.load_model(path, data_root=models)


@pytest.mark.parametrize(("content", "error", "message"), [
    (None, bh.OptionError, "no such file"),
    (f"{SECRET}\n".encode() + bytes(range(256)) * 4, bh.DataError, "not UTF-8|cannot be read as CSV"),
    (b"", bh.DataError, "is empty"),
    (SECRET.encode() + b"\xff\xfe\x00\x81\n1\n", bh.DataError, "not UTF-8"),
    (f"a,b\n1,2\n{SECRET},2,3,4\n".encode(), bh.DataError, "cannot be read as CSV"),
    ("dir", bh.OptionError, "is not a file"),
])
def test_unreadable_data_files_are_explained_without_their_contents(content, error, message, tmp_path):
    target = tmp_path / "d.csv"
    if content == "dir":
        target.mkdir()
    elif content is not None:
        target.write_bytes(content)
    (tmp_path / "m.toml").write_text(DATA + 'formula = "y ~ x + (1 | g)"\n')
    with pytest.raises(error, match=message) as caught:
        bh.load_model(tmp_path / "m.toml")
    assert SECRET not in str(caught.value)


# --- terminal control characters ------------------------------------------------------------------------------

def toml_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cc" else c for c in text)


NASTY = "\x1b[2J\x1b[H\x07Evil\r title\x9b31m\x08"
CONTROL = "\x1b\x07\r\x9b\x08"


def test_cli_strips_control_characters_from_file_text(model_dir, capsys):
    (model_dir / "m.toml").write_text(DATA + f'title = "{toml_escaped(NASTY)}"\nformula = "y ~ x + (1 | g)"\n')
    assert main(["fit", str(model_dir / "m.toml"), "--out", str(model_dir / "out")]) == 0
    out = capsys.readouterr().out
    assert "[2J[HEvil title31m" in out and not any(c in out for c in CONTROL)
    assert not any(c in (model_dir / "out" / "report.txt").read_text() for c in CONTROL)


def test_cli_strips_control_characters_from_error_messages(model_dir, capsys):
    data = frame().rename(columns={"w": f"w{NASTY}"})  # listed in 'not a column' messages
    data.to_csv(model_dir / "d.csv", index=False)
    (model_dir / f"m{NASTY}.toml").write_text(DATA + 'formula = "y ~ xx + (1 | g)"\n')
    assert main(["fit", str(model_dir / f"m{NASTY}.toml")]) == 2
    err = capsys.readouterr().err
    assert "'xx' is not a column" in err and "Evil title" in err and not any(c in err for c in CONTROL)


def test_cli_strips_control_characters_from_warnings(monkeypatch, capsys):
    import warnings

    import bayeshlm.cli as cli

    def noisy_list():
        warnings.warn(f"group {NASTY}", UserWarning, stacklevel=1)
        return pd.DataFrame()

    monkeypatch.setattr(cli.datasets, "list", noisy_list)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["datasets"]) == 0
    err = capsys.readouterr().err
    assert "UserWarning" in err and "Evil title" in err and not any(c in err for c in CONTROL)
    assert warnings.showwarning is before


@pytest.mark.parametrize("term", ["exp(x * 1000)", "I(x**10**10)", "I(10**x * 1e308)"])
def test_an_allowed_expression_that_overflows_is_explained(term):
    # was a raw LinAlgError ('SVD did not converge') at fit time
    with pytest.raises(bh.DataError, match=r"column '.*' is infinite in rows? .* its expression overflows"):
        bh.HLM(f"y ~ {term} + (1 | g)", frame())


@pytest.mark.parametrize("name", PAYLOADS)
def test_cli_describe_refuses_payloads(name, tmp_path, capsys):
    marker = tmp_path / "marker"
    assert main(["describe", "sleepstudy", f"Reaction ~ {payload(name, marker).replace('x', 'Days')} + "
                 "(1 | Subject)"]) == 2
    assert not marker.exists()
    assert CLEAR.search(capsys.readouterr().err)
