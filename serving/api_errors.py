"""Error answers that always serialise, and the answers every operation documents.

Client input echoed in an error body may hold what strict JSON cannot carry (``NaN``, ``Infinity``,
unpaired surrogates); ``SafeJSONResponse`` escapes them, so a 422 never turns into a 500.
``validation_error`` and ``http_error`` are the app's handlers for 422s and ``HTTPException``s.
"""
from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

# Tags of the tagged unions in request bodies (``serving.api.EventsBody``), dropped from error locations.
UNION_TAGS = ("event", "batch")

# Answers any operation may give (documented, so a client generated from the schema expects them).
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not UTF-8 JSON, or holds a number over 4300 digits"},
    401: {"description": "no API key"},
    403: {"description": "an API key that is not allowed here"},
    413: {"description": "the request body is over serve.http.max_body_bytes"},
    429: {"description": "over this API key's rate limit (see Retry-After)"},
    503: {"description": "not ready: the bundle is still loading"},
}


def json_safe(value: Any) -> Any:
    """``value`` with what strict JSON cannot carry escaped: non-finite floats become their name
    (``"nan"``, ``"inf"``), unpaired surrogates ``\\udXXX``. For error bodies that echo client input."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """A JSON response that always serialises (see ``json_safe``)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(json_safe(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = jsonable_encoder(exc.errors())
    for e in errors:  # drop a union's tag: ["body", 3, "ts"], not ["body", "batch", 3, "ts"]
        loc = e.get("loc")
        if isinstance(loc, list) and len(loc) > 1 and loc[0] == "body" and loc[1] in UNION_TAGS:
            del loc[1]
    return SafeJSONResponse({"detail": errors}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    headers = getattr(exc, "headers", None)
    if exc.status_code in (204, 304) or exc.status_code < 200:
        return Response(status_code=exc.status_code, headers=headers)
    return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
