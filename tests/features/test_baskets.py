"""Association rules: exact support/confidence/lift on a hand-made basket set, thresholds (publishing them into a
bundle: tests/serving/test_publish_rules.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.baskets import AssocSettings, mine_rules


def settings(**kw) -> AssocSettings:
    base = dict(source="all", events=["purchase"], min_basket_size=2, max_basket_size=10, min_pair_count=1,
                min_support=0.0, min_confidence=0.0, min_lift=0.0, top_k=50, rank_by="confidence")
    base.update(kw)
    return AssocSettings(**base)


def events_from(baskets: list[list[int]], event="purchase") -> pd.DataFrame:
    rows = [(o, item) for o, items in enumerate(baskets) for item in items]
    return pd.DataFrame({"user_id": 0, "item_id": [r[1] for r in rows], "event": event,
                         "order_id": [f"o{r[0]}" for r in rows]})


# 10 baskets: item 0 and 1 together 4 times; 0 alone-ish; 2 with 3 twice; a huge one.
BASKETS = [[0, 1], [0, 1, 2], [0, 1], [0, 1, 3], [0, 4], [2, 3], [2, 3, 4], [4], [5, 0, 0], [1, 4]]


def test_counts_support_confidence_lift():
    res = mine_rules(events_from(BASKETS), settings())
    # basket [4] has one item and is dropped; [5, 0, 0] is {0, 5}: 9 baskets count
    assert res.n_baskets == 9
    r = res.rules.set_index(["item_id", "other_item_id"])
    n0, n1 = 6, 5  # baskets with item 0 / item 1
    assert r.loc[(0, 1), "pair_count"] == 4
    assert r.loc[(0, 1), "support"] == pytest.approx(4 / 9)
    assert r.loc[(0, 1), "confidence"] == pytest.approx(4 / n0)
    assert r.loc[(1, 0), "confidence"] == pytest.approx(4 / n1)
    assert r.loc[(0, 1), "lift"] == pytest.approx((4 / n0) / (n1 / 9))
    assert (0, 0) not in r.index  # no self rules


def test_thresholds_topk_and_order():
    res = mine_rules(events_from(BASKETS), settings(min_pair_count=2))
    assert set(map(tuple, res.rules[["item_id", "other_item_id"]].to_numpy())) == {(0, 1), (1, 0), (2, 3), (3, 2)}
    res = mine_rules(events_from(BASKETS), settings(min_lift=1.2))
    assert (res.rules["lift"] >= 1.2).all() and len(res.rules) > 0
    res = mine_rules(events_from(BASKETS), settings(top_k=1))
    assert res.rules.groupby("item_id").size().max() == 1
    assert res.rules.set_index("item_id").loc[0, "other_item_id"] == 1  # best confidence first
    res = mine_rules(events_from(BASKETS), settings(max_basket_size=2))
    assert res.n_baskets_dropped_large == 3  # the three 3-item baskets


def test_other_event_types_ignored_and_empty_input():
    ev = pd.concat([events_from(BASKETS), events_from([[7, 8]] * 5, event="return")])
    assert not (mine_rules(ev, settings()).rules[["item_id", "other_item_id"]] >= 7).any().any()
    empty = mine_rules(events_from([[1], [2]]), settings())
    assert empty.n_baskets == 0 and len(empty.rules) == 0 and list(empty.rules.columns)[:2] == ["item_id", "other_item_id"]


def test_bad_settings_name_the_setting():
    from omegaconf import OmegaConf
    with pytest.raises(ValueError, match="assoc.rank_by"):
        AssocSettings.from_cfg(OmegaConf.create({**settings().__dict__, "rank_by": "magic"}))
    with pytest.raises(ValueError, match="assoc.min_confidence"):
        AssocSettings.from_cfg(OmegaConf.create({**settings().__dict__, "min_confidence": 2.0}))


def test_entry_point_on_real_online_retail(data_root, tmp_path):
    """End to end on the real invoices: prepare, mine."""
    from hydra import compose, initialize_config_dir

    from features import prepare
    from features.baskets import run

    repo = Path(__file__).resolve().parents[2]
    with initialize_config_dir(config_dir=str(repo / "conf"), version_base=None):
        cfg = compose("config", overrides=["data=online_retail", f"paths.artifacts={tmp_path}", f"paths.data_root={data_root}"])
    processed = repo / "artifacts" / "processed" / "online_retail"
    if (processed / "splits" / "temporal" / "train.parquet").exists():  # reuse the prepared data when present
        cfg.paths.processed = str(processed.parent)
    else:
        prepare.run(cfg)
    out = run(cfg)
    rules = pd.read_parquet(out / "bought_together.parquet")
    man = json.loads((out / "manifest.json").read_text())
    assert man["n_baskets"] > 10_000 and man["n_rules"] == len(rules) > 1_000
    assert (rules["confidence"] >= cfg.assoc.min_confidence).all() and (rules["lift"] >= cfg.assoc.min_lift).all()
    assert (rules["item_id"] != rules["other_item_id"]).all()
    assert rules.groupby("item_id").size().max() <= cfg.assoc.top_k
