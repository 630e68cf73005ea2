"""Beyond-accuracy figures of the one evaluator: diversity, novelty, coverage, long-tail share, Gini, by hand."""
import math

import numpy as np
import pytest
import torch

from training.metrics import (BeyondAccuracy, RankingEvaluator, category_codes, evaluate_candidate_lists, gini,
                              long_tail)


def test_gini_by_hand():
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 10]) == pytest.approx(0.75)          # (n - 1) / n for one item taking everything
    assert gini([1, 2, 3]) == pytest.approx(2 / 9)
    assert gini([0, 0]) == 0.0


def test_long_tail_is_outside_the_top_fifth():
    pop = torch.tensor([100.0, 50, 10, 10, 5, 4, 3, 2, 1, 0])
    tail = long_tail(pop)                                        # head = the top 2 of 10
    assert tail.tolist() == [False, False] + [True] * 8
    # a tie at the boundary joins the head; never-seen items are tail even when they would fill the head
    assert long_tail(torch.tensor([9.0, 9, 5, 1, 1])).tolist() == [False, False, True, True, True]
    assert long_tail(torch.zeros(5)).all()


def test_category_codes_mark_missing_ones():
    codes = category_codes(["b", None, "a", "", float("nan"), "b"])
    assert codes[1] == codes[3] == codes[4] == -1
    assert codes[0] == codes[5] != codes[2] and codes[2] >= 0


def test_lists_by_hand():
    pop = torch.tensor([6.0, 2, 1, 1, 0])                        # head = top ceil(0.2 * 5) = 1 item: item 0
    cat = torch.tensor([0, 0, 1, -1, 1])
    ba = BeyondAccuracy(5, pop, cat, k=3)
    ba.update(torch.tensor([[0, 1, 2],                           # pairs (0,1) same, (0,2) (1,2) differ -> 2/3
                            [3, 4, -1]]))                        # item 3 has no category: no pair -> left out
    m = ba.compute()
    assert m["ild@3"] == pytest.approx(2 / 3)
    assert m["category_known@3"] == pytest.approx(4 / 5)
    assert m["coverage@3"] == pytest.approx(1.0)
    assert m["tail_share@3"] == pytest.approx(4 / 5)             # 5 impressions, one of them the head item 0
    p = (pop + 1) / (pop.sum() + 5)                              # add-one smoothing
    assert m["novelty@3"] == pytest.approx(float(-torch.log2(p).sum() / 5))
    assert m["gini@3"] == pytest.approx(0.0)                     # every item shown once


def test_evaluator_reports_them_after_the_history_mask():
    n = 30
    pop = torch.arange(n, dtype=torch.float32)                   # item 29 the most popular
    cat = torch.arange(n) % 3
    scores = pop.unsqueeze(0).repeat(2, 1)                       # a popularity ranking
    ev = RankingEvaluator(n_items=n, ks=(10,), popularity=pop, item_category=cat)
    ev.update(scores, (torch.tensor([0, 1]), torch.tensor([0, 1])),
              (torch.tensor([1] * 5), torch.tensor([29, 28, 27, 26, 25])))   # row 1 saw the 5 most popular
    m = ev.compute("test/")
    assert m["test/coverage@10"] == pytest.approx(15 / n)        # items 20..29 and 15..24
    assert m["test/tail_share@10"] == pytest.approx((4 + 9) / 20)    # head = items 24..29 (top 6 of 30)
    assert m["test/ild@10"] == pytest.approx(1 - (6 + 3 + 3) / 45)  # 10 items over 3 categories: 4 + 3 + 3
    assert m["test/gini@10"] > 0.5                               # 15 of 30 items take every impression
    assert m["test/novelty@10"] > 0


def test_a_diverse_popular_list_beats_a_narrow_one():
    n = 40
    cat = torch.arange(n) // 10                                  # 4 categories of 10 consecutive items
    narrow = torch.zeros(1, n)
    narrow[0, :10] = torch.arange(10, 0, -1).float()             # top-10 = items 0..9, one category
    wide = torch.zeros(1, n)
    wide[0, torch.arange(0, 40, 4)] = torch.arange(10, 0, -1).float()   # every fourth item: 4 categories
    out = []
    for s in (narrow, wide):
        ev = RankingEvaluator(n_items=n, ks=(10,), item_category=cat)
        ev.update(s, (torch.tensor([0]), torch.tensor([0])))
        out.append(ev.compute()["ild@10"])
    assert out[0] == 0.0 and out[1] > 0.7


def test_candidate_lists_beyond_accuracy():
    # two requests; request 0 ranks items 4, 2 (scores 0.9, 0.5); request 1 ranks item 4, then 1
    m = evaluate_candidate_lists(np.array([0.9, 0.5, 0.2, 0.7]), np.array([0, 2, 4]),
                                 np.array([True, False, False, True]), np.array([1, 1]), ks=(10,),
                                 items=np.array([4, 2, 4, 1]), n_items=5, popularity=np.array([0, 1, 2, 3, 9]),
                                 item_category=np.array([0, 0, 1, 1, 0]))
    assert m["coverage@10"] == pytest.approx(3 / 5)
    assert m["ild@10"] == pytest.approx(0.5)                     # (4, 2) differ, (1, 4) same
    assert m["tail_share@10"] == pytest.approx(2 / 4)            # head = item 4
    assert m["gini@10"] == pytest.approx(gini([0, 1, 1, 0, 2]))
    assert math.isfinite(m["novelty@10"])
    with pytest.raises(ValueError, match="n_items"):
        evaluate_candidate_lists(np.array([0.9]), [0, 1], [True], [1], items=np.array([0]))


def test_quality_table_shows_beyond_accuracy(tmp_path):
    import json

    from training.quality_table import collect, render, results, select

    run = tmp_path / "toys" / "sasrec" / "20260101-000000"
    run.mkdir(parents=True)
    m = {"test/ndcg@10": 0.05, "valid/ndcg@10": 0.06, "test/ild@10": 0.8123, "test/gini@10": 0.9321,
         "protocol": {"split": "loo", "exclude_history": True, "ties": "expected", "max_users": None}}
    (run / "metrics.json").write_text(json.dumps(m))
    table = select(collect(tmp_path))
    lines = render(table)
    assert "ild@10" in lines[1] and "gini@10" in lines[1] and "0.8123" in lines[2] and "0.9321" in lines[2]
    got = next(iter(results(table).values()))["toys/sasrec"]
    assert got["test/ild@10"] == 0.8123 and "test/novelty@10" not in got      # absent figures stay absent
