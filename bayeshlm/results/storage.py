"""Save a fit to netCDF and load it back: ``fit.save(path)`` and ``bayeshlm.load_fit(path)``.

One file holds an xarray DataTree:

- root attributes: ``bayeshlm_version``, ``format_version``, ``engine`` ('likelihood' or 'bayes'), the model
  specification (``spec``, JSON: formula terms, centring, group means, known-variance column, level-1 error
  structure) and the engine state (``state``, JSON);
- ``/design``: the Design's arrays (y, X, known variances, row labels, dropped rows) with its names in
  attributes, and ``/design/factor_<k>`` (codes, levels, Z) and ``/design/residual`` below it;
- likelihood fits: theta, the method and the optimiser's record in ``state``. Loading rebuilds the fit from
  the saved Design and theta by evaluating the criterion once, so every table is the one that was saved;
- Bayesian fits: ``/bayes/<group>`` for each group of the posterior DataTree (posterior, sample_stats, ...),
  ``/cholesky`` (the per-draw Cholesky factors of each T), and the priors, sampler record, diagnostics and
  messages in ``state``. Loading rebuilds the PyMC model from the saved Design and priors (for
  ``pymc_model()`` and prior predictive checks) without sampling.

A file whose ``format_version`` differs from :data:`FORMAT_VERSION` is refused with an error naming both
versions.

Saving writes a temporary file in the same folder and renames it over ``path`` (``os.replace``, atomic on one file
system), so a failed save (full disk) leaves any earlier file intact. Loading checks the file before reading
any array: the HDF5 layout is read with h5py (attributes, array shapes and types only), and since ``fit.save``
writes arrays uncompressed, a file whose arrays would take more memory than :data:`MEMORY_PER_FILE_BYTE` times
its size (plus :data:`MEMORY_SLACK` bytes) is refused as crafted or damaged; then every array's shape is checked
against the sizes the saved metadata declares. Any damage found is a :class:`~bayeshlm.errors.FitFormatError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..design import Design, DroppedRows, GroupingFactor
from ..errors import FitFormatError, FormulaError, OptionError, SaveError
from ..spec import Centering, ModelSpec
from ..spec.model_spec import RandomTerm

FORMAT_VERSION = 1
ENGINE = "h5netcdf"
MEMORY_PER_FILE_BYTE = 4  # arrays are stored uncompressed; text read as fixed-width Unicode may take 4x its bytes
MEMORY_SLACK = 16 * 2**20
_DAMAGE = (KeyError, IndexError, TypeError, ValueError, AttributeError, OSError)  # json errors are ValueErrors

__all__ = ["FORMAT_VERSION", "FitFormatError", "load_fit", "save_fit"]


def package_version() -> str:
    """This bayeshlm's version (``bayeshlm.__version__``), from the installed package's metadata, read here
    without importing the package root (which imports every layer)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bayeshlm")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0+unknown"


def _engines() -> dict[str, type]:
    """The result classes a file can hold, by the ``engine`` name written in it."""
    from .bayes_fit import BayesFit
    from .likelihood_fit import LikelihoodFit

    return {"likelihood": LikelihoodFit, "bayes": BayesFit}


def save_fit(fit, path: str | Path) -> Path:
    """Write ``fit`` (a LikelihoodFit or BayesFit) to ``path`` as netCDF; return the path. The fit's
    ``to_state()`` gives its record (JSON in the root attribute ``state``) and its datasets (a DataTree is
    written as ``/<name>/<group>``, a Dataset as ``/<name>``)."""
    engine = next((name for name, cls in _engines().items() if isinstance(fit, cls)), None)
    if engine is None:
        raise OptionError(f"Saving a {type(fit).__name__} is not supported; save() takes a REML/ML or Bayes fit.")
    state, datasets = fit.to_state()
    groups = {}
    for name, data in datasets.items():
        if isinstance(data, xr.DataTree):
            groups |= {f"/{name}/{child}": node.to_dataset() for child, node in data.children.items()}
        else:
            groups[f"/{name}"] = data
    root = xr.Dataset(attrs={"bayeshlm_version": package_version(), "format_version": FORMAT_VERSION, "engine": engine,
                             "spec": json.dumps(_spec_to_dict(fit.design.spec)),
                             "state": json.dumps(state, default=_plain)})
    tree = xr.DataTree.from_dict({"/": root, **_design_groups(fit.design), **groups})
    path = Path(path)
    write_netcdf_atomically(tree, path, "fit.save")
    return path


def write_netcdf_atomically(tree: xr.DataTree | xr.Dataset, path: Path, what: str) -> None:
    """Write ``tree`` to a temporary file beside ``path``, then rename it over ``path``; on any failure remove the
    temporary file and leave ``path`` as it was (``what`` names the writer in messages, e.g. 'fit.save').

    The netCDF bytes are made in memory and written with plain file I/O: when HDF5 itself met a full disk, h5py
    raised a RuntimeError and the process later crashed (segmentation fault) while releasing the file."""
    if path.is_dir():
        raise OptionError(f"{what}: {str(path)!r} is a folder; give a file name such as 'fit.nc'.")
    data = tree.to_netcdf(None, engine=ENGINE)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as err:
        raise SaveError(f"{what}: cannot create a file in {str(path.parent)!r} ({err.strerror}).") from None
    try:
        with os.fdopen(handle, "wb") as f:
            _write_bytes(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as err:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(err, OSError):
            kept = "the earlier file there is unchanged" if path.exists() else "nothing was written"
            raise SaveError(f"{what}: could not write {str(path)!r} ({err.strerror or err}); "
                            f"{kept}. Free some disk space or choose another folder.") from err
        raise


def _write_bytes(f, data) -> None:
    f.write(data)


def load_fit(path: str | Path, *, unsafe_formula: bool = False):
    """Read a fit written by :func:`save_fit` (``fit.save``); returns a LikelihoodFit or a BayesFit.

    A file that is not such a fit, or is damaged, raises :class:`~bayeshlm.errors.FitFormatError` before its
    arrays are read (see the module docstring). The saved model's formula terms pass the same allow-list as a
    new model's (nothing in the file is evaluated either way); a fit you made yourself with
    ``unsafe_formula=True`` loads with ``load_fit(path, unsafe_formula=True)``."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"load_fit: no file {str(path)!r}.")
    attrs = _checked_layout(path)
    try:
        tree = xr.open_datatree(path, engine=ENGINE)
        with tree:
            spec = _spec_from_dict(attrs["spec"], unsafe_formula)
            _check_shapes(tree, attrs)
            tree.load()
            design = _design_from_tree(tree, spec)
        return _engines()[attrs["engine"]].from_state(design, attrs["state"], _datasets(tree))
    except FormulaError as err:  # checked before _DAMAGE, which would call it damage
        raise FitFormatError(
            f"load_fit: the model saved in {str(path)!r} has formula terms outside the allow-list ({err}) If you "
            "made this file yourself with unsafe_formula=True, load it with load_fit(path, unsafe_formula=True); "
            "do not do so for a file from elsewhere.") from None
    except _DAMAGE as err:  # the file's content can be damaged in any of the ways the readers below notice
        why = str(err) if isinstance(err, FitFormatError) else f"{type(err).__name__}: {err}"
        raise _damaged(path, why) from None


def _damaged(path: Path, why: str) -> FitFormatError:
    return FitFormatError(f"load_fit: {str(path)!r} is damaged or was changed after fit.save wrote it ({why}). "
                          "Refit the model and save it again.")


def _checked_layout(path: Path) -> dict:
    """The root attributes (spec and state parsed), after checking with h5py, reading no array, that this is a
    bayeshlm save of a supported version whose arrays fit the memory bound of the module docstring."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in f.attrs.items()}
            if "format_version" not in attrs:
                raise FitFormatError(f"load_fit: {str(path)!r} has no bayeshlm format version; it was not written "
                                     "by fit.save.")
            try:
                saved = int(np.asarray(attrs["format_version"]).item())
            except (TypeError, ValueError):
                raise _damaged(path, f"format version {attrs['format_version']!r} is not a number") from None
            if saved != FORMAT_VERSION:
                raise FitFormatError(
                    f"load_fit: {str(path)!r} uses save format {saved} (written by bayeshlm "
                    f"{attrs.get('bayeshlm_version')}), but this bayeshlm {package_version()} reads format "
                    f"{FORMAT_VERSION}. Load it with the version that wrote it and refit, or refit from the data.")
            needed = _memory_needed(f)
    except OSError as err:
        raise FitFormatError(f"load_fit: {str(path)!r} is not a netCDF file written by fit.save ({err}).") from None
    limit = MEMORY_PER_FILE_BYTE * path.stat().st_size + MEMORY_SLACK
    if needed > limit:
        raise _damaged(path, f"its arrays would take {needed / 2**20:.0f} MB in memory, more than a "
                             f"{path.stat().st_size / 2**20:.2f} MB uncompressed save can hold")
    if attrs.get("engine") not in ("likelihood", "bayes"):
        raise _damaged(path, f"engine {attrs.get('engine')!r} is neither 'likelihood' nor 'bayes'")
    for name in ("spec", "state"):
        try:
            attrs[name] = json.loads(attrs[name])
        except KeyError:
            raise _damaged(path, f"no {name!r} attribute") from None
        except (TypeError, ValueError) as err:
            raise _damaged(path, f"the {name!r} attribute is not valid JSON: {err}") from None
        if not isinstance(attrs[name], dict):
            raise _damaged(path, f"the {name!r} attribute is not a JSON object")
    return attrs


def _memory_needed(f) -> int:
    """Bytes the file's arrays take once read: declared shape x item size, and for variable-length text the
    fixed-width Unicode array xarray makes of it (4 bytes per character of the longest string, measured a block
    at a time so that the check itself stays small)."""
    import h5py

    total = 0

    def add(_, node):
        nonlocal total
        if not isinstance(node, h5py.Dataset):
            return
        if node.dtype.kind == "O" and h5py.check_string_dtype(node.dtype) is not None:
            flat, longest = node.asstr(), 0
            rows = node.shape[0] if node.ndim else 1
            for start in range(0, rows, 65536):
                block = flat[start:start + 65536] if node.ndim else flat[()]
                longest = max(longest, max((len(s) for s in np.ravel(block)), default=0))
            total += node.size * max(4 * longest, 8)
        else:
            total += node.size * node.dtype.itemsize

    f.visititems(add)
    return total


def _check_shapes(tree: xr.DataTree, attrs: dict) -> None:
    """Every design array has the shape the saved names declare (rows, fixed effects, random coefficients)."""
    design = tree["design"]
    meta = json.loads(design.attrs["meta"])
    n = design["y"].shape[0] if design["y"].ndim == 1 else -1
    expected = {"y": (n,), "X": (n, len(meta["fixed_names"])), "row_labels": (n,)}
    if "known_variance" in design:
        expected["known_variance"] = (n,)
    _compare_shapes(design, expected, "design")
    if len(meta["factors"]) != len(design.children) - ("residual" in design.children):
        raise FitFormatError(f"{len(meta['factors'])} grouping factors are named but "
                             f"{len(design.children)} are stored")
    for k, factor in enumerate(meta["factors"]):
        node = design[f"factor_{k}"]
        groups = node["levels"].shape[0] if node["levels"].ndim == 1 else -1
        _compare_shapes(node, {"codes": (n,), "Z": (n, len(factor["coef_names"])), "levels": (groups,)},
                        f"factor {factor['name']!r}")
    if attrs["engine"] == "likelihood" and not isinstance(attrs["state"].get("theta"), list):
        raise FitFormatError("the likelihood state has no theta list")
    if attrs["engine"] == "bayes":
        sampler = attrs["state"]["sampler"]
        declared = {"chain": sampler["chains"], "draw": sampler["draws"]}
        for name, node in [*tree["bayes"].children.items(), ("cholesky", tree["cholesky"])]:
            stored = {dim: node.sizes.get(dim) for dim in declared if dim in node.sizes}
            if stored != {dim: declared[dim] for dim in stored}:
                raise FitFormatError(f"the {name!r} draws have {stored}, but the sampler record declares "
                                     f"{declared}")


def _compare_shapes(node, expected: dict[str, tuple[int, ...]], where: str) -> None:
    for name, shape in expected.items():
        if name not in node:
            raise FitFormatError(f"{where}: the array {name!r} is missing")
        if tuple(node[name].shape) != shape or -1 in shape:
            raise FitFormatError(f"{where}: {name!r} has shape {tuple(node[name].shape)}, but the saved names "
                                 f"declare {shape}")


def _plain(value):
    """JSON form of the NumPy scalars and arrays found in sampler records and diagnostics."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a saved fit")


# --- model specification ---------------------------------------------------------------------------------

def _spec_to_dict(spec: ModelSpec) -> dict:
    r = spec.residual
    return {
        "outcome": spec.outcome,
        "fixed": [list(t) for t in spec.fixed],
        "random": [{"group": t.group, "group_columns": list(t.group_columns), "terms": [list(x) for x in t.terms],
                    "correlated": t.correlated} for t in spec.random],
        "centering": [{"column": c.column, "how": c.how, "group": c.group} for c in spec.centering],
        "group_means": [list(g) for g in spec.group_means],
        "known_variance": spec.known_variance,
        "notation": spec.notation,
        "level_predictors": [list(p) for p in spec.level_predictors],
        "residual": None if r is None else {"variance_by": r.variance_by, "variance_formula": r.variance_formula,
                                            "correlation": r.correlation, "time": r.time},
    }


def _spec_from_dict(d: dict, unsafe_formula: bool = False) -> ModelSpec:
    return ModelSpec(
        outcome=d["outcome"],
        fixed=tuple(tuple(t) for t in d["fixed"]),
        random=tuple(RandomTerm(group=t["group"], group_columns=tuple(t["group_columns"]),
                                terms=tuple(tuple(x) for x in t["terms"]), correlated=t["correlated"])
                     for t in d["random"]),
        centering=tuple(Centering(**c) for c in d["centering"]),
        group_means=tuple(tuple(g) for g in d["group_means"]),
        known_variance=d["known_variance"],
        notation=d["notation"],
        level_predictors=tuple(tuple(p) for p in d["level_predictors"]),
        residual=None if d["residual"] is None else _residual_structure(d["residual"]),
        unsafe_formula=unsafe_formula,
    )


def _residual_structure(d: dict):
    from ..spec.model_spec import ResidualStructure

    return ResidualStructure(**d)


# --- design ------------------------------------------------------------------------------------------------

def _labels(index: pd.Index) -> tuple[np.ndarray, str]:
    """Index values as a netCDF-writable array and the dtype to restore (numbers stay numbers, else text)."""
    if pd.api.types.is_integer_dtype(index) or pd.api.types.is_float_dtype(index):
        return index.to_numpy(), str(index.dtype)
    return np.asarray(index.astype(str), dtype=str), "str"


def _index(values: np.ndarray, dtype: str, name) -> pd.Index:
    return pd.Index(values, dtype=dtype, name=name)


def _design_groups(design: Design) -> dict[str, xr.Dataset]:
    rows, rows_dtype = _labels(design.row_labels)
    data = {"y": ("obs", design.y), "X": (("obs", "fixed"), design.X), "row_labels": ("obs", rows),
            "dropped_positions": ("dropped", np.asarray(design.dropped.positions, dtype=np.int64))}
    if design.known_variance is not None:
        data["known_variance"] = ("obs", design.known_variance)
    meta = {
        "fixed_names": list(design.fixed_names), "fixed_terms": [list(t) for t in design.fixed_terms],
        "nesting": design.nesting, "term_levels": design.term_levels,
        "row_labels": {"dtype": rows_dtype, "name": design.row_labels.name},
        "dropped": {"n_input": design.dropped.n_input, "by_column": design.dropped.by_column},
        "factors": [{"name": f.name, "coef_names": list(f.coef_names), "blocks": [list(b) for b in f.blocks],
                     "levels_name": f.levels.name} for f in design.factors],
    }
    groups = {"/design": xr.Dataset(data, attrs={"meta": json.dumps(meta)})}
    for k, f in enumerate(design.factors):
        groups[f"/design/factor_{k}"] = xr.Dataset({
            "codes": ("obs", f.codes.astype(np.int64)), "levels": ("group", _labels(f.levels)[0]),
            "Z": (("obs", "coef"), f.Z)})
    r = design.residual
    if r is not None:
        data, meta = {}, {"C_names": list(r.C_names), "unit": r.unit, "strata_levels_name": None}
        if r.strata is not None:
            data["strata"] = ("obs", r.strata.astype(np.int64))
            data["strata_levels"] = ("stratum", _labels(r.strata_levels)[0])
            meta["strata_levels_name"] = r.strata_levels.name
        if r.C is not None:
            data["C"] = (("obs", "C_column"), r.C)
        if r.time is not None:
            data["time"] = ("obs", r.time)
        groups["/design/residual"] = xr.Dataset(data, attrs={"meta": json.dumps(meta)})
    return groups


def _design_from_tree(tree: xr.DataTree, spec: ModelSpec) -> Design:
    node = tree["design"]
    ds = node.to_dataset()
    meta = json.loads(ds.attrs["meta"])
    factors = []
    for k, f in enumerate(meta["factors"]):
        fd = node[f"factor_{k}"].to_dataset()
        factors.append(GroupingFactor(
            name=f["name"], codes=fd["codes"].values.astype(np.int64),
            levels=_index(fd["levels"].values.astype(str), "str", f["levels_name"]), Z=fd["Z"].values,
            coef_names=tuple(f["coef_names"]), blocks=tuple(tuple(b) for b in f["blocks"])))
    residual = None
    if spec.residual is not None:
        from ..design.design import ResidualDesign

        rd = node["residual"].to_dataset()
        rmeta = json.loads(rd.attrs["meta"])
        residual = ResidualDesign(
            structure=spec.residual,
            strata=rd["strata"].values.astype(np.int64) if "strata" in rd else None,
            strata_levels=(_index(rd["strata_levels"].values.astype(str), "str", rmeta["strata_levels_name"])
                           if "strata_levels" in rd else None),
            C=rd["C"].values if "C" in rd else None, C_names=tuple(rmeta["C_names"]),
            time=rd["time"].values if "time" in rd else None, unit=rmeta["unit"])
    rows = meta["row_labels"]
    row_values = ds["row_labels"].values
    return Design(
        spec=spec, y=ds["y"].values, X=ds["X"].values, fixed_names=tuple(meta["fixed_names"]),
        fixed_terms=tuple(tuple(t) for t in meta["fixed_terms"]), factors=tuple(factors),
        known_variance=ds["known_variance"].values if "known_variance" in ds else None,
        row_labels=_index(row_values.astype(str) if rows["dtype"] == "str" else row_values, rows["dtype"],
                          rows["name"]),
        dropped=DroppedRows(n_input=meta["dropped"]["n_input"], positions=ds["dropped_positions"].values,
                            by_column=meta["dropped"]["by_column"]),
        nesting=meta["nesting"], term_levels=meta["term_levels"], residual=residual)


# --- the engines' datasets ----------------------------------------------------------------------------------

def _datasets(tree: xr.DataTree) -> dict:
    """Every top-level node but the design: a DataTree when it has groups below it, else a Dataset."""
    out = {}
    for name, node in tree.children.items():
        if name == "design":
            continue
        out[name] = (xr.DataTree.from_dict({child: sub.to_dataset() for child, sub in node.children.items()})
                     if node.children else node.to_dataset())
    return out
