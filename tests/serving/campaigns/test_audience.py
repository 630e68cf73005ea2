"""The audience pipeline on synthetic profiles: consent, control group, budget, channel, time, offer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.campaigns.audience import (AUDIENCE_COLUMNS, budget_cut, build_audience, model_scorer, send_hours,
                              stratified_control)
from tests.serving.campaigns.conftest import tiny_model


def _with(c, **sections):
    """A copy of campaign ``c`` with some fields of some sections replaced."""
    return c.replace(**sections)


def score_by_column(col):
    return lambda frame: frame[col].to_numpy(dtype=np.float32)


def test_opted_out_users_never_appear_even_with_top_scores(profiles, campaign):
    p = profiles.copy()
    p["hot"] = np.random.default_rng(0).random(len(p))
    # the users who would score highest are opted out of every channel of the campaign
    top = p["hot"].rank(ascending=False) <= 2000
    for ch in campaign.channels.order:
        p.loc[top, f"opted_out_{ch}"] = True
    p.loc[top, "hot"] += 10.0
    res = build_audience(p, _with(campaign, budget={"max_users": 5000}), score_by_column("hot"))
    keys = set(res.audience["user_key"].astype(str))
    assert keys and not keys & set(p.loc[top, "user_key"].astype(str))
    # and a channel is only ever one the user consented to
    merged = res.audience.merge(p[["user_key", *[f"opted_out_{c}" for c in ("email", "sms", "push")]]], on="user_key")
    for ch in ("email", "sms", "push"):
        assert not merged.loc[merged["channel"] == ch, f"opted_out_{ch}"].any()


def test_unknown_consent_counts_as_opted_out(profiles, campaign):
    p = profiles.copy()
    p["opted_out_email"] = p["opted_out_email"].astype("boolean")
    p["opted_out_push"] = p["opted_out_push"].astype("boolean")
    p.loc[:99, ["opted_out_email", "opted_out_push"]] = pd.NA
    p["hot"] = 0.0
    p.loc[:99, "hot"] = 1.0
    res = build_audience(p, campaign, score_by_column("hot"))
    assert not set(res.audience["user_key"].astype(str)) & set(p.loc[:99, "user_key"].astype(str))


def test_steps_columns_groups_and_order(profiles, campaign):
    model = tiny_model(campaign.model.features)
    res = build_audience(profiles, campaign, model_scorer(model, "cpu", 4096))
    a = res.audience
    assert tuple(a.columns) == AUDIENCE_COLUMNS
    counts = [s["users"] for s in res.steps[: [s["step"] for s in res.steps].index("budget") + 1]]
    assert counts[0] == len(profiles) and all(x >= y for x, y in zip(counts, counts[1:]))
    assert res.counts["treatment"] == (a["group"] == "treatment").sum() <= campaign.budget.max_users
    assert res.counts["treatment"] + res.counts["control"] == len(a)
    assert (np.diff(a["score"].to_numpy()) <= 1e-7).all()                # best first
    eligible = profiles.set_index("user_key").loc[a["user_key"].astype(str)]
    assert eligible["lifecycle"].isin(campaign.eligibility.lifecycle).all()
    assert (eligible["frequency"] >= campaign.eligibility.min_frequency).all()
    assert a["user_key"].is_unique


def test_control_group_is_stratified_and_seeded():
    strata = np.repeat(np.arange(5), [1000, 500, 200, 37, 3])
    m1 = stratified_control(strata, 0.2, seed=3)
    m2 = stratified_control(strata, 0.2, seed=3)
    m3 = stratified_control(strata, 0.2, seed=4)
    assert (m1 == m2).all() and (m1 != m3).any()
    for s, n in zip(range(5), [1000, 500, 200, 37, 3]):
        assert m1[strata == s].sum() == int(np.floor(n * 0.2 + 0.5))


def test_budget_counts_treated_users_and_cost():
    score = np.linspace(1, 0, 100)
    control = np.zeros(100, dtype=bool)
    control[::5] = True                                  # 20 control users spread over the ranking
    cost = np.full(100, 0.5)
    idx = budget_cut(score, control, cost, max_users=40, max_cost=None)
    assert (~control[idx]).sum() == 40 and (idx == np.arange(len(idx))).all()
    idx = budget_cut(score, control, cost, max_users=None, max_cost=10.0)
    assert (~control[idx]).sum() == 20 and cost[idx][~control[idx]].sum() <= 10.0
    assert len(budget_cut(score, control, cost, 0, None)) <= 1   # a zero budget treats nobody


def test_cost_budget_in_pipeline(profiles, campaign):
    c = _with(campaign, budget={"max_users": None, "max_cost": 3.0})
    res = build_audience(profiles, c, score_by_column("monetary"))
    treated = res.audience[res.audience["group"] == "treatment"]
    assert 0 < treated["cost"].sum() <= 3.0 + 1e-9
    assert (res.audience.loc[res.audience["group"] == "control", "cost"] == 0).all()


def test_channel_follows_consented_preference(profiles, campaign):
    c = _with(campaign, channels={"order": ("email", "push", "sms"), "cost": {"email": 0.0, "push": 0.0, "sms": 0.0}},
              budget={"max_users": None}, eligibility={"lifecycle": None, "min_recency_days": None,
                                                       "max_recency_days": None, "min_frequency": None})
    res = build_audience(profiles, c, score_by_column("monetary"))
    m = res.audience.merge(profiles[["user_key", "preferred_channel", "opted_out_email", "opted_out_sms", "opted_out_push"]], on="user_key")
    pref = m["preferred_channel"].astype("string")
    consented_pref = np.zeros(len(m), dtype=bool)
    for ch in ("email", "sms", "push"):
        consented_pref |= (pref == ch).fillna(False).to_numpy(dtype=bool) & ~m[f"opted_out_{ch}"].to_numpy(dtype=bool)
    assert (m.loc[consented_pref, "channel"].astype(str) == pref[consented_pref].astype(str)).all()
    # without a consented preference: the first consented channel of the campaign's order
    rest = m[~consented_pref]
    expect = np.where(~rest["opted_out_email"], "email", np.where(~rest["opted_out_push"], "push", "sms"))
    assert (rest["channel"].astype(str).to_numpy() == expect).all()


def test_send_time_avoids_quiet_hours(campaign):
    hours = pd.Series([0, 5, 7, 8, 12, 20, 21, 23, None], dtype="Int64")
    out = send_hours(hours, campaign)                      # quiet 21 -> 8
    assert out.tolist() == [8, 8, 8, 8, 12, 20, 8, 8, campaign.send_time.default_hour]
    daytime_quiet = _with(campaign, send_time={"quiet_start": 12, "quiet_end": 14})
    assert send_hours(pd.Series([11, 12, 13, 14]), daytime_quiet).tolist() == [11, 14, 14, 14]


def _local(a):
    """Each row's send_at in its own ``timezone`` (naive local time)."""
    return pd.Series([t.tz_convert(z).tz_localize(None) for t, z in zip(a["send_at"], a["timezone"])], index=a.index)


def test_send_at_and_offer_in_audience(profiles, campaign):
    res = build_audience(profiles, campaign, score_by_column("monetary"))
    a = res.audience.merge(profiles[["user_key", "price_sensitivity", "timezone"]], on="user_key", suffixes=("", "_profile"))
    assert str(a["send_at"].dt.tz) == "UTC"
    assert (a["timezone"].astype(str) == a["timezone_profile"].astype(str)).all()
    assert a["timezone"].nunique() > 1                       # the synthetic users live in several zones
    local = _local(a)
    h = local.dt.hour
    assert not ((h >= 21) | (h < 8)).any()
    assert (local.dt.normalize() == pd.Timestamp(res.send_date)).all()
    ps = a["price_sensitivity"]
    assert np.allclose(a.loc[ps <= 0.3, "offer"], 0.05)
    assert np.allclose(a.loc[(ps > 0.3) & (ps <= 0.6), "offer"], 0.10)
    assert np.allclose(a.loc[ps > 0.6, "offer"], 0.15)
    assert np.allclose(a.loc[ps.isna(), "offer"], campaign.offer.default_discount)
    assert ps.isna().any() and (ps <= 0.3).any() and (ps > 0.6).any()


def test_frequency_cap_and_churn_exclusions(profiles, campaign):
    capped = set(profiles["user_key"].astype(str)[:5000])
    res = build_audience(profiles, campaign, score_by_column("monetary"), recent_contacts=capped)
    assert "exclusions.frequency_cap" in res.counts
    assert not set(res.audience["user_key"].astype(str)) & capped


def test_missing_profile_column_is_named(profiles, campaign):
    with pytest.raises(ValueError, match="opted_out_sms"):
        build_audience(profiles.drop(columns=["opted_out_sms"]), campaign, score_by_column("monetary"))


def test_no_clear_text_ids_in_audience(profiles, campaign):
    res = build_audience(profiles, campaign, score_by_column("monetary"))
    assert not {"user_id", "customer_id", "email", "name"} & set(res.audience.columns)


def test_gpu_scoring_matches_cpu_when_present(profiles, campaign):
    import torch

    model = tiny_model(campaign.model.features)
    x = model.feature_matrix(profiles.iloc[:5000])
    cpu = model.score_matrix(x, device="cpu", batch_size=777)
    assert cpu.shape == (5000,) and np.isfinite(cpu).all()
    assert np.allclose(cpu, model.score_matrix(x, device="cpu", batch_size=100_000), atol=1e-6)
    auto = model.score_matrix(x, device="auto", batch_size=1000)        # CUDA when present, else the CPU fallback
    assert np.allclose(cpu, auto, atol=1e-4)
    if not torch.cuda.is_available():
        assert np.allclose(cpu, model.score_matrix(x, device="cuda"), atol=1e-6)  # falls back to the CPU


def test_send_at_is_inside_a_far_zone_users_local_window(profiles, campaign):
    """A user in Sydney (UTC+11 in December) active at 10:00 local, one in Los Angeles (UTC-8) active
    at 22:00 local (quiet: moved to 08:00 local), one with no zone (campaign default), one at 03:00
    local in Tokyo: every send_at, read in the user's zone, is on the send date outside quiet hours."""
    p = profiles.iloc[:4].copy()
    p["timezone"] = pd.Series(["Australia/Sydney", "America/Los_Angeles", None, "Asia/Tokyo"], dtype="string").to_numpy()
    p["active_hour"] = [10.0, 22.0, 12.0, 3.0]
    p["lifecycle"], p["recency_days"], p["frequency"] = "at_risk", 100.0, 5
    for ch in ("email", "sms", "push"):
        p[f"opted_out_{ch}"] = False
    c = _with(campaign, send_time={"send_date": "2011-12-12", "default_timezone": "Europe/London"},
              control={"fraction": 0.0}, budget={"max_users": None})
    a = build_audience(p, c, score_by_column("monetary")).audience.set_index("user_key")
    a = a.loc[p["user_key"].astype(str)]
    assert a["timezone"].astype(str).tolist() == ["Australia/Sydney", "America/Los_Angeles", "Europe/London", "Asia/Tokyo"]
    assert a["send_at"].tolist() == [pd.Timestamp("2011-12-11 23:00", tz="UTC"),   # 10:00 AEDT = the day before in UTC
                                     pd.Timestamp("2011-12-12 16:00", tz="UTC"),   # 08:00 PST
                                     pd.Timestamp("2011-12-12 12:00", tz="UTC"),   # 12:00 GMT
                                     pd.Timestamp("2011-12-11 23:00", tz="UTC")]   # 03:00 JST -> 08:00 JST
    local = _local(a)
    assert local.dt.hour.tolist() == [10, 8, 12, 8]
    assert (local.dt.normalize() == pd.Timestamp("2011-12-12")).all()


def test_daylight_saving_gap():
    from serving.campaigns.audience import send_times_utc

    # 01:00-02:00 on 2024-03-31 does not exist in London (01:00 GMT -> 02:00 BST): 01:00 moves to 02:00 BST
    got = send_times_utc(pd.Timestamp("2024-03-31", tz="UTC"), np.array([1, 10, 10]),
                         np.array(["Europe/London", "Europe/London", "Asia/Kolkata"], dtype=object))
    assert list(got) == [pd.Timestamp("2024-03-31 01:00", tz="UTC"), pd.Timestamp("2024-03-31 09:00", tz="UTC"),
                         pd.Timestamp("2024-03-31 04:30", tz="UTC")]


def test_unknown_profile_zone_is_named(profiles, campaign):
    p = profiles.iloc[:50].copy()
    p["timezone"] = "Mars/Olympus"
    c = _with(campaign, eligibility={"lifecycle": None, "min_recency_days": None, "max_recency_days": None,
                                     "min_frequency": None}, control={"fraction": 0.0})
    with pytest.raises(ValueError, match="'timezone'.*Mars/Olympus"):
        build_audience(p, c, score_by_column("monetary"))


def test_audience_does_not_depend_on_row_order(profiles, campaign):
    """Shuffled profiles (as Ray Data's blocks may deliver them) give the same audience, control group included."""
    model = tiny_model(campaign.model.features)
    want = build_audience(profiles, campaign, model_scorer(model, "cpu", 4096)).audience
    shuffled = profiles.sample(frac=1.0, random_state=7).reset_index(drop=True)
    got = build_audience(shuffled, campaign, model_scorer(model, "cpu", 4096)).audience
    assert (want["group"] == "control").sum() > 0
    key = ["user_key"]
    pd.testing.assert_frame_equal(want.sort_values(key).reset_index(drop=True),
                                  got.sort_values(key).reset_index(drop=True))
