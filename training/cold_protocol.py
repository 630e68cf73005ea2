"""The cold-item protocol: how items never seen in training rank once the content tower embeds them.

1. **Hold-out.** A seeded random ``cold_share`` (10 %) of the items that have interactions is held out
   with every interaction they have; the sequence model (SASRec, ``models.sasrec``, sampled softmax with
   logQ correction over the warm items, a small fixed configuration: nothing is tuned here) trains on the
   remaining "warm" sequences.
2. **Content tower.** ``training.cold_items.fit_content_tower`` regresses the trained embeddings of the
   warm items from their content tokens; the cold items get the tower's embedding.
3. **Recommendation rows.** For each user who interacted with a cold item after at least one warm item:
   the input is the user's warm items before their first cold interaction (the last ``max_len``), the
   relevant item is that cold item, the ranking is over all items (warm + cold), the history is masked
   (discovery, target-blind): ``training.metrics.RankingEvaluator``, so recall@50, NDCG@10 and the
   beyond-accuracy figures are defined as everywhere else.
4. **Similar-item rows.** For each cold item with a warm neighbour in some sequence: the query is the cold
   item's embedding, the relevant set the warm items right before or after it in any user's sequence, the
   ranking over all items but the query item.

Cold-item embeddings compared: ``content`` (the tower); ``random`` (Gaussian vectors with the warm items'
per-dimension mean and spread); ``untrained`` (the sequence model's own rows for items it never saw as a
target: what an export without the tower serves); ``popularity`` (items scored by training count: cold
items have none); for similar items also ``category_popular`` (the most popular items of the query's
category first).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from models.losses import sampled_softmax
from models.sasrec import SASRec, SASRecConfig
from training.cold_items import FitSettings, fit_content_tower
from training.data import left_padded
from training.metrics import RankingEvaluator, category_codes

log = logging.getLogger(__name__)
KS = (10, 50)


@dataclass(frozen=True)
class ProtocolSettings:
    cold_share: float = 0.1
    seed: int = 0
    max_len: int = 20
    hidden: int = 64
    blocks: int = 2
    dropout: float = 0.3
    epochs: int = 15
    batch_size: int = 256
    lr: float = 1e-3
    negatives: int = 256
    max_seconds: float = 600.0          # training stops after this many seconds (a CPU budget)
    tower_epochs: int = 60


@dataclass
class ColdSplit:
    cold: np.ndarray            # bool [N]
    seqs: list[np.ndarray]      # every user's full item sequence (item ids, in time order)


def make_split(events: pd.DataFrame, n_items: int, share: float, seed: int) -> ColdSplit:
    """A seeded random ``share`` of the items with interactions, and every user's sequence."""
    ev = events.sort_values(["user_id", "ts", "src_row"], kind="stable")
    seen = np.unique(ev["item_id"].to_numpy())
    rng = np.random.default_rng(seed)
    cold = np.zeros(n_items, bool)
    cold[rng.choice(seen, size=int(round(share * len(seen))), replace=False)] = True
    seqs = [g.to_numpy(np.int64) for _, g in ev.groupby("user_id", sort=True)["item_id"]]
    return ColdSplit(cold, seqs)


def train_sequence_model(warm_seqs: list[np.ndarray], n_items: int, s: ProtocolSettings) -> tuple[SASRec, dict]:
    """SASRec on the warm sequences (every position a target; sampled softmax, negatives drawn from the warm items
    by popularity^0.75 with logQ correction), for ``s.epochs`` or until ``s.max_seconds``."""
    torch.manual_seed(s.seed)
    keep = [q for q in warm_seqs if len(q) >= 2]
    users = np.repeat(np.arange(len(keep)), [len(q) for q in keep])
    items = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    seqs = torch.from_numpy(left_padded(users, items, s.max_len + 1, np.arange(len(keep))))
    model = SASRec(SASRecConfig(n_items=n_items, max_len=s.max_len, hidden=s.hidden, blocks=s.blocks, heads=1,
                                dropout=s.dropout, emb_dropout=s.dropout))
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    proposal = torch.zeros(n_items + 1)
    proposal[1:] = torch.from_numpy(np.bincount(items, minlength=n_items).astype(np.float32)) ** 0.75
    proposal /= proposal.sum()
    gen = torch.Generator().manual_seed(s.seed)
    t0, epochs, last = time.perf_counter(), 0, float("nan")
    for _ in range(s.epochs):
        model.train()
        for idx in torch.randperm(len(seqs), generator=gen).split(s.batch_size):
            batch = seqs[idx]
            hidden = model(batch[:, :-1])
            target = batch[:, 1:]
            real = target > 0
            loss = sampled_softmax(hidden[real], model.item_table(), target[real], s.negatives, proposal,
                                   generator=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            last = float(loss)
        epochs += 1
        if time.perf_counter() - t0 > s.max_seconds:
            break
    model.eval()
    return model, {"epochs": epochs, "train_s": time.perf_counter() - t0, "final_loss": last,
                   "train_sequences": int(len(seqs))}


def _evaluate(query: torch.Tensor, table: torch.Tensor, rel: np.ndarray, hist_rows, hist_cols, pop, cats,
              scores_fn=None) -> dict:
    """Full-ranking metrics of ``query [R, d] @ table.T`` (or ``scores_fn(a, b)``) against one relevant item per row."""
    ev = RankingEvaluator(n_items=table.shape[0], ks=KS, model="cold", exclude_history=True, popularity=pop,
                          item_category=cats)
    hr, hc = torch.as_tensor(hist_rows), torch.as_tensor(hist_cols)
    for a in range(0, len(rel), 1024):
        b = min(a + 1024, len(rel))
        scores = scores_fn(a, b) if scores_fn is not None else query[a:b] @ table.T
        sel = (hr >= a) & (hr < b)
        ev.update(scores.clone(), (torch.arange(b - a), torch.as_tensor(rel[a:b])), (hr[sel] - a, hc[sel]))
    return ev.compute()


def _rec_rows(split: ColdSplit, max_len: int):
    """(inputs [R, max_len] item indices, relevant cold item ids, history (row, item) pairs)."""
    inputs, rel, h_rows, h_cols = [], [], [], []
    for seq in split.seqs:
        is_cold = split.cold[seq]
        if not is_cold.any():
            continue
        t = int(np.argmax(is_cold))
        before = seq[:t][~split.cold[seq[:t]]]
        if len(before) == 0:
            continue
        row = np.zeros(max_len, np.int64)
        last = before[-max_len:]
        row[max_len - len(last):] = last + 1
        h = np.unique(before)
        h_rows.append(np.full(len(h), len(rel)))
        h_cols.append(h)
        inputs.append(row)
        rel.append(seq[t])
    return (torch.from_numpy(np.stack(inputs)), np.asarray(rel, np.int64), np.concatenate(h_rows),
            np.concatenate(h_cols))


def _similar_rows(split: ColdSplit):
    """(query cold item ids, (row, relevant warm item) pairs): warm items right before/after each cold item."""
    nb: dict[int, set] = {}
    for seq in split.seqs:
        for i, it in enumerate(seq.tolist()):
            if not split.cold[it]:
                continue
            for j in (i - 1, i + 1):
                if 0 <= j < len(seq) and not split.cold[seq[j]]:
                    nb.setdefault(it, set()).add(int(seq[j]))
    queries = np.asarray(sorted(nb), np.int64)
    rows = np.concatenate([np.full(len(nb[q]), r) for r, q in enumerate(queries)])
    cols = np.concatenate([sorted(nb[q]) for q in queries])
    return queries, rows, cols


def _evaluate_similar(q_emb: torch.Tensor | None, table: torch.Tensor, queries, rel_rows, rel_cols, pop, cats,
                      prior: torch.Tensor | None = None) -> dict:
    ev = RankingEvaluator(n_items=table.shape[0], ks=KS, model="similar", exclude_history=True, popularity=pop,
                          item_category=cats)
    rr, rc = torch.as_tensor(rel_rows), torch.as_tensor(rel_cols)
    for a in range(0, len(queries), 1024):
        b = min(a + 1024, len(queries))
        scores = prior[a:b].clone() if prior is not None else q_emb[a:b] @ table.T
        sel = (rr >= a) & (rr < b)
        ev.update(scores, (rr[sel] - a, rc[sel]), (torch.arange(b - a), torch.as_tensor(queries[a:b])))
    return ev.compute()


def run_protocol(events: pd.DataFrame, items: pd.DataFrame, s: ProtocolSettings = ProtocolSettings()) -> dict:
    """The whole protocol on prepared ``events`` and ``items`` (``features.schema``); returns the figures."""
    n_items = int(items["item_id"].max()) + 1
    items = items.set_index("item_id").reindex(range(n_items)).reset_index()
    split = make_split(events, n_items, s.cold_share, s.seed)
    warm_seqs = [q[~split.cold[q]] for q in split.seqs]
    pop_np = np.bincount(np.concatenate(warm_seqs), minlength=n_items).astype(np.float32)
    pop = torch.from_numpy(pop_np)
    cats = torch.from_numpy(category_codes(items["category"]))
    model, train_info = train_sequence_model(warm_seqs, n_items, s)
    with torch.no_grad():
        trained = model.item_table()[1:].detach().clone()            # [N, d]: cold rows never a target
    warm = pop_np > 0
    t0 = time.perf_counter()
    content = fit_content_tower(items[warm].reset_index(drop=True), trained[torch.from_numpy(warm)].numpy(),
                                FitSettings(epochs=s.tower_epochs, seed=s.seed))
    tower_s = time.perf_counter() - t0
    cold = torch.from_numpy(split.cold)
    cold_ids = np.flatnonzero(split.cold)
    g = torch.Generator().manual_seed(s.seed)
    w = trained[torch.from_numpy(warm)]
    random_rows = w.mean(0) + w.std(0) * torch.randn(len(cold_ids), w.shape[1], generator=g)
    tables = {"untrained": trained.clone(), "random": trained.clone(), "content": trained.clone()}
    tables["random"][cold] = random_rows
    tables["content"][cold] = torch.from_numpy(content.embed(items.iloc[cold_ids]))
    inputs, rel, h_rows, h_cols = _rec_rows(split, s.max_len)
    rec: dict[str, dict] = {}
    with torch.no_grad():
        users = torch.cat([model.encode(inputs[a:a + 1024]) for a in range(0, len(inputs), 1024)])  # warm inputs only
        for name, table in tables.items():
            rec[name] = _evaluate(users, table, rel, h_rows, h_cols, pop, cats)
        rec["popularity"] = _evaluate(None, trained, rel, h_rows, h_cols, pop, cats,
                                      lambda a, b: pop.unsqueeze(0).repeat(b - a, 1))
    queries, s_rows, s_cols = _similar_rows(split)
    sim: dict[str, dict] = {}
    with torch.no_grad():
        for name, table in tables.items():
            sim[name] = _evaluate_similar(table[torch.from_numpy(queries)], table, queries, s_rows, s_cols, pop, cats)
        sim["popularity"] = _evaluate_similar(None, trained, queries, s_rows, s_cols, pop, cats,
                                              prior=pop.unsqueeze(0).repeat(len(queries), 1))
        same = (cats[torch.from_numpy(queries)].unsqueeze(1) == cats.unsqueeze(0)) & (cats >= 0).unsqueeze(0)
        sim["category_popular"] = _evaluate_similar(None, trained, queries, s_rows, s_cols, pop, cats,
                                                    prior=pop.unsqueeze(0) + same.float() * (pop.max() + 1))
    return {"settings": asdict(s), "items": n_items, "cold_items": int(split.cold.sum()),
            "warm_items_with_interactions": int(warm.sum()), "users": len(split.seqs),
            "recommendation_rows": int(len(rel)), "similar_rows": int(len(queries)),
            "sequence_model": train_info, "content_tower": {**content.figures, "fit_s": tower_s},
            "recommend": rec, "similar": sim}
