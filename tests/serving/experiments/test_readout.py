"""The readout on logs with a known truth: figures, lift, SRM, CUPED, quarantine of bad lines."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from statsmodels.stats.proportion import proportions_ztest

from serving.experiments.readout import read_experiment
from serving.experiments.report import table, write_report
from serving.experiments.spec import parse_spec
from serving.store import LOG_COLUMNS
from tests.serving.experiments.conftest import spec_dict

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def _iso(t: dt.datetime) -> str:
    return t.isoformat()


def make_logs(tmp_path, *, n=4000, p=(0.10, 0.13), split=0.5, seed=0, spec=None):
    """Exposures + events: unit u in variant by ``split``; converts with p[variant], more likely with activity."""
    rng = np.random.default_rng(seed)
    spec = spec or parse_spec(spec_dict())
    ex, ev, att, truth = [], [LOG_COLUMNS and ",".join(LOG_COLUMNS)], [], {}
    for i in range(n):
        user = f"{i:016x}"
        variant = "popular" if rng.random() < split else "trained"
        t = T0 + dt.timedelta(seconds=int(i))
        rid = f"r{i}"
        ex.append(json.dumps({"request_id": rid, "user_key": user, "unit": user, "experiment": spec.name,
                              "variant": variant, "bundle": "b1", "items": ["A", "B", "C"], "ts": _iso(t),
                              "latency_ms": 5.0, "degraded": None, "cold_start": False}))
        activity = rng.poisson(2.0)
        for j in range(activity):  # pre-period events (CUPED covariate)
            ev.append(f"{user},X,view,{_iso(t - dt.timedelta(days=1, seconds=j))},{_iso(t)},pre{i}-{j}")
        pc = p[variant == "trained"] * 0.5 * activity  # mean 1 x p
        if rng.random() < pc:
            if i % 2:  # half attributed by request id, half by user and time window
                ev.append(f"{user},B,purchase,{_iso(t + dt.timedelta(hours=1))},{_iso(t)},e{i}")
                att.append(json.dumps({"event_id": f"e{i}", "request_id": rid, "position": 1}))
            else:
                ev.append(f"{user},B,purchase,{_iso(t + dt.timedelta(hours=2))},{_iso(t)},e{i}")
            ev.append(f"{user},B,click,{_iso(t + dt.timedelta(minutes=5))},{_iso(t)},c{i}")
            truth[user] = 1
        if rng.random() < 0.05:  # a purchase long after the window: not counted
            ev.append(f"{user},C,purchase,{_iso(t + dt.timedelta(days=5))},{_iso(t)},late{i}")
    (tmp_path / "exposures.jsonl").write_text("\n".join(ex) + "\n")
    (tmp_path / "events.csv").write_text("\n".join(ev) + "\n")
    (tmp_path / "attributions.jsonl").write_text("\n".join(att) + "\n")
    return spec, truth


def read(tmp_path, spec, **kw):
    return read_experiment(spec, exposure_log=tmp_path / "exposures.jsonl", event_log=tmp_path / "events.csv",
                           attribution_log=tmp_path / "attributions.jsonl", prices={"B": 2.5, "C": 4.0},
                           now=T0, **kw)


def test_figures_match_the_logs_and_statsmodels(tmp_path):
    spec, truth = make_logs(tmp_path)
    r = read(tmp_path, spec)
    res, units = r.result, r.units
    assert res["variants"]["popular"]["users"] + res["variants"]["trained"]["users"] == 4000
    assert sum(res["variants"][v]["conversions"] for v in ("popular", "trained")) == len(truth)
    for v in ("popular", "trained"):
        f = res["variants"][v]
        assert f["revenue"] == pytest.approx(2.5 * f["conversions"])  # the late purchases of C are outside
        assert f["clicks"] == f["conversions"] and f["exposures"] == f["users"]
    xt, nt = res["variants"]["trained"]["conversions"], res["variants"]["trained"]["users"]
    xc, nc = res["variants"]["popular"]["conversions"], res["variants"]["popular"]["users"]
    assert res["p_value"] == pytest.approx(proportions_ztest([xt, xc], [nt, nc])[1], rel=1e-9)
    assert res["lift"] == pytest.approx((xt / nt) / (xc / nc) - 1)
    assert res["ci_low"] < 0.3 < res["ci_high"]  # the true relative lift is 0.13 / 0.10 - 1
    assert res["p_value"] < 0.01 and res["srm_p_value"] > 0.001 and not res["srm_flag"]
    cuped = res["comparisons"]["trained"]["cuped"]
    assert cuped["variance_reduction"] > 0.02 and cuped["lift_ci"][1] - cuped["lift_ci"][0] < res["ci_high"] - res["ci_low"]
    assert "trained vs popular" in table(res)
    assert json.loads(json.dumps(res))  # plain JSON


def test_broken_split_is_flagged(tmp_path):
    spec, _ = make_logs(tmp_path, split=0.56, n=4000)
    res = read(tmp_path, spec).result
    assert res["srm_p_value"] < 0.001 and res["srm_flag"]


def test_early_read_warns_and_offers_an_always_valid_p_value(tmp_path):
    spec, _ = make_logs(tmp_path, n=400)
    res = read(tmp_path, spec).result
    assert res["horizon_warning"].startswith("read early")
    assert 0 <= res["comparisons"]["trained"]["always_valid_p_value"] <= 1


def test_malformed_lines_are_quarantined_and_the_readout_goes_on(tmp_path):
    spec, _ = make_logs(tmp_path, n=500)
    with open(tmp_path / "exposures.jsonl", "a") as f:
        f.write("not json\n")
        f.write(json.dumps({"request_id": "x1", "user_key": "u", "experiment": "ab", "variant": "zzz",
                            "items": [], "ts": "2030-01-01T00:00:00"}) + "\n")
        f.write(json.dumps({"request_id": "x2", "user_key": "u", "experiment": "ab", "variant": "trained",
                            "items": "A,B", "ts": "2030-01-01T00:00:00"}) + "\n")
        f.write(json.dumps({"request_id": "r1", "user_key": "u", "experiment": "ab", "variant": "trained",
                            "items": [], "ts": "2030-01-01T00:00:00"}) + "\n")  # repeated request id
        f.write(json.dumps({"request_id": "x3", "user_key": "u", "experiment": "ab", "variant": "trained",
                            "items": [], "ts": "yesterday"}) + "\n")
        f.write(json.dumps({"request_id": "o1", "user_key": "u", "experiment": "other", "variant": "q",
                            "items": [], "ts": "2030-01-01T00:00:00"}) + "\n")  # another experiment: skipped
        f.write('{"torn": ')  # a torn tail: not read
    with open(tmp_path / "events.csv", "a") as f:
        f.write("a,b,teleport,2030-01-01T00:00:00,2030-01-01T00:00:00,z1\n")
        f.write("a,b\n")
        f.write('"unclosed,quote\n')
        f.write("a,b,view,not-a-time,2030-01-01T00:00:00,z2\n")
    with open(tmp_path / "attributions.jsonl", "a") as f:
        f.write('{"event_id": "e1", "request_id": "r1", "position": -3}\n')
    r = read(tmp_path, spec)
    assert r.result["quarantined"] == {"exposures": 5, "events": 4, "attributions": 1}
    assert r.result["variants"]["popular"]["users"] + r.result["variants"]["trained"]["users"] == 500
    reasons = " ".join(q["reason"] for q in r.quarantine.rows)
    for word in ("not JSON", "variant", "items", "request_id", "ts", "event", "fields", "position"):
        assert word in reasons
    out = write_report(r, tmp_path / "report", {"test": True})
    assert (out / "report.html").read_text().count("<img") == 2
    assert len((out / "quarantine.jsonl").read_text().splitlines()) == 10
    assert json.loads((out / "manifest.json").read_text())["test"] is True


def test_crossover_units_are_left_out(tmp_path):
    spec, _ = make_logs(tmp_path, n=200)
    with open(tmp_path / "exposures.jsonl", "a") as f:
        first = json.loads((tmp_path / "exposures.jsonl").read_text().splitlines()[0])
        other = "trained" if first["variant"] == "popular" else "popular"
        f.write(json.dumps({**first, "request_id": "dup-unit", "variant": other}) + "\n")
    res = read(tmp_path, spec).result
    assert res["crossover_units"] == 1
    assert res["variants"]["popular"]["users"] + res["variants"]["trained"]["users"] == 199
