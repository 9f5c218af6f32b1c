"""The compiled part of bayeshlm: the two-level Gaussian kernel built ahead of time (bayeshlm/bayes/kernel.py
uses it for the commonest model shape instead of compiling its Numba callback on a first fit; issue 27).
Everything else is configured in pyproject.toml. ``optional=True``: without a C compiler the install goes on
and the kernel falls back to Numba."""

import sys

from setuptools import Extension, setup

setup(ext_modules=[Extension("bayeshlm.bayes._two_level_kernel", ["bayeshlm/bayes/_two_level_kernel.c"],
                             extra_compile_args=[] if sys.platform == "win32" else ["-O3"], optional=True)])
