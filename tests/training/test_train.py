"""training.train end to end on a tiny dataset: run folder, baselines, resume, NaN guard, bad configs, the
Trainer settings (max_time formats, loggers incl. MLflow, callbacks, progress bar), --help, the returned metric."""
import json
import subprocess
import sys
from datetime import timedelta

import pytest
import torch

from training.modules import NonFiniteLossError, SASRecModule
from training.train import run
from training.trainer import max_time

FAST = ["model.hidden=16", "model.blocks=1", "model.heads=1", "model.batch_size=64", "model.lr=0.005",
        "model.dropout=0.1", "model.emb_dropout=0.1", "model.label_smoothing=0.0", "model.weight_decay=0.0",
        "trainer.max_epochs=3"]
KEYS = ["test/ndcg@10", "test/hr@10", "test/ndcg@20", "test/hr@20", "test/mrr", "test/coverage@10",
        "test/hr@50", "test/hr@100", "test/pop@10", "valid/ndcg@10", "test/sampled_hr@10"]


@pytest.fixture(scope="module")
def pop_metrics(tiny_artifacts, tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from tests.training.conftest import CONF

    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("config", overrides=[f"paths.artifacts={tiny_artifacts}", "data.name=tiny", "model=pop",
                                           f"paths.runs={tmp_path_factory.mktemp('pop')}"])
    return run(cfg).metrics


def test_sasrec_run_folder_and_beats_popularity(make_cfg, pop_metrics):
    res = run(make_cfg("model=sasrec", "model.use_attributes=true", *FAST))
    d = res.run_dir
    assert d.parent.name == "sasrec" and d.parent.parent.name == "tiny"
    for f in ("config.yaml", "metrics.json", "manifest.json", "checkpoints/last.ckpt", "logs/csv/metrics.csv"):
        assert (d / f).exists(), f
    assert list((d / "checkpoints").glob("best-*.ckpt"))
    assert list((d / "logs" / "tensorboard").glob("events.out.tfevents*"))
    m = json.loads((d / "metrics.json").read_text())
    for k in KEYS:
        assert k in m, k
    assert m["protocol"]["exclude_history"] is True
    assert m["device"] == "cpu" and len(m["history"]) == 3
    assert m["test/ndcg@10"] > 2 * pop_metrics["test/ndcg@10"]


@pytest.mark.parametrize("model", ["pop", "ease"])
def test_baselines(make_cfg, model):
    m = run(make_cfg(f"model={model}")).metrics
    assert 0 <= m["test/ndcg@10"] <= m["test/hr@10"] <= 1
    assert m["algorithm"] in ("popularity", "ease")


def test_ease_falls_back_to_itemknn_when_too_big(make_cfg):
    m = run(make_cfg("model=ease", "model.max_dense_gib=0.00001")).metrics
    assert m["algorithm"] == "itemknn" and m["test/hr@10"] > 0


def test_two_tower_trains(make_cfg, pop_metrics):
    m = run(make_cfg("model=two_tower", "model.hidden=16", "model.mlp_hidden=32", "model.batch_size=64",
                     "model.random_negatives=16", "trainer.max_epochs=3")).metrics
    assert m["test/ndcg@10"] > pop_metrics["test/ndcg@10"]


def test_sampled_softmax_loss_trains(make_cfg, pop_metrics):
    m = run(make_cfg("model=sasrec", "model.loss=sampled_softmax", "model.num_negatives=20", *FAST,
                     "model.label_smoothing=0.1")).metrics
    assert m["test/ndcg@10"] > pop_metrics["test/ndcg@10"]


def test_ligr_blocks_with_swiglu_train(make_cfg, pop_metrics):
    res = run(make_cfg("model=sasrec", "model.block=ligr", "model.ffn_activation=swiglu", "model.ffn_mult=2", *FAST))
    assert res.metrics["test/ndcg@10"] > pop_metrics["test/ndcg@10"]
    state = torch.load(res.run_dir / res.metrics["best_checkpoint"], weights_only=False)["state_dict"]
    assert {"net.blocks.0.gate1.weight", "net.blocks.0.ffn.w3.weight"} <= set(state)


def test_resume_continues_the_run_and_matches_an_uninterrupted_one(make_cfg):
    common = ["model=sasrec", *FAST[:-1], "model.dropout=0.0", "model.emb_dropout=0.0"]
    full = run(make_cfg(*common, "trainer.max_epochs=2")).metrics
    first = run(make_cfg(*common, "trainer.max_epochs=1"))
    resumed = run(make_cfg(*common, "trainer.max_epochs=2", "trainer.resume=true"))
    assert resumed.run_dir == first.run_dir                      # newest run of this data/model continued
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2]
    assert resumed.metrics["valid/ndcg@10"] == pytest.approx(full["valid/ndcg@10"], abs=0.02)
    by_path = run(make_cfg(*common, "trainer.max_epochs=3", f"trainer.resume={first.run_dir}/checkpoints/last.ckpt"))
    assert by_path.run_dir == first.run_dir and len(by_path.metrics["history"]) == 3


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(make_cfg, monkeypatch):
    original = SASRecModule.training_loss

    def nan_after_first_epoch(self, batch):
        loss = original(self, batch)
        return loss * float("nan") if self.current_epoch >= 1 else loss

    monkeypatch.setattr(SASRecModule, "training_loss", nan_after_first_epoch)
    cfg = make_cfg("model=sasrec", *FAST)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        run(cfg)
    runs = sorted((cfg.paths.runs and __import__("pathlib").Path(cfg.paths.runs) / "tiny" / "sasrec").iterdir())
    last = runs[-1] / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0                                    # saved after the good first epoch
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("overrides, message", [
    (["model=sasrec", "model.max_len=0"], "model.max_len"),
    (["model=sasrec", "model.use_attributes=true"], "model.use_attributes"),
    (["model=sasrec", "trainer.max_epochs=0"], "trainer.max_epochs"),
    (["model=sasrec", "model.train_windows=0"], "model.train_windows"),
])
def test_bad_config_fails_at_start_naming_the_setting(make_cfg, overrides, message):
    with pytest.raises(ValueError, match=message):
        run(make_cfg(*overrides, data="tiny_noattr"))


def test_sasrec_defaults_use_attributes_only_where_the_data_has_them(make_cfg):
    """``use_attributes: auto``: a file without an attributes JSON trains with the shipped config as it is."""
    bare = run(make_cfg("model=sasrec", *FAST, "trainer.max_epochs=1", data="tiny_noattr"))
    assert bare.metrics["test/ndcg@10"] is not None
    ckpt = torch.load(next((bare.run_dir / "checkpoints").glob("best-*.ckpt")), map_location="cpu", weights_only=False)
    with_attrs = run(make_cfg("model=sasrec", *FAST, "trainer.max_epochs=1"))
    ckpt_attrs = torch.load(next((with_attrs.run_dir / "checkpoints").glob("best-*.ckpt")), map_location="cpu",
                            weights_only=False)
    attr_keys = [k for k in ckpt_attrs["state_dict"] if "attr" in k]
    assert attr_keys and not [k for k in ckpt["state_dict"] if "attr" in k]


def test_data_not_prepared_names_the_folder(make_cfg):
    with pytest.raises((ValueError, FileNotFoundError), match="not_there"):
        run(make_cfg("model=pop", data="not_there"))


def test_cli_multirun_and_one_line_error(tiny_artifacts, tmp_path, repo_root):
    base = [sys.executable, "-m", "training.train"]
    args = [f"paths.artifacts={tiny_artifacts}", f"paths.runs={tmp_path}",
            "data.name=tiny"]
    out = subprocess.run(base + ["-m"] + args + ["model=pop,ease", f"hydra.sweep.dir={tmp_path}/hydra"], cwd=repo_root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(list((tmp_path / "tiny" / "pop").glob("*/metrics.json"))) == 1
    assert len(list((tmp_path / "tiny" / "ease").glob("*/metrics.json"))) == 1
    bad = subprocess.run(base + args + ["model=sasrec", "model.max_len=0", f"hydra.run.dir={tmp_path}/h2"], cwd=repo_root,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "model.max_len must be > 0" in bad.stderr.strip().splitlines()[-1]


def _can_spawn_processes() -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        return False
    try:
        return subprocess.run([sys.executable, "-c", "pass"], timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _can_spawn_processes(), reason="this platform cannot start DDP worker processes (gloo)")
def test_ddp_on_cpu_two_processes_ends_with_metrics(tiny_artifacts, tmp_path, repo_root):
    """trainer=ddp without a GPU: 2 CPU processes over gloo, one shared run folder, metrics.json as single-process."""
    args = [sys.executable, "-m", "training.train", "model=sasrec", "trainer=ddp", "trainer.accelerator=cpu",
            "trainer.cpu_processes=2", "trainer.num_threads=1", f"paths.artifacts={tiny_artifacts}",
            f"paths.runs={tmp_path / 'runs'}", "data.name=tiny", *FAST[:4], "trainer.max_epochs=2",
            f"hydra.run.dir={tmp_path / 'hydra'}"]
    out = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "runs" / "tiny" / "sasrec").iterdir())
    assert len(runs) == 1, runs                                # the worker joined rank 0's run folder
    m = json.loads((runs[0] / "metrics.json").read_text())
    assert m["processes"] == 2 and m["strategy"] == "ddp" and m["epochs"] == 2
    assert all(k in m for k in KEYS) and 0 <= m["test/ndcg@10"] <= 1
    # the refit of the defaults runs in one process: under DDP it is skipped and the command to run it is named
    assert "python -m training.refit --run" in m["refit_skipped"] and "refit_checkpoint" not in m
    assert (tmp_path / "hydra" / "train_ddp_process_1.log").exists()   # a second process really ran


@pytest.mark.parametrize("value, expected", [
    (None, None), (90, timedelta(seconds=90)), ("90", timedelta(seconds=90)), (2.5, timedelta(seconds=2.5)),
    ("00:00:50:00", timedelta(minutes=50)), ("01:02:03:04", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ({"minutes": 50}, timedelta(minutes=50)), ({"hours": 1, "seconds": 30}, timedelta(hours=1, seconds=30)),
])
def test_max_time_accepts_seconds_and_lightning_formats(value, expected):
    assert max_time(value) == expected


@pytest.mark.parametrize("value", ["soon", "00:50:00", {"fortnights": 1}, 0, "-5"])
def test_bad_max_time_names_the_setting(value):
    with pytest.raises(ValueError, match="trainer.max_time"):
        max_time(value)


def test_max_time_from_the_command_line_caps_training(make_cfg):
    """Hydra hands "DD:HH:MM:SS" and {minutes: ...} through; a cap of 1 s stops after the first epoch."""
    cfg = make_cfg("model=sasrec", *FAST, "trainer.max_epochs=50", "trainer.max_time=00:00:00:01")
    assert cfg.trainer.max_time == "00:00:00:01" and max_time(make_cfg("trainer.max_time={minutes:50}").trainer.max_time) \
        == timedelta(minutes=50)
    m = run(cfg).metrics
    assert m["stop_reason"] == "max_time" and m["epochs"] < 50


def test_loggers_callbacks_and_the_returned_metric(make_cfg, tmp_path):
    """logger=[csv,mlflow]: the final validation and test metrics reach both; main returns valid/ndcg@10."""
    import mlflow
    import pandas as pd

    from training.train import main

    cfg = make_cfg("model=sasrec", *FAST[:-1], "trainer.max_epochs=2", "logger=[csv,mlflow]",
                   "callbacks=[default,lr_monitor]", "trainer.log_every_n_steps=1", f"logger.mlflow.tracking_uri=file:{tmp_path / 'mlruns'}")
    value = main.__wrapped__(cfg)                                # the task function a Hydra sweeper calls
    run_dir = sorted((tmp_path / "runs" / "tiny" / "sasrec").iterdir())[-1]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert value == m["valid/ndcg@10"]
    csv = pd.read_csv(run_dir / "logs" / "csv" / "metrics.csv")
    assert csv["test/ndcg@10"].dropna().iloc[-1] == pytest.approx(m["test/ndcg@10"], rel=1e-5)
    assert csv.filter(like="lr-").notna().any().any()            # lr_monitor added through callbacks=
    client = mlflow.tracking.MlflowClient(f"file:{tmp_path / 'mlruns'}")
    (found,) = client.search_runs([client.get_experiment_by_name("tiny-sasrec").experiment_id])
    assert found.info.run_name == run_dir.name and found.info.status == "FINISHED"
    assert found.data.metrics["test/ndcg10"] == pytest.approx(m["test/ndcg@10"], rel=1e-5)
    assert found.data.metrics["valid/ndcg10"] == pytest.approx(m["valid/ndcg@10"], rel=1e-5)
    # a closed-form baseline has no Trainer: its metrics are logged to the same loggers
    pop = run(make_cfg("model=pop", "logger=[mlflow]", f"logger.mlflow.tracking_uri=file:{tmp_path / 'mlruns'}"))
    (found,) = client.search_runs([client.get_experiment_by_name("tiny-pop").experiment_id])
    assert found.data.metrics["test/ndcg10"] == pytest.approx(pop.metrics["test/ndcg@10"], rel=1e-5)


def test_a_checkpoint_callback_is_required(make_cfg):
    with pytest.raises(ValueError, match="callbacks: no ModelCheckpoint"):
        run(make_cfg("model=sasrec", *FAST, "callbacks=[early_stopping]"))


def test_help_lists_only_real_choices(repo_root):
    out = subprocess.run([sys.executable, "-m", "training.train", "--help"], cwd=repo_root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    groups = out.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    choices = dict(line.split(": ", 1) for line in groups.splitlines() if ": " in line)
    assert choices["trainer"] == "cpu, ddp, gpu"
    assert choices["logger"] == "csv, mlflow, tensorboard"
    assert "model_checkpoint" in choices["callbacks"] and "online_retail" in choices["data"]
    hidden = {g: [c for c in opts.split(", ") if c.startswith("_")] for g, opts in choices.items()}
    assert not any(hidden.values()), hidden


def test_progress_bar_auto_follows_the_terminal(monkeypatch):
    from training.trainer import show_progress_bar

    assert show_progress_bar("auto") is False                   # pytest captures the output: plain log lines
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert show_progress_bar("auto") is True and show_progress_bar(False) is False


def test_history_and_stop_reason_survive_loading_the_best_checkpoint(make_cfg):
    """The final validate/test load the best checkpoint (which restores the callbacks' state of its epoch):
    metrics.json still reports every epoch that ran and why training stopped."""
    m = run(make_cfg("model=sasrec", *FAST, "callbacks.model_checkpoint.mode=min")).metrics   # best = the worst epoch
    assert m["epochs"] == 3 and [h["epoch"] for h in m["history"]] == [1, 2, 3] and m["stop_reason"] == "max_epochs"
    assert m["best_epoch"] == 1 + min(range(3), key=lambda i: m["history"][i]["valid/ndcg@10"])


def test_ema_weights_are_what_is_validated_checkpointed_and_tested(make_cfg):
    """With model.ema_decay the averaged weights are evaluated every epoch, written as the best checkpoint and
    evaluated again after fit: the final validation equals the best epoch's, and the checkpoint differs from
    the raw weights it also keeps."""
    res = run(make_cfg("model=sasrec", *FAST, "model.ema_decay=0.9"))
    m = res.metrics
    best = max(h["valid/ndcg@10"] for h in m["history"])
    assert m["valid/ndcg@10"] == pytest.approx(best, abs=1e-6)
    last = torch.load(res.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    raw, avg = last["current_model_state"], last["state_dict"]
    assert set(raw) == set(avg)
    assert not torch.equal(raw["net.item_emb.weight"], avg["net.item_emb.weight"])   # averaged over several steps
    best_avg = torch.load(res.run_dir / m["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    module = SASRecModule.load_from_checkpoint(res.run_dir / m["best_checkpoint"], map_location="cpu")
    assert torch.equal(module.net.item_emb.weight, best_avg["net.item_emb.weight"])


def test_ema_span_is_capped_in_epochs_on_small_data(make_cfg):
    """The shipped cap (model.ema_max_epochs: 3): a tiny dataset of a few steps per epoch averages over at most
    3 epochs of steps, not the 200 steps of 0.995; metrics.json says which decay was used."""
    m = run(make_cfg("model=sasrec", *FAST, "trainer.max_epochs=1", "model.ema_decay=0.995")).metrics
    assert 0 < m["ema_steps_per_epoch"] < 66                 # 200 steps at 0.995 would be over 3 epochs
    assert m["ema_decay_effective"] == pytest.approx(1 - 1 / (3 * m["ema_steps_per_epoch"]))
    uncapped = run(make_cfg("model=sasrec", *FAST, "trainer.max_epochs=1", "model.ema_decay=0.995",
                            "model.ema_max_epochs=0")).metrics
    assert uncapped["ema_decay_effective"] == 0.995


def test_ema_decay_out_of_range_names_the_setting(make_cfg):
    with pytest.raises(Exception, match="model.ema_decay"):
        run(make_cfg("model=sasrec", *FAST, "model.ema_decay=1.5"))


def test_refit_trains_on_the_validation_events_then_tests_and_exports_those_weights(make_cfg):
    from training.runs import open_run

    plain = run(make_cfg("model=sasrec", *FAST, "trainer.max_epochs=2")).metrics
    res = run(make_cfg("model=sasrec", *FAST, "trainer.max_epochs=2", "model.refit_epochs=1", "model.ema_decay=0.9"))
    m = res.metrics
    assert m["refit_epochs"] == 1 and m["best_checkpoint"] == "checkpoints/refit.ckpt"
    assert m["early_stopped_checkpoint"].startswith("checkpoints/best-")
    # the early-stopped validation is unchanged by the refit (same seed, same epochs); the test is the refitted model's
    assert m["valid/ndcg@10"] == pytest.approx(max(h["valid/ndcg@10"] for h in m["history"]), abs=1e-6)
    assert m["test/ndcg@10"] != plain["test/ndcg@10"]
    info = open_run(res.run_dir)
    assert info.checkpoint.name == "refit.ckpt"
    refit = torch.load(info.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    best = torch.load(res.run_dir / m["early_stopped_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert not torch.equal(refit["net.item_emb.weight"], best["net.item_emb.weight"])


def test_holdout_shift_tests_on_the_validation_targets(make_cfg):
    m = run(make_cfg("model=sasrec", *FAST, "trainer.max_epochs=1", "trainer.eval.holdout_shift=1")).metrics
    assert m["protocol"]["holdout_shift"] == 1 and "real validation target" in m["protocol"]["relevant"]
    with pytest.raises(ValueError, match="holdout_shift"):
        run(make_cfg("model=sasrec", *FAST, "trainer.eval.holdout_shift=1", "trainer.eval.split=temporal"))
