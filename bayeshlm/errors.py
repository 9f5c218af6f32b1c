"""Exceptions raised by bayeshlm.

Every message says what is wrong (which column, which rows, which option) and what to do about it.
All of them derive from :class:`InputError`, itself a ``ValueError``, so ``except ValueError`` still works, except
:class:`SaveError`, an ``OSError`` (the disk, not the input, failed).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(ValueError):
    """The data, formula or options cannot describe a valid model."""


class FormulaError(InputError):
    """The model formula (or a level equation) cannot be parsed or refers to something absent."""


class DataError(InputError):
    """The data frame cannot be used as given (missing columns, bad values, degenerate structure)."""


class OptionError(InputError):
    """An argument has an impossible or unknown value."""


class PrecisionWarning(UserWarning):
    """A column's values sit so far from zero, relative to their spread, that double precision keeps few digits
    of their variation: the estimates are as precise as those digits and no more."""


class RowsUnavailableError(OptionError):
    """A result needs the individual rows, but the model was built from per-group aggregates (Dask input)."""


class FitFormatError(InputError):
    """A file given to ``load_fit`` is not a fit saved by this version of bayeshlm, or it is damaged."""


class SaveError(OSError):
    """Writing a file failed (disk full, no permission); any earlier file at that path is left unchanged."""


def closest_names(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Render a 'did you mean' hint for ``name`` among ``candidates`` (empty string when nothing is close)."""
    matches = difflib.get_close_matches(name, [str(c) for c in candidates], n=n, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


def describe_rows(rows: Iterable[int], limit: int = 5) -> str:
    """Render row positions for a message: 'rows 3, 17, 40 and 12 more'."""
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    noun = "row" if len(rows) == 1 else "rows"
    return f"{noun} {shown}{more}"
