"""User features shared by the two-tower user tower and the ranker: one table of small integer codes.

Every feature is categorical with code 0 = unknown (a user absent from the history, a missing attribute,
a value outside the fitted vocabulary), so a model embeds each one with ``nn.Embedding(cardinality, d)``.

- ``attr_<col>``: a source attribute of ``users.parquet`` (e.g. ``country``): the ``max_vocab`` most
  frequent values among the users of the fitting history get codes 1..V; numeric attributes are cut
  into quantile buckets instead. ``n_events`` is never used (it counts every split, test included).
- Derived from the events of a *history* (the training part of the split when fitting):
  ``activity`` (log event count), ``orders`` (distinct orders), ``recency`` (days from the user's last
  event to the end of the history), ``mean_price`` (mean unit price of purchases), ``return_share``
  (share of return events), ``top_category`` (most frequent item category; skipped when the items have
  no category). Numeric ones are quantile buckets whose edges are fitted on the fitting history only.

``UserFeatureSpec.fit(history, users, items, cfg)`` learns vocabularies and bucket edges from the training
history only; ``spec.transform(history, users, items, n_users)`` codes any history (e.g. train + valid for
the test stage, or every event for the serving bundle) with those fixed vocabularies and edges.
``spec.transform_running(history, users, items)`` codes the features as known right after each event
(point in time): a model trained on every position of a sequence must not see, at position t, features
computed from events after t (counts, top category, mean price of later purchases), which it never has
when serving.
``spec.to_json()`` is written to bundles as ``user_features.json``, the codes as ``user_features.parquet``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

DERIVED = ("activity", "orders", "recency", "mean_price", "return_share", "top_category")
_NEVER_ATTRIBUTES = {"user_id", "user_key", "n_events"}


class UserFeatureError(ValueError):
    """A user-feature setting that does not fit the data; the message names it."""


@dataclass
class UserFeatureConfig:
    """``model.user_features`` in ``conf/model/{two_tower,ranker}.yaml``."""

    enabled: bool = False
    attributes: Any = "auto"                # "auto" = every source attribute column of users.parquet; or a list
    derived: list[str] = field(default_factory=lambda: list(DERIVED))
    max_vocab: int = 50                     # categorical values kept (most frequent), the rest = unknown
    n_buckets: int = 8                      # quantile buckets for numeric features
    point_in_time: bool = False             # sequence training: features as of each position (transform_running)

    @classmethod
    def from_cfg(cls, c: Mapping | None) -> "UserFeatureConfig":
        if c is None:
            return cls()
        c = dict(c)
        unknown = set(c) - set(cls.__dataclass_fields__)
        if unknown:
            raise UserFeatureError(f"model.user_features: unknown setting(s) {sorted(unknown)}")
        out = cls(**{k: (list(v) if k == "derived" else v) for k, v in c.items()})
        bad = [d for d in out.derived if d not in DERIVED]
        if bad:
            raise UserFeatureError(f"model.user_features.derived: unknown feature(s) {bad}; known: {list(DERIVED)}")
        if int(out.max_vocab) < 1:
            raise UserFeatureError(f"model.user_features.max_vocab must be >= 1, got {out.max_vocab}")
        if int(out.n_buckets) < 2:
            raise UserFeatureError(f"model.user_features.n_buckets must be >= 2, got {out.n_buckets}")
        if out.attributes != "auto" and not isinstance(out.attributes, (list, tuple)):
            out.attributes = list(out.attributes)
        return out


def _derived_values(history: pd.DataFrame, items: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Raw per-user values of the derived features (index = user_id)."""
    h = history
    g = h.groupby("user_id", sort=True)
    out = pd.DataFrame(index=g.size().index)
    end = h["ts"].max() if len(h) else None
    if "activity" in names:
        out["activity"] = np.log1p(g.size().astype(float))
    if "orders" in names:
        col = h["order_id"] if "order_id" in h and h["order_id"].notna().any() else h["ts"]
        out["orders"] = np.log1p(col.groupby(h["user_id"]).nunique().astype(float))
    if "recency" in names:
        out["recency"] = np.log1p((end - g["ts"].max()).dt.total_seconds() / 86400.0)
    if "mean_price" in names:
        buys = h[(h["event"] == "purchase") & h["price"].notna()] if "price" in h else h.iloc[:0]
        out["mean_price"] = np.log1p(buys.groupby("user_id")["price"].mean().clip(lower=0)).reindex(out.index)
    if "return_share" in names:
        out["return_share"] = (h["event"] == "return").groupby(h["user_id"]).mean().astype(float)
    if "top_category" in names:
        cat = items.set_index("item_id")["category"].reindex(h["item_id"].to_numpy()).to_numpy()
        c = pd.DataFrame({"user_id": h["user_id"].to_numpy(), "category": cat}).dropna()
        if len(c):
            top = c.groupby(["user_id", "category"]).size().reset_index(name="n")
            top = top.sort_values(["user_id", "n", "category"], ascending=[True, False, True]).drop_duplicates("user_id")
            out["top_category"] = top.set_index("user_id")["category"].astype(str).reindex(out.index)
        else:
            out["top_category"] = None
    return out


def _running_values(history: pd.DataFrame, items: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Raw derived values as known right after each event of ``history`` (ordered by user, then time;
    row i = event i): counts, shares and the mean purchase price over the user's events up to and
    including it; ``top_category`` the most frequent category so far (ties: the smaller name);
    ``recency`` the days from the event to the user's next one (the moment the next prediction is made;
    the history's end after the last event)."""
    h = history.reset_index(drop=True)
    uid = h["user_id"].to_numpy()
    g = h.groupby("user_id", sort=False)
    n = g.cumcount().to_numpy() + 1
    out = pd.DataFrame(index=h.index)
    if "activity" in names:
        out["activity"] = np.log1p(n.astype(float))
    if "orders" in names:
        col = h["order_id"] if "order_id" in h and h["order_id"].notna().any() else h["ts"]
        first = ~pd.DataFrame({"u": uid, "o": col.to_numpy()}).duplicated()
        out["orders"] = np.log1p(first.groupby(uid).cumsum().to_numpy().astype(float))
    if "recency" in names:
        end = h["ts"].max() if len(h) else None
        nxt = g["ts"].shift(-1).fillna(end)
        out["recency"] = np.log1p((nxt - h["ts"]).dt.total_seconds().to_numpy() / 86400.0)
    if "mean_price" in names:
        buy = ((h["event"] == "purchase") & h["price"].notna()) if "price" in h else pd.Series(False, index=h.index)
        spent = h["price"].where(buy, 0.0).groupby(uid).cumsum() if "price" in h else buy.astype(float)
        bought = buy.groupby(uid).cumsum()
        out["mean_price"] = np.log1p((spent / bought.where(bought > 0)).clip(lower=0)).to_numpy()
    if "return_share" in names:
        out["return_share"] = (h["event"] == "return").groupby(uid).cumsum().to_numpy() / n
    if "top_category" in names:
        cats = items.set_index("item_id")["category"].reindex(h["item_id"].to_numpy()).to_numpy()
        top = np.empty(len(h), object)
        user, counts, best, best_n = None, {}, None, 0
        for i, (u, c) in enumerate(zip(uid, cats)):
            if u != user:
                user, counts, best, best_n = u, {}, None, 0
            if not pd.isna(c):
                c = str(c)
                counts[c] = k = counts.get(c, 0) + 1
                if k > best_n or (k == best_n and c < best):
                    best, best_n = c, k
            top[i] = best
        out["top_category"] = top
    return out


def _vocab(values: pd.Series, max_vocab: int) -> list[str]:
    counts = values.dropna().astype(str).value_counts()
    counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")  # ties: by value
    return counts.index[:max_vocab].tolist()


def _edges(values: pd.Series, n_buckets: int) -> list[float]:
    v = values.dropna().to_numpy(float)
    if len(v) == 0:
        return []
    return np.unique(np.quantile(v, np.linspace(0, 1, n_buckets + 1)[1:-1])).round(9).tolist()


@dataclass
class UserFeatureSpec:
    """Names, kinds, vocabularies and bucket edges of the user features (``user_features.json``)."""

    names: list[str]
    kinds: dict[str, str]                   # name -> "categorical" | "bucket"
    vocab: dict[str, list[str]]             # categorical: code i+1 = vocab[name][i]
    edges: dict[str, list[float]]           # bucket: code = np.searchsorted(edges, x, "left") + 1 (x <= edge: lower)
    source: dict[str, str]                  # name -> "attribute:<column>" | "derived"
    schema_version: int = 1

    @property
    def cardinalities(self) -> list[int]:
        """Embedding sizes (code 0 = unknown included)."""
        return [len(self.vocab[n]) + 1 if self.kinds[n] == "categorical" else len(self.edges[n]) + 2 for n in self.names]

    @classmethod
    def fit(cls, history: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, cfg: UserFeatureConfig) -> "UserFeatureSpec":
        """Vocabularies and edges from ``history`` (the training part only) and its users' attributes."""
        seen = pd.Index(np.unique(history["user_id"].to_numpy()))
        u = users.set_index("user_id").reindex(seen)
        if cfg.attributes == "auto":
            attrs = [c for c in users.columns if c not in _NEVER_ATTRIBUTES]
        else:
            attrs = list(cfg.attributes)
            missing = [a for a in attrs if a not in users.columns or a in _NEVER_ATTRIBUTES]
            if missing:
                raise UserFeatureError(f"model.user_features.attributes: {missing} not usable columns of users.parquet "
                                       f"(has {[c for c in users.columns if c not in _NEVER_ATTRIBUTES]})")
        names, kinds, vocab, edges, source = [], {}, {}, {}, {}
        for a in attrs:
            col, name = u[a], f"attr_{a}"
            if col.notna().sum() == 0:
                continue
            numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
            names.append(name)
            source[name] = f"attribute:{a}"
            if numeric:
                kinds[name], edges[name] = "bucket", _edges(col.astype(float), int(cfg.n_buckets))
            else:
                kinds[name], vocab[name] = "categorical", _vocab(col, int(cfg.max_vocab))
        raw = _derived_values(history, items, list(cfg.derived))
        for d in cfg.derived:
            if d not in raw or raw[d].notna().sum() == 0:
                continue                                   # e.g. top_category on data without categories
            names.append(d)
            source[d] = "derived"
            if d == "top_category":
                kinds[d], vocab[d] = "categorical", _vocab(raw[d], int(cfg.max_vocab))
            else:
                kinds[d], edges[d] = "bucket", _edges(raw[d], int(cfg.n_buckets))
        if not names:
            raise UserFeatureError("model.user_features.enabled=true but the data yields no user feature "
                                   "(no attribute in users.parquet and no derived feature with values)")
        return cls(names, kinds, vocab, edges, source)

    def transform(self, history: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, n_users: int) -> np.ndarray:
        """Codes ``[n_users, len(names)]`` int64 (row = user_id; 0 = unknown) from ``history``."""
        out = np.zeros((n_users, len(self.names)), np.int64)
        derived = [n for n in self.names if self.source[n] == "derived"]
        raw = _derived_values(history, items, derived) if derived else pd.DataFrame()
        u = users.set_index("user_id")
        u = u[(u.index >= 0) & (u.index < n_users)]
        for j, name in enumerate(self.names):
            if self.source[name] == "derived":
                col = raw[name] if name in raw else pd.Series(dtype=float)
            else:
                col = u[self.source[name].split(":", 1)[1]]
            col = col[(col.index >= 0) & (col.index < n_users)].dropna()
            out[col.index.to_numpy(np.int64), j] = self._codes(name, col.to_numpy())
        return out

    def transform_running(self, history: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
        """Codes ``[len(history), len(names)]`` int64: row i = the features as known right after event i of
        ``history`` (ordered by user, then time). Attributes are the same on every row of a user."""
        out = np.zeros((len(history), len(self.names)), np.int64)
        derived = [n for n in self.names if self.source[n] == "derived"]
        raw = _running_values(history, items, derived) if derived else pd.DataFrame()
        u = users.drop_duplicates("user_id").set_index("user_id")
        for j, name in enumerate(self.names):
            if self.source[name] == "derived":
                vals = raw[name].to_numpy() if name in raw else np.full(len(history), np.nan)
            else:
                vals = u[self.source[name].split(":", 1)[1]].reindex(history["user_id"].to_numpy()).to_numpy()
            known = ~pd.isna(vals)
            out[known, j] = self._codes(name, vals[known])
        return out

    def _codes(self, name: str, values: np.ndarray) -> np.ndarray:
        """Codes of known (non-missing) raw values of feature ``name`` (0 = outside the vocabulary)."""
        if self.kinds[name] == "categorical":
            code = {v: i + 1 for i, v in enumerate(self.vocab[name])}
            return np.fromiter((code.get(str(v), 0) for v in values), np.int64, len(values))
        return np.searchsorted(np.asarray(self.edges[name], float), np.asarray(values, float), side="left") + 1

    def table(self, codes: np.ndarray, users: pd.DataFrame) -> pd.DataFrame:
        """``user_id``, ``user_key`` and one int64 column per feature (the bundle's ``user_features.parquet``)."""
        u = users[["user_id", "user_key"]].sort_values("user_id")
        u = u[u["user_id"] < len(codes)]
        out = u.reset_index(drop=True)
        for j, name in enumerate(self.names):
            out[name] = codes[out["user_id"].to_numpy(np.int64), j]
        return out

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["cardinalities"] = self.cardinalities
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "UserFeatureSpec":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class UserFeatures:
    """A fitted spec plus the codes of one history (row = user_id)."""

    spec: UserFeatureSpec
    codes: np.ndarray


def fit_user_features(history: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, cfg: UserFeatureConfig,
                      n_users: int) -> UserFeatures:
    """Fit on ``history`` (training part only) and code the same history."""
    spec = UserFeatureSpec.fit(history, users, items, cfg)
    return UserFeatures(spec, spec.transform(history, users, items, n_users))
