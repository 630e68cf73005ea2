"""Load a serving bundle folder (``serving/bundle_layout.md``) into one typed, read-only object.

``resolve_bundle_dir`` picks the folder (an explicit path, or the one named in ``<bundles>/LATEST``);
``load_bundle`` validates the manifest and the files (shapes, ids, sha256) and returns a ``Bundle``
holding everything a request needs in memory: item table, user state, ONNX encoder session,
candidate index, ranker (or None), the bought-together table and, when the encoder or the ranker takes
them, the user-feature codes of ``user_features.parquet``. Every problem raises ``BundleError`` naming
the file and the field.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.artifacts import file_sha256

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REQUIRED_FILES = ("manifest.json", "item_embeddings.npy", "items.parquet", "users.parquet", "encoder.onnx")
REQUIRED_MANIFEST_KEYS = ("schema_version", "name", "dim", "n_items", "max_len")
ITEM_COLUMNS = ("item_id", "item_key", "category", "price", "popularity", "available")
USER_COLUMNS = ("user_id", "user_key", "history")
USER_FEATURES_TABLE = "user_features.parquet"
USER_FEATURES_SPEC = "user_features.json"


class BundleError(ValueError):
    """A missing, inconsistent or corrupt bundle; the message names the file and field."""


@dataclass(frozen=True)
class ItemTable:
    """The catalogue as arrays indexed by dense ``item_id``."""

    keys: np.ndarray            # object (str) item_key
    key_to_id: dict[str, int]
    category: np.ndarray        # object (str or None)
    category_code: np.ndarray   # int32, -1 = no category
    categories: tuple[str, ...]
    price: np.ndarray           # float64, nan = unknown
    popularity: np.ndarray      # float64
    available: np.ndarray       # bool
    popular_order: np.ndarray   # item ids by popularity, most popular first (available only)

    @property
    def all_available(self) -> bool:
        return bool(self.available.all())

    @property
    def n(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class UserState:
    """A known user's state from training: last items (oldest first) and purchases with their time."""

    user_id: int
    history: np.ndarray         # int64 item ids
    purchases: np.ndarray       # int64 item ids
    purchase_ts: np.ndarray     # float64 epoch seconds (same length as purchases)


@dataclass(frozen=True)
class UserFeatureTable:
    """``user_features.parquet`` in memory: one row of int64 codes per known user (0 = unknown value).

    ``codes`` has one extra, all-zero last row: the row of every user the table does not know (a new
    user, or one absent from the table), so a lookup is one dict probe plus one row index."""

    names: tuple[str, ...]          # the columns loaded, in ``codes`` column order
    codes: np.ndarray               # int64 [n_users + 1, len(names)]; last row = zeros
    row_of: dict[str, int]          # user_key -> row
    cardinalities: tuple[int, ...]  # per name, from user_features.json (codes lie in [0, cardinality))

    def row(self, user_key: str) -> int:
        """The row of ``user_key``; the all-zero row when the table does not know the user."""
        return self.row_of.get(user_key, len(self.codes) - 1)

    def select(self, names: list[str] | tuple[str, ...]) -> np.ndarray:
        """The codes of ``names`` in that order: a contiguous ``[n_users + 1, len(names)]`` array."""
        pos = {n: j for j, n in enumerate(self.names)}
        return np.ascontiguousarray(self.codes[:, [pos[n] for n in names]])


@dataclass
class Bundle:
    """Everything serving needs from one bundle folder."""

    path: Path
    name: str
    manifest: dict[str, Any]
    dim: int
    n_items: int
    max_len: int
    item_embeddings: np.ndarray
    items: ItemTable
    users: dict[str, UserState]
    encoder: Any                                  # onnxruntime.InferenceSession
    index: Any                                    # serving.index.CandidateIndex
    ranker: Any = None                            # serving.ranking.Ranker or None
    bought_together: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    user_features: UserFeatureTable | None = None  # loaded only when the encoder or the ranker takes user features
    encoder_user_codes: np.ndarray | None = None   # [n_users + 1, F] in manifest encoder_inputs user_feat columns order
    ranker_user_codes: np.ndarray | None = None    # [n_users + 1, F'] in ranker.json user_features order
    load_seconds: float = 0.0

    def _user_row(self, user_key: str) -> int:
        return self.user_features.row(user_key) if self.user_features is not None else -1

    def encoder_codes(self, user_key: str) -> np.ndarray | None:
        """The ``user_feat`` row the encoder gets for ``user_key`` (zeros for unknown users); None when the
        encoder takes only ``item_seq``."""
        return None if self.encoder_user_codes is None else self.encoder_user_codes[self._user_row(user_key)]

    def ranker_codes(self, user_key: str) -> np.ndarray | None:
        """The user-feature codes the ranker gets for ``user_key`` (zeros for unknown users); None when the
        ranker has no user features."""
        return None if self.ranker_user_codes is None else self.ranker_user_codes[self._user_row(user_key)]

    def encode(self, sequences: list[np.ndarray], user_feat: np.ndarray | None = None) -> np.ndarray:
        """User embeddings ``(B, dim)`` for item-id sequences (oldest first), through ``encoder.onnx``.

        ``user_feat`` ``[B, F]`` int64 (rows of ``encoder_codes``) when the encoder takes ``user_feat``;
        None = all unknown (zeros). Ignored by an encoder that takes only ``item_seq``."""
        batch = np.zeros((len(sequences), self.max_len), np.int64)
        for b, seq in enumerate(sequences):
            seq = np.asarray(seq, np.int64)[-self.max_len:]
            if len(seq):
                batch[b, -len(seq):] = seq + 1  # 0 = padding, left-padded, most recent last
        feed = {"item_seq": batch}
        if self.encoder_user_codes is not None:
            n_feat = self.encoder_user_codes.shape[1]
            if user_feat is None:
                feed["user_feat"] = np.zeros((len(sequences), n_feat), np.int64)
            else:
                uf = np.asarray(user_feat, np.int64)
                if uf.shape != (len(sequences), n_feat):
                    raise ValueError(f"user_feat: shape {uf.shape}, expected ({len(sequences)}, {n_feat})")
                feed["user_feat"] = uf
        return np.asarray(self.encoder.run(["user_emb"], feed)[0], np.float32)


def session_options(threads: int | None):
    """ONNX Runtime options for a serving session: ``threads`` intra-op threads (None = ORT's default,
    one per physical core), one inter-op thread, and no spinning. ORT's pool threads otherwise spin
    after every run, burning the cores that the HTTP proxy and the other replicas need."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"onnx_threads={threads}: must be >= 1")
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def resolve_bundle_dir(bundle_path: str | Path | None, bundles_dir: str | Path) -> Path:
    """``bundle_path`` if given, else ``<bundles_dir>/<name in LATEST>``."""
    if bundle_path:
        p = Path(bundle_path)
        if not p.is_dir():
            raise BundleError(f"bundle={bundle_path}: folder not found")
        return p
    latest = Path(bundles_dir) / "LATEST"
    if not latest.exists():
        raise BundleError(f"{latest}: not found (export a bundle with `python -m training.export` or pass bundle=FOLDER)")
    name = latest.read_text().strip()
    if not name or "/" in name or name.startswith("."):
        raise BundleError(f"{latest}: expected a bundle folder name, got {name!r}")
    p = Path(bundles_dir) / name
    if not p.is_dir():
        raise BundleError(f"{latest}: names {name!r} but {p} is not a folder")
    return p


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / "manifest.json"
    if not path.exists():
        raise BundleError(f"{path}: missing")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(m, dict):
        raise BundleError(f"{path}: expected a JSON object")
    for k in REQUIRED_MANIFEST_KEYS:
        if k not in m:
            raise BundleError(f"{path}: field {k!r} is missing")
    if m["schema_version"] != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version={m['schema_version']!r}, this server reads {SCHEMA_VERSION}")
    for k in ("dim", "n_items", "max_len"):
        if not isinstance(m[k], int) or m[k] <= 0:
            raise BundleError(f"{path}: field {k!r}={m[k]!r} must be a positive integer")
    return m


def verify_files(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """Every required file exists; every file listed in ``manifest.files`` has its sha256."""
    for f in REQUIRED_FILES:
        if not (bundle_dir / f).exists():
            raise BundleError(f"{bundle_dir / f}: missing (required by serving/bundle_layout.md)")
    for rel, digest in (manifest.get("files") or {}).items():
        p = bundle_dir / rel
        if not p.is_file():
            raise BundleError(f"{p}: listed in manifest.json files but missing")
        if file_sha256(p) != digest:
            raise BundleError(f"{p}: sha256 differs from manifest.json files[{rel!r}] (corrupt or replaced)")


def load_items(path: Path, n_items: int) -> ItemTable:
    df = pd.read_parquet(path)
    missing = [c for c in ("item_id", "item_key") if c not in df.columns]
    if missing:
        raise BundleError(f"{path}: column(s) {missing} missing")
    if len(df) != n_items:
        raise BundleError(f"{path}: {len(df)} rows, manifest.json n_items={n_items}")
    df = df.sort_values("item_id")
    if not np.array_equal(df["item_id"].to_numpy(), np.arange(n_items)):
        raise BundleError(f"{path}: item_id must be 0..{n_items - 1} (dense ids of the embeddings)")
    keys = df["item_key"].astype(str).to_numpy(dtype=object)
    category = df["category"].astype(object).where(df["category"].notna(), None).to_numpy(dtype=object) \
        if "category" in df.columns else np.full(n_items, None, dtype=object)
    cats = sorted({c for c in category if c is not None})
    code_of = {c: i for i, c in enumerate(cats)}
    category_code = np.array([code_of.get(c, -1) if c is not None else -1 for c in category], np.int32)
    price = df["price"].astype("float64").to_numpy(na_value=np.nan) if "price" in df.columns else np.full(n_items, np.nan)
    popularity = df["popularity"].astype("float64").fillna(0).to_numpy() if "popularity" in df.columns else np.zeros(n_items)
    available = df["available"].fillna(True).astype(bool).to_numpy().copy() if "available" in df.columns else np.ones(n_items, bool)
    order = np.argsort(-popularity, kind="stable")
    return ItemTable(keys=keys, key_to_id={k: i for i, k in enumerate(keys)}, category=category,
                     category_code=category_code, categories=tuple(cats), price=price, popularity=popularity,
                     available=available, popular_order=order[available[order]].astype(np.int64))


def _list_column(table, name: str, n: int, dtype) -> list[np.ndarray]:
    """A list<...> column of an Arrow table as one numpy array per row (null lists -> empty)."""
    import pyarrow as pa

    if name not in table.column_names:
        return [np.zeros(0, dtype)] * n
    arr = table.column(name).combine_chunks()
    values = arr.values
    if pa.types.is_timestamp(values.type):  # -> float epoch seconds
        values = values.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        flat = values.to_numpy(zero_copy_only=False).astype(np.float64) / 1e6
    else:
        flat = values.to_numpy(zero_copy_only=False).astype(dtype)
    offsets = arr.offsets.to_numpy()
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return [flat[offsets[i]:offsets[i + 1]] if valid[i] else np.zeros(0, dtype) for i in range(n)]


def load_users(path: Path, n_items: int) -> dict[str, UserState]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [c for c in USER_COLUMNS if c not in table.column_names]
    if missing:
        raise BundleError(f"{path}: column(s) {missing} missing")
    n = table.num_rows
    user_ids = table.column("user_id").to_numpy()
    keys = table.column("user_key").to_pylist()
    hist = _list_column(table, "history", n, np.int64)
    purch = _list_column(table, "purchases", n, np.int64)
    pts = _list_column(table, "purchase_ts", n, np.float64) if "purchase_ts" in table.column_names else \
        [np.zeros(len(p)) for p in purch]
    for name, lists in (("history", hist), ("purchases", purch)):
        flat = np.concatenate(lists) if n else np.zeros(0, np.int64)
        if len(flat) and (flat.min() < 0 or flat.max() >= n_items):
            raise BundleError(f"{path}: column {name!r} has item ids out of range 0..{n_items - 1}")
    users: dict[str, UserState] = {}
    for i in range(n):
        if len(pts[i]) != len(purch[i]):
            raise BundleError(f"{path}: user_id={user_ids[i]}: purchases and purchase_ts differ in length")
        users[str(keys[i])] = UserState(int(user_ids[i]), hist[i], purch[i], pts[i])
    return users


def load_bought_together(path: Path, n_items: int, per_item: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """item_id -> (other item ids, confidence), best first, at most ``per_item`` each."""
    if not path.exists():
        return {}
    df = pd.read_parquet(path)
    missing = [c for c in ("item_id", "other_item_id") if c not in df.columns]
    if missing:
        raise BundleError(f"{path}: column(s) {missing} missing")
    score_col = "confidence" if "confidence" in df.columns else ("lift" if "lift" in df.columns else None)
    df = df[(df["item_id"].between(0, n_items - 1)) & (df["other_item_id"].between(0, n_items - 1))]
    if score_col is None:
        df = df.assign(confidence=1.0)
        score_col = "confidence"
    df = df.sort_values(["item_id", score_col], ascending=[True, False], kind="stable")
    df = df[df.groupby("item_id", sort=False).cumcount().to_numpy() < per_item]
    items = df["item_id"].to_numpy(np.int64)
    others = df["other_item_id"].to_numpy(np.int64)
    scores = df[score_col].to_numpy(np.float32)
    # one slice per item (numpy views; a pandas groupby loop held the GIL ~0.5 s per 2,000 items during hot swaps)
    starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]]) if len(items) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(items)]
    return {int(items[a]): (others[a:b], scores[a:b]) for a, b in zip(starts.tolist(), ends.tolist())}


def encoder_user_columns(bundle_dir: Path, manifest: dict[str, Any], encoder: Any) -> list[str] | None:
    """The ``user_feat`` columns of ``encoder.onnx`` from ``manifest.encoder_inputs`` (None when the encoder takes
    only ``item_seq``). Entries are input names or ``{"name", "columns", ...}`` objects (``training.export``)."""
    path = bundle_dir / "encoder.onnx"
    names = [i.name for i in encoder.get_inputs()]
    if names == ["item_seq"]:
        return None
    if names != ["item_seq", "user_feat"]:
        raise BundleError(f"{path}: inputs {names}; this server feeds ['item_seq'] or ['item_seq', 'user_feat']")
    entries = manifest.get("encoder_inputs") or []
    entry = next((e for e in entries if isinstance(e, dict) and e.get("name") == "user_feat"), None)
    if entry is None or not isinstance(entry.get("columns"), list) or not entry["columns"]:
        raise BundleError(f"{bundle_dir / 'manifest.json'}: encoder.onnx takes user_feat but encoder_inputs has no "
                          f"user_feat entry with its 'columns' (the user_features.parquet columns, in input order)")
    columns = [str(c) for c in entry["columns"]]
    if len(set(columns)) != len(columns):
        raise BundleError(f"{bundle_dir / 'manifest.json'}: encoder_inputs user_feat columns repeat a name: {columns}")
    inp = encoder.get_inputs()[1]
    if inp.type != "tensor(int64)":
        raise BundleError(f"{path}: input user_feat has type {inp.type}, expected tensor(int64)")
    width = inp.shape[1] if len(inp.shape) == 2 else None
    if isinstance(width, int) and width != len(columns):
        raise BundleError(f"{path}: input user_feat has {width} columns, manifest.json encoder_inputs lists "
                          f"{len(columns)}: {columns}")
    return columns


def load_user_features(bundle_dir: Path, names: list[str], needed_by: str) -> UserFeatureTable:
    """The codes of ``names`` from ``user_features.parquet``, checked against ``user_features.json``
    (every code in ``[0, cardinality)``, keys unique). Column-wise numpy: no per-row Python loop."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.user_features import UserFeatureSpec

    path, spec_path = bundle_dir / USER_FEATURES_TABLE, bundle_dir / USER_FEATURES_SPEC
    for p in (path, spec_path):
        if not p.exists():
            raise BundleError(f"{p}: missing, but {needed_by} takes user features {names}")
    try:
        spec = UserFeatureSpec.from_json(json.loads(spec_path.read_text()))
        card_of = dict(zip(spec.names, spec.cardinalities))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise BundleError(f"{spec_path}: not a valid user-feature spec ({type(e).__name__}: {e})") from e
    unknown = [n for n in names if n not in card_of]
    if unknown:
        raise BundleError(f"{spec_path}: no feature(s) {unknown} (needed by {needed_by}; it lists {spec.names})")
    try:
        table = pq.read_table(path, columns=["user_key", *names])
    except Exception as e:  # noqa: BLE001 - a missing column or a corrupt file
        raise BundleError(f"{path}: cannot read columns {['user_key', *names]} ({type(e).__name__}: {e})") from e
    n = table.num_rows
    keys_col = table.column("user_key")
    if keys_col.null_count:
        raise BundleError(f"{path}: column 'user_key' has {keys_col.null_count} null value(s)")
    keys = keys_col.cast("string").to_numpy(zero_copy_only=False)
    dup = pd.Index(keys).duplicated()
    if dup.any():
        raise BundleError(f"{path}: column 'user_key' repeats {int(dup.sum())} key(s)")
    codes = np.zeros((n + 1, len(names)), np.int64)
    for j, name in enumerate(names):
        col = pc.fill_null(table.column(name), 0)  # a null code = unknown
        try:
            codes[:n, j] = col.to_numpy(zero_copy_only=False)
        except (TypeError, ValueError) as e:
            raise BundleError(f"{path}: column {name!r} is not integer codes ({col.type})") from e
        bad = (codes[:n, j] < 0) | (codes[:n, j] >= card_of[name])
        if bad.any():
            raise BundleError(f"{path}: column {name!r} has code {int(codes[:n, j][bad][0])} outside "
                              f"[0, {card_of[name]}) (cardinality from {USER_FEATURES_SPEC})")
    return UserFeatureTable(names=tuple(names), codes=codes, row_of=dict(zip(keys.tolist(), range(n))),
                            cardinalities=tuple(int(card_of[n_]) for n_ in names))


def load_bundle(bundle_dir: str | Path, *, verify_hashes: bool = True, onnx_threads: int = 1,
                bought_together_per_item: int = 10) -> Bundle:
    """Validate and load a bundle folder; raises ``BundleError`` naming what is wrong."""
    import onnxruntime as ort

    from serving.index import BundleError as IndexBundleError
    from serving.index import load_index

    t0 = time.perf_counter()
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder not found: {bundle_dir}")
    m = read_manifest(bundle_dir)
    if verify_hashes:
        verify_files(bundle_dir, m)
    else:
        for f in REQUIRED_FILES:
            if not (bundle_dir / f).exists():
                raise BundleError(f"{bundle_dir / f}: missing (required by serving/bundle_layout.md)")
    dim, n_items, max_len = int(m["dim"]), int(m["n_items"]), int(m["max_len"])
    emb_path = bundle_dir / "item_embeddings.npy"
    try:
        emb = np.load(emb_path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any read failure is a corrupt file
        raise BundleError(f"{emb_path}: cannot be read ({type(e).__name__}: {e})") from e
    if emb.shape != (n_items, dim):
        raise BundleError(f"{emb_path}: shape {emb.shape}, manifest.json says ({n_items}, {dim})")
    emb = np.ascontiguousarray(emb, np.float32)
    items = load_items(bundle_dir / "items.parquet", n_items)
    users = load_users(bundle_dir / "users.parquet", n_items)
    opts = session_options(max(1, int(onnx_threads)))
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        encoder = ort.InferenceSession(str(bundle_dir / "encoder.onnx"), opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise BundleError(f"{bundle_dir / 'encoder.onnx'}: cannot be loaded by ONNX Runtime ({e})") from e
    enc_columns = encoder_user_columns(bundle_dir, m, encoder)
    if "user_emb" not in [o.name for o in encoder.get_outputs()]:
        raise BundleError(f"{bundle_dir / 'encoder.onnx'}: no output named 'user_emb'")
    try:
        index = load_index(bundle_dir)
    except IndexBundleError as e:
        raise BundleError(str(e)) from e
    if index.dim != dim or index.n_items != n_items:
        raise BundleError(f"{bundle_dir / 'index'}: index has dim={index.dim}, n_items={index.n_items}; "
                          f"manifest.json says dim={dim}, n_items={n_items}")
    ranker = _load_ranker(bundle_dir, onnx_threads)
    rank_columns = list(ranker.spec.user_features) if ranker is not None and ranker.spec.user_features else None
    user_features = enc_codes = rank_codes = None
    if enc_columns or rank_columns:  # bundles without user features never read user_features.*
        names = list(dict.fromkeys([*(enc_columns or []), *(rank_columns or [])]))
        needed_by = " and ".join(w for w, c in (("encoder.onnx", enc_columns), ("ranker.json", rank_columns)) if c)
        user_features = load_user_features(bundle_dir, names, needed_by)
        if rank_columns:
            want = [int(c) for c in ranker.spec.user_cardinalities]
            have = [user_features.cardinalities[user_features.names.index(c)] for c in rank_columns]
            if want != have:
                raise BundleError(f"{bundle_dir / 'ranker.json'}: user_cardinalities {want} differ from "
                                  f"{USER_FEATURES_SPEC} {have} for {rank_columns} (another vocabulary)")
            rank_codes = user_features.select(rank_columns)
        if enc_columns:
            enc_codes = user_features.select(enc_columns)
    bundle = Bundle(path=bundle_dir, name=str(m["name"]), manifest=m, dim=dim, n_items=n_items, max_len=max_len,
                    item_embeddings=emb, items=items, users=users, encoder=encoder, index=index, ranker=ranker,
                    bought_together=load_bought_together(bundle_dir / "bought_together.parquet", n_items,
                                                         bought_together_per_item),
                    user_features=user_features, encoder_user_codes=enc_codes, ranker_user_codes=rank_codes)
    out = bundle.encode([np.array([0], np.int64)])
    if out.shape != (1, dim):
        raise BundleError(f"{bundle_dir / 'encoder.onnx'}: user_emb has shape {out.shape[1:]}, expected ({dim},)")
    bundle.load_seconds = time.perf_counter() - t0
    log.info("bundle %s loaded in %.2fs: %d items, %d users, index=%s, ranker=%s, user features=%s", bundle.name,
             bundle.load_seconds, n_items, len(users), getattr(index, "backend", "?"), ranker is not None,
             None if user_features is None else list(user_features.names))
    return bundle


def _load_ranker(bundle_dir: Path, threads: int):
    """``serving.ranking.Ranker.load`` (None when the bundle has no ranker.onnx), ``threads`` intra-op threads."""
    try:
        from serving.ranking import Ranker
    except ImportError:  # the ranking module is optional: retrieval order is used without it
        log.warning("serving.ranking is not importable: recommendations use retrieval scores")
        return None
    return Ranker.load(bundle_dir, threads=threads)
