"""Fitting campaign models: response (propensity) and uplift networks, and their training tables.

- ``train_campaign_net``: a seed ensemble of ``models.uplift.CampaignNet`` (two heads = uplift on
  treatment and control rows, one head = response), each member early-stopped on a stratified
  validation split of the training rows only.
- ``response_training_table``: features of every user at an earlier snapshot (the profile builder of
  ``features.profiles`` run at ``snapshot - objective.within_days``) and the label "did the objective
  happen in the following ``within_days``", so the model predicts from the same columns it is later
  applied to.
- ``fit_campaign_model``: the two together, with the held-out AUC and lift@10 % in its metrics.
- ``save_campaign_model``: the folder layout read by ``serving.campaign_scoring.CampaignModel``.

- ``load_hillstrom`` and ``TwoHeadNet`` (the network as an uplift learner): the Hillstrom benchmark's
  data and the network's learner interface; the other uplift learners are ``models.uplift_learners``.
- ``complete_journey_benchmark``: the coupon response model on Complete Journey.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from features.adapters.hillstrom import load_hillstrom as load_valid_hillstrom
from features.artifacts import code_version, write_json
from models.uplift import CampaignEnsemble, CampaignNet, ensemble_meta
from models.uplift_learners import (Blend, ClassTransformation, DRLearner, RandomLearner,  # noqa: F401 (re-exported)
                                    SLearner, TLearner, XLearner)

log = logging.getLogger(__name__)

MODEL_FILE, META_FILE = "model.pt", "model.json"  # same names as serving.campaign_scoring


@dataclass(frozen=True)
class NetSettings:
    """Training settings of a campaign network (a campaign's ``model`` section maps onto these)."""

    hidden: int = 32
    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    seeds: int = 3
    valid_fraction: float = 0.2
    dropout: float = 0.1

    @classmethod
    def from_spec(cls, spec: Any) -> "NetSettings":
        return cls(hidden=spec.hidden, epochs=spec.epochs, lr=spec.lr, weight_decay=spec.weight_decay,
                   batch_size=spec.batch_size, seeds=spec.seeds, valid_fraction=spec.valid_fraction)


def _member_loss(net: CampaignNet, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    logits = net(x)
    logit = logits[:, 0] if t is None else torch.where(t > 0, logits[:, 1], logits[:, 0])
    return torch.nn.functional.binary_cross_entropy_with_logits(logit, y)


def train_campaign_net(x: np.ndarray, y: np.ndarray, t: np.ndarray | None, settings: NetSettings,
                       log_mask: list[bool], seed: int = 0) -> tuple[CampaignEnsemble, dict[str, float]]:
    """Fit ``settings.seeds`` members; two heads when ``t`` (0/1 treatment) is given, else one.

    Each member keeps the epoch with the lowest loss on its validation split (drawn from ``x`` only,
    stratified by outcome and arm, seeded).
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if len(x) != len(y) or (t is not None and len(t) != len(y)):
        raise ValueError("x, y and t must have the same number of rows")
    if len(np.unique(y)) < 2:
        raise ValueError(f"the training labels have a single class ({np.unique(y).tolist()}): cannot fit a response model")
    n_heads = 1 if t is None else 2
    strat = y.astype(int) * 2 + (0 if t is None else np.asarray(t, dtype=int))
    members, valid_losses = [], []
    for m in range(settings.seeds):
        member_seed = seed * 1000 + m
        torch.manual_seed(member_seed)
        tr, va = train_test_split(np.arange(len(y)), test_size=settings.valid_fraction,
                                  random_state=member_seed, stratify=strat)
        net = CampaignNet(x.shape[1], settings.hidden, n_heads, settings.dropout)
        net.set_preprocessing(x[tr], log_mask)
        xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
        xv, yv = torch.from_numpy(x[va]), torch.from_numpy(y[va])
        tt = None if t is None else torch.from_numpy(np.asarray(t, dtype=np.float32)[tr])
        tv = None if t is None else torch.from_numpy(np.asarray(t, dtype=np.float32)[va])
        opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        gen = torch.Generator().manual_seed(member_seed)
        best, best_state = float("inf"), None
        for _ in range(settings.epochs):
            net.train()
            perm = torch.randperm(len(yt), generator=gen)
            for i in range(0, len(perm), settings.batch_size):
                idx = perm[i:i + settings.batch_size]
                loss = _member_loss(net, xt[idx], yt[idx], None if tt is None else tt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                vloss = float(_member_loss(net, xv, yv, tv))
            if vloss < best:
                best, best_state = vloss, copy.deepcopy(net.state_dict())
        net.load_state_dict(best_state)
        net.eval()
        members.append(net)
        valid_losses.append(best)
    ens = CampaignEnsemble(members)
    ens.eval()
    return ens, {"valid_bce": float(np.mean(valid_losses))}


def lift_at(y_true: np.ndarray, score: np.ndarray, fraction: float = 0.1) -> float:
    """Response rate among the top ``fraction`` by score over the overall rate."""
    y_true = np.asarray(y_true, dtype=float)
    n = max(1, int(round(len(y_true) * fraction)))
    top = np.argsort(-np.asarray(score), kind="stable")[:n]
    base = y_true.mean()
    return float(y_true[top].mean() / base) if base > 0 else float("nan")


def save_campaign_model(folder: str | Path, ens: CampaignEnsemble, features: list[str], kind: str,
                        extra: dict[str, Any] | None = None) -> None:
    """Write ``model.pt`` + ``model.json`` into ``folder`` (see ``serving.campaign_scoring``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ens.state_dict(), folder / MODEL_FILE)
    meta = {**ensemble_meta(ens), "kind": kind, "features": list(features), "code_version": code_version(),
            **(extra or {})}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# Response model on a retail event log.

def response_training_table(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame,
                            pcfg: dict[str, Any], objective: Any, seed: int,
                            time_kind: str = "timestamp") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Profiles at ``cutoff = snapshot - within_days`` plus ``label`` = objective met in [cutoff, snapshot).

    ``snapshot`` is the profile snapshot (``pcfg['snapshot_date']`` or the day after the last event),
    so the label window is fully observed and the features never see it.
    """
    from features.profiles.build import build_profiles, snapshot_dates

    snapshot, _ = snapshot_dates(events, pcfg)
    cutoff = snapshot - pd.Timedelta(days=int(objective.within_days))
    if (events["ts"] < cutoff).sum() == 0:
        raise ValueError(f"campaign.objective.within_days={objective.within_days}: no events before the "
                         f"training cut-off {cutoff.date()}")
    past_cfg = copy.deepcopy(pcfg)
    past_cfg["snapshot_date"] = str(cutoff.date())
    past_cfg["flows_from"] = None
    tables = build_profiles(events[events["ts"] < cutoff], items, users, past_cfg, seed=seed, time_kind=time_kind)
    prof = tables.profiles.reset_index()
    window = events[(events["ts"] >= cutoff) & (events["ts"] < snapshot) & (events["event"] == objective.event)]
    if objective.category is not None:
        cat = items.set_index("item_id")["category"]
        window = window[window["item_id"].map(cat) == objective.category]
    responders = set(window["user_id"].unique().tolist())
    prof["label"] = prof["user_id"].isin(responders).astype(np.int8)
    info = {"cutoff": str(cutoff), "snapshot": str(snapshot), "n_users": int(len(prof)),
            "n_responders": int(prof["label"].sum())}
    return prof, info


def fit_response_model(table: pd.DataFrame, spec: Any, seed: int) -> tuple[CampaignEnsemble, dict[str, Any]]:
    """Fit the campaign's response network on ``table`` (features + ``label``), report held-out figures.

    20 % of users (stratified, seeded) are held out for AUC and lift@10 %; the returned ensemble is
    then refit on every user.
    """
    features = list(spec.features)
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise ValueError(f"campaign.model.features: profile column(s) {missing} do not exist "
                         f"(available: {sorted(c for c in table.columns if c != 'label')})")
    x = np.column_stack([pd.to_numeric(table[c], errors="coerce").astype("float64").to_numpy(na_value=np.nan)
                         for c in features]).astype(np.float32)
    y = table["label"].to_numpy().astype(np.float32)
    log_mask = [c in set(spec.log_features) for c in features]
    settings = NetSettings.from_spec(spec)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
    held, _ = train_campaign_net(x[tr], y[tr], None, settings, log_mask, seed=seed)
    with torch.no_grad():
        s = held.score(torch.from_numpy(x[te])).numpy()
    # A one-feature reference: the more recent the last purchase, the likelier the next one.
    rec = -np.nan_to_num(x[te, features.index("recency_days")], nan=1e9) if "recency_days" in features else None
    metrics = {
        "holdout_auc": float(roc_auc_score(y[te], s)),
        "holdout_lift@10": lift_at(y[te], s, 0.1),
        "holdout_recency_only_auc": float(roc_auc_score(y[te], rec)) if rec is not None else None,
        "holdout_n": int(len(te)),
        "base_rate": float(y.mean()),
    }
    final, fit_info = train_campaign_net(x, y, None, settings, log_mask, seed=seed)
    metrics.update(fit_info)
    return final, metrics


# ---------------------------------------------------------------------------------------------
# Uplift learners on a randomised experiment (Hillstrom) and the benchmark's baselines.
# Every learner: fit(x, y, t) -> self, predict(x) -> uplift scores (higher = more persuadable).

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


# ---------------------------------------------------------------------------------------------
# Complete Journey: coupon response (redeemed vs received) per (household, campaign).

_AGE = {"19-24": 0, "25-34": 1, "35-44": 2, "45-54": 3, "55-64": 4, "65+": 5}
_INCOME = {"Under 15K": 0, "15-24K": 1, "25-34K": 2, "35-49K": 3, "50-74K": 4, "75-99K": 5, "100-124K": 6,
           "125-149K": 7, "150-174K": 8, "175-199K": 9, "200-249K": 10, "250K+": 11}


def complete_journey_table(cj_dir: str | Path) -> pd.DataFrame:
    """One row per campaign a household received: features known at the campaign's start, label
    ``redeemed`` (any coupon of that campaign redeemed by that household).

    Features: campaign type, length and number of coupons; the household's earlier campaigns and
    redemptions (strictly before the start date); demographics (where known); its coupon use and
    spend in the transactions sample before the start date.
    """
    d = Path(cj_dir)
    need = ("campaigns", "campaign_descriptions", "coupons", "coupon_redemptions", "demographics", "transactions_sample")
    for name in need:
        if not (d / f"{name}.parquet").is_file():
            raise FileNotFoundError(f"Complete Journey table {d / (name + '.parquet')} not found")
    rd = lambda n: pd.read_parquet(d / f"{n}.parquet")  # noqa: E731
    camps, desc, coupons, red = rd("campaigns"), rd("campaign_descriptions"), rd("coupons"), rd("coupon_redemptions")
    demo, tx = rd("demographics"), rd("transactions_sample")
    desc = desc.assign(start=pd.to_datetime(desc["start_date"]), end=pd.to_datetime(desc["end_date"]))
    red = red.assign(date=pd.to_datetime(red["redemption_date"]))
    n_coupons = coupons.groupby("campaign_id")["coupon_upc"].nunique().rename("n_coupons")
    rows = camps.merge(desc[["campaign_id", "campaign_type", "start", "end"]], on="campaign_id", how="inner")
    rows = rows.merge(n_coupons, left_on="campaign_id", right_index=True, how="left")
    pairs = red[["household_id", "campaign_id"]].drop_duplicates().assign(redeemed=1)
    rows = rows.merge(pairs, on=["household_id", "campaign_id"], how="left")
    rows["redeemed"] = rows["redeemed"].fillna(0).astype(int)
    # History strictly before this campaign's start.
    hist = rows[["household_id", "campaign_id", "start"]].merge(
        rows[["household_id", "start"]].rename(columns={"start": "other_start"}), on="household_id")
    rows = rows.merge(hist[hist["other_start"] < hist["start"]].groupby(["household_id", "campaign_id"]).size()
                      .rename("prior_campaigns").reset_index(), on=["household_id", "campaign_id"], how="left")
    rh = rows[["household_id", "campaign_id", "start"]].merge(red[["household_id", "date"]], on="household_id")
    rows = rows.merge(rh[rh["date"] < rh["start"]].groupby(["household_id", "campaign_id"]).size()
                      .rename("prior_redemptions").reset_index(), on=["household_id", "campaign_id"], how="left")
    tx = tx.assign(ts=pd.to_datetime(tx["transaction_timestamp"]))
    th = rows[["household_id", "campaign_id", "start"]].merge(
        tx[["household_id", "ts", "sales_value", "coupon_disc", "basket_id"]], on="household_id")
    th = th[th["ts"] < th["start"]]
    agg = th.groupby(["household_id", "campaign_id"]).agg(
        tx_lines=("sales_value", "size"), tx_spend=("sales_value", "sum"),
        tx_coupon_lines=("coupon_disc", lambda s: int((s != 0).sum())), tx_baskets=("basket_id", "nunique")).reset_index()
    rows = rows.merge(agg, on=["household_id", "campaign_id"], how="left")
    demo = demo.assign(age_ord=demo["age"].map(_AGE), income_ord=demo["income"].map(_INCOME),
                       homeowner=(demo["home_ownership"] == "Homeowner").astype(float),
                       hh_size=pd.to_numeric(demo["household_size"].astype(str).str.extract(r"(\d)")[0], errors="coerce"),
                       kids=pd.to_numeric(demo["kids_count"].astype(str).str.extract(r"(\d)")[0], errors="coerce"),
                       has_demographics=1.0)
    rows = rows.merge(demo[["household_id", "age_ord", "income_ord", "homeowner", "hh_size", "kids", "has_demographics"]],
                      on="household_id", how="left")
    for col in ("prior_campaigns", "prior_redemptions", "tx_lines", "tx_spend", "tx_coupon_lines", "tx_baskets", "has_demographics"):
        rows[col] = rows[col].fillna(0.0).astype(float)
    rows["prior_redemption_rate"] = rows["prior_redemptions"] / rows["prior_campaigns"].clip(lower=1)
    rows["campaign_days"] = (rows["end"] - rows["start"]).dt.days.astype(float)
    for t in ("Type A", "Type B", "Type C"):
        rows[f"type_{t[-1]}"] = (rows["campaign_type"] == t).astype(float)
    rows["n_coupons"] = rows["n_coupons"].fillna(0).astype(float)
    return rows.sort_values(["start", "campaign_id", "household_id"]).reset_index(drop=True)


CJ_FEATURES = ["type_A", "type_B", "type_C", "campaign_days", "n_coupons", "prior_campaigns", "prior_redemptions",
               "prior_redemption_rate", "tx_lines", "tx_spend", "tx_coupon_lines", "tx_baskets", "has_demographics",
               "age_ord", "income_ord", "homeowner", "hh_size", "kids"]
CJ_LOG_FEATURES = ["n_coupons", "prior_campaigns", "prior_redemptions", "tx_lines", "tx_spend", "tx_coupon_lines", "tx_baskets"]


def complete_journey_benchmark(cj_dir: str | Path, test_fraction: float = 0.3, seed: int = 0) -> dict[str, Any]:
    """Train on the earliest-starting campaigns, test on the latest ``test_fraction`` of campaigns.

    Models: the project's response network (``CampaignNet``, one head), GBT, logistic regression, and a
    one-feature reference (prior redemptions). Returns AUC and lift@10 % on the test campaigns.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = complete_journey_table(cj_dir)
    order = rows.drop_duplicates("campaign_id").sort_values("start")["campaign_id"].tolist()
    n_test = max(1, int(round(len(order) * test_fraction)))
    test_ids = set(order[-n_test:])
    te = rows["campaign_id"].isin(test_ids).to_numpy()
    x = rows[CJ_FEATURES].to_numpy(dtype=np.float32)
    y = rows["redeemed"].to_numpy()
    filled = np.nan_to_num(x, nan=-1.0)
    scores = {}
    net, _ = train_campaign_net(x[~te], y[~te], None, NetSettings(hidden=32, epochs=40, batch_size=128, seeds=3),
                                [f in CJ_LOG_FEATURES for f in CJ_FEATURES], seed=seed)
    with torch.no_grad():
        scores["project response net"] = net.score(torch.from_numpy(x[te])).numpy()
    gbt = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_depth=3, random_state=seed).fit(x[~te], y[~te])
    scores["GBT"] = gbt.predict_proba(x[te])[:, 1]
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(filled[~te], y[~te])
    scores["logistic regression"] = lr.predict_proba(filled[te])[:, 1]
    scores["prior redemptions only"] = rows.loc[te, "prior_redemption_rate"].to_numpy() + 1e-3 * rows.loc[te, "prior_campaigns"].to_numpy()
    res = {name: {"auc": float(roc_auc_score(y[te], s)), "lift_at_10": lift_at(y[te], s, 0.1)} for name, s in scores.items()}
    lines = [f"Complete Journey coupon response: train {int((~te).sum())} (household, campaign) pairs of "
             f"{len(order) - n_test} campaigns, test {int(te.sum())} pairs of the {n_test} latest campaigns, "
             f"test redemption rate {y[te].mean():.3f}",
             f"{'model':26s} {'AUC':>6s} {'lift@10%':>9s}"]
    lines += [f"{n:26s} {r['auc']:6.3f} {r['lift_at_10']:9.2f}" for n, r in res.items()]
    return {"models": res, "n_train": int((~te).sum()), "n_test": int(te.sum()), "test_rate": float(y[te].mean()),
            "test_campaigns": sorted(test_ids, key=int), "auc": res["project response net"]["auc"],
            "lift_at_10": res["project response net"]["lift_at_10"], "table": "\n".join(lines)}
