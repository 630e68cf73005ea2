"""``features.analytics`` end to end: Taobao (counts reconciled with the raw CSV), the service's own
logs (prepared ``serve_events`` + exposure and attribution logs), and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from features.analytics.job import run
from features.artifacts import file_sha256, write_json
from features.processed import ProcessedDataError
from tests.features.conftest import CONF


def analytics_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("analytics", overrides=list(overrides))


def _fake_profiles(folder, processed) -> None:
    """A profiles folder as ``features.profile`` writes it, built from ``processed``'s events: every
    user but user 0 in segment ``even`` or ``odd``."""
    folder.mkdir()
    users = pd.read_parquet(processed / "users.parquet", columns=["user_id"])
    users = users[users["user_id"] != 0]
    users.assign(named_segment=users["user_id"].map(lambda u: "even" if u % 2 == 0 else "odd")).to_parquet(
        folder / "profiles.parquet")
    write_json(folder / "manifest.json", {"inputs": {"events.parquet": file_sha256(processed / "events.parquet")}})


def test_taobao_report_reconciles_with_the_raw_file(prepare_real, prepared_root, data_root, tmp_path):
    res = prepare_real("taobao")
    _fake_profiles(tmp_path / "profiles", res.out_dir)
    out = tmp_path / "report"
    cfg = analytics_cfg("data=taobao", f"paths.artifacts={prepared_root}", f"paths.data_root={data_root}",
                        f"analytics.out_dir={out}", f"analytics.profiles_dir={tmp_path / 'profiles'}",
                        "analytics.report.dpi=50")
    result = run(cfg)
    s = json.loads((out / "summary.json").read_text())
    assert s == {**result.summary, "seconds": s["seconds"], "cpu_seconds": s["cpu_seconds"]}

    # The raw file, read independently: complete lines only (the truncated last one is quarantined).
    raw = pd.read_csv(data_root / "taobao-userbehavior" / "UserBehavior_head.csv", header=None,
                      names=["user", "item", "category", "behavior", "ts"]).dropna(subset=["ts"])
    step = raw["behavior"].map({"pv": "view", "cart": "cart", "buy": "purchase", "fav": "other:fav"})
    assert s["reconciliation"]["events_per_step"] == step.value_counts().to_dict()
    assert s["reconciliation"]["sum_of_steps"] == len(raw) == s["n_events"]
    day = pd.to_datetime(raw["ts"].astype("int64"), unit="s", utc=True).dt.strftime("%Y-%m-%d")
    raw_by_day = pd.crosstab(day, step)
    by_day = pd.read_csv(out / "funnel_by_day.csv", index_col="day")
    for st in ("view", "cart", "purchase", "other:fav"):
        assert by_day[f"events_{st}"].to_dict() == raw_by_day[st].to_dict(), st

    fu = s["funnel_users"]
    assert fu["viewed"] >= fu["carted_after_view"] >= fu["purchased_after_cart"] > 0
    assert 0 < s["cart_abandonment"]["abandonment_rate_pairs"] < 1 and 0 < s["repeat_purchase"]["repeat_purchase_rate"] < 1
    assert s["view_to_purchase_hours"]["n"] == s["funnel_pairs"]["purchased_after_view"] > 0
    assert s["top_paths_before_purchase"][0]["path"].endswith("> purchase")
    seg = pd.read_csv(out / "funnel_by_segment.csv").set_index("segment")
    assert set(seg.index) == {"even", "odd", "(no profile)"} and seg["units"].sum() == fu["units"]
    assert seg["events_view"].sum() == s["reconciliation"]["events_per_step"]["view"]

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "Funnel by segment" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    manifest = json.loads((out / "manifest.json").read_text())
    assert all((out / f).exists() for f in manifest["files"]) and "report.html" in manifest["files"]
    assert manifest["inputs"]["events.parquet"] == file_sha256(res.out_dir / "events.parquet")
    assert not list(out.parent.glob(".report.tmp-*"))


def test_service_logs_give_the_live_funnel(tmp_path):
    from features.prepare import run as prepare
    from tests.features.conftest import make_cfg

    t = "2024-03-01T10:00:0{}+00:00"
    rows = [("00000000000000a1", "A", "click", 1, "e1"), ("00000000000000a1", "A", "cart", 2, "e2"),
            ("00000000000000a1", "A", "purchase", 3, "e3"), ("00000000000000a2", "B", "view", 4, "e4"),
            ("00000000000000a2", "B", "click", 5, "e5")]
    (tmp_path / "events.csv").write_text("user_key,item_key,event,ts,received_at,event_id\n" + "".join(
        f"{u},{i},{e},{t.format(k)},{t.format(k)},{eid}\n" for u, i, e, k, eid in rows))
    logs = tmp_path / "experiments"
    logs.mkdir()
    (logs / "exposures.jsonl").write_text("".join(json.dumps(
        {"request_id": r, "user_key": u, "unit": u, "experiment": "home", "variant": v, "bundle": "b",
         "items": ["A", "B"], "ts": t.format(0)}) + "\n" for r, u, v in (("r1", "00000000000000a1", "control"),
                                                                        ("r2", "00000000000000a2", "treatment"))))
    (logs / "attributions.jsonl").write_text("".join(json.dumps({"event_id": e, "request_id": r, "position": p}) + "\n"
                                                     for e, r, p in (("e1", "r1", 0), ("e3", "r1", 0), ("e5", "r2", 1))))
    art = tmp_path / "artifacts"
    prepare(make_cfg("data=serve_events", f"paths.artifacts={art}", f"data.path={tmp_path / 'events.csv'}"))
    out = tmp_path / "report"
    s = run(analytics_cfg("data=serve_events", f"paths.artifacts={art}", f"analytics.out_dir={out}",
                          f"analytics.live.event_log={tmp_path / 'events.csv'}", f"analytics.live.log_dir={logs}")).summary
    assert s["reconciliation"]["events_per_step"] == {"view": 3, "cart": 1, "purchase": 1}
    assert s["funnel_users"]["purchased_after_cart"] == 1 and s["cart_abandonment"]["abandonment_rate_pairs"] == 0.0
    live = s["live"]["funnel"]
    assert (live["responses"], live["impressions"], live["clicked_responses"], live["purchased_after_click_responses"]) == (2, 4, 2, 1)
    assert s["live"]["events_by_bucket"] == {"attributed_click": 2, "attributed_purchase": 1, "attributed_other": 0,
                                             "attributed_unknown_response": 0, "unattributed": 2, "malformed": 0}
    assert "Live funnel of recommendations" in (out / "report.html").read_text()
    assert "no segments" in s["notes"][0] and len(s["notes"]) == 1

    with open(tmp_path / "events.csv", "a") as f:   # the log grows after the preparation: said, not hidden
        f.write(f"00000000000000a2,B,purchase,{t.format(9)},{t.format(9)},e9\n")
    s = run(analytics_cfg("data=serve_events", f"paths.artifacts={art}", f"analytics.out_dir={out}",
                          f"data.path={tmp_path / 'events.csv'}", f"analytics.live.event_log={tmp_path / 'events.csv'}",
                          f"analytics.live.log_dir={logs}", "analytics.report.dpi=40")).summary
    assert "has 6 lines now but the prepared data was made from 5" in s["notes"][-1]


def test_missing_prepared_data_names_the_command(tmp_path, repo_root):
    cfg = analytics_cfg("data=taobao", f"paths.artifacts={tmp_path}")
    with pytest.raises(ProcessedDataError, match="python -m features.prepare data=taobao"):
        run(cfg)
    proc = subprocess.run([sys.executable, "-m", "features.analytics", "data=taobao", f"paths.artifacts={tmp_path}"],
                          cwd=repo_root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 2
    assert "features.analytics: error:" in proc.stderr and "python -m features.prepare data=taobao" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "reports").exists()


def test_bad_step_config_is_named(prepare_real, prepared_root, data_root, tmp_path):
    prepare_real("taobao")
    cfg = analytics_cfg("data=taobao", f"paths.artifacts={prepared_root}", f"analytics.out_dir={tmp_path / 'r'}",
                        "analytics.steps.cart=[cart,view]")
    with pytest.raises(ValueError, match="event type 'view' is in two steps"):
        run(cfg)
    assert not (tmp_path / "r").exists()
