"""End to end on real data: prepare Amazon Toys, train SASRec briefly on a subset of users, beat popularity."""
import pytest
from hydra import compose, initialize_config_dir

from tests.training.conftest import CONF
from training.train import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toys_artifacts(tmp_path_factory, data_root):
    from features.prepare import run as prepare

    root = tmp_path_factory.mktemp("real")
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("config", overrides=["data=amazon_toys", f"paths.artifacts={root}", f"paths.data_root={data_root}"])
    prepare(cfg)
    return root


def _cfg(root, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=["data=amazon_toys", f"paths.artifacts={root}", "trainer=cpu",
                                            "trainer.max_users=3000", "trainer.eval.sampled_negatives=0", *overrides])


def test_brief_sasrec_training_beats_popularity_on_amazon_toys(toys_artifacts):
    pop = run(_cfg(toys_artifacts, "model=pop")).metrics
    sas = run(_cfg(toys_artifacts, "model=sasrec", "model.use_attributes=true", "model.lr=0.003", "model.max_len=20",
                   "model.hidden=32", "model.blocks=1", "model.heads=1", "model.dropout=0.2", "model.emb_dropout=0.2",
                   "model.label_smoothing=0.0", "model.weight_decay=0.0", "model.batch_size=256",
                   "trainer.max_epochs=3")).metrics
    assert sas["test/n_users"] == pop["test/n_users"] == 3000
    assert sas["valid/ndcg@10"] > 1.2 * pop["valid/ndcg@10"]
    assert sas["test/ndcg@10"] > pop["test/ndcg@10"]
    assert sas["test/hr@20"] > pop["test/hr@20"]
