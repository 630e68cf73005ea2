"""What every source adapter returns: raw rows in canonical field names, before any cleaning.

An adapter only reads and renames. It never drops a row silently: rows it cannot parse at all
(e.g. a truncated CSV line) come back in ``rejected`` and count in ``n_input_rows``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from features.schema import QUARANTINE_SCHEMA

# Canonical raw event fields an adapter may fill (source columns are renamed to these).
EVENT_FIELDS = ("user", "item", "event", "ts", "price", "quantity", "rating", "order_id", "session_id")
# Bookkeeping columns every raw frame has.
ROW_FIELDS = ("src_file", "src_row", "file_row")


class DataConfigError(ValueError):
    """A data config or an input file is unusable; the message names the setting, file or column."""


@dataclass
class RawData:
    """Raw rows of one dataset, renamed to canonical fields.

    ``frame`` has ``src_file`` (index into ``files``), ``src_row`` (0-based position over all input
    rows in file order: a stable tie-breaker), ``file_row`` (1-based row number inside its file, the
    header not counted), the ``EVENT_FIELDS`` the source has, and user/item attribute columns.
    """

    frame: pd.DataFrame
    files: list[str]
    n_input_rows: int
    time_kind: str = "time"  # "time" (real timestamps) or "order" (positions only)
    rejected: pd.DataFrame = field(default_factory=lambda: empty_quarantine())
    items: pd.DataFrame | None = None  # side table keyed by raw ``item``: category, attributes, title...
    users: pd.DataFrame | None = None  # side table keyed by raw ``user``: source attributes
    user_attributes: tuple[str, ...] = ()  # columns of ``frame`` that describe the user
    item_attributes: tuple[str, ...] = ()  # columns of ``frame`` that describe the item
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # extra validated tables
    tables_rejected: pd.DataFrame | None = None  # rows rejected from ``tables`` (not event rows)
    columns: list[dict[str, str]] = field(default_factory=list)  # per file: canonical field -> source column

    def where(self, file_index: int, canonical: str) -> str:
        """``file, column 'X'`` for messages: the source file and column a canonical field came from."""
        name = self.files[file_index] if 0 <= file_index < len(self.files) else "?"
        cols = self.columns[file_index] if file_index < len(self.columns) else {}
        return f"{name}, column {cols.get(canonical, canonical)!r}"


def empty_quarantine() -> pd.DataFrame:
    return QUARANTINE_SCHEMA.empty_table().to_pandas()
