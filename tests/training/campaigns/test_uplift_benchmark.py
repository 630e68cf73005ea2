"""The uplift benchmark's machinery (``training.campaigns.uplift_benchmark``) on planted data."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.models.test_uplift_learners import FAST, planted
from training.campaigns.hillstrom import UpliftData
from training.campaigns.uplift_benchmark import BASELINES, make_methods, paired, run_cv, screen


def test_bench_uplift_nested_cv_on_planted_data():
    """The benchmark's loop: every method on the same outer folds, the project's choice recorded per
    fold, and the paired comparison (plain and overlap-corrected p) against the best baseline."""
    x, y, t = planted(3000, seed=2)
    data = UpliftData(x, y, t, ["a", "b", "c"])
    ucfg = OmegaConf.create({
        "k": 0.3, "gbt": FAST,
        "model": {"select": {"folds": 2, "repeats": 1, "metric": "qini", "seed": 0},
                  "candidates": {"DR": {"kind": "dr", "outcome": FAST, "final": FAST}},
                  "blends": {}, "net": {}, "log_features": []}})
    methods = make_methods(ucfg, data.feature_names)
    res = run_cv(data, methods, ["random", "S-GBT", "T-GBT", "T-LR", "project"], 3, 1, 0, 0.3)
    assert res["project"]["chosen"] == ["DR"] * 3 and all(len(res[n]["qini"]) == 3 for n in BASELINES)
    best, mean, p, p_corrected = paired(res, "qini")
    assert best in BASELINES and 0.0 <= p <= 1.0 and 0.0 <= p_corrected <= 1.0
    ahead = np.mean(res["project"]["qini"]) > mean
    assert (p <= p_corrected) if ahead else (p >= p_corrected)    # the correction widens the t interval
    assert np.mean(res["project"]["uplift_at_k"]) > np.mean(res["random"]["uplift_at_k"])


def test_bench_uplift_fixed_project_and_screening_use_only_their_rows():
    x, y, t = planted(3000, seed=5)
    data = UpliftData(x, y, t, ["a", "b", "c"])
    model = {"fixed": "DR+lin", "blend_scale": "rank",
             "select": {"folds": 2, "repeats": 1, "metric": "mix", "seed": 0},
             "candidates": {"DR": {"kind": "dr", "outcome": FAST, "final": FAST}, "lin": {"kind": "lr", "C": 1.0}},
             "blends": {"DR+lin": {"DR": 1.0, "lin": 1.0}}, "net": {}, "log_features": []}
    ucfg = OmegaConf.create({"k": 0.3, "gbt": FAST, "model": model, "cv": {"folds": 3, "repeats": 1, "seed": 0},
                             "screen": {"outer_fold": 1, "folds": 2, "repeats": 1, "seed": 0,
                                        "candidates": {"lin-int": {"kind": "lr", "C": 0.1, "interactions": True}},
                                        "blends": {"DR+lin-int": {"DR": 1.0, "lin-int": 1.0}}}})
    methods = make_methods(ucfg, data.feature_names)
    res = run_cv(data, methods, ["T-LR", "nested-select", "project"], 3, 1, 0, 0.3)
    assert res["project"]["chosen"] == ["DR+lin"] * 3
    assert set(res["nested-select"]["chosen"]) <= {"DR", "lin", "DR+lin"}
    assert np.mean(res["project"]["uplift_at_k"]) > 0.1
    out = screen(data, ucfg)
    assert out["rows"] == 2000 and out["outer_fold"] == 1      # the training rows of one outer fold
    assert {"DR", "lin", "lin-int", "DR+lin@zscore", "DR+lin@rank", "DR+lin-int@rank"} <= set(out["screen"])
    bad = OmegaConf.merge(ucfg, {"model": {"fixed": "nope"}})
    with pytest.raises(ValueError, match="uplift.model.fixed"):
        make_methods(bad, data.feature_names)
