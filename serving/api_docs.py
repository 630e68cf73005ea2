"""``/docs`` without the internet: Swagger UI's files come from the installed ``swagger-ui-py``
package (FastAPI's default page loads them from a CDN; ReDoc, which does too, is off)."""
from __future__ import annotations

import pathlib

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                 "favicon-32x32.png": "image/png"}


def swagger_dir() -> pathlib.Path:
    import swagger_ui

    return pathlib.Path(swagger_ui.__file__).parent / "static"


def add_offline_docs(app: FastAPI) -> None:
    """``GET /docs`` (Swagger UI over ``app.openapi_url``) and ``GET /docs/static/<file>``; create the
    app with ``docs_url=None, redoc_url=None``."""

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=root + app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url=root + "/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url=root + "/docs/static/swagger-ui.css",
                                   swagger_favicon_url=root + "/docs/static/favicon-32x32.png")

    @app.get("/docs/static/{name}", include_in_schema=False)
    async def docs_static(name: str) -> Response:
        if name not in SWAGGER_FILES:
            raise HTTPException(404, "not found")
        return FileResponse(swagger_dir() / name, media_type=SWAGGER_FILES[name])
