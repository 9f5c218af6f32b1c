"""Ready model definitions: one TOML file per model (data set, formula or level equations, centring,
priors, fitting options), loaded with :func:`load_model`.

A file holds either ``formula = "..."`` or a ``[levels]`` table (``level1``, ``groups``, ``[levels.level2]``,
optional ``[levels.level3]`` and ``random``), plus ``dataset`` (a bundled dataset name) or ``data`` (a CSV
path relative to the file), optional ``known_variance``, ``[center]``, ``group_means``, ``[data_columns]``
(new columns as pandas expressions, e.g. ``vi = "sigma**2"``), ``subset`` (a pandas query keeping some rows,
e.g. ``"school in ['1224', '1288']"``), the level-1 error structure (``level1_variance``,
``correlation``, ``time``) and ``[fit]`` (method, draws, priors, ...).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd

from . import datasets
from .errors import InputError, OptionError
from .model import HLM

_MODEL_OPTIONS = ("known_variance", "center", "group_means", "level1_variance", "correlation", "time")
_KEYS = {"title", "description", "reference", "dataset", "data", "formula", "levels", "data_columns", "subset", "fit",
         *_MODEL_OPTIONS}


def load_model(path: str | Path) -> HLM:
    """Read a model file and build its :class:`HLM`; the file's ``[fit]`` options are ``model.fit_options``."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"No model file at {str(path)!r}.")
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise OptionError(f"{path}: not valid TOML ({err}).") from None
    unknown = set(spec) - _KEYS
    if unknown:
        raise OptionError(f"{path}: unknown keys {sorted(unknown)}; allowed keys are {sorted(_KEYS)}.")
    if ("formula" in spec) == ("levels" in spec):
        raise OptionError(f"{path}: give exactly one of 'formula' or a [levels] table.")
    data = _data(spec, path)
    options = {k: spec[k] for k in _MODEL_OPTIONS if k in spec}
    try:
        if "formula" in spec:
            model = HLM(spec["formula"], data, **options)
        else:
            levels = dict(spec["levels"])
            model = HLM.from_levels(levels.pop("level1"), levels.pop("level2", None), groups=levels.pop("groups"),
                                    data=data, **levels, **options)
    except (InputError, KeyError, TypeError) as err:
        raise OptionError(f"{path}: {err}") from None
    model.fit_options = dict(spec.get("fit", {}))
    model.title = spec.get("title", path.stem)
    return model


def _data(spec: dict, path: Path) -> pd.DataFrame:
    if ("dataset" in spec) == ("data" in spec):
        raise OptionError(f"{path}: give exactly one of 'dataset' (a bundled dataset) or 'data' (a CSV path).")
    frame = datasets.load(spec["dataset"]) if "dataset" in spec else pd.read_csv(path.parent / spec["data"])
    for column, expression in spec.get("data_columns", {}).items():
        try:
            frame[column] = frame.eval(expression)
        except Exception as err:  # pandas raises many types for a bad expression
            raise OptionError(f"{path}: cannot compute data column {column!r} = {expression!r}: {err}") from None
    if "subset" in spec:
        try:
            frame = frame.query(spec["subset"])
        except Exception as err:  # pandas raises many types for a bad query
            raise OptionError(f"{path}: cannot select rows with subset = {spec['subset']!r}: {err}") from None
        if frame.empty:
            raise OptionError(f"{path}: subset = {spec['subset']!r} keeps no rows; check the column values.")
    return frame
