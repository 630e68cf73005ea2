"""The ranking evaluator: hand-computed cases, ties, non-finite scores, the target-blind mask, and agreement
with an outside implementation (trec_eval through pytrec_eval) on random and real score matrices."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from training.metrics import (NonFiniteScoresError, RankingEvaluator, evaluate_candidate_lists, expected_ranks,
                              mask_history, row_metrics)

KS = (1, 3, 10)


def one_target(scores, targets, ks=KS, history=None, exclude_history=True, **kw):
    ev = RankingEvaluator(n_items=scores.shape[1], ks=ks, exclude_history=exclude_history, **kw)
    t = torch.as_tensor(targets)
    ev.update(scores.clone(), (torch.arange(len(t)), t), history)
    return ev.compute()


def test_single_target_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3],     # target 2 -> rank 2
                           [0.2, 0.8, 0.1, 0.4],     # target 1 -> rank 1
                           [0.1, 0.2, 0.3, 0.4]])    # target 0 -> rank 4
    assert expected_ranks(scores, torch.arange(3), torch.tensor([2, 1, 0])).tolist() == [2, 1, 4]
    m = one_target(scores, [2, 1, 0], ks=(1, 2, 3))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@2"] == pytest.approx(2 / 3) == m["recall@2"]
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1.0) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    assert m["n_users"] == 3


def test_several_relevant_items_by_hand():
    # ranking 0 > 1 > 2 > 3 > 4; relevant {1, 4}: ranks 2 and 5
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    ev = RankingEvaluator(n_items=5, ks=(1, 2, 5))
    ev.update(scores, (torch.tensor([0, 0, 0]), torch.tensor([1, 4, 1])))      # a duplicate pair counts once
    m = ev.compute()
    idcg2 = 1 + 1 / math.log2(3)
    assert m["hr@1"] == 0 and m["hr@2"] == 1
    assert m["recall@2"] == pytest.approx(0.5) and m["recall@5"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / idcg2)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / idcg2)
    assert m["mrr"] == pytest.approx(0.5)


def test_ties_sit_at_their_expected_position():
    n = 100
    const = torch.zeros(4, n)
    m = one_target(const, [0, 7, 50, 99], ks=(10,))
    assert m["hr@10"] == 0.0 and m["ndcg@10"] == 0.0                  # every item at rank 50.5
    assert m["mrr"] == pytest.approx(1 / 50.5)
    # two items tied at the top: rank 1.5 each; integer scores do not inflate the hit rate
    scores = torch.tensor([[3.0, 3.0, 1.0, 0.0]])
    assert expected_ranks(scores, torch.tensor([0, 0]), torch.tensor([0, 1])).tolist() == [1.5, 1.5]
    m = one_target(scores, [1], ks=(1,))
    assert m["hr@1"] == 0.0 and m["mrr"] == pytest.approx(1 / 1.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_name_the_model_and_the_rows(bad):
    scores = torch.rand(5, 8)
    scores[1, 3] = bad
    scores[4, 0] = bad
    with pytest.raises(NonFiniteScoresError, match=r"'sasrec'.* 2 of 5 rows"):
        one_target(scores, [0] * 5, model="sasrec")
    with pytest.raises(NonFiniteScoresError, match="'ranker'"):
        evaluate_candidate_lists(np.array([0.1, bad]), [0, 2], [True, False], [1], model="ranker")


def test_history_mask_is_target_blind():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.9, 0.8, 0.1, 0.5]])
    history = (torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 0, 2]))
    # the same history gives the same masked scores whatever the target is
    a, b = scores.clone(), scores.clone()
    mask_history(a, *history)
    mask_history(b, *history)
    assert torch.equal(a, b) and a[0, 2] == float("-inf") and a[0, 0] == float("-inf")
    # row 0: target 2 is in the history (a repeat) -> a miss; row 1: target 3 -> rank 2 (0.8 above it)
    m = one_target(scores, [2, 3], ks=(1, 2, 3, 4), history=history)
    assert m["hr@4"] == pytest.approx(0.5) and m["mrr"] == pytest.approx(0.25)
    assert m["repeat_share"] == pytest.approx(0.5)
    # repeat-aware: nothing removed; target 2 ranks 4th, target 3 ranks 3rd
    m = one_target(scores, [2, 3], ks=(1, 2, 3, 4), history=history, exclude_history=False)
    assert m["hr@4"] == 1.0 and m["mrr"] == pytest.approx((1 / 4 + 1 / 3) / 2)


def test_coverage_popularity_and_batching():
    ev = RankingEvaluator(n_items=20, ks=(10,), popularity=torch.arange(20).float())
    s1 = torch.arange(20).float().unsqueeze(0)                 # top-10 = items 10..19 (pop 10..19)
    ev.update(s1.clone(), (torch.tensor([0]), torch.tensor([19])))            # rank 1
    ev.update(s1.flip(1).clone(), (torch.tensor([0]), torch.tensor([19])))    # top-10 = items 0..9; rank 20
    m = ev.compute("test/")
    assert m["test/hr@10"] == pytest.approx(0.5) and m["test/ndcg@10"] == pytest.approx(0.5)
    assert m["test/mrr"] == pytest.approx((1 + 1 / 20) / 2)
    assert m["test/coverage@10"] == pytest.approx(1.0)
    assert m["test/pop@10"] == pytest.approx((14.5 + 4.5) / 2)


def test_sampled_protocol_ranks_among_negatives_only():
    # target is the 51st best item of 201: full rank 51; against 100 of the other 200 about 26
    scores = torch.arange(201).float().flip(0).unsqueeze(0).repeat(64, 1)
    m = one_target(scores, [50] * 64, ks=(10,), sampled_negatives=100)
    assert m["hr@10"] == 0.0 and m["sampled_hr@10"] < 0.2
    assert 1 / 40 < m["sampled_mrr"] < 1 / 15


def test_sampled_negatives_exclude_history_and_masked_targets_miss():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    history = (torch.tensor([0, 0]), torch.tensor([0, 1]))
    # negatives can only be items 2 and 3, both above the target -> sampled rank 3
    assert one_target(scores, [4], ks=(1,), history=history, sampled_negatives=10)["sampled_mrr"] == pytest.approx(1 / 3)
    assert one_target(scores, [1], ks=(1,), history=history, sampled_negatives=10)["sampled_mrr"] == 0.0


def test_rows_without_a_relevant_item_are_an_error():
    with pytest.raises(ValueError, match="1 evaluation rows have no relevant item"):
        row_metrics(torch.tensor([1.0]), torch.tensor([0]), torch.tensor([1, 0]), (10,))


def test_candidate_lists_count_missed_relevant_items():
    # request 0: 3 candidates, relevant one at rank 2, 2 relevant in all (one missed by retrieval)
    # request 1: 2 candidates, relevant at rank 1, 1 relevant in all
    m = evaluate_candidate_lists(np.array([0.9, 0.5, 0.1, 0.2, 0.7]), np.array([0, 3, 5]),
                                 np.array([False, True, False, False, True]), np.array([2, 1]), ks=(1, 10))
    assert m["hr@10"] == 1.0 and m["hr@1"] == 0.5
    assert m["recall@10"] == pytest.approx((0.5 + 1) / 2)
    assert m["ndcg@10"] == pytest.approx(((1 / math.log2(3)) / (1 + 1 / math.log2(3)) + 1) / 2)


# ------------------------------------------------------------------ outside reference: trec_eval
pytrec_eval = pytest.importorskip("pytrec_eval")
TREC = {"success.1,3,10", "recall.1,3,10", "ndcg_cut.1,3,10", "recip_rank"}
NAMES = {"success_{k}": "hr@{k}", "recall_{k}": "recall@{k}", "ndcg_cut_{k}": "ndcg@{k}"}


def trec_metrics(order_scores: np.ndarray, relevant: list[set], masked: list[set]) -> dict[str, float]:
    """Mean trec_eval metrics; ``order_scores`` must be tie-free (the order to evaluate), masked items left out."""
    qrels = {f"q{r}": {f"d{i}": 1 for i in rel} for r, rel in enumerate(relevant)}
    run = {f"q{r}": {f"d{i}": float(order_scores[r, i]) for i in range(order_scores.shape[1]) if i not in masked[r]}
           for r in range(len(relevant))}
    per_q = pytrec_eval.RelevanceEvaluator(qrels, TREC).evaluate(run)
    out = {"mrr": np.mean([q["recip_rank"] for q in per_q.values()])}
    for k in KS:
        for trec, ours in NAMES.items():
            out[ours.format(k=k)] = np.mean([q[trec.format(k=k)] for q in per_q.values()])
    return out


def ours(scores: np.ndarray, relevant: list[set], history: list[set], exclude_history: bool) -> dict[str, float]:
    rr = [(r, i) for r, rel in enumerate(relevant) for i in sorted(rel)]
    hh = [(r, i) for r, h in enumerate(history) for i in sorted(h)]
    ev = RankingEvaluator(n_items=scores.shape[1], ks=KS, exclude_history=exclude_history)
    ev.update(torch.tensor(scores, dtype=torch.float64),
              (torch.tensor([r for r, _ in rr]), torch.tensor([i for _, i in rr])),
              (torch.tensor([r for r, _ in hh], dtype=torch.long), torch.tensor([i for _, i in hh], dtype=torch.long)))
    return ev.compute()


def tie_broken(scores: np.ndarray, relevant: list[set], where: str) -> np.ndarray:
    """Scores without ties: inside each tie group the relevant items go first (``optimistic``) or last."""
    n = scores.shape[1]
    out = np.empty_like(scores, dtype=np.float64)
    for r in range(len(scores)):
        rel = np.zeros(n, bool)
        rel[list(relevant[r])] = True
        # lexsort: last key is the primary one; ascending position = worse
        tie_key = rel if where == "optimistic" else ~rel
        order = np.lexsort((tie_key, scores[r]))          # ascending: worst first
        out[r, order] = np.arange(n)
    return out


def assert_close(a: dict, b: dict, keys) -> None:
    for k in keys:
        assert a[k] == pytest.approx(b[k], abs=1e-12), k


def random_case(rng, rows: int, n: int, integer: bool, max_rel: int):
    scores = rng.integers(0, 6, size=(rows, n)).astype(np.float64) if integer else rng.normal(size=(rows, n))
    relevant = [set(rng.choice(n, size=rng.integers(1, max_rel + 1), replace=False).tolist()) for _ in range(rows)]
    history = []
    for rel in relevant:                      # about a third of the relevant items are repeats of the history
        h = set(rng.choice(n, size=rng.integers(0, 8), replace=False).tolist())
        h |= {i for i in rel if rng.random() < 0.35}
        history.append(h)
    return scores, relevant, history


METRIC_KEYS = ["mrr"] + [f"{m}@{k}" for k in KS for m in ("hr", "recall", "ndcg")]


@pytest.mark.parametrize("exclude_history", [True, False])
@pytest.mark.parametrize("max_rel", [1, 6])
def test_agrees_with_trec_eval_without_ties(exclude_history, max_rel):
    rng = np.random.default_rng(7 + max_rel)
    scores, relevant, history = random_case(rng, rows=60, n=40, integer=False, max_rel=max_rel)
    masked = history if exclude_history else [set() for _ in history]
    assert_close(ours(scores, relevant, history, exclude_history), trec_metrics(scores, relevant, masked), METRIC_KEYS)


@pytest.mark.parametrize("exclude_history", [True, False])
@pytest.mark.parametrize("max_rel", [1, 6])
def test_ties_lie_between_the_pessimistic_and_optimistic_orders(exclude_history, max_rel):
    rng = np.random.default_rng(11 + max_rel)
    scores, relevant, history = random_case(rng, rows=80, n=30, integer=True, max_rel=max_rel)
    masked = history if exclude_history else [set() for _ in history]
    m = ours(scores, relevant, history, exclude_history)
    low = trec_metrics(tie_broken(scores, relevant, "pessimistic"), relevant, masked)
    high = trec_metrics(tie_broken(scores, relevant, "optimistic"), relevant, masked)
    for k in METRIC_KEYS:
        assert low[k] - 1e-12 <= m[k] <= high[k] + 1e-12, k
    assert high["hr@10"] > low["hr@10"]                  # the case really has ties that matter


def test_one_relevant_item_in_the_middle_of_its_tie_group_agrees_with_trec_eval():
    """With one relevant item whose tie group has an odd size, the expected position is a real position:
    order the group so the relevant item sits in its middle and trec_eval must give the same numbers."""
    rng = np.random.default_rng(3)
    scores, relevant, history = random_case(rng, rows=200, n=25, integer=True, max_rel=1)
    keep = []
    order = np.empty_like(scores)
    for r, rel in enumerate(relevant):
        (t,) = rel
        group = np.flatnonzero(scores[r] == scores[r, t])
        if len(group) % 2 == 0:
            continue
        keep.append(r)
        others = [i for i in group if i != t]
        half = len(others) // 2
        order[r] = scores[r]
        order[r, others[:half]] += 0.25                    # half of the tied items above the target ...
        order[r, others[half:]] -= 0.25                    # ... half below it
    assert len(keep) > 50
    s, rel, hist = scores[keep], [relevant[r] for r in keep], [set() for _ in keep]
    assert_close(ours(s, rel, hist, False), trec_metrics(order[keep], rel, hist), METRIC_KEYS)


def test_agrees_with_trec_eval_on_real_scores(data_root):
    """Popularity and item-cosine scores on real Online Retail baskets (many ties, repeats): each customer's
    last invoice is the relevant set, the earlier invoices the history."""
    path = data_root / "online-retail" / "online_retail_2010_2011.parquet"
    df = pd.read_parquet(path, columns=["InvoiceNo", "StockCode", "CustomerID", "InvoiceDate"]).head(40_000)
    df = df[df["CustomerID"].notna() & ~df["InvoiceNo"].astype(str).str.startswith("C")]
    items = {k: i for i, k in enumerate(df["StockCode"].astype(str).unique())}
    df = df.assign(item=df["StockCode"].astype(str).map(items))
    last = df.groupby("CustomerID")["InvoiceDate"].transform("max")
    users = [u for u, g in df.groupby("CustomerID") if (g["InvoiceDate"] < g["InvoiceDate"].max()).any()][:150]
    relevant, history = [], []
    for u in users:
        g = df[df["CustomerID"] == u]
        relevant.append(set(g.loc[g["InvoiceDate"] == last[g.index], "item"].tolist()))
        history.append(set(g.loc[g["InvoiceDate"] < last[g.index], "item"].tolist()))
    n = len(items)
    x = np.zeros((len(users), n))
    for r, h in enumerate(history):
        x[r, list(h)] = 1.0
    pop = np.bincount(df["item"], minlength=n).astype(np.float64)
    assert sum(len(rel & h) for rel, h in zip(relevant, history)) > 0            # repeats are in the case
    for scores in (np.tile(pop, (len(users), 1)), x @ (x.T @ x)):                 # popularity; item co-occurrence
        for exclude in (True, False):
            masked = history if exclude else [set() for _ in history]
            m = ours(scores, relevant, history, exclude)
            low = trec_metrics(tie_broken(scores, relevant, "pessimistic"), relevant, masked)
            high = trec_metrics(tie_broken(scores, relevant, "optimistic"), relevant, masked)
            for k in METRIC_KEYS:
                assert low[k] - 1e-12 <= m[k] <= high[k] + 1e-12, k
            # the same scores with ties broken at random (positions as scores: exact in any precision) agree exactly
            noise = np.random.default_rng(0).random(scores.shape)
            order = np.empty_like(scores)
            for r in range(len(scores)):
                order[r, np.lexsort((noise[r], scores[r]))] = np.arange(n)
            assert_close(ours(order, relevant, history, exclude), trec_metrics(order, relevant, masked), METRIC_KEYS)
