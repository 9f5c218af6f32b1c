"""Every case study runs top to bottom as a Jupyter notebook, with reduced draws, outside the repository.

Each file in case_studies/ (jupytext percent format) is turned into a notebook and executed by nbclient on
the ``python3`` kernel in a temporary folder, so a notebook copied out of the repository must work. A case
study fails if any cell raises, including its own checks of reproduced numbers against the book or a peer
(``BookComparison.check``), or if a figure cell (one calling ``bh.plots``, ArviZ's ``az.plot_*`` or
``plt.subplots``) shows no picture. ``BAYESHLM_CASE_DRAWS`` sets the draws per chain (default 200 here).
"""

import json
import os
import re
from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

from bayeshlm.datasets.references import _all as shipped_references

ROOT = Path(__file__).parent.parent
CASE_STUDIES = sorted((ROOT / "case_studies").glob("[0-9]*.py"))
# a cell that draws: a line calling bayeshlm's or ArviZ's plots (its result possibly assigned) or plt.subplots
PLOT_CALL = re.compile(r"^(\w+ = )?(bh\.plots\.|az\.plot_)|^\w+, \w+ = plt\.subplots\(", re.MULTILINE)


@pytest.mark.case_study
@pytest.mark.parametrize("path", CASE_STUDIES, ids=[p.stem for p in CASE_STUDIES])
def test_case_study_runs_as_a_notebook_and_reproduces_its_numbers(path, tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESHLM_DRAWS", os.environ.get("BAYESHLM_CASE_DRAWS", "200"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend must draw the figures
    notebook = jupytext.read(path)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code" and PLOT_CALL.search(cell.source):
            kinds = {kind for output in cell.outputs for kind in output.get("data", {})}
            assert "image/png" in kinds, f"{path.name}: the cell {cell.source[:60]!r} shows no figure ({kinds})"


def test_shipped_peer_numbers_equal_the_r_fixtures():
    """The case studies check against a copy of the R fixtures shipped in the package; the copy must not drift."""
    fixtures = {"lme4": "lme4_reference.json", "nlme": "nlme_reference.json", "glmer": "glmm/glmm_reference.json"}
    shipped = shipped_references()
    for peer, models in shipped.items():
        fixture = json.loads((ROOT / "tests" / "reference" / fixtures[peer]).read_text())
        for model, numbers in models.items():
            assert numbers == fixture[model], f"{peer} {model}: rerun tests/reference/extract_case_study_reference.py"
