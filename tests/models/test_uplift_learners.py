"""Uplift meta-learners (DR, X, class transformation, seed bags) and the nested model selection."""
from __future__ import annotations

import numpy as np
import pytest

from models.uplift import qini_auc_score, uplift_at_k
from models.uplift_learners import (DRLearner, InnerCVSelect, RandomLearner, SeedBag, XLearner, blend_scores,
                                    learner_from_spec)

FAST = {"max_iter": 30, "learning_rate": 0.1, "max_depth": 3, "min_samples_leaf": 50}


def planted(n=6000, seed=0):
    """Randomised treatment; it raises the response by 0.25 only where x0 > 0 (x1 moves the base rate)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    t = rng.integers(0, 2, n)
    p = 0.15 + 0.1 * (x[:, 1] > 0) + 0.25 * t * (x[:, 0] > 0)
    return x, (rng.random(n) < p).astype(int), t


@pytest.mark.parametrize("kind", ["dr", "x", "ct", "s", "t"])
def test_every_kind_finds_the_planted_uplift(kind):
    x, y, t = planted()
    spec = {"kind": kind}
    if kind in ("s", "t", "ct"):
        spec["gbt"] = FAST
    else:
        spec.update(outcome=FAST, final=FAST)
    model = learner_from_spec(spec)().fit(x[:4000], y[:4000], t[:4000])
    u = model.predict(x[4000:])
    top = u >= np.quantile(u, 0.5)
    assert (x[4000:, 0][top] > 0).mean() > 0.8           # the persuadable half ranked first
    assert uplift_at_k(y[4000:], u, t[4000:], 0.3) > 0.15


def test_dr_pseudo_outcome_is_unbiased_for_the_average_effect():
    x, y, t = planted(20000, seed=3)
    dr = DRLearner(lambda: __import__("sklearn.ensemble", fromlist=["x"]).HistGradientBoostingClassifier(**FAST),
                   lambda: None, folds=2, propensity=0.5)
    phi = dr.pseudo_outcome(x, y, t)
    assert phi.mean() == pytest.approx(0.125, abs=0.02)  # 0.25 on half of the users


def test_seed_bag_and_blend():
    x, y, t = planted(3000)
    bag = SeedBag(lambda i: learner_from_spec({"kind": "dr", "outcome": FAST, "final": FAST})(), 2).fit(x, y, t)
    assert len(bag.members) == 2 and bag.predict(x[:10]).shape == (10,)
    z = blend_scores({"a": np.arange(5.0), "b": np.arange(5.0) * 10}, {"a": 1.0, "b": 1.0})
    assert np.allclose(z, (np.arange(5.0) - 2) / np.arange(5.0).std())


def test_nested_selection_uses_only_its_rows_and_prefers_the_real_model():
    x, y, t = planted(6000, seed=1)
    cands = {"random": lambda: RandomLearner(0), "dr": learner_from_spec({"kind": "dr", "outcome": FAST, "final": FAST})}
    sel = InnerCVSelect(cands, {"mix": {"random": 1.0, "dr": 1.0}}, folds=3, metric="qini").fit(x[:4000], y[:4000], t[:4000])
    assert sel.chosen_ == "dr" and set(sel.inner_scores_) == {"random", "dr", "mix"}
    assert sel.inner_scores_["dr"] > sel.inner_scores_["random"]
    assert qini_auc_score(y[4000:], sel.predict(x[4000:]), t[4000:]) > 0.1


def test_bad_specs_name_the_field():
    with pytest.raises(ValueError, match=r"uplift.model.candidates.DR.kind"):
        learner_from_spec({"kind": "w"}, "uplift.model.candidates.DR")
    with pytest.raises(ValueError, match=r"uplift.model.candidates.DR: unknown key\(s\) \['bags'\]"):
        learner_from_spec({"kind": "dr", "outcome": FAST, "final": FAST, "bags": 3}, "uplift.model.candidates.DR")
    with pytest.raises(ValueError, match=r"\.final: must be a mapping"):
        learner_from_spec({"kind": "x", "outcome": FAST, "final": 3}, "c")
    with pytest.raises(ValueError, match="unknown member"):
        InnerCVSelect({"a": lambda: RandomLearner(0)}, {"ab": {"a": 1.0, "b": 1.0}})
    with pytest.raises(ValueError, match="propensity"):
        XLearner(lambda: None, lambda: None).fit(np.zeros((4, 1)), np.array([0, 1, 0, 1]), np.ones(4, dtype=int))


def test_linear_t_learner_from_spec_and_bad_values():
    x, y, t = planted(4000, seed=4)
    for inter in (False, True):
        u = learner_from_spec({"kind": "lr", "C": 1.0, "interactions": inter})().fit(x[:3000], y[:3000], t[:3000]).predict(x[3000:])
        assert u.shape == (1000,) and uplift_at_k(y[3000:], u, t[3000:], 0.3) > 0.1
    with pytest.raises(ValueError, match=r"c\.C: must be a number > 0"):
        learner_from_spec({"kind": "lr", "C": 0}, "c")
    with pytest.raises(ValueError, match=r"c\.interactions: must be true or false"):
        learner_from_spec({"kind": "lr", "interactions": "yes"}, "c")


def test_rank_blend_and_mix_selection_metric():
    from models.uplift_learners import Blend, rank01, selection_scores

    assert np.allclose(rank01(np.array([10.0, -5.0, 1e9])), [0.5, 0.0, 1.0])   # heavy tail flattened
    z = blend_scores({"a": np.array([0.0, 1.0, 100.0]), "b": np.array([3.0, 2.0, 1.0])}, {"a": 1.0, "b": 1.0}, "rank")
    assert np.allclose(z, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="blend scale"):
        Blend([], scale="median")
    table = {"a": {"qini": 0.10, "uplift_at_k": 0.05}, "b": {"qini": 0.05, "uplift_at_k": 0.09},
             "c": {"qini": 0.09, "uplift_at_k": 0.08}}
    mix = selection_scores(table, "mix")
    assert max(mix, key=mix.get) == "c"                        # good on both beats best on one
    assert max(selection_scores(table, "qini"), key=selection_scores(table, "qini").get) == "a"
    with pytest.raises(ValueError, match="selection metric"):
        selection_scores(table, "auc")
