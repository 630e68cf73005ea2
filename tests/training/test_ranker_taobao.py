"""The ranker's multi-task heads on real data: Taobao's behaviours (view -> cart -> purchase) each get a head
(conf/data_model/taobao_ranker.yaml), trained on a two-tower retriever's real candidates, exported to ONNX and
served by serving.ranking with one probability per head."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from tests.training.conftest import CONF

pytestmark = pytest.mark.slow


def _cfg(root, data_root, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=["data=taobao", f"paths.artifacts={root}", f"paths.data_root={data_root}",
                                            "trainer=cpu", *overrides])


def test_taobao_ranker_has_a_head_per_behaviour(tmp_path_factory, data_root):
    from features.prepare import run as prepare
    from serving.bundle import read_manifest, resolve
    from serving.ranking import Ranker, RankRequest
    from training import export
    from training.train import run as train

    root = tmp_path_factory.mktemp("taobao")
    prepare(_cfg(root, data_root))
    res = train(_cfg(root, data_root, "model=two_tower", "trainer.eval.split=temporal", "trainer.max_epochs=2"))
    ecfg = _cfg(root, data_root, "model=two_tower")
    ecfg.run = str(res.run_dir)
    bundle = export.run(ecfg).bundle_dir
    cfg = _cfg(root, data_root, "model=ranker", f"model.retriever_bundle={bundle}", "trainer.max_epochs=2",
               "model.n_candidates=100")
    assert list(cfg.model.heads) == ["view", "cart", "purchase"]       # the data_model specialisation applied
    run_dir = train(cfg).run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/users"] > 100 and np.isfinite(metrics["test/ndcg@10"]) and metrics["onnx_max_abs_diff"] <= 1e-4
    for prefix in ("test/", "test/retrieval_"):   # Taobao items have categories: diversity of both orders
        assert metrics[f"{prefix}category_known@10"] == 1.0 and 0 < metrics[f"{prefix}ild@10"] <= 1
        assert np.isfinite(metrics[f"{prefix}novelty@10"]) and 0 <= metrics[f"{prefix}tail_share@10"] <= 1
    served = resolve(bundle.parent)                   # export_to_bundle: a new version (parent: the retriever's), LATEST
    assert served != bundle and read_manifest(served)["parent"] == bundle.name and Ranker.load(bundle) is None
    ranker = Ranker.load(served)
    assert ranker is not None and ranker.heads == ["view", "cart", "purchase"]
    emb = np.load(bundle / "item_embeddings.npy")
    req = RankRequest(user_emb=emb[:5].mean(0), history=np.arange(5), candidates=np.arange(10, 40),
                      retrieval_scores=np.linspace(1, 0, 30).astype(np.float32), hour=10, dow=2)
    (probs,) = ranker.head_probs([req])
    assert probs.shape == (30, 3) and ((probs >= 0) & (probs <= 1)).all()
    w = np.array([1.0, 0.5, 1.0], np.float32)                           # score_weights of taobao_ranker.yaml
    np.testing.assert_allclose(ranker.score([req])[0], probs @ w, rtol=1e-5, atol=1e-6)
