"""Sphinx configuration of the bayeshlm documentation.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    .venv/bin/sphinx-build -W -b html docs docs/build/html

The case studies (``case_studies/*.py``, jupytext percent format, linked into ``docs/case_studies``) are
notebooks. Two fitted by likelihood only (6 and 8: a few seconds each) are executed during the build, in a
temporary folder, so their pages show tables and figures. The others sample posteriors for minutes, too slow
for every build and for CI, where tests/test_case_studies.py already executes each one as a notebook (2 is
quick but adds only time), so their pages show code and text only. ``BAYESHLM_DOCS_EXECUTE=all`` executes
every case study (``BAYESHLM_DRAWS`` sets the draws); MyST-NB keeps the outputs in ``docs/build/.jupyter_cache``
and reruns a notebook only when its source changes.
"""

import os
from importlib.metadata import version as _version

project = "bayeshlm"
author = "bayeshlm developers"
copyright = "2026, bayeshlm developers"
release = _version("bayeshlm")
version = release

extensions = [
    "myst_nb",  # Markdown pages (MyST) and the case studies as notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # NumPy- and Google-style sections in docstrings
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "myst-nb", ".py": "myst-nb"}
# A case study is a notebook in jupytext's percent format.
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = "cache"
nb_execution_cache_path = "build/.jupyter_cache"
nb_execution_in_temp = True  # a case study must not depend on files beside it
nb_execution_timeout = 1800
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# Markdown pages are not notebooks; the Bayesian case studies are rendered without running them (see above).
nb_execution_excludepatterns = ["*.md"]
if os.environ.get("BAYESHLM_DOCS_EXECUTE") != "all":
    nb_execution_excludepatterns += ["01_*", "02_*", "03_*", "04_*", "05_*", "07_*"]

exclude_patterns = ["build", "conf.py", "**/__pycache__", "**/.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False

html_theme = "furo"
html_title = f"bayeshlm {release}"
