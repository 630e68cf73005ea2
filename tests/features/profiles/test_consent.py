"""Consent input table: validation, pseudonymisation, defaults, synthetic draw, opt-out flags."""
from __future__ import annotations

import pandas as pd
import pytest

from features.privacy import pseudonymise_one
from features.profiles.consent import opt_out_flags, resolve

CHANNELS = ["email", "sms", "push"]
BASE = {"channels": CHANNELS, "path": None, "default_opted_in": False, "synthetic_opt_in": {"email": 0.7, "sms": 0.3, "push": 0.5}}


def test_input_with_raw_ids_is_pseudonymised(tmp_path):
    path = tmp_path / "consent.csv"
    pd.DataFrame({"customer_id": ["12346", "12347"], "channel": ["email", "sms"], "opted_in": ["yes", 1]}).to_csv(path, index=False)
    keys = pd.Series([pseudonymise_one("12346"), pseudonymise_one("12347"), pseudonymise_one("99999")])
    c = resolve(keys, {**BASE, "path": str(path)}, seed=0)
    assert c.source == "input" and c.input_sha256
    assert "12346" not in c.table.to_csv()
    flags = opt_out_flags(c, keys, CHANNELS)
    assert flags["opted_out_email"].tolist() == [False, True, True]      # unknown users: default (not opted in)
    assert flags["opted_out_sms"].tolist() == [True, False, True]
    assert flags["opted_out_push"].all()
    assert set(c.table["source"]) == {"input", "default"}


@pytest.mark.parametrize("frame,msg", [
    (pd.DataFrame({"user_key": ["a"], "channel": ["fax"], "opted_in": [True]}), "unknown channels"),
    (pd.DataFrame({"user_key": ["a"], "opted_in": [True]}), "lacks column"),
    (pd.DataFrame({"user_key": ["a"], "channel": ["sms"], "opted_in": ["maybe"]}), "opted_in"),
    (pd.DataFrame({"name": ["a"], "channel": ["sms"], "opted_in": [True]}), "user_key"),
])
def test_bad_input_is_named(tmp_path, frame, msg):
    path = tmp_path / "c.parquet"
    frame.to_parquet(path)
    with pytest.raises(ValueError, match=msg):
        resolve(pd.Series(["a"]), {**BASE, "path": str(path)}, 0)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="profile.consent.path"):
        resolve(pd.Series(["a"]), {**BASE, "path": str(tmp_path / "none.csv")}, 0)


def test_synthetic_is_seeded_and_follows_rates():
    keys = pd.Series([f"{i:016x}" for i in range(4000)])
    a = resolve(keys, BASE, seed=1)
    b = resolve(keys, BASE, seed=1)
    assert a.source == "synthetic" and a.table.equals(b.table)
    rates = a.table.groupby("channel")["opted_in"].mean()
    assert rates["email"] == pytest.approx(0.7, abs=0.03) and rates["sms"] == pytest.approx(0.3, abs=0.03)
    assert len(a.table) == 3 * 4000
