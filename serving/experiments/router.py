"""Experiments inside the service: assignment, the variant's pipeline, the exposure line.

``Experiments.from_service(service)`` is None unless ``serve.experiments.active`` names experiment
files (``<serve.experiments.dir>/<name>.yaml``). It loads and checks them (``spec.check_set``, with the
bundle versions under ``serve.bundles_dir``), loads every variant bundle version side by side, and
watches the files: an edit is loaded the same way, and one that fails any check is logged with its
error (``Experiments.error``) while the previous configuration keeps serving.

Per request (``serve``): the unit (user key, or the session id of an anonymous visitor) is assigned
(``assignment.assign``); a unit in no experiment gets None and the normal path. A unit in an
experiment is answered by its variant's pipeline, in-process: the variant's bundle version (or the
service's current one), with its overrides (ranker off, candidate count, rules, or popularity only),
and the answer is written to the exposure log before it is returned. (With ``serve.ranker.mode=deployment``
the requests of an experiment are ranked in-process, by their variant's bundle.) When the exposure cannot be
written, the unit gets the normal answer without experiment fields (never an unlogged exposure), and
the failure is counted.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from serving.experiments.assignment import Assigner, Assignment
from serving.experiments.exposure import Exposure, new_request_id, now_iso, open_experiment_logs
from serving.experiments.spec import ExperimentConfigError, ExperimentSpec, Variant, check_set, read_spec
from serving.recommender import RecItem, RecommendSettings, Recommender, RecQuery, RecResult
from serving.rules import blocked_items, reason_text, select_top_k

log = logging.getLogger(__name__)


class PopularOnly:
    """Popular items in the request's context (rules applied): the popularity-only variant."""

    def __init__(self, rec: Recommender):
        self.rec = rec
        self.bundle = rec.bundle

    def recommend(self, q: RecQuery, observe: Callable[[str, float], None] | None = None) -> RecResult:
        t0 = time.perf_counter()
        rec, items = self.rec, self.bundle.items
        allowed = rec.context_mask(q)
        history, purchases, purchase_ts = rec.user_state(q)
        key_to_id = items.key_to_id
        blocked = blocked_items(purchases=purchases, purchase_ts=purchase_ts, now=q.now, settings=rec.settings.rules,
                                exclude=[key_to_id[k] for k in q.exclude if k in key_to_id],
                                seen=history if rec.settings.exclude_seen else ())
        ids, scores, _ = rec.popular(allowed, blocked, max(q.k * 3, q.k + 10))
        cap = 0 if q.category is not None else rec.settings.rules.max_per_category
        picked = select_top_k(ids, scores, items.category_code, q.k, cap)
        out = [RecItem(str(items.keys[i]), float(scores[p]), "popular",
                       reason_text("popular", category=q.category or items.category[i]))
               for p, i in zip(picked.tolist(), ids[picked].tolist())]
        if observe:
            observe("popular", time.perf_counter() - t0)
        return RecResult(out, len(history) == 0, None, {}, self.bundle.name)


def variant_settings(base: RecommendSettings, v: Variant) -> RecommendSettings:
    o = v.overrides
    s = base
    if o.n_candidates is not None:
        s = dataclasses.replace(s, n_candidates=o.n_candidates)
    if o.rules is not None:
        r = s.rules
        changed = {k: v for k, v in (("no_repurchase_days", o.rules.no_repurchase_days),
                                     ("max_per_category", o.rules.max_per_category)) if v is not None}
        s = dataclasses.replace(s, rules=dataclasses.replace(r, **changed))  # other rule settings kept
        if o.rules.exclude_seen is not None:
            s = dataclasses.replace(s, exclude_seen=o.rules.exclude_seen)
    return s


def variant_pipeline(base: Recommender, bundle: Any, v: Variant) -> Any:
    """The pipeline of variant ``v`` on ``bundle`` (``base``'s store and settings, ``v``'s overrides)."""
    if v.overrides.ranker is False and bundle.ranker is not None:
        bundle = copy.copy(bundle)  # shallow: shares every table, only the ranker differs
        bundle.ranker = None
    rec = Recommender(bundle, base.store, variant_settings(base.settings, v))
    return PopularOnly(rec) if v.overrides.retrieval == "popular" else rec


class Experiments:
    """The running experiments of one service replica (see the module docstring)."""

    def __init__(self, exp_cfg: Any, *, bundles_dir: str | Path, load_bundle: Callable[[Path], Any],
                 watch: bool = True, store_cfg: Any = None):
        self.cfg = exp_cfg
        self.dir = Path(str(exp_cfg.dir))
        self.active = [str(n) for n in exp_cfg.active]
        self.bundles_dir = Path(str(bundles_dir))
        self._load_bundle = load_bundle
        self.logs = open_experiment_logs(exp_cfg, store_cfg)  # files, or Redis streams with the Redis store
        self.specs: list[ExperimentSpec] = []
        self.assigner = Assigner([])
        self.bundles: dict[str, Any] = {}
        self.error: str | None = None
        self.n_exposures = 0
        self.n_log_failures = 0
        self.n_reloads = 0
        self._pipelines: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._mtimes: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.reload(raise_errors=True)
        interval = float(exp_cfg.watch_interval_s)
        if watch and interval > 0:
            threading.Thread(target=self._watch, args=(interval,), name="experiments-watch", daemon=True).start()

    @classmethod
    def from_service(cls, service: Any) -> "Experiments | None":
        """None when the service runs no experiment (``serve.experiments.active`` empty)."""
        cfg = service.cfg
        exp_cfg = cfg.get("experiments") if hasattr(cfg, "get") else getattr(cfg, "experiments", None)
        if exp_cfg is None or not list(exp_cfg.active or []):
            return None
        from serving.bundle import load_bundle

        def load(path: Path) -> Any:
            b = load_bundle(path, verify_hashes=bool(cfg.verify_hashes), onnx_threads=int(cfg.ingress.onnx_threads),
                            bought_together_per_item=service.settings.bought_together_per_item)
            if str(cfg.ranker.mode) == "off":
                b.ranker = None
            return b

        return cls(exp_cfg, bundles_dir=cfg.bundles_dir, load_bundle=load, store_cfg=cfg.get("store"))

    # ------------------------------------------------------------------------------------------ config
    def _files(self) -> list[Path]:
        return [self.dir / f"{name}.yaml" for name in self.active]

    def reload(self, raise_errors: bool = False) -> bool:
        """Load the active specs and their bundles; on any error keep the previous ones (False)."""
        from serving.bundle import list_versions

        try:
            specs = [read_spec(p) for p in self._files()]
            others = []  # salts of the other (finished or planned) experiments in the folder are taken too
            for p in sorted(self.dir.glob("*.yaml")):
                if p.stem not in self.active and not p.name.startswith("_"):
                    try:
                        others.append(read_spec(p))
                    except ExperimentConfigError:
                        continue
            check_set(specs, list_versions(self.bundles_dir))
            for s in specs:
                for o in others:
                    if o.salt == s.salt:
                        raise ExperimentConfigError(f"experiment {s.name!r}: salt: {s.salt!r} is already the salt "
                                                    f"of experiment {o.name!r} ({self.dir / (o.name + '.yaml')})")
            bundles = {}
            for s in specs:
                for v in s.variants:
                    if v.bundle is not None and v.bundle not in bundles:
                        bundles[v.bundle] = self.bundles.get(v.bundle) or self._load_bundle(self.bundles_dir / v.bundle)
        except Exception as e:  # noqa: BLE001 - a bad edit never stops the service
            self.error = str(e)
            log.error("experiments not (re)loaded, the previous configuration keeps serving: %s", e)
            if raise_errors:
                raise
            return False
        before = {sp.name for sp in (self.specs or [])}
        with self._lock:
            self.specs, self.bundles, self.assigner = specs, bundles, Assigner(specs)
            self._pipelines.clear()
            self.error = None
            self.n_reloads += 1
        log.info("experiments: %s", ", ".join(f"{s.name} ({'/'.join(v.name for v in s.variants)})" for s in specs))
        after = {sp.name: sp for sp in specs}
        from serving.audit import try_audit_event  # experiment starts and stops, per replica that applies them

        for name in sorted(set(after) - before):
            try_audit_event("experiment.start", f"service:{os.getpid()}", experiment=name,
                            variants=[v.name for v in after[name].variants])
        for name in sorted(before - set(after)):
            try_audit_event("experiment.stop", f"service:{os.getpid()}", experiment=name)
        return True

    def _snapshot_mtimes(self) -> dict[str, float]:
        out = {}
        for p in self._files():
            try:
                out[str(p)] = p.stat().st_mtime
            except OSError:
                out[str(p)] = -1.0
        return out

    def _watch(self, interval: float) -> None:
        self._mtimes = self._snapshot_mtimes()
        while not self._stop.wait(interval):
            now = self._snapshot_mtimes()
            if now != self._mtimes:
                self._mtimes = now
                self.reload()

    def stop(self) -> None:
        self._stop.set()
        self.logs.close()

    # ------------------------------------------------------------------------------------------ serving
    def assign(self, unit: str, now: dt.datetime | None = None) -> Assignment | None:
        return self.assigner.assign(unit, None if now is None else now.timestamp())

    def pipeline(self, a: Assignment, base: Recommender) -> Any:
        v = a.spec.variant(a.variant)
        bundle = base.bundle if v.bundle is None else self.bundles[v.bundle]
        key = (a.experiment, a.variant)
        cached = self._pipelines.get(key)
        if cached is None or cached[0] is not bundle or cached[1] is not base.store:
            cached = self._pipelines[key] = (bundle, base.store, variant_pipeline(base, bundle, v))
        return cached[2]

    def serve(self, base: Recommender, q: RecQuery, unit: str,
              observe: Callable[[str, float], None] | None = None) -> tuple[RecResult, dict[str, str]] | None:
        """(result, the response's experiment fields) for a unit in an experiment, else None."""
        a = self.assign(unit)
        if a is None:
            return None
        t0 = time.perf_counter()
        result = self.pipeline(a, base).recommend(q, observe)
        rid = new_request_id()
        exposure = Exposure(rid, q.user_key, unit, a.experiment, a.variant, result.bundle,
                            tuple(i.item_key for i in result.items), now_iso(), (time.perf_counter() - t0) * 1000,
                            result.degraded, bool(result.cold_start))
        try:
            self.logs.log_exposure(exposure)
        except (OSError, ValueError) as e:
            self.n_log_failures += 1
            log.error("exposure not logged (%s): answering outside the experiment", e)
            return None
        self.n_exposures += 1
        return result, {"experiment": a.experiment, "variant": a.variant, "request_id": rid}

    def attribute(self, stamped_events: list[Any], refs: list[tuple[str | None, int | None]]) -> None:
        """Record which response each event answers (events posted with a ``request_id``)."""
        rows = [(e.event_id, rid, pos) for e, (rid, pos) in zip(stamped_events, refs) if rid]
        self.logs.log_attributions(rows)
