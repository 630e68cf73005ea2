"""python -m serving.build_index: publishes a new bundle version holding index/ with a manifest (the parent
is left as it was); bad configs and bundles fail clearly."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from serving.build_index import run
from serving.bundle import BundleError
from serving.index import (
    FaissIndex, IndexConfigError, NormRangedIndex, TorchExactIndex, load_index,
)
from tests.toy_bundle import make_bundle

REPO = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)
faiss.omp_set_num_threads(1)


def cfg_for(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=[f"paths.artifacts={tmp_path / 'art'}", *overrides])


@pytest.mark.parametrize("index,backend", [("flat", FaissIndex), ("hnsw", FaissIndex), ("torch_exact", TorchExactIndex)])
def test_builds_saves_and_records(tmp_path, index, backend):
    bundle = make_bundle(tmp_path / "b", n_items=400, dim=16, encoder=False)
    res = run(cfg_for(tmp_path, f"bundle={bundle}", f"index={index}", "index.recall_queries=50"))
    assert res.parent_dir == bundle and res.bundle_dir == tmp_path / "b.1" and not (bundle / "index").exists()
    man = json.loads((res.bundle_dir / "index" / "manifest.json").read_text())
    assert man["n_items"] == 400 and man["dim"] == 16 and man["metric"] == "inner_product"
    assert man["device"] == "cpu" and man["build_seconds"] >= 0
    assert man["recall_at_k"] >= 0.95 and man["recall_k"] == 100
    assert (res.bundle_dir / "index" / "ids.npy").exists()
    assert (res.bundle_dir / "index" / "index.faiss").exists() == (backend is FaissIndex)
    assert isinstance(load_index(res.bundle_dir), backend)
    bman = json.loads((res.bundle_dir / "manifest.json").read_text())
    assert bman["index"]["name"] == index and "index/ids.npy" in bman["files"]
    assert bman["parent"] == "b" and "index" in bman["adds"] and "items.parquet" in bman["files"]
    assert res.manifest.recall_at_k == man["recall_at_k"]


def test_latest_bundle_is_default(tmp_path):
    bundles = tmp_path / "art" / "bundles"
    make_bundle(bundles / "toy-1", n_items=100, dim=8, encoder=False)
    (bundles / "LATEST").write_text("toy-1\n")
    res = run(cfg_for(tmp_path, "index=flat", "index.recall_queries=20"))
    assert res.index_dir == bundles / "toy-1.1" / "index"
    assert (bundles / "LATEST").read_text().strip() == "toy-1.1"


def test_nlist_larger_than_catalogue_fails_before_building(tmp_path):
    bundle = make_bundle(tmp_path / "b", n_items=200, dim=16, encoder=False)
    with pytest.raises(IndexConfigError, match="nlist=1024 is larger than the catalogue"):
        run(cfg_for(tmp_path, f"bundle={bundle}", "index=ivf"))
    with pytest.raises(IndexConfigError, match="index.dim=64"):
        run(cfg_for(tmp_path, f"bundle={bundle}", "index=flat", "index.dim=64"))
    assert not (bundle / "index").exists()


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "serving.build_index", f"bundle={tmp_path / 'empty'}",
                          f"paths.artifacts={tmp_path / 'art'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "item_embeddings.npy: missing" in out.stderr and "Traceback" not in out.stderr


def test_missing_latest_names_file(tmp_path):
    with pytest.raises(BundleError, match="LATEST: not found"):
        run(cfg_for(tmp_path, "index=flat"))


@pytest.mark.parametrize("index", ["ivf_large", "ivf"])
def test_shipped_ivf_configs_fail_early_naming_the_setting(tmp_path, index):
    """The shipped IVF configs (ivf_large: norm strata, then IVF1024,PQ64x4fsr,RFlat) fail before building
    on a catalogue or bundle they do not fit, naming the part."""
    bundle = make_bundle(tmp_path / "b", n_items=300, dim=16, encoder=False)
    match = {"ivf": r"index.factory='IVF1024,Flat': nlist=1024 is larger than the catalogue \(300 items\)",
             "ivf_large": r"index.norm_strata\[0\].factory='IVF256,Flat': nlist=256 is larger than the catalogue \(15 items\)"}
    with pytest.raises(IndexConfigError, match=match[index]):
        run(cfg_for(tmp_path, f"bundle={bundle}", f"index={index}"))
    with pytest.raises(IndexConfigError, match="index.dim=64 does not match the bundle's embedding dimension 16"):
        run(cfg_for(tmp_path, f"bundle={bundle}", f"index={index}", "index.dim=64"))
    assert not (bundle / "index").exists()


def test_new_factory_form_builds_and_reloads(tmp_path):
    """An IVF with an HNSW coarse quantiser and a refined PQ fast-scan index build, save and reload."""
    bundle = make_bundle(tmp_path / "b", n_items=300, dim=16, encoder=False)
    res = run(cfg_for(tmp_path, f"bundle={bundle}", "index=ivf_large", "index.factory='IVF8_HNSW16,PQ16x4fs,RFlat'",
                      "index.search_params.nprobe=8", "index.filtered_search_params.nprobe=8", "index.norm_strata=[]",
                      "index.train_size=null", "index.recall_queries=20"))
    assert res.manifest.factory == "IVF8_HNSW16,PQ16x4fs,RFlat" and res.manifest.recall_at_k >= 0.9
    idx = load_index(res.bundle_dir)
    assert isinstance(idx, FaissIndex) and idx.search_params["nprobe"] == 8 and idx.search_params["k_factor_rf"] >= 1


def test_norm_ranged_index_builds_and_reloads(tmp_path):
    """ivf_large's form (a norm stratum + the rest) at toy scale: built from the config, saved, reloaded."""
    bundle = make_bundle(tmp_path / "b", n_items=400, dim=16, encoder=False)
    res = run(cfg_for(tmp_path, f"bundle={bundle}", "index=ivf_large", "index.factory='IVF8,PQ16x4fsr,RFlat'",
                      "index.search_params.nprobe=8", "index.filtered_search_params.nprobe=8",
                      "index.norm_strata=[{share:0.1,factory:'IVF4,Flat',search_params:{nprobe:4}}]",
                      "index.train_size=null", "index.recall_queries=20"))
    assert res.manifest.norm_strata[0]["factory"] == "IVF4,Flat" and res.manifest.recall_at_k >= 0.9
    idx = load_index(res.bundle_dir)
    assert isinstance(idx, NormRangedIndex) and [len(r) for r in idx.part_rows] == [40, 360]
    assert idx.parts[0].search_params == {"nprobe": 4} and idx.parts[1].filtered_search_params == {"nprobe": 8}
