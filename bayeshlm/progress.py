"""Progress lines for long work (issue 28): what a fit is doing, as one line per step on standard error, each with
the seconds since the work began, e.g.::

    bayeshlm [  0.0 s] full Bayes: loading PyMC and building the model...
    bayeshlm [  3.1 s] preparing the sampler (compiled once for this machine and cached; the first time ~10-60 s)...
    bayeshlm [ 12.9 s] sampling 4 chains x 2000 iterations (1000 tuning) on 2 cores...
    bayeshlm [ 17.1 s] done

Standard error keeps standard output (reports, tables) clean for pipes. Shown by default in a terminal or a
notebook; not in scripts whose output is redirected nor under pytest (``progress=True`` shows it anywhere,
``progress=False`` or ``progressbar=False`` silences it). Code doing long work announces a step with
:func:`step`; nothing prints outside a :func:`reporting` block or when it is off.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import numpy as np

from .errors import OptionError

_active: list[_Reporter] = []


class _Reporter:
    def __init__(self, stream):
        self.stream = stream
        self.start = time.perf_counter()

    def say(self, message: str) -> None:
        elapsed = time.perf_counter() - self.start
        print(f"bayeshlm [{elapsed:5.1f} s] {message}", file=self.stream, flush=True)


def shown(progress: bool | None) -> bool:
    """``progress`` as given; None (the default): on in a notebook or when standard error is a terminal, off
    under pytest."""
    if progress is not None and not isinstance(progress, bool | np.bool_):
        raise OptionError(f"progress={progress!r}: give True (show what the fit is doing), False (silent) or None "
                          "(shown in a terminal or notebook).")
    if progress is not None:
        return bool(progress)
    if "PYTEST_CURRENT_TEST" in os.environ:
        return False
    if _in_notebook():
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (an IPython shell running over ZMQ), not merely when IPython or ipykernel has
    been imported (a test run that executes notebooks imports them too)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


@contextmanager
def reporting(progress: bool | None, first: str | None = None):
    """Report the steps announced inside the block when ``shown(progress)``; ``first`` is said at once, and
    "done" at the end of a block that finishes."""
    if not shown(progress):
        yield
        return
    reporter = _Reporter(sys.stderr)
    _active.append(reporter)
    try:
        if first:
            reporter.say(first)
        yield
        reporter.say("done")
    finally:
        _active.remove(reporter)


def step(message: str) -> None:
    """Announce the next step of the work in progress (nothing when no report is on)."""
    if _active:
        _active[-1].say(message)


LOADING = "full Bayes: loading PyMC and building the model..."
COMPILING = "preparing the sampler (compiled once for this machine and cached; the first time takes ~10-60 s)..."


def sampling(chains: int, draws: int, tune: int, cores: int) -> str:
    """The announcement of an MCMC run."""
    return (f"sampling {chains} chain{'s' * (chains != 1)} x {draws + tune} iterations ({tune} tuning) on {cores} "
            f"core{'s' * (cores != 1)}...")
