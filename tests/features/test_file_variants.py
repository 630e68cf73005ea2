"""Files as real systems write them, built from the Online Retail data in a temporary folder: a UTF-8
byte-order mark, a quoted header line, mixed UTC offsets, implausible years, a directory as the input,
malformed lines whose user id must not reach the quarantine in clear, and what must fail loudly."""
from __future__ import annotations

import csv
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.adapters import DataConfigError
from features.timestamps import parse_times
from features.prepare import run
from features.privacy import pseudonymise_one
from features.processed import load_events, load_quarantine, load_users
from tests.features.conftest import make_cfg

N_ROWS = 2000
COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


@pytest.fixture(scope="module")
def retail(data_root) -> pd.DataFrame:
    """The first rows of Online Retail with a customer, as text (ids without the float's ``.0``)."""
    df = pd.read_parquet(data_root / "online-retail" / "online_retail_2010_2011.parquet").head(N_ROWS * 2)
    df = df[df["CustomerID"].notna()].head(N_ROWS).reset_index(drop=True)
    df["CustomerID"] = df["CustomerID"].astype("int64").astype(str)
    df["InvoiceDate"] = df["InvoiceDate"].dt.strftime("%Y-%m-%d %H:%M:%S")
    return df[COLUMNS].astype(str)


def write_csv(path: Path, df: pd.DataFrame, *, bom: bool = False, quote_all: bool = False) -> Path:
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        df.to_csv(fh, index=False, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    return path


def prepare(path: Path, tmp_path: Path, *overrides: str):
    cfg = make_cfg(
        "data=events_csv", f"data.path={path}", f"paths.artifacts={tmp_path / 'art'}", "data.name=retail", "force=true",
        "data.columns.user=CustomerID", "data.columns.item=StockCode", "data.columns.ts=InvoiceDate",
        "+data.columns.quantity=Quantity", "+data.columns.price=UnitPrice", "+data.columns.order_id=InvoiceNo",
        "data.events.return_order_prefix=C", "data.time.timezone=Europe/London", *overrides,
    )
    res = run(cfg)
    m = res.manifest
    assert m["n_input_rows"] == m["n_events"] + m["n_quarantined"] + sum(m["n_dropped"].values())
    return res


@pytest.fixture(scope="module")
def baseline(retail, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    res = prepare(write_csv(tmp / "plain.csv", retail), tmp)
    assert res.manifest["n_events"] > N_ROWS * 0.9 and res.manifest["n_quarantined"] == 0
    return res


def test_byte_order_mark_and_quoted_header_are_read_like_the_plain_file(retail, baseline, tmp_path):
    for name, kw in (("bom.csv", {"bom": True}), ("quoted.csv", {"quote_all": True}),
                     ("both.csv", {"bom": True, "quote_all": True})):
        res = prepare(write_csv(tmp_path / name, retail, **kw), tmp_path)
        assert res.manifest["n_events"] == baseline.manifest["n_events"], name
        assert res.manifest["n_quarantined"] == 0, name
        pd.testing.assert_frame_equal(load_events(res.out_dir), load_events(baseline.out_dir))


def test_a_compressed_csv_is_read_like_the_plain_file(retail, baseline, tmp_path):
    path = tmp_path / "retail.csv.gz"
    retail.to_csv(path, index=False, compression="gzip")
    res = prepare(path, tmp_path)
    pd.testing.assert_frame_equal(load_events(res.out_dir), load_events(baseline.out_dir))


def test_byte_order_mark_in_a_sequence_file_is_not_part_of_the_first_user(tmp_path):
    (tmp_path / "s.txt").write_text("\ufeff1 10 11\n2 11\n", encoding="utf-8")
    cfg = make_cfg("data=seq_txt", f"data.path={tmp_path / 's.txt'}", f"paths.artifacts={tmp_path}", "data.name=s")
    users = load_users(run(cfg).out_dir)
    assert sorted(users["user_key"]) == sorted([pseudonymise_one("1"), pseudonymise_one("2")])


def test_mixed_utc_offsets_are_converted_to_utc(retail, baseline, tmp_path):
    df = retail.copy()
    local = pd.to_datetime(df["InvoiceDate"]).dt.tz_localize("Europe/London")
    utc = local.dt.tz_convert("UTC")
    # The same instants written three ways: +01:00 / -05:00 offsets, Z, and local time without offset.
    third = len(df) // 3
    df.loc[: third - 1, "InvoiceDate"] = utc[:third].dt.tz_convert("Europe/Paris").map(lambda t: t.isoformat())
    df.loc[third: 2 * third - 1, "InvoiceDate"] = utc[third: 2 * third].dt.tz_convert("America/New_York").map(
        lambda t: t.isoformat())
    df.loc[2 * third: 2 * third + 50, "InvoiceDate"] = utc[2 * third: 2 * third + 51].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    res = prepare(write_csv(tmp_path / "offsets.csv", df), tmp_path)
    assert res.manifest["n_quarantined"] == 0
    pd.testing.assert_frame_equal(load_events(res.out_dir), load_events(baseline.out_dir))


def test_implausible_years_are_quarantined_with_a_reason(retail, baseline, tmp_path):
    df = retail.copy()
    df.loc[3, "InvoiceDate"] = "1677-06-01 10:00:00"
    df.loc[7, "InvoiceDate"] = "2263-06-01 10:00:00"
    df.loc[11, "InvoiceDate"] = "9999-12-31 23:59:59"
    res = prepare(write_csv(tmp_path / "years.csv", df), tmp_path)
    q = load_quarantine(res.out_dir)
    assert q["reason"].tolist() == ["implausible_timestamp"] * 3
    assert q["src_row"].tolist() == [3, 7, 11]
    assert "years.csv row 4, column 'InvoiceDate'" in q["message"].iloc[0] and "1677" in q["message"].iloc[0]
    # bounds are configurable: with wider ones, 2263 is kept
    wide = prepare(tmp_path / "years.csv", tmp_path, "data.time.min=1600-01-01", "data.time.max=2300-01-01")
    assert load_quarantine(wide.out_dir)["reason"].tolist() == ["implausible_timestamp"]   # only 9999


def test_a_directory_as_input_is_a_clear_error(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(DataConfigError, match=r"folder\.csv is a directory, not a file"):
        prepare(tmp_path / "folder.csv", tmp_path)


def test_no_parseable_time_fails_naming_file_column_and_value(retail, tmp_path):
    df = retail.copy()
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"]).dt.strftime("%d/%m/%Y %H:%M")
    path = write_csv(tmp_path / "dayfirst.csv", df)
    with pytest.raises(DataConfigError, match=r"dayfirst\.csv, column 'InvoiceDate': no value parses as a time .*'01/12/2010 08:26'"):
        prepare(path, tmp_path)
    # with the right format it is accepted
    assert prepare(path, tmp_path, "data.time.format=%d/%m/%Y %H:%M").manifest["n_quarantined"] == 0


def test_wrong_encoding_fails_naming_file_line_and_value(retail, tmp_path):
    path = write_csv(tmp_path / "latin.csv", retail)
    data = path.read_bytes().replace(b"WHITE HANGING HEART", b"WHITE H\xc4NGING HEART", 1)
    path.write_bytes(data)
    title = "+data.columns.title=Description"
    with pytest.raises(DataConfigError, match=r"latin\.csv line 2, column 'Description': .*not valid utf8.*H\\xc4NGING"):
        prepare(path, tmp_path, title)
    assert prepare(path, tmp_path, title, "data.csv.encoding=latin-1").manifest["n_quarantined"] == 0


def _clear_ids_in(text: str, ids: set[str]) -> set[str]:
    return set(re.findall(r"[A-Za-z0-9]+", text)) & ids


def test_malformed_lines_never_hold_a_clear_user_id(retail, baseline, tmp_path):
    ids = set(retail["CustomerID"])
    lines = write_csv(tmp_path / "m.csv", retail).read_text().splitlines()
    row = dict(zip(COLUMNS, next(csv.reader([lines[1]]))))
    bad = [
        # a quoted comma before the user column and a missing last field
        f'{row["InvoiceNo"]},{row["StockCode"]},"Bag, jumbo",6,{row["InvoiceDate"]},2.55,{row["CustomerID"]}',
        # an extra field before the user column
        f'{row["InvoiceNo"]},{row["StockCode"]},"Bag, jumbo",6,extra,{row["InvoiceDate"]},2.55,{row["CustomerID"]},UK',
        # an unclosed quote that swallows the rest of the line
        f'{row["InvoiceNo"]},{row["StockCode"]},"Bag, jumbo,6,{row["InvoiceDate"]},2.55,12583,United Kingdom',
        # another separator: one field
        f'{row["InvoiceNo"]};{row["StockCode"]};Bag;6;{row["InvoiceDate"]};2.55;17850;UK',
        # a user id seen nowhere else, two fields missing before it
        f'{row["InvoiceNo"]},Bag,6,{row["InvoiceDate"]},99999,UK',
    ]
    for i, b in enumerate(bad):
        lines.insert(10 + 5 * i, b)
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    res = prepare(path, tmp_path)
    q = load_quarantine(res.out_dir)
    assert q["reason"].tolist() == ["malformed_row"] * len(bad)
    assert q["src_row"].tolist() == [9, 14, 19, 24, 29]               # the lines as inserted (0-based data rows)
    # no valid row is lost, not even the ones after the stray quote
    assert res.manifest["n_events"] == baseline.manifest["n_events"]
    for text in q["raw"].tolist() + q["message"].tolist():
        assert not _clear_ids_in(text, ids | {"12583", "17850", "99999"}), text
    assert "Bag, jumbo" in q["raw"].iloc[0]            # the rest of the line stays readable
    # nowhere else either: users, events, manifest
    users = load_users(res.out_dir)
    assert not users["user_key"].isin(list(ids)).any()
    manifest_text = (res.out_dir / "manifest.json").read_text()
    assert not _clear_ids_in(manifest_text, ids - {"2010", "2011"})


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2099, 12, 31)),
       st.integers(-14 * 4, 14 * 4), st.sampled_from(["T", " "]), st.booleans())
def test_any_offset_gives_the_same_utc_instant(local, quarter_hours, sep, seconds):
    """A time written with any UTC offset (or Z) parses to its UTC instant, next to local times without one."""
    tz = timezone(timedelta(minutes=15 * quarter_hours))
    aware = local.replace(tzinfo=tz, microsecond=0)
    if not seconds:
        aware = aware.replace(second=0)
    text = aware.isoformat(sep=sep, timespec="seconds" if seconds else "minutes")
    if quarter_hours == 0 and seconds:
        text = text.replace("+00:00", "Z")
    naive = "2024-07-15 10:00:00"   # a local time of the configured zone (BST: UTC+1)
    got = parse_times(pd.Series([text, naive]), None, "Europe/London")
    assert got.iloc[0] == pd.Timestamp(aware).tz_convert("UTC"), text
    assert got.iloc[1] == pd.Timestamp("2024-07-15 09:00", tz="UTC")


def _small(tmp_path: Path, text: str):
    (tmp_path / "s.csv").write_text(text)
    return make_cfg("data=events_csv", f"data.path={tmp_path / 's.csv'}", f"paths.artifacts={tmp_path}", "data.name=s",
                    "force=true", "data.columns.user=u", "data.columns.item=i", "data.columns.ts=t", "data.columns.event=e")


def test_a_stray_quote_closed_lines_later_is_an_error_not_lost_rows(tmp_path):
    text = ('u,i,t,e\n1,"a,2024-01-01T00:00:00,view\n2,b,2024-01-01T00:00:01,cart\n'
            '3,"x",2024-01-01T00:00:03,view\n5,c,2024-01-01T00:00:04,view\n')
    with pytest.raises(DataConfigError, match=r"s\.csv, parsed row 1, column 'i': a quote opened here closes only 2 lines"):
        run(_small(tmp_path, text))


def test_a_genuine_multi_line_value_is_kept(tmp_path):
    text = 'u,i,t,e\n1,"line one\nline two",2024-01-01T00:00:00,view\n5,c,2024-01-01T00:00:04,view\n'
    m = run(_small(tmp_path, text)).manifest
    assert (m["n_input_rows"], m["n_events"], m["n_quarantined"]) == (2, 2, 0)


def test_a_stray_quote_running_to_the_end_loses_no_valid_line(tmp_path):
    text = ('u,i,t,e\n1,a,2024-01-01T00:00:00,view\ndeadbeef,"SKU\n2,b,2024-01-01T00:00:01,cart\n'
            '3,c,2024-01-01T00:00:02,view\n')
    res = run(_small(tmp_path, text))
    m = res.manifest
    assert (m["n_input_rows"], m["n_events"], m["n_quarantined"]) == (4, 3, 1)
    q = load_quarantine(res.out_dir)
    assert q["src_row"].tolist() == [1] and "deadbeef" not in q["raw"].iloc[0]


def test_numbers_as_times_without_a_unit_fail_naming_file_column_and_value(retail, tmp_path):
    df = retail.copy()
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"]).astype("datetime64[s]").astype("int64")
    df[["Quantity", "UnitPrice"]] = df[["Quantity", "UnitPrice"]].astype(float)
    df.to_parquet(tmp_path / "epoch.parquet")
    with pytest.raises(DataConfigError, match=r"epoch\.parquet, column 'InvoiceDate' .*int64.*'1291191960'"):
        prepare(tmp_path / "epoch.parquet", tmp_path, "data.format=parquet")
    res = prepare(tmp_path / "epoch.parquet", tmp_path, "data.format=parquet", "data.time.unit=s")
    assert res.manifest["n_quarantined"] == 0   # unix times are UTC whatever data.time.timezone says
    ts = load_events(res.out_dir)["ts"]
    assert ts.min() == pd.Timestamp("2010-12-01 08:26", tz="UTC")
