"""Segments: clusters on standardised profile features (k-means or a Gaussian mixture, k chosen by
silhouette) and the named segments of the marketing plan (rules in config), each with its size and a
description derived from its centre.

Cluster features are log1p-transformed where configured, missing values are filled with the
feature's median, and everything is standardised. k runs over ``k_min..k_max``; the silhouette is
computed on a seeded sample of at most ``silhouette_sample`` users, the model is fitted on at most
``fit_sample`` users and then labels everyone. A cluster is named after its strongest centre features
(e.g. ``c2: high frequency, high monetary``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

LEVEL_WORDS = ((1.0, "very high"), (0.5, "high"), (-0.5, None), (-1.0, "low"), (-np.inf, "very low"))


@dataclass
class ClusterResult:
    labels: pd.Series             # segment id per user
    k: int
    silhouette_by_k: dict[int, float]
    algorithm: str


def _level(z: float) -> str | None:
    for threshold, word in LEVEL_WORDS:
        if z >= threshold:
            return word
    return None


def feature_matrix(profiles: pd.DataFrame, seg_cfg: dict[str, Any]) -> pd.DataFrame:
    """The clustering features (log1p where configured, NaN -> median, constant columns dropped)."""
    missing = [f for f in seg_cfg["features"] if f not in profiles.columns]
    if missing:
        raise ValueError(f"profile.segments.features: unknown profile columns {missing}")
    X = profiles[list(seg_cfg["features"])].astype("float64")
    for f in seg_cfg["log_features"]:
        if f in X.columns:
            X[f] = np.log1p(X[f].clip(lower=0))
    X = X.loc[:, X.notna().any()]
    X = X.fillna(X.median())
    return X.loc[:, X.std(ddof=0) > 0]


def cluster(profiles: pd.DataFrame, seg_cfg: dict[str, Any], seed: int) -> ClusterResult:
    """Cluster users; k by best silhouette over the configured range."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    algorithm = seg_cfg["algorithm"]
    if algorithm not in ("kmeans", "gmm"):
        raise ValueError(f"profile.segments.algorithm must be 'kmeans' or 'gmm', got {algorithm!r}")
    k_min, k_max = int(seg_cfg["k_min"]), int(seg_cfg["k_max"])
    if not 2 <= k_min <= k_max:
        raise ValueError(f"profile.segments: need 2 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
    X = feature_matrix(profiles, seg_cfg)
    n = len(X)
    if X.shape[1] == 0 or n <= k_min:
        return ClusterResult(pd.Series(0, index=profiles.index, dtype="int64"), 1, {}, algorithm)
    Z = StandardScaler().fit_transform(X.to_numpy())
    rng = np.random.default_rng(seed)
    fit_idx = rng.choice(n, min(n, int(seg_cfg["fit_sample"])), replace=False)
    sil_idx = rng.choice(n, min(n, int(seg_cfg["silhouette_sample"])), replace=False)

    def make(k: int):
        if algorithm == "kmeans":
            return KMeans(n_clusters=k, n_init=4, random_state=seed)
        return GaussianMixture(n_components=k, covariance_type="full", random_state=seed)

    scores: dict[int, float] = {}
    models = {}
    # Small dense problems: extra BLAS / OpenMP threads only contend (10x slower on a busy machine).
    with threadpool_limits(limits=int(seg_cfg["threads"])):
        for k in range(k_min, min(k_max, n - 1) + 1):
            model = make(k).fit(Z[fit_idx])
            labels = model.predict(Z[sil_idx])
            if len(np.unique(labels)) < 2:
                continue
            scores[k] = float(silhouette_score(Z[sil_idx], labels, random_state=seed))
            models[k] = model
        if not scores:
            return ClusterResult(pd.Series(0, index=profiles.index, dtype="int64"), 1, {}, algorithm)
        best = max(scores, key=lambda k: (scores[k], -k))
        raw = models[best].predict(Z)
    # Number clusters by size (0 = largest) so ids are stable and readable.
    order = pd.Series(raw).value_counts().index
    remap = {old: new for new, old in enumerate(order)}
    labels = pd.Series(pd.Series(raw).map(remap).to_numpy(), index=profiles.index, dtype="int64")
    return ClusterResult(labels, best, scores, algorithm)


def describe(members: pd.DataFrame, everyone: pd.DataFrame, features: list[str], threshold: float) -> tuple[dict[str, float], dict[str, float], str]:
    """Centre (median of members) and z-scores of the member mean against everyone, and a sentence
    naming the features whose |z| exceeds ``threshold``, strongest first."""
    centre, zs, parts = {}, {}, []
    for f in features:
        col = everyone[f].astype("float64")
        sd = col.std(ddof=0)
        m = members[f].astype("float64")
        centre[f] = float(m.median()) if m.notna().any() else float("nan")
        zs[f] = float((m.mean() - col.mean()) / sd) if sd and sd > 0 and m.notna().any() else 0.0
    for f in sorted(features, key=lambda f: -abs(zs[f])):
        word = _level(zs[f])
        if word and abs(zs[f]) >= threshold:
            parts.append(f"{word} {f} (median {centre[f]:.3g}, {zs[f]:+.1f} sd)")
    return centre, zs, "; ".join(parts) if parts else "close to the average user on every feature"


def named_segments(profiles: pd.DataFrame, rules: list[dict[str, Any]], default: str) -> pd.Series:
    """The first rule (a pandas query over profile columns) each user matches; ``default`` otherwise."""
    names = pd.Series(default, index=profiles.index, dtype="object")
    unset = pd.Series(True, index=profiles.index)
    for rule in rules:
        if "name" not in rule or "rule" not in rule:
            raise ValueError(f"profile.named_segments: each entry needs 'name' and 'rule', got {dict(rule)}")
        try:
            hit_index = profiles.query(rule["rule"], engine="python").index
        except Exception as exc:  # noqa: BLE001 - re-raised with the rule named
            raise ValueError(f"profile.named_segments: rule of {rule['name']!r} ({rule['rule']!r}) failed: {exc}") from exc
        hit = profiles.index.isin(hit_index) & unset.to_numpy()
        names[hit] = rule["name"]
        unset &= ~hit
    return names


def segment_table(profiles: pd.DataFrame, clusters: ClusterResult, named: pd.Series, rules: list[dict[str, Any]],
                  default: str, seg_cfg: dict[str, Any]) -> pd.DataFrame:
    """segments.parquet: one row per cluster and per named segment with size, share, description,
    rule (named only), and the centre (``centre_<feature>``, median) and ``z_<feature>`` columns."""
    feats = [f for f in seg_cfg["features"] if f in profiles.columns] + [
        f for f in ("clv", "churn_prob", "r_score", "f_score", "m_score") if f in profiles.columns and f not in seg_cfg["features"]
    ]
    thr = float(seg_cfg["describe_threshold"])
    rows = []
    for seg_id in sorted(clusters.labels.unique()):
        members = profiles[clusters.labels == seg_id]
        centre, zs, text = describe(members, profiles, list(seg_cfg["features"]), thr)
        top = [f for f in sorted(zs, key=lambda f: -abs(zs[f])) if _level(zs[f]) and abs(zs[f]) >= thr][:2]
        name = f"c{seg_id}: " + (", ".join(f"{_level(zs[f])} {f}" for f in top) if top else "average")
        full_centre, full_z, _ = describe(members, profiles, feats, thr)
        rows.append({"kind": "cluster", "segment": int(seg_id), "name": name, "rule": None, "size": len(members),
                     "description": text, **{f"centre_{f}": v for f, v in full_centre.items()},
                     **{f"z_{f}": v for f, v in full_z.items()}})
    names = [r["name"] for r in rules] + [default]
    for i, name in enumerate(names):
        members = profiles[named == name]
        if len(members):
            centre, zs, text = describe(members, profiles, feats, thr)
        else:
            centre, zs, text = {f: float("nan") for f in feats}, {f: float("nan") for f in feats}, "no users match"
        rule = rules[i]["rule"] if i < len(rules) else "everyone else"
        rows.append({"kind": "named", "segment": i, "name": name, "rule": rule, "size": len(members),
                     "description": text, **{f"centre_{f}": v for f, v in centre.items()},
                     **{f"z_{f}": v for f, v in zs.items()}})
    table = pd.DataFrame(rows)
    table["share"] = table["size"] / max(1, len(profiles))
    table["rule"] = table["rule"].astype("string")
    return table
