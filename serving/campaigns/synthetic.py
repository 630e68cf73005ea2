"""Made-up profile rows for benchmarks and tests of the audience pipeline.

The columns and value ranges of ``features.profile``'s output (lifecycle, named segment, country and
time zone, consent per channel, RFM figures), drawn at random; nothing here is real data.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

LIFECYCLES = np.array(["new", "active", "at_risk", "dormant", "churned"])
NAMED = np.array(["high_value", "price_sensitive", "potential", "rational_researcher", "casual_browser", "regular"])
COUNTRIES = np.array(["United Kingdom", "Germany", "France", "EIRE", "Spain", "Netherlands"])
COUNTRY_ZONES = {"United Kingdom": "Europe/London", "Germany": "Europe/Berlin", "France": "Europe/Paris",
                 "EIRE": "Europe/Dublin", "Spain": "Europe/Madrid", "Netherlands": "Europe/Amsterdam"}


def synthetic_profiles(n: int, seed: int = 0, snapshot: str = "2011-12-10") -> pd.DataFrame:
    """``n`` made-up profile rows with categorical string columns (for speed and memory)."""
    rng = np.random.default_rng(seed)

    def cat(values: np.ndarray, p=None) -> pd.Categorical:
        return pd.Categorical.from_codes(rng.choice(len(values), n, p=p).astype(np.int16), categories=values)

    frequency = rng.geometric(0.3, n).astype(np.int64)
    monetary = np.round(rng.lognormal(5.5, 1.2, n), 2)
    ps = rng.beta(2, 3, n)
    ps[rng.random(n) < 0.05] = np.nan
    hour = rng.integers(0, 24, n).astype(np.float64)
    pref = pd.Categorical.from_codes(rng.choice(4, n, p=[0.4, 0.1, 0.2, 0.3]).astype(np.int16) - 1,
                                     categories=["email", "sms", "push"])   # -1 = null
    country = cat(COUNTRIES, [0.8, 0.05, 0.05, 0.04, 0.03, 0.03])
    zone = pd.Categorical.from_codes(country.codes, categories=[COUNTRY_ZONES[c] for c in COUNTRIES])
    return pd.DataFrame({
        "user_id": np.arange(n, dtype=np.int64),
        "user_key": pd.Categorical(np.char.add("u", np.arange(n).astype(str))) if n <= 2_000_000
        else pd.Series(np.arange(n)).map("{:016x}".format).astype("category"),
        "snapshot_date": pd.Timestamp(snapshot, tz="UTC"),
        "recency_days": rng.exponential(120, n),
        "frequency": frequency,
        "monetary": monetary,
        "price_sensitivity": ps,
        "clv": monetary * rng.uniform(0.1, 1.0, n),
        "churn_prob": rng.uniform(0, 1, n),
        "n_purchase_lines": frequency * rng.integers(1, 20, n),
        "n_categories": rng.integers(1, 10, n),
        "lifecycle": cat(LIFECYCLES, [0.1, 0.3, 0.25, 0.2, 0.15]),
        "named_segment": cat(NAMED),
        "segment": rng.integers(0, 6, n).astype(np.int64),
        "active_hour": hour,
        "preferred_channel": pref,
        "country": country,
        "timezone": zone,
        "opted_out_email": rng.random(n) < 0.3,
        "opted_out_sms": rng.random(n) < 0.65,
        "opted_out_push": rng.random(n) < 0.5,
    })
