"""Admin routes for bundle versions (admin API key only): list, promote, roll back.

- ``GET /admin/versions``: ``serving.bundle.versions.list_versions`` of the bundles folder.
- ``POST /admin/promote {"version": NAME}`` and ``POST /admin/rollback {"version": NAME | null}``: the replica
  that receives the call loads and warms the version up on the side and swaps it in (``Service.swap_to``: a
  request in flight keeps the bundle it started with), then ``LATEST`` moves and the promotion is recorded
  (``promotions.jsonl``, audit log), so the other replicas follow within ``serve.watch_interval_s``. A version
  that is unknown or fails to load answers 409 and nothing moves.

The actor recorded is the first 12 hex digits of the admin key's sha256 (never the key).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from serving.auth import AuthError, key_from_headers
from serving.bundle import BundleError
from serving.bundle import versions

VERSION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.+=@-]{0,199}$"


class VersionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: StrictStr | None = Field(None, pattern=VERSION_PATTERN,
                                      description="a version under the bundles folder; rollback: null = the previous")


def router(service: Any) -> APIRouter:
    """The admin version routes over ``service`` (a ``serving.service.Service``)."""

    def admin(request: Request) -> str:
        try:
            return "key:" + service.auth.check(key_from_headers(request.headers), admin=True)[:12]
        except AuthError as e:
            raise HTTPException(e.status, e.message) from None

    r = APIRouter(prefix="/admin", tags=["ops"])
    bundles = Path(service.cfg.bundles_dir)

    @r.get("/versions")
    def list_all(_actor: str = Depends(admin)) -> list[dict[str, Any]]:
        return versions.list_versions(bundles)

    def _serve(version: str, actor: str, action: str) -> dict[str, Any]:
        try:
            b = service.swap_to(str(bundles / versions.check_name(version, "version")))
            rec = versions.promote(bundles, b.path.name, actor=actor, verify=False, _action=action)
        except BundleError as e:
            raise HTTPException(409, f"not swapped in: {e}") from None
        return {**rec, "serving": b.name}

    @r.post("/promote", responses={409: {"description": "unknown version or not loadable; nothing moved"}})
    def promote(req: VersionRequest, actor: str = Depends(admin)) -> dict[str, Any]:
        if not req.version:
            raise HTTPException(422, "version: required for promote")
        return _serve(req.version, actor, "promote")

    @r.post("/rollback", responses={409: {"description": "no previous version, or not loadable; nothing moved"}})
    def rollback(req: VersionRequest | None = None, actor: str = Depends(admin)) -> dict[str, Any]:
        try:
            target = (req.version if req is not None else None) or versions.rollback_target(bundles)
        except BundleError as e:
            raise HTTPException(409, str(e)) from None
        return _serve(target, actor, "rollback")

    return r
