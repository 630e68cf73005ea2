"""Uplift run folders (``python -m training.uplift``): the one owner of their layout, and the loader.

A run folder holds ``uplift_model.joblib`` (outcome -> ``models.uplift.FittedUplift``, pickled) and
``manifest.json`` (data facts, the chosen model and its validation Qini / uplift@k per outcome, the
file's SHA-256). ``load(run_dir)`` checks that hash before unpickling and returns an ``UpliftModel``:
``.features`` (the table columns it reads) and ``.predict(frame)`` (the estimated effect of the
treatment on the first outcome's probability, per row). ``predict_file`` writes those effects of a
table to Parquet, aligned to its rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.artifacts import file_sha256, read_json, write_json
from models.uplift import FittedUplift

MODEL_FILE, MANIFEST_FILE = "uplift_model.joblib", "manifest.json"
RUN_MANIFEST_COPY = "uplift_manifest.json"   # the run's manifest inside a bundle's campaigns/<id>/ (which has its own)
KIND = "uplift_table"


def is_run(folder: str | Path) -> bool:
    """Is ``folder`` an uplift run folder (rather than a campaign network's)?"""
    return (Path(folder) / MODEL_FILE).is_file()


def save(folder: str | Path, models: dict[str, FittedUplift], facts: dict[str, Any]) -> None:
    """Write the models and the manifest into ``folder`` (the caller makes it atomic)."""
    import joblib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(models, folder / MODEL_FILE, compress=3)
    first = next(iter(models.values()))
    write_json(folder / MANIFEST_FILE, {"kind": KIND, "outcomes": list(models), "features": first.features,
                                        **facts, "files": {MODEL_FILE: file_sha256(folder / MODEL_FILE)}})


@dataclass
class UpliftModel:
    """A loaded run: ``predict`` gives the first outcome's effect; ``models`` holds every outcome's."""

    run_dir: Path
    manifest: dict
    models: dict[str, FittedUplift]

    @property
    def primary(self) -> FittedUplift:
        return self.models[self.manifest["outcomes"][0]]

    @property
    def features(self) -> list[str]:
        return list(self.primary.features)

    def predict(self, frame: pd.DataFrame, outcome: str | None = None) -> np.ndarray:
        model = self.primary if outcome is None else self.models[outcome]
        return model.predict(frame)


def load(run_dir: str | Path) -> UpliftModel:
    """The run in ``run_dir``; a missing file or a model file that does not match its manifest fails."""
    import joblib

    run_dir = Path(run_dir)
    man = RUN_MANIFEST_COPY if (run_dir / RUN_MANIFEST_COPY).is_file() else MANIFEST_FILE
    for name in (MODEL_FILE, man):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"uplift run file {run_dir / name} is missing (train with python -m training.uplift)")
    manifest = read_json(run_dir / man)
    if manifest.get("kind") != KIND:
        raise ValueError(f"{run_dir / man}: kind {manifest.get('kind')!r} is not an uplift run")
    want = manifest["files"][MODEL_FILE]
    if file_sha256(run_dir / MODEL_FILE) != want:
        raise ValueError(f"{run_dir / MODEL_FILE} does not match the SHA-256 in its manifest: refusing to load it")
    return UpliftModel(run_dir, manifest, joblib.load(run_dir / MODEL_FILE))


def predict_file(run_dir: str | Path, path: str | Path, out: str | Path) -> int:
    """Write ``out`` (Parquet) with one ``uplift`` column aligned to the rows of the table ``path``
    (plus ``uplift_<outcome>`` per outcome when the run has several). Returns the row count."""
    model = load(run_dir)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predict.path {path} not found")
    frame = pd.read_csv(path) if path.suffix.lower() in (".csv", ".txt") else pd.read_parquet(path)
    out_frame = pd.DataFrame({"uplift": model.predict(frame)})
    if len(model.models) > 1:
        for o in model.models:
            out_frame[f"uplift_{o}"] = model.predict(frame, o)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    out_frame.to_parquet(tmp, index=False)
    tmp.replace(out)
    return len(out_frame)
