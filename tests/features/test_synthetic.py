"""The synthetic generator: seeded, exact scale, funnel order, power laws, daily and seasonal shape."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.adapters import DataConfigError
from features.prepare import run
from features.processed import load_items, load_users
from features.synthetic import SyntheticSpec, generate
from tests.features.conftest import make_cfg


@pytest.fixture(scope="module")
def sample():
    return generate(SyntheticSpec(n_events=200_000, seed=7))


def test_seeded_and_exact_size(sample):
    ev, _, _ = sample
    assert len(ev) == 200_000
    again, _, _ = generate(SyntheticSpec(n_events=200_000, seed=7))
    assert ev.equals(again)
    other, _, _ = generate(SyntheticSpec(n_events=200_000, seed=8))
    assert not ev["item"].equals(other["item"])


def test_funnel(sample):
    ev, _, _ = sample
    counts = ev["event"].value_counts()
    assert counts["view"] > counts["cart"] > counts["purchase"] > counts["return"] > 0
    # a purchase comes after a cart of the same item in the same session
    p = ev[ev["event"] == "purchase"][["session_id", "item", "ts"]]
    c = ev[ev["event"] == "cart"].groupby(["session_id", "item"], as_index=False)["ts"].min()
    j = p.merge(c, on=["session_id", "item"], suffixes=("_p", "_c"))
    assert len(j) >= 0.95 * len(p) and (j["ts_p"] > j["ts_c"]).all()
    assert ev.loc[ev["event"] == "purchase", "price"].gt(0).all()
    assert ev.loc[ev["event"] == "purchase", "order_id"].notna().all()


def test_power_law_and_time_patterns(sample):
    ev, items, _ = sample
    pop = ev["item"].value_counts().to_numpy()
    top1 = pop[: max(1, len(pop) // 100)].sum() / pop.sum()
    assert top1 > 0.05                       # the top 1% of items draws well over 1% of events
    hours = ev["ts"].dt.hour.value_counts()
    assert hours[20] > 3 * hours[3]          # evenings are busy, nights quiet
    month = ev["ts"].dt.month.value_counts()
    assert month[12] > 1.3 * month[2]        # the December peak
    assert items["category"].nunique() > 10


def test_unknown_setting_rejected():
    with pytest.raises(DataConfigError, match="data.synthetic.n_eventz"):
        SyntheticSpec.from_cfg({"n_eventz": 5})


def test_prepare_synthetic(tmp_path):
    cfg = make_cfg("data=synthetic", "data.synthetic.n_events=50000", f"paths.artifacts={tmp_path}")
    m = run(cfg).manifest
    assert m["n_events"] + m["n_quarantined"] + sum(m["n_dropped"].values()) == 50000
    assert set(m["splits"]) == {"loo", "temporal"}
    assert load_users(tmp_path / "processed" / "synthetic")["country"].notna().all()
    assert load_items(tmp_path / "processed" / "synthetic")["category"].str.startswith("category_").all()
