"""Campaign model files and scoring: save, load, score users in batches, and the service's scorer.

A campaign model folder (``${paths.artifacts}/campaign_models/<id>/`` from
``python -m training.campaigns.train``, a copy in the audience folder, and ``campaigns/<id>/`` in a
bundle for the service) holds:

- ``model.pt``       the ``state_dict`` of a ``models.uplift.CampaignEnsemble`` (loaded with ``weights_only``);
- ``model.json``     ``kind`` (response | uplift), ``features`` (profile columns, in order), the ensemble
                     shape (``n_features``, ``hidden``, ``n_heads``, ``n_members``), training metrics;
- ``features.parquet`` (bundle copy only) ``user_key`` (pseudonymised) + the feature columns at the
                     profile snapshot, so the service can score a user by key;
- ``manifest.json``.

A past campaign's uplift model (``python -m training.uplift``; layout ``serving.campaigns.uplift_model``)
loads through the same ``CampaignModel.load`` and scores through the same ``feature_matrix`` +
``score_matrix`` (per batch, as ``serving.campaigns.ray_audience`` calls them): its scores are the
estimated effects per user.

This module is the one owner of that layout: ``save_campaign_model`` writes it (training),
``CampaignModel.load`` reads it. ``CampaignModel`` scores a feature matrix batch-wise on CUDA when
asked and present, else on the CPU. ``load_campaign_scorer`` / ``CampaignScorer`` are the service
contract (``POST /v1/campaigns/{id}/score``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from features.artifacts import code_version, file_sha256, write_json
from models.uplift import CampaignEnsemble, FittedUplift, ensemble_from, ensemble_meta
from serving.campaigns import uplift_model
from serving.campaigns.spec import ID_PATTERN

MODEL_FILE, META_FILE, FEATURES_FILE, MANIFEST_FILE = "model.pt", "model.json", "features.parquet", "manifest.json"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without a GPU falls back to ``cpu``."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def save_campaign_model(folder: str | Path, ens: CampaignEnsemble, features: list[str], kind: str,
                        extra: dict[str, Any] | None = None) -> None:
    """Write ``model.pt``, ``model.json`` and ``manifest.json`` (file hashes) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ens.state_dict(), folder / MODEL_FILE)
    meta = {**ensemble_meta(ens), "kind": kind, "features": list(features), "code_version": code_version(),
            **(extra or {})}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    write_json(folder / MANIFEST_FILE, {"kind": kind, "features": list(features), "code_version": code_version(),
                                        "files": {n: file_sha256(folder / n) for n in (MODEL_FILE, META_FILE)}})


@dataclass
class CampaignModel:
    """A campaign network (``ensemble``) or a past campaign's table uplift model (``uplift``, from
    ``python -m training.uplift``); both score through ``feature_matrix`` + ``score_matrix``."""

    ensemble: CampaignEnsemble | None
    features: list[str]
    kind: str
    meta: dict = field(default_factory=dict)
    uplift: FittedUplift | None = None

    @classmethod
    def load(cls, folder: str | Path) -> "CampaignModel":
        folder = Path(folder)
        if uplift_model.is_run(folder):
            run = uplift_model.load(folder)
            meta = {**run.manifest, "metrics": {o: r.get("validation") for o, r in (run.manifest.get("results") or {}).items()},
                    "training": {"data": run.manifest.get("data"), "chosen": run.primary.chosen}}
            return cls(None, run.features, "uplift", meta, run.primary)
        for name in (MODEL_FILE, META_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"campaign model file {folder / name} is missing")
        meta = json.loads((folder / META_FILE).read_text())
        state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
        return cls(ensemble_from(meta, state), list(meta["features"]), str(meta["kind"]), meta)

    def feature_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's columns of ``frame`` as float32 (nulls -> NaN, imputed by the network)."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(f"profiles lack the campaign model's feature column(s) {missing}")
        if self.uplift is not None:      # numeric as they are, string columns one-hot (the model's encoder)
            return self.uplift.encoder.transform(frame)
        out = np.empty((len(frame), len(self.features)), dtype=np.float32)
        for j, c in enumerate(self.features):
            out[:, j] = pd.to_numeric(frame[c], errors="coerce").astype("float64").to_numpy(na_value=np.nan)
        return out

    def score_matrix(self, x: np.ndarray, device: str = "cpu", batch_size: int = 262144) -> np.ndarray:
        """Scores (n,) float32 for raw features ``x`` (n, F), batch by batch on ``device``."""
        if self.uplift is not None:      # tree learners on the CPU (``device`` does not apply)
            width = len(self.uplift.encoder.columns)
            if x.ndim != 2 or x.shape[1] != width:
                raise ValueError(f"feature matrix must be (n, {width}) (the uplift model's encoded columns), got {x.shape}")
            out = np.empty(len(x), dtype=np.float32)
            for start in range(0, len(x), batch_size):
                out[start:start + batch_size] = self.uplift.predict_encoded(x[start:start + batch_size])
            return out
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"feature matrix must be (n, {len(self.features)}), got {x.shape}")
        dev = torch.device(resolve_device(device))
        model = self.ensemble.to(dev)
        out = np.empty(len(x), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(dev, non_blocking=True)
                out[start:start + len(xb)] = model.score(xb).float().cpu().numpy()
        return out


@dataclass
class CampaignScorer:
    """Scores users of one campaign by pseudonymised ``user_key`` (the service endpoint)."""

    campaign_id: str
    model: CampaignModel
    _rows: dict[str, int]
    _scores: np.ndarray

    def score(self, user_keys: Sequence[str]) -> list[float | None]:
        """Score per key, ``None`` for users the campaign's snapshot does not know."""
        out: list[float | None] = []
        for k in user_keys:
            i = self._rows.get(str(k))
            out.append(None if i is None else float(self._scores[i]))
        return out


def load_campaign_scorer(bundle_dir: str | Path, campaign_id: str) -> CampaignScorer | None:
    """The scorer of ``<bundle_dir>/campaigns/<campaign_id>/``; ``None`` when there is no such campaign."""
    if not isinstance(campaign_id, str) or not ID_PATTERN.match(campaign_id):
        return None  # also blocks path tricks such as "../x"
    folder = Path(bundle_dir) / "campaigns" / campaign_id
    if not (folder / META_FILE).is_file() and not uplift_model.is_run(folder):
        return None
    model = CampaignModel.load(folder)
    feats = pd.read_parquet(folder / FEATURES_FILE)
    keys = feats["user_key"].astype(str).tolist()
    # Users are scored once at load (the snapshot is fixed); requests are dictionary look-ups.
    scores = model.score_matrix(model.feature_matrix(feats), device="cpu")
    return CampaignScorer(campaign_id, model, {k: i for i, k in enumerate(keys)}, scores)
