"""The web console at ``/console``: segments, campaigns, experiments, models and health in one page.

Served by the service itself (the same FastAPI app as the API, no extra hop on the recommendation
path) behind the same keys: sign in with an admin or analyst key, kept as a signed session in a
secure, http-only, same-site cookie (``session``). Every script, style sheet and chart is served from
this package (``static/``; charts are SVG drawn by ``charts.js`` from JSON the routes serve), so it
works without the internet.

- ``routes``: the ``APIRouter`` (``console_router(service)``) included by ``serving.api.create_app``.
- ``session``: sign-in, the signed cookie.
- ``marketing``: segments and profiles, campaigns (from the jobs' artifacts).
- ``experiments``: the experiments view, start and stop.
- ``ops``: models and bundles (rollback), health from the service's own metrics.
"""
