"""The generic table adapter: Parquet or CSV files of events with a column mapping.

One config describes any event table (``conf/data/events_csv.yaml`` is the template)::

    adapter: table
    path: FILE                      # or files: [{path: ..., columns: {...}}, ...] for several files
    format: null                    # parquet | csv; null = from the file extension
    csv: {sep: ",", header: true, names: null, encoding: utf8}
    columns: {user: CustomerID, item: StockCode, ts: InvoiceDate, ...}   # canonical -> source
    user_attributes: [country]      # canonical names (keys of ``columns``) describing the user
    item_attributes: [title]        # ... describing the item

CSV cells are read as text (typing happens in ``features.cleaning`` so a bad cell quarantines one
row instead of failing the file). Lines with the wrong number of fields (a truncated last line)
come back as rejected rows with reason ``malformed_row``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.adapters.base import EVENT_FIELDS, DataConfigError, RawData, empty_quarantine
from features.adapters.csv_text import (
    check_no_swallowed_rows, encoding_error, header_names, split_swallowed_lines,
)
from features.quarantine import KnownIds, mask_line
from features.tables import read_tables

REQUIRED = ("user", "item")


def file_format(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("parquet", "csv"):
            raise DataConfigError(f"data.format={fmt!r} is not one of ['csv', 'parquet'] (file {path})")
        return fmt
    suffix = path.suffix.lower()
    return "parquet" if suffix in (".parquet", ".pq") else "csv"


def _file_specs(cfg: Any) -> list[dict]:
    """The files to read, each with its merged column mapping (file-level entries override)."""
    base_cols = dict(cfg.get("columns") or {})
    files = cfg.get("files")
    if not files:
        if not cfg.get("path"):
            raise DataConfigError(f"data.path is not set for dataset {cfg.get('name')!r} (give data.path=FILE)")
        files = [{"path": cfg.path}]
    specs = []
    for f in files:
        cols = {**base_cols, **dict(f.get("columns") or {})}
        cols = {k: v for k, v in cols.items() if v is not None}
        missing = [k for k in REQUIRED if k not in cols]
        if missing:
            raise DataConfigError(f"data.columns.{missing[0]} is not set (file {f['path']})")
        specs.append({"path": Path(str(f["path"])), "columns": cols, "format": f.get("format", cfg.get("format"))})
    return specs


def _read_parquet(path: Path, cols: dict[str, str]) -> tuple[pa.Table, list, list]:
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # noqa: BLE001 - any reader error means an unreadable file
        raise DataConfigError(f"cannot read {path}: {e}") from e
    for canon, src in cols.items():
        if src not in schema.names:
            raise DataConfigError(f"{path}: missing column {src!r} (data.columns.{canon}); it has {schema.names}")
    wanted = list(dict.fromkeys(cols.values()))
    text = [c for c in wanted if pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type)]
    table = pq.read_table(path, columns=wanted, read_dictionary=text)
    return table, [], []


def _read_csv(path: Path, cols: dict[str, str], csv_cfg: Any) -> tuple[pa.Table, list, list]:
    """(rows, rejected [(data-row number, masked text)], data-row numbers of rows appended at the end of
    ``rows``: lines recovered from a block that a stray quote had swallowed)."""
    sep = str(csv_cfg.get("sep", ","))
    header = bool(csv_cfg.get("header", True))
    names = list(csv_cfg.get("names") or []) or None
    encoding = str(csv_cfg.get("encoding", "utf8"))
    if not header and not names:
        raise DataConfigError(f"data.csv.names must be given when data.csv.header=false (file {path})")
    bad: list[tuple[int | None, str]] = []

    def read(columns: list[str] | None, rejected: list) -> pa.Table:
        def on_invalid(row: Any) -> str:
            rejected.append((row.number, row.text))
            return "skip"

        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(
                use_threads=False,  # keeps line numbers of invalid rows
                column_names=file_names,  # the header line (parsed above: BOM, quotes, spaces) is skipped
                skip_rows=1 if header else 0,
                encoding=encoding,
            ),
            parse_options=pacsv.ParseOptions(delimiter=sep, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns or file_names, column_types={c: pa.string() for c in columns or file_names},
                strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=False,
            ),
        )

    file_names = header_names(path, sep, encoding) if header else names
    for canon, src in cols.items():
        if src not in file_names:
            raise DataConfigError(f"{path}: missing column {src!r} (data.columns.{canon}); it has {file_names}")
    if len(set(file_names)) != len(file_names):
        dup = next(n for n in file_names if file_names.count(n) > 1)
        raise DataConfigError(f"{path}: column {dup!r} appears twice in the header line")
    wanted = list(dict.fromkeys(cols.values()))
    try:
        table = read(wanted, bad)
    except (OSError, pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise encoding_error(path, sep, encoding, file_names, cols) or DataConfigError(f"cannot read {path}: {e}") from e
    # Line numbers of rejected rows -> data-row numbers (1-based, header not counted); every field of the
    # raw text that may hold the user id is pseudonymised (no clear-text ids in the quarantine).
    offset = 1 if header else 0
    check_no_swallowed_rows(path, table, bad, header, sep, file_names, lambda: read(None, []), cols["user"])
    bad, recovered = split_swallowed_lines(bad, sep, len(file_names))
    if recovered:
        extra = pa.table({c: pa.array([f[file_names.index(c)] or None for _, f in recovered], pa.string()) for c in wanted})
        table = pa.concat_tables([table, extra])
    user_pos = file_names.index(cols["user"])
    known = known_user_ids(table.column(cols["user"])) if bad else KnownIds()
    return (table, [(None if n is None else n - offset, mask_line(text, sep, user_pos, len(file_names), known))
                    for n, text in bad], [n - offset for n, _ in recovered])


def known_user_ids(col: pa.ChunkedArray) -> KnownIds:
    """The distinct user values of a text column (to recognise an id in a malformed line)."""
    return KnownIds.of(pc.unique(col).to_pylist())


def read_event_files(cfg: Any) -> tuple[pd.DataFrame, list[str], int, pd.DataFrame]:
    """Read every configured file; return (frame, file names, n_input_rows, rejected rows).

    Files are renamed to canonical fields and concatenated in Arrow; a field whose type differs
    between files becomes text. Text columns come back as pandas ``Categorical`` (cheap to filter,
    compare and de-duplicate; text functions run once per distinct value).
    """
    tables, names, rejected = [], [], []
    n_total = 0
    for i, spec in enumerate(_file_specs(cfg)):
        path = spec["path"]
        if not path.exists():
            raise DataConfigError(f"input file not found: {path}")
        if path.is_dir():
            raise DataConfigError(f"input path {path} is a directory, not a file (data.path or data.files[].path)")
        fmt = file_format(path, spec["format"])
        cols = spec["columns"]
        if fmt == "parquet":
            table, bad, appended = _read_parquet(path, cols)
        else:
            table, bad, appended = _read_csv(path, cols, cfg.get("csv") or {})
        n_file = table.num_rows + len(bad)
        taken = np.array(sorted([n for n, _ in bad if n is not None] + appended), dtype=np.int64)
        # numbers run to the last line named (an empty line inside a swallowed block has a number, no row)
        file_rows = np.arange(1, max(n_file, int(taken.max()) if len(taken) else 0) + 1, dtype=np.int64)
        if len(taken):
            file_rows = np.setdiff1d(file_rows, taken)
        file_rows = np.r_[file_rows[: table.num_rows - len(appended)], np.asarray(appended, dtype=np.int64)]
        if appended:  # recovered rows back in file order
            order = np.argsort(file_rows, kind="stable")
            table, file_rows = table.take(pa.array(order)), file_rows[order]
        arrays = {"src_file": pa.array(np.full(table.num_rows, i, dtype=np.int16)),
                  "src_row": pa.array(n_total + file_rows - 1), "file_row": pa.array(file_rows)}
        for canon, src in cols.items():
            arrays[canon] = table.column(src)
        tables.append(pa.table(arrays))
        if bad:
            rejected.append(pd.DataFrame({
                "src_file": path.name,
                "src_row": [n_total + (n - 1 if n is not None else n_file - 1) for n, _ in bad],
                "reason": "malformed_row",
                "message": [f"{path.name} row {n}: wrong number of fields (truncated or malformed line)" for n, _ in bad],
                "raw": [t for _, t in bad],
            }))
        names.append(path.name)
        n_total += n_file
    frame = arrow_to_frame(concat_unified(tables))
    rej = pd.concat(rejected, ignore_index=True) if rejected else empty_quarantine()
    return frame, names, n_total, rej


def concat_unified(tables: list[pa.Table]) -> pa.Table:
    """Concatenate tables with the same column names; a column typed differently by different files
    becomes a timestamp when one file has timestamps and the others' text casts cleanly (ISO 8601),
    else text (typed later, row by row, by ``features.cleaning``)."""
    if len(tables) == 1:
        return tables[0]
    names = list(dict.fromkeys(n for t in tables for n in t.column_names))
    columns: dict[str, list] = {}
    for n in names:
        cols = [t.column(n) if n in t.column_names else None for t in tables]
        types = {c.type for c in cols if c is not None}
        cols = [c if c is not None else pa.nulls(t.num_rows, next(iter(types))) for c, t in zip(cols, tables)]
        if len(types) > 1:
            cols = _unify(cols, types)
        columns[n] = cols
    return pa.concat_tables([pa.table({n: columns[n][i] for n in names}) for i in range(len(tables))])


def _unify(cols: list, types: set) -> list:
    stamps = [t for t in types if pa.types.is_timestamp(t)]
    if len(stamps) == 1:
        try:
            return [c if c.type == stamps[0] else _as_text(c).cast(stamps[0]) for c in cols]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return [_as_text(c) for c in cols]


def _as_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col.cast(pa.string())


def arrow_to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow → pandas with text columns as Categoricals."""
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_dictionary(col.type) and not pa.types.is_string(col.type.value_type):
            col = col.cast(col.type.value_type)
        if pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
        if pa.types.is_string(col.type):
            col = col.dictionary_encode()
        if pa.types.is_dictionary(col.type):
            col = col.unify_dictionaries()
        cols[name] = col
    return pa.table(cols).to_pandas(split_blocks=True)


def read_side_table(spec: Any, what: str) -> pd.DataFrame:
    """A small side table (users or items) read with pandas: ``{path, sep, header, names, encoding, key, columns}``.

    Returns a frame with column ``key`` (the raw user/item key, as text) plus the mapped columns.
    """
    path = Path(str(spec.path))
    if not path.exists():
        raise DataConfigError(f"{what} side table not found: {path}")
    names = list(spec.get("names") or []) or None
    if path.suffix.lower() in (".parquet", ".pq"):
        df = pd.read_parquet(path)
        df = df.astype({c: "str" for c in df.columns if pd.api.types.is_string_dtype(df[c].dtype)})
    else:
      try:
        df = pd.read_csv(
            path, sep=str(spec.get("sep", ",")), header=0 if spec.get("header", names is None) else None,
            names=names, encoding=spec.get("encoding", "utf8"), dtype=str, engine="python",
            keep_default_na=False, na_values=[""],
        )
      except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataConfigError(f"cannot read {what} side table {path}: {e}") from e
    cols = dict(spec.get("columns") or {})
    key = spec.get("key")
    for src in [key, *cols.values()]:
        if src not in df.columns:
            raise DataConfigError(f"{path}: missing column {src!r} in the {what} side table; it has {list(df.columns)}")
    out = pd.DataFrame({"key": df[key].str.strip()})
    first = dict(spec.get("first_token") or {})  # e.g. {category: "|"}: keep the first of a list
    for canon, src in cols.items():
        out[canon] = df[src].str.split(first[canon], regex=False).str[0] if canon in first else df[src]
    return out.drop_duplicates("key", keep="first").reset_index(drop=True)


def load_table_source(cfg: Any) -> RawData:
    frame, names, n_input, rejected = read_event_files(cfg)
    columns = [spec["columns"] for spec in _file_specs(cfg)]
    time_kind = str((cfg.get("time") or {}).get("kind", "time"))
    if time_kind not in ("time", "order"):
        raise DataConfigError(f"data.time.kind={time_kind!r} is not one of ['order', 'time']")
    if time_kind == "time" and "ts" not in frame.columns:
        raise DataConfigError("data.columns.ts is not set but data.time.kind is 'time' (set time.kind=order)")
    side = cfg.get("side") or {}
    users = read_side_table(side["users"], "users") if side.get("users") else None
    items = read_side_table(side["items"], "items") if side.get("items") else None
    known = set(EVENT_FIELDS)
    tables, tables_q, _ = read_tables(cfg) if cfg.get("tables") else ({}, None, None)
    return RawData(
        frame=frame,
        files=names,
        n_input_rows=n_input,
        time_kind=time_kind,
        rejected=rejected,
        users=users,
        items=items,
        user_attributes=tuple(c for c in (cfg.get("user_attributes") or []) if c in frame.columns and c not in known),
        item_attributes=tuple(c for c in (cfg.get("item_attributes") or []) if c in frame.columns and c not in known),
        tables=tables,
        tables_rejected=tables_q,
        columns=columns,
    )
