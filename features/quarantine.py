"""The ledger of rejected and dropped rows: every input row that does not become an event is counted.

``quarantine``: bad rows (unparseable, invalid), kept with source file, row, reason code, message and
the row as text. ``drop``: valid rows removed by a configured rule (duplicates, bots, k-core, rows
without a user ...), counted per rule. Together they give the reconciliation
``n_input_rows == n_events + n_quarantined + sum(n_dropped)``.

No clear-text user id reaches the quarantine: the user field of a typed row is pseudonymised, and a
line that could not be parsed into the expected fields is split with a real CSV parser
(``mask_line``), then every field that may hold the user id is replaced by its pseudonym.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Collection, Iterable

import numpy as np
import pandas as pd

from features.adapters.base import ROW_FIELDS, empty_quarantine
from features.privacy import canonical, pseudonymise, pseudonymise_one


@dataclass
class Ledger:
    files: list[str]
    parts: list[pd.DataFrame] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    columns: list[dict[str, str]] = field(default_factory=list)  # per file: canonical field -> source column

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
            src = [self._column(i, field_name) for i in bad["src_file"].to_numpy()]
            msgs = [f"{f} row {r}, column {c!r}: {message} ({v!r})"
                    for f, r, c, v in zip(files, bad["file_row"].to_numpy(), src, vals)]
        else:
            msgs = [f"{f} row {r}: {message}" for f, r in zip(files, bad["file_row"].to_numpy())]
        self.parts.append(pd.DataFrame({
            "src_file": files.astype(str), "src_row": bad["src_row"].to_numpy(np.int64),
            "reason": reason, "message": msgs, "raw": raw,
        }))
        return df.loc[~mask]

    def _column(self, file_index: int, field_name: str) -> str:
        cols = self.columns[file_index] if file_index < len(self.columns) else {}
        return cols.get(field_name, field_name)

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


@dataclass(frozen=True)
class KnownIds:
    """The user ids of a file's valid rows (canonical text), to recognise an id wherever a malformed line has
    put it."""

    ids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, values: Iterable[str]) -> "KnownIds":
        return cls(frozenset(canonical(v) for v in values if v is not None and str(v).strip()))

    def matches(self, value: str) -> bool:
        return canonical(value) in self.ids


def mask_line(text: str, sep: str, user_pos: int, n_fields: int | None = None,
              known_users: KnownIds | Collection[str] = ()) -> str:
    """A malformed input line as text, with every field that may hold the user id pseudonymised.

    The line is split with the ``csv`` module (quotes and escaped quotes respected; ``sep`` of one
    character), never naively on ``sep``: a quoted ``"Bag, jumbo"`` is one field. A line with ``k`` fields
    too many or too few may have the user id up to ``k`` places from ``user_pos``: all of those fields are
    masked, and so is any field that is a user id seen in the file's valid rows (``known_users``). A field that holds ``sep`` (quoted, or merged by a stray quote) is masked part by
    part under the naive reading too, so that neither reading leaves an id in clear. Masked values read
    ``pseudo:<pseudonym>``.
    """
    known = known_users if isinstance(known_users, KnownIds) else KnownIds.of(known_users)
    fields = split_line(text, sep)
    parts = [f.split(sep) if len(sep) == 1 and sep in f else [f] for f in fields]
    n_naive = sum(len(p) for p in parts)
    csv_window = _window(user_pos, len(fields), n_fields)
    naive_window = _window(user_pos, n_naive, n_fields)
    out, j = [], 0
    for i, sub in enumerate(parts):
        masked = []
        for value in sub:
            v = value.strip()
            hit = (i in csv_window and len(sub) == 1) or j in naive_window or (bool(v) and known.matches(v))
            masked.append("pseudo:" + pseudonymise_one(v) if v and hit else value)
            j += 1
        if len(sub) > 1 and i in csv_window:  # the whole quoted field is where the user should be
            masked = ["pseudo:" + pseudonymise_one(fields[i].strip())] if fields[i].strip() else masked
        out.append(sep.join(masked))
    return join_line(out, sep)


def _window(user_pos: int, n: int, n_expected: int | None) -> range:
    """Positions the user field may have moved to when a line has ``n`` fields instead of ``n_expected``."""
    shift = 0 if n_expected is None else n - n_expected
    return range(user_pos + min(shift, 0), user_pos + max(shift, 0) + 1)


def split_line(text: str, sep: str) -> list[str]:
    """The fields of one CSV line (a quoted field may hold ``sep`` and doubled quotes)."""
    if len(sep) != 1:
        return text.split(sep)
    try:
        rows = list(csv.reader(io.StringIO(text.rstrip("\r\n"), newline=""), delimiter=sep, quotechar='"',
                               doublequote=True, strict=False))
    except csv.Error:
        return text.split(sep)
    return [f for row in rows for f in row]


def join_line(fields: list[str], sep: str) -> str:
    if len(sep) != 1:
        return sep.join(fields)
    buf = io.StringIO()
    csv.writer(buf, delimiter=sep, quotechar='"', lineterminator="").writerow(fields)
    return buf.getvalue()
