"""Scale check of the profile builder: ``python scripts/bench_profiles.py`` (``+users=N`` style overrides
via ``profile.bench_scale.*``). Generates a seeded synthetic purchase + browsing log in the processed
schema (vectorised), builds the profiles in memory (no files) and prints the seconds per stage, then
one JSON object as the last line. The synthetic data only exercises the code paths and sizes; the
numbers are about speed, not about what the profiles say.
"""
from __future__ import annotations

import json
import os
import resource
import time

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from features.profiles.build import build_profiles


def synthetic_log(n_users: int, events_per_user: float, n_items: int, seed: int) -> dict[str, pd.DataFrame]:
    """A year of events: Poisson counts per user, 30 % purchases with prices and orders, the rest views."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(events_per_user, n_users) + 1
    user = np.repeat(np.arange(n_users, dtype="int64"), counts)
    n = len(user)
    item = rng.zipf(1.3, n) % n_items
    is_buy = rng.random(n) < 0.3
    start = pd.Timestamp("2024-01-01", tz="UTC").value // 1000
    ts = start + rng.integers(0, 365 * 86400 * 10**6, n)
    base_price = rng.uniform(1, 30, n_items)
    ev = pd.DataFrame({
        "user_id": user, "item_id": item.astype("int64"),
        "event": np.where(is_buy, "purchase", "view"),
        "ts": pd.to_datetime(ts, unit="us", utc=True),
        "price": np.where(is_buy, base_price[item] * rng.choice([0.8, 1.0, 1.0, 1.0], n), np.nan),
        "quantity": pd.array(np.where(is_buy, rng.integers(1, 6, n), 0), dtype="Int64"),
        "session_id": None,
        "order_id": pd.array(np.where(is_buy, (user * 1000 + (ts // (86400 * 10**6)) % 1000).astype(str), None), dtype="string"),
        "src_row": np.arange(n, dtype="int64"),
    })
    items = pd.DataFrame({"item_id": np.arange(n_items, dtype="int64"), "item_key": np.arange(n_items).astype(str),
                          "category": [f"cat{i % 40}" for i in range(n_items)], "attributes": [[] for _ in range(n_items)]})
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype="int64"),
                          "user_key": [f"{u:016x}" for u in range(n_users)], "country": "GB"})
    return {"events": ev, "items": items, "users": users}


def run(cfg: DictConfig) -> dict:
    scale = cfg.profile.bench_scale
    t0 = time.perf_counter()
    data = synthetic_log(int(scale.users), float(scale.events_per_user), int(scale["items"]), int(cfg.seed))
    gen_s = time.perf_counter() - t0
    pcfg = OmegaConf.to_container(cfg.profile, resolve=True)
    t1, c1 = time.perf_counter(), time.process_time()
    tables = build_profiles(data["events"], data["items"], data["users"], pcfg, int(cfg.seed))
    total, cpu = time.perf_counter() - t1, time.process_time() - c1
    return {"users": len(tables.profiles), "events": len(data["events"]), "generate_s": round(gen_s, 2),
            "profile_s": round(total, 2), "profile_cpu_s": round(cpu, 2),
            "users_per_s": round(len(tables.profiles) / total, 1), "users_per_cpu_s": round(len(tables.profiles) / cpu, 1),
            "seconds_by_stage": tables.info["seconds_by_stage"], "cpu_seconds_by_stage": tables.info["cpu_seconds_by_stage"],
            "k": tables.info["segments"]["k"], "load_avg_1min": round(os.getloadavg()[0], 1),
            "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    print(f"{result['users']:,} users, {result['events']:,} events: profiles in {result['profile_s']} s wall, "
          f"{result['profile_cpu_s']} s CPU ({result['users_per_cpu_s']:,.0f} users per CPU second), "
          f"peak RSS {result['max_rss_gib']} GiB, load average {result['load_avg_1min']}")
    print(f"{'stage':26} {'wall s':>8} {'CPU s':>8}")
    for stage, s in result["seconds_by_stage"].items():
        print(f"{stage:26} {s:8.2f} {result['cpu_seconds_by_stage'][stage]:8.2f}")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
