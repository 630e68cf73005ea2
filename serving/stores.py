"""The online store ``serve.store`` configures: the file store (``serving.store.EventStore``, the default, one
host) or Redis (``serving.redis_store.RedisEventStore``, across hosts). Both share ``serving.store.OnlineStore``."""
from __future__ import annotations

from typing import Any

from serving.redis_store import RedisEventStore
from serving.store import EventStore, OnlineStore


def open_store(store_cfg: Any, *, trending_window_s: float = 3600.0) -> OnlineStore:
    """The online store ``serve.store`` configures (``kind: file`` by default, or ``redis``)."""
    kind = str(store_cfg.get("kind", "file") if hasattr(store_cfg, "get") else "file")
    if kind == "file":
        return EventStore(store_cfg.event_log, fsync=bool(store_cfg.fsync), trending_window_s=trending_window_s)
    if kind == "redis":
        return RedisEventStore.from_cfg(store_cfg, trending_window_s=trending_window_s)
    raise ValueError(f"serve.store.kind={kind!r}: expected file or redis")
