"""CSV text as real systems write it, for the table adapter: the header line (a UTF-8 byte-order mark,
quoted names, a compressed file), the line and column of an encoding error, and stray quotes.

A stray quote makes a CSV reader run on over the following lines. When the run ends in an invalid row,
``split_swallowed_lines`` cuts it back into its lines and recovers every line that is a row of its own;
when a later quote closes it into a valid-looking row, ``check_no_swallowed_rows`` fails naming the file,
row, column and value instead of losing those lines silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.adapters.base import DataConfigError
from features.privacy import pseudonymise_one
from features.quarantine import split_line


def split_swallowed_lines(bad: list[tuple[int | None, str]], sep: str, n_fields: int
                          ) -> tuple[list[tuple[int | None, str]], list[tuple[int, list[str]]]]:
    """A stray quote makes the CSV reader run on over the following lines into one invalid row. Such a row is
    cut back into its lines: the first stays rejected, each following line with the right number of fields
    is recovered (``(line number, fields)``), any other is rejected on its own. Valid rows are never lost to
    a neighbour's quote."""
    out_bad, recovered = [], []
    for n, text in bad:
        lines = text.splitlines()
        if n is None or len(lines) < 2:
            out_bad.append((n, text))
            continue
        out_bad.append((n, lines[0]))
        for k, line in enumerate(lines[1:], start=1):
            if not line.strip():
                continue  # an empty line is no row (the reader skips them too)
            fields = split_line(line, sep)
            if len(fields) == n_fields:
                recovered.append((n + k, fields))
            else:
                out_bad.append((n + k, line))
    return out_bad, recovered


def count_data_lines(path: Path) -> int:
    """Non-empty physical lines of a (possibly compressed) text file, the header line included."""
    n, last = 0, 10  # a line starts after "\n" (and at the start of the file)
    with pa.input_stream(str(path), compression="detect") as fh:
        while chunk := fh.read(1 << 24):
            a = np.frombuffer(chunk, np.uint8)
            prev = np.r_[np.uint8(last), a[:-1]]
            n += int(((prev == 10) & (a != 10) & (a != 13)).sum())
            last = int(a[-1])
    return n


def check_no_swallowed_rows(path: Path, table: pa.Table, bad: list, header: bool, sep: str, file_names: list[str],
                            read_all: Any, user_col: str) -> None:
    """A stray quote closed by a quote some lines later turns those lines into one *valid* row (their text
    inside one value): rows lost without a trace. When the file has more lines than rows, find such a row
    and fail naming file, row, column and value; a genuine multi-line value (no line inside it is a row of
    its own) passes."""
    lines_in_bad = sum(max(1, sum(1 for x in text.splitlines() if x.strip())) for _, text in bad)
    if count_data_lines(path) == table.num_rows + lines_in_bad + int(header):
        return
    full = read_all()
    has_nl = None
    for name in full.column_names:
        col = full.column(name)
        m = pc.fill_null(pc.or_(pc.match_substring(col, "\n"), pc.match_substring(col, "\r")), False)
        has_nl = m if has_nl is None else pc.or_(has_nl, m)
    for r in np.flatnonzero(has_nl.to_numpy(zero_copy_only=False)) if has_nl is not None else []:
        values = {c: full.column(c)[int(r)].as_py() for c in full.column_names}
        for k, (c, v) in enumerate(values.items()):
            parts = (v or "").splitlines()
            inner = [split_line(x, sep) for x in parts[1:-1]]
            first_line_is_a_row = len(parts) > 1 and k + len(parts[0].split(sep)) == len(file_names)
            if first_line_is_a_row or any(len(f) == len(file_names) for f in inner):
                shown = "pseudo:" + pseudonymise_one(v) if c == user_col else v[:120]
                raise DataConfigError(
                    f"{path}, parsed row {int(r) + 1}, column {c!r}: a quote opened here closes only {len(parts) - 1} lines "
                    f"later, so those lines would be read as one value: {shown!r}. Fix the quote in the file.")


def header_names(path: Path, sep: str, encoding: str) -> list[str]:
    """Column names of a CSV header line, parsed as CSV: a UTF-8 byte-order mark, quoted names, spaces around
    names and a compressed file (``.gz``, ``.bz2``, ``.zst``...) are accepted."""
    enc = "utf-8-sig" if encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig") else encoding
    try:
        with pa.input_stream(str(path), compression="detect") as fh:  # .csv.gz, .csv.bz2 ... as the reader does
            head = b""
            while b"\n" not in head and (chunk := fh.read(1 << 16)):
                head += chunk
        first = head.split(b"\n", 1)[0].decode(enc)
    except (OSError, pa.ArrowException, UnicodeDecodeError, LookupError) as e:
        raise DataConfigError(f"cannot read the header line of {path} (data.csv.encoding={encoding}): {e}") from e
    if not first.strip():
        raise DataConfigError(f"{path}: the first line is empty; expected a header line (or set data.csv.header=false "
                              f"and data.csv.names)")
    return [n.strip() for n in split_line(first, sep)]


def encoding_error(path: Path, sep: str, encoding: str, names: list[str], cols: dict[str, str]) -> DataConfigError | None:
    """The first line of ``path`` that is not valid ``encoding``, as an error naming line, column and bytes
    (None when every line decodes: the read failed for another reason)."""
    try:
        with open(path, "rb") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    line.decode(encoding)
                    continue
                except UnicodeDecodeError:
                    pass
                fields = split_line(line.decode(encoding, errors="surrogateescape"), sep)
                at = next((i for i, f in enumerate(fields) if any("\udc80" <= ch <= "\udcff" for ch in f)), None)
                column = names[at] if at is not None and at < len(names) else "?"
                value = fields[at].encode(encoding, errors="surrogateescape") if at is not None else line[:80]
                if column == cols.get("user"):
                    value = ("pseudo:" + pseudonymise_one(value)).encode()  # no clear id, even in an error
                return DataConfigError(f"{path} line {n}, column {column!r}: bytes not valid {encoding} {value!r}; "
                                       f"set data.csv.encoding (e.g. latin-1)")
    except (OSError, LookupError):
        return None
    return None
