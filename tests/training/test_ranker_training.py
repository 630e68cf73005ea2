"""The ranker through ``training.train`` on a small synthetic shop: hard-negative stages, metrics, the standard
run folder (trainer settings, loggers incl. MLflow, resume), ONNX export and parity, the bundle files that
serving.ranking loads, and the refusal of a retriever trained on another split or period."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from models.ranker import DCNv2Ranker
from serving.ranking import Ranker, RankRequest
from tests.toy_bundle import make_bundle, toy_embeddings
from training.ranker_data import RankerSetupError
from training.train import run

REPO = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)
N_ITEMS, N_USERS = 300, 120


def write_processed(root: Path, seed: int = 0) -> Path:
    """Users re-buy a few favourite items; returns happen now and then. Temporal cut-offs split the year."""
    rng = np.random.default_rng(seed)
    rows = []
    start = pd.Timestamp("2024-01-01", tz="UTC")
    for u in range(N_USERS):
        fav = rng.choice(N_ITEMS, 4, replace=False)
        for t in range(30):
            item = int(rng.choice(fav)) if rng.random() < 0.6 else int(rng.integers(N_ITEMS))
            ts = start + pd.Timedelta(days=int(rng.integers(0, 360)), hours=int(rng.integers(0, 24)))
            rows.append((u, item, "purchase", ts))
            if rng.random() < 0.05:
                rows.append((u, item, "return", ts + pd.Timedelta(days=3)))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts"])
    ev["price"], ev["quantity"], ev["session_id"], ev["order_id"] = 1.0, 1, None, None
    ev = ev.sort_values(["user_id", "ts"]).reset_index(drop=True)
    ev["src_row"] = np.arange(len(ev))
    pdir = root / "processed" / "toyshop"
    (pdir / "splits" / "temporal").mkdir(parents=True)
    ev.to_parquet(pdir / "events.parquet")
    pd.DataFrame({"user_id": np.arange(N_USERS), "user_key": [f"u{i:04x}" for i in range(N_USERS)],
                  "country": rng.choice(["UK", "France", "Spain"], N_USERS)}).to_parquet(pdir / "users.parquet")
    cut_v, cut_t = pd.Timestamp("2024-10-01", tz="UTC"), pd.Timestamp("2024-11-15", tz="UTC")
    ev[ev.ts < cut_v].to_parquet(pdir / "splits/temporal/train.parquet")
    ev[(ev.ts >= cut_v) & (ev.ts < cut_t)].to_parquet(pdir / "splits/temporal/valid.parquet")
    ev[ev.ts >= cut_t].to_parquet(pdir / "splits/temporal/test.parquet")
    (pdir / "manifest.json").write_text(json.dumps({"n_items": N_ITEMS, "n_users": N_USERS, "code_version": "test"}))
    _, cats = toy_embeddings(N_ITEMS, 16)                   # the toy bundle's categories; every 13th item has none
    pd.DataFrame({"item_id": np.arange(N_ITEMS), "item_key": [f"SKU{i:05d}" for i in range(N_ITEMS)],
                  "category": [None if i % 13 == 0 else f"cat{c}" for i, c in enumerate(cats)]}).to_parquet(
        pdir / "items.parquet")
    return pdir


def train_period(pdir: Path) -> list[str]:
    ts = pd.read_parquet(pdir / "splits/temporal/train.parquet")["ts"]
    return [str(ts.min()), str(ts.max())]


def retriever_bundle(root: Path, pdir: Path, split: str = "temporal", period: list[str] | None = None, **kw) -> Path:
    """A toy retriever bundle whose manifest records what its retriever was trained on (``trained_on``): by
    default the train part of the temporal split of ``pdir``."""
    bundle = make_bundle(root, **kw)
    man = json.loads((bundle / "manifest.json").read_text())
    man["trained_on"] = {"data": "toyshop", "split": split, "part": "train",
                         "period": train_period(pdir) if period is None else period}
    (bundle / "manifest.json").write_text(json.dumps(man))
    return bundle


def train_ranker(cfg) -> Path:
    res = run(cfg)
    assert res.metrics, "no metrics"
    return res.run_dir


def ranker_cfg(art: Path, bundle: Path, *extra: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=[
            "model=ranker", "trainer=cpu", f"paths.artifacts={art}", "data.name=toyshop",
            f"model.retriever_bundle={bundle}", "model.n_candidates=50", "trainer.max_epochs=4", "trainer.patience=2",
            "model.batch_size=512", "trainer.num_threads=1", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranker")
    pdir = write_processed(root / "art")
    bundle = retriever_bundle(root / "bundles" / "toy-retriever", pdir, n_items=N_ITEMS, dim=16, max_len=20)
    run_dir = train_ranker(ranker_cfg(root / "art", bundle, "model.user_features.enabled=true",
                                      "logger=[csv,tensorboard,mlflow]"))
    return run_dir, Path(json.loads((run_dir / "metrics.json").read_text())["bundle"])


def test_run_folder_metrics_and_export(trained):
    run_dir, bundle = trained
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/ndcg@10", "test/retrieval_ndcg@10", "test/hr@10", "test/rerank_gain", "valid/ndcg@10"):
        assert np.isfinite(m[key]), key
    assert m["test/rerank_gain"] == pytest.approx(m["test/ndcg@10"] / m["test/retrieval_ndcg@10"] - 1)
    # re-buying favourites is learnable from the history features: the ranker beats retrieval order
    assert m["test/rerank_gain"] > 0.05
    assert m["onnx_max_abs_diff"] <= 1e-4
    # the standard run folder: trainer settings honoured, best + last checkpoints, loggers
    assert run_dir.parent.name == "ranker" and run_dir.parent.parent.name == "toyshop"
    assert m["epochs"] <= 4 and [h["epoch"] for h in m["history"]] == list(range(1, m["epochs"] + 1))
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and m["best_checkpoint"].startswith("checkpoints/best-")
    assert (run_dir / "config.yaml").exists() and (run_dir / "export" / "ranker.onnx").exists()
    assert m["protocol"]["split"] == "temporal" and m["protocol"]["period"] == train_period(
        run_dir.parents[3] / "processed" / "toyshop")
    csv = pd.read_csv(run_dir / "logs" / "csv" / "metrics.csv")
    assert csv["test/ndcg@10"].dropna().iloc[-1] == pytest.approx(m["test/ndcg@10"], rel=1e-5)   # trainer.test logged
    assert list((run_dir / "logs" / "tensorboard").glob("events.out.tfevents*"))
    man = json.loads((run_dir / "manifest.json").read_text())
    assert man["heads"] == ["purchase", "return"] and man["device"] == "cpu" and man["kind"] == "ranker"
    # a new bundle version: the retriever's files plus the ranker; the retriever's version is left as it was
    new_man = json.loads((bundle / "manifest.json").read_text())
    parent = bundle.parent / new_man["parent"]
    assert parent.name == "toy-retriever" and bundle.name == "toy-retriever.1"
    assert (bundle / "ranker.onnx").exists() and "ranker.onnx" in new_man["files"] and "ranker.onnx" in new_man["adds"]
    assert not (parent / "ranker.onnx").exists() and "ranker" not in json.loads((parent / "manifest.json").read_text())
    assert (bundle.parent / "LATEST").read_text().strip() == bundle.name
    # user features: fitted on the train part, inputs of the ranker, their table copied into the bundle for serving
    assert m["user_features"][0] == "attr_country" and "activity" in m["user_features"]
    spec = json.loads((bundle / "ranker.json").read_text())
    assert spec["cat_features"][-len(m["user_features"]):] == [f"user_{n}" for n in m["user_features"]]
    table = pd.read_parquet(bundle / "user_features.parquet")
    assert list(table.columns) == ["user_id", "user_key", *m["user_features"]] and len(table) == N_USERS
    assert json.loads((bundle / "user_features.json").read_text())["names"] == m["user_features"]


BEYOND = ("ild@10", "category_known@10", "novelty@10", "coverage@10", "tail_share@10", "gini@10")


def test_metrics_hold_beyond_accuracy_of_both_orders(trained):
    """metrics.json has the beyond-accuracy figures of the re-ranked lists and of the retrieval order of the same
    candidates, equal to training.metrics.BeyondAccuracy over top-10 lists built here from the best checkpoint,
    with categories and training counts read here from the prepared data."""
    from omegaconf import OmegaConf

    from models.ranker import combine_heads
    from training.metrics import BeyondAccuracy, category_codes
    from training.ranker import build_module
    from training.ranker_data import load_ranker_data

    run_dir, _ = trained
    m = json.loads((run_dir / "metrics.json").read_text())
    for prefix in ("test/", "test/retrieval_", "valid/", "valid/retrieval_"):
        for key in BEYOND:
            assert np.isfinite(m[prefix + key]), prefix + key
    cfg = OmegaConf.load(run_dir / "config.yaml")
    pdir = Path(cfg.paths.processed) / "toyshop"
    data = load_ranker_data(cfg, pdir, "cpu")
    module = build_module(data, cfg.model)
    module.load_state_dict(torch.load(next((run_dir / "checkpoints").glob("best*.ckpt")), map_location="cpu",
                                      weights_only=False)["state_dict"])
    b = data.test.batch
    with torch.inference_mode():
        probs = module.net.eval()(*(torch.from_numpy(x) for x in (b.dense, b.cat, b.user_emb, b.item_emb))).numpy()
    scores = combine_heads(probs, data.spec)
    cands = [np.asarray(req.candidates) for req in data.test.requests]
    reranked = np.stack([c[np.argsort(-scores[data.test.rows(r)], kind="stable")[:10]] for r, c in enumerate(cands)])
    retrieval = np.stack([c[:10] for c in cands])                # candidates are stored in retrieval order
    pop = np.bincount(pd.read_parquet(pdir / "splits/temporal/train.parquet")["item_id"], minlength=N_ITEMS)
    cat = category_codes(pd.read_parquet(pdir / "items.parquet").sort_values("item_id")["category"])
    for prefix, top in (("test/", reranked), ("test/retrieval_", retrieval)):
        ba = BeyondAccuracy(N_ITEMS, torch.from_numpy(pop), torch.from_numpy(cat))
        ba.update(torch.from_numpy(top))
        want = ba.compute()
        assert set(want) == set(BEYOND)
        for key in BEYOND:
            assert m[prefix + key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), prefix + key
    assert 0 < m["test/category_known@10"] < 1                   # every 13th item has no category
    assert not np.array_equal(np.sort(reranked, 1), np.sort(retrieval, 1))   # re-ranking changed what is shown


def test_mlflow_file_store_holds_the_run(trained):
    """logger=mlflow: a local MLflow file store (artifacts/mlruns) with the config and the final test metrics."""
    import mlflow

    run_dir, _ = trained
    m = json.loads((run_dir / "metrics.json").read_text())
    store = Path(json.loads((run_dir / "manifest.json").read_text())["config"]["paths"]["artifacts"]) / "mlruns"
    client = mlflow.tracking.MlflowClient(f"file:{store}")
    exp = client.get_experiment_by_name("toyshop-ranker")
    (found,) = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_dir.name}'")
    assert found.data.metrics["test/ndcg10"] == pytest.approx(m["test/ndcg@10"], rel=1e-5)   # MLflow drops '@'
    assert found.data.params["model/n_candidates"] == "50" and found.info.status == "FINISHED"


def test_ranker_honours_trainer_epochs_and_resumes(tmp_path):
    pdir = write_processed(tmp_path / "art")
    bundle = retriever_bundle(tmp_path / "bundle", pdir, n_items=N_ITEMS, dim=16, max_len=20)
    common = ["model.export_to_bundle=false", "trainer.patience=10", "logger=[csv]"]
    first = run(ranker_cfg(tmp_path / "art", bundle, *common, "trainer.max_epochs=1"))
    assert first.metrics["epochs"] == 1 and first.metrics["stop_reason"] == "max_epochs"
    resumed = run(ranker_cfg(tmp_path / "art", bundle, *common, "trainer.max_epochs=2", "trainer.resume=true"))
    assert resumed.run_dir == first.run_dir                            # the newest ranker run, continued
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2]
    assert resumed.metrics["history"][0] == first.metrics["history"][0]


@pytest.mark.parametrize("split, period, message", [
    ("loo", None, "trained on split 'loo', period ['2024-01-01"),                      # leave-one-out retriever
    ("temporal", ["2024-01-01 00:00:00+00:00", "2024-12-31 00:00:00+00:00"], "period ['2024-01-01 00:00:00+00:00', "
     "'2024-12-31 00:00:00+00:00']; the ranker evaluates on model.split='temporal', whose train part spans ['2024-01-"),
])
def test_refuses_a_retriever_trained_on_another_split_or_period(tmp_path, split, period, message):
    pdir = write_processed(tmp_path / "art")
    if split == "loo":
        period = [str(pd.Timestamp("2024-01-01", tz="UTC")), train_period(pdir)[1]]
    bundle = retriever_bundle(tmp_path / "bundle", pdir, split, period, n_items=N_ITEMS, dim=16, max_len=20)
    with pytest.raises(RankerSetupError, match=re.escape(message)):
        run(ranker_cfg(tmp_path / "art", bundle))
    assert not (tmp_path / "art" / "runs").exists()                       # refused before any run folder
    plain = make_bundle(tmp_path / "unrecorded", n_items=N_ITEMS, dim=16, max_len=20)   # trained_on not recorded
    with pytest.raises(RankerSetupError, match="records no trained_on split/period"):
        run(ranker_cfg(tmp_path / "art", plain))


def test_serving_ranker_matches_pytorch(trained):
    run_dir, bundle = trained
    ranker = Ranker.load(bundle)
    assert ranker is not None and ranker.provider == "CPUExecutionProvider" and ranker.heads == ["purchase", "return"]
    rng = np.random.default_rng(1)
    emb = np.load(bundle / "item_embeddings.npy")
    reqs = [RankRequest(user_emb=emb[rng.integers(0, N_ITEMS, 5)].mean(0), history=rng.integers(0, N_ITEMS, 7),
                        candidates=rng.choice(N_ITEMS, n, replace=False), retrieval_scores=np.sort(rng.random(n))[::-1].astype(np.float32),
                        hour=int(rng.integers(24)), dow=int(rng.integers(7))) for n in (30, 1, 12)]
    scores = ranker.score(reqs)
    assert [s.shape for s in scores] == [(30,), (1,), (12,)] and all(s.dtype == np.float32 for s in scores)
    # the same rows through the PyTorch checkpoint
    from models.ranker import build_batch, combine_heads
    state = torch.load(next((run_dir / "checkpoints").glob("best*.ckpt")), map_location="cpu", weights_only=False)["state_dict"]
    spec = ranker.spec
    net = DCNv2Ranker(15, spec.cat_cardinalities, spec.dim, 2, hidden=(128, 64), emb_proj=16)
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    b = build_batch(ranker.table, spec, reqs)
    with torch.inference_mode():
        ref = combine_heads(net.eval()(*(torch.from_numpy(x) for x in (b.dense, b.cat, b.user_emb, b.item_emb))).numpy(), spec)
    np.testing.assert_allclose(np.concatenate(scores), ref, atol=1e-4)
    assert ranker.score([]) == []


def test_bad_settings_fail_naming_them(tmp_path):
    write_processed(tmp_path / "art")
    with pytest.raises(RankerSetupError, match="model.retriever_bundle"):
        train_ranker(ranker_cfg(tmp_path / "art", tmp_path / "missing"))
    bundle = retriever_bundle(tmp_path / "small", tmp_path / "art" / "processed" / "toyshop", n_items=50, dim=8)
    with pytest.raises(RankerSetupError, match="item_embeddings.npy: 50 items"):
        train_ranker(ranker_cfg(tmp_path / "art", bundle))
    with pytest.raises(RankerSetupError, match="model.n_candidates"):
        train_ranker(ranker_cfg(tmp_path / "art", bundle, "model.n_candidates=3"))


def test_svd_retriever_writes_a_bundle_shaped_folder(tmp_path):
    import onnxruntime as ort

    from training.svd_retriever import run as svd_run

    write_processed(tmp_path / "art")
    pd.DataFrame({"item_id": np.arange(N_ITEMS), "item_key": [f"k{i}" for i in range(N_ITEMS)], "category": None,
                  "price_median": 2.0}).to_parquet(tmp_path / "art" / "processed" / "toyshop" / "items.parquet")
    pd.DataFrame({"user_id": np.arange(N_USERS), "user_key": [f"u{i:04x}" for i in range(N_USERS)]}).to_parquet(
        tmp_path / "art" / "processed" / "toyshop" / "users.parquet")
    cfg = ranker_cfg(tmp_path / "art", tmp_path, "model.svd_retriever.dim=8", "model.svd_retriever.max_len=10")
    out = svd_run(cfg)
    emb = np.load(out / "item_embeddings.npy")
    assert emb.shape == (N_ITEMS, 8) and np.isfinite(emb).all()
    sess = ort.InferenceSession(str(out / "encoder.onnx"))
    seq = np.array([[0] * 8 + [3, 5]], np.int64)  # items 2 and 4
    np.testing.assert_allclose(sess.run(None, {"item_seq": seq})[0][0], emb[[2, 4]].mean(0), rtol=1e-5, atol=1e-6)
    users = pd.read_parquet(out / "users.parquet")
    assert len(users) > 0 and users["history"].map(len).max() <= 10 and set(users.columns) >= {"user_key", "purchases"}
    with pytest.raises(ValueError, match="model.svd_retriever.dim"):
        svd_run(ranker_cfg(tmp_path / "art", tmp_path, "model.svd_retriever.dim=500"))


def test_retriever_encoder_with_user_feat_gets_the_bundles_codes(tmp_path):
    """A two-tower bundle whose encoder.onnx takes user_feat: the ranker codes users with the bundle's own spec."""
    from features.user_features import UserFeatureConfig, UserFeatureSpec
    from training.export import export_encoder_onnx
    from training.svd_retriever import MeanPoolEncoder

    pdir = write_processed(tmp_path / "art")
    bundle = retriever_bundle(tmp_path / "bundle", pdir, n_items=N_ITEMS, dim=16, max_len=20)
    spec = UserFeatureSpec.fit(pd.read_parquet(pdir / "splits/temporal/train.parquet"), pd.read_parquet(pdir / "users.parquet"),
                               pd.read_parquet(bundle / "items.parquet"), UserFeatureConfig(enabled=True))

    class Encoder(torch.nn.Module):                      # history mean + a user-feature term
        def __init__(self):
            super().__init__()
            self.pool = MeanPoolEncoder(np.load(bundle / "item_embeddings.npy"))

        def forward(self, item_seq, user_feat):
            return self.pool(item_seq) + 0.01 * user_feat.float().sum(1, keepdim=True)

    seq, uf = torch.ones(2, 20, dtype=torch.long), torch.ones(2, len(spec.names), dtype=torch.long)
    export_encoder_onnx(Encoder(), 20, bundle / "encoder.onnx", seq, uf)
    with pytest.raises(RankerSetupError, match="user_features.json: missing"):
        train_ranker(ranker_cfg(tmp_path / "art", bundle, "trainer.max_epochs=1"))
    (bundle / "user_features.json").write_text(json.dumps(spec.to_json()))
    m = json.loads((train_ranker(ranker_cfg(tmp_path / "art", bundle, "trainer.max_epochs=1")) / "metrics.json").read_text())
    assert m["user_features"] == [] and np.isfinite(m["test/ndcg@10"])   # encoder fed, ranker without them (default)
    run_dir = train_ranker(ranker_cfg(tmp_path / "art", bundle, "trainer.max_epochs=1", "model.user_features.enabled=true"))
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["user_features"] == spec.names and np.isfinite(m["test/ndcg@10"])
    new = Path(m["bundle"])                                   # the retriever's export owns the bundle's table
    assert (new / "ranker.onnx").exists() and not (new / "user_features.parquet").exists()


def test_candidate_metrics_ties_and_non_finite_scores():
    """Two requests of 3 candidates (stored in retrieval order): a constant model ranks a single relevant
    item at the tie group's expected position, 2; NaN scores are an error naming the model and the count."""
    from models.ranker import DENSE_FEATURES, FeatureBatch
    from training.metrics import NonFiniteScoresError
    from training.ranker import ranking_metrics, retrieval_order
    from training.ranker_data import Stage

    n, d = 6, len(DENSE_FEATURES)
    dense = np.zeros((n, d), np.float32)
    dense[:, DENSE_FEATURES.index("retrieval_rank")] = [0, 1, 2, 0, 1, 2]
    batch = FeatureBatch(dense, np.zeros((n, 1), np.int64), np.zeros((n, 2), np.float32), np.zeros((n, 2), np.float32),
                         np.array([0, 3, 6]))
    labels = np.array([[0], [1], [0], [1], [0], [0]], np.float32)          # relevant: 2nd, then 1st candidate
    stage = Stage(np.array([0, 1]), [None, None], batch, labels, np.array([1, 1]), [{1}, {3}])
    assert ranking_metrics(stage, retrieval_order(stage))["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert ranking_metrics(stage, np.zeros(n, np.float32))["mrr"] == pytest.approx(1 / 2)   # ties: expected rank 2
    bad = np.zeros(n, np.float32)
    bad[[1, 4]] = np.nan
    with pytest.raises(NonFiniteScoresError, match=r"'ranker \(valid\)'.* 2 of 6"):
        ranking_metrics(stage, bad, model="ranker (valid)")


def test_stage_metrics_beyond_accuracy_by_hand():
    """Retrieval order shows ten items of one category; the ranker lifts the two of another category into the
    top 10: intra-list diversity 0 -> 16/45 pairs, and the figures of each order are those of its own lists."""
    from types import SimpleNamespace

    from models.ranker import DENSE_FEATURES, FeatureBatch, FeatureSpec
    from training.ranker import stage_metrics
    from training.ranker_data import ItemCatalogue, Stage

    n_items, per = 30, 12
    cands = [np.arange(12), np.arange(12, 24)]                    # retrieval order: items 0..11, then 12..23
    cat = np.where(np.isin(np.arange(n_items), [10, 11, 22, 23]), 1, 0)
    pop = np.arange(n_items, 0, -1).astype(float)                 # item 0 the most bought
    dense = np.zeros((2 * per, len(DENSE_FEATURES)), np.float32)
    dense[:, DENSE_FEATURES.index("retrieval_rank")] = np.tile(np.arange(per), 2)
    batch = FeatureBatch(dense, np.zeros((2 * per, 1), np.int64), np.zeros((2 * per, 2), np.float32),
                         np.zeros((2 * per, 2), np.float32), np.array([0, per, 2 * per]))
    labels = np.zeros((2 * per, 1), np.float32)
    labels[[11, 12]] = 1
    stage = Stage(np.array([0, 1]), [SimpleNamespace(candidates=c) for c in cands], batch, labels, np.array([1, 1]),
                  [{11}, {12}])
    probs = np.tile(np.linspace(0.9, 0.1, per), 2)[:, None].astype(np.float32)
    probs[[10, 11, 22, 23], 0] = 0.95                             # the ranker puts category 1 first
    spec = FeatureSpec(dim=2, categories=[], price_edges=[], channels=[], heads=["purchase"],
                       score_weights={"purchase": 1.0})
    m = stage_metrics(stage, probs, spec, "test/", ItemCatalogue(n_items, pop, cat))
    assert m["test/retrieval_ild@10"] == 0.0 and m["test/ild@10"] == pytest.approx(16 / 45)
    assert m["test/retrieval_coverage@10"] == pytest.approx(20 / n_items) and m["test/coverage@10"] == pytest.approx(20 / n_items)
    info = -np.log2((pop + 1) / (pop.sum() + n_items))
    shown = np.r_[0:8, 10:12, 12:20, 22:24]
    assert m["test/novelty@10"] == pytest.approx(info[shown].mean())
    assert m["test/retrieval_novelty@10"] == pytest.approx(info[np.r_[0:10, 12:22]].mean())
    assert m["test/tail_share@10"] == pytest.approx(14 / 20)      # head: items 0..5 (top 20 % of 30)
    assert m["test/retrieval_tail_share@10"] == pytest.approx(14 / 20)
    assert m["test/category_known@10"] == 1.0
    assert "test/ild@10" not in stage_metrics(stage, probs, spec, "test/")   # no item table: accuracy only


def test_a_shop_protocol_retriever_counts_as_temporal(tmp_path):
    """A retriever trained with trainer.eval.split=shop was fitted on the temporal train part: accepted; other
    prepared data (another processed fingerprint) is refused."""
    from training.ranker_data import check_retriever_protocol

    period = ["2024-01-01 00:00:00+00:00", "2024-09-30 00:00:00+00:00"]
    man = {"trained_on": {"split": "shop", "period": period, "processed_fingerprint": "abc"}}
    check_retriever_protocol(man, tmp_path, "temporal", period, "abc")
    with pytest.raises(RankerSetupError, match="trained_on.processed_fingerprint=abc but the prepared data here has xyz"):
        check_retriever_protocol(man, tmp_path, "temporal", period, "xyz")
    with pytest.raises(RankerSetupError, match="model.split='loo'"):
        check_retriever_protocol(man, tmp_path, "loo", period, "abc")


def test_ranker_trains_under_ddp_on_two_cpu_processes(tmp_path, repo_root):
    """trainer=ddp without a GPU: two gloo processes, one run folder, one new bundle version."""
    import subprocess
    import sys

    pdir = write_processed(tmp_path / "art")
    bundle = retriever_bundle(tmp_path / "bundles" / "toy", pdir, n_items=N_ITEMS, dim=16, max_len=20)
    out = subprocess.run([sys.executable, "-m", "training.train", "model=ranker", "trainer=ddp", "trainer.accelerator=cpu",
                          "trainer.cpu_processes=2", "trainer.num_threads=1", f"paths.artifacts={tmp_path / 'art'}",
                          "data.name=toyshop", f"model.retriever_bundle={bundle}", "model.n_candidates=50",
                          "trainer.max_epochs=2", "model.batch_size=512", f"hydra.run.dir={tmp_path / 'hydra'}"],
                         cwd=repo_root, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "art" / "runs" / "toyshop" / "ranker").iterdir()    # the worker joined rank 0's folder
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["processes"] == 2 and m["strategy"] == "ddp" and m["epochs"] == 2 and np.isfinite(m["test/ndcg@10"])
    assert sorted(p.name for p in bundle.parent.iterdir() if p.is_dir()) == ["toy", "toy.1"]
    assert (tmp_path / "hydra" / "train_ddp_process_1.log").exists()
