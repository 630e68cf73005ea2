"""Build the candidate index of a bundle: ``python -m serving.build_index [bundle=<folder>|run=<folder>] index=<name>``.

Reads ``<bundle>/item_embeddings.npy``, validates the ``index`` config against it (nlist, PQ split,
dimension) before building, builds the FAISS index (moved to the GPU when FAISS sees one) or
prepares the torch exact backend, measures recall@k against exact search on sample queries, and
publishes a NEW bundle version (``serving.bundle.publish_derived``): the parent's files plus ``index/``
(``index.faiss``, ``ids.npy``, ``manifest.json``), an ``index`` entry in the manifest and ``parent`` set;
``LATEST`` moves to it. The parent version is left as it was.

Which bundle: ``bundle=<folder or version name>``; else ``run=<folder>`` (the bundle whose manifest names
that run, or that folder itself when it is bundle-shaped); else the one named in ``${paths.bundles}/LATEST``.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from features.artifacts import code_version, file_sha256
from serving.bundle import (
    INDEX_DIR, ITEM_EMBEDDINGS, LATEST, BundleError, list_versions, publish_derived, read_manifest, read_embeddings,
    resolve, resolve_bundle_dir,
)
from serving.index import IndexManifest, IndexSettings, build_index, exact_reference, recall_at_k, save_index

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    parent_dir: Path   # the version the index was built for
    bundle_dir: Path   # the new version: the parent + index/
    index_dir: Path
    manifest: IndexManifest


def resolve_bundle(cfg: DictConfig) -> Path:
    """The bundle folder this run works on (see module docstring); errors name the setting or file."""
    bundles = Path(str(cfg.paths.bundles))
    if cfg.get("bundle"):
        return resolve_bundle_dir(str(cfg.bundle), bundles)
    if cfg.get("run"):
        run = Path(str(cfg.run))
        if (run / ITEM_EMBEDDINGS).exists():  # a bundle-shaped folder itself
            return run
        if not run.is_dir():
            raise BundleError(f"run={run}: folder not found")
        matches = []
        for name in list_versions(bundles):
            m = read_manifest(bundles / name, validate=False)
            src = m.get("run") or m.get("run_dir")
            if src and Path(src).resolve() == run.resolve():
                matches.append(bundles / name)
        if not matches:
            raise BundleError(f"run={run}: no bundle under {bundles} was exported from it (run `python -m training.export run={run}` first)")
        return max(matches, key=lambda p: p.stat().st_mtime)
    return resolve(bundles, LATEST)


def sample_queries(emb: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Recall queries: random item embeddings plus Gaussian noise (0.25 x the per-dimension std)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(emb), size=min(n, len(emb)), replace=len(emb) < n)
    noise = rng.normal(size=(len(rows), emb.shape[1])).astype(np.float32) * (0.25 * emb.std(axis=0))
    return (emb[rows] + noise).astype(np.float32)


def run(cfg: DictConfig) -> BuildResult:
    settings = IndexSettings.from_cfg(OmegaConf.to_container(cfg.index, resolve=True))
    bundle = resolve_bundle(cfg)
    emb = read_embeddings(bundle)
    log.info("bundle %s: %d items, dim %d; index %s", bundle, emb.shape[0], emb.shape[1], settings.name)
    t0 = time.perf_counter()
    index = build_index(emb, settings, seed=int(cfg.seed))  # validates the settings first
    build_s = time.perf_counter() - t0
    queries = sample_queries(emb, settings.recall_queries, int(cfg.seed))
    recall = recall_at_k(index, exact_reference(emb), queries, min(settings.recall_k, emb.shape[0]))
    manifest = IndexManifest(
        name=settings.name, backend=settings.backend, factory=settings.factory, metric="inner_product",
        n_items=int(emb.shape[0]), dim=int(emb.shape[1]), search_params=settings.search_params,
        filtered_search_params=settings.filtered_search_params, norm_strata=settings.norm_strata,
        filter=settings.filter, overfetch=settings.overfetch, device=index.device, build_seconds=round(build_s, 4),
        recall_at_k=round(recall, 5), recall_k=settings.recall_k, recall_queries=len(queries),
        recall_query_source="item embeddings + N(0, (0.25*std)^2) noise", torch_dtype=settings.torch_dtype,
        code_version=code_version(), embeddings_sha256=file_sha256(bundle / ITEM_EMBEDDINGS),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    summary = {"name": manifest.name, "backend": manifest.backend, "factory": manifest.factory,
               "recall_at_k": manifest.recall_at_k, "recall_k": manifest.recall_k, "device": manifest.device}
    scratch = Path(tempfile.mkdtemp(prefix=".index-", dir=bundle.parent))
    try:
        save_index(index, scratch, manifest)
        new = publish_derived(bundle, add_files={INDEX_DIR: scratch}, manifest_updates={"index": summary},
                              latest=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("index in %s: build %.2fs, recall@%d %.4f on %s", new / INDEX_DIR, build_s, settings.recall_k,
             recall, index.device)
    return BuildResult(bundle, new, new / INDEX_DIR, manifest)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        res = run(cfg)
    except ValueError as e:  # BundleError / IndexConfigError are ValueErrors
        print(f"build_index: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"bundle": res.bundle_dir.name, "index_dir": str(res.index_dir), **{k: v for k, v in asdict(res.manifest).items()
                                                          if k in ("name", "n_items", "dim", "recall_at_k", "build_seconds", "device")}}))


if __name__ == "__main__":
    main()
