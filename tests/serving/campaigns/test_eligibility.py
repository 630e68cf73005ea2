"""Targeting values are checked against the data before scoring; an empty audience is warned about loudly."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from serving.campaigns.audience import build_audience
from serving.campaigns.eligibility import check_profiles, check_targeting
from serving.campaigns.spec import CampaignConfigError


def score_by_column(col):
    return lambda frame: frame[col].to_numpy(dtype=np.float32)


def test_unknown_segment_lists_the_known_ones(profiles, campaign):
    c = campaign.replace(eligibility={"segments": ["high_value", "hgh_value"]})
    with pytest.raises(CampaignConfigError) as e:
        check_targeting(profiles, c)
    assert e.value.field == "eligibility.segments"
    msg = str(e.value)
    assert "hgh_value" in msg and "high_value" in msg and "price_sensitive" in msg


def test_configured_segment_absent_from_this_snapshot_is_accepted(profiles, campaign):
    c = campaign.replace(eligibility={"segments": ["vip_new"]})
    with pytest.raises(CampaignConfigError):
        check_targeting(profiles, c)
    check_targeting(profiles, c, known_segments=["vip_new"])   # defined by the profile config: fine


def test_unknown_country_lists_the_known_ones(profiles, campaign):
    c = campaign.replace(eligibility={"countries": ["Germany", "Atlantis"]})
    with pytest.raises(CampaignConfigError) as e:
        check_targeting(profiles, c)
    assert e.value.field == "eligibility.countries" and "Atlantis" in str(e.value) and "United Kingdom" in str(e.value)
    check_targeting(profiles, campaign.replace(eligibility={"countries": ["Germany"]}))


def test_model_feature_that_is_no_profile_column_names_the_field(profiles, campaign):
    c = campaign.replace(model={"features": ["recency_days", "favourite_colour"], "log_features": []})
    with pytest.raises(CampaignConfigError) as e:
        check_profiles(profiles, c)
    assert e.value.field == "model.features" and "favourite_colour" in str(e.value)


def test_empty_audience_is_warned_about_loudly(profiles, campaign, caplog):
    c = campaign.replace(budget={"min_score": 1.0})       # valid, but no probability reaches 1.0 here
    with caplog.at_level(logging.WARNING):
        res = build_audience(profiles, c, lambda f: np.full(len(f), 0.5, dtype=np.float32))
    assert len(res.audience) == 0
    assert res.warnings and "EMPTY AUDIENCE" in res.warnings[0] and "budget.min_score" in res.warnings[0]
    assert any("EMPTY AUDIENCE" in r.getMessage() for r in caplog.records)


def test_non_empty_audience_has_no_warning(profiles, campaign):
    res = build_audience(profiles, campaign, score_by_column("monetary"))
    assert len(res.audience) > 0 and res.warnings == []
