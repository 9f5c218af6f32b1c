"""Set our numbers beside a textbook's printed numbers, and insist they agree within a stated tolerance.

Used by the case studies: each reproduced number is one row (label, book, ours, difference, tolerance),
and :meth:`BookComparison.check` fails loudly naming every row that drifted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class BookComparison:
    """Rows of (book value, our value, tolerance); ``check()`` raises if any row is outside its tolerance."""

    source: str
    rows: list[dict] = field(default_factory=list)

    def add(self, label: str, book: float, ours: float, tolerance: float, note: str = "") -> None:
        """Record one reproduced number; ``tolerance`` is the largest acceptable |ours - book|."""
        ours = float(ours)
        self.rows.append({"quantity": label, "book": book, "ours": round(ours, 6),
                          "difference": round(ours - book, 6), "tolerance": tolerance,
                          "ok": abs(ours - book) <= tolerance, "note": note})

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows).set_index("quantity")

    def check(self) -> pd.DataFrame:
        """Return the table; raise AssertionError listing every number outside its tolerance."""
        table = self.table
        bad = table[~table["ok"]]
        if len(bad):
            lines = [f"{q}: book {r.book}, ours {r.ours} (|diff| {abs(r.difference):.4g} > {r.tolerance})"
                     for q, r in bad.iterrows()]
            raise AssertionError(f"{len(bad)} number(s) from {self.source} drifted:\n" + "\n".join(lines))
        return table
