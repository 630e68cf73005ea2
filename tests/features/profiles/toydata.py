"""A small seeded dataset in the processed schema, a writer for a processed folder, and the composed config."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.schema import EVENT_COLUMNS

CONF = Path(__file__).resolve().parents[3] / "conf"


def make_toy(n_users: int = 240, n_items: int = 60, seed: int = 0, with_prices: bool = True) -> dict[str, pd.DataFrame]:
    """A year of events for ``n_users``: purchases (with prices, orders, some returns) for most users,
    views and carts for some, and a few browse-only users. Categories ``cat0..cat5``."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    base_price = rng.uniform(1, 20, n_items)
    for u in range(n_users):
        kind = u % 4  # 0: heavy buyer, 1: light buyer, 2: browser who buys, 3: browse-only
        first = rng.uniform(0, 300)
        n_orders = {0: rng.integers(5, 15), 1: rng.integers(1, 3), 2: rng.integers(1, 3), 3: 0}[kind]
        times = np.sort(first + rng.uniform(0, 365 - first, n_orders))
        for o, t in enumerate(times):
            for _ in range(rng.integers(1, 4)):
                it = int(rng.integers(0, n_items))
                disc = 0.7 if (u % 8 == 1) else 1.0      # every 8th user buys at a discount
                rows.append((u, it, "purchase", start + pd.Timedelta(days=float(t), hours=int(rng.integers(8, 18))),
                             base_price[it] * disc if with_prices else np.nan, int(rng.integers(1, 5)), None, f"o{u}-{o}"))
        if kind in (2, 3):
            for t in first + rng.uniform(0, 365 - first, int(rng.integers(10, 40))):
                rows.append((u, int(rng.integers(0, n_items)), "view", start + pd.Timedelta(days=float(t)), np.nan, None, "s", None))
        if kind == 0 and with_prices and rng.random() < 0.3:
            it = int(rng.integers(0, n_items))
            rows.append((u, it, "return", start + pd.Timedelta(days=364), base_price[it], 1, None, f"c{u}"))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts", "price", "quantity", "session_id", "order_id"])
    ev["ts"] = ev["ts"].astype("datetime64[us, UTC]")
    ev["quantity"] = ev["quantity"].astype("Int64")
    ev["src_row"] = np.arange(len(ev), dtype="int64")
    for col in EVENT_COLUMNS:        # columns the toy does not fill (e.g. rating) stay null
        if col not in ev.columns:
            ev[col] = np.nan
    ev = ev.sort_values(["user_id", "ts", "src_row"]).reset_index(drop=True)[list(EVENT_COLUMNS)]
    items = pd.DataFrame({"item_id": np.arange(n_items, dtype="int64"), "item_key": [f"I{i}" for i in range(n_items)],
                          "category": [f"cat{i % 6}" for i in range(n_items)],
                          "attributes": [[i % 4] for i in range(n_items)]})
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype="int64"), "user_key": [f"{u:016x}" for u in range(n_users)],
                          "country": ["United Kingdom" if u % 3 else "France" for u in range(n_users)]})
    return {"events": ev, "items": items, "users": users}


def compose_cfg(overrides: list[str] | None = None):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=overrides or [])



def write_processed(root: Path, name: str, data: dict[str, pd.DataFrame], time_kind: str = "timestamp") -> Path:
    """Write ``data`` as a processed dataset ``<root>/processed/<name>/`` (the files profiles read)."""
    from features.artifacts import write_json

    folder = root / "processed" / name
    folder.mkdir(parents=True, exist_ok=True)
    data["events"].to_parquet(folder / "events.parquet", index=False)
    data["items"].to_parquet(folder / "items.parquet", index=False)
    data["users"].to_parquet(folder / "users.parquet", index=False)
    write_json(folder / "manifest.json", {"time_kind": time_kind, "counts": {"events": len(data["events"])}})
    return folder
