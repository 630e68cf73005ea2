"""Load one bundle version into one typed, read-only ``Bundle``: everything a request needs, in memory.

``load_bundle(folder)`` validates the manifest and the files (shapes, ids, sha256, the pseudonymisation
key fingerprint) and returns a ``Bundle``: catalogue, user state, ONNX encoder session, candidate index,
ranker (or None), the bought-together table and, when the encoder or the ranker takes them, the
user-feature codes. ``load_version(bundles_root, name)`` loads a version by name (``"LATEST"`` for the one
``LATEST`` names), so several versions can be held side by side (experiments). Each file is read once.
Every problem raises ``BundleError`` naming the file and the field.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.accelerators import Placement, announce, encoder_placement, gpu_facts
from serving.bundle.contract import (
    BOUGHT_TOGETHER, ENCODER, INDEX_DIR, ITEMS, LATEST, MANIFEST, RANKER_JSON, REQUIRED_FILES, USER_FEATURES_SPEC,
    USERS, BundleError, check_pseudo_key, check_required_files, encode_sequences, read_manifest, resolve,
    verify_files,
)
from serving.bundle.sessions import make_session
from serving.bundle.tables import (
    Catalog, UserFeatureTable, UserState, load_bought_together, load_user_features, load_users, read_catalog,
    read_embeddings, read_items_frame,
)
from serving.index import load_index
from serving.ranking import Ranker

log = logging.getLogger(__name__)


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
    items: Catalog
    users: dict[str, UserState]
    encoder: Any                                  # onnxruntime.InferenceSession
    index: Any                                    # serving.index.CandidateIndex
    ranker: Any = None                            # serving.ranking.Ranker or None
    bought_together: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    user_features: UserFeatureTable | None = None  # loaded only when the encoder or the ranker takes user features
    encoder_user_codes: np.ndarray | None = None   # [n_users + 1, F] in manifest encoder_inputs user_feat columns order
    ranker_user_codes: np.ndarray | None = None    # [n_users + 1, F'] in ranker.json user_features order
    placements: list[Placement] = field(default_factory=list)  # where encoder, retrieval, ranker run, and why
    load_seconds: float = 0.0

    def devices(self) -> dict[str, dict[str, str]]:
        """``{component: {device, backend, reason}}`` (``/readyz``)."""
        return {p.component: {k: v for k, v in p.as_dict().items() if k != "component"} for p in self.placements}

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
        feed = {"item_seq": encode_sequences(sequences, self.max_len)}
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


def encoder_user_columns(bundle_dir: Path, manifest: dict[str, Any], encoder: Any) -> list[str] | None:
    """The ``user_feat`` columns of ``encoder.onnx`` from ``manifest.encoder_inputs`` (None when the encoder takes
    only ``item_seq``). Entries are input names or ``{"name", "columns", ...}`` objects (``training.export``)."""
    path = bundle_dir / ENCODER
    names = [i.name for i in encoder.get_inputs()]
    if names == ["item_seq"]:
        return None
    if names != ["item_seq", "user_feat"]:
        raise BundleError(f"{path}: inputs {names}; this server feeds ['item_seq'] or ['item_seq', 'user_feat']")
    entries = manifest.get("encoder_inputs") or []
    entry = next((e for e in entries if isinstance(e, dict) and e.get("name") == "user_feat"), None)
    if entry is None or not isinstance(entry.get("columns"), list) or not entry["columns"]:
        raise BundleError(f"{bundle_dir / MANIFEST}: encoder.onnx takes user_feat but encoder_inputs has no "
                          f"user_feat entry with its 'columns' (the user_features.parquet columns, in input order)")
    columns = [str(c) for c in entry["columns"]]
    if len(set(columns)) != len(columns):
        raise BundleError(f"{bundle_dir / MANIFEST}: encoder_inputs user_feat columns repeat a name: {columns}")
    inp = encoder.get_inputs()[1]
    if inp.type != "tensor(int64)":
        raise BundleError(f"{path}: input user_feat has type {inp.type}, expected tensor(int64)")
    width = inp.shape[1] if len(inp.shape) == 2 else None
    if isinstance(width, int) and width != len(columns):
        raise BundleError(f"{path}: input user_feat has {width} columns, manifest.json encoder_inputs lists "
                          f"{len(columns)}: {columns}")
    return columns


def load_bundle(bundle_dir: str | Path, *, verify_hashes: bool = True, onnx_threads: int = 1,
                bought_together_per_item: int = 10, check_key: bool = True) -> Bundle:
    """Validate and load a bundle folder; raises ``BundleError`` naming what is wrong. ``check_key``: fail
    when the manifest's ``pseudo_key_fingerprint`` is not this process's key's."""
    t0 = time.perf_counter()
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder not found: {bundle_dir}")
    m = read_manifest(bundle_dir)
    if verify_hashes:
        verify_files(bundle_dir, m)
    else:
        check_required_files(bundle_dir, REQUIRED_FILES)
    if check_key:
        check_pseudo_key(bundle_dir, m)
    dim, n_items, max_len = int(m["dim"]), int(m["n_items"]), int(m["max_len"])
    emb = read_embeddings(bundle_dir, m)
    items_frame = read_items_frame(bundle_dir / ITEMS)
    items = read_catalog(bundle_dir / ITEMS, n_items, items_frame)
    users = load_users(bundle_dir / USERS, n_items)
    encoder, encoder_provider = make_session(bundle_dir / ENCODER, threads=max(1, int(onnx_threads)))
    enc_columns = encoder_user_columns(bundle_dir, m, encoder)
    if "user_emb" not in [o.name for o in encoder.get_outputs()]:
        raise BundleError(f"{bundle_dir / ENCODER}: no output named 'user_emb'")
    index = load_index(bundle_dir, embeddings=emb)
    if index.dim != dim or index.n_items != n_items:
        raise BundleError(f"{bundle_dir / INDEX_DIR}: index has dim={index.dim}, n_items={index.n_items}; "
                          f"manifest.json says dim={dim}, n_items={n_items}")
    ranker = Ranker.load(bundle_dir, threads=onnx_threads, items=items_frame, embeddings=emb)
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
                raise BundleError(f"{bundle_dir / RANKER_JSON}: user_cardinalities {want} differ from "
                                  f"{USER_FEATURES_SPEC} {have} for {rank_columns} (another vocabulary)")
            rank_codes = user_features.select(rank_columns)
        if enc_columns:
            enc_codes = user_features.select(enc_columns)
    bundle = Bundle(path=bundle_dir, name=str(m["name"]), manifest=m, dim=dim, n_items=n_items, max_len=max_len,
                    item_embeddings=emb, items=items, users=users, encoder=encoder, index=index, ranker=ranker,
                    bought_together=load_bought_together(bundle_dir / BOUGHT_TOGETHER, n_items,
                                                         bought_together_per_item),
                    user_features=user_features, encoder_user_codes=enc_codes, ranker_user_codes=rank_codes)
    out = bundle.encode([np.array([0], np.int64)])
    if out.shape != (1, dim):
        raise BundleError(f"{bundle_dir / ENCODER}: user_emb has shape {out.shape[1:]}, expected ({dim},)")
    facts = gpu_facts()
    bundle.placements = [p for p in (encoder_placement(encoder_provider, facts), index.placement) if p is not None]
    if ranker is not None:
        bundle.placements.append(ranker.placement)
    announce(bundle.placements, facts)
    bundle.load_seconds = time.perf_counter() - t0
    log.info("bundle %s loaded in %.2fs: %d items, %d users, index=%s, ranker=%s, user features=%s", bundle.name,
             bundle.load_seconds, n_items, len(users), getattr(index, "backend", "?"), ranker is not None,
             None if user_features is None else list(user_features.names))
    return bundle


def load_version(bundles_root: str | Path, name: str = LATEST, **kwargs: Any) -> Bundle:
    """Load version ``name`` of ``bundles_root`` (``"LATEST"``: the one ``LATEST`` names); ``kwargs`` as
    ``load_bundle``. Loading two names gives two independent ``Bundle`` objects (A/B variants)."""
    return load_bundle(resolve(bundles_root, name), **kwargs)
