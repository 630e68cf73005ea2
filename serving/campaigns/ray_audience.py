"""The audience pipeline with filters and scoring in Ray Data (``job.ray_address`` / ``--ray-address``).

Steps 1-2 of ``serving.campaigns.audience`` (eligibility, consent, exclusions, scoring) run in Ray Data
``map_batches`` on the cluster; the global steps (control group, budget, channel/time/offer) then run
in this process on the scored eligible users, in the original row order, so the audience equals the
single-process one.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from serving.campaigns.audience import AudienceResult, empty_audience_warning, select_and_assign, send_date_of
from serving.campaigns.eligibility import check_profiles, eligibility_steps
from serving.campaigns.spec import CampaignConfig


def score_with_ray(profiles: pd.DataFrame, campaign: CampaignConfig, model_dir: str, address: str,
                   recent_contacts: set[str] | None = None, recent_buyers: set[str] | None = None) -> AudienceResult:
    """Steps 1-3 (filters, consent, scoring) in Ray Data ``map_batches`` on the cluster at ``address``;
    the global steps (control group, budget) then run here on the scored eligible users."""
    import ray

    check_profiles(profiles, campaign)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t0 = time.perf_counter()
    batch_size = campaign.job.batch_size

    def work(batch: pd.DataFrame) -> pd.DataFrame:
        from serving.campaigns.scoring import CampaignModel

        keep, _, channel = eligibility_steps(batch, campaign, recent_contacts, recent_buyers)
        out = batch[keep].copy()
        model = CampaignModel.load(model_dir)
        score = model.score_matrix(model.feature_matrix(out), device=campaign.job.device) if len(out) else np.zeros(0)
        out["_score"] = np.asarray(score, dtype=np.float32)
        out["_channel"] = channel[keep].astype(np.int64)
        return out

    def counts(batch: pd.DataFrame) -> pd.DataFrame:
        _, steps, _ = eligibility_steps(batch, campaign, recent_contacts, recent_buyers)
        return pd.DataFrame([{s["step"]: s["users"] for s in steps}])

    frame = profiles.copy()
    frame["_row"] = np.arange(len(frame))   # to restore the local order (same control draw as build_audience)
    for col in frame.columns:       # Arrow-friendly types for the trip through the object store
        if isinstance(frame[col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].astype("string")
    ds = ray.data.from_pandas(frame)
    rows = ds.map_batches(work, batch_format="pandas", batch_size=batch_size).to_pandas()
    per_batch = ds.map_batches(counts, batch_format="pandas", batch_size=batch_size).to_pandas()
    steps = [{"step": str(k), "users": int(per_batch[k].sum())} for k in per_batch.columns]
    rows = rows.sort_values("_row", kind="stable").drop(columns="_row").reset_index(drop=True)
    score = rows.pop("_score").to_numpy(dtype=np.float32)
    channel = rows.pop("_channel").to_numpy(dtype=np.int64)
    t1 = time.perf_counter()
    send_date = send_date_of(profiles, campaign)
    audience = select_and_assign(rows, score, channel, campaign, steps, send_date)
    warning = empty_audience_warning(campaign, steps)
    return AudienceResult(audience, steps, {"ray_filters_scoring": t1 - t0, "total": time.perf_counter() - t0},
                          str(send_date.date()), [warning] if warning else [])
