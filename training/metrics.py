"""The one evaluator of every ranking metric: retrieval models, baselines and the ranker.

Protocol (stated in every ``metrics.json`` by ``training.evaluate.protocol``):

- **Rows and relevant sets.** Each row (a user at an evaluation time) has a *set* of relevant items:
  one for leave-one-out and temporal, the purchase lines of the next basket(s) for the shop protocol
  (``features.splits.next_baskets``). Every row has at least one relevant item.
- **History mask, target-blind.** ``exclude_history=True`` ("discovery"): every item of the row's
  history is set to -inf, relevant items included, so a relevant item the user already had is a miss.
  ``exclude_history=False`` ("repeat-aware"): nothing is removed. The mask never looks at the targets.
- **Ties at their expected position.** An item's rank is ``1 + #items scoring strictly higher +
  (#other items with exactly its score) / 2``: the mean position of its tie group when ties are broken
  at random. A constant model ranks every item at ``(N + 1) / 2``. Masked (-inf) items never hit.
- **Non-finite scores are an error.** NaN or +-inf in a model's scores (before masking) raise
  ``NonFiniteScoresError`` naming the model and the number of rows affected.
- **Metrics** (per row, then the mean over rows; ``rank_i`` the rank of relevant item ``i``):
  ``hr@k`` = 1 if some ``rank_i <= k``; ``recall@k`` = #{``rank_i <= k``} / |relevant|;
  ``ndcg@k`` = sum over ``rank_i <= k`` of ``1 / log2(rank_i + 1)``, divided by the ideal
  ``sum_{j=1..min(k, |relevant|)} 1 / log2(j + 1)``; ``mrr`` = ``1 / min_i rank_i`` (0 if every relevant
  item is masked). With one relevant item ``recall@k == hr@k``.
- **Diagnostics**: ``coverage@10`` (catalogue coverage: distinct items in all top-10 lists / N), ``pop@10``
  (mean training count of the top-10 items), ``repeat_share`` (share of relevant items that are in the
  history, whatever the mask), ``n_users`` (rows).
- **Beyond accuracy** (``BeyondAccuracy``; over each row's top-10 list after the history mask, the list a
  user would be shown):
  ``ild@10`` intra-list diversity by category: the share of item pairs of a list whose categories differ,
  averaged over lists. Items without a category (code -1) take part in no pair (unknown is not counted as
  diverse); lists with no pair of categorised items are left out, and ``category_known@10`` states the
  share of recommended items that have a category. Only with ``item_category``.
  ``novelty@10``: mean self-information ``-log2 p(i)`` of the recommended items, ``p(i) = (count_i + 1) /
  (sum_j count_j + N)`` from the training counts (add-one smoothing: an item never seen in training is
  finite and the most novel).
  ``tail_share@10``: share of all top-10 impressions that go to the long tail, the items outside the top
  ``TAIL_HEAD_SHARE`` (20 %) of the catalogue by training count (``long_tail``; ties at the boundary go to
  the head, items never seen in training are tail).
  ``gini@10``: Gini index of the exposure counts of all N items over every top-10 list (0 = every item
  shown equally often, 1 = one item takes every impression).
  ``novelty@10`` and ``tail_share@10`` need ``popularity``; ``gini@10`` and ``coverage@10`` need nothing.
- **Sampled protocol** (older papers; secondary, only where every row has one relevant item): the
  relevant item is ranked, ties at their expected position, against ``sampled_negatives`` items drawn
  uniformly from the row's unmasked non-relevant items; reported as ``sampled_hr@k``, ``sampled_ndcg@k``,
  ``sampled_mrr``.

API (stable; callers: ``training.evaluate``, ``training.modules``, ``training.train``, ``training.ranker``).
Item columns are 0-based; ``rows``/``cols`` pairs are batch-local row indices and item columns::

    check_finite(scores, model, what="scores") -> None                  # raises NonFiniteScoresError
    mask_history(scores, rows, cols) -> None                            # in place, target-blind
    expected_ranks(scores, rows, cols) -> Tensor[P] float64             # rank of each (row, col) pair
    row_metrics(ranks, rows, n_relevant, ks) -> dict[str, Tensor[B]]    # per-row hr/recall/ndcg@k, mrr
    RankingEvaluator(n_items, ks=(10, 20, 50, 100), model="model", exclude_history=True,
                     popularity=None, sampled_negatives=0, seed=0, item_category=None)
        .update(scores [B, N], relevant=(rows, cols), history=(rows, cols) | None)  # masks scores in place
        .compute(prefix="") -> dict[str, float]
    evaluate_candidate_lists(scores [M], offsets [R + 1], relevant [M] bool, n_relevant [R],
                             ks=(10,), model="ranker", items=None, n_items=None, popularity=None,
                             item_category=None) -> dict[str, float]    # ragged re-ranked lists
    BeyondAccuracy(n_items, popularity=None, item_category=None, k=10)
        .update(top [B, <=k] item columns, -1 = none) ; .compute() -> dict[str, float]
    long_tail(popularity) -> Tensor[N] bool ; gini(counts) -> float
    category_codes(categories) -> np.ndarray int64 (-1 = no category)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

NEG_INF = float("-inf")
TIES = "expected position (rank = 1 + #strictly higher + #other items with an equal score / 2)"
_CHUNK_ELEMS = 1 << 24          # score elements compared at once in expected_ranks (bounds memory)
TAIL_HEAD_SHARE = 0.2           # the head: the top 20 % of items by training count; the rest is the long tail
BEYOND_K = 10                   # beyond-accuracy figures are of the top-10 list

Pairs = tuple[torch.Tensor, torch.Tensor]


class NonFiniteScoresError(ValueError):
    """A model produced NaN or infinite scores; the message names the model and the number of bad rows."""


def check_finite(scores: torch.Tensor, model: str, what: str = "scores") -> None:
    """Raise ``NonFiniteScoresError`` when any of ``scores`` (``[B, N]`` or flat) is NaN or +-inf."""
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        n_rows = int(bad.reshape(len(scores), -1).any(1).sum()) if scores.ndim > 1 else int(bad.sum())
        unit = "rows" if scores.ndim > 1 else "entries"
        raise NonFiniteScoresError(
            f"model {model!r} produced non-finite {what} (NaN or inf) in {n_rows} of {len(scores)} {unit}"
        )


def mask_history(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
    """Set ``scores[rows, cols]`` to -inf in place: every history item, whatever the targets are."""
    scores[rows, cols] = NEG_INF


def unique_pairs(rows: torch.Tensor, cols: torch.Tensor, n_cols: int) -> Pairs:
    """``(rows, cols)`` without duplicate pairs, sorted by row then column."""
    key = torch.unique(rows.long() * n_cols + cols.long())
    return key // n_cols, key % n_cols


def expected_ranks(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``scores[rows, cols]`` within its row, ties at their expected position; +inf where
    the score is -inf (masked). ``scores [B, N]`` must be finite or -inf."""
    values = scores[rows, cols]
    out = torch.empty(len(rows), dtype=torch.float64, device=scores.device)
    step = max(1, _CHUNK_ELEMS // max(1, scores.shape[1]))
    for a in range(0, len(rows), step):
        block = scores[rows[a:a + step]]
        v = values[a:a + step].unsqueeze(1)
        higher = (block > v).sum(1)
        equal = (block == v).sum(1)                 # includes the item itself
        out[a:a + step] = higher.double() + (equal.double() + 1.0) / 2.0
    out[values == NEG_INF] = float("inf")
    return out


def _discounts(k: int, device) -> torch.Tensor:
    """``[k + 1]``: the ideal DCG of 0..k relevant items."""
    d = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=device))
    return torch.cat([torch.zeros(1, dtype=torch.float64, device=device), d.cumsum(0)])


def row_metrics(ranks: torch.Tensor, rows: torch.Tensor, n_relevant: torch.Tensor,
                ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-row ``hr@k``, ``recall@k``, ``ndcg@k`` and ``mrr`` from the ranks of the relevant items.

    ``ranks [P]`` (from ``expected_ranks``; inf = masked) of the pairs whose rows are ``rows [P]``;
    ``n_relevant [B]`` the size of each row's relevant set (masked ones included)."""
    n_rel = n_relevant.to(ranks.device).long()
    if bool((n_rel <= 0).any()):
        raise ValueError(f"{int((n_rel <= 0).sum())} evaluation rows have no relevant item")
    b = len(n_rel)
    rows = rows.to(ranks.device)
    out = {}
    first = torch.full((b,), float("inf"), dtype=torch.float64, device=ranks.device)
    first = first.scatter_reduce(0, rows, ranks, reduce="amin")
    out["mrr"] = torch.where(torch.isfinite(first), 1.0 / first, torch.zeros_like(first))
    ideal = _discounts(max(ks), ranks.device)
    gain = torch.where(torch.isfinite(ranks), 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
    for k in ks:
        hit = (ranks <= k).double()
        n_hit = torch.zeros(b, dtype=torch.float64, device=ranks.device).index_add_(0, rows, hit)
        dcg = torch.zeros(b, dtype=torch.float64, device=ranks.device).index_add_(0, rows, gain * hit)
        out[f"hr@{k}"] = (n_hit > 0).double()
        out[f"recall@{k}"] = n_hit / n_rel
        out[f"ndcg@{k}"] = dcg / ideal[n_rel.clamp(max=k)]
    return out


def category_codes(categories) -> np.ndarray:
    """Dense int64 codes of a column of category labels (one per item column); missing/empty -> -1."""
    values = np.asarray(list(categories), dtype=object)
    known = np.array([v is not None and not (isinstance(v, float) and np.isnan(v)) and str(v) != "" for v in values],
                     dtype=bool)
    out = np.full(len(values), -1, np.int64)
    if known.any():
        _, codes = np.unique(values[known].astype(str), return_inverse=True)
        out[known] = codes
    return out


def long_tail(popularity: torch.Tensor, head_share: float = TAIL_HEAD_SHARE) -> torch.Tensor:
    """``[N]`` bool: True for long-tail items, those outside the top ``head_share`` of items by training count.
    The head is the ``ceil(head_share * N)`` most counted items plus any item tied with the last of them;
    items with a count of 0 are always tail."""
    pop = torch.as_tensor(popularity).double().reshape(-1).cpu()
    n = len(pop)
    if n == 0:
        return torch.zeros(0, dtype=torch.bool)
    n_head = max(1, int(np.ceil(head_share * n)))
    threshold = pop.sort(descending=True).values[n_head - 1]
    return ~((pop >= threshold) & (pop > 0))


def gini(counts) -> float:
    """Gini index of non-negative ``counts`` (0 = equal, -> 1 = concentrated on one entry)."""
    x = np.sort(np.asarray(counts, dtype=np.float64).reshape(-1))
    n, total = len(x), float(x.sum()) if len(x) else 0.0
    if n == 0 or total <= 0:
        return 0.0
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


@dataclass
class BeyondAccuracy:
    """Diversity, novelty, coverage and exposure of recommendation lists (definitions: module docstring).

    ``update(top)`` takes ``[B, <= k]`` item columns of each list, best first (-1 = an empty slot);
    ``compute()`` returns ``coverage@k``, ``gini@k`` and, with ``popularity``, ``novelty@k`` and
    ``tail_share@k``; with ``item_category`` (``[N]`` int codes, -1 = none), ``ild@k`` and ``category_known@k``."""

    n_items: int
    popularity: torch.Tensor | None = None
    item_category: torch.Tensor | None = None
    k: int = BEYOND_K
    _exposure: torch.Tensor | None = None
    _info: torch.Tensor | None = None
    _tail: torch.Tensor | None = None
    _sums: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._exposure = torch.zeros(self.n_items, dtype=torch.float64)
        if self.popularity is not None:
            pop = torch.as_tensor(self.popularity).double().reshape(-1).cpu()
            if len(pop) != self.n_items:
                raise ValueError(f"popularity has {len(pop)} entries, the evaluator {self.n_items} items")
            p = (pop.clamp(min=0) + 1.0) / (float(pop.clamp(min=0).sum()) + self.n_items)
            self._info = -torch.log2(p)
            self._tail = long_tail(pop)
        if self.item_category is not None:
            cat = torch.as_tensor(self.item_category).long().reshape(-1).cpu()
            if len(cat) != self.n_items:
                raise ValueError(f"item_category has {len(cat)} entries, the evaluator {self.n_items} items")
            self.item_category = cat

    def _add(self, name: str, value: float) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + value

    def update(self, top: torch.Tensor) -> None:
        top = torch.as_tensor(top).long().cpu()[:, : self.k]
        shown = top >= 0
        ids = top[shown]
        self._exposure += torch.bincount(ids, minlength=self.n_items).double()
        self._add("impressions", float(len(ids)))
        self._add("lists", float(len(top)))
        if self._info is not None:
            self._add("info", float(self._info[ids].sum()))
            self._add("tail", float(self._tail[ids].sum()))
        if self.item_category is not None and top.shape[1] > 1:
            cat = torch.where(shown, self.item_category[top.clamp(min=0)], torch.full_like(top, -1))
            known = cat >= 0
            self._add("cat_known", float(known.sum()))
            pair = known.unsqueeze(2) & known.unsqueeze(1)
            pair &= torch.ones(top.shape[1], top.shape[1], dtype=torch.bool).triu(1)
            differ = (cat.unsqueeze(2) != cat.unsqueeze(1)) & pair
            n_pairs = pair.sum((1, 2)).double()
            has = n_pairs > 0
            self._add("ild", float((differ.sum((1, 2)).double()[has] / n_pairs[has]).sum()))
            self._add("ild_lists", float(has.sum()))

    def compute(self) -> dict[str, float]:
        if not self._sums.get("lists"):
            return {}
        k, n_imp = self.k, max(1.0, self._sums["impressions"])
        out = {f"coverage@{k}": float((self._exposure > 0).sum()) / max(1, self.n_items),
               f"gini@{k}": gini(self._exposure.numpy())}
        if self._info is not None:
            out[f"novelty@{k}"] = self._sums["info"] / n_imp
            out[f"tail_share@{k}"] = self._sums["tail"] / n_imp
        if self.item_category is not None:
            out[f"category_known@{k}"] = self._sums.get("cat_known", 0.0) / n_imp
            if self._sums.get("ild_lists"):
                out[f"ild@{k}"] = self._sums["ild"] / self._sums["ild_lists"]
        return out


@dataclass
class RankingEvaluator:
    """Full-ranking metrics over batches of score matrices; ``compute()`` averages over every row seen."""

    n_items: int
    ks: tuple[int, ...] = (10, 20, 50, 100)
    model: str = "model"                         # named in the error on non-finite scores
    exclude_history: bool = True                 # True: discovery (history masked); False: repeat-aware
    popularity: torch.Tensor | None = None       # [n_items] training counts (column-aligned with scores)
    sampled_negatives: int = 0                   # > 0: also the sampled protocol (one relevant item per row)
    seed: int = 0
    item_category: torch.Tensor | None = None    # [n_items] category codes (-1 = none): intra-list diversity
    _beyond: BeyondAccuracy | None = None
    _sums: dict = field(default_factory=dict)
    _rows: int = 0
    _relevant: int = 0
    _repeats: int = 0
    _pop_sum: float = 0.0
    _sampled: list = field(default_factory=list)
    _sampled_skipped: bool = False

    def update(self, scores: torch.Tensor, relevant: Pairs, history: Pairs | None = None) -> None:
        """One batch: ``scores [B, n_items]`` straight from the model (masked here, in place when
        ``exclude_history``); ``relevant`` and ``history`` are ``(rows, cols)`` pairs of the batch."""
        if scores.shape[1] != self.n_items:
            raise ValueError(f"scores have {scores.shape[1]} columns, the evaluator {self.n_items} items")
        scores = scores if scores.dtype == torch.float64 else scores.float()   # fp64 kept: no rounding ties
        check_finite(scores, self.model)
        dev = scores.device
        b = scores.shape[0]
        rows, cols = unique_pairs(relevant[0].to(dev), relevant[1].to(dev), self.n_items)
        n_rel = torch.bincount(rows, minlength=b)
        if history is not None:
            h_rows, h_cols = history[0].to(dev), history[1].to(dev)
            self._repeats += int(torch.isin(rows * self.n_items + cols, h_rows.long() * self.n_items + h_cols.long()).sum())
            if self.exclude_history:
                mask_history(scores, h_rows, h_cols)
        ranks = expected_ranks(scores, rows, cols)
        for name, v in row_metrics(ranks, rows, n_rel, tuple(self.ks)).items():
            self._sums[name] = self._sums.get(name, 0.0) + float(v.sum())
        self._rows += b
        self._relevant += len(rows)
        top_scores, top = scores.topk(min(BEYOND_K, self.n_items), dim=1)
        if self._beyond is None:
            self._beyond = BeyondAccuracy(self.n_items, self.popularity, self.item_category)
        self._beyond.update(torch.where(top_scores > NEG_INF, top, torch.full_like(top, -1)))   # masked: not shown
        if self.popularity is not None:
            self._pop_sum += float(self.popularity.to(dev)[top].float().mean(1).sum())
        if self.sampled_negatives > 0:
            if bool((n_rel == 1).all()):
                self._sampled.append(self._sampled_ranks(scores, cols).cpu())
            else:
                self._sampled_skipped = True

    def _sampled_ranks(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Rank of each row's one relevant item among ``sampled_negatives`` items drawn uniformly without
        replacement from the row's items that are neither masked nor relevant (ties: expected position)."""
        g = torch.Generator(device=scores.device).manual_seed(self.seed + sum(len(r) for r in self._sampled))
        keys = torch.rand(scores.shape, generator=g, device=scores.device)
        keys[scores == NEG_INF] = -1.0
        keys.scatter_(1, targets.unsqueeze(1), -1.0)
        top_keys, cand = keys.topk(min(self.sampled_negatives, scores.shape[1]), dim=1)
        use = top_keys >= 0
        t = scores.gather(1, targets.unsqueeze(1))
        neg = scores.gather(1, cand)
        rank = ((neg > t) & use).sum(1).double() + 1.0 + ((neg == t) & use).sum(1).double() / 2.0
        return torch.where(t.squeeze(1) == NEG_INF, torch.full_like(rank, float("inf")), rank)

    def compute(self, prefix: str = "") -> dict[str, float]:
        if not self._rows:
            return {}
        out = {name: total / self._rows for name, total in self._sums.items()}
        out.update(self._beyond.compute())          # coverage@10, gini@10, novelty@10, tail_share@10, ild@10
        if self.popularity is not None:
            out["pop@10"] = self._pop_sum / self._rows
        out["repeat_share"] = self._repeats / max(1, self._relevant)
        if self._sampled and not self._sampled_skipped:
            ranks = torch.cat(self._sampled)
            s = row_metrics(ranks, torch.arange(len(ranks)), torch.ones(len(ranks), dtype=torch.long), (1, 5, 10))
            out.update({f"sampled_{k}": float(v.mean()) for k, v in s.items() if not k.startswith("recall")})
        out["n_users"] = float(self._rows)
        return {f"{prefix}{k}": v for k, v in out.items()}


def evaluate_candidate_lists(scores, offsets, relevant, n_relevant, ks: tuple[int, ...] = (10,),
                             model: str = "ranker", items=None, n_items: int | None = None,
                             popularity=None, item_category=None) -> dict[str, float]:
    """Metrics of ragged re-ranked lists: request ``r`` owns ``scores[offsets[r]:offsets[r + 1]]`` and the
    matching ``relevant`` flags; ``n_relevant[r]`` (>= its flags) counts every relevant item of the request,
    also those missing from its list, so they count against recall and NDCG. Same definitions as above.
    With ``items`` (the item column of each candidate) and ``n_items``, also the beyond-accuracy figures of
    each request's top-10 by score (``BeyondAccuracy``; ``popularity``/``item_category`` over ``n_items``)."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64).reshape(-1)
    check_finite(s, model)
    off = torch.as_tensor(np.asarray(offsets), dtype=torch.long)
    rel = torch.as_tensor(np.asarray(relevant)).reshape(-1).bool()
    n_rel = torch.as_tensor(np.asarray(n_relevant), dtype=torch.long)
    sizes = off[1:] - off[:-1]
    r = len(sizes)
    row_of = torch.repeat_interleave(torch.arange(r), sizes)
    col_of = torch.arange(len(s)) - off[:-1][row_of]
    padded = torch.full((r, int(sizes.max()) if r else 0), NEG_INF, dtype=torch.float64)
    padded[row_of, col_of] = s
    flag_count = torch.bincount(row_of[rel], minlength=r)
    if bool((flag_count > n_rel).any()):
        raise ValueError("n_relevant is smaller than the number of relevant flags in some request")
    ranks = expected_ranks(padded, row_of[rel], col_of[rel])
    per_row = row_metrics(ranks, row_of[rel], n_rel, tuple(ks))
    out = {k: float(v.mean()) for k, v in per_row.items()}
    if items is not None and r:
        if n_items is None:
            raise ValueError("evaluate_candidate_lists: items given without n_items")
        ids = torch.as_tensor(np.asarray(items), dtype=torch.long).reshape(-1)
        if len(ids) != len(s):
            raise ValueError(f"evaluate_candidate_lists: {len(ids)} items for {len(s)} scores")
        id_pad = torch.full(padded.shape, -1, dtype=torch.long)
        id_pad[row_of, col_of] = ids
        kk = min(BEYOND_K, padded.shape[1])
        order = padded.topk(kk, dim=1).indices
        top = torch.where(padded.gather(1, order) > NEG_INF, id_pad.gather(1, order), torch.full_like(order, -1))
        ba = BeyondAccuracy(int(n_items), None if popularity is None else torch.as_tensor(np.asarray(popularity)),
                            None if item_category is None else torch.as_tensor(np.asarray(item_category)))
        ba.update(top)
        out.update(ba.compute())
    return out
