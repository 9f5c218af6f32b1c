"""Ready model definitions: one TOML file per model (data set, formula or level equations, centring,
priors, fitting options), loaded with :func:`load_model`.

A file holds either ``formula = "..."`` or a ``[levels]`` table (``level1``, ``groups``, ``[levels.level2]``,
optional ``[levels.level3]``, ``random`` and ``correlated``), plus ``dataset`` (a bundled dataset name) or
``data`` (a CSV path relative to the file), optional ``known_variance``, ``[center]``, ``group_means``,
``[data_columns]`` (new columns as expressions, e.g. ``vi = "sigma**2"``), ``subset`` (a condition keeping
some rows, e.g. ``"school in ['1224', '1288']"``), the level-1 error structure (``level1_variance``,
``correlation``, ``time``) and ``[fit]`` (method, draws, priors, ...).

A model file is data, never code: formula terms are checked against the allow-list of
:mod:`bayeshlm.spec.expressions` (a file cannot set ``unsafe_formula``), ``data_columns`` and ``subset``
are computed by the restricted evaluator there, and ``data`` must lie inside the file's folder (or inside
the ``data_root`` the caller allows).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pandas as pd

from . import datasets
from .errors import DataError, InputError, OptionError
from .model import HLM
from .spec.expressions import evaluate

_MODEL_OPTIONS = ("known_variance", "center", "group_means", "level1_variance", "correlation", "time", "family", "link",
                  "trials", "exposure")
_KEYS = {"title", "description", "reference", "dataset", "data", "formula", "levels", "data_columns", "subset", "fit",
         *_MODEL_OPTIONS}
_LEVEL_KEYS = {"level1", "level2", "level3", "groups", "random", "correlated"}
_UNSAFE = "unsafe_formula"


def load_model(path: str | Path, *, data_root: str | Path | None = None) -> HLM:
    """Read a model file and build its :class:`HLM`; the file's ``[fit]`` options are ``model.fit_options``.

    ``data = "..."`` is read relative to the model file and must lie inside its folder (symbolic links
    resolved), or inside ``data_root`` when given (the command line's ``--data-root``).
    """
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"No model file at {str(path)!r}.")
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise OptionError(f"{path}: not a text file (it is not UTF-8); a model file is TOML text.") from None
    except tomllib.TOMLDecodeError as err:
        raise OptionError(f"{path}: not valid TOML ({err}).") from None
    _check_keys(spec, path)
    data = _data(spec, path, data_root)
    options = {k: spec[k] for k in _MODEL_OPTIONS if k in spec}
    try:
        if "formula" in spec:
            model = HLM(spec["formula"], data, **options)
        else:
            levels = dict(spec["levels"])
            model = HLM.from_levels(levels.pop("level1"), levels.pop("level2", None), groups=levels.pop("groups"),
                                    data=data, **levels, **options)
    except InputError as err:
        raise type(err)(f"{path}: {err}") from None
    except (KeyError, TypeError) as err:
        raise OptionError(f"{path}: {err}") from None
    model.fit_options = dict(spec.get("fit", {}))
    model.title = spec.get("title", path.stem)
    return model


def _check_keys(spec: dict, path: Path) -> None:
    for table, where in ((spec, "the file"), (spec.get("levels"), "[levels]"), (spec.get("fit"), "[fit]")):
        if isinstance(table, dict) and _UNSAFE in table:
            raise OptionError(f"{path}: {_UNSAFE} cannot be set in a model file ({where}): a model file is data and "
                              "its formulas are always checked. Write the terms with the allowed functions, or "
                              "build the model in Python with bh.HLM(..., unsafe_formula=True) if you wrote it.")
    unknown = set(spec) - _KEYS
    if unknown:
        raise OptionError(f"{path}: unknown keys {sorted(unknown)}; allowed keys are {sorted(_KEYS)}.")
    if ("formula" in spec) == ("levels" in spec):
        raise OptionError(f"{path}: give exactly one of 'formula' or a [levels] table.")
    if "levels" in spec:
        if not isinstance(spec["levels"], dict):
            raise OptionError(f"{path}: 'levels' must be a table ([levels] with level1, level2, groups, ...).")
        unknown = set(spec["levels"]) - _LEVEL_KEYS
        if unknown:
            raise OptionError(f"{path}: unknown keys {sorted(unknown)} in [levels]; allowed are {sorted(_LEVEL_KEYS)}.")
        missing = sorted({"level1", "groups"} - set(spec["levels"]))
        if missing:
            raise OptionError(f"{path}: [levels] needs {' and '.join(missing)} (e.g. level1 = \"mathach ~ cses\", "
                              "groups = \"school\").")
    for key in ("data_columns", "fit", "center"):
        if key in spec and not isinstance(spec[key], dict):
            raise OptionError(f"{path}: '{key}' must be a table, e.g. [{key}].")


def _data(spec: dict, path: Path, data_root: str | Path | None) -> pd.DataFrame:
    if ("dataset" in spec) == ("data" in spec):
        raise OptionError(f"{path}: give exactly one of 'dataset' (a bundled dataset) or 'data' (a CSV path).")
    if "dataset" in spec:
        frame = datasets.load(str(spec["dataset"]))
    else:
        frame = _read_csv(_data_path(spec["data"], path, data_root), path)
    for column, expression in spec.get("data_columns", {}).items():
        value = evaluate(expression, frame, f"{path}: data column {column!r} = {expression!r}")
        if isinstance(value, str | list):
            raise OptionError(f"{path}: data column {column!r} = {expression!r} is text, not a computed column.")
        frame[column] = value
    if "subset" in spec:
        keep = evaluate(spec["subset"], frame, f"{path}: cannot select rows with subset = {spec['subset']!r}")
        if not (isinstance(keep, pd.Series) and pd.api.types.is_bool_dtype(keep)):
            raise OptionError(f"{path}: subset = {spec['subset']!r} is not a condition on the rows; write one such "
                              "as \"school in ['1224', '1288']\" or \"ses > 0 and sector == 1\".")
        frame = frame[keep]
        if frame.empty:
            raise OptionError(f"{path}: subset = {spec['subset']!r} keeps no rows; check the column values.")
    return frame


def _data_path(data, path: Path, data_root: str | Path | None) -> Path:
    """The CSV file named by ``data``: relative to the model file, inside its folder or ``data_root``."""
    if not isinstance(data, str) or not data.strip():
        raise OptionError(f"{path}: 'data' must be a CSV path relative to the model file, e.g. data = \"scores.csv\".")
    root = Path(data_root if data_root is not None else path.parent).resolve()
    given = Path(data)
    if given.is_absolute() and data_root is None:
        raise OptionError(f"{path}: data = {data!r} is an absolute path; write it relative to the model file's "
                          "folder, or allow a folder with --data-root (load_model(..., data_root=...)).")
    target = (path.parent / given).resolve()
    if not target.is_relative_to(root):
        where = "the data root" if data_root is not None else "the model file's folder"
        raise OptionError(f"{path}: data = {data!r} points outside {where} ({root}); model files may read data "
                          "only there. Move the file, or allow its folder with --data-root "
                          "(load_model(..., data_root=...)).")
    return target


def _read_csv(target: Path, path: Path) -> pd.DataFrame:
    """Read a model file's ``data`` CSV; errors name the model file and the path as written relative to it."""
    return read_csv(target, f"{path}: data = {os.path.relpath(target, path.parent.resolve())!r}")


def read_csv(target: Path, where: str) -> pd.DataFrame:
    """Read ``target`` as UTF-8 CSV. Errors start with ``where`` (how the caller named the file) and say what is
    wrong -- no such file, not UTF-8, empty, not CSV -- without quoting the file's contents."""
    target = Path(target)
    if not target.is_file():
        problem = "is not a file" if target.exists() else "no such file"
        raise OptionError(f"{where}: {problem}.")
    try:
        return pd.read_csv(target, encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{where} is not UTF-8 text; save it as a UTF-8 CSV file.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{where} is empty: it has no header row and no data.") from None
    except (pd.errors.ParserError, ValueError):
        raise DataError(f"{where} cannot be read as CSV (rows with different numbers of fields, "
                        "or not a comma-separated file).") from None
    except OSError as err:
        raise OptionError(f"{where} cannot be opened ({err.strerror}).") from None
