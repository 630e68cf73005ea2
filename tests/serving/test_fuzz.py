"""Property-based fuzzing of the API, in-process (no Ray).

- schemathesis over /openapi.json with every check it has (server errors, status codes, content types,
  response schemas and headers, schema-invalid data rejected, schema-valid data accepted, missing
  headers, unsupported methods, ignored auth, ...): valid and invalid requests for every operation;
- hypothesis on the three input classes that once answered 500: ids (any Unicode, lone surrogates,
  control characters, integers of any size), numbers (NaN, +-Infinity, overflowing literals) and event
  times (any year and offset). Each property states exactly which inputs are accepted, and that the
  rest get a 422 naming the field in strict JSON.

The full-size run against the Ray app (>= 1,000 requests) is scripts/check_serve_reliability.py."""
from __future__ import annotations

import collections
import datetime as dt
import json
import math

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(600)

API_KEY, ADMIN_KEY = "test-api-key", "test-admin-key"
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def strict_json(text: str):
    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def post_raw(client, path, text: str):
    """POST ``text`` as it is: it may hold NaN, Infinity, 1e309 or \\ud800 escapes."""
    return client.post(path, content=text.encode("ascii"), headers={"content-type": "application/json"})


def price_range_violated(case) -> bool:
    """The one rule JSON Schema cannot state: context.price_min <= context.price_max."""
    ctx = case.body.get("context") if isinstance(case.body, dict) else None
    lo, hi = (ctx.get("price_min"), ctx.get("price_max")) if isinstance(ctx, dict) else (None, None)
    return isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi


def test_schemathesis_all_checks(make_client):
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import CHECKS, load_all_checks

    load_all_checks()
    all_checks = CHECKS.get_all()
    assert len(all_checks) >= 10
    client, svc = make_client()
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    codes: collections.Counter = collections.Counter()
    failures = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)
            if mode is GenerationMode.POSITIVE:
                strategy = strategy.filter(lambda c: not price_range_violated(c))

            @given(case=strategy)
            @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                      derandomize=True)
            def one(case):
                key = ADMIN_KEY if case.operation.path == "/admin/reload" else API_KEY
                try:
                    r = case.call_and_validate(headers={"X-API-Key": key}, checks=all_checks)
                    codes[r.status_code] += 1
                except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - collected, reported below
                    failures.append(f"{op.label} [{mode.name}]: {str(e)[:1500]}")

            try:
                one()
            except hypothesis.errors.Unsatisfiable:  # no invalid input exists (e.g. GET /healthz)
                pass
    assert not failures, "\n\n".join(failures[:5])
    assert sum(codes.values()) >= 150
    assert codes[200] > 0 and codes[422] > 0 and codes[202] > 0  # both valid and invalid inputs were sent


# --- ids -------------------------------------------------------------------------------------------
def valid_key(v) -> bool:
    """The documented rule: a string of 1-128 characters, no control character, no unpaired surrogate,
    not only white space; or an integer within +-(2^53 - 1)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return abs(v) <= 2**53 - 1
    if not isinstance(v, str) or not 1 <= len(v) <= 128 or not v.strip():
        return False
    return not any(0xD800 <= ord(c) <= 0xDFFF or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in v)


surrogates = st.integers(0xD800, 0xDFFF).map(chr)
controls = st.sampled_from([chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]])
any_char = st.one_of(st.characters(), surrogates, controls)
keys = st.one_of(
    st.text(any_char, max_size=140),
    st.text(st.characters(), min_size=1, max_size=10),
    st.integers(),
    st.integers(-(2**53) - 2, 2**53 + 2),
    st.sampled_from(["", " ", "\u3000", "a" * 128, "a" * 129, "\ud800", "x\udfff", "Bag, \"jumbo\"", "\x00"]),
)


@FUZZ
@given(user_id=keys, item_id=keys)
def test_any_id_is_logged_or_refused_naming_it(make_client, user_id, item_id):
    client, svc = _client(make_client)
    before = svc.store.n_events
    r = post_raw(client, "/v1/events", json.dumps({"user_id": user_id, "item_id": item_id, "event": "view"}))
    body = strict_json(r.text)
    if valid_key(user_id) and valid_key(item_id):
        assert r.status_code == 202, r.text
        assert svc.store.n_events == before + 1
        assert svc.store.events_of(svc.user_key(str(user_id).strip()))[-1].item_key == str(item_id).strip()
    else:
        assert r.status_code == 422, r.text
        bad = {f for f, v in (("user_id", user_id), ("item_id", item_id)) if not valid_key(v)}
        assert {d["loc"][1] for d in body["detail"]} <= bad | {"user_id", "item_id"}
        assert bad & {d["loc"][1] for d in body["detail"]}
        assert svc.store.n_events == before


# --- numbers ---------------------------------------------------------------------------------------
json_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e309", "-1e309", "1e308", "0", "-0.0", "5e-324", "null",
                     '"5"', "true"]),
)


@FUZZ
@given(lo=st.one_of(st.just("null"), st.floats(0, 1e6).map(repr), json_numbers, st.sampled_from(['"5"', "true"])),
       hi=st.one_of(st.just("null"), st.floats(0, 1e6).map(repr), json_numbers),
       k=st.one_of(st.integers(1, 200).map(str), json_numbers))
def test_any_number_is_used_or_refused_naming_it(make_client, lo, hi, k):
    client, _ = _client(make_client)
    text = f'{{"user_id": "u", "k": {k}, "context": {{"price_min": {lo}, "price_max": {hi}}}}}'
    r = post_raw(client, "/v1/recommendations", text)
    body = strict_json(r.text)

    def value(t):
        return None if t == "null" else json.loads(t)  # NaN/Infinity parse as the Python float

    def price_ok(v):
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0)

    kv = value(k)
    k_ok = (isinstance(kv, int) and not isinstance(kv, bool)) or (isinstance(kv, float) and kv.is_integer())
    k_ok = k_ok and 1 <= kv <= 200
    lv, hv = value(lo), value(hi)
    ok = price_ok(lv) and price_ok(hv) and k_ok and (lv is None or hv is None or lv <= hv)
    assert r.status_code == (200 if ok else 422), (text, r.text)
    if not ok:
        named = {tuple(d["loc"][:3]) for d in body["detail"]}
        assert named & {("body", "k"), ("body", "context", "price_min"), ("body", "context", "price_max"),
                        ("body", "context")}, body


# --- event times -----------------------------------------------------------------------------------
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
times = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59),
                     timezones=st.one_of(st.none(), offsets))
edge_times = st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1970-01-01T00:00:00Z",
                              "1971-01-01T00:00:00+23:59", "2261-12-31T23:59:59.999999-23:59", "2262-01-01T00:00:00Z",
                              "2026-02-29T00:00:00Z", "2024-02-29T00:00:00Z", "2026-01-01T24:00:00Z", "2026-1-1T0:0Z"])


@FUZZ
@given(ts=st.one_of(times.map(lambda t: t.isoformat()), edge_times), position=st.integers(0, 4))
def test_any_event_time_is_stored_in_utc_or_refused_naming_it(make_client, ts, position):
    client, svc = _client(make_client)
    good = '{"user_id": "tz", "item_id": "SKU000001", "event": "view"}'
    batch = [good] * 5
    batch[position] = f'{{"user_id": "tz", "item_id": "SKU000002", "event": "view", "ts": "{ts}"}}'
    before = svc.store.n_events
    r = post_raw(client, "/v1/events", "[" + ", ".join(batch) + "]")
    body = strict_json(r.text)
    try:
        parsed = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    ok = (parsed is not None and parsed.tzinfo is not None and 1971 <= parsed.year <= 2261
          and "T" in ts and len(ts.split("T")[1].split("+")[0].split("-")[0].split("Z")[0]) >= 8)
    if ok:
        assert r.status_code == 202, (ts, r.text)
        assert svc.store.n_events == before + 5
        stored = [e for e in svc.store.events_of(svc.user_key("tz")) if e.item_key == "SKU000002"][-1]
        assert stored.ts == parsed.timestamp()
    else:
        assert r.status_code == 422, (ts, r.text)
        assert [d["loc"] for d in body["detail"]] == [["body", position, "ts"]]
        assert svc.store.n_events == before  # the batch is all or nothing


_CLIENTS: dict[int, tuple] = {}


def _client(make_client):
    """One app per test function (hypothesis calls the body many times with the same fixture)."""
    key = id(make_client)
    if key not in _CLIENTS:
        _CLIENTS.clear()
        _CLIENTS[key] = make_client()
    return _CLIENTS[key]
