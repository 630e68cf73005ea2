"""Pseudonym safety: no usable key in the source, the key's fingerprint recorded and checked, dense user ids
that do not follow the raw ids, and malformed lines masked field by field (property-based)."""
from __future__ import annotations

import csv
import io
import os
import re
import stat

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features import privacy
from features.prepare import run
from features.privacy import KeyMismatchError, check_key_fingerprint, key_fingerprint, pseudo_key, pseudonymise_one
from features.processed import load_manifest, load_table, load_users
from features.quarantine import mask_line
from tests.features.conftest import make_cfg

OLD_SOURCE_DEFAULT = b"shoprec-development-key-do-not-use-in-production"


def test_without_the_env_key_a_local_secret_is_generated_and_kept(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(privacy.KEY_ENV, raising=False)
    monkeypatch.setenv("SHOPREC_ARTIFACTS", str(tmp_path / "a"))
    key, source = pseudo_key()
    path = tmp_path / "a" / "secrets" / "pseudonymisation.key"
    assert source == f"local:{path}" and path.exists()
    assert key != OLD_SOURCE_DEFAULT and len(key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pseudo_key()[0] == key                                   # the same key on every call
    assert str(path) in caplog.text and privacy.KEY_ENV in caplog.text  # and it says so
    monkeypatch.setenv("SHOPREC_ARTIFACTS", str(tmp_path / "b"))
    assert pseudo_key()[0] != key                                   # random: another checkout, another key


def test_the_env_key_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(privacy.KEY_ENV, "k1")
    monkeypatch.setenv("SHOPREC_ARTIFACTS", str(tmp_path))
    assert pseudo_key() == (b"k1", "env")
    assert not (tmp_path / "secrets").exists()


def test_fingerprint_check_names_both_fingerprints(caplog):
    a, b = key_fingerprint(b"key-a"), key_fingerprint(b"key-b")
    assert a != b and re.fullmatch(r"[0-9a-f]{16}", a) and b"key-a".hex() not in a
    check_key_fingerprint(a, "x", key=b"key-a")
    with pytest.raises(KeyMismatchError, match=f"{a}.*{b}"):
        check_key_fingerprint(a, "prepared dataset x", key=b"key-b")
    check_key_fingerprint(None, "an old bundle", key=b"key-b")        # nothing recorded: a warning
    assert "an old bundle records no pseudonymisation key fingerprint" in caplog.text


def _events_csv(tmp_path, n_users: int = 60):
    rng = np.random.default_rng(0)
    raw_ids = rng.permutation(np.arange(1000, 1000 + n_users))
    rows = [f"{u},i{j % 7},2024-01-{1 + j % 28:02d}T10:00:00,view" for j, u in enumerate(np.repeat(raw_ids, 2))]
    path = tmp_path / "e.csv"
    path.write_text("u,i,t,e\n" + "\n".join(rows) + "\n")
    return make_cfg("data=events_csv", f"data.path={path}", f"paths.artifacts={tmp_path}", "data.name=e",
                    "data.columns.user=u", "data.columns.item=i", "data.columns.ts=t", "data.columns.event=e",
                    "force=true")


def test_manifest_records_the_key_and_readers_refuse_another(tmp_path, monkeypatch):
    monkeypatch.setenv(privacy.KEY_ENV, "key-used-to-prepare")
    res = run(_events_csv(tmp_path))
    m = load_manifest(res.out_dir)
    assert m["pseudo_key_fingerprint"] == key_fingerprint(b"key-used-to-prepare")
    assert m["pseudonymisation_key"] == "env"
    load_users(res.out_dir)                                          # same key: fine
    monkeypatch.setenv(privacy.KEY_ENV, "another-key")
    want, got = key_fingerprint(b"key-used-to-prepare"), key_fingerprint(b"another-key")
    with pytest.raises(KeyMismatchError, match=f"{want}.*{got}"):
        load_users(res.out_dir)


def test_tables_are_checked_too(tmp_path, monkeypatch, data_root):
    monkeypatch.setenv(privacy.KEY_ENV, "key-used-to-prepare")
    cfg = make_cfg("data=hillstrom", f"paths.artifacts={tmp_path}", f"paths.data_root={data_root}", "force=true")
    res = run(cfg)
    assert res.manifest["pseudo_key_fingerprint"] == key_fingerprint(b"key-used-to-prepare")
    monkeypatch.setenv(privacy.KEY_ENV, "another-key")
    with pytest.raises(KeyMismatchError):
        load_table(res.out_dir, "hillstrom")


def test_dense_user_ids_follow_the_pseudonyms_not_the_raw_ids(tmp_path):
    res = run(_events_csv(tmp_path))
    users = load_users(res.out_dir).sort_values("user_id")
    assert users["user_key"].is_monotonic_increasing                  # ordered by pseudonym
    by_key = {pseudonymise_one(str(r)): r for r in range(1000, 1060)}
    raw_in_id_order = [by_key[k] for k in users["user_key"]]
    assert raw_in_id_order != sorted(raw_in_id_order)                 # ranks do not reveal raw ids
    assert abs(pd.Series(raw_in_id_order).corr(pd.Series(range(60)), method="spearman")) < 0.5


# ---------------------------------------------------------------- malformed lines, property-based
HEADER = ["invoice", "item", "description", "quantity", "ts", "price", "customer", "country"]
USER_POS = HEADER.index("customer")
ids = st.integers(30000, 99999).map(str).filter(lambda u: u != "85123")  # not a prefix-clash with 2010, 85123A
words = st.text(st.sampled_from("abcXYZ ,\"';-"), min_size=0, max_size=12)


@st.composite
def malformed_line(draw):
    """A row whose customer id is ``uid``, broken the ways files break: cut short, fields missing or extra
    anywhere (one kind per line), a stray quote, another separator."""
    uid = draw(ids)
    fields = [draw(st.sampled_from(["536365", "C536379"])), "85123A", draw(words), "6", "2010-12-01 08:26:00",
              "2.55", uid, draw(st.sampled_from(["UK", "France", ""]))]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    line = buf.getvalue()
    kind = draw(st.sampled_from(["cut", "drop", "insert", "quote", "sep"]))
    if kind == "cut":
        line = line[: draw(st.integers(1, len(line) - 1))]
    elif kind in ("drop", "insert"):
        parts = list(next(csv.reader([line])))
        for _ in range(draw(st.integers(1, 3))):
            if kind == "drop":
                others = [k for k, v in enumerate(parts) if v != uid]
                parts.pop(draw(st.sampled_from(others)))
            else:
                parts.insert(draw(st.integers(0, len(parts))), draw(words))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(parts)
        line = buf.getvalue()
    elif kind == "quote":
        cut = draw(st.integers(0, USER_POS))
        parts = line.split(",")
        line = ",".join(parts[:cut] + ['"' + parts[cut]] + parts[cut + 1:])
    else:
        line = line.replace(",", draw(st.sampled_from([";", "\t", "|"])))
    return uid, line


@settings(max_examples=400, deadline=None)
@given(malformed_line(), st.booleans())
def test_no_clear_user_id_survives_masking(case, seen_elsewhere):
    """Wherever a realistic break moves the id, it is masked (whether or not the file's valid rows have it)."""
    uid, line = case
    known = {"17850", "13047"} | ({uid} if seen_elsewhere else set())
    masked = mask_line(line, ",", USER_POS, len(HEADER), known)
    clear = re.sub(r"pseudo:[0-9a-f]+", "pseudo:", masked)   # a pseudonym's hex digits are not the id
    for n in re.findall(r"\d+", clear):
        assert not (len(n) >= 3 and uid.startswith(n)), (line, masked)   # not even a cut-off prefix of it


@given(st.integers(0, 10**12))
def test_float_and_text_ids_share_a_pseudonym(n):
    assert pseudonymise_one(float(n), b"k") == pseudonymise_one(str(n), b"k") == pseudonymise_one(f" {n} ", b"k")


def test_the_source_has_no_usable_key():
    text = open(privacy.__file__, encoding="utf8").read()
    assert OLD_SOURCE_DEFAULT.decode() not in text and "_DEV_KEY" not in text
    assert os.environ.get(privacy.KEY_ENV)  # the tests run with an explicit key (tests/conftest.py)
