"""Per-dataset model settings (conf/data_model/<data>_<model>.yaml) apply only to their pair and yield to
the command line."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_sports_sasrec_gets_its_validation_choice_and_others_keep_the_defaults():
    assert _cfg("model=sasrec", "data=amazon_sports").model.weight_decay == 0.05
    assert _cfg("model=sasrec", "data=amazon_toys").model.weight_decay == 0.1  # model/sasrec.yaml default
    assert _cfg("model=sasrec", "data=amazon_sports", "model.weight_decay=0.2").model.weight_decay == 0.2
    assert _cfg("model=two_tower", "data=amazon_sports").model.name == "two_tower"  # no file for the pair: fine


def test_trainer_takes_a_models_suggested_epochs_patience_and_threads_unless_told_otherwise():
    """conf/model/ranker.yaml suggests 15 epochs, patience 3, one thread; trainer.* on the command line wins."""
    r = _cfg("model=ranker").trainer
    assert (r.max_epochs, r.patience, r.num_threads) == (15, 3, 1)
    s = _cfg("model=sasrec").trainer
    assert (s.max_epochs, s.patience, s.num_threads) == (200, 8, 2)    # conf/model/sasrec.yaml: patience 8
    t = _cfg("model=two_tower").trainer
    assert (t.max_epochs, t.patience) == (200, 20)                       # conf/trainer_defaults.yaml
    assert _cfg("model=ranker", "trainer.max_epochs=2", "trainer=gpu").trainer.max_epochs == 2
    assert _cfg("model=ranker", "trainer=ddp").callbacks.early_stopping.patience == 3
