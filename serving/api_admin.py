"""Privacy admin routes (admin API key only): ``DELETE /v1/users/{user_id}``, the right to be forgotten.

The raw ``user_id`` is pseudonymised with the service's key and never stored or logged. The call runs
``features.forget`` with the service's own steps (``serving.forget.forget_service``, given the running
service's online store, so the live store forgets at once): tombstone, prepared data and profiles under
``serve.privacy.artifacts``, the event and exposure logs, audiences and the contact log, every bundle
version. When a derived bundle without the user was published, this replica swaps it in at once (the
others follow ``LATEST``). It answers the forget report (``features.forget.ForgetReport``): 200 with
``status`` ``forgotten`` or ``not found`` (the tombstone is written either way), 409 when some artifact was
made with another pseudonymisation key and could not be checked (both fingerprints named; everything else
was forgotten). Every call is recorded in the audit log (``serving.audit``: a hash of the key, never the key).

The actor recorded is ``apikey:`` and the first 12 hex digits of the admin key's sha256.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path as FilePath
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from omegaconf import OmegaConf

from features.forget import run as forget_run
from features.forget import subject_hash
from features.privacy import check_key_fingerprint, key_fingerprint
from serving.api_inputs import clean_key
from serving.audit import AUDIT_ENV, audit_event
from serving.auth import AuthError, key_from_headers
from serving.forget import forget_service

log = logging.getLogger(__name__)


def forget_config(serve_cfg: Any) -> Any:
    """The config ``features.forget.run`` reads (``paths.artifacts``, ``paths.processed``, ``serve``), from the
    service's ``serve`` config (``serve.privacy``)."""
    privacy = serve_cfg.get("privacy") or {}
    artifacts = str(privacy.get("artifacts") or "artifacts")
    processed = str(privacy.get("processed") or f"{artifacts}/processed")
    return OmegaConf.create({"paths": {"artifacts": artifacts, "processed": processed},
                             "serve": OmegaConf.to_container(serve_cfg, resolve=True)})


def check_event_log_key(serve_cfg: Any) -> None:
    """The event log holds pseudonyms made with the service's key: ``<event_log>.manifest.json`` records that key's
    fingerprint (written by the first service that starts on the log) and every later start checks it;
    ``KeyMismatchError`` names both fingerprints instead of every known user silently looking new."""
    log_path = FilePath(str(serve_cfg.store.event_log))
    sidecar = log_path.with_name(log_path.name + ".manifest.json")
    if sidecar.exists():
        check_key_fingerprint(json.loads(sidecar.read_text()).get("pseudo_key_fingerprint"), f"event log {log_path}")
        return
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"kind": "event_log", "log": log_path.name,
                               "pseudo_key_fingerprint": key_fingerprint()}, sort_keys=True) + "\n")
    os.replace(tmp, sidecar)


def router(service: Any) -> APIRouter:
    """The privacy admin routes over ``service`` (a ``serving.service.Service``). Points this process's audit log at
    ``serve.privacy.audit_log`` unless ``SHOPREC_AUDIT_LOG`` is set (a Serve replica does not inherit the caller's
    environment), and checks the event log's key (``check_event_log_key``)."""
    audit_log = (service.cfg.get("privacy") or {}).get("audit_log")
    if audit_log:
        os.environ.setdefault(AUDIT_ENV, str(audit_log))
    check_event_log_key(service.cfg)

    def admin(request: Request) -> str:
        try:
            return "apikey:" + service.auth.check(key_from_headers(request.headers), admin=True)[:12]
        except AuthError as e:
            raise HTTPException(e.status, e.message) from None

    r = APIRouter(tags=["privacy"])

    @r.delete("/v1/users/{user_id}", responses={
        200: {"description": "the forget report: rows removed per artifact, bundles, models to retrain"},
        409: {"description": "some artifact was pseudonymised with another key and could not be checked"}})
    def forget_user(user_id: Annotated[str, Path(min_length=1, max_length=128)],
                    actor: str = Depends(admin)) -> dict[str, Any]:
        try:
            raw = clean_key(user_id)
        except ValueError as e:
            raise RequestValidationError([{"loc": ("path", "user_id"), "msg": str(e), "type": "value_error",
                                           "input": None}]) from None
        cfg = forget_config(service.cfg)
        cfg.user_key = service.user_key(raw)
        published: dict[str, Any] = {}

        def service_step(user_key: str, c: Any, report: Any) -> None:
            published["dir"] = forget_service(user_key, c, report, store=service.store)

        report = forget_run(cfg, steps=[service_step])
        if published.get("dir") is not None and not service.cfg.get("bundle_path"):
            try:
                service.swap_to(str(published["dir"]))
            except Exception as e:  # noqa: BLE001 - LATEST names it: the watcher retries; reported below
                report.errors.append(f"derived bundle {published['dir'].name} not swapped in yet: {e}")
        audit_event("user.forget", actor, subject=subject_hash(report.user_key), status=report.status,
                    rows_removed=report.rows_removed, artifacts=len(report.removed), bundles=report.bundles,
                    retrain=len(report.retrain), errors=len(report.errors), pseudo_key_fingerprint=key_fingerprint())
        body = asdict(report)
        if report.errors:
            raise HTTPException(409, body)
        return body

    return r

