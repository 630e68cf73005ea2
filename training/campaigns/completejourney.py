"""Complete Journey: coupon response (redeemed vs received) per (household, campaign).

``complete_journey_table`` builds one row per campaign a household received, with features known at
the campaign's start; ``complete_journey_benchmark`` trains on the earliest campaigns and tests on the
latest (printed by ``scripts/bench_uplift.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from serving.campaigns.spec import NetSettings
from training.campaigns.response import lift_at, train_campaign_net

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
