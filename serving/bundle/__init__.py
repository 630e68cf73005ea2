"""The serving bundle: the one contract between training and serving (``serving/bundle_layout.md``).

Modules, in dependency order (each imports only the ones above it, plus ``features``):

- ``contract``: file names, ``SCHEMA_VERSION``, ``BundleError``, manifest read/verify/write, version names,
  ``resolve`` (a version name or ``LATEST`` -> folder), ``set_latest`` (atomic), ``encode_sequences``
  (what ``encoder.onnx`` takes), the pseudonymisation key fingerprint.
- ``publish``: writing versions. ``new_version`` (a fresh bundle) and ``publish_derived`` (a new version
  = a parent + added files, recording ``parent``); a published version never changes.
- ``tables``: readers of the bundle's files into typed in-memory tables (``Catalog``, users, rules,
  user features, checked embeddings).
- ``sessions``: ONNX Runtime sessions over the bundle's ``.onnx`` files.
- ``load``: ``load_bundle(folder)`` / ``load_version(root, name)`` -> ``Bundle`` (uses ``serving.index``
  and ``serving.ranking``, which use the modules above).

Everything is importable from ``serving.bundle`` itself. The ``load`` names are imported on first use
(PEP 562 ``__getattr__``): ``serving.index`` and ``serving.ranking`` import the contract, and ``load``
imports them, so an eager import here would make a cycle.
"""
from __future__ import annotations

from typing import Any

from serving.bundle.contract import (  # noqa: F401
    BOUGHT_TOGETHER, CAMPAIGNS_DIR, CONFIG, ENCODER, INDEX_DIR, ITEM_COLUMNS, ITEM_EMBEDDINGS, ITEMS, LATEST,
    MANIFEST, RANKER_JSON, RANKER_ONNX, REQUIRED_FILES, REQUIRED_MANIFEST_KEYS, SCHEMA_VERSION, USER_COLUMNS,
    USER_FEATURES_SPEC, USER_FEATURES_TABLE, USERS, BundleError, check_name, check_pseudo_key, encode_sequences,
    file_hashes, latest_name, list_versions, pseudo_key_fingerprint, read_manifest, resolve, resolve_bundle_dir,
    set_latest, verify_files, write_manifest,
)
from serving.bundle.publish import Draft, new_version, next_derived_name, publish_derived  # noqa: F401
from serving.bundle.sessions import make_session, session_options  # noqa: F401
from serving.bundle.tables import (  # noqa: F401
    Catalog, UserFeatureTable, UserState, load_bought_together, load_user_features, load_users, read_catalog,
    read_embeddings, read_items_frame,
)

_FROM_LOAD = ("Bundle", "load_bundle", "load_version", "encoder_user_columns")


def __getattr__(name: str) -> Any:
    if name in _FROM_LOAD:
        from serving.bundle import load

        return getattr(load, name)
    raise AttributeError(f"module 'serving.bundle' has no attribute {name!r}")
