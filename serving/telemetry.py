"""Metrics of the service: ``GET /metrics`` per replica, and Ray's metrics for the whole application.

Counters of requests and errors per route and status, latency histograms per route and per pipeline
stage (``retrieve``, ``rank``, ``rules``, ``fallback``), degraded answers per stage (``store``: the
Redis store was out of reach and the replica's cache answered), accepted events and bundle swaps.
Labels carry no user data.

Two views of the same numbers:

- ``GET /metrics`` answers for the replica that serves the request (its own ``prometheus_client``
  registry): enough on one replica, and what the in-process tests read.
- Inside a Ray Serve replica every metric is also recorded through Ray's metrics API
  (``ray.util.metrics``): each node's Ray metrics agent exports the metrics of every replica on that
  node, named ``ray_<name>`` with a ``WorkerId`` label per replica, on the node's metrics export port
  (``ray start --metrics-export-port``). Prometheus finds every node of the cluster through Ray's
  service-discovery file (``/tmp/ray/prom_metrics_service_discovery.json``), so one scrape job
  (``conf/prometheus/prometheus.yml``) reports the whole application, and ``sum without (WorkerId)``
  adds the replicas up (``conf/prometheus/shoprec_alerts.yml``). ``SHOPREC_RAY_METRICS=0`` turns the
  Ray side off.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def in_ray_replica() -> bool:
    """True inside a Ray actor (a Serve replica), unless ``SHOPREC_RAY_METRICS=0``."""
    if os.environ.get("SHOPREC_RAY_METRICS", "1") == "0":
        return False
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001 - no Ray, or not in a worker: the per-replica registry only
        return False


class _Twin:
    """A ``prometheus_client`` metric (or one of its labelled children) and its ``ray.util.metrics``
    twin, updated together; the twin is None outside Ray."""

    __slots__ = ("prom", "ray", "names", "tags")

    def __init__(self, prom: Any, ray_metric: Any, names: tuple[str, ...] = (), tags: dict[str, str] | None = None):
        self.prom, self.ray, self.names, self.tags = prom, ray_metric, names, tags

    def labels(self, *values: str) -> "_Twin":
        return _Twin(self.prom.labels(*values), self.ray, (), dict(zip(self.names, map(str, values))))

    def inc(self, amount: float = 1.0) -> None:
        self.prom.inc(amount)
        if self.ray is not None:
            self.ray.inc(amount, tags=self.tags)

    def observe(self, value: float) -> None:
        self.prom.observe(value)
        if self.ray is not None:
            self.ray.observe(value, tags=self.tags)

    def set(self, value: float) -> None:
        self.prom.set(value)
        if self.ray is not None:
            self.ray.set(value, tags=self.tags)


class Telemetry:
    """The service's metrics: one ``prometheus_client`` registry, mirrored to Ray's metrics in a replica."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, ray_metrics: bool | None = None) -> None:
        self.registry = CollectorRegistry()
        self.ray_metrics = in_ray_replica() if ray_metrics is None else bool(ray_metrics)
        self.requests = self._metric(Counter, "shoprec_requests_total", "HTTP requests", ("route", "method", "status"))
        self.errors = self._metric(Counter, "shoprec_errors_total", "HTTP requests answered with status >= 400",
                                   ("route", "status"))
        self.latency = self._metric(Histogram, "shoprec_request_seconds", "HTTP request latency", ("route",))
        self.stage = self._metric(Histogram, "shoprec_stage_seconds", "pipeline stage latency", ("stage",))
        self.degraded = self._metric(Counter, "shoprec_degraded_total", "answers degraded (popular items, or the "
                                     "replica's cache while the store is out of reach)", ("stage",))
        self.cold_start = self._metric(Counter, "shoprec_cold_start_total", "recommendations on the cold-start path")
        self.events = self._metric(Counter, "shoprec_events_accepted_total", "events accepted and logged")
        self.swaps = self._metric(Counter, "shoprec_bundle_swaps_total", "bundles loaded and swapped in")
        self.swap_failures = self._metric(Counter, "shoprec_bundle_swap_failures_total", "bundles that failed to load")
        self.ready = self._metric(Gauge, "shoprec_ready", "1 once a bundle is loaded")

    def _metric(self, kind: type, name: str, doc: str, labels: tuple[str, ...] = ()) -> _Twin:
        extra = {"buckets": LATENCY_BUCKETS} if kind is Histogram else {}
        prom = kind(name, doc, list(labels), registry=self.registry, **extra)
        twin = None
        if self.ray_metrics:
            try:
                from ray.util import metrics as rm

                tag_keys = labels or None
                if kind is Counter:
                    twin = rm.Counter(name, doc, tag_keys=tag_keys)
                elif kind is Histogram:
                    twin = rm.Histogram(name, doc, boundaries=list(LATENCY_BUCKETS), tag_keys=tag_keys)
                else:
                    twin = rm.Gauge(name, doc, tag_keys=tag_keys)
            except Exception as e:  # noqa: BLE001 - /metrics per replica still works
                log.warning("Ray metrics off for %s: %s", name, e)
        return _Twin(prom, twin, labels)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
