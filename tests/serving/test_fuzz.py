"""Property-based fuzzing of the API (schemathesis over /openapi.json, in-process): valid and invalid
requests for every operation, and no answer may be a server error. The full-size run against the
Ray app (>= 1,000 requests) is scripts/check_serve_reliability.py."""
from __future__ import annotations

import collections

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.timeout(300)


def test_no_server_errors_on_generated_requests(make_client):
    import schemathesis
    from schemathesis import GenerationMode

    client, svc = make_client()
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    codes: collections.Counter = collections.Counter()
    bad = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                      derandomize=True)
            def one(case):
                key = "test-admin-key" if case.operation.path == "/admin/reload" else "test-api-key"
                r = case.call(headers={"X-API-Key": key})
                codes[r.status_code] += 1
                if r.status_code >= 500:
                    bad.append((op.label, r.status_code, r.text[:200]))

            try:
                one()
            except hypothesis.errors.Unsatisfiable:  # no invalid input exists (e.g. GET /healthz)
                pass
    assert sum(codes.values()) >= 120
    assert not bad, bad
    assert codes[200] > 0 and codes[422] > 0 and codes[202] > 0  # both valid and invalid inputs were sent
