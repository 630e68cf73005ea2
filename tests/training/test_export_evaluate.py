"""training.export (bundle layout, ONNX Runtime parity, LATEST) and training.evaluate on a tiny run."""
import json
from pathlib import Path

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
    for name, model, extra in (("sasrec", "sasrec", ["model.use_attributes=true", "model.blocks=1", "model.heads=2"]),
                               ("sasrec_bsarec", "sasrec", ["model.block=bsarec", "model.blocks=1"]),
                               ("two_tower", "two_tower", ["model.mlp_hidden=16", "model.random_negatives=8",
                                                           "model.user_features.enabled=true"])):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            cfg = compose("config", overrides=[f"paths.artifacts={tiny_artifacts}", f"paths.runs={root / 'runs'}",
                                               f"paths.bundles={root / 'bundles'}", "data.name=tiny",
                                               f"model={model}", *FAST, *extra])
        out[name] = (cfg, run(cfg))
    return out


@pytest.mark.parametrize("model", ["sasrec", "sasrec_bsarec", "two_tower"])
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
    on = man["trained_on"]  # what the model was fitted on, and the key its user_key values were made with
    assert on["data"] == "tiny" and on["split"] == cfg.trainer.eval.split and on["part"] == "train"
    assert on["period"][0] <= on["period"][1] and man["parent"] is None and len(man["pseudo_key_fingerprint"]) == 16
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


def test_two_exports_in_the_same_second_are_two_versions(trained, monkeypatch):
    cfg, res = trained["sasrec"]
    cfg.run = str(res.run_dir)
    monkeypatch.setattr(export.time, "strftime", lambda fmt, *a: "20260101-000000")   # one second for both
    first, second = export.run(cfg).bundle_dir, export.run(cfg).bundle_dir
    assert first != second and first.exists() and second.exists()
    assert (second.parent / "LATEST").read_text().strip() == second.name


def test_evaluate_reproduces_the_run_metrics(trained):
    cfg, res = trained["sasrec"]
    cfg.run = str(res.run_dir)
    m = evaluate.run(cfg).metrics
    assert m["test/ndcg@10"] == pytest.approx(res.metrics["test/ndcg@10"], abs=1e-6)
    assert m["valid/hr@10"] == pytest.approx(res.metrics["valid/hr@10"], abs=1e-6)
    # the defaults refit after early stopping: validation from the early-stopped weights, test from the refitted
    out = json.loads((res.run_dir / "eval.json").read_text())
    assert out["checkpoint"].endswith("refit.ckpt") and out["valid_checkpoint"].endswith(res.metrics["early_stopped_checkpoint"])


def test_export_refuses_baselines_and_missing_run(trained, make_cfg):
    with pytest.raises((ValueError, FileNotFoundError)):
        cfg = make_cfg()
        cfg.run = "/nonexistent/run"
        export.run(cfg)


# ------------------------------------------------------------------ the shop protocol through the harness
def write_shop_processed(root, name="tiny_shop", n_users=120, n_items=40, seed=1):
    """Orders over 30 days (cut-offs at day 20 and 25): each user reorders some of their own items (repeats)
    and returns one line now and then. Temporal split files only, like a real prepared shop."""

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        own = rng.choice(n_items, size=6, replace=False)
        for o, day in enumerate(sorted(rng.choice(30, size=int(rng.integers(3, 7)), replace=False))):
            ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=int(day), hours=int(rng.integers(8, 18)))
            lines = set(rng.choice(own, size=2, replace=False).tolist()) | {int(rng.integers(0, n_items))}
            for i in sorted(lines):
                rows.append((u, i, "purchase", ts, f"O{u}-{o}"))
            if rng.random() < 0.3:
                rows.append((u, int(min(lines)), "return", ts + pd.Timedelta(hours=2), f"CO{u}-{o}"))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts", "order_id"])
    ev = ev.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    ev["price"], ev["quantity"], ev["session_id"], ev["rating"] = 2.0, 1, None, np.nan
    ev["src_row"] = np.arange(len(ev), dtype=np.int64)
    ev = ev[["user_id", "item_id", "event", "ts", "price", "quantity", "session_id", "order_id", "src_row", "rating"]]
    out = Path(root) / name
    (out / "splits" / "temporal").mkdir(parents=True, exist_ok=True)
    ev.to_parquet(out / "events.parquet", index=False)
    v, t = pd.Timestamp("2024-01-21", tz="UTC"), pd.Timestamp("2024-01-26", tz="UTC")
    for part, sel in (("train", ev["ts"] < v), ("valid", (ev["ts"] >= v) & (ev["ts"] < t)), ("test", ev["ts"] >= t)):
        ev[sel].to_parquet(out / "splits" / "temporal" / f"{part}.parquet", index=False)
    pd.DataFrame({"item_id": np.arange(n_items), "item_key": [f"I{i}" for i in range(n_items)], "category": None,
                  "attributes": [[] for _ in range(n_items)], "price_mean": 2.0, "price_median": 2.0,
                  "n_events": np.bincount(ev["item_id"], minlength=n_items)}).to_parquet(out / "items.parquet", index=False)
    pd.DataFrame({"user_id": np.arange(n_users), "user_key": [f"{u:016x}" for u in range(n_users)]}).to_parquet(
        out / "users.parquet", index=False)
    (out / "manifest.json").write_text(json.dumps({"name": name, "time_kind": "time",
                                                   "splits": {"temporal": {}}, "counts": {"events": len(ev)}}))
    return ev


@pytest.fixture(scope="module")
def shop(tiny_artifacts):
    return write_shop_processed(tiny_artifacts / "processed")


def test_shop_protocol_sets_next_basket_purchases_and_states_the_protocol(shop, make_cfg):
    from features.splits import shop_targets
    from training.data import load_sequence_data

    cfg = make_cfg("model=buy_again", "trainer.eval.split=shop", data="tiny_shop")
    data = load_sequence_data(Path(str(cfg.paths.processed)) / "tiny_shop", 50, "shop")
    v = pd.Timestamp("2024-01-26", tz="UTC")
    expected = shop_targets(shop[shop["ts"] < v], shop[shop["ts"] >= v])
    rows, items = data.test.relevant_coords(0, len(data.test))
    got = {(int(data.test.users[r]), int(i) - 1) for r, i in zip(rows, items)}
    assert got == set(zip(expected["user_id"], expected["item_id"])) and len(got) > len(data.test)  # sets, not one item
    assert set(expected["event"]) == {"purchase"}
    # history of a test row = every event before the test cut-off (the valid period's too)
    first = int(data.test.users[0])
    h_rows, h_items = data.test.history_mask_coords(0, 1)
    assert len(h_items) == int(((shop["user_id"] == first) & (shop["ts"] < v)).sum())

    res = {}
    for model in ("pop", "buy_again"):
        for exclude in (True, False):
            res[model, exclude] = run(make_cfg(f"model={model}", "trainer.eval.split=shop",
                                               f"trainer.eval.exclude_history={str(exclude).lower()}",
                                               data="tiny_shop")).metrics
    p = res["buy_again", False]["protocol"]
    assert p["split"] == "shop" and p["exclude_history"] is False and p["history"].startswith("repeat-aware")
    assert p["ties"].startswith("expected") and "next basket" in p["relevant"]
    # discovery: the history is removed, so buy-again is popularity; repeat-aware: its own items win
    assert res["buy_again", True]["test/ndcg@10"] == pytest.approx(res["pop", True]["test/ndcg@10"])
    assert res["buy_again", False]["test/ndcg@10"] > 2 * res["pop", False]["test/ndcg@10"]
    assert 0.2 < res["buy_again", False]["test/repeat_share"] < 1.0
    assert "test/sampled_mrr" not in res["pop", True]          # sampled protocol: one relevant item per row only


def test_evaluate_rescores_a_run_under_the_other_mask(shop, make_cfg):
    cfg = make_cfg("model=two_tower", "trainer.eval.split=shop", *FAST, "model.mlp_hidden=16",
                   "model.random_negatives=8", data="tiny_shop")
    res = run(cfg)
    again = make_cfg("trainer.eval.split=shop", "trainer.eval.exclude_history=false", data="tiny_shop")
    again.run = str(res.run_dir)
    m = evaluate.run(again).metrics
    assert m["test/n_users"] == res.metrics["test/n_users"]
    assert m["test/hr@100"] >= res.metrics["test/hr@100"]      # repeats can hit once the history stays in
    assert json.loads((res.run_dir / "eval.json").read_text())["protocol"]["exclude_history"] is False


def test_non_finite_scores_stop_the_evaluation_naming_the_model(trained):
    from training.metrics import NonFiniteScoresError

    cfg, res = trained["sasrec"]
    from training.data import load_sequence_data
    data = load_sequence_data(Path(str(cfg.paths.processed)) / "tiny", 50, "loo")

    def scores(_x, a, b):
        s = torch.rand(b - a, data.n_items)
        s[:3, 0] = float("nan")
        return s

    with pytest.raises(NonFiniteScoresError, match=r"'sasrec'.* 3 of"):
        evaluate.evaluate_split(scores, data.test, data.n_items, popularity=None, exclude_history=True, model="sasrec")
