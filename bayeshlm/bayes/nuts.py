"""nutpie's NUTS on one of our compiled log densities, driven through nutpie's Rust core.

``import nutpie`` loads, besides the sampler, nutpie's PyMC compiler (which imports Numba) and its sampling front
end (which imports the whole ``arviz`` package: arviz-plots, matplotlib and every plotting backend installed):
about 1 CPU second in a new process, more than three times what sampling cbpp costs. A model whose log density is
a compiled kernel of this package (:mod:`.kernel`, :mod:`.glmm_kernel`) needs none of it, only nutpie's extension
module ``nutpie._lib``: the sampler with its step-size and mass-matrix adaptation, which returns the draws as
Arrow tables. For the nutpie releases in :data:`CHECKED_NUTPIE` (whose ``_lib`` interface was read and tested),
:func:`core` loads that extension alone and :func:`sample` makes the settings ``nutpie.sample`` would make and
turns the tables into a DataTree itself; the draws and sample statistics are bitwise those of ``nutpie.sample``
(tests/test_nuts_core.py). Any other nutpie release, and a progress bar in a notebook, go through
``nutpie.sample`` itself (:func:`public_model`).

A kernel is described to nutpie by a :class:`CallbackModel`: the addresses of its two C callbacks (log density
with gradient; the reported values of a point), the address of the buffer they read, and the names, shapes and
labels of the reported values.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

CHECKED_NUTPIE = ("0.16.11",)  # releases whose _lib interface :func:`sample` was checked against
PROGRESS_RATE_MS = 100  # nutpie's default refresh of the terminal progress bar
# Arrow columns nutpie writes only when asked to store them (``store_*`` settings, all off here); nutpie.sample
# leaves them out of its result, so the same is done here
UNSTORED = {
    "store_gradient": ("gradient",),
    "store_unconstrained": ("unconstrained_draw",),
    "store_mass_matrix": ("mass_matrix_inv", "mass_matrix_eigvals", "mass_matrix_stds"),
    "store_divergences": ("divergence_start", "divergence_end", "divergence_momentum",
                          "divergence_start_gradient"),
    "store_transformed": ("transformed_position", "transformed_gradient", "transformation_mu"),
}


@dataclass(frozen=True)
class CallbackModel:
    """A compiled log density as nutpie sees it. ``logp_address(n, x, grad, logp, data)`` writes log p(x) and its
    gradient; ``expand_address(n, m, x, values, data)`` writes the ``m`` reported values of ``x``, the variables
    ``names`` with ``shapes`` one after the other; ``data_address`` points into ``owner`` (kept alive with the
    model); ``start(seed)`` is a chain's initial point. ``dims`` labels the variables' axes, ``coords`` gives
    each label's values."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dims: dict[str, tuple[str, ...]]
    coords: dict[str, np.ndarray]
    n_dim: int
    start: Callable[[int], np.ndarray]
    logp_address: int
    expand_address: int
    data_address: int
    owner: object = field(repr=False)

    @property
    def n_expanded(self) -> int:
        return int(sum(np.prod(shape, dtype=int) for shape in self.shapes))

    def nutpie_model(self, lib):
        """nutpie's model object (``_lib.PyMcModel``) of this log density."""
        sizes = {name: len(values) for name, values in self.coords.items()}
        dims = {name: list(labels) for name, labels in self.dims.items() if labels}
        variables = lib.PyVariable.new_variables(list(self.names), ["float64"] * len(self.names),
                                                 [tuple(shape) for shape in self.shapes], sizes, dims)
        return lib.PyMcModel(lib.LogpFunc(self.logp_address, self.data_address, self.owner),
                             lib.ExpandFunc(self.n_dim, self.n_expanded, self.expand_address, self.data_address,
                                            self.owner),
                             variables, self.n_dim, sizes, self.coords, self.start, _no_flow)


def _no_flow(*args, **kwargs):
    from ..errors import OptionError

    raise OptionError("Normalising-flow adaptation is not available for a compiled kernel.")


@dataclass(frozen=True)
class ExtensionCallback:
    """A C function of the compiled extension, presented as a ``numba.cfunc`` is: its address and a ctypes
    function calling it."""

    address: int
    ctypes: object


def nutpie_callbacks(logp: int, expand: int) -> tuple[ExtensionCallback, ExtensionCallback]:
    """The log-density and reported-values functions at addresses ``logp`` and ``expand`` of a compiled
    extension, with nutpie's signatures: logp(dim, x, grad, value, user data) and
    expand(dim, n_expanded, x, out, user data), each returning 0 or an error code."""
    double_ptr = ctypes.POINTER(ctypes.c_double)
    logp_type = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, double_ptr, double_ptr, double_ptr,
                                 ctypes.c_void_p)
    expand_type = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64, double_ptr, double_ptr,
                                   ctypes.c_void_p)
    return ExtensionCallback(logp, logp_type(logp)), ExtensionCallback(expand, expand_type(expand))


@cache
def core():
    """nutpie's extension module ``nutpie._lib``: the one nutpie imported if it is loaded, else, for a release in
    :data:`CHECKED_NUTPIE`, the extension loaded alone (registered as ``nutpie._lib``, so a later ``import
    nutpie`` uses the same module); None for another release (sample through ``nutpie.sample``)."""
    if "nutpie" in sys.modules:
        return sys.modules["nutpie"]._lib if _checked() else None
    if not _checked():
        return None
    spec = importlib.util.find_spec("nutpie")
    folder = Path(spec.submodule_search_locations[0])
    found = [folder / f"_lib{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES
             if (folder / f"_lib{suffix}").is_file()]
    if not found:
        return None
    module_spec = importlib.util.spec_from_file_location("nutpie._lib", found[0])
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules["nutpie._lib"] = module
    return module


def _checked() -> bool:
    try:
        return version("nutpie") in CHECKED_NUTPIE
    except PackageNotFoundError:
        return False


def use_core(progressbar: bool) -> bool:
    """Whether :func:`sample` runs this fit: a checked nutpie release, and no notebook progress bar (only
    ``nutpie.sample`` draws that one)."""
    return core() is not None and not (progressbar and "ipykernel" in sys.modules)


def sample(model: CallbackModel, *, draws: int, tune: int, chains: int, cores: int, seed: int,
           target_accept: float, progressbar: bool, warmup: bool = True) -> xr.DataTree:
    """NUTS with nutpie's defaults (diagonal mass matrix from draws and gradients), ``chains`` chains on
    ``cores`` threads. Returns the DataTree ``nutpie.sample`` would (groups posterior and sample_stats; with
    ``warmup``, warmup_posterior and warmup_sample_stats). Ctrl-C aborts the run and raises KeyboardInterrupt."""
    lib = core()
    settings = lib.PyNutsSettings.Diag(seed)
    settings.update({"num_tune": tune, "num_draws": draws, "num_chains": chains, "target_accept": target_accept})
    progress = lib.ProgressType.indicatif(PROGRESS_RATE_MS) if progressbar else lib.ProgressType.none()
    sampler = lib.PySampler.from_pymc(settings, cores, model.nutpie_model(lib), progress, None, PROGRESS_RATE_MS,
                                      lib.PyStorage.arrow())
    try:
        _wait(sampler)
    except KeyboardInterrupt:
        sampler.abort()
        raise KeyboardInterrupt("Sampling was interrupted; no fit was made.") from None
    draw_tables, stat_tables = sampler.take_results().get_arrow_trace()
    chosen = settings.as_dict()
    skip = {name for setting, names in UNSTORED.items() if not _setting(chosen, setting) for name in names}
    return arrow_tree(draw_tables, stat_tables, model.coords, skip, warmup)


def _wait(sampler) -> None:
    """Until the chains finish (nutpie's wait passes Ctrl-C on as KeyboardInterrupt)."""
    sampler.wait(None)


def _setting(settings: dict, name: str) -> bool:
    """A boolean setting anywhere in nutpie's nested settings dictionary (False when absent)."""
    for key, value in settings.items():
        if key == name:
            return bool(value)
        if isinstance(value, dict) and _setting(value, name):
            return True
    return False


def arrow_tree(draw_tables, stat_tables, coords: dict, skip: set, warmup: bool) -> xr.DataTree:
    """The chains' Arrow tables (one row per draw, warm-up first, marked by the ``tuning`` statistic) as a
    DataTree: each column an array (chain, draw, *shape), the axes named by the column's ``dims`` metadata
    (``<name>_dim_<k>`` when it has none, as ArviZ names them), missing entries NaN (None for text)."""
    n_tune = [int(np.asarray(table.column("tuning")).sum()) for table in stat_tables]
    parts = {"posterior": (draw_tables, False), "sample_stats": (stat_tables, False)}
    if warmup:
        parts |= {"warmup_posterior": (draw_tables, True), "warmup_sample_stats": (stat_tables, True)}
    groups = {}
    for group, (tables, tuning) in parts.items():
        pieces = [table.slice(0, tune) if tuning else table.slice(tune) for table, tune in zip(tables, n_tune)]
        groups[group] = _dataset(pieces, coords, skip)
    return xr.DataTree.from_dict(groups)


def _dataset(tables, coords: dict, skip: set) -> xr.Dataset:
    """One group: the columns of the chains' tables stacked along (chain, draw), chains padded to the longest."""
    n_draws = max(table.num_rows for table in tables)
    variables = {}
    for name in tables[0].column_names:
        if name in skip or name in ("chain", "draw"):  # the statistics' own chain and draw indices
            continue
        shape, dims = _item_layout(tables[0].schema.field(name), name)
        chains = [_column_values(table.column(name), table.num_rows, shape) for table in tables]
        values = _stack(chains, n_draws, shape)
        variables[name] = (("chain", "draw", *dims), values)
    used = {dim for dims, _ in variables.values() for dim in dims}
    labels = {dim: pd.Index(values) for dim, values in coords.items() if dim in used}  # as nutpie.sample's
    return xr.Dataset(variables, coords={"chain": np.arange(len(tables)), "draw": np.arange(n_draws)} | labels)


def _item_layout(column_field, name: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The shape of one draw of a column and the names of its axes, from the Arrow field's metadata."""
    meta = column_field.metadata or {}
    shape = tuple(int(size) for size in meta[b"shape"].decode().split(",")) if meta.get(b"shape") else ()
    dims = tuple(meta[b"dims"].decode().split(",")) if meta.get(b"dims") else ()
    if len(dims) != len(shape):
        dims = tuple(f"{name}_dim_{axis}" for axis in range(len(shape)))
    return shape, dims


def _column_values(column, rows: int, shape: tuple[int, ...]) -> np.ndarray:
    """One chain's column as an array (rows, *shape); missing rows NaN (floats) or None (text)."""
    import pyarrow

    column = pyarrow.array(column)
    missing = column.is_null().to_numpy(zero_copy_only=False)
    flat = column.flatten() if hasattr(column, "flatten") else column
    kind = np.dtype(flat.type.to_pandas_dtype())
    values = flat.to_numpy(zero_copy_only=False)
    if not missing.any():
        return values.reshape((rows, *shape))
    if kind.kind == "f":
        out = np.full((rows, *shape), np.nan, dtype=kind)
    else:
        out = np.full((rows, *shape), None, dtype=object) if kind.kind == "O" else np.zeros((rows, *shape), kind)
    present = values[~missing] if len(values) == rows else values  # a list column's nulls have no entries
    out[~missing] = present.reshape((int((~missing).sum()), *shape))
    return out


def _stack(chains: list[np.ndarray], n_draws: int, shape: tuple[int, ...]) -> np.ndarray:
    """(chain, draw, *shape), a chain shorter than ``n_draws`` (an interrupted run) padded as missing."""
    if all(len(values) == n_draws for values in chains):
        return np.stack(chains)
    dtype = chains[0].dtype
    filler = np.nan if dtype.kind == "f" else (None if dtype.kind == "O" else 0)
    out = np.full((len(chains), n_draws, *shape), filler, dtype=dtype)
    for index, values in enumerate(chains):
        out[index, :len(values)] = values
    return out


@cache
def _public_class():
    """A ``nutpie.sample.CompiledModel`` over a :class:`CallbackModel` (imports nutpie's Python package)."""
    from nutpie import _lib
    from nutpie.sample import CompiledModel

    @dataclass(frozen=True)
    class CallbackCompiledModel(CompiledModel):
        callback: CallbackModel | None = None

        @property
        def n_dim(self) -> int:
            return self.callback.n_dim

        @property
        def shapes(self):
            return dict(zip(self.callback.names, self.callback.shapes))

        @property
        def coords(self):
            return self.callback.coords

        def _make_sampler(self, settings, init_mean, cores, progress_type, extra_callback, extra_callback_rate,
                          store):
            return _lib.PySampler.from_pymc(settings, cores, self._make_model(init_mean), progress_type,
                                            extra_callback, extra_callback_rate, store)

        def _make_model(self, init_mean):
            return self.callback.nutpie_model(_lib)

    return CallbackCompiledModel


def public_model(model: CallbackModel):
    """The same log density as a model for ``nutpie.sample`` (any nutpie release with these bindings)."""
    return _public_class()(dims={name: dims for name, dims in model.dims.items() if dims}, callback=model)
