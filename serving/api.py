"""The HTTP API: FastAPI routes and the request/response models (unknown fields are refused).

``create_app(service)`` builds the FastAPI app over a ``serving.service.Service``; the Ray Serve
ingress (``serving.app``) serves it, and tests can call it directly. Bad input answers 422 with the
field's location (``detail[].loc``), auth failures 401/403/429, oversized bodies 413, unknown items
and campaigns 404, and a service still loading its bundle 503. User ids are pseudonymised on arrival
and never logged.

Client input never causes a 500: keys and event times follow ``serving.api_inputs`` (the OpenAPI
schema states the same rules); numbers must be finite (``NaN``, ``Infinity``, ``1e309`` are
refused); error bodies are always valid JSON (``serving.api_errors``).
A batch of events is all or nothing: one bad event answers 422 naming its index and field
(``loc: ["body", 3, "ts"]``) and none of the batch is logged, so a client can fix and resend it.

``/docs`` is Swagger UI served from the installed ``swagger-ui-py`` package (``serving.api_docs``):
it needs no internet.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import pathlib
import socket
import time
from typing import Annotated, Any, Literal, Union

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, StrictInt, StrictStr, Tag,
                      model_validator)
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.schema import EVENT_TYPES
from serving.api_docs import add_offline_docs
from serving.api_errors import COMMON_RESPONSES, UNION_TAGS, http_error, validation_error
from serving.api_inputs import EventTime, Key, clean_key, integral
from serving.auth import AuthError, BodyLimitMiddleware, key_from_headers
from serving.campaigns.spec import ID_REGEX as CAMPAIGN_ID_REGEX
from serving.console.routes import console_router
from serving.recommender import RecItem, RecQuery, RecResult
from serving.store import OnlineEvent, StoreUnavailable

log = logging.getLogger(__name__)

MAX_K = 200
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


def _key(v: str | int, field_name: str) -> str:
    try:
        return clean_key(v)
    except ValueError as e:
        raise RequestValidationError([{"loc": ("body", field_name), "msg": str(e), "type": "value_error",
                                       "input": None}]) from None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Context(Strict):
    category: StrictStr | None = Field(None, max_length=200, description="only items of this category")
    price_min: float | None = Field(None, ge=0, allow_inf_nan=False, strict=True)  # strict: no "5", no true
    price_max: float | None = Field(None, ge=0, allow_inf_nan=False, strict=True)
    channel: StrictStr | None = Field(None, max_length=50, description="web, app, email, ... (for the ranker)")

    @model_validator(mode="after")
    def _range(self) -> "Context":
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError(f"price_min={self.price_min} is larger than price_max={self.price_max}")
        return self


class RecentEvent(Strict):
    item_id: Key
    event: EventType = "view"
    ts: EventTime | None = None


class RecommendationRequest(Strict):
    user_id: Key
    k: Annotated[int, BeforeValidator(integral)] = Field(10, ge=1, le=MAX_K, strict=True)
    context: Context | None = None
    exclude: list[Key] = Field(default_factory=list, max_length=1000, description="item ids never to return")
    recent_events: list[RecentEvent] = Field(default_factory=list, max_length=200,
                                             description="the session's latest events, oldest first")
    session_id: Key | None = Field(None, description="an anonymous visitor's session or device id: when given, "
                                                     "the unit of experiment assignment (else user_id)")


class Item(Strict):
    item_id: str
    score: float
    source: str = Field(description="similar | bought_together | popular | popular_fallback")
    reason: str


class RecommendationResponse(Strict):
    items: list[Item]
    cold_start: bool
    degraded: str | None = Field(None, description="the stage that ran out of time or failed, if any")
    bundle: str
    experiment: str | None = Field(None, description="the experiment this answer is part of (absent outside one)")
    variant: str | None = Field(None, description="the experiment variant that answered")
    request_id: str | None = Field(None, description="in an experiment: send it with events to attribute them")


class SimilarResponse(Strict):
    item_id: str
    items: list[Item]
    bundle: str


class EventIn(Strict):
    user_id: Key
    item_id: Key
    event: EventType
    ts: EventTime | None = Field(None, description="event time (RFC 3339 with its offset); default: when it arrives")
    request_id: StrictStr | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
                                         description="the recommendation response this event answers")
    position: Annotated[StrictInt, Field(ge=0, le=MAX_K), BeforeValidator(integral)] | None = Field(
        None, description="0-based position of the item in it")


# One event or a list of them; the callable discriminator validates only the matching shape, and the
# tags are dropped from error locations (``["body", 3, "ts"]``, not ``["body", "batch", 3, "ts"]``).
EventsBody = Annotated[Union[Annotated[EventIn, Tag(UNION_TAGS[0])], Annotated[list[EventIn], Tag(UNION_TAGS[1])]],
                       Discriminator(lambda v: "batch" if isinstance(v, list) else "event")]


class EventsAccepted(Strict):
    accepted: int


class CampaignRequest(Strict):
    user_ids: list[Key] = Field(min_length=1, max_length=10000)


class CampaignScore(Strict):
    user_id: str
    score: float | None


class CampaignResponse(Strict):
    campaign_id: str
    scores: list[CampaignScore]


class ReloadRequest(Strict):
    bundle: StrictStr | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,199}$",
                                     description="a folder name under the bundles folder; default: LATEST")


def _items(items: list[RecItem]) -> list[Item]:
    return [Item(item_id=i.item_key, score=i.score if math.isfinite(i.score) else 0.0, source=i.source,
                 reason=i.reason) for i in items]


def recommendation_json(result: RecResult, experiment: dict[str, str] | None = None) -> Response:
    """The ``RecommendationResponse`` body, serialised here in one ``json.dumps``: FastAPI would
    otherwise build the pydantic models, validate them again against ``response_model`` and encode
    them through ``jsonable_encoder``, for a body whose types ``RecResult`` already fixes. The
    schema in /openapi.json stays ``RecommendationResponse`` (tests check the two agree)."""
    items = [{"item_id": i.item_key, "score": i.score if math.isfinite(i.score) else 0.0, "source": i.source,
              "reason": i.reason} for i in result.items]
    body = {"items": items, "cold_start": bool(result.cold_start), "degraded": result.degraded,
            "bundle": result.bundle}
    if experiment:  # experiment, variant, request_id
        body.update(experiment)
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(),
                    media_type="application/json")


class MetricsMiddleware:
    """Pure ASGI middleware: per-route request counts, errors and latency (``Telemetry.observe_request``),
    and a 500 for an unhandled error (never a hang). Starlette's ``@app.middleware("http")`` would wrap
    every request in extra tasks and memory streams. With ``replica_id`` each answer carries it in an
    ``X-Replica`` header."""

    def __init__(self, app: Any, telemetry: Any, replica_id: str | None = None):
        self.app = app
        self.tel = telemetry
        self.replica_header = None if replica_id is None else (b"x-replica", replica_id.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [0]

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                if self.replica_header is not None:
                    msg = {**msg, "headers": [*msg.get("headers", []), self.replica_header]}
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        except Exception:  # noqa: BLE001 - last line of defence: a 500 is counted, never a hang
            log.exception("unhandled error on %s", scope.get("path"))
            if status[0] == 0:  # nothing sent yet: answer
                status[0] = 500
                await JSONResponse({"detail": "internal error"}, status_code=500)(scope, receive, send)
            else:
                status[0] = 500
        route = scope.get("route")
        self.tel.observe_request(getattr(route, "path", "unmatched"), scope.get("method", ""), status[0],
                                 time.perf_counter() - t0)


class _EventLogCollector:
    """Prometheus collector of the event log's repair counters (read at scrape time)."""

    def __init__(self, store: Any):
        self.store = store

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        log_ = getattr(self.store, "log", None)
        yield CounterMetricFamily("shoprec_event_log_torn_repairs", "torn tails of the event log repaired here "
                                  "(bytes never acknowledged, moved to <log>.torn)",
                                  value=getattr(log_, "torn_repairs", 0))
        yield CounterMetricFamily("shoprec_event_log_torn_bytes", "bytes moved out of the event log by repairs",
                                  value=getattr(log_, "torn_bytes", 0))
        yield CounterMetricFamily("shoprec_event_log_bad_lines", "malformed complete lines skipped when reading "
                                  "the event log", value=getattr(self.store, "n_bad_lines", 0))
        yield GaugeMetricFamily("shoprec_event_log_events", "events read from the event log by this replica",
                                value=getattr(self.store, "n_events", 0))


async def _store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
    log.error("%s", exc)
    return JSONResponse({"detail": "the event store is unavailable: nothing was stored, retry later"},
                        status_code=503, headers={"Retry-After": "1"})


def _epoch(ts: dt.datetime | None, default: float) -> float:
    if ts is None:
        return default
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    return ts.timestamp()


def create_app(service: Any, ranker_handle: Any = None) -> FastAPI:
    """The FastAPI app over ``service`` (a ``serving.service.Service``).

    With ``ranker_handle`` (a Ray Serve handle of ``serving.app.RankerDeployment``) the rank stage
    runs there, under its time budget; otherwise in-process.
    """
    cfg = service.cfg
    app = FastAPI(title="shoprec", version="1", description="Recommendations, events and campaign scores.",
                  docs_url=None, redoc_url=None, responses=COMMON_RESPONSES)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)  # 503: an event not stored is never a 202
    if list(cfg.http.cors_origins or []):
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.http.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(cfg.http.max_body_bytes))
    tel = service.telemetry
    # With debug routes on, every answer names the replica that gave it (tests of multi-replica behaviour).
    replica = f"{socket.gethostname()}:{os.getpid()}" if bool(cfg.http.debug_routes) else None
    app.add_middleware(MetricsMiddleware, telemetry=tel, replica_id=replica)

    api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False,
                                  description="API key (or `Authorization: Bearer <key>`)")

    async def require_key(request: Request, _key: str | None = Security(api_key_scheme)) -> str:
        # async: a sync dependency would cost every request a hop to the threadpool and back
        try:
            return service.auth.check(key_from_headers(request.headers))
        except AuthError as e:
            headers = {"Retry-After": str(max(1, round(e.retry_after)))} if e.retry_after else None
            raise HTTPException(e.status, e.message, headers=headers) from None

    def require_admin(request: Request, _key: str | None = Security(api_key_scheme)) -> str:
        try:
            return service.auth.check(key_from_headers(request.headers), admin=True)
        except AuthError as e:
            raise HTTPException(e.status, e.message) from None

    def recommender():
        rec = service.recommender
        if rec is None:
            raise HTTPException(503, "not ready: the bundle is still loading" + (
                f" (last error: {service.load_error})" if service.load_error else ""))
        return rec

    authed = [Depends(require_key)]

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "the bundle is not loaded yet"}})
    async def readyz() -> JSONResponse:
        b = service.bundle
        if b is None:
            return JSONResponse({"status": "loading", "error": service.load_error}, status_code=503)
        return JSONResponse({"status": "ready", "bundle": b.name, "n_items": b.n_items, "devices": b.devices()})

    try:
        tel.registry.register(_EventLogCollector(service.store))
    except ValueError:  # already registered (a second app over the same service)
        pass

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        return Response(tel.render(), media_type=tel.content_type)

    add_offline_docs(app)
    app.include_router(console_router(service))  # /console (serving.console): the web console, same keys

    @app.post("/v1/recommendations", response_model=RecommendationResponse, dependencies=authed, tags=["recommend"])
    async def recommendations(req: RecommendationRequest) -> Response:
        rec = recommender()
        ctx = req.context or Context()
        q = RecQuery(user_key=service.user_key(_key(req.user_id, "user_id")), k=req.k, category=ctx.category,
                     price_min=ctx.price_min, price_max=ctx.price_max, exclude=tuple(str(x) for x in req.exclude),
                     recent_items=tuple(str(e.item_id) for e in req.recent_events), channel=ctx.channel)
        exps = getattr(service, "experiments", None)  # serving.experiments: assignment + exposure log
        exp = None if exps is None else exps.serve(rec, q, q.user_key if req.session_id is None else
                                                   service.user_key(_key(req.session_id, "session_id")),
                                                   tel.observe_stage)
        if exp is not None:
            result = exp[0]
        elif ranker_handle is None:
            result = rec.recommend(q, observe=tel.observe_stage)
        else:
            result = await _recommend_remote(rec, q, ranker_handle, tel)
        if result.degraded is None and getattr(service.store, "unavailable", False):  # events from the replica's cache
            result = dataclasses.replace(result, degraded="store")
        if result.degraded:
            tel.degraded.labels(result.degraded).inc()
        if result.cold_start:
            tel.cold_start.inc()
        return recommendation_json(result, exp[1] if exp is not None else None)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarResponse, dependencies=authed, tags=["recommend"],
             responses={404: {"description": "unknown item"}})
    async def similar(item_id: Annotated[str, Path(min_length=1, max_length=128)],
                      k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> SimilarResponse:
        rec = recommender()
        items = rec.similar(item_id, k)
        if items is None:
            raise HTTPException(404, f"unknown item_id {item_id!r}: not in the catalogue of bundle {rec.bundle.name}")
        return SimilarResponse(item_id=item_id, items=_items(items), bundle=rec.bundle.name)

    @app.post("/v1/events", status_code=202, response_model=EventsAccepted, dependencies=authed, tags=["events"],
              description="One event or a list. 202 means every event of the request is durably logged. A batch "
                          "is all or nothing: one bad event answers 422 naming its index and field "
                          "(`loc: [\"body\", 3, \"ts\"]`) and nothing of the batch is logged.")
    def events(body: Annotated[EventsBody, Body()]) -> EventsAccepted:
        batch = body if isinstance(body, list) else [body]
        limit = int(cfg.store.max_events_per_request)
        if len(batch) > limit:
            raise RequestValidationError([{"loc": ("body",), "msg": f"at most {limit} events per request, got {len(batch)}",
                                           "type": "too_long", "input": None}])
        now = time.time()
        online = [OnlineEvent(service.user_key(_key(e.user_id, "user_id")), _key(e.item_id, "item_id"), e.event,
                              _epoch(e.ts, now)) for e in batch]
        if online:
            try:
                stamped = service.store.append(online)
            except ValueError as e:  # the store's own check of what the models above already refuse
                raise RequestValidationError([{"loc": ("body",), "msg": str(e), "type": "value_error",
                                               "input": None}]) from None
        exps = getattr(service, "experiments", None)
        if exps is not None and any(e.request_id for e in batch):  # which response each event answers
            exps.attribute(stamped, [(e.request_id, e.position) for e in batch])
        tel.events.inc(len(online))
        return EventsAccepted(accepted=len(online))

    @app.post("/v1/campaigns/{campaign_id}/score", response_model=CampaignResponse, dependencies=authed,
              tags=["campaigns"], responses={404: {"description": "unknown campaign"}})
    def campaign_score(campaign_id: Annotated[str, Path(pattern=CAMPAIGN_ID_REGEX)],
                       req: CampaignRequest) -> CampaignResponse:
        recommender()
        try:
            scorer = service.campaign_scorer(campaign_id)
        except Exception as e:  # noqa: BLE001 - a broken campaign model is ours, not the caller's
            log.error("campaign %s: model not loadable: %s", campaign_id, e)
            raise HTTPException(503, f"campaign {campaign_id!r}: its model could not be loaded") from None
        if scorer is None:
            raise HTTPException(404, f"unknown campaign {campaign_id!r}: no campaign model in bundle "
                                     f"{service.bundle.name} (campaigns/{campaign_id}/)")
        raw = [_key(u, "user_ids") for u in req.user_ids]
        scores = scorer.score([service.user_key(u) for u in raw])
        return CampaignResponse(campaign_id=campaign_id, scores=[
            CampaignScore(user_id=u, score=None if s is None or s != s else float(s)) for u, s in zip(raw, scores)])

    @app.post("/admin/reload", dependencies=[Depends(require_admin)], tags=["ops"],
              responses={409: {"description": "the bundle was not swapped in (not found or not loadable)"}})
    def reload(request: Request, req: ReloadRequest | None = None) -> dict[str, str]:
        from serving.audit import audit_event
        from serving.auth import sha256_hex
        from serving.bundle import BundleError

        target = None
        if req is not None and req.bundle:
            target = str(pathlib.Path(cfg.bundles_dir) / req.bundle)
        try:
            b = service.swap_to(target)
        except BundleError as e:
            raise HTTPException(409, f"bundle not swapped in: {e}") from None
        if target is not None:  # the other replicas follow through their LATEST watcher
            service.publish_latest(b)
        key = key_from_headers(request.headers)
        audit_event("bundle.reload", f"apikey:{sha256_hex(key)[:12]}" if key else "anonymous", bundle=b.name,
                    requested=req.bundle if req is not None else None)
        return {"bundle": b.name}

    from serving.ops_api import router as versions_router  # /admin/versions, /admin/promote, /admin/rollback
    app.include_router(versions_router(service))
    from serving.api_admin import router as privacy_router  # DELETE /v1/users/{user_id}
    app.include_router(privacy_router(service))

    if bool(cfg.http.debug_routes):
        @app.post("/v1/noop", dependencies=authed, tags=["debug"])
        async def noop() -> dict[str, str]:
            return {}

    return app


async def _recommend_remote(rec, q: RecQuery, handle, tel) -> RecResult:
    """retrieve here -> rank on the ranker deployment (under its budget) -> rules here."""
    t0 = time.perf_counter()
    try:
        cands = rec.retrieve(q)
    except Exception as e:  # noqa: BLE001
        return rec.fallback(q, "retrieve", e, tel.observe_stage)
    t1 = time.perf_counter()
    tel.observe_stage("retrieve", t1 - t0)
    if cands.cold_start or rec.bundle.ranker is None:
        scores = cands.scores
    else:
        try:
            scores = await asyncio.wait_for(handle.score.remote(rec.rank_request(cands)),
                                            timeout=rec.settings.budget_ms["rank"] / 1000)
        except Exception as e:  # noqa: BLE001 - timeout or a failed replica: degrade
            return rec.fallback(q, "rank", e, tel.observe_stage, cands)
    tel.observe_stage("rank", time.perf_counter() - t1)
    return rec.finish(cands, scores, tel.observe_stage)
