"""``python -m training.uplift``: a past campaign's table -> a run folder and aligned predictions.

The tables are made up with a planted effect (known per row), so the tests can tell a model that
learnt it from one that did not.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[2]
FAST = {"T-LR": {"kind": "lr", "C": 1.0, "interactions": False},
        "S-GBT": {"kind": "s", "gbt": {"max_iter": 30, "random_state": 0}}}


def planted_table(n: int, seed: int = 0) -> pd.DataFrame:
    """Effect +0.25 for segment 'a' with low x, -0.10 (sleeping dogs) for segment 'c'; baseline 0.2."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    seg = rng.choice(["a", "b", "c"], n)
    t = rng.integers(0, 2, n)
    effect = np.where((seg == "a") & (x < 0.5), 0.25, np.where(seg == "c", -0.10, 0.0))
    y = (rng.random(n) < 0.2 + t * effect + 0.1 * x).astype(int)
    return pd.DataFrame({"x": x, "seg": seg, "noise": rng.normal(size=n), "treated": t, "bought": y,
                         "true_effect": effect})


def cfg_for(tmp_path: Path, table: Path, *over: str, fast: bool = True):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("uplift/table", overrides=[f"data.path={table}", "data.treatment=treated", "data.outcome=[bought]",
                                                 "data.exclude=[true_effect]", f"out_dir={tmp_path / 'run'}",
                                                 f"paths.artifacts={tmp_path}", *over])
    if fast:
        from omegaconf import OmegaConf

        OmegaConf.update(cfg, "model.candidates", FAST, merge=False)
        OmegaConf.update(cfg, "model.blends", {"T+S": {"T-LR": 1.0, "S-GBT": 1.0}}, merge=False)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from training import uplift

    tmp = tmp_path_factory.mktemp("uplift")
    table = planted_table(6000)
    table.to_parquet(tmp / "past.parquet")
    res = uplift.run(cfg_for(tmp, tmp / "past.parquet"))
    return tmp, table, res


def test_run_folder_has_manifest_model_and_validation_figures(trained):
    tmp, table, res = trained
    man = json.loads((tmp / "run" / "manifest.json").read_text())
    assert man["kind"] == "uplift_table" and man["features"] == ["x", "noise", "seg"]
    assert man["data"]["categorical"] == ["seg"] and man["data"]["treated"] + man["data"]["control"] == len(table)
    val = man["results"]["bought"]["validation"]
    assert val["rows"] == 1200 and "qini" in val and "uplift_at_30" in val
    assert val["qini"] > 0.05          # the planted effect is learnt (random ranking: about 0)


def test_predictions_follow_the_planted_effect_and_load_through_serving(trained):
    from serving.campaigns import uplift_model

    tmp, _, res = trained
    fresh = planted_table(3000, seed=1)
    model = uplift_model.load(res["run_dir"])
    assert model.features == ["x", "noise", "seg"]
    pred = model.predict(fresh.drop(columns=["treated", "bought", "true_effect"]))
    by_effect = pd.Series(pred).groupby(fresh["true_effect"].to_numpy()).mean()
    assert by_effect[0.25] > by_effect[0.0] + 0.1 > by_effect[-0.10] + 0.1
    assert by_effect[-0.10] < 0                      # calibrated: effects in probability units, signs kept
    assert abs(by_effect[0.25] - 0.25) < 0.1


def test_model_selection_sees_training_rows_only(tmp_path, monkeypatch):
    from training import uplift

    planted_table(2000).to_parquet(tmp_path / "t.parquet")
    seen = []
    real = uplift.cv_table
    monkeypatch.setattr(uplift, "cv_table", lambda c, b, x, *a, **k: seen.append(len(x)) or real(c, b, x, *a, **k))
    uplift.run(cfg_for(tmp_path, tmp_path / "t.parquet", "refit=false"))
    assert seen == [1600]                            # 80 % training rows; the validation rows never


def test_command_line_trains_and_writes_one_aligned_uplift_column(tmp_path):
    """The shipped config (every candidate) end to end as a command."""
    planted_table(3000).to_parquet(tmp_path / "past.parquet")
    g = planted_table(500, seed=2).drop(columns=["treated", "bought", "true_effect"]).iloc[::-1]
    g.to_parquet(tmp_path / "g.parquet")
    out = subprocess.run([sys.executable, "-m", "training.uplift", f"data.path={tmp_path / 'past.parquet'}",
                          "data.treatment=treated", "data.outcome=bought", "data.exclude=[true_effect]",
                          f"paths.artifacts={tmp_path}", f"predict.path={tmp_path / 'g.parquet'}",
                          f"predict.out={tmp_path / 's.parquet'}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    s = pd.read_parquet(tmp_path / "s.parquet")
    assert list(s.columns) == ["uplift"] and len(s) == len(g)
    from serving.campaigns import uplift_model

    run_dir = tmp_path / "uplift" / "past"
    assert np.allclose(s["uplift"].to_numpy(), uplift_model.load(run_dir).predict(g.reset_index(drop=True)))


@pytest.mark.parametrize("change,words", [
    (lambda d: d.assign(treated=d["treated"].replace(1, 2)), "column 'treated' must be 0/1"),
    (lambda d: d.assign(bought=d["bought"].astype(float).where(d.index != 5)), "column 'bought' has 1 missing"),
    (lambda d: d.assign(treated=1), "column 'treated' has no control rows"),
    (lambda d: d.assign(bought=d["bought"] * 3), "column 'bought' must be 0/1"),
])
def test_bad_tables_fail_naming_the_column(tmp_path, change, words):
    from training import uplift

    change(planted_table(400)).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        uplift.run(cfg_for(tmp_path, tmp_path / "bad.parquet"))


def test_a_feature_absent_at_prediction_time_is_named(trained, tmp_path):
    from serving.campaigns import uplift_model

    _, _, res = trained
    g = planted_table(50).drop(columns=["treated", "bought", "true_effect", "seg"])
    g.to_parquet(tmp_path / "g.parquet")
    with pytest.raises(ValueError, match=r"\['seg'\] are absent"):
        uplift_model.predict_file(res["run_dir"], tmp_path / "g.parquet", tmp_path / "s.parquet")


def test_a_tampered_model_file_is_refused(trained, tmp_path):
    import shutil

    from serving.campaigns import uplift_model

    _, _, res = trained
    copy = tmp_path / "run"
    shutil.copytree(res["run_dir"], copy)
    with open(copy / uplift_model.MODEL_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="SHA-256"):
        uplift_model.load(copy)


def test_project_learner_of_the_benchmark_and_paired_interval():
    """``ProjectUplift`` (the benchmark's 'project') ranks the planted effect; the paired interval
    of a constant difference has zero width and contains it."""
    from omegaconf import OmegaConf

    from training.campaigns.uplift_grid import paired_ci
    from training.uplift import ProjectUplift

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        ucfg = OmegaConf.to_container(compose("uplift/table", overrides=["data.path=unused"]), resolve=True)
    ucfg["model"]["candidates"], ucfg["model"]["blends"] = FAST, {}
    d = planted_table(4000)
    x = np.c_[d["x"], d["seg"] == "a", d["seg"] == "c"].astype(float)
    m = ProjectUplift(ucfg).fit(x[:3000], d["bought"].to_numpy()[:3000], d["treated"].to_numpy()[:3000])
    p = m.predict(x[3000:])
    eff = d["true_effect"].to_numpy()[3000:]
    assert p[eff == 0.25].mean() > p[eff == 0].mean() > p[eff == -0.10].mean() and m.chosen_ in FAST
    mean, lo, hi = paired_ci(np.full(5, 0.01), 800, 200)
    assert mean == pytest.approx(0.01) and lo == pytest.approx(0.01) and hi == pytest.approx(0.01)
