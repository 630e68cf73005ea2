"""Campaign response (propensity) and uplift networks: training tables and fitting.

- ``train_campaign_net``: a seed ensemble of ``models.uplift.CampaignNet`` (two heads = uplift on
  treatment and control rows, one head = response), each member early-stopped on a stratified
  validation split of the training rows only.
- ``response_training_table``: features of every user at an earlier snapshot (the profile builder of
  ``features.profiles`` run at ``snapshot - objective.within_days``) and the label "did the objective
  happen in the following ``within_days``", so the model predicts from the same columns it is later
  applied to.
- ``fit_response_model``: the two together, with the held-out AUC and lift@10 % in its metrics.

The settings are the campaign spec's ``model`` section (``serving.campaigns.spec.ModelSpec`` /
``NetSettings``: one definition of the defaults); the folder layout is written by
``serving.campaigns.scoring.save_campaign_model``.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from models.uplift import CampaignEnsemble, CampaignNet
from serving.campaigns.spec import CampaignConfigError, ModelSpec, NetSettings, Objective


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


# ---------------------------------------------------------------------------------------------
# Response model on a retail event log.

def response_training_table(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame,
                            pcfg: dict[str, Any], objective: Objective, seed: int,
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


def fit_response_model(table: pd.DataFrame, spec: ModelSpec, seed: int) -> tuple[CampaignEnsemble, dict[str, Any]]:
    """Fit the campaign's response network on ``table`` (features + ``label``), report held-out figures.

    20 % of users (stratified, seeded) are held out for AUC and lift@10 %; the returned ensemble is
    then refit on every user.
    """
    features = list(spec.features)
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise CampaignConfigError("model.features", f"profile column(s) {missing} do not exist "
                                  f"(available: {sorted(c for c in table.columns if c != 'label')})")
    x = np.column_stack([pd.to_numeric(table[c], errors="coerce").astype("float64").to_numpy(na_value=np.nan)
                         for c in features]).astype(np.float32)
    y = table["label"].to_numpy().astype(np.float32)
    log_mask = [c in set(spec.log_features) for c in features]
    settings = spec.net()
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
