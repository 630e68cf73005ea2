"""Bought-together association rules from baskets (orders / invoices).

``python -m features.baskets data=online_retail`` reads the prepared purchases,
forms one basket per ``order_id`` (distinct items), counts items and item pairs with a sparse
basket x item matrix, and keeps the rules ``a -> b`` that pass the thresholds of ``conf/assoc/``:

- ``support(a, b)    = baskets with a and b / all baskets``
- ``confidence(a->b) = baskets with a and b / baskets with a``
- ``lift(a->b)       = confidence(a->b) / (baskets with b / all baskets)``

It writes ``${paths.artifacts}/assoc/<data>/bought_together.parquet`` (``item_id``, ``other_item_id``,
``support``, ``confidence``, ``lift``, ``pair_count``; at most ``top_k`` rules per item, best
``rank_by`` first) with a ``manifest.json``. ``python -m serving.publish_rules data=<data>`` then publishes
the table as a new serving bundle version (``features`` knows nothing of bundles). The service uses the
table for "often bought with" and as a candidate source for users with little history.

By default the rules come from the temporal train split only (``assoc.source: temporal_train``), so
offline evaluation on the later months stays honest; ``source: all`` uses every purchase.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from scipy import sparse

from features.artifacts import atomic_dir, code_version, file_sha256, write_json
from features.processed import load_events, load_manifest, load_split, processed_dir

log = logging.getLogger(__name__)

RULES_FILE = "bought_together.parquet"
SOURCES = ("temporal_train", "loo_train", "all")
RANK_BY = ("confidence", "lift", "support")


@dataclass
class AssocSettings:
    source: str  # temporal_train | loo_train | all
    events: list[str]  # event types that form baskets, e.g. [purchase]
    min_basket_size: int  # baskets with fewer distinct items carry no pair
    max_basket_size: int  # larger baskets (wholesale orders) are dropped: they add noise and n^2 pairs
    min_pair_count: int  # absolute support floor (baskets with both items)
    min_support: float
    min_confidence: float
    min_lift: float
    top_k: int  # rules kept per antecedent item
    rank_by: str  # confidence | lift | support

    @classmethod
    def from_cfg(cls, cfg) -> "AssocSettings":
        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        s = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        if s.source not in SOURCES:
            raise ValueError(f"assoc.source={s.source!r}: expected one of {SOURCES}")
        if s.rank_by not in RANK_BY:
            raise ValueError(f"assoc.rank_by={s.rank_by!r}: expected one of {RANK_BY}")
        for name in ("min_support", "min_confidence"):
            if not 0.0 <= getattr(s, name) <= 1.0:
                raise ValueError(f"assoc.{name}={getattr(s, name)}: must lie in [0, 1]")
        if s.min_basket_size < 2 or s.max_basket_size < s.min_basket_size:
            raise ValueError(f"assoc.min_basket_size={s.min_basket_size}, max_basket_size={s.max_basket_size}: "
                             "need 2 <= min <= max")
        if s.top_k < 1 or s.min_pair_count < 1:
            raise ValueError(f"assoc.top_k={s.top_k}, assoc.min_pair_count={s.min_pair_count}: must be >= 1")
        return s


@dataclass
class RulesResult:
    rules: pd.DataFrame
    n_baskets: int
    n_baskets_dropped_large: int
    n_items_in_baskets: int


def basket_matrix(events: pd.DataFrame, s: AssocSettings) -> tuple[sparse.csr_matrix, int]:
    """Binary baskets x items matrix (items = dense item ids) and the count of baskets dropped as too large."""
    ev = events[events["event"].isin(s.events) & events["order_id"].notna()]
    pairs = ev[["order_id", "item_id"]].drop_duplicates()
    sizes = pairs.groupby("order_id")["item_id"].transform("size")
    n_large = int(pairs.loc[sizes > s.max_basket_size, "order_id"].nunique())
    pairs = pairs[(sizes >= s.min_basket_size) & (sizes <= s.max_basket_size)]
    codes, _ = pd.factorize(pairs["order_id"])
    n_items = int(events["item_id"].max()) + 1 if len(events) else 0
    m = sparse.csr_matrix((np.ones(len(pairs), np.float32), (codes, pairs["item_id"].to_numpy())),
                          shape=(int(codes.max()) + 1 if len(codes) else 0, n_items))
    return m, n_large


def mine_rules(events: pd.DataFrame, s: AssocSettings) -> RulesResult:
    """Association rules a -> b over the baskets in ``events`` (see module docstring)."""
    B, n_large = basket_matrix(events, s)
    n_baskets = B.shape[0]
    cols = ["item_id", "other_item_id", "support", "confidence", "lift", "pair_count"]
    if n_baskets == 0:
        return RulesResult(pd.DataFrame({c: pd.Series(dtype="int64" if "id" in c or c == "pair_count" else "float64") for c in cols}),
                           0, n_large, 0)
    item_count = np.asarray(B.sum(axis=0)).ravel()
    C = (B.T @ B).tocoo()  # co-occurrence counts
    keep = (C.row != C.col) & (C.data >= s.min_pair_count)
    a, b, n_ab = C.row[keep].astype(np.int64), C.col[keep].astype(np.int64), C.data[keep].astype(np.float64)
    support = n_ab / n_baskets
    confidence = n_ab / item_count[a]
    lift = confidence / (item_count[b] / n_baskets)
    df = pd.DataFrame({"item_id": a, "other_item_id": b, "support": support, "confidence": confidence,
                       "lift": lift, "pair_count": n_ab.astype(np.int64)})
    df = df[(df["support"] >= s.min_support) & (df["confidence"] >= s.min_confidence) & (df["lift"] >= s.min_lift)]
    df = (df.sort_values(["item_id", s.rank_by, "other_item_id"], ascending=[True, False, True])
            .groupby("item_id", sort=False).head(s.top_k).reset_index(drop=True))
    return RulesResult(df, n_baskets, n_large, int((item_count > 0).sum()))


def source_events(cfg: DictConfig, s: AssocSettings) -> pd.DataFrame:
    d = processed_dir(cfg)
    cols = ["user_id", "item_id", "event", "order_id"]
    if s.source == "all":
        return load_events(d, columns=cols)
    kind = s.source.split("_")[0]
    return load_split(d, kind, "train", columns=cols)


def run(cfg: DictConfig) -> Path:
    """Mine the rules; returns the output folder (``${paths.artifacts}/assoc/<data>``)."""
    s = AssocSettings.from_cfg(cfg.assoc)
    events = source_events(cfg, s)
    res = mine_rules(events, s)
    out = Path(str(cfg.paths.artifacts)) / "assoc" / str(cfg.data.name)
    with atomic_dir(out) as tmp:
        res.rules.to_parquet(tmp / RULES_FILE, index=False)
        write_json(tmp / "manifest.json", {
            "data": str(cfg.data.name), "source": s.source, "n_events": int(len(events)),
            "n_baskets": res.n_baskets, "n_baskets_dropped_large": res.n_baskets_dropped_large,
            "n_items_in_baskets": res.n_items_in_baskets, "n_rules": int(len(res.rules)),
            "n_antecedents": int(res.rules["item_id"].nunique()),
            "config": OmegaConf.to_container(cfg.assoc, resolve=True),
            "input_hashes": {"processed_manifest": file_sha256(processed_dir(cfg) / "manifest.json")},
            "processed_code_version": load_manifest(processed_dir(cfg)).get("code_version"),
            "code_version": code_version(), "device": "cpu",
        })
    log.info("%d rules over %d items from %d baskets -> %s", len(res.rules), res.rules["item_id"].nunique(),
             res.n_baskets, out)
    return out


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        out = run(cfg)
    except ValueError as e:
        print(f"baskets: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"rules_dir": str(out), **{k: v for k, v in json.loads((out / 'manifest.json').read_text()).items()
                                                 if k.startswith("n_")}}))


if __name__ == "__main__":
    main()
