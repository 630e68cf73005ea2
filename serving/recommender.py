"""The in-process recommendation pipeline: encode -> candidates -> rank -> rules.

``Recommender.retrieve`` turns a query into a candidate pool: the user's history (bundle state, the
online store's events and the request's ``recent_events``) goes through ``encoder.onnx`` (with the
user's ``user_features.parquet`` codes when the encoder takes ``user_feat``; zeros for unknown users); candidates
come from the index, the bought-together table of the last items and popular-in-context items. A user
with no history at all takes the cold-start path: popular and trending items in the context.
``Recommender.rank`` scores the pool with the bundle's ranker (retrieval scores when it has none; the
user-feature codes go with the request when ``ranker.json`` lists ``user_features``) and
``Recommender.finish`` applies the rules and writes the reasons.

Each stage has a time budget (``serve.budget_ms``). A stage that fails or runs past its budget
degrades the answer to popular items in the context, with ``source="popular_fallback"``, so a slow
or broken stage never turns into an error for the storefront.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from serving.bundle import Bundle
from serving.rules import RuleSettings, allowed_mask, blocked_items, reason_text, select_top_k
from serving.store import PURCHASE_EVENTS, EventStore

log = logging.getLogger(__name__)

STAGES = ("retrieve", "rank", "rules")


@dataclass(frozen=True)
class RecommendSettings:
    """``serve.recommend`` + ``serve.rules`` + ``serve.budget_ms``."""

    n_candidates: int = 100
    bought_together_items: int = 3
    bought_together_per_item: int = 10
    popular_candidates: int = 20
    trending_window_s: float = 3600.0
    trending_weight: float = 5.0
    exclude_seen: bool = True
    rules: RuleSettings = RuleSettings()
    budget_ms: dict[str, float] = field(default_factory=lambda: {s: 50.0 for s in STAGES})

    @classmethod
    def from_cfg(cls, serve_cfg: Any) -> "RecommendSettings":
        r = serve_cfg.recommend
        budget = {s: float(serve_cfg.budget_ms[s]) for s in STAGES}
        return cls(n_candidates=int(r.n_candidates), bought_together_items=int(r.bought_together_items),
                   bought_together_per_item=int(r.bought_together_per_item),
                   popular_candidates=int(r.popular_candidates), trending_window_s=float(r.trending_window_s),
                   trending_weight=float(r.trending_weight), exclude_seen=bool(r.exclude_seen),
                   rules=RuleSettings(no_repurchase_days=float(serve_cfg.rules.no_repurchase_days),
                                      max_per_category=int(serve_cfg.rules.max_per_category),
                                      diversity=float(serve_cfg.rules.get("diversity", 0.0))),
                   budget_ms=budget)


@dataclass(frozen=True)
class RecQuery:
    """One recommendation request, user already pseudonymised; items are original item keys."""

    user_key: str
    k: int
    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    exclude: tuple[str, ...] = ()
    recent_items: tuple[str, ...] = ()   # oldest first
    channel: str | None = None
    now: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RecItem:
    item_key: str
    score: float
    source: str
    reason: str


@dataclass
class RecResult:
    items: list[RecItem]
    cold_start: bool
    degraded: str | None            # the stage that made the answer fall back to popular items
    timings_ms: dict[str, float]
    bundle: str


@dataclass
class Candidates:
    """The pool between retrieval and ranking."""

    query: RecQuery
    history: np.ndarray             # item ids, oldest first (<= max_len)
    user_emb: np.ndarray | None     # (dim,) or None on the cold-start path
    allowed: np.ndarray             # bool mask over items
    blocked: set[int]
    ids: np.ndarray                 # int64
    scores: np.ndarray              # float32 retrieval scores
    sources: list[str]
    anchors: np.ndarray             # int64: the item that brought a bought-together candidate, else -1
    trending: set[int]
    cold_start: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    purchased: np.ndarray | None = None  # item ids the user bought (reasons say "purchased", not "viewed")


class StageTimeout(RuntimeError):
    """A stage ran past its budget."""


class Recommender:
    """The pipeline over one bundle and the shared online store."""

    def __init__(self, bundle: Bundle, store: EventStore, settings: RecommendSettings):
        self.bundle = bundle
        self.store = store
        self.settings = settings
        self._category_code = {c: i for i, c in enumerate(bundle.items.categories)}

    # -------------------------------------------------------------------------------------------
    def recommend(self, q: RecQuery, observe: Callable[[str, float], None] | None = None) -> RecResult:
        """The whole pipeline in-process. ``observe(stage, seconds)`` receives each stage's time."""
        t0 = time.perf_counter()
        try:
            cands = self.retrieve(q)
        except Exception as e:  # noqa: BLE001 - degrade, never fail the request
            return self.fallback(q, "retrieve", e, observe)
        t1 = time.perf_counter()
        if observe:
            observe("retrieve", t1 - t0)
        if (t1 - t0) * 1000 > self.settings.budget_ms["retrieve"]:
            return self.fallback(q, "retrieve", StageTimeout(f"{(t1 - t0) * 1000:.1f} ms"), observe, cands)
        try:
            scores = self.rank(cands)
        except Exception as e:  # noqa: BLE001
            return self.fallback(q, "rank", e, observe, cands)
        t2 = time.perf_counter()
        if observe:
            observe("rank", t2 - t1)
        if (t2 - t1) * 1000 > self.settings.budget_ms["rank"]:
            return self.fallback(q, "rank", StageTimeout(f"{(t2 - t1) * 1000:.1f} ms"), observe, cands)
        cands.timings_ms["retrieve"] = (t1 - t0) * 1000
        cands.timings_ms["rank"] = (t2 - t1) * 1000
        return self.finish(cands, scores, observe)

    # -------------------------------------------------------------------------------------------
    def user_state(self, q: RecQuery) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(history ids oldest first, purchase ids, purchase times) from bundle + store + request."""
        key_to_id = self.bundle.items.key_to_id
        st = self.bundle.users.get(q.user_key)
        online = self.store.events_of(q.user_key)
        hist = [] if st is None else [st.history]
        purch = [] if st is None else [st.purchases]
        pts = [] if st is None else [st.purchase_ts]
        on_ids, on_p, on_pts = [], [], []
        for e in online:
            i = key_to_id.get(e.item_key)
            if i is None:
                continue
            on_ids.append(i)
            if e.event in PURCHASE_EVENTS:
                on_p.append(i)
                on_pts.append(e.ts)
        req_ids = [key_to_id[k] for k in q.recent_items if k in key_to_id]
        hist.append(np.asarray(on_ids + req_ids, np.int64))
        purch.append(np.asarray(on_p, np.int64))
        pts.append(np.asarray(on_pts, np.float64))
        history = np.concatenate(hist)[-self.bundle.max_len:]
        return history, np.concatenate(purch), np.concatenate(pts)

    def context_mask(self, q: RecQuery) -> np.ndarray:
        items = self.bundle.items
        code = None
        if q.category is not None:
            code = self._category_code.get(q.category, -2)
        if code is None and q.price_min is None and q.price_max is None:
            return items.available
        return allowed_mask(items.available, items.category_code, items.price, category=code,
                            price_min=q.price_min, price_max=q.price_max)

    def _blocked(self, q: RecQuery, history: np.ndarray, purchases: np.ndarray, purchase_ts: np.ndarray) -> set[int]:
        key_to_id = self.bundle.items.key_to_id
        return blocked_items(purchases=purchases, purchase_ts=purchase_ts, now=q.now, settings=self.settings.rules,
                             exclude=[key_to_id[k] for k in q.exclude if k in key_to_id],
                             seen=history if self.settings.exclude_seen else ())

    def popular(self, allowed: np.ndarray, blocked: set[int], n: int, trending: dict[str, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray, set[int]]:
        """The ``n`` most popular allowed, unblocked items (trending boosts), with scores in (0, 1]."""
        items = self.bundle.items
        order = items.popular_order  # available items only
        pool = order[: n + len(blocked)] if allowed is items.available else order[allowed[order]][: n + len(blocked)]
        trend_ids: set[int] = set()
        if trending:
            extra = [items.key_to_id[k] for k in trending if k in items.key_to_id]
            extra = [i for i in extra if allowed[i]]
            trend_ids = set(extra)
            if extra:
                pool = np.unique(np.concatenate([pool, np.asarray(extra, np.int64)]))
        if blocked:
            pool = pool[~np.isin(pool, np.fromiter(blocked, np.int64, len(blocked)))]
        score = items.popularity[pool].astype(np.float64)
        if trending:
            boost = np.array([trending.get(items.keys[i], 0) for i in pool], np.float64)
            score = score + self.settings.trending_weight * boost
        top = np.argsort(-score, kind="stable")[:n]
        pool, score = pool[top], score[top]
        norm = score / score[0] if len(score) and score[0] > 0 else np.ones_like(score)
        return pool.astype(np.int64), norm.astype(np.float32), trend_ids & set(pool.tolist())

    def retrieve(self, q: RecQuery) -> Candidates:
        s = self.settings
        b = self.bundle
        history, purchases, purchase_ts = self.user_state(q)
        allowed = self.context_mask(q)
        blocked = self._blocked(q, history, purchases, purchase_ts)
        n_pop = max(s.popular_candidates, q.k) if len(history) == 0 else s.popular_candidates
        trending = self.store.trending(q.now) if len(history) == 0 else None
        pop_ids, pop_scores, trend_ids = self.popular(allowed, blocked, n_pop, trending)
        if len(history) == 0:  # cold start: popular / trending in the context
            return Candidates(q, history, None, allowed, blocked, pop_ids, pop_scores, ["popular"] * len(pop_ids),
                              np.full(len(pop_ids), -1, np.int64), trend_ids, cold_start=True)
        uf = b.encoder_codes(q.user_key)  # user_feat of an encoder that takes it (zeros for unknown users)
        user_emb = b.encode([history], None if uf is None else uf[None, :])[0]
        n_idx = max(s.n_candidates, q.k)
        # Filters go into the index only when they could starve the pool (a narrowing context, or more blocked
        # items than spare candidates); otherwise the rules drop the few unavailable / blocked ones afterwards,
        # which keeps every index backend on its fastest path.
        narrowing = allowed is not b.items.available
        _, idx_ids = b.index.search(user_emb[None, :], n_idx,
                                    exclude=[blocked] if len(blocked) > max(n_idx - 2 * q.k, 0) else None,
                                    allowed=allowed if narrowing else None)
        idx_ids = idx_ids[0][idx_ids[0] >= 0]
        if not narrowing:
            idx_ids = idx_ids[allowed[idx_ids]]
        ids, sources, anchors = list(idx_ids.tolist()), ["similar"] * len(idx_ids), [-1] * len(idx_ids)
        seen = set(ids)
        pos_of = {i: p for p, i in enumerate(ids)}
        for anchor in history[::-1][: s.bought_together_items]:
            others = b.bought_together.get(int(anchor))
            if others is None:
                continue
            for o in others[0]:
                o = int(o)
                if not allowed[o] or o in blocked:
                    continue
                if o in seen:  # a co-purchase explains it better than similarity
                    p = pos_of[o]
                    if sources[p] == "similar":
                        sources[p], anchors[p] = "bought_together", int(anchor)
                    continue
                seen.add(o)
                pos_of[o] = len(ids)
                ids.append(o)
                sources.append("bought_together")
                anchors.append(int(anchor))
        for o in pop_ids.tolist():
            if o not in seen:
                seen.add(o)
                ids.append(o)
                sources.append("popular")
                anchors.append(-1)
        ids_a = np.asarray(ids, np.int64)
        scores = (b.item_embeddings[ids_a] @ user_emb).astype(np.float32) if len(ids_a) else np.zeros(0, np.float32)
        return Candidates(q, history, user_emb, allowed, blocked, ids_a, scores, sources,
                          np.asarray(anchors, np.int64), trend_ids, cold_start=False, purchased=purchases)

    def rank_request(self, c: Candidates) -> Any:
        from serving.ranking import RankRequest

        t = time.gmtime(c.query.now)
        return RankRequest(user_emb=c.user_emb, history=c.history, candidates=c.ids, retrieval_scores=c.scores,
                           hour=t.tm_hour, dow=t.tm_wday, channel=c.query.channel,
                           user_feat=self.bundle.ranker_codes(c.query.user_key))

    def rank(self, c: Candidates) -> np.ndarray:
        """Scores for the pool, higher = better: the ranker's, else the retrieval scores."""
        if c.cold_start or self.bundle.ranker is None or len(c.ids) == 0:
            return c.scores
        out = np.asarray(self.bundle.ranker.score([self.rank_request(c)])[0], np.float32)
        if out.shape != c.ids.shape:
            raise ValueError(f"ranker returned {out.shape} scores for {c.ids.shape} candidates")
        return out

    def finish(self, c: Candidates, scores: np.ndarray, observe: Callable[[str, float], None] | None = None
               ) -> RecResult:
        t0 = time.perf_counter()
        try:
            items = self._apply_rules(c, scores, c.query.k)
        except Exception as e:  # noqa: BLE001
            return self.fallback(c.query, "rules", e, observe, c)
        dt = time.perf_counter() - t0
        if observe:
            observe("rules", dt)
        if dt * 1000 > self.settings.budget_ms["rules"]:
            return self.fallback(c.query, "rules", StageTimeout(f"{dt * 1000:.1f} ms"), observe, c)
        c.timings_ms["rules"] = dt * 1000
        return RecResult(items, c.cold_start, None, c.timings_ms, self.bundle.name)

    def _apply_rules(self, c: Candidates, scores: np.ndarray, k: int) -> list[RecItem]:
        b = self.bundle
        cap = 0 if c.query.category is not None else self.settings.rules.max_per_category
        keep = c.allowed[c.ids]
        if c.blocked and len(c.ids):
            keep &= ~np.isin(c.ids, np.fromiter(c.blocked, np.int64, len(c.blocked)))
        pos = np.flatnonzero(keep)
        picked = pos[select_top_k(c.ids[pos], scores[pos], b.items.category_code, k, cap,
                                  0.0 if c.query.category is not None else self.settings.rules.diversity)
                  ] if len(pos) else pos
        ids = c.ids[picked]
        anchors = c.anchors[picked].copy()
        sources = [c.sources[p] for p in picked]
        sim = [j for j, s in enumerate(sources) if s == "similar"]
        if sim and len(c.history):  # the history item each similar item is closest to
            hist = np.unique(c.history)
            dots = b.item_embeddings[ids[sim]] @ b.item_embeddings[hist].T
            dots[ids[sim][:, None] == hist[None, :]] = -np.inf  # never "similar to itself"
            anchors[sim] = hist[np.argmax(dots, axis=1)]
        out = []
        bought = set() if c.purchased is None else set(c.purchased.tolist())
        for j, (i, p) in enumerate(zip(ids.tolist(), picked.tolist())):
            a = int(anchors[j])
            out.append(RecItem(str(b.items.keys[i]), float(scores[p]), sources[j],
                               reason_text(sources[j], anchor_key=str(b.items.keys[a]) if a >= 0 else None,
                                           category=c.query.category or b.items.category[i],
                                           trending=i in c.trending, anchor_purchased=a in bought)))
        return out

    def fallback(self, q: RecQuery, stage: str, error: BaseException, observe=None, c: Candidates | None = None
                 ) -> RecResult:
        """Popular items in the context (rules still applied), flagged ``popular_fallback``."""
        if not isinstance(error, StageTimeout):
            log.warning("stage %s failed (%s: %s): answering with popular items", stage, type(error).__name__, error)
        t0 = time.perf_counter()
        if c is not None:
            allowed, blocked = c.allowed, c.blocked
        else:
            try:
                allowed = self.context_mask(q)
                history, purchases, purchase_ts = self.user_state(q)
                blocked = self._blocked(q, history, purchases, purchase_ts)
            except Exception:  # noqa: BLE001 - the bare minimum: available items
                allowed, blocked = self.bundle.items.available, set()
        ids, scores, _ = self.popular(allowed, blocked, max(q.k * 3, q.k + 10))
        cap = 0 if q.category is not None else self.settings.rules.max_per_category
        picked = select_top_k(ids, scores, self.bundle.items.category_code, q.k, cap)
        items = [RecItem(str(self.bundle.items.keys[i]), float(scores[p]), "popular_fallback",
                         reason_text("popular_fallback", category=q.category or self.bundle.items.category[i]))
                 for p, i in zip(picked.tolist(), ids[picked].tolist())]
        if observe:
            observe("fallback", time.perf_counter() - t0)
        return RecResult(items, c.cold_start if c is not None else False, stage, {}, self.bundle.name)

    # -------------------------------------------------------------------------------------------
    def similar(self, item_key: str, k: int) -> list[RecItem] | None:
        """The ``k`` nearest available items to ``item_key``; None when the item is unknown."""
        b = self.bundle
        i = b.items.key_to_id.get(item_key)
        if i is None:
            return None
        allowed = None if b.items.all_available else b.items.available  # a mask makes a large index slower
        scores, ids = b.index.search(b.item_embeddings[i][None, :], k, exclude=[{i}], allowed=allowed)
        return [RecItem(str(b.items.keys[j]), float(s), "similar", f"similar to {item_key}")
                for s, j in zip(scores[0].tolist(), ids[0].tolist()) if j >= 0]
