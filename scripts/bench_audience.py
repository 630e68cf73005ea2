"""Audience-building speed: the whole pipeline (filters, consent, scoring, control group, budget,
channel, send time, offer) on synthetic profiles.

    python scripts/bench_audience.py [--users 1000000] [--device cpu|cuda|auto] [--repeats 3] [--campaign winback]
    python scripts/bench_audience.py --device cuda --users 10000000      # GPU budget: <= 60 s

Needs torch, numpy, pandas, pyarrow and PyYAML only (no Ray, no Hydra). The campaign is read from
``conf/campaign/<name>.yaml``; the campaign model has that campaign's shape (features, hidden size,
seed members) with preprocessing fitted on the synthetic data and random weights: speed does not
depend on the weights. Budgets: >= 200k users/s on the 2-core CPU, 10M users <= 60 s on one GPU.
The baseline, measured in the same process, is a plain per-user Python loop over the same rules and
model on a small sample. Reports medians; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from models.uplift import CampaignEnsemble, CampaignNet
from serving.campaigns.audience import build_audience, model_scorer
from serving.campaigns.scoring import CampaignModel, resolve_device
from serving.campaigns.spec import CampaignConfig, parse_campaign
from serving.campaigns.synthetic import synthetic_profiles

REPO = Path(__file__).resolve().parent.parent


def load_campaign(name: str) -> CampaignConfig:
    import yaml

    raw = yaml.safe_load((REPO / "conf" / "campaign" / f"{name}.yaml").read_text())
    return parse_campaign(raw)   # the job section (conf/campaign_job.yaml) holds paths only; its defaults apply


def make_model(campaign: CampaignConfig, profiles, seed: int = 0) -> CampaignModel:
    spec = campaign.model
    feats = list(spec.features)
    torch.manual_seed(seed)
    members = [CampaignNet(len(feats), spec.hidden, 1) for _ in range(spec.seeds)]
    model = CampaignModel(CampaignEnsemble(members).eval(), feats, "response")
    x = model.feature_matrix(profiles.iloc[:100_000])
    for m in members:
        m.set_preprocessing(x, [f in set(spec.log_features) for f in feats])
        m.eval()
    return model


def per_user_loop(profiles, campaign: CampaignConfig, model: CampaignModel, n: int) -> float:
    """Baseline: one user at a time in Python (same rules, same model). Returns users/s."""
    sample = profiles.iloc[:n]
    rows = sample.to_dict("records")
    e = campaign.eligibility
    t0 = time.perf_counter()
    kept = []
    for r in rows:
        if e.lifecycle is not None and r["lifecycle"] not in e.lifecycle:
            continue
        if e.segments is not None and r["named_segment"] not in e.segments:
            continue
        if e.min_recency_days is not None and not r["recency_days"] >= e.min_recency_days:
            continue
        if e.max_recency_days is not None and not r["recency_days"] <= e.max_recency_days:
            continue
        if e.min_frequency is not None and not r["frequency"] >= e.min_frequency:
            continue
        chans = [c for c in campaign.channels.order if not r[f"opted_out_{c}"]]
        if not chans:
            continue
        x = np.array([[float(r[f]) if r[f] is not None else np.nan for f in model.features]], dtype=np.float32)
        with torch.inference_mode():
            dev = next(model.ensemble.parameters()).device   # the model may sit on the GPU
            s = float(model.ensemble.score(torch.from_numpy(x).to(dev))[0])
        kept.append((s, r["user_key"], chans[0]))
    kept.sort(reverse=True)
    kept = kept[: campaign.budget.max_users or len(kept)]
    return n / (time.perf_counter() - t0)


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--campaign", default="winback")
    ap.add_argument("--batch-size", type=int, default=1_048_576)
    ap.add_argument("--baseline-users", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    campaign = load_campaign(args.campaign)
    t0 = time.perf_counter()
    profiles = synthetic_profiles(args.users, seed=0)
    gen_s = time.perf_counter() - t0
    model = make_model(campaign, profiles)
    scorer = model_scorer(model, device, args.batch_size)
    build_audience(profiles.iloc[:50_000], campaign, scorer)          # warm-up (CUDA context, kernels)
    runs = []
    for _ in range(args.repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        res = build_audience(profiles, campaign, scorer)
        if device == "cuda":
            torch.cuda.synchronize()
        runs.append(res.timings_s)
    total = statistics.median(r["total"] for r in runs)
    phases = {k: statistics.median(r[k] for r in runs) for k in ("filters", "scoring", "select_assign")}
    base = per_user_loop(profiles, campaign, model, args.baseline_users)
    rate = args.users / total
    print(f"audience bench: campaign {campaign.id}, {args.users:,} synthetic users, device {device}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} runs (median); generation {gen_s:.1f} s")
    print(f"{'phase':16s} {'seconds':>9s}")
    for k, v in phases.items():
        print(f"{k:16s} {v:9.3f}")
    print(f"{'total':16s} {total:9.3f}")
    print(f"throughput {rate:,.0f} users/s; per-user Python loop baseline {base:,.0f} users/s "
          f"(x{rate / base:.0f}); audience {len(res.audience):,} users, steps: "
          + " -> ".join(f"{s['step']}={s['users']}" for s in res.steps))
    out = {"users": args.users, "device": device, "seconds_median": total, "users_per_s": rate,
           "phases_s": phases, "baseline_loop_users_per_s": base, "speedup_vs_loop": rate / base,
           "audience": int(len(res.audience)), "budget_cpu_users_per_s": 200_000, "budget_gpu_10m_s": 60,
           "gpu_name": torch.cuda.get_device_name(0) if device == "cuda" else None,
           "torch_threads": torch.get_num_threads(), "repeats": args.repeats}
    return out


if __name__ == "__main__":
    print(json.dumps(main(), sort_keys=True))
