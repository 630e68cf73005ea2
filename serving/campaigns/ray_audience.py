"""Campaign audiences in Ray Data, as the engine intends (``campaign.job.ray_address`` / ``--ray-address``).

``build_audience_ray(profiles_path, campaign, model_dir, out_dir)`` on the cluster this process is
connected to (or ``address``):

1. ``ray.data.read_parquet`` of the profiles: the workers read the file(s); no profile row passes
   through the driver.
2. ``map_batches(EligibleScorer, concurrency=...)``: a callable class, so each actor loads the campaign
   model once (``serving.campaigns.scoring.CampaignModel``, scored through ``audience.model_scorer``:
   the local path's own code). Per batch it applies the eligibility rules and exclusions once
   (``eligibility_steps``), scores the eligible users and keeps only what the global steps read, plus
   one summary row with the batch's step counts and latest snapshot date. Batches come as Arrow tables
   (zero-copy) and become pandas in the actor with ``user_key`` as plain strings (``arrow_to_pandas``).
3. The global steps (minimum score, control group, budget, channel / send time / offer) need every
   eligible user at once, in file order (the control group is a seeded draw over them): one Ray task
   on the cluster runs ``audience.select_and_assign`` on them, so the audience equals the local one.
   The driver only passes references; its memory does not grow with the number of users.
4. ``write_parquet`` of the audience into ``out_dir`` (a folder of Parquet files).

Order is preserved end to end (``DataContext.execution_options.preserve_order``). ``out_dir`` and the
profiles must be on storage every node reads (a shared volume or an object store URI).
``score_with_ray`` is the in-memory variant for a frame already in the driver (``from_pandas``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.campaigns.audience import (AudienceResult, empty_audience_warning, model_scorer, select_and_assign,
                                        send_date_of)
from serving.campaigns.eligibility import check_profiles, eligibility_steps
from serving.campaigns.spec import CampaignConfig

SUMMARY, STEPS, SNAPSHOT, SCORE, CHANNEL = "_summary", "_steps", "_snapshot", "_score", "_channel"


@dataclass
class RayAudienceResult:
    out_dir: Path | None            # the audience's Parquet folder (None for score_with_ray)
    n_rows: int
    steps: list[dict]
    timings_s: dict[str, float] = field(default_factory=dict)
    send_date: str = ""
    warnings: list[str] = field(default_factory=list)


def kept_columns(campaign: CampaignConfig, columns: list[str]) -> list[str]:
    """The profile columns ``select_and_assign`` reads (the rest stays on the workers)."""
    keep = ["user_key", "active_hour", "price_sensitivity"]
    if "timezone" in columns:
        keep.append("timezone")
    strat = campaign.control.stratify_by
    if strat != "none" and strat not in keep:
        keep.append(strat)
    return keep


def arrow_to_pandas(table: Any) -> pd.DataFrame:
    """A batch of profiles (an Arrow table) as pandas, with ``user_key`` as plain strings.

    Profiles written from pandas keep ``user_key`` as a dictionary column; Arrow -> pandas would build a
    Categorical of its values, one per row, which took ~50x longer than the rest of the batch's work
    (1.3 s for 262k rows). The other dictionary columns (a few values each) stay Categorical, and every
    column gets the dtype Ray Data's own pandas batches have (``BlockAccessor.to_pandas``)."""
    import pyarrow as pa
    from ray.data.block import BlockAccessor

    i = table.schema.get_field_index("user_key")
    if i >= 0 and pa.types.is_dictionary(table.schema.field(i).type):
        table = table.set_column(i, "user_key", table.column(i).cast(table.schema.field(i).type.value_type))
    return BlockAccessor.for_block(table).to_pandas()


class EligibleScorer:
    """``map_batches`` callable: eligibility once, then scores, for one batch of profiles. The model is
    loaded once per actor (in ``__init__``), not once per batch."""

    def __init__(self, campaign: CampaignConfig, model_dir: str, columns: list[str],
                 recent_contacts: set[str] | None = None, recent_buyers: set[str] | None = None):
        import torch

        from serving.campaigns.scoring import CampaignModel, resolve_device

        torch.set_num_threads(1)   # one core per actor: Ray schedules the actors over the cores
        self.campaign, self.columns = campaign, columns
        self.contacts, self.buyers = recent_contacts, recent_buyers
        model = CampaignModel.load(model_dir)
        self.score = model_scorer(model, resolve_device(campaign.job.device), campaign.job.batch_size)

    def __call__(self, batch: Any) -> pd.DataFrame:
        """``batch``: profiles as a pandas frame or an Arrow table."""
        if not isinstance(batch, pd.DataFrame):
            batch = arrow_to_pandas(batch)
        keep, steps, channel = eligibility_steps(batch, self.campaign, self.contacts, self.buyers)
        rows = batch.loc[keep, self.columns].copy()
        for col in rows.columns:   # Arrow-friendly: categories of one batch are not those of the next
            if isinstance(rows[col].dtype, pd.CategoricalDtype):
                rows[col] = rows[col].astype("string")
        rows[SCORE] = (np.asarray(self.score(batch[keep]), dtype=np.float32) if keep.any()
                       else np.zeros(0, dtype=np.float32))
        rows[CHANNEL] = channel[keep].astype(np.int64)
        rows[SUMMARY], rows[STEPS], rows[SNAPSHOT] = False, None, None
        snap = pd.to_datetime(batch["snapshot_date"], utc=True).max() if len(batch) else None
        summary = pd.DataFrame({SUMMARY: [True], STEPS: [json.dumps(steps)],
                                SNAPSHOT: [None if snap is None or pd.isna(snap) else snap.isoformat()]})
        out = pd.concat([rows, summary], ignore_index=True)
        out[STEPS] = out[STEPS].astype("string")
        out[SNAPSHOT] = out[SNAPSHOT].astype("string")
        return out


def combine_steps(summaries: list[list[dict]]) -> list[dict]:
    """Per-batch step counts summed (every batch lists the same steps in the same order)."""
    if not summaries:
        return []
    names = [s["step"] for s in summaries[0]]
    totals = np.zeros(len(names), dtype=np.int64)
    for steps in summaries:
        if [s["step"] for s in steps] != names:
            raise RuntimeError(f"batches disagree on the eligibility steps: {names} vs {[s['step'] for s in steps]}")
        totals += [s["users"] for s in steps]
    return [{"step": n, "users": int(u)} for n, u in zip(names, totals)]


def _select(campaign: CampaignConfig, block_refs: list) -> tuple[dict, pd.DataFrame]:
    """The global steps on every eligible user, in file order: (summary, audience)."""
    import ray

    frames = ray.get(block_refs)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({SUMMARY: []})
    del frames
    is_summary = frame[SUMMARY].astype(bool).to_numpy()
    summaries = frame.loc[is_summary]
    steps = combine_steps([json.loads(s) for s in summaries[STEPS]])
    snaps = pd.to_datetime(summaries[SNAPSHOT].dropna(), utc=True)
    rows = frame.loc[~is_summary].drop(columns=[SUMMARY, STEPS, SNAPSHOT]).reset_index(drop=True)
    del frame
    score = rows.pop(SCORE).to_numpy(dtype=np.float32)
    channel = rows.pop(CHANNEL).to_numpy(dtype=np.int64)
    dates = pd.DataFrame({"snapshot_date": snaps}) if len(snaps) else pd.DataFrame({"snapshot_date": []})
    send_date = send_date_of(dates, campaign)
    audience = select_and_assign(rows, score, channel, campaign, steps, send_date)
    return {"steps": steps, "send_date": str(send_date.date()), "n_rows": int(len(audience))}, audience


def _connect(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address or "auto", include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def _scored(ds, campaign: CampaignConfig, model_dir: str, columns: list[str], recent_contacts, recent_buyers,
            concurrency: int | tuple[int, int] | None):
    import ray

    check_profiles(pd.DataFrame(columns=columns), campaign)   # a missing column fails before any work
    if concurrency is None:
        # leave a core to the read tasks: actors holding every CPU would starve them
        concurrency = (1, max(1, int(ray.cluster_resources().get("CPU", 1)) - 1))
    return ds.map_batches(
        # Arrow batches, zero-copy; up to one row group of 262144 rows (campaign.job.batch_size's default)
        EligibleScorer, batch_format="pyarrow", zero_copy_batch=True, batch_size=min(int(campaign.job.batch_size), 262144),
        concurrency=concurrency, num_cpus=1,
        fn_constructor_kwargs={"campaign": campaign, "model_dir": str(model_dir),
                               "columns": kept_columns(campaign, columns),
                               "recent_contacts": recent_contacts, "recent_buyers": recent_buyers})


def _run(ds, campaign: CampaignConfig, model_dir: str, columns: list[str], recent_contacts, recent_buyers,
         concurrency) -> tuple[Any, dict, dict]:
    """(audience object ref, summary, timings): steps 2-3 on the cluster."""
    import ray

    t0 = time.perf_counter()
    refs = _scored(ds, campaign, model_dir, columns, recent_contacts, recent_buyers, concurrency).to_pandas_refs()
    t1 = time.perf_counter()
    select = ray.remote(num_cpus=1, num_returns=2)(_select)
    summary_ref, audience_ref = select.remote(campaign, list(refs))
    summary = ray.get(summary_ref)
    del refs
    return audience_ref, summary, {"ray_filters_scoring": t1 - t0, "select_assign": time.perf_counter() - t1}


def _preserve_order() -> None:
    from ray.data import DataContext

    DataContext.get_current().execution_options.preserve_order = True


def build_audience_ray(profiles_path: str | Path | list[str], campaign: CampaignConfig, model_dir: str | Path,
                       out_dir: str | Path, *, address: str | None = None, recent_contacts: set[str] | None = None,
                       recent_buyers: set[str] | None = None,
                       concurrency: int | tuple[int, int] | None = None) -> RayAudienceResult:
    """Read the profiles Parquet file(s), build the audience on the cluster, ``write_parquet`` it to
    ``out_dir``. ``concurrency``: scoring actors of one CPU each (default: 1 up to the cluster's CPUs less one,
    which the read tasks need)."""
    import ray

    _connect(address)
    _preserve_order()
    t0 = time.perf_counter()
    paths = [str(p) for p in profiles_path] if isinstance(profiles_path, list) else str(profiles_path)
    ds = ray.data.read_parquet(paths)
    columns = list(ds.schema().names)
    audience_ref, summary, timings = _run(ds, campaign, str(model_dir), columns, recent_contacts, recent_buyers,
                                          concurrency)
    t1 = time.perf_counter()
    ray.data.from_pandas_refs([audience_ref]).write_parquet(str(out_dir))
    timings["write"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    warning = empty_audience_warning(campaign, summary["steps"])
    return RayAudienceResult(Path(out_dir), summary["n_rows"], summary["steps"], timings, summary["send_date"],
                             [warning] if warning else [])


def score_with_ray(profiles: pd.DataFrame | str | Path, campaign: CampaignConfig, model_dir: str, address: str,
                   recent_contacts: set[str] | None = None, recent_buyers: set[str] | None = None) -> AudienceResult:
    """The same pipeline returning the audience to this process (``build_audience``'s job writes it).
    ``profiles``: a Parquet path (read by the workers) or a frame already in memory (``from_pandas``)."""
    import ray

    _connect(address)
    _preserve_order()
    t0 = time.perf_counter()
    if isinstance(profiles, pd.DataFrame):
        check_profiles(profiles, campaign)
        frame = profiles.copy()
        for col in frame.columns:   # Arrow-friendly types for the trip through the object store
            if isinstance(frame[col].dtype, pd.CategoricalDtype):
                frame[col] = frame[col].astype("string")
        ds, columns = ray.data.from_pandas(frame), list(frame.columns)
    else:
        ds = ray.data.read_parquet(str(profiles))
        columns = list(ds.schema().names)
    audience_ref, summary, timings = _run(ds, campaign, str(model_dir), columns, recent_contacts, recent_buyers, None)
    audience = ray.get(audience_ref)
    timings["total"] = time.perf_counter() - t0
    warning = empty_audience_warning(campaign, summary["steps"])
    return AudienceResult(audience, summary["steps"], timings, summary["send_date"], [warning] if warning else [])
