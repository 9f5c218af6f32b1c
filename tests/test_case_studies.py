"""Every case study runs top to bottom as a script (jupytext percent format), with reduced draws.

A case study fails if any cell raises, including its own checks of reproduced numbers against the book
(``BookComparison.check``). ``BAYESHLM_CASE_DRAWS`` sets the draws per chain (default 200 here).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CASE_STUDIES = sorted((Path(__file__).parent.parent / "case_studies").glob("[0-9]*.py"))


@pytest.mark.case_study
@pytest.mark.parametrize("path", CASE_STUDIES, ids=[p.stem for p in CASE_STUDIES])
def test_case_study_runs_and_reproduces_its_numbers(path):
    env = dict(os.environ, MPLBACKEND="Agg", BAYESHLM_DRAWS=os.environ.get("BAYESHLM_CASE_DRAWS", "200"))
    result = subprocess.run([sys.executable, path.name], cwd=path.parent, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
