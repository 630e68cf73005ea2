"""The Ray Data path (``--ray-address``) gives the same audience as the single-process pipeline: from
Parquet files read by the workers (``build_audience_ray``, written with ``write_parquet``) and from a
frame in memory (``score_with_ray``); the scoring actors load the model once, not once per batch."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.campaigns.audience import build_audience, model_scorer
from serving.campaigns.ray_audience import EligibleScorer, build_audience_ray, score_with_ray
from serving.campaigns.scoring import save_campaign_model
from tests.serving.campaigns.conftest import tiny_model

pytestmark = pytest.mark.ray


def _by_user(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in ("user_key", "group", "channel", "timezone", "segment"):
        out[col] = out[col].astype(str)
    return out.sort_values("user_key").reset_index(drop=True)


def _assert_same_audience(remote: pd.DataFrame, local: pd.DataFrame) -> None:
    r, lo = _by_user(remote), _by_user(local)
    assert len(r) == len(lo) > 0
    for col in ("user_key", "group", "channel", "timezone", "segment"):
        assert (r[col].values == lo[col].values).all(), col
    assert (pd.to_datetime(r["send_at"], utc=True).values == pd.to_datetime(lo["send_at"], utc=True).values).all()
    for col in ("score", "offer", "cost"):
        np.testing.assert_array_equal(r[col].to_numpy(), lo[col].to_numpy(), err_msg=col)


def test_ray_data_path_matches_local(ray_local, tmp_path, campaign, profiles):
    c = campaign.replace(job={"batch_size": 5000, "device": "cpu"})
    model = tiny_model(c.model.features)
    save_campaign_model(tmp_path, model.ensemble, model.features, "response")
    remote = score_with_ray(profiles, c, str(tmp_path), "auto")
    local = build_audience(profiles, c, model_scorer(model, "cpu"))
    assert remote.steps == local.steps
    assert (remote.audience["user_key"].astype(str).values == local.audience["user_key"].astype(str).values).all()
    assert (remote.audience["group"].astype(str).values == local.audience["group"].astype(str).values).all()


def test_read_parquet_to_write_parquet_matches_local(ray_local, tmp_path, campaign, profiles):
    c = campaign.replace(job={"batch_size": 3000, "device": "cpu"})
    model = tiny_model(c.model.features, seed=3)
    save_campaign_model(tmp_path / "model", model.ensemble, model.features, "response")
    files = tmp_path / "profiles"
    files.mkdir()
    half = len(profiles) // 2     # two files: order across files matters for the control draw
    profiles.iloc[:half].to_parquet(files / "part-0.parquet", index=False, row_group_size=4000)
    profiles.iloc[half:].to_parquet(files / "part-1.parquet", index=False, row_group_size=4000)
    contacts = set(profiles["user_key"].astype(str).iloc[::7])
    res = build_audience_ray(sorted(map(str, files.iterdir())), c, tmp_path / "model", tmp_path / "audience",
                             recent_contacts=contacts, concurrency=1)
    on_disk = pd.read_parquet(tmp_path / "audience")
    local_profiles = pd.concat([pd.read_parquet(p) for p in sorted(files.iterdir())], ignore_index=True)
    local = build_audience(local_profiles, c, model_scorer(model, "cpu"), recent_contacts=contacts)
    assert res.steps == local.steps and res.n_rows == len(on_disk) == len(local.audience)
    assert res.send_date == local.send_date
    assert dict((s["step"], s["users"]) for s in res.steps)["exclusions.frequency_cap"] < len(profiles)
    _assert_same_audience(on_disk, local.audience)


def test_a_missing_profile_column_fails_before_scoring(ray_local, tmp_path, campaign, profiles):
    c = campaign.replace(job={"batch_size": 5000, "device": "cpu"})
    profiles.drop(columns=["active_hour"]).to_parquet(tmp_path / "p.parquet", index=False)
    with pytest.raises(ValueError, match="active_hour"):
        build_audience_ray(tmp_path / "p.parquet", c, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_model_is_loaded_once_per_actor(tmp_path, campaign, profiles, monkeypatch):
    from serving.campaigns import scoring

    c = campaign.replace(job={"batch_size": 5000, "device": "cpu"})
    model = tiny_model(c.model.features)
    save_campaign_model(tmp_path, model.ensemble, model.features, "response")
    loads = []
    real = scoring.CampaignModel.load.__func__
    monkeypatch.setattr(scoring.CampaignModel, "load", classmethod(lambda cls, d: loads.append(d) or real(cls, d)))
    actor = EligibleScorer(c, str(tmp_path), ["user_key", "active_hour", "price_sensitivity", "timezone"])
    outs = [actor(profiles.iloc[i:i + 5000]) for i in range(0, 15000, 5000)]
    assert len(loads) == 1 and all(o["_summary"].sum() == 1 for o in outs)


def test_an_arrow_batch_scores_like_the_pandas_one(tmp_path, campaign, profiles):
    """Ray Data hands the actor Arrow tables (zero-copy); a per-user dictionary ``user_key`` (as pandas
    writes a Categorical) comes out as plain strings, and the eligible users and scores are the same."""
    import pyarrow as pa

    c = campaign.replace(job={"batch_size": 5000, "device": "cpu"})
    model = tiny_model(c.model.features)
    save_campaign_model(tmp_path, model.ensemble, model.features, "response")
    actor = EligibleScorer(c, str(tmp_path), ["user_key", "active_hour", "price_sensitivity", "timezone"])
    batch = profiles.iloc[:5000]
    table = pa.Table.from_pandas(batch, preserve_index=False)
    assert pa.types.is_dictionary(table.schema.field("user_key").type)
    from_arrow, from_pandas = actor(table), actor(batch)
    rows = ~from_pandas["_summary"].astype(bool).to_numpy()
    assert (from_arrow["user_key"].dropna().astype(str).to_numpy()
            == from_pandas["user_key"].dropna().astype(str).to_numpy()).all() and rows.sum() > 0
    np.testing.assert_array_equal(from_arrow["_score"].to_numpy(dtype=np.float32)[rows],
                                  from_pandas["_score"].to_numpy(dtype=np.float32)[rows])
    assert from_arrow["_steps"].dropna().tolist() == from_pandas["_steps"].dropna().tolist()
