"""training.refit: the refit curve that chooses model.refit_epochs, on the shifted protocol only."""
import json

import pytest

from training.refit import apply_refit, main, refit_curve
from training.train import run

FAST = ["model=sasrec", "model.hidden=16", "model.blocks=1", "model.heads=1", "model.batch_size=64", "model.lr=0.005",
        "model.dropout=0.1", "model.emb_dropout=0.1", "trainer.max_epochs=2", "model.refit_epochs=0"]


def test_refit_curve_starts_at_the_early_stopped_model_and_is_refused_on_real_test_targets(make_cfg, capsys):
    shifted = run(make_cfg(*FAST, "trainer.eval.holdout_shift=1"))
    out = refit_curve(shifted.run_dir, [0, 1])
    assert [r["refit_epochs"] for r in out["curve"]] == [0, 1]
    # refit 0 = the run's own (shifted) test figure: same checkpoint, same evaluator
    assert out["curve"][0]["shifted_test/ndcg@10"] == pytest.approx(shifted.metrics["test/ndcg@10"], abs=1e-6)
    assert (shifted.run_dir / "checkpoints" / "refit-1.ckpt").exists() and (shifted.run_dir / "refit_curve.json").exists()
    # a longer curve, one more point: the earlier points stay in refit_curve.json
    longer = refit_curve(shifted.run_dir, [2])
    assert [r["refit_epochs"] for r in longer["curve"]] == [0, 1, 2]
    assert longer["curve"][:2] == out["curve"]
    assert longer["best_refit_epochs"] == max(longer["curve"], key=lambda r: r["shifted_test/ndcg@10"])["refit_epochs"]
    plain = run(make_cfg(*FAST))
    assert main(["--run", str(plain.run_dir), "--epochs", "1"]) == 2
    assert "holdout_shift" in capsys.readouterr().err


def test_apply_refit_equals_training_with_refit(make_cfg, capsys):
    """The refit applied to a finished run reproduces what training with model.refit_epochs gives."""
    plain = run(make_cfg(*FAST, "model.dropout=0.0", "model.emb_dropout=0.0"))
    assert main(["--run", str(plain.run_dir), "--apply", "1", "--threads", "1"]) == 0
    applied = capsys.readouterr().out
    trained = run(make_cfg(*FAST, "model.dropout=0.0", "model.emb_dropout=0.0", "model.refit_epochs=1"))
    assert f"test ndcg@10 {trained.metrics['test/ndcg@10']:.4f}" in applied


def test_one_refit_gives_every_point_of_the_curve(make_cfg):
    """The curve's point k (the state after epoch k of one refit of the longest length) is what a refit of
    k epochs gives (constant learning rate, no dropout: nothing random in between)."""
    shifted = run(make_cfg(*FAST, "model.dropout=0.0", "model.emb_dropout=0.0", "trainer.eval.holdout_shift=1"))
    out = refit_curve(shifted.run_dir, [1, 3])
    assert out["prefix_of"] == 3 and [r["refit_epochs"] for r in out["curve"]] == [1, 3]
    assert 0 < out["curve"][0]["refit_time_s"] < out["curve"][1]["refit_time_s"]
    curve = {r["refit_epochs"]: r["shifted_test/ndcg@10"] for r in out["curve"]}
    assert curve[1] != curve[3]
    for k in (1, 3):
        assert apply_refit(shifted.run_dir, k)["test/ndcg@10"] == pytest.approx(curve[k], abs=1e-6)


def test_the_control_refits_on_the_training_sequences_only(make_cfg, capsys):
    shifted = run(make_cfg(*FAST, "model.dropout=0.0", "model.emb_dropout=0.0", "trainer.eval.holdout_shift=1"))
    refit = refit_curve(shifted.run_dir, [2])
    assert main(["--run", str(shifted.run_dir), "--epochs", "0", "2", "--control"]) == 0
    control = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["curve"]
    assert (shifted.run_dir / "refit_control_curve.json").exists() and (shifted.run_dir / "checkpoints" / "control-2.ckpt").exists()
    assert control[0]["shifted_test/ndcg@10"] == pytest.approx(shifted.metrics["test/ndcg@10"], abs=1e-6)
    # the same epochs and batch order, other sequences: other weights
    assert control[1]["shifted_test/ndcg@10"] != refit["curve"][0]["shifted_test/ndcg@10"]
    assert json.loads((shifted.run_dir / "refit_curve.json").read_text())["curve"] == refit["curve"]
