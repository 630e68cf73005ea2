"""The ledger of rejected and dropped rows: every input row that does not become an event is counted.

``quarantine``: bad rows (unparseable, invalid), kept with source file, row, reason code, message and
the row as text. ``drop``: valid rows removed by a configured rule (duplicates, bots, k-core, rows
without a user ...), counted per rule. Together they give the reconciliation
``n_input_rows == n_events + n_quarantined + sum(n_dropped)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.adapters.base import ROW_FIELDS, empty_quarantine
from features.privacy import pseudonymise


@dataclass
class Ledger:
    files: list[str]
    parts: list[pd.DataFrame] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def add_rejected(self, rejected: pd.DataFrame) -> None:
        if len(rejected):
            self.parts.append(rejected)

    def quarantine(self, df: pd.DataFrame, mask: np.ndarray | pd.Series, reason: str, message: str,
                   field_name: str | None = None) -> pd.DataFrame:
        """Move the rows of ``df`` where ``mask`` holds to quarantine; return the rest."""
        mask = np.asarray(mask, dtype=bool)
        n = int(mask.sum())
        if n == 0:
            return df
        bad = df.loc[mask]
        files = np.asarray(self.files, dtype=object)[bad["src_file"].to_numpy()]
        value_cols = [c for c in bad.columns if c not in ROW_FIELDS]
        raw = _rows_as_text(bad[value_cols])
        if field_name is not None and field_name in bad.columns:
            vals = bad[field_name].astype("object").to_numpy()
            if field_name == "user":
                vals = pseudonymise(pd.Series(vals, dtype="object")).astype("object").to_numpy()
            msgs = [f"{f} row {r}: {message} ({field_name}={v!r})" for f, r, v in zip(files, bad["file_row"].to_numpy(), vals)]
        else:
            msgs = [f"{f} row {r}: {message}" for f, r in zip(files, bad["file_row"].to_numpy())]
        self.parts.append(pd.DataFrame({
            "src_file": files.astype(str), "src_row": bad["src_row"].to_numpy(np.int64),
            "reason": reason, "message": msgs, "raw": raw,
        }))
        return df.loc[~mask]

    def drop(self, df: pd.DataFrame, mask: np.ndarray | pd.Series, rule: str) -> pd.DataFrame:
        """Remove the rows of ``df`` where ``mask`` holds, counting them under ``rule``."""
        mask = np.asarray(mask, dtype=bool)
        n = int(mask.sum())
        self.dropped[rule] = self.dropped.get(rule, 0) + n
        return df.loc[~mask] if n else df

    def table(self) -> pd.DataFrame:
        """All quarantined rows sorted by source row (deterministic)."""
        if not self.parts:
            return empty_quarantine()
        q = pd.concat(self.parts, ignore_index=True)
        return q.sort_values(["src_row", "reason"], kind="stable").reset_index(drop=True)


def _rows_as_text(df: pd.DataFrame) -> list[str]:
    """Rows as ``col=value|...`` text; the user key is pseudonymised (no clear-text ids in artifacts)."""
    cols = list(df.columns)
    values = [df[c].astype("object").to_numpy() for c in cols]
    if "user" in cols:
        i = cols.index("user")
        values[i] = pseudonymise(pd.Series(values[i], dtype="object")).astype("object").to_numpy()
    return ["|".join(f"{c}={'' if _isnull(v) else v}" for c, v in zip(cols, row)) for row in zip(*values)]


def _isnull(v: object) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False
