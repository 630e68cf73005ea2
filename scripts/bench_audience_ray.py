"""Audience building with Ray Data vs the local path, on synthetic profiles (speed of the local
pipeline alone, with devices and a per-user baseline: scripts/bench_audience.py).

    python scripts/bench_audience_ray.py --users 1000000 3000000 [--address HOST:PORT] [--concurrency 2]

For each size: synthetic profiles are written to Parquet (row groups of 256k, ``user_key`` as plain
strings as ``features.profiles`` writes it), then the local path
(``pd.read_parquet`` + ``serving.campaigns.audience.build_audience``) and the Ray Data path
(``serving.campaigns.ray_audience.build_audience_ray``: read_parquet, scoring actors, one selection task,
write_parquet) build the winback audience with the same untrained model; the two audiences are
compared (equal after sort by user_key). Peak driver memory is the peak RSS growth of this process
during the Ray path (sampled every 20 ms). Without ``--address`` a local Ray instance is started.
Prints a table and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil


class PeakRSS:
    """Peak RSS of this process above its level at start, sampled in a thread."""

    def __init__(self, interval: float = 0.02):
        self.proc, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, threading.Event()

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, nargs="+", default=[1_000_000, 3_000_000])
    p.add_argument("--address", default=None, help="a running Ray cluster (default: start a local one)")
    p.add_argument("--concurrency", type=int, default=None, help="scoring actors (default: CPUs less one)")
    p.add_argument("--batch-size", type=int, default=262144, help="campaign.job.batch_size (rows per scoring batch)")
    p.add_argument("--dir", default=None, help="working folder (default: a temporary one)")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("SHOPREC_PSEUDO_KEY", "bench-key")
    import ray
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from models.uplift import CampaignEnsemble, CampaignNet
    from serving.campaigns.audience import build_audience, model_scorer
    from serving.campaigns.ray_audience import build_audience_ray
    from serving.campaigns.scoring import CampaignModel, save_campaign_model
    from serving.campaigns.spec import parse_campaign
    from serving.campaigns.synthetic import synthetic_profiles

    torch.set_num_threads(1)
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        raw = OmegaConf.to_container(compose("config", overrides=["campaign=winback"]).campaign, resolve=True)
    campaign = parse_campaign(raw).replace(job={"batch_size": args.batch_size, "device": "cpu"})
    torch.manual_seed(0)
    feats = list(campaign.model.features)
    model = CampaignModel(CampaignEnsemble([CampaignNet(len(feats), 8, 1) for _ in range(2)]).eval(), feats, "response")
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_audience-"))
    save_campaign_model(work / "model", model.ensemble, feats, "response")
    if args.address:
        ray.init(address=args.address, log_to_driver=False, logging_level="ERROR")
    else:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 object_store_memory=2 * 2**30)
    rows = []
    for n in args.users:
        path = work / f"profiles-{n}.parquet"
        profiles = synthetic_profiles(n, seed=1)
        # user_key as plain strings, as features.profiles writes it: a Categorical of n distinct keys would
        # store all n in every row group's dictionary (2.5 GB and ~20 s of decoding per row group at 10M)
        profiles["user_key"] = profiles["user_key"].astype("string")
        profiles.to_parquet(path, index=False, row_group_size=262_144)
        del profiles
        t0 = time.perf_counter()
        local = build_audience(pd.read_parquet(path), campaign, model_scorer(model, "cpu", 65536)).audience
        t_local = time.perf_counter() - t0
        out = work / f"audience-{n}"
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            res = build_audience_ray(path, campaign, work / "model", out, concurrency=args.concurrency)
            t_ray = time.perf_counter() - t0
        remote = pd.read_parquet(out)
        key = lambda f: f["user_key"].astype(str).sort_values().to_numpy()  # noqa: E731
        same = len(remote) == len(local) and bool((key(remote) == key(local)).all())
        rows.append({"users": n, "local_s": round(t_local, 2), "ray_s": round(t_ray, 2),
                     "local_users_per_s": round(n / t_local), "ray_users_per_s": round(n / t_ray),
                     "ray_over_local": round(t_local / t_ray, 3), "audience": int(res.n_rows),
                     "same_audience": same, "driver_peak_growth_mb": round(mem.growth_mb, 1),
                     "ray_score_s": round(res.timings_s["ray_filters_scoring"], 2),
                     "ray_select_s": round(res.timings_s["select_assign"], 2),
                     "ray_write_s": round(res.timings_s["write"], 2)})
        del local, remote
        path.unlink()
    nodes = [nd for nd in ray.nodes() if nd["Alive"]]
    cols = list(rows[0])
    print(" | ".join(f"{c:>{max(len(c), 9)}}" for c in cols))
    for r in rows:
        print(" | ".join(f"{str(r[c]):>{max(len(c), 9)}}" for c in cols))
    growth = [r["driver_peak_growth_mb"] for r in rows]
    print(json.dumps({"rows": rows, "ray_nodes": len(nodes), "concurrency": args.concurrency,
                      "batch_size": args.batch_size,
                      "driver_peak_growth_mb_first_last": [growth[0], growth[-1]],
                      "all_same_audience": all(r["same_audience"] for r in rows)}))
    ray.shutdown()


if __name__ == "__main__":
    main()
