"""Audience-building speed of an uplift campaign (``model.kind: uplift``): filters, scoring with a
past campaign's uplift model, economics (effect, P(convert | treated), offer level by expected
profit), sleeping dogs, control group, budget, channel, send time, on synthetic profiles.

    python scripts/bench_campaign_audience.py [--users 1000000] [--repeats 3] [--past 20000]

The uplift model is trained with the shipped ``conf/uplift/table.yaml`` (selection on its training
rows) on a made-up past campaign of ``--past`` synthetic users with a planted effect; the campaign is
``conf/campaign/winback.yaml`` with ``model.kind: uplift`` and offer levels [0, 0.05, 0.1, 0.15].
Target: >= 200k users/s on the 2-core CPU. Prints a table; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from hydra import compose, initialize_config_dir

from serving.campaigns.audience import build_audience, model_scorer
from serving.campaigns.scoring import CampaignModel
from serving.campaigns.spec import parse_campaign
from serving.campaigns.synthetic import synthetic_profiles

REPO = Path(__file__).resolve().parent.parent
FEATURES = ["recency_days", "frequency", "monetary", "price_sensitivity", "named_segment", "lifecycle"]


def train_past(tmp: Path, n: int) -> Path:
    from training import uplift

    p = synthetic_profiles(n, seed=7)
    rng = np.random.default_rng(7)
    t = rng.integers(0, 2, n)
    effect = np.where(p["recency_days"] < 60, 0.2, np.where(p["named_segment"].astype(str) == "casual_browser", -0.1, 0.02))
    table = p[FEATURES].copy()
    for c in ("named_segment", "lifecycle"):
        table[c] = table[c].astype(str)
    table["treated"], table["bought"] = t, (rng.random(n) < 0.2 + t * effect).astype(int)
    table.to_parquet(tmp / "past.parquet")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("uplift/table", overrides=[f"data.path={tmp / 'past.parquet'}", "data.treatment=treated",
                                                 "data.outcome=bought", f"out_dir={tmp / 'run'}", f"paths.artifacts={tmp}"])
    return Path(uplift.run(cfg)["run_dir"])


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--past", type=int, default=20_000)
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = train_past(Path(tmp), a.past)
        train_s = time.perf_counter() - t0
        raw = yaml.safe_load((REPO / "conf" / "campaign" / "winback.yaml").read_text())
        raw["model"].update(kind="uplift", features=FEATURES, log_features=[])
        raw["offer"].update(tiers=[], default_discount=0.0, levels=[0.0, 0.05, 0.1, 0.15])
        raw["budget"].update(max_users=50_000)
        raw["job"] = {"model_dir": str(run)}
        campaign = parse_campaign(raw)
        model = CampaignModel.load(run)
        profiles = synthetic_profiles(a.users, seed=0)
        times, res = [], None
        for _ in range(a.repeats):
            t1 = time.perf_counter()
            res = build_audience(profiles, campaign, model_scorer(model, "cpu"), model=model)
            times.append(time.perf_counter() - t1)
    med = statistics.median(times)
    u = res.audience.attrs["uplift"]
    out = {"users": a.users, "chosen_model": model.uplift.chosen, "median_seconds": med,
           "users_per_second": a.users / med, "target_users_per_second": 200_000,
           "timings_s": res.timings_s, "treated": res.counts["treatment"], "control": res.counts["control"],
           "sleeping_dogs": u["sleeping_dogs"], "train_seconds": train_s, "repeats": a.repeats}
    print(f"{'users':>10s} {'model':>14s} {'median s':>9s} {'users/s':>10s} {'treated':>8s} {'control':>8s} {'dogs':>8s}")
    print(f"{a.users:10d} {out['chosen_model']:>14s} {med:9.2f} {out['users_per_second']:10.0f} {out['treated']:8d} "
          f"{out['control']:8d} {out['sleeping_dogs']:8d}")
    print("stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res.timings_s.items()))
    return out


if __name__ == "__main__":
    print(json.dumps(main(), sort_keys=True, default=float))
