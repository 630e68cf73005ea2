"""The service's durable event log re-ingested by the data layer (``data=serve_events``): user keys are
pseudonyms already and must come out unchanged, the same as a preparation of the raw ids gives."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _prepare(artifacts: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from features.prepare import run

    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("prepare", overrides=[f"paths.artifacts={artifacts}", *overrides])
    return run(cfg)


def test_event_log_round_trip_keeps_user_keys(make_client, artifacts):
    client, svc = make_client()
    raw_users = ["shopper-1", "shopper-2", "12346"]
    events = [{"user_id": u, "item_id": f"SKU{i:06d}", "event": ev, "ts": f"2026-11-2{d}T10:0{i % 10}:00Z"}
              for d, u in enumerate(raw_users, start=1) for i, ev in ((3, "view"), (4, "cart"), (5, "purchase"))]
    assert client.post("/v1/events", json=events).status_code == 202
    log_path = Path(svc.cfg.store.event_log)
    text = log_path.read_text()
    assert not any(u in text for u in raw_users)  # only pseudonyms in the log

    res = _prepare(artifacts, "data=serve_events", f"data.path={log_path}", "data.splits.loo.enabled=false")
    users = pd.read_parquet(res.out_dir / "users.parquet")
    assert sorted(users["user_key"]) == sorted(svc.user_key(u) for u in raw_users)
    ev = pd.read_parquet(res.out_dir / "events.parquet")
    assert len(ev) == len(events)

    # The same events with raw ids through the generic adapter: the keys match (hashed once, either way).
    raw_csv = artifacts / "raw_events.csv"
    pd.DataFrame([{"customer": e["user_id"], "sku": e["item_id"], "when": e["ts"], "what": e["event"]}
                  for e in events]).to_csv(raw_csv, index=False)
    res2 = _prepare(artifacts, "data=events_csv", "data.name=raw_events", f"data.path={raw_csv}",
                    "data.columns.user=customer", "data.columns.item=sku", "data.columns.ts=when",
                    "data.columns.event=what", "data.splits.loo.enabled=false")
    assert sorted(pd.read_parquet(res2.out_dir / "users.parquet")["user_key"]) == sorted(users["user_key"])


def test_raw_ids_refused_when_declared_pseudonymised(artifacts):
    from features.adapters import DataConfigError

    raw_csv = artifacts / "raw.csv"
    pd.DataFrame({"user_key": ["alice", "0123456789abcdef"], "item_key": ["A", "B"],
                  "event": ["view", "view"], "ts": ["2026-11-01T00:00:00Z"] * 2}).to_csv(raw_csv, index=False)
    with pytest.raises(DataConfigError, match=r"user_key_pseudonymised=true but user key 'alice'"):
        _prepare(artifacts, "data=serve_events", f"data.path={raw_csv}", "data.splits.loo.enabled=false")
