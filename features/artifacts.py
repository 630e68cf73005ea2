"""Helpers every stage uses to write artifacts: atomic folders, manifests, hashes, code version.

Every artifact folder is written to a temporary sibling and renamed at the end, so a crash never
leaves a half-written artifact, and carries a ``manifest.json``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """The git commit of this checkout (``+dirty`` when it has local changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty and sha else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; on success replace ``final`` with it.

    On an exception the temporary folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON with sorted keys and a trailing newline (deterministic bytes)."""
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


TableLike = Union[pd.DataFrame, pa.Table]


def write_parquet(table: TableLike, path: Path, schema: pa.Schema | None = None) -> None:
    """Write a table as zstd Parquet with stable bytes (no pandas metadata)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)  # no pandas metadata: stable bytes across versions
    # Dictionary pages only for low-cardinality text (ids compress better without): ~2x faster writes.
    dict_cols = [n for n in ("event", "order_id", "category", "country") if n in table.column_names]
    pq.write_table(table, path, compression="zstd", compression_level=1, use_dictionary=dict_cols or False,
                   write_statistics=True)


def write_parquets(jobs: list[tuple[TableLike | Callable[[], TableLike], Path, pa.Schema | None]],
                   threads: int = 2) -> None:
    """Write several tables at once (Arrow releases the GIL while encoding).

    A job's table may be a callable that builds it, so that only ``threads`` large tables (e.g.
    split parts) exist at a time.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(t: Any, p: Path, s: pa.Schema | None) -> None:
        write_parquet(t() if callable(t) else t, p, s)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for fut in [pool.submit(one, t, p, s) for t, p, s in jobs]:
            fut.result()
