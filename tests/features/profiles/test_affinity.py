"""Time-decayed category affinity."""
from __future__ import annotations

import pandas as pd
import pytest

from features.profiles.affinity import affinities, event_weights, top_lists

SNAP = pd.Timestamp("2024-03-01", tz="UTC")
CFG = {"half_life_days": 10, "top_n": 2, "event_weights": {"view": 1.0, "purchase": 5.0}}
ITEMS = pd.DataFrame({"item_id": [0, 1, 2], "category": ["old", "new", None], "attributes": [[7], [8], []]})


def _ev(rows):
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts"])
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True, format="ISO8601")
    return ev


def test_weight_halves_every_half_life():
    ev = _ev([(0, 0, "view", "2024-03-01"), (0, 0, "view", "2024-02-20"), (0, 0, "purchase", "2024-02-20")])
    w = event_weights(ev, SNAP, CFG)
    assert w.tolist() == pytest.approx([1.0, 0.5, 2.5])


def test_recent_interest_beats_older_interest():
    # Three old views of "old" (40 days = 4 half-lives: 3/16) vs one view of "new" yesterday (~0.93).
    ev = _ev([(0, 0, "view", "2024-01-21")] * 3 + [(0, 1, "view", "2024-02-29"), (0, 2, "view", "2024-02-29")])
    aff = affinities(ev, ITEMS, SNAP, CFG)
    cats = aff[aff["kind"] == "category"]
    assert cats["key"].tolist() == ["new", "old"]
    assert cats["score"].sum() == pytest.approx(1.0)
    assert top_lists(cats, pd.Index([0, 1])).tolist() == [["new", "old"], []]
    attrs = aff[aff["kind"] == "attribute"]
    assert attrs["key"].tolist() == ["8", "7"]


def test_unknown_event_type_is_named():
    ev = _ev([(0, 0, "wishlist", "2024-02-01")])
    with pytest.raises(ValueError, match="wishlist"):
        event_weights(ev, SNAP, CFG)
