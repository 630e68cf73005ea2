"""The Hillstrom e-mail experiment as uplift data, and the campaign network as an uplift learner.

``load_hillstrom`` returns one arm against 'No E-Mail', one-hot encoded (reading and validation are
``features.adapters.hillstrom``); ``TwoHeadNet`` wraps the two-headed ``CampaignNet`` ensemble in the
``fit(x, y, t)`` / ``predict(x)`` interface of ``models.uplift_learners`` (used by
``scripts/bench_uplift.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from features.adapters.hillstrom import load_hillstrom as load_valid_hillstrom
from serving.campaigns.spec import NetSettings
from training.campaigns.response import train_campaign_net

HILLSTROM_ARMS = ("Womens E-Mail", "Mens E-Mail", "No E-Mail")


@dataclass
class UpliftData:
    x: np.ndarray            # float64 (n, F) numeric features
    y: np.ndarray            # int (n,) outcome 0/1
    t: np.ndarray            # int (n,) 1 = treated
    feature_names: list[str]


def load_hillstrom(path: str | Path, treatment_arm: str = "Womens E-Mail", outcome: str = "visit") -> UpliftData:
    """Hillstrom rows of ``treatment_arm`` vs 'No E-Mail', one-hot encoded, with validation."""
    if treatment_arm not in HILLSTROM_ARMS[:2]:
        raise ValueError(f"treatment_arm must be one of {HILLSTROM_ARMS[:2]}, got {treatment_arm!r}")
    if outcome not in ("visit", "conversion"):
        raise ValueError(f"outcome must be visit or conversion, got {outcome!r}")
    df = load_valid_hillstrom(path)   # reading and validation belong to the data layer
    df = df[df["segment"].isin([treatment_arm, "No E-Mail"])].reset_index(drop=True)
    x = pd.DataFrame({
        "recency": df["recency"].astype(float), "history": df["history"], "log_history": np.log1p(df["history"]),
        "history_segment": df["history_segment"].str[0].astype(int).astype(float),
        "mens": df["mens"].astype(float), "womens": df["womens"].astype(float), "newbie": df["newbie"].astype(float),
    })
    for col, values in (("zip_code", ("Urban", "Surburban", "Rural")), ("channel", ("Phone", "Web", "Multichannel"))):
        for v in values:
            x[f"{col}={v}"] = (df[col] == v).astype(float)
    return UpliftData(x.to_numpy(), df[outcome].to_numpy(dtype=int), (df["segment"] == treatment_arm).to_numpy(dtype=int),
                      list(x.columns))


class TwoHeadNet:
    """The project's two-headed network (``models.uplift.CampaignNet``), seed ensemble, early-stopped
    on a validation split of the training rows."""

    def __init__(self, settings: NetSettings, log_features: tuple[str, ...] = (), feature_names: list[str] | None = None,
                 seed: int = 0):
        self.settings, self.seed = settings, seed
        self.log_mask = [n in set(log_features) for n in (feature_names or [])]

    def fit(self, x, y, t):
        mask = self.log_mask or [False] * x.shape[1]
        self.ens, _ = train_campaign_net(x, y, t, self.settings, mask, seed=self.seed)
        return self

    def predict(self, x):
        with torch.no_grad():
            return self.ens.score(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()
