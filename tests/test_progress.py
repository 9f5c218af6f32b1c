"""Progress on long work (issue 28): the first Bayesian fit says what it is doing within a second, one line per step
on standard error; nothing prints by default under pytest or in a pipe, and progress=False silences it."""

import subprocess
import sys
import time

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm import progress


def test_steps_print_with_their_time_only_when_shown(capsys, monkeypatch):
    progress.step("outside any report")
    with progress.reporting(False, "silenced"):
        progress.step("still silenced")
    assert capsys.readouterr().err == ""
    clock = iter([10.0, 10.0, 13.25, 13.5])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with progress.reporting(True, "loading..."):
        progress.step("compiling...")
    assert capsys.readouterr().err.splitlines() == [
        "bayeshlm [  0.0 s] loading...", "bayeshlm [  3.2 s] compiling...", "bayeshlm [  3.5 s] done"]
    progress.step("after the report")
    assert capsys.readouterr().err == ""


def test_default_is_off_under_pytest_and_in_pipes(monkeypatch):
    assert progress.shown(None) is False  # PYTEST_CURRENT_TEST is set
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.setattr(sys, "stderr", open(__file__))  # not a terminal
    assert progress.shown(None) is False
    import ipykernel  # noqa: F401  (imported, as after executing notebooks, but this is no notebook)

    assert progress.shown(None) is False
    assert progress.shown(True) is True and progress.shown(False) is False and progress.shown(np.True_) is True


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_progress_takes_true_false_or_none(value):
    with pytest.raises(bh.OptionError, match=r"progress=.*: give True \(show what the fit is doing\), False"):
        bh.HLM("Reaction ~ Days + (1 | Subject)", bh.datasets.load("sleepstudy")).fit("bayes", progress=value)


PROBE = """
import sys, time
import bayeshlm as bh
model = bh.HLM("Reaction ~ Days + (Days | Subject)", bh.datasets.load("sleepstudy"))
print("READY", file=sys.stderr, flush=True)
model.fit("bayes", draws=20, tune=20, chains=1, progress=True)
"""


def test_a_bayesian_fit_says_what_it_does_within_a_second():
    """The first Bayesian fit was silent for 34 s (compile); now its first line comes before PyMC even loads. The
    probe stops at that line (no sampling)."""
    child = subprocess.Popen([sys.executable, "-c", PROBE], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             text=True)
    try:
        assert child.stderr.readline().strip() == "READY"
        started = time.perf_counter()
        first = child.stderr.readline()
        waited = time.perf_counter() - started
    finally:
        child.kill()
        child.wait()
    assert first.startswith("bayeshlm [  0.0 s] full Bayes: loading PyMC and building the model")
    assert waited < 1.0
