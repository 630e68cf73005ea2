"""Build the candidate index of a bundle: ``python -m serving.build_index [bundle=<folder>|run=<folder>] index=<name>``.

Reads ``<bundle>/item_embeddings.npy``, validates the ``index`` config against it (nlist, PQ split,
dimension) before building, builds the FAISS index (moved to the GPU when FAISS sees one) or
prepares the torch exact backend, measures recall@k against exact search on sample queries, and
writes ``<bundle>/index/`` atomically (``index.faiss``, ``ids.npy``, ``manifest.json``). The bundle's
own ``manifest.json`` gets an ``index`` entry and the new files' hashes.

Which bundle: ``bundle=<folder>``; else ``run=<folder>`` (a bundle-shaped folder itself, or the
bundle whose manifest names that run); else the one named in ``${paths.bundles}/LATEST``.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from features.artifacts import atomic_dir, code_version, file_sha256, write_json
from serving.index import (
    INDEX_DIRNAME, BundleError, IndexManifest, IndexSettings, build_index, exact_reference, load_embeddings,
    recall_at_k, save_index,
)

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    bundle_dir: Path
    index_dir: Path
    manifest: IndexManifest


def resolve_bundle(cfg: DictConfig) -> Path:
    """The bundle folder this run works on (see module docstring); errors name the setting or file."""
    if cfg.get("bundle"):
        path = Path(str(cfg.bundle))
        if not path.is_dir():
            raise BundleError(f"bundle={path}: folder not found")
        return path
    bundles = Path(str(cfg.paths.bundles))
    if cfg.get("run"):
        run = Path(str(cfg.run))
        if (run / "item_embeddings.npy").exists():
            return run
        if not run.is_dir():
            raise BundleError(f"run={run}: folder not found")
        matches = []
        for man in sorted(bundles.glob("*/manifest.json")):
            try:
                m = json.loads(man.read_text())
            except json.JSONDecodeError:
                continue
            src = m.get("run") or m.get("run_dir")
            if src and Path(src).resolve() == run.resolve():
                matches.append(man.parent)
        if not matches:
            raise BundleError(f"run={run}: no bundle under {bundles} was exported from it (run `python -m training.export run={run}` first)")
        return max(matches, key=lambda p: p.stat().st_mtime)
    latest = bundles / "LATEST"
    if not latest.exists():
        raise BundleError(f"{latest}: missing (no bundle exported yet; pass bundle=<folder>)")
    path = bundles / latest.read_text().strip()
    if not path.is_dir():
        raise BundleError(f"{latest}: names {path.name!r}, which is not a folder under {bundles}")
    return path


def sample_queries(emb: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Recall queries: random item embeddings plus Gaussian noise (0.25 x the per-dimension std)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(emb), size=min(n, len(emb)), replace=len(emb) < n)
    noise = rng.normal(size=(len(rows), emb.shape[1])).astype(np.float32) * (0.25 * emb.std(axis=0))
    return (emb[rows] + noise).astype(np.float32)


def _update_bundle_manifest(bundle: Path, index_dir: Path, manifest: IndexManifest) -> None:
    path = bundle / "manifest.json"
    m = json.loads(path.read_text()) if path.exists() else {}
    m["index"] = {"name": manifest.name, "backend": manifest.backend, "factory": manifest.factory,
                  "recall_at_k": manifest.recall_at_k, "recall_k": manifest.recall_k, "device": manifest.device}
    files = m.setdefault("files", {})
    for f in sorted(index_dir.iterdir()):
        files[f"{INDEX_DIRNAME}/{f.name}"] = file_sha256(f)
    tmp = path.with_name(f".manifest.json.tmp-{os.getpid()}")
    write_json(tmp, m)
    os.replace(tmp, path)


def run(cfg: DictConfig) -> BuildResult:
    settings = IndexSettings.from_cfg(OmegaConf.to_container(cfg.index, resolve=True))
    bundle = resolve_bundle(cfg)
    emb = load_embeddings(bundle)
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
        code_version=code_version(), embeddings_sha256=file_sha256(bundle / "item_embeddings.npy"),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    index_dir = bundle / INDEX_DIRNAME
    with atomic_dir(index_dir) as tmp:
        save_index(index, tmp, manifest)
    _update_bundle_manifest(bundle, index_dir, manifest)
    log.info("index written to %s: build %.2fs, recall@%d %.4f on %s", index_dir, build_s, settings.recall_k,
             recall, index.device)
    return BuildResult(bundle, index_dir, manifest)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        res = run(cfg)
    except ValueError as e:  # BundleError / IndexConfigError are ValueErrors
        print(f"build_index: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"index_dir": str(res.index_dir), **{k: v for k, v in asdict(res.manifest).items()
                                                          if k in ("name", "n_items", "dim", "recall_at_k", "build_seconds", "device")}}))


if __name__ == "__main__":
    main()
