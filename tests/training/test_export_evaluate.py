"""training.export (bundle layout, ONNX Runtime parity, LATEST) and training.evaluate on a tiny run."""
import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from training import evaluate, export
from training.runs import load_module, open_run
from training.train import run

FAST = ["model.hidden=16", "model.batch_size=64", "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def trained(tiny_artifacts, tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from tests.training.conftest import CONF

    root = tmp_path_factory.mktemp("exp")
    out = {}
    for model, extra in (("sasrec", ["model.use_attributes=true", "model.blocks=1", "model.heads=2"]),
                         ("two_tower", ["model.mlp_hidden=16", "model.random_negatives=8",
                                        "model.user_features.enabled=true"])):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            cfg = compose("config", overrides=[f"paths.artifacts={tiny_artifacts}", f"paths.runs={root / 'runs'}",
                                               f"paths.bundles={root / 'bundles'}", "data.name=tiny",
                                               f"model={model}", *FAST, *extra])
        out[model] = (cfg, run(cfg))
    return out


@pytest.mark.parametrize("model", ["sasrec", "two_tower"])
def test_export_bundle_layout_and_onnx_parity(trained, model):
    cfg, res = trained[model]
    cfg.run = str(res.run_dir)
    b = export.run(cfg).bundle_dir
    for f in ("manifest.json", "config.yaml", "item_embeddings.npy", "items.parquet", "users.parquet", "encoder.onnx"):
        assert (b / f).exists(), f
    assert (b.parent / "LATEST").read_text().strip() == b.name
    man = json.loads((b / "manifest.json").read_text())
    emb = np.load(b / "item_embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (man["n_items"], man["dim"]) == (60, 16)
    assert man["schema_version"] == 1 and man["max_len"] == 50 and man["encoder_inputs"][0]["name"] == "item_seq"
    assert "test/ndcg@10" in man["metrics"] and set(man["files"]) >= {"encoder.onnx", "item_embeddings.npy"}
    # parity, recomputed here on random sequences of several batch sizes
    info = open_run(res.run_dir)
    module = load_module(info, "cpu")
    sess = ort.InferenceSession(str(b / "encoder.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    names = [i["name"] for i in man["encoder_inputs"]]
    assert [i.name for i in sess.get_inputs()] == names
    cards = None
    if model == "two_tower":                                   # user features travel with the bundle
        assert names == ["item_seq", "user_feat"]
        spec = json.loads((b / "user_features.json").read_text())
        table = pd.read_parquet(b / "user_features.parquet")
        assert man["encoder_inputs"][1]["columns"] == spec["names"] and list(table.columns[2:]) == spec["names"]
        cards = spec["cardinalities"]
        assert len(table) == 300 and all((table[n] >= 0).all() and (table[n] < c).all() for n, c in zip(spec["names"], cards))
    for bsz in (1, 7, 64):
        seq = torch.randint(1, 61, (bsz, 50), generator=g)
        seq[:, : 50 - 5] = 0                                   # short, left-padded histories
        feed, uf = {"item_seq": seq.numpy()}, None
        if cards is not None:
            uf = torch.stack([torch.randint(0, c, (bsz,), generator=g) for c in cards], 1)
            feed["user_feat"] = uf.numpy()
        got = sess.run(["user_emb"], feed)[0]
        with torch.no_grad():
            want = module.user_embeddings(seq, uf).numpy()
        assert np.abs(got - want).max() <= 1e-4
        # scores from the bundle = inner product with item_embeddings
        with torch.no_grad():
            s = module.score_batch(seq, user_feat=uf).numpy()
        assert np.allclose(got @ emb.T, s, atol=1e-3)
    items = pd.read_parquet(b / "items.parquet")
    assert list(items.columns) == ["item_id", "item_key", "category", "price", "popularity", "available"]
    assert items["item_id"].tolist() == list(range(60))
    users = pd.read_parquet(b / "users.parquet")
    assert {"user_id", "user_key", "history", "purchases", "purchase_ts"} <= set(users.columns)
    assert users["history"].map(len).max() <= 50 and users["user_key"].str.fullmatch(r"[0-9a-f]{16}").all()


def test_evaluate_reproduces_the_run_metrics(trained):
    cfg, res = trained["sasrec"]
    cfg.run = str(res.run_dir)
    m = evaluate.run(cfg).metrics
    assert m["test/ndcg@10"] == pytest.approx(res.metrics["test/ndcg@10"], abs=1e-6)
    assert m["valid/hr@10"] == pytest.approx(res.metrics["valid/hr@10"], abs=1e-6)
    assert (res.run_dir / "eval.json").exists()


def test_export_refuses_baselines_and_missing_run(trained, make_cfg):
    with pytest.raises((ValueError, FileNotFoundError)):
        cfg = make_cfg()
        cfg.run = "/nonexistent/run"
        export.run(cfg)
