"""Reference distributions of a bundle's training data, and the same figures over any stream of events.

A stream of events is a frame with ``user_key`` (pseudonymised), ``item_key``, ``event`` and ``ts`` (UTC): the
service's event log, or prepared data keyed the same way. ``prepare`` turns it into per-event codes, sorted by
time; ``distributions`` bins any time slice of them. The features (each a distribution over fixed bins):

- ``event_mix``: share of each event type (``features.schema.EVENT_TYPES`` + ``other``);
- ``item_popularity``: share of events per training-popularity bucket: ``unseen`` (an item without a training
  event, or not in the catalogue) and ``d1`` ... ``d10`` (the items that made the first, second, ... tenth of
  the training events, most popular first);
- ``session_length``: events per user-day (the length of a day's sequence), binned 1, 2, 3-4, 5-9, 10-19, 20-49, 50+;
- ``user_feature:<name>``: per feature of the bundle's ``user_features.parquet`` (when it has one), the share of
  events per code of the acting user (0 = unknown user; the 15 most frequent codes of the reference, + other);
- ``score``: the top-1 recommendation score (encoder output · item embedding, maximum over the catalogue) of
  the user's history just before the first event of a user-day (a random share of the user-days whose user has
  a history: one per visit, since the events of one order are not independent draws)
  (``encoder.onnx`` user features, when it takes them, are fed as unknown: the score of the sequence part).

``build_reference(folder, train_events, max_len)`` computes them over the training events, with each figure's
noise level: its 99th percentile over the training events' own one-day windows ending every 6 h
(``noise.quantile``; a window of
the very data the reference came from strays that far by chance, since orders make events arrive in clumps).
The result is
``drift_reference.json`` in the bundle (``training.export`` writes it; ``python -m serving.drift reference``
publishes it as a derived version of an older bundle).
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.schema import EVENT_TYPES
from serving.drift.stats import js, ks_to_quantiles, psi, quantiles

REFERENCE = "drift_reference.json"
SCHEMA = 1
EVENT_BINS = [*EVENT_TYPES, "other"]
POP_BINS = ["unseen", *[f"d{i}" for i in range(1, 11)]]
SESSION_EDGES = [1, 2, 3, 5, 10, 20, 50]
SESSION_BINS = ["1", "2", "3-4", "5-9", "10-19", "20-49", "50+"]
TOP_CODES = 15
EVENT_COLUMNS = ("user_key", "item_key", "event", "ts")


def check_events(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """``frame`` with the columns of a stream of events (``ValueError`` naming the missing one), ts as UTC."""
    for c in EVENT_COLUMNS:
        if c not in frame.columns:
            raise ValueError(f"{where}: column {c!r} is missing (need {', '.join(EVENT_COLUMNS)})")
    out = frame[list(EVENT_COLUMNS)].copy()
    out["ts"] = pd.to_datetime(out["ts"], utc=True, format="mixed")
    out["user_key"] = out["user_key"].astype(str)
    out["item_key"] = out["item_key"].astype(str)
    out["event"] = out["event"].astype(str)
    return out


class BundleView:
    """What drift needs from a bundle folder: the catalogue, the users' histories, user features, the scorer."""

    def __init__(self, folder: str | Path, max_len: int | None = None):
        from serving.bundle import ENCODER, ITEM_EMBEDDINGS, ITEMS, MANIFEST, USER_FEATURES_TABLE, USERS

        self.folder = Path(folder)
        if max_len is None:
            max_len = int(json.loads((self.folder / MANIFEST).read_text())["max_len"])
        self.max_len = int(max_len)
        items = pd.read_parquet(self.folder / ITEMS, columns=["item_id", "item_key"])
        self.item_index = dict(zip(items["item_key"].astype(str), items["item_id"].astype(np.int64)))
        self.n_items = int(items["item_id"].max()) + 1 if len(items) else 0
        users = pd.read_parquet(self.folder / USERS, columns=["user_key", "history"])
        self.histories = dict(zip(users["user_key"].astype(str), users["history"]))
        self.user_features: pd.DataFrame | None = None
        if (self.folder / USER_FEATURES_TABLE).exists():
            self.user_features = pd.read_parquet(self.folder / USER_FEATURES_TABLE).drop(columns=["user_id"],
                                                                                       errors="ignore")
        self._emb_path = self.folder / ITEM_EMBEDDINGS
        self._enc_path = self.folder / ENCODER
        self._session = None

    def top1_scores(self, histories: list[np.ndarray], batch: int = 1024) -> np.ndarray:
        """The top-1 score (maximum of ``user_emb · item_embeddings``) of each history."""
        from serving.bundle import encode_sequences, make_session

        if self._session is None:
            made = make_session(self._enc_path, prefer_cuda=False, threads=1)
            self._session = made[0] if isinstance(made, tuple) else made  # (session, provider) in newer code
            self._emb = np.load(self._emb_path).astype(np.float32)
        inputs = self._session.get_inputs()
        out = np.empty(len(histories), np.float32)
        for a in range(0, len(histories), batch):
            seqs = encode_sequences(histories[a:a + batch], self.max_len)
            feed = {inputs[0].name: seqs}
            if len(inputs) > 1:
                width = inputs[1].shape[1] if isinstance(inputs[1].shape[1], int) else 1
                feed[inputs[1].name] = np.zeros((len(seqs), width), np.int64)
            u = self._session.run(None, feed)[0]
            out[a:a + batch] = (u @ self._emb.T).max(axis=1)
        return out


@dataclass
class Prepared:
    """A stream's events sorted by time, as codes: what ``distributions`` bins."""

    ts: np.ndarray                 # int64 seconds since the epoch
    event_code: np.ndarray         # index into EVENT_BINS
    item_bucket: np.ndarray        # index into POP_BINS
    userday: np.ndarray            # id of the (user, UTC day) pair
    score: np.ndarray              # float32; NaN = not sampled or empty history
    user_codes: dict[str, np.ndarray] = field(default_factory=dict)  # feature -> bin index

    def __len__(self) -> int:
        return len(self.ts)

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Positions ``[a, b)`` of the events with ``lo <= ts < hi``."""
        return int(np.searchsorted(self.ts, lo, "left")), int(np.searchsorted(self.ts, hi, "left"))


def popularity_buckets(item_ids: np.ndarray, n_items: int) -> np.ndarray:
    """Per catalogue item, its ``POP_BINS`` index from the training events' item ids."""
    counts = np.bincount(item_ids[item_ids >= 0], minlength=n_items)[:n_items]
    order = np.argsort(-counts, kind="stable")
    cum_before = (np.cumsum(counts[order]) - counts[order]) / max(counts.sum(), 1)
    buckets = np.zeros(n_items, np.int64)
    buckets[order] = np.minimum(9, np.floor(cum_before * 10).astype(np.int64)) + 1
    buckets[counts == 0] = 0
    return buckets


def prepare(events: pd.DataFrame, view: BundleView, buckets: np.ndarray, *, user_bins: dict[str, list] | None = None,
            score_sample: float = 0.2, max_scored: int = 200_000, with_prefix: bool = True,
            seed: int = 0) -> Prepared:
    """Per-event codes of ``events`` (``check_events`` columns). Histories for the score are the user's earlier
    events in ``events``, after the bundle's history of the user when ``with_prefix`` (live traffic continues the
    training state; a replay of the training period itself starts empty)."""
    ev = check_events(events, "events").sort_values("ts", kind="stable").reset_index(drop=True)
    n = len(ev)
    ts = ((ev["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    code = pd.Categorical(ev["event"], categories=EVENT_BINS[:-1]).codes.astype(np.int64)
    code[code < 0] = len(EVENT_BINS) - 1
    item_id = ev["item_key"].map(view.item_index).fillna(-1).to_numpy(np.int64)
    bucket = np.where(item_id >= 0, buckets[np.clip(item_id, 0, None)] if len(buckets) else 0, 0)
    day = ts // 86400
    userday = pd.factorize(pd.Series(ev["user_key"].to_numpy()) + ":" + pd.Series(day).astype(str))[0]
    score = np.full(n, np.nan, np.float32)
    rng = np.random.default_rng(seed)
    first_of_day = np.unique(userday, return_index=True)[1]   # events are in time order: each user-day's first
    chosen = np.sort(first_of_day[rng.random(len(first_of_day)) < score_sample])
    if len(chosen) > max_scored:
        chosen = np.sort(rng.choice(chosen, max_scored, replace=False))
    if len(chosen):
        users = ev["user_key"].to_numpy()
        order = np.lexsort((np.arange(n), users))                 # by user, then time
        pos_in_sorted = np.empty(n, np.int64)
        pos_in_sorted[order] = np.arange(n)
        su = users[order]
        starts = np.r_[0, np.flatnonzero(su[1:] != su[:-1]) + 1]
        group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
        items_sorted = item_id[order]
        hist, keep = [], []
        for i in chosen:
            p = pos_in_sorted[i]
            own = items_sorted[max(group_start[p], p - view.max_len):p]
            own = own[own >= 0]
            if with_prefix and len(own) < view.max_len:
                pre = view.histories.get(users[i])
                if pre is not None and len(pre):
                    own = np.concatenate([np.asarray(pre, np.int64), own])[-view.max_len:]
            if len(own):
                hist.append(own)
                keep.append(i)
        if keep:
            score[np.asarray(keep)] = view.top1_scores(hist)
    user_codes = {}
    if view.user_features is not None:
        table = view.user_features.set_index("user_key")
        for name in table.columns:
            codes = ev["user_key"].map(table[name]).fillna(0).to_numpy(np.int64)
            bins = (user_bins or {}).get(f"user_feature:{name}")
            if bins is None:  # the reference: its most frequent codes
                vals, cnt = np.unique(codes, return_counts=True)
                bins = sorted(int(v) for v in vals[np.argsort(-cnt)][:TOP_CODES])
            lookup = {c: j for j, c in enumerate(bins)}
            user_codes[f"user_feature:{name}"] = np.array([lookup.get(int(c), len(bins)) for c in codes], np.int64)
            if user_bins is not None:
                user_bins.setdefault(f"user_feature:{name}", bins)
    return Prepared(ts, code, bucket.astype(np.int64), userday.astype(np.int64), score, user_codes)


def distributions(p: Prepared, a: int, b: int) -> dict[str, np.ndarray]:
    """Counts per bin of every categorical feature over events ``[a, b)`` of ``p`` (``session_length``: user-days)."""
    counts = np.bincount(np.unique(p.userday[a:b], return_inverse=True)[1]) if b > a else np.zeros(0, np.int64)
    out = {"event_mix": np.bincount(p.event_code[a:b], minlength=len(EVENT_BINS)),
           "item_popularity": np.bincount(p.item_bucket[a:b], minlength=len(POP_BINS)),
           "session_length": np.bincount(np.searchsorted(SESSION_EDGES, counts, side="right") - 1,
                                         minlength=len(SESSION_BINS))}
    for name, codes in p.user_codes.items():
        out[name] = np.bincount(codes[a:b], minlength=int(codes.max(initial=0)) + 1)
    return out


def window_stats(ref: dict[str, Any], p: Prepared, a: int, b: int, min_scored: int) -> dict[str, Any]:
    """PSI and JS per feature of events ``[a, b)`` against ``ref``, and the score's KS (with ``min_scored``)."""
    dists = distributions(p, a, b)
    out: dict[str, Any] = {"features": {}}
    for name, f in ref["features"].items():
        live = dists[name][:len(f["p"])] if name in dists else np.zeros(len(f["p"]))
        out["features"][name] = {"psi": psi(np.asarray(f["p"]), live), "js": js(np.asarray(f["p"]), live)}
    scores = p.score[a:b]
    scores = scores[np.isfinite(scores)]
    q = ref["score"].get("quantiles")
    if q and len(scores) >= min_scored:
        out["score"] = {"ks": ks_to_quantiles(scores, q), "n": int(len(scores)), "mean": float(scores.mean())}
    return out


def noise_levels(ref: dict[str, Any], p: Prepared, span_s: int, step_s: int, min_events: int, min_scored: int,
                 level: float = 0.99) -> dict[str, float]:
    """The ``level`` quantile of each figure (PSI per feature, the score's KS) over the training events' own
    windows of ``span_s`` (ending every ``step_s``, those with ``min_events``): how far a window of the very data
    the reference came from strays by chance (orders make events arrive in clumps)."""
    figs: dict[str, list[float]] = {}
    if len(p) == 0:
        return {}
    for t in range(int(p.ts[0]) + span_s, int(p.ts[-1]) + step_s + 1, step_s):
        a, b = p.span(t - span_s, t)
        if b - a < min_events:
            continue
        w = window_stats(ref, p, a, b, min_scored)
        for name, f in w["features"].items():
            figs.setdefault(name, []).append(f["psi"])
        if "score" in w:
            figs.setdefault("score", []).append(w["score"]["ks"])
    return {k: float(np.quantile(v, level)) for k, v in figs.items() if len(v) >= 20}


def build_reference(folder: str | Path, train_events: pd.DataFrame, max_len: int | None = None, *,
                    score_sample: float = 1.0, max_scored: int = 50_000, seed: int = 0,
                    noise_span_s: int = 86400, noise_step_s: int = 21600, min_events: int = 200,
                    min_scored: int = 50, noise_level: float = 0.99) -> dict[str, Any]:
    """The reference distributions of ``train_events`` (the model's training events, ``check_events`` columns)
    for the bundle in ``folder`` (its catalogue, users and encoder must be written; the manifest need not be)."""
    view = BundleView(folder, max_len)
    ev = check_events(train_events, "train_events")
    ids = ev["item_key"].map(view.item_index).fillna(-1).to_numpy(np.int64)
    buckets = popularity_buckets(ids, view.n_items)
    user_bins: dict[str, list] = {}
    p = prepare(ev, view, buckets, user_bins=user_bins, score_sample=score_sample, max_scored=max_scored,
                with_prefix=False, seed=seed)
    dists = distributions(p, 0, len(p))
    features: dict[str, Any] = {
        "event_mix": {"bins": EVENT_BINS},
        "item_popularity": {"bins": POP_BINS},
        "session_length": {"bins": SESSION_BINS, "edges": SESSION_EDGES},
    }
    for name, bins in user_bins.items():
        features[name] = {"bins": [str(b) for b in bins] + ["other"], "codes": bins}
    for name, f in features.items():
        counts = dists[name][:len(f["bins"])]
        f["p"] = [float(x) for x in counts / max(counts.sum(), 1)]
        f["n"] = int(round(counts.sum()))
    scores = p.score[np.isfinite(p.score)]
    period = [str(ev["ts"].min()), str(ev["ts"].max())] if len(ev) else None
    ref = {
        "schema": SCHEMA, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "events": int(len(ev)), "period": period, "features": features,
        "score": {"quantiles": quantiles(scores) if len(scores) else None, "n": int(len(scores)),
                  "definition": "top-1 score of the user's history just before the first event of each user-day "
                                "(sequence part)"},
        "item_bucket": [int(b) for b in buckets],
    }
    ref["noise"] = {"span_s": noise_span_s, "step_s": noise_step_s, "level": noise_level,
                    "quantile": noise_levels(ref, p, noise_span_s, noise_step_s, min_events, min_scored, noise_level)}
    return ref


def write_reference(folder: str | Path, train_events: pd.DataFrame, max_len: int | None = None, **kw: Any) -> Path:
    """``build_reference`` written to ``<folder>/drift_reference.json``."""
    ref = build_reference(folder, train_events, max_len, **kw)
    path = Path(folder) / REFERENCE
    path.write_text(json.dumps(ref) + "\n")
    return path


def read_reference(folder: str | Path) -> dict[str, Any]:
    """``drift_reference.json`` of a bundle (``FileNotFoundError`` saying how to make one)."""
    path = Path(folder) / REFERENCE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; publish one with `python -m serving.drift reference "
                                f"--bundle {Path(folder).name} --processed <prepared data>`")
    ref = json.loads(path.read_text())
    if ref.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema={ref.get('schema')!r}, this code reads {SCHEMA}")
    return ref
