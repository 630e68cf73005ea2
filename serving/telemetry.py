"""Prometheus metrics of the service, served at ``GET /metrics``.

Counters of requests and errors per route and status, latency histograms per route and per pipeline
stage (``retrieve``, ``rank``, ``rules``, ``fallback``), degraded answers per stage, accepted events
and bundle swaps. Each ingress replica keeps its own registry (labels carry no user data); with
several replicas a Prometheus server scraping each one (or Ray's metrics agent) adds them up.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Telemetry:
    """One registry with the service's metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("shoprec_requests_total", "HTTP requests", ["route", "method", "status"], registry=r)
        self.errors = Counter("shoprec_errors_total", "HTTP requests answered with status >= 400",
                              ["route", "status"], registry=r)
        self.latency = Histogram("shoprec_request_seconds", "HTTP request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("shoprec_stage_seconds", "pipeline stage latency", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.degraded = Counter("shoprec_degraded_total", "answers degraded to popular items", ["stage"], registry=r)
        self.cold_start = Counter("shoprec_cold_start_total", "recommendations on the cold-start path", registry=r)
        self.events = Counter("shoprec_events_accepted_total", "events accepted and logged", registry=r)
        self.swaps = Counter("shoprec_bundle_swaps_total", "bundles loaded and swapped in", registry=r)
        self.swap_failures = Counter("shoprec_bundle_swap_failures_total", "bundles that failed to load", registry=r)
        self.ready = Gauge("shoprec_ready", "1 once a bundle is loaded", registry=r)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
