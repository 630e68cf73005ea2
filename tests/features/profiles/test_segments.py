"""Clusters with k by silhouette, named segments, descriptions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.profiles.segments import cluster, describe, named_segments

SEG = {"algorithm": "kmeans", "k_min": 2, "k_max": 6, "silhouette_sample": 1000, "fit_sample": 1000,
       "features": ["a", "b"], "log_features": [], "describe_threshold": 0.5, "threads": 1}


def _blobs(n_per=60, seed=0):
    rng = np.random.default_rng(seed)
    centres = [(0, 0), (10, 0), (0, 10)]
    pts = np.vstack([rng.normal(c, 0.5, (n_per, 2)) for c in centres])
    return pd.DataFrame(pts, columns=["a", "b"])


@pytest.mark.parametrize("algorithm", ["kmeans", "gmm"])
def test_k_is_chosen_by_silhouette(algorithm):
    df = _blobs()
    res = cluster(df, {**SEG, "algorithm": algorithm}, seed=0)
    assert res.k == 3
    assert max(res.silhouette_by_k, key=res.silhouette_by_k.get) == 3
    assert sorted(res.labels.value_counts().tolist()) == [60, 60, 60]
    assert set(res.labels) == {0, 1, 2}


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="profile.segments.algorithm"):
        cluster(_blobs(), {**SEG, "algorithm": "dbscan"}, 0)
    with pytest.raises(ValueError, match="k_min"):
        cluster(_blobs(), {**SEG, "k_min": 1}, 0)
    with pytest.raises(ValueError, match="unknown profile columns"):
        cluster(_blobs(), {**SEG, "features": ["a", "zzz"]}, 0)


def test_named_segments_first_match_wins():
    df = pd.DataFrame({"m": [100, 100, 1, 1], "v": [0, 50, 50, 0]})
    rules = [{"name": "high_value", "rule": "m >= 50"}, {"name": "browser", "rule": "v >= 10"}]
    assert named_segments(df, rules, "regular").tolist() == ["high_value", "high_value", "browser", "regular"]
    with pytest.raises(ValueError, match="'browser'"):
        named_segments(df, [{"name": "browser", "rule": "nope >= 1"}], "regular")


def test_description_names_the_distinctive_features():
    df = pd.DataFrame({"monetary": [1.0] * 90 + [100.0] * 10, "recency_days": [50.0] * 100})
    centre, z, text = describe(df.iloc[90:], df, ["monetary", "recency_days"], 0.5)
    assert centre["monetary"] == 100.0 and z["monetary"] > 2
    assert text.startswith("very high monetary") and "recency_days" not in text
