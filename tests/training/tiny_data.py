"""A tiny processed dataset in the ``features.schema`` layout, with a learnable sequential pattern.

Users walk along item "chains" (item i is usually followed by i + 1 within a block of 10), so a sequence
model can learn next-item structure that popularity cannot.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def write_tiny_processed(root: Path, name: str = "tiny", n_users: int = 300, n_items: int = 60,
                         seed: int = 0, with_attributes: bool = True, with_prices: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        length = int(rng.integers(4, 12))
        item = int(rng.integers(0, n_items))
        for t in range(length):
            rows.append((u, item, t))
            item = (item + 1) % n_items if rng.random() < 0.8 else int(rng.integers(0, n_items))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "pos"])
    ev["event"] = "purchase"
    ev["ts"] = pd.to_datetime(ev["pos"] + ev["user_id"] * 0, unit="s", utc=True)
    ev["price"] = (ev["item_id"] % 7 + 1) * 2.5 if with_prices else np.nan
    ev["quantity"] = 1
    ev["session_id"] = None
    ev["order_id"] = None
    ev["src_row"] = np.arange(len(ev), dtype=np.int64)
    ev = ev.drop(columns="pos")[["user_id", "item_id", "event", "ts", "price", "quantity", "session_id", "order_id", "src_row"]]
    out = Path(root) / name
    (out / "splits" / "loo").mkdir(parents=True, exist_ok=True)
    ev.to_parquet(out / "events.parquet", index=False)
    # leave-one-out: last = test, second-to-last = valid
    rank_from_end = ev.groupby("user_id").cumcount(ascending=False)
    ev[rank_from_end >= 2].to_parquet(out / "splits/loo/train.parquet", index=False)
    ev[rank_from_end == 1].to_parquet(out / "splits/loo/valid.parquet", index=False)
    ev[rank_from_end == 0].to_parquet(out / "splits/loo/test.parquet", index=False)
    items = pd.DataFrame({
        "item_id": np.arange(n_items, dtype=np.int64),
        "item_key": [f"SKU{i:04d}" for i in range(n_items)],
        "category": [f"cat{i // 10}" for i in range(n_items)],
        "attributes": [[i // 10, 10 + i % 3] if with_attributes else [] for i in range(n_items)],
        "price_mean": [(i % 7 + 1) * 2.5 if with_prices else None for i in range(n_items)],
        "price_median": [(i % 7 + 1) * 2.5 if with_prices else None for i in range(n_items)],
        "n_events": np.bincount(ev["item_id"], minlength=n_items).astype(np.int64),
    })
    items.to_parquet(out / "items.parquet", index=False)
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype=np.int64),
                          "user_key": [f"{u:016x}" for u in range(n_users)]})
    users.to_parquet(out / "users.parquet", index=False)
    (out / "manifest.json").write_text(json.dumps({"name": name, "counts": {"events": len(ev), "users": n_users,
                                                                           "items": n_items}, "time_kind": "order"}))
    return out
