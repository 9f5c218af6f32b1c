"""Peer results the case studies set beside bayeshlm's: lme4 (lmer, glmer) and nlme fits of bundled datasets.

The numbers are copied from the test fixtures written by ``tests/reference/make_reference.R`` and
``tests/reference/glmm/make_glmm_reference.R`` (R 4.2.2, lme4 1.1-31, nlme 3.1-162) by
``tests/reference/extract_case_study_reference.py``, so a notebook copied out
of the repository still checks itself; the test suite fails if the copy and the fixtures differ.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from ..errors import OptionError, closest_names


@cache
def _all() -> dict:
    with resources.files(__package__).joinpath("data", "peer_reference.json").open("rb") as handle:
        return json.load(handle)


def peer_reference(peer: str, model: str) -> dict:
    """The recorded ``peer`` fit (``"lme4"``, ``"nlme"`` or ``"glmer"``) of ``model``, e.g. ``"scotssec_reml"``."""
    fits = _all()
    if peer not in fits:
        raise OptionError(f"No reference results from {peer!r}.{closest_names(peer, fits)} Peers: {', '.join(fits)}.")
    if model not in fits[peer]:
        raise OptionError(f"No {peer} reference for {model!r}.{closest_names(model, fits[peer])} "
                          f"Recorded: {', '.join(fits[peer])}.")
    return fits[peer][model]
