"""Retrieval losses shared by the sequence and two-tower models.

- ``full_softmax_ce``: cross-entropy over every item (the loss with which SASRec beats BERT4Rec,
  Klenitskiy & Vasilev, RecSys 2023). Exact; cost grows with the catalogue.
- ``sampled_softmax``: softmax over the positive and ``K`` negatives drawn from a proposal ``q``
  (popularity-based), with the logQ correction ``logit - log(K q)`` so that the estimate is not biased
  towards popular items (Bengio & Senécal 2008; Yi et al., RecSys 2019). For large catalogues.
- ``in_batch_softmax``: two-tower loss; the other positives in the batch are negatives (logQ-corrected
  with their sampling probability), optionally mixed with uniformly drawn random negatives
  (Yang et al., WWW 2020, "mixed negative sampling").

Item *indices* are ``item_id + 1`` (0 = padding) as everywhere in ``models``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def full_softmax_ce(hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean CE of ``hidden [P, d]`` against all items ``table [N+1, d]`` (row 0 padding); ``targets`` in 1..N."""
    logits = hidden @ table[1:].T
    return F.cross_entropy(logits.float(), targets - 1, label_smoothing=label_smoothing)


def sampled_softmax(
    hidden: torch.Tensor,
    table: torch.Tensor,
    targets: torch.Tensor,
    num_negatives: int,
    proposal: torch.Tensor,
    logq_correction: bool = True,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sampled softmax with ``num_negatives`` negatives shared by the batch.

    ``proposal``: float ``[N+1]`` sampling probabilities (entry 0 = 0). Negatives equal to a row's
    target are masked out of that row.
    """
    negs = torch.multinomial(proposal, num_negatives, replacement=True, generator=generator)  # [K]
    pos_logit = (hidden * table[targets]).sum(-1, keepdim=True)                              # [P, 1]
    neg_logit = hidden @ table[negs].T                                                        # [P, K]
    if logq_correction:
        logq = torch.log(proposal.clamp(min=1e-12) * num_negatives)
        pos_logit = pos_logit - logq[targets].unsqueeze(-1)
        neg_logit = neg_logit - logq[negs].unsqueeze(0)
    hit = negs.unsqueeze(0) == targets.unsqueeze(-1)
    neg_logit = neg_logit.masked_fill(hit, float("-inf"))
    logp = torch.log_softmax(torch.cat([pos_logit, neg_logit], dim=1).float(), dim=1)
    nll = -logp[:, 0]
    if label_smoothing <= 0:
        return nll.mean()
    # smoothing spreads over the candidates that are really there (masked hits have log p = -inf)
    valid = torch.cat([torch.ones_like(hit[:, :1]), ~hit], dim=1)
    smooth = -torch.where(valid, logp, torch.zeros_like(logp)).sum(1) / valid.sum(1)
    return ((1 - label_smoothing) * nll + label_smoothing * smooth).mean()


def in_batch_softmax(
    user: torch.Tensor,
    item: torch.Tensor,
    item_idx: torch.Tensor,
    log_q: torch.Tensor | None,
    random_item: torch.Tensor | None = None,
    random_log_q: float | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Two-tower softmax: row b's positive is ``item[b]``; other rows' items (and ``random_item``) are negatives.

    ``item_idx [B]`` identifies the items so that a repeated positive is not used as its own negative;
    ``log_q [B]``: log sampling probability of each in-batch item (None = no correction);
    ``random_item [M, d]``: uniformly drawn negatives, corrected with ``random_log_q`` (= log(M / N)).
    """
    logits = user @ item.T / temperature                                   # [B, B]
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    same = item_idx.unsqueeze(0) == item_idx.unsqueeze(1)
    eye = torch.eye(len(item_idx), dtype=torch.bool, device=user.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    if random_item is not None and len(random_item):
        rnd = user @ random_item.T / temperature
        if random_log_q is not None:
            rnd = rnd - random_log_q
        logits = torch.cat([logits, rnd], dim=1)
    labels = torch.arange(len(item_idx), device=user.device)
    return F.cross_entropy(logits.float(), labels)


def uniform_log_q(num_sampled: int, n_items: int) -> float:
    """logQ of ``num_sampled`` uniform draws from ``n_items``: log(num_sampled / n_items)."""
    return math.log(num_sampled / n_items)
