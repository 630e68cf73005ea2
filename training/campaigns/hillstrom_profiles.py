"""Campaign profiles of Hillstrom's customers, for the next campaign after the e-mail experiment:
``python -m training.campaigns.hillstrom_profiles`` -> ``${paths.artifacts}/profiles/hillstrom/profiles.parquet``.

Hillstrom's 64,000 customers (``data/hillstrom``) are the past campaign of an uplift model
(``python -m training.uplift --config-name uplift/hillstrom_campaign``); the next campaign
(``conf/campaign/hillstrom_next.yaml``) targets the same customers. Their profiles carry the
experiment's covariates under the same names (recency, history_segment, history, mens, womens,
zip_code, newbie, channel: what the uplift model reads) plus the columns every campaign needs,
derived as stated:

- ``user_key``: the pseudonymised row number (the file has no customer key; ``features.privacy``);
- ``recency_days`` = 30 x recency (months since the last purchase); ``monetary`` = history (last
  year's spend); ``frequency`` unknown (null); ``segment`` = the history segment's number (1-7);
- ``lifecycle``: new (newbie, recency <= 3 months), active (<= 3), at_risk (<= 6), else dormant;
  ``named_segment``: high_value (history >= 500) else regular;
- consent: e-mail yes (they are the retailer's e-mail customers), SMS and push unknown = no;
  ``preferred_channel`` email; price sensitivity, active hour, country unknown (null);
- ``snapshot_date``: a nominal 2008-06-01 (the file carries no dates).

This belongs to the campaign demo on Hillstrom; profiles of shops with an event log come from
``python -m features.profile``. Writes the folder atomically with a ``manifest.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from features.adapters.hillstrom import load_hillstrom
from features.artifacts import atomic_dir, code_version, file_sha256, write_json
from features.cli import run_or_exit
from features.privacy import key_fingerprint, pseudonymise

SNAPSHOT = "2008-06-01"
COVARIATES = ("recency", "history_segment", "history", "mens", "womens", "zip_code", "newbie", "channel")


def hillstrom_profiles(df: pd.DataFrame) -> pd.DataFrame:
    """Profile rows of the typed Hillstrom table (``features.adapters.hillstrom.load_hillstrom``)."""
    rec = df["recency"].to_numpy(dtype=np.int64)
    newbie = df["newbie"].astype(int).to_numpy()
    lifecycle = np.where((newbie == 1) & (rec <= 3), "new",
                         np.where(rec <= 3, "active", np.where(rec <= 6, "at_risk", "dormant")))
    n = len(df)
    out = pd.DataFrame({
        "user_key": pseudonymise(df["customer_id"]).to_numpy(),
        "snapshot_date": pd.Timestamp(SNAPSHOT, tz="UTC"),
        "lifecycle": lifecycle,
        "named_segment": np.where(df["history"].to_numpy() >= 500, "high_value", "regular"),
        "segment": df["history_segment"].str[0].astype(int).to_numpy(),
        "recency_days": rec * 30.0,
        "frequency": np.full(n, np.nan),
        "monetary": df["history"].to_numpy(dtype=np.float64),
        "price_sensitivity": np.full(n, np.nan),
        "active_hour": np.full(n, np.nan),
        "preferred_channel": "email",
        "country": pd.Series([None] * n, dtype="string"),
        "opted_out_email": False, "opted_out_sms": True, "opted_out_push": True,
    })
    for c in COVARIATES:
        col = df[c]
        out[c] = col.astype(int).to_numpy() if c in ("mens", "womens", "newbie") else col.to_numpy()
    return out


def run(cfg: DictConfig) -> Path:
    src = Path(str(cfg.data.path))
    out_dir = Path(cfg.paths.artifacts) / "profiles" / "hillstrom"
    profiles = hillstrom_profiles(load_hillstrom(src))
    with atomic_dir(out_dir) as tmp:
        profiles.to_parquet(tmp / "profiles.parquet", index=False)
        write_json(tmp / "manifest.json", {
            "kind": "campaign_profiles", "data": "hillstrom", "rows": int(len(profiles)), "snapshot_date": SNAPSHOT,
            "source": {"path": str(src), "sha256": file_sha256(src)}, "pseudonym_key": key_fingerprint(),
            "columns": list(profiles.columns), "code_version": code_version(),
            "files": {"profiles.parquet": file_sha256(tmp / "profiles.parquet")}})
    return out_dir / "profiles.parquet"


@hydra.main(config_path="../../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    path = run_or_exit("training.campaigns.hillstrom_profiles", run, cfg)
    print(f"Hillstrom campaign profiles -> {path}")


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "data=hillstrom", *sys.argv[1:]]
    main()
