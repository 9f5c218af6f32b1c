"""Running NUTS: nutpie (default) or PyMC's sampler.

Two ways to give nutpie a log density:

- The compiled kernel (:mod:`.kernel`), for the models it covers (one grouping factor or two nested ones
  integrated out, any crossed factors sampled, a σ² per stratum or AR(1) errors in two-level models, common
  prior families): nutpie calls its C callbacks directly through the bindings it uses for PyMC models
  (:func:`kernel_nutpie_model`, driven by :mod:`.nuts` without nutpie's Python front end), so chains run in
  parallel with no Python in the loop. The callbacks are
  cached on disk: HS&B (intercepts and slopes as outcomes, 4 chains x 1000 draws) took 1.5 s in a new process
  and 21-24 s on a fresh install whose caches are empty (benchmarks/bench_bayes.py, 2026-12-04, 2 cores); the
  compile of its callback went from 15.2 to 9.4 CPU seconds (benchmarks/results/bayes_cold_start.md), and the
  two-level kernel is now compiled ahead of time at install (:func:`~.kernel.extension_callbacks`): 0 s.
- The PyMC graph, for every other model. Compilation dominates its cost (stack notes: 65-90 s cold with
  PyTensor's Numba backend); nutpie's compile_pymc_model wraps the PyTensor functions in ``numba.cfunc``
  callbacks compiled without a cache (cProfile: most of 30-70 s in numba's ``ccallback._compile_uncached``),
  so each new process pays that. :func:`compiled_nutpie_model` keeps the compiled model per graph key
  (structure, shapes, prior families; see :class:`~bayeshlm.bayes.plan.ModelInfo`) and swaps in new data and
  prior hyperparameters with ``CompiledModel.with_data``, so a refit in the same process does not recompile.

Tried and dropped: nutpie's JAX backend (compile 38 s, but sampling 55 s for HS&B) and Python callbacks
through ``nutpie.compiled_pyfunc.from_pyfunc`` (the GIL serialises the chains: 8-10 s of sampling for HS&B
with the kernel, 50-100 s with PyTensor's C backend).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from .. import progress
from ..errors import OptionError
from . import nuts
from .nuts import CallbackModel

if TYPE_CHECKING:  # PyMC loads only for a graph: the compiled kernel is sampled without it
    import pymc as pm

    from .kernel import KernelModel
    from .plan import ModelInfo

SAMPLERS = ("nutpie", "pymc")
MAX_SEED = 2**64 - 1  # nutpie's seed is an unsigned 64-bit integer
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


UNCONSTRAINED = "unconstrained"  # the one variable nutpie stores for a kernel model: x itself


def kernel_nutpie_model(kernel: KernelModel) -> CallbackModel:
    """nutpie's view of the compiled kernel (C callbacks: the chains run in parallel without Python in the loop);
    compiles (or loads from the on-disk cache) its callbacks. nutpie stores the unconstrained draws x (one
    variable, :data:`UNCONSTRAINED`); :func:`named_draws` turns them into the posterior variables."""
    from .kernel import c_callbacks  # the Gaussian kernels (and Numba) load only for a Gaussian fit

    logp_callback, expand_callback = c_callbacks(*kernel.variant)
    dim = f"{UNCONSTRAINED}_dim"
    return CallbackModel(names=(UNCONSTRAINED,), shapes=((kernel.n_dim,),), dims={UNCONSTRAINED: (dim,)},
                         coords={dim: np.arange(kernel.n_dim)}, n_dim=kernel.n_dim,
                         start=kernel.unconstrained_start, logp_address=logp_callback.address,
                         expand_address=expand_callback.address, data_address=kernel.buffer.ctypes.data,
                         owner=kernel)


def named_draws(kernel: KernelModel, draws: xr.Dataset) -> xr.Dataset:
    """The posterior variables (named, shaped and labelled as in the PyMC graph) of the unconstrained draws
    nutpie stored for a kernel model."""
    from .kernel import constrained_draws, output_layout

    names, _, dims, coords = output_layout(kernel)
    x = draws[UNCONSTRAINED].transpose("chain", "draw", ...).values
    values = constrained_draws(kernel, x)
    variables = {name: (("chain", "draw", *dims.get(name, ())), values[name]) for name in names}
    return xr.Dataset(variables, coords={"chain": draws["chain"].values, "draw": draws["draw"].values} | coords)


def check_sampler_options(*, draws, tune, chains, random_seed, target_accept, sampler, progressbar) -> None:
    """Refuse impossible sampling options before any model is built or compiled (nutpie panics in Rust, which
    ``except Exception`` cannot catch, on some of them, e.g. ``tune=0``)."""
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise OptionError(f"sampler={sampler!r}: use 'nutpie' (default) or 'pymc'.")
    least_tune = 1 if sampler == "nutpie" else 0  # nutpie's step-size adaptation needs a tuning window
    for name, value, least in (("draws", draws, 1), ("tune", tune, least_tune), ("chains", chains, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            allowed = "a positive whole number" if least else "a whole number >= 0"
            why = " (nutpie needs at least one tuning step; sampler='pymc' accepts tune=0)" \
                if name == "tune" and value == 0 else ""
            raise OptionError(f"{name}={value!r}: give {allowed}, e.g. {name}=1000{why}.")
    if random_seed is not None and (isinstance(random_seed, bool) or not isinstance(random_seed, int | np.integer)
                                    or not 0 <= random_seed <= MAX_SEED):
        raise OptionError(f"random_seed={random_seed!r}: give a whole number from 0 to 2**64 - 1, or None.")
    if isinstance(target_accept, bool) or not isinstance(target_accept, int | float | np.number) \
            or not 0 < target_accept < 1:
        raise OptionError(f"target_accept={target_accept!r}: give a number between 0 and 1 (e.g. 0.9).")
    if not isinstance(progressbar, bool | np.bool_):
        raise OptionError(f"progressbar={progressbar!r}: give True or False.")


def run_sampler(model: pm.Model | None, info: ModelInfo, *, sampler: str, draws: int, tune: int, chains: int,
                seed: int, target_accept: float, progressbar: bool) -> tuple[xr.DataTree, dict]:
    """Sample the posterior; return the DataTree and a record of how (sampler, cores, seed, times). ``model``
    is the PyMC graph, None when nutpie samples the compiled kernel ``info.kernel``.

    An interrupt (Ctrl-C) raises KeyboardInterrupt: both samplers would otherwise return the draws made so far
    (nutpie pads them with NaN), which is not a fit."""
    check_sampler_options(draws=draws, tune=tune, chains=chains, random_seed=seed, target_accept=target_accept,
                          sampler=sampler, progressbar=progressbar)
    draws, tune, chains, target_accept = int(draws), int(tune), int(chains), float(target_accept)
    cores = min(chains, os.cpu_count() or 1)
    start = time.perf_counter()
    if sampler == "nutpie":
        progress.step(progress.COMPILING)
        if info.kernel is not None:
            from .kernel import c_callbacks

            misses = c_callbacks.cache_info().misses
            compiled = kernel_nutpie_model(info.kernel)
            reused = c_callbacks.cache_info().misses == misses  # compiled or loaded earlier in this process
        else:
            compiled, reused = compiled_nutpie_model(model, info)
        compiled_at = time.perf_counter()
        tree = sample_nutpie(compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=seed,
                             target_accept=target_accept, progressbar=progressbar)
    else:
        reused = False
        compiled_at = start
        tree = sample_pymc(model, "compiling the PyMC model and ", draws=draws, tune=tune, chains=chains,
                           cores=cores, seed=seed, target_accept=target_accept, progressbar=progressbar)
    end = time.perf_counter()
    check_complete(tree, draws, chains)
    if sampler == "nutpie" and info.kernel is not None:
        for group in ("posterior", "warmup_posterior"):
            if group in tree.children:
                tree[group] = xr.DataTree(named_draws(info.kernel, tree[group].to_dataset()))
    for group in list(tree.children):
        tree[group] = xr.DataTree(_text_as_strings(tree[group].to_dataset()))
    log_density = "compiled kernel" if sampler == "nutpie" and info.kernel is not None else "PyMC graph"
    record = {"sampler": sampler, "log_density": log_density, "draws": draws, "tune": tune, "chains": chains,
              "cores": cores, "seed": seed, "target_accept": target_accept, "compiled_model_reused": reused,
              # PyMC's sampler compiles inside pm.sample: its compile time is part of sampling_seconds
              "compile_seconds": round(compiled_at - start, 3) if sampler == "nutpie" else None,
              "sampling_seconds": round(end - compiled_at, 3)}
    return tree, record


def sample_nutpie(compiled, *, draws: int, tune: int, chains: int, cores: int, seed: int, target_accept: float,
                  progressbar: bool, warmup: bool = True) -> xr.DataTree:
    """nutpie's NUTS on a compiled model (a :class:`~.nuts.CallbackModel` of a kernel, or nutpie's compiled PyMC
    graph), chains in parallel. Ctrl-C cancels the run and raises KeyboardInterrupt: nutpie would return the
    draws made so far padded with NaN, which is not a fit. ``warmup``: keep the warm-up groups."""
    progress.step(progress.sampling(chains, draws, tune, cores))
    if isinstance(compiled, CallbackModel):
        if nuts.use_core(progressbar):
            return nuts.sample(compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=seed,
                               target_accept=target_accept, progressbar=progressbar, warmup=warmup)
        compiled = nuts.public_model(compiled)
    import nutpie

    running = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=seed,
                            progress_bar=progressbar, target_accept=target_accept, blocking=False)
    try:
        return running.wait()
    except KeyboardInterrupt:
        running.cancel()
        raise KeyboardInterrupt("Sampling was interrupted; no fit was made.") from None


def sample_pymc(model: pm.Model, what: str, *, draws: int, tune: int, chains: int, cores: int, seed: int,
                target_accept: float, progressbar: bool) -> xr.DataTree:
    """PyMC's own NUTS on ``model`` (it compiles the graph first; ``what`` starts the progress line)."""
    import pymc as pm

    progress.step(what + progress.sampling(chains, draws, tune, cores))
    with model:
        return pm.sample(draws=draws, tune=tune, chains=chains, cores=cores, random_seed=seed, nuts_sampler="pymc",
                         nuts={"target_accept": target_accept}, progressbar=progressbar,
                         compute_convergence_checks=False)


def check_complete(tree: xr.DataTree, draws: int, chains: int) -> None:
    """Raise KeyboardInterrupt for a partial posterior: PyMC returns the draws made before an interrupt."""
    sizes = tree["posterior"].sizes
    if sizes.get("chain") != chains or sizes.get("draw") != draws:
        raise KeyboardInterrupt(f"Sampling was interrupted ({sizes.get('chain')} chains x {sizes.get('draw')} of "
                                f"{chains} x {draws} draws made); no fit was made.")


def _text_as_strings(stats: xr.Dataset) -> xr.Dataset:
    """Text-valued variables (nutpie's ``divergence_message`` in the sample statistics and the warm-up ones: a
    message on divergent draws, None or NaN on the others) as fixed-width strings with '' for no message, which
    is what a netCDF round trip gives back."""
    for name, values in stats.data_vars.items():
        if values.dtype == object:
            text = [value if isinstance(value, str) else "" for value in values.values.ravel()]
            stats[name] = values.copy(data=np.array(text, dtype=str).reshape(values.shape))
    return stats


def new_seed() -> int:
    """A fresh seed from OS entropy, recorded in the fit so the run can be repeated."""
    return int(np.random.SeedSequence().generate_state(1)[0])
