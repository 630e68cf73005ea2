"""Ranking metrics for next-item retrieval, computed from full score matrices in batches.

Main protocol (full ranking): every item is scored; the items of the user's training history are set
to -inf (``exclude_history``; the held-out target itself is never excluded); the target's rank is
``1 + #items scoring strictly higher``. From the rank:

- ``hr@k``   = 1 if rank <= k
- ``ndcg@k`` = 1 / log2(rank + 1) if rank <= k (one relevant item, so IDCG = 1)
- ``mrr``    = 1 / rank
- ``coverage@10`` = distinct items in all top-10 lists / number of items
- ``pop@10`` = mean training popularity (count) of the recommended top-10 items

Sampled protocol (older papers only): the target is ranked against ``n`` uniformly drawn items that are
neither the target nor in the history.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

NEG_INF = float("-inf")


def ranks_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``targets [B]`` (column indices) in ``scores [B, N]`` (higher = better)."""
    t = scores.gather(1, targets.unsqueeze(1))
    return (scores > t).sum(1) + 1


def metrics_from_ranks(ranks: torch.Tensor, ks: tuple[int, ...] = (10, 20, 50, 100)) -> dict[str, float]:
    """Mean HR@k, NDCG@k and MRR of 1-based ``ranks``."""
    r = ranks.double()
    out = {"mrr": (1.0 / r).mean().item()}
    for k in ks:
        hit = r <= k
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r)).mean().item()
    return out


def mask_history(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor) -> None:
    """Set ``scores[rows, cols]`` to -inf in place, except each row's target (``targets`` are column indices)."""
    keep = scores.gather(1, targets.unsqueeze(1)).clone()
    scores[rows, cols] = NEG_INF
    scores.scatter_(1, targets.unsqueeze(1), keep)


@dataclass
class RankingAccumulator:
    """Sums per-batch ranks and top-k lists; ``compute()`` returns the metrics over all rows seen."""

    n_items: int
    ks: tuple[int, ...] = (10, 20, 50, 100)
    popularity: torch.Tensor | None = None       # [n_items] counts (column-aligned with scores)
    sampled_negatives: int = 0                   # > 0: also compute the sampled protocol
    seed: int = 0
    _ranks: list = field(default_factory=list)
    _sampled_ranks: list = field(default_factory=list)
    _top10_counts: torch.Tensor | None = None
    _pop_sum: float = 0.0

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """``scores [B, n_items]`` with history already masked; ``targets [B]`` column indices."""
        scores = scores.float()
        self._ranks.append(ranks_of_targets(scores, targets).cpu())
        top = scores.topk(min(10, scores.shape[1]), dim=1).indices
        counts = torch.bincount(top.reshape(-1), minlength=self.n_items)
        self._top10_counts = counts if self._top10_counts is None else self._top10_counts + counts
        if self.popularity is not None:
            self._pop_sum += self.popularity.to(scores.device)[top].float().mean(1).sum().item()
        if self.sampled_negatives > 0:
            self._sampled_ranks.append(self._sampled_rank(scores, targets).cpu())

    def _sampled_rank(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Rank among ``sampled_negatives`` items drawn uniformly without replacement from the
        items that are neither masked (history) nor the target."""
        g = torch.Generator(device=scores.device).manual_seed(self.seed + sum(len(r) for r in self._sampled_ranks))
        keys = torch.rand(scores.shape, generator=g, device=scores.device)
        keys[~torch.isfinite(scores)] = -1.0
        keys.scatter_(1, targets.unsqueeze(1), -1.0)
        k = min(self.sampled_negatives, scores.shape[1])
        top_keys, cand = keys.topk(k, dim=1)
        use = top_keys >= 0
        t = scores.gather(1, targets.unsqueeze(1))
        return ((scores.gather(1, cand) > t) & use).sum(1) + 1

    def compute(self, prefix: str = "") -> dict[str, float]:
        if not self._ranks:
            return {}
        ranks = torch.cat(self._ranks)
        out = metrics_from_ranks(ranks, self.ks)
        out["coverage@10"] = (self._top10_counts > 0).sum().item() / self.n_items
        if self.popularity is not None:
            out["pop@10"] = self._pop_sum / len(ranks)
        if self._sampled_ranks:
            s = metrics_from_ranks(torch.cat(self._sampled_ranks), (1, 5, 10))
            out.update({f"sampled_{k}": v for k, v in s.items()})
        out["n_users"] = float(len(ranks))
        return {f"{prefix}{k}": v for k, v in out.items()}


def ndcg_at(rank: int, k: int) -> float:
    """NDCG@k of one 1-based rank (for hand checks)."""
    return 1.0 / math.log2(rank + 1) if rank <= k else 0.0
