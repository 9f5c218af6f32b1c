"""Running NUTS: nutpie (default) or PyMC's sampler, with compiled models cached in-process.

Compilation dominates the cost of a small model (stack notes: 65-90 s cold with PyTensor's Numba backend,
seconds warm). nutpie compiles a model once; :func:`compiled_nutpie_model` keeps the compiled model per
graph key (structure, shapes, prior families; see :class:`~bayeshlm.bayes.build.ModelInfo`) and swaps in
new data and prior hyperparameters with ``CompiledModel.with_data``, so a refit with another seed, other
draws, or other data of the same shapes does not recompile (HS&B refit: 0.8 s in total).

Measured limits (2 shared cores, PyTensor 3.3, nutpie 0.16.11): PyTensor's on-disk cache helps little for
nutpie, whose compile_pymc_model wraps the PyTensor functions in two ``numba.cfunc`` callbacks compiled
without a cache (cProfile: about 51 of 70 s in numba's ``ccallback._compile_uncached``), so every new process
pays about 50-60 s before sampling, cold cache or warm. PyMC's own sampler reuses PyTensor's cached Numba
code (a few seconds warm) but samples more slowly. Driving nutpie with PyTensor's C backend through
``nutpie.compiled_pyfunc.from_pyfunc`` was tried and dropped: the Python callbacks made sampling 50-100 s.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pymc as pm
import xarray as xr

from ..errors import OptionError
from .build import ModelInfo

SAMPLERS = ("nutpie", "pymc")
_NUTPIE_CACHE: dict[tuple, object] = {}


def compiled_nutpie_model(model: pm.Model, info: ModelInfo):
    """The nutpie-compiled model for ``info.key``, compiling only on the first request in this process."""
    import nutpie

    compiled = _NUTPIE_CACHE.get(info.key)
    if compiled is None:
        compiled = nutpie.compile_pymc_model(model, backend="numba", freeze_model=False)
        _NUTPIE_CACHE[info.key] = compiled
        return compiled, False
    return compiled.with_data(**info.data), True


def run_sampler(model: pm.Model, info: ModelInfo, *, sampler: str, draws: int, tune: int, chains: int,
                seed: int, target_accept: float, progressbar: bool) -> tuple[xr.DataTree, dict]:
    """Sample the posterior; return the DataTree and a record of how (sampler, cores, seed, times)."""
    if sampler not in SAMPLERS:
        raise OptionError(f"sampler={sampler!r}: use 'nutpie' (default) or 'pymc'.")
    for name, value in (("draws", draws), ("tune", tune), ("chains", chains)):
        whole = isinstance(value, int | np.integer | float) and not isinstance(value, bool) and int(value) == value
        if not whole or value < (0 if name == "tune" else 1):
            raise OptionError(f"{name}={value!r}: give a positive whole number.")
    if not 0 < target_accept < 1:
        raise OptionError(f"target_accept={target_accept!r}: give a number between 0 and 1 (e.g. 0.9).")
    cores = min(chains, os.cpu_count() or 1)
    start = time.perf_counter()
    if sampler == "nutpie":
        import nutpie

        compiled, reused = compiled_nutpie_model(model, info)
        compiled_at = time.perf_counter()
        tree = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=seed,
                             progress_bar=progressbar, target_accept=target_accept)
    else:
        reused = False
        compiled_at = start
        with model:
            tree = pm.sample(draws=draws, tune=tune, chains=chains, cores=cores, random_seed=seed,
                             nuts_sampler="pymc", nuts={"target_accept": target_accept},
                             progressbar=progressbar, compute_convergence_checks=False)
    end = time.perf_counter()
    record = {"sampler": sampler, "draws": draws, "tune": tune, "chains": chains, "cores": cores, "seed": seed,
              "target_accept": target_accept, "compiled_model_reused": reused,
              # PyMC's sampler compiles inside pm.sample: its compile time is part of sampling_seconds
              "compile_seconds": round(compiled_at - start, 3) if sampler == "nutpie" else None,
              "sampling_seconds": round(end - compiled_at, 3)}
    return tree, record


def new_seed() -> int:
    """A fresh seed from OS entropy, recorded in the fit so the run can be repeated."""
    return int(np.random.SeedSequence().generate_state(1)[0])
