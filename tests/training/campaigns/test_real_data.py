"""End to end on real data: the Hillstrom experiment and the Complete Journey campaigns."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.uplift import qini_auc_score, uplift_at_k
from models.uplift_learners import TLearner
from training.campaigns.completejourney import complete_journey_table
from training.campaigns.hillstrom import load_hillstrom

pytestmark = pytest.mark.slow


def test_hillstrom_loader_and_a_learner_beat_random(data_root):
    d = load_hillstrom(data_root / "hillstrom" / "hillstrom.csv")
    assert len(d.y) == 21387 + 21306 and d.t.sum() == 21387
    assert d.y.mean() == pytest.approx((0.1514 * 21387 + 0.1062 * 21306) / 42693, abs=1e-3)
    tr, te = train_test_split(np.arange(len(d.y)), test_size=0.3, random_state=0, stratify=d.y * 2 + d.t)
    lr = lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))  # noqa: E731
    u = TLearner(lr).fit(d.x[tr], d.y[tr], d.t[tr]).predict(d.x[te])
    avg = d.y[te][d.t[te] == 1].mean() - d.y[te][d.t[te] == 0].mean()
    assert uplift_at_k(d.y[te], u, d.t[te], 0.3) > avg                # targeting beats mailing at random
    assert qini_auc_score(d.y[te], u, d.t[te]) > 0.02
    mens = load_hillstrom(data_root / "hillstrom" / "hillstrom.csv", "Mens E-Mail", "conversion")
    assert mens.t.sum() == 21307
    with pytest.raises(ValueError, match="treatment_arm"):
        load_hillstrom(data_root / "hillstrom" / "hillstrom.csv", "No E-Mail")


def test_complete_journey_table_has_no_future_information(data_root):
    rows = complete_journey_table(data_root / "completejourney" / "parquet")
    assert len(rows) == 6589 and rows["redeemed"].sum() == 792
    # a household's first campaign has no history
    first = rows.sort_values("start").drop_duplicates("household_id")
    assert (first["prior_campaigns"] == 0).all() and (first["prior_redemptions"] == 0).all()
    assert (rows["prior_redemptions"] <= rows["prior_campaigns"] * 1000).all()
    assert not {"household_id"} - set(rows.columns)  # kept for joins; never written by the product
