"""The fast paths of the HTTP layer: the hand-serialised recommendation body keeps the documented
schema, and the pure-ASGI metrics middleware still turns an unhandled error into a counted 500."""
from __future__ import annotations

import math

from serving.recommender import RecItem, RecResult


def test_recommendation_body_matches_the_documented_model(make_client):
    from serving.api import RecommendationResponse

    c, _ = make_client()
    for body in ({"user_id": "user-3", "k": 7}, {"user_id": "brand-new", "k": 4, "context": {"price_max": 20}}):
        r = c.post("/v1/recommendations", json=body)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        parsed = RecommendationResponse.model_validate_json(r.content)  # extra fields or wrong types would fail
        assert len(parsed.items) == body["k"] and parsed.bundle == "b1"
    schema = c.get("/openapi.json").json()["paths"]["/v1/recommendations"]["post"]["responses"]["200"]
    assert schema["content"]["application/json"]["schema"]["$ref"].endswith("/RecommendationResponse")


def test_non_finite_scores_become_zero():
    from serving.api import recommendation_json

    res = RecResult([RecItem("A", math.nan, "popular", "popular"), RecItem("B", 0.5, "similar", "similar to C")],
                    False, None, {}, "b1")
    assert recommendation_json(res).body == (b'{"items":[{"item_id":"A","score":0.0,"source":"popular","reason":"popular"},'
                                             b'{"item_id":"B","score":0.5,"source":"similar","reason":"similar to C"}],'
                                             b'"cold_start":false,"degraded":null,"bundle":"b1"}')


def test_unhandled_error_is_a_counted_500(make_client, monkeypatch):
    from fastapi.testclient import TestClient

    from serving.api import create_app

    _, svc = make_client()
    monkeypatch.setattr(svc.store, "append", lambda events: (_ for _ in ()).throw(OSError("disk gone")))
    c = TestClient(create_app(svc), headers={"X-API-Key": "test-api-key"}, raise_server_exceptions=False)
    r = c.post("/v1/events", json={"user_id": "u", "item_id": "SKU000001", "event": "view"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    assert 'shoprec_errors_total{route="/v1/events",status="500"} 1.0' in c.get("/metrics").text
