"""The console's HTTP routes (an ``APIRouter`` that ``serving.api.create_app`` includes).

- ``GET /console``: the sign-in page, or the console once signed in (one page; views by URL fragment:
  ``#segments``, ``#campaigns``, ``#experiments``, ``#models``, ``#health``).
- ``POST /console/login`` (form field ``key``): a wrong or missing key answers the sign-in page with a
  message (401/403/429); a good one sets the session cookie and redirects to ``/console``.
- ``POST /console/logout``.
- ``GET /console/static/<file>``: the page's script, style sheet and chart code, from this package.
- ``GET /console/api/<view>``: each view's data as JSON (401 without a session).
- ``POST /console/api/experiments/<name>/start|stop`` and ``POST /console/api/models/rollback``: admin
  sessions only (403 otherwise), with the session's CSRF token in ``X-CSRF-Token``; audited.

The routes are left out of the OpenAPI schema. Every console answer carries a Content-Security-Policy
that allows scripts, styles and data from the service itself only.
"""
from __future__ import annotations

import asyncio
import html
import json
import logging
import string
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from serving.auth import AuthError
from serving.console import experiments as exp_view
from serving.console import marketing, ops
from serving.console.session import COOKIE, Session, Sessions, load_secret

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = {"console.js": "text/javascript", "charts.js": "text/javascript", "console.css": "text/css"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
MAX_FORM_BYTES = 4096


def audit(action: str, actor: str, **details: Any) -> dict | None:
    """``serving.audit.audit_event`` when that module is present (else the action is only logged)."""
    try:
        from serving.audit import audit_event
    except ImportError:
        log.warning("audit log unavailable (serving.audit missing): %s by %s %s", action, actor, details)
        return None
    return audit_event(action, actor, **details)


def _template(name: str) -> string.Template:
    return string.Template((HERE / "templates" / name).read_text())


def _settings(service: Any) -> dict[str, Any]:
    cfg = service.cfg
    c = cfg.get("console") if hasattr(cfg, "get") else getattr(cfg, "console", None)
    c = dict(c or {})
    artifacts = c.get("artifacts") or str(Path(str(cfg.store.event_log)).parent.parent)
    return {"artifacts": Path(str(artifacts)), "secret_env": str(c.get("secret_env") or "SHOPREC_CONSOLE_SECRET"),
            "session_hours": float(c.get("session_hours") or 8), "cookie_secure": bool(c.get("cookie_secure", True))}


def console_router(service: Any) -> APIRouter:
    """The console's routes over ``service`` (a ``serving.service.Service``)."""
    s = _settings(service)
    artifacts: Path = s["artifacts"]
    sessions = Sessions(service.auth, load_secret(s["secret_env"], artifacts), hours=s["session_hours"])
    health = ops.Health(service)
    login_page, app_page = _template("login.html"), _template("app.html")
    router = APIRouter(prefix="/console", include_in_schema=False)

    def page(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def login_html(request: Request, message: str = "", status: int = 200) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return page(login_page.substitute(root=html.escape(root), message=html.escape(message),
                                          shown="" if message else "hidden"), status)

    def session_of(request: Request) -> Session | None:
        return sessions.decode(request.cookies.get(COOKIE))

    def require(request: Request, *, admin: bool = False, write: bool = False) -> Session:
        sess = session_of(request)
        if sess is None:
            raise HTTPException(401, "sign in at /console first")
        if write and request.headers.get("x-csrf-token") != sess.csrf:
            raise HTTPException(403, "missing or wrong X-CSRF-Token")
        if admin and not sess.is_admin:
            raise HTTPException(403, "this needs an admin key")
        return sess

    def data(payload: dict[str, Any], status: int = 200) -> Response:
        return Response(json.dumps(payload, allow_nan=False, default=str), status_code=status,
                        media_type="application/json", headers=SECURITY_HEADERS)

    async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
        # reading parquet / logs: never on the event loop that serves recommendations
        return await asyncio.to_thread(fn, *args)

    @router.get("")
    async def console(request: Request) -> HTMLResponse:
        sess = session_of(request)
        if sess is None:
            return login_html(request)
        root = request.scope.get("root_path", "").rstrip("/")
        return page(app_page.substitute(root=html.escape(root), csrf=html.escape(sess.csrf), role=sess.role,
                                        actor=html.escape(sess.actor)))

    @router.post("/login")
    async def login(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return login_html(request, "the form is too large", 413)
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            return login_html(request, "could not read the form", 400)
        key = (form.get("key") or [""])[0]
        try:
            sess = sessions.login(key)
        except AuthError as e:
            message = {401: "Enter an API key.", 403: "This key is not accepted: use an admin or analyst key.",
                       429: "Too many attempts with this key: wait a moment."}.get(e.status, e.message)
            return login_html(request, message, e.status)
        root = request.scope.get("root_path", "").rstrip("/")
        r = RedirectResponse(root + "/console", status_code=303, headers=SECURITY_HEADERS)
        r.set_cookie(COOKIE, sessions.encode(sess), max_age=int(sessions.seconds), path=root + "/console",
                     secure=s["cookie_secure"], httponly=True, samesite="strict")
        return r

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        r = RedirectResponse(root + "/console", status_code=303, headers=SECURITY_HEADERS)
        r.delete_cookie(COOKIE, path=root + "/console", secure=s["cookie_secure"], httponly=True, samesite="strict")
        return r

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "not found")
        return FileResponse(HERE / "static" / name, media_type=STATIC[name],
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    @router.get("/api/segments")
    async def segments(request: Request, data_name: Annotated[str | None, Query(alias="data", max_length=100)] = None
                       ) -> Response:
        require(request)
        return data(await off_loop(marketing.segments_view, artifacts, data_name))

    @router.get("/api/campaigns")
    async def campaigns(request: Request) -> Response:
        require(request)
        return data(await off_loop(marketing.campaigns_view, artifacts))

    @router.get("/api/experiments")
    async def experiments(request: Request) -> Response:
        sess = require(request)
        return data({**await off_loop(exp_view.experiments_view, service), "can_act": sess.is_admin})

    @router.post("/api/experiments/{name}/{action}")
    async def experiment_action(request: Request, name: str, action: str) -> Response:
        sess = require(request, admin=True, write=True)
        if action not in ("start", "stop"):
            raise HTTPException(404, f"unknown action {action!r}: start or stop")
        fn = exp_view.start if action == "start" else exp_view.stop
        try:
            result = await off_loop(fn, service, name)
        except exp_view.ActionRefused as e:
            return data({"detail": e.message}, e.status)
        # who asked, from the console (the replica that applies it records its own experiment.start/stop)
        audit(f"console.experiment.{action}", sess.actor, experiment=name, status=result["status"])
        return data(result)

    @router.get("/api/models")
    async def models(request: Request) -> Response:
        sess = require(request)
        return data({**await off_loop(ops.models_view, service), "can_act": sess.is_admin})

    @router.post("/api/models/rollback")
    async def models_rollback(request: Request) -> Response:
        from serving.bundle import BundleError

        sess = require(request, admin=True, write=True)
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise HTTPException(400, "body: not JSON") from None
        to = body.get("to") if isinstance(body, dict) else None
        if to is not None and not isinstance(to, str):
            raise HTTPException(422, "to: a version name or null")
        try:
            record = await off_loop(ops.rollback, service, to, sess.actor)
        except BundleError as e:
            return data({"detail": str(e)}, 409)
        return data(record)

    @router.get("/api/health")
    async def health_view(request: Request) -> Response:
        require(request)
        return data(await off_loop(health.view))

    return router
