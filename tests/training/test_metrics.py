"""Ranking metrics against hand-computed values."""
import math

import pytest
import torch

from training.metrics import RankingAccumulator, mask_history, metrics_from_ranks, ranks_of_targets


def test_ranks_hr_ndcg_mrr_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3],     # target 2 -> rank 2
                           [0.2, 0.8, 0.1, 0.4],     # target 1 -> rank 1
                           [0.1, 0.2, 0.3, 0.4]])    # target 0 -> rank 4
    ranks = ranks_of_targets(scores, torch.tensor([2, 1, 0]))
    assert ranks.tolist() == [2, 1, 4]
    m = metrics_from_ranks(ranks, ks=(1, 2, 3))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1.0) / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)


def test_ties_are_optimistic():
    assert ranks_of_targets(torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([2])).tolist() == [1]


def test_history_mask_keeps_the_target():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5]])
    mask_history(scores, torch.tensor([0, 0]), torch.tensor([0, 2]), torch.tensor([2]))
    assert scores[0, 0] == float("-inf")
    assert scores[0, 2] == pytest.approx(0.1)            # the target is never excluded
    assert ranks_of_targets(scores, torch.tensor([2])).tolist() == [3]   # 0.8, 0.5 above it


def test_accumulator_coverage_popularity_and_batching():
    acc = RankingAccumulator(n_items=20, ks=(10,), popularity=torch.arange(20).float())
    s1 = torch.arange(20).float().unsqueeze(0)                 # top-10 = items 10..19 (pop 10..19)
    acc.update(s1, torch.tensor([19]))                         # rank 1
    acc.update(s1.flip(1), torch.tensor([19]))                 # top-10 = items 0..9; target rank 20
    m = acc.compute("test/")
    assert m["test/hr@10"] == pytest.approx(0.5)
    assert m["test/ndcg@10"] == pytest.approx(0.5)
    assert m["test/mrr"] == pytest.approx((1 + 1 / 20) / 2)
    assert m["test/coverage@10"] == pytest.approx(1.0)
    assert m["test/pop@10"] == pytest.approx((14.5 + 4.5) / 2)


def test_sampled_protocol_ranks_among_negatives_only():
    # target is the 51st best item of 201: full rank 51; against 100 of the other 200 about 26
    scores = torch.arange(201).float().flip(0).unsqueeze(0).repeat(64, 1)
    acc = RankingAccumulator(n_items=201, ks=(10,), sampled_negatives=100)
    acc.update(scores, torch.full((64,), 50))
    m = acc.compute()
    assert m["hr@10"] == 0.0
    assert m["sampled_hr@10"] < 0.2
    full_rank, sampled_mrr = 51, m["sampled_mrr"]
    assert 1 / 40 < sampled_mrr < 1 / 15 and sampled_mrr > 1 / full_rank


def test_sampled_negatives_exclude_history():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    mask_history(scores, torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([4]))
    acc = RankingAccumulator(n_items=5, ks=(1,), sampled_negatives=10)
    acc.update(scores, torch.tensor([4]))
    # negatives can only be items 2 and 3, both above the target -> sampled rank 3
    assert acc.compute()["sampled_mrr"] == pytest.approx(1 / 3)
