"""The state of one ingress replica: current bundle + recommender, event store, auth and metrics.

``Service`` loads the bundle in a background thread (``/readyz`` answers 503 until it is in), watches
``<bundles>/LATEST`` and hot-swaps a new bundle: the new one is loaded and warmed up completely on
the side, then one reference assignment swaps it in. ``POST /admin/reload {"bundle": NAME}`` swaps the
replica that receives it at once and rewrites LATEST, so the other replicas follow within
``serve.watch_interval_s``. A request in flight keeps the recommender it
started with, so a swap never drops or fails a request; a bundle that fails to load is logged and
counted, and the old one stays.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from features.privacy import pseudo_key, pseudonymise_one
from serving.auth import Auth
from serving.bundle import Bundle, BundleError, latest_name, load_bundle, resolve_bundle_dir, set_latest
from serving.experiments.router import Experiments
from serving.recommender import RecommendSettings, Recommender, RecQuery
from serving.stores import open_store
from serving.telemetry import Telemetry

log = logging.getLogger(__name__)


class Service:
    """Everything the routes need; safe to share between the event loop and worker threads."""

    def __init__(self, serve_cfg: Any, *, load: bool = True, background: bool = True):
        self.cfg = serve_cfg
        self.settings = RecommendSettings.from_cfg(serve_cfg)
        self.auth = Auth.from_cfg(serve_cfg.auth)
        self.telemetry = Telemetry()
        from serving.drift.service import attach_drift  # drift gauges on /metrics, computed on scrape
        self.drift = attach_drift(self)
        self.store = open_store(serve_cfg.store, trending_window_s=self.settings.trending_window_s)
        self.auth.share_limits(self.store)  # per-key buckets shared through Redis when the store is Redis
        self._pkey = pseudo_key()[0]
        self.recommender: Recommender | None = None
        self.load_error: str | None = None
        self._swap_lock = threading.Lock()
        self._loading = False
        self._stop = threading.Event()
        self._campaign_scorers: dict[tuple[str, str], Any] = {}
        self.experiments = Experiments.from_service(self)  # None unless serve.experiments.active names some
        if load:
            if background:
                threading.Thread(target=self._initial_load, name="bundle-load", daemon=True).start()
            else:
                self._initial_load(raise_errors=True)
            if float(serve_cfg.watch_interval_s) > 0:
                threading.Thread(target=self._watch, args=(float(serve_cfg.watch_interval_s),), name="bundle-watch",
                                 daemon=True).start()

    # -------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.recommender is not None

    @property
    def bundle(self) -> Bundle | None:
        r = self.recommender
        return None if r is None else r.bundle

    def user_key(self, raw_user_id: str) -> str:
        """The pseudonymised key of a raw storefront user id (never logged, never stored raw)."""
        return pseudonymise_one(raw_user_id, self._pkey)

    def _initial_load(self, raise_errors: bool = False) -> None:
        try:
            self.swap_to(None)
        except Exception as e:  # noqa: BLE001 - report on /readyz; the watcher retries
            self.load_error = str(e)
            log.error("bundle not loaded: %s", e)
            if raise_errors:
                raise

    def swap_to(self, bundle_dir: str | Path | None) -> Bundle:
        """Load ``bundle_dir`` (None = the configured bundle, or LATEST), warm it up, swap it in."""
        with self._swap_lock:
            self._loading = True
            try:
                return self._swap_locked(bundle_dir)
            finally:
                self._loading = False

    def _swap_locked(self, bundle_dir: str | Path | None) -> Bundle:
        path = resolve_bundle_dir(bundle_dir or self.cfg.bundle_path, self.cfg.bundles_dir)
        cur = self.bundle
        if cur is not None and cur.path.resolve() == path.resolve():
            return cur
        try:
            bundle = load_bundle(path, verify_hashes=bool(self.cfg.verify_hashes),
                                 onnx_threads=int(self.cfg.ingress.onnx_threads),
                                 bought_together_per_item=self.settings.bought_together_per_item)
            if str(self.cfg.ranker.mode) == "off":
                bundle.ranker = None
            rec = Recommender(bundle, self.store, self.settings)
            for cold in (False, True):  # warm-up: first calls of ONNX / torch are slow
                some_user = next(iter(bundle.users), "warm-up") if not cold else "warm-up-unknown-user"
                rec.recommend(RecQuery(user_key=some_user, k=10))
        except Exception:
            self.telemetry.swap_failures.inc()
            raise
        self.recommender = rec  # the swap: one reference assignment
        self.load_error = None
        self.telemetry.swaps.inc()
        self.telemetry.ready.set(1)
        log.info("serving bundle %s (%s)", bundle.name, path)
        return bundle

    def _watch(self, interval: float) -> None:
        """Poll LATEST; swap when it names another folder (or retry after a failed start)."""
        last_seen: str | None = None
        while not self._stop.wait(interval):
            if self.cfg.bundle_path:  # an explicit bundle is pinned: nothing to watch once it is in
                if self.ready:
                    return
                name = None
                if self._loading:
                    continue
            else:
                try:
                    name = latest_name(self.cfg.bundles_dir)
                except (OSError, BundleError):  # a bad LATEST: keep serving, look again
                    continue
                if name is None:
                    continue
                cur = self.bundle
                if cur is not None and (name == cur.path.name or name == last_seen):
                    continue
            last_seen = name
            try:
                self.swap_to(None)
            except Exception as e:  # noqa: BLE001 - keep serving the old bundle
                self.load_error = str(e)
                log.error("new bundle %s not swapped in: %s", name, e)

    def publish_latest(self, bundle: Bundle) -> None:
        """Point ``<bundles>/LATEST`` at ``bundle`` (atomic rename), when it lives in the bundles folder."""
        bundles = Path(self.cfg.bundles_dir)
        if bundle.path.parent.resolve() != bundles.resolve():
            return
        set_latest(bundles, bundle.path.name)

    def stop(self) -> None:
        self._stop.set()
        if self.experiments is not None:
            self.experiments.stop()

    # -------------------------------------------------------------------------------------------
    def campaign_scorer(self, campaign_id: str) -> Any:
        """``serving.campaigns.scoring.load_campaign_scorer`` for the current bundle (cached); None = unknown."""
        bundle = self.bundle
        if bundle is None:
            return None
        key = (str(bundle.path), campaign_id)
        if key not in self._campaign_scorers:
            try:
                from serving.campaigns.scoring import load_campaign_scorer
            except ImportError:
                return None
            self._campaign_scorers[key] = load_campaign_scorer(bundle.path, campaign_id)
        return self._campaign_scorers[key]

    def wait_ready(self, timeout: float = 60.0) -> bool:
        t0 = time.monotonic()
        while not self.ready and time.monotonic() - t0 < timeout and self.load_error is None:
            time.sleep(0.05)
        return self.ready
