"""``python -m features.prepare data=<name>``: raw files → ``${paths.processed}/<name>/``.

Reads the dataset through its adapter, cleans it (``features.cleaning``), assigns dense ids,
pseudonymises user keys, builds the item and user tables and the splits, and writes everything
atomically with a manifest (see ``features.schema`` for the layout). A re-run whose inputs (content
hashes) and config are unchanged is skipped unless ``force=true``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.adapters import DataConfigError, RawData, load_raw
from features.artifacts import atomic_dir, code_version, file_sha256, read_json, write_json
from features.cleaning import clean
from features.privacy import _canonical, pseudo_key, pseudonymise
from features.processed import processed_dir
from features.quarantine import Ledger
from features.schema import EVENT_SCHEMA, ITEM_SCHEMA, QUARANTINE_SCHEMA
from features.splits import make_splits

log = logging.getLogger("features.prepare")
PIPELINE_VERSION = 1  # bump when a change of code changes the outputs for the same inputs


@dataclass
class PrepareResult:
    out_dir: Path
    manifest: dict
    skipped: bool


# ---------------------------------------------------------------- ids and tables
def dense_ids(keys: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Dense ids 0..n-1 in the natural order of the keys (numeric when every key is a number)."""
    codes, uniq = pd.factorize(keys, sort=False)
    uniq = pd.Index(uniq)
    try:
        order_key = pd.to_numeric(pd.Series(uniq), errors="raise").to_numpy(dtype=float)
    except (ValueError, TypeError):
        order_key = None
    if order_key is not None:
        order = np.lexsort((np.asarray(uniq.astype(str)), order_key))
    else:
        order = np.argsort(np.asarray(uniq.astype(str)), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank[codes], uniq[order]


def key_text(uniq: pd.Index) -> pd.Series:
    """Canonical text of raw keys (12346.0 → "12346"), computed once per distinct key."""
    if pd.api.types.is_float_dtype(uniq.dtype):
        arr = uniq.to_numpy()
        if np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return pd.Series(arr.astype(np.int64).astype(str), dtype="str")
    if pd.api.types.is_integer_dtype(uniq.dtype):
        return pd.Series(uniq.to_numpy().astype(str), dtype="str")
    return pd.Series([_canonical(u) for u in uniq], dtype="str")


def build_events(df: pd.DataFrame) -> tuple[pa.Table, pd.DataFrame, np.ndarray, pd.Index, pd.Index]:
    """Dense ids and the sorted events.

    Returns (events as an Arrow table of ``EVENT_SCHEMA``, a light pandas view of it with the columns
    later steps need, the row order applied to ``df``, user keys, item keys by dense id).
    """
    user_id, users = dense_ids(df["user"])
    item_id, items = dense_ids(df["item"])
    src_row = df["src_row"].to_numpy(np.int64)
    order = np.lexsort((src_row, ts_micros(df["ts"]), user_id))
    take = pa.array(order)
    arrays = []
    for f in EVENT_SCHEMA:
        if f.name == "user_id":
            arr = pa.array(user_id[order])
        elif f.name == "item_id":
            arr = pa.array(item_id[order])
        elif f.name == "src_row":
            arr = pa.array(src_row[order])
        elif f.name not in df.columns:
            arr = pa.nulls(len(df), f.type)
        else:
            col = df[f.name]
            if isinstance(col.dtype, pd.CategoricalDtype):
                arr = pa.array(col.array).take(take).cast(f.type)
            else:
                arr = pa.array(col.array, from_pandas=True).take(take).cast(f.type)
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)
    light = pd.DataFrame({
        "user_id": user_id[order], "item_id": item_id[order],
        "event": pd.Categorical(df["event"].array).take(order) if not isinstance(df["event"].dtype, pd.CategoricalDtype)
        else df["event"].array.take(order),
        "ts": df["ts"].array.take(order),
        "price": df["price"].to_numpy(np.float64)[order] if "price" in df.columns else np.full(len(df), np.nan),
    })
    return table, light, order, users, items


def ts_micros(ts: pd.Series) -> np.ndarray:
    """Microseconds since the epoch of a UTC timestamp column."""
    return ts.astype("datetime64[us, UTC]").astype(np.int64).to_numpy()


def _mode_per_id(ids: np.ndarray, values: pd.Series) -> pd.Series:
    """The most frequent non-null value per id (ties: the first in sorted order), indexed by id."""
    codes, uniques = pd.factorize(values, sort=True)
    ok = codes >= 0
    if not ok.any():
        return pd.Series(dtype="object")
    ids, codes = ids[ok].astype(np.int64), codes[ok].astype(np.int64)
    pair = ids * (len(uniques) + 1) + codes
    pair_codes, upair = pd.factorize(pair)  # hashing, no sort of all rows
    counts = np.bincount(pair_codes, minlength=len(upair))
    upair = np.asarray(upair)
    pid, pcode = upair // (len(uniques) + 1), upair % (len(uniques) + 1)
    order = np.lexsort((pcode, -counts, pid))  # per id: highest count, then smallest value
    first = np.r_[True, pid[order][1:] != pid[order][:-1]]
    sel = order[first]
    return pd.Series(np.asarray(uniques)[pcode[sel]], index=pid[sel])


def build_items(events: pd.DataFrame, df_sorted_attrs: dict[str, pd.Series], items: pd.Index,
                side: pd.DataFrame | None) -> pd.DataFrame:
    n = len(items)
    keys = key_text(items)
    out = pd.DataFrame({"item_id": np.arange(n, dtype=np.int64), "item_key": keys})
    priced = events[(events["event"] != "return") & events["price"].notna()]
    g = priced.groupby("item_id")["price"]
    out["price_mean"] = g.mean().reindex(out["item_id"]).to_numpy()
    out["price_median"] = g.median().reindex(out["item_id"]).to_numpy()
    out["price_mean"] = out["price_mean"].astype("float64")
    out["price_median"] = out["price_median"].astype("float64")
    out["n_events"] = np.bincount(events["item_id"].to_numpy(), minlength=n).astype(np.int64)
    ids = events["item_id"].to_numpy()
    for name, values in df_sorted_attrs.items():
        out[name] = _mode_per_id(ids, values).reindex(out["item_id"]).to_numpy()
    if side is not None:
        side = side.set_index("key")
        for col in side.columns:
            mapped = side[col].reindex(keys.to_numpy()).to_numpy()
            if col in out.columns:  # the side table fills what the events do not say
                out[col] = np.where(pd.isna(out[col].to_numpy()), mapped, out[col].to_numpy())
            else:
                out[col] = mapped
    if "category" not in out.columns:
        out["category"] = None
    if "attributes" not in out.columns:
        out["attributes"] = [[] for _ in range(n)]
    else:
        out["attributes"] = [list(a) if isinstance(a, (list, np.ndarray)) else [] for a in out["attributes"]]
    out["category"] = out["category"].astype("str").where(out["category"].notna(), None)
    first = list(ITEM_SCHEMA.names)
    return out[first + [c for c in out.columns if c not in first]]


def build_users(events: pd.DataFrame, attrs: dict[str, pd.Series], users: pd.Index, side: pd.DataFrame | None,
                key: bytes, already_pseudonymised: bool = False) -> pd.DataFrame:
    """One row per dense user id. ``already_pseudonymised`` (``data.user_key_pseudonymised``): the source
    user keys are pseudonyms already (the service's event log) and are kept as they are, not hashed again."""
    keys = key_text(users)
    if already_pseudonymised:
        check_pseudonyms(keys)
        user_key = keys.astype("string")
    else:
        user_key = pseudonymise(keys, key)
    out = pd.DataFrame({"user_id": np.arange(len(users), dtype=np.int64), "user_key": user_key})
    ids = events["user_id"].to_numpy()
    for name, values in attrs.items():  # the latest non-null value (events are sorted by user, time)
        s = pd.Series(values.to_numpy(), index=ids).dropna()
        out[name] = s.groupby(level=0).last().reindex(out["user_id"]).to_numpy()
    if side is not None:
        side = side.set_index("key")
        for col in side.columns:
            out[col] = side[col].reindex(keys.to_numpy()).to_numpy()
    out["n_events"] = np.bincount(ids, minlength=len(users)).astype(np.int64)
    return out


def check_pseudonyms(keys: pd.Series) -> None:
    """With ``data.user_key_pseudonymised=true`` every user key must look like ``pseudonymise_one``'s output
    (16 lower-case hex characters): a clear-text id must never pass through unhashed."""
    ok = keys.str.fullmatch(r"[0-9a-f]{16}").fillna(False).to_numpy(bool)
    if not ok.all():
        bad = keys[~ok].iloc[0]
        raise DataConfigError(f"data.user_key_pseudonymised=true but user key {bad!r} is not a pseudonym "
                              f"(16 hex characters, features.privacy.pseudonymise_one); "
                              f"{int((~ok).sum())} such key(s). Set data.user_key_pseudonymised=false for raw ids.")


# ---------------------------------------------------------------- writing
def _write(table: pd.DataFrame | pa.Table, path: Path, schema: pa.Schema | None = None) -> None:
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)  # no pandas metadata: stable bytes across versions
    # Dictionary pages only for low-cardinality text (ids compress better without): ~2x faster writes.
    dict_cols = [n for n in ("event", "order_id", "category", "country") if n in table.column_names]
    pq.write_table(table, path, compression="zstd", compression_level=1, use_dictionary=dict_cols or False,
                   write_statistics=True)


def write_all(jobs: list[tuple[Any, Path, pa.Schema | None]], threads: int = 2) -> None:
    """Write several tables at once (Arrow releases the GIL while encoding).

    A job's table may be a callable that builds it, so that only ``threads`` large tables (e.g.
    split parts) exist at a time.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(t: Any, p: Path, s: pa.Schema | None) -> None:
        _write(t() if callable(t) else t, p, s)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for fut in [pool.submit(one, t, p, s) for t, p, s in jobs]:
            fut.result()


def input_files(data_cfg: Any) -> list[Path]:
    """Every input file named in the data config (keys ``path`` and ``attributes`` at any depth)."""
    from omegaconf import DictConfig, ListConfig

    found: list[Path] = []

    def walk(node: Any) -> None:
        if isinstance(node, DictConfig):
            for k in node:
                v = node.get(k)
                if k in ("path", "attributes") and isinstance(v, str) and v:
                    found.append(Path(v))
                else:
                    walk(v)
        elif isinstance(node, ListConfig):
            for v in node:
                walk(v)

    walk(data_cfg)
    return list(dict.fromkeys(found))


def pipeline_code_hash() -> str:
    """Hash of the data layer's source files: a code change re-runs preparation."""
    root = Path(__file__).resolve().parent
    files = sorted([*root.glob("adapters/*.py"), *(root / n for n in (
        "prepare.py", "cleaning.py", "splits.py", "quarantine.py", "synthetic.py", "schema.py", "privacy.py", "tables.py"))])
    h = hashlib.sha256()
    for f in files:
        if f.exists():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def fingerprint(data_cfg: Any) -> tuple[str, dict[str, str], dict]:
    """(fingerprint, input hashes, resolved data config): what decides whether a re-run is needed."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(data_cfg, resolve=True)
    hashes = {}
    for p in input_files(data_cfg):
        if not p.exists():
            raise DataConfigError(f"input file not found: {p}")
        hashes[str(p)] = file_sha256(p)
    # A different pseudonymisation key changes user_key: it must re-run too (only a hash of it enters).
    key_id = hashlib.sha256(b"shoprec-key-id:" + pseudo_key()[0]).hexdigest()
    blob = json.dumps({"config": resolved, "inputs": hashes, "pipeline": PIPELINE_VERSION, "code": pipeline_code_hash(),
                       "key": key_id}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), hashes, resolved


def run(cfg: Any) -> PrepareResult:
    """Prepare ``cfg.data`` into ``processed_dir(cfg)``; returns where and the manifest."""
    t0 = time.perf_counter()
    data_cfg = cfg.data
    out_dir = processed_dir(cfg)
    fp, hashes, resolved = fingerprint(data_cfg)
    manifest_path = out_dir / "manifest.json"
    if not cfg.get("force", False) and manifest_path.exists():
        old = read_json(manifest_path)
        if old.get("fingerprint") == fp:
            log.info("%s is up to date (same inputs and config): skipped; force=true to redo", out_dir)
            return PrepareResult(out_dir, old, True)

    raw = load_raw(data_cfg)
    if data_cfg.get("kind", "events") == "tables":
        from features.tables import write_tables  # validated tables only (hillstrom)

        return write_tables(raw, cfg, out_dir, fp, hashes, resolved)
    ledger = Ledger(raw.files)
    stats = input_stats(raw)
    df = clean(raw, data_cfg, ledger)
    raw.frame = pd.DataFrame()  # the uncleaned rows are no longer needed (peak memory)
    key, key_source = pseudo_key()
    ev_table, events, order, users_idx, items_idx = build_events(df)
    order_attrs = _sorted_like(df, order)
    item_attrs = {c: order_attrs[c] for c in raw.item_attributes if c in order_attrs}
    user_attrs = {c: order_attrs[c] for c in raw.user_attributes if c in order_attrs}
    items = build_items(events, item_attrs, items_idx, raw.items)
    users = build_users(events, user_attrs, users_idx, raw.users, key,
                        already_pseudonymised=bool(data_cfg.user_key_pseudonymised))
    n_orders = int(df["order_id"].nunique()) if "order_id" in df.columns and df["order_id"].notna().any() else None
    del df, order_attrs, item_attrs, user_attrs  # free the cleaned rows before writing (peak memory)
    quarantine = ledger.table()
    splits = make_splits(events, data_cfg.get("splits"), raw.time_kind)

    n_dropped = dict(sorted(ledger.dropped.items()))
    n_accounted = len(events) + len(quarantine) + sum(n_dropped.values())
    if n_accounted != raw.n_input_rows:
        raise RuntimeError(f"reconciliation failed for {data_cfg.name}: {raw.n_input_rows} input rows but "
                           f"{len(events)} events + {len(quarantine)} quarantined + {sum(n_dropped.values())} dropped")

    with atomic_dir(out_dir) as tmp:
        jobs: list = [(ev_table, tmp / "events.parquet", None), (items, tmp / "items.parquet", None),
                      (users, tmp / "users.parquet", None), (quarantine, tmp / "quarantine.parquet", QUARANTINE_SCHEMA)]
        for sp in splits:
            (tmp / "splits" / sp.kind).mkdir(parents=True)
            for part, rows in sp.rows.items():
                jobs.append((lambda r=rows: ev_table.take(pa.array(r)), tmp / "splits" / sp.kind / f"{part}.parquet", None))
        if raw.tables:
            (tmp / "tables").mkdir()
        for name, table in raw.tables.items():
            jobs.append((table, tmp / "tables" / f"{name}.parquet", None))
        if raw.tables_rejected is not None:
            jobs.append((raw.tables_rejected, tmp / "tables" / "quarantine.parquet", QUARANTINE_SCHEMA))
        write_all(jobs, int(cfg.data.get("write_threads", 2)))
        outputs = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*.parquet"))}
        ts = events["ts"]
        manifest = {
            "schema_version": 1,
            "name": str(data_cfg.name),
            "adapter": str(data_cfg.adapter),
            "time_kind": raw.time_kind,
            "files": raw.files,
            "input_stats": stats,
            "n_input_rows": int(raw.n_input_rows),
            "n_events": int(len(events)),
            "n_quarantined": int(len(quarantine)),
            "n_dropped": n_dropped,
            "n_users": int(len(users)),
            "n_items": int(len(items)),
            "n_orders": n_orders,
            "event_counts": {k: int(v) for k, v in events["event"].value_counts().sort_index().items()},
            "time_range": [ts.min().isoformat(), ts.max().isoformat()] if len(ts) else None,
            "quarantine_by_reason": {k: int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()},
            "splits": {sp.kind: sp.counts() for sp in splits},
            "tables": {name: int(len(t)) for name, t in sorted(raw.tables.items())},
            "tables_quarantined": (int(len(raw.tables_rejected)) if raw.tables_rejected is not None else 0),
            "config": resolved,
            "inputs": hashes,
            "outputs": outputs,
            "fingerprint": fp,
            "pseudonymisation_key": key_source,
            "code_version": code_version(),
            "device": "cpu",
        }
        write_json(tmp / "manifest.json", manifest)
    log.info("prepared %s: %d input rows -> %d events, %d quarantined, %s dropped; %d users, %d items (%.1fs)",
             data_cfg.name, raw.n_input_rows, len(events), len(quarantine), n_dropped, len(users), len(items),
             time.perf_counter() - t0)
    return PrepareResult(out_dir, manifest, False)


def input_stats(raw: RawData) -> dict[str, dict[str, int]]:
    """Per input file, before cleaning: parsed rows and distinct users, items and orders (to compare
    with published figures)."""
    df = raw.frame
    out = {}
    for i, name in enumerate(raw.files):
        part = df[df["src_file"].to_numpy() == i] if len(raw.files) > 1 else df
        st = {"rows": int(len(part))}
        for col, key in (("user", "distinct_users"), ("item", "distinct_items"), ("order_id", "distinct_orders")):
            if col in part.columns:
                st[key] = int(part[col].nunique())
        out[name] = st
    return out


def _sorted_like(df: pd.DataFrame, order: np.ndarray) -> dict[str, pd.Series]:
    """Attribute columns of the cleaned frame, reordered like the events (``order``)."""
    extra = [c for c in df.columns if c not in ("user", "item", "event", "ts", "price", "quantity", "rating", "total",
                                                  "session_id", "order_id", "src_file", "src_row", "file_row")]
    if not extra:
        return {}
    return {c: df[c].iloc[order].reset_index(drop=True) for c in extra}


def check_data_name(argv: list[str], conf_dir: Path) -> None:
    """Fail with one line when ``data=<name>`` names no config (before Hydra prints a long error)."""
    for a in argv:
        if a.startswith("data=") or a.startswith("+data="):
            name = a.split("=", 1)[1]
            if not (conf_dir / "data" / f"{name}.yaml").exists() or name.startswith("_"):
                known = sorted(p.stem for p in (conf_dir / "data").glob("*.yaml") if not p.stem.startswith("_"))
                print(f"error: unknown dataset data={name!r}; known: {', '.join(known)}", file=sys.stderr)
                sys.exit(2)


def main() -> None:
    import hydra

    conf_dir = Path(__file__).resolve().parent.parent / "conf"
    check_data_name(sys.argv[1:], conf_dir)

    @hydra.main(config_path="../conf", config_name="prepare", version_base=None)
    def _main(cfg: Any) -> None:
        try:
            res = run(cfg)
        except (DataConfigError, ValueError) as e:
            print(f"error: {e}".splitlines()[0], file=sys.stderr)
            sys.exit(2)
        m = res.manifest
        print(json.dumps({"out_dir": str(res.out_dir), "skipped": res.skipped, "n_events": m.get("n_events"),
                          "n_users": m.get("n_users"), "n_items": m.get("n_items"),
                          "n_quarantined": m.get("n_quarantined"), "n_dropped": m.get("n_dropped")}))

    _main()


if __name__ == "__main__":
    main()
