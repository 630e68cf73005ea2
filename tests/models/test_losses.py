"""Losses against hand-computed values."""
import math

import torch
import torch.nn.functional as F

from models.losses import full_softmax_ce, in_batch_softmax, sampled_softmax, uniform_log_q


def test_full_softmax_ce_matches_manual():
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])   # row 0 = padding
    hidden = torch.tensor([[2.0, 0.0]])
    # logits over items 1..3 = [2, 0, 2]; target item 2 (index 2) -> CE = -log(e^0 / (e^2 + 1 + e^2))
    want = -math.log(1 / (2 * math.e ** 2 + 1))
    got = full_softmax_ce(hidden, table, torch.tensor([2]))
    assert abs(got.item() - want) < 1e-5


def test_label_smoothing_changes_loss():
    table = torch.randn(6, 4)
    h = torch.randn(3, 4)
    t = torch.tensor([1, 2, 5])
    assert full_softmax_ce(h, table, t, 0.1).item() != full_softmax_ce(h, table, t).item()


def test_sampled_softmax_masks_accidental_hits_and_uniform_logq_is_a_constant_shift():
    torch.manual_seed(0)
    table = torch.randn(11, 4)
    h = torch.randn(5, 4)
    t = torch.tensor([1, 2, 3, 4, 5])
    q = torch.ones(11)
    q[0] = 0
    q = q / q.sum()
    g1 = torch.Generator().manual_seed(1)
    g2 = torch.Generator().manual_seed(1)
    a = sampled_softmax(h, table, t, 50, q, logq_correction=True, generator=g1)
    b = sampled_softmax(h, table, t, 50, q, logq_correction=False, generator=g2)
    assert torch.allclose(a, b, atol=1e-5)       # uniform q: the correction shifts all logits equally
    # hand check with one negative that equals the target: it must be ignored (loss = 0)
    q1 = torch.zeros(11)
    q1[3] = 1.0
    loss = sampled_softmax(h[2:3], table, torch.tensor([3]), 4, q1, logq_correction=False)
    assert loss.item() < 1e-6


def test_sampled_softmax_logq_penalises_popular_negatives():
    table = torch.tensor([[0.0], [1.0], [1.0]])
    h = torch.tensor([[1.0]])
    q = torch.tensor([0.0, 0.1, 0.9])
    g = torch.Generator().manual_seed(0)
    # negatives drawn are mostly item 2 (q=0.9); with the correction item 2's logit is lowered more
    with_c = sampled_softmax(h, table, torch.tensor([1]), 8, q, True, generator=g)
    g = torch.Generator().manual_seed(0)
    without = sampled_softmax(h, table, torch.tensor([1]), 8, q, False, generator=g)
    assert with_c.item() < without.item()


def test_in_batch_softmax_hand_value_and_duplicate_masking():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    i = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = in_batch_softmax(u, i, torch.tensor([1, 2]), None)
    want = -math.log(math.e / (math.e + 1))
    assert abs(loss.item() - want) < 1e-5
    # the same item twice: it is not its own negative -> each row sees only itself
    dup = in_batch_softmax(u, i, torch.tensor([7, 7]), None)
    assert dup.item() < 1e-6
    # logQ: subtracting log q of the positives column-wise
    lq = torch.log(torch.tensor([0.5, 0.5]))
    assert abs(in_batch_softmax(u, i, torch.tensor([1, 2]), lq).item() - want) < 1e-5


def test_in_batch_softmax_with_random_negatives_adds_columns():
    u = torch.tensor([[1.0, 0.0]])
    i = torch.tensor([[1.0, 0.0]])
    rnd = torch.tensor([[1.0, 0.0]])
    loss = in_batch_softmax(u, i, torch.tensor([1]), None, rnd, uniform_log_q(1, 1))
    assert abs(loss.item() - math.log(2)) < 1e-5
    assert F.cross_entropy(torch.tensor([[1.0, 1.0]]), torch.tensor([0])).item() == loss.item()


def test_sampled_softmax_with_label_smoothing_and_accidental_hits_is_finite():
    torch.manual_seed(0)
    table = torch.randn(4, 3)
    h = torch.randn(6, 3)
    t = torch.tensor([1, 2, 3, 1, 2, 3])
    q = torch.tensor([0.0, 0.4, 0.3, 0.3])
    loss = sampled_softmax(h, table, t, 16, q, True, label_smoothing=0.1)   # hits are certain here
    assert torch.isfinite(loss)
    # no smoothing and no hits: equals plain cross-entropy over [positive, negatives]
    q1 = torch.tensor([0.0, 0.0, 0.0, 1.0])
    got = sampled_softmax(h[:1], table, torch.tensor([1]), 2, q1, False)
    logits = torch.stack([h[0] @ table[1], h[0] @ table[3], h[0] @ table[3]]).unsqueeze(0)
    assert torch.allclose(got, F.cross_entropy(logits, torch.tensor([0])), atol=1e-5)
