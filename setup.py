"""The compiled parts of bayeshlm, built ahead of time by ``pip install`` (issue 27): every C file named
``bayeshlm/<package>/_<name>.c`` becomes the extension module ``bayeshlm.<package>._<name>``. The Python side
checks each module's buffer layout before using it and falls back to Numba (or NumPy) when it is missing, so the
build is ``optional=True``: without a C compiler the install goes on. Everything else is in pyproject.toml."""

import sys
from pathlib import Path

from setuptools import Extension, setup

FLAGS = [] if sys.platform == "win32" else ["-O3"]
SOURCES = sorted(Path("bayeshlm").glob("*/_*.c"))

setup(ext_modules=[Extension(".".join(source.with_suffix("").parts), [source.as_posix()], extra_compile_args=FLAGS,
                             optional=True) for source in SOURCES])
