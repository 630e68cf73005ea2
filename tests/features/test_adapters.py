"""Generic adapters on small files: seq_txt, pairs_txt, events_csv with a malformed line, Hillstrom."""
from __future__ import annotations

import pandas as pd
import pytest

from features.adapters import DataConfigError
from features.adapters.hillstrom import load_hillstrom, validate_hillstrom
from features.prepare import run
from features.processed import load_events, load_items, load_quarantine, load_users
from tests.features.conftest import make_cfg


def test_seq_txt_with_attributes(tmp_path):
    (tmp_path / "s.txt").write_text("1 10 11 12\n2 11 12\n3\n")
    (tmp_path / "a.json").write_text('{"10": [1, 5], "11": [1, 6], "12": [1, 6]}')
    cfg = make_cfg("data=seq_txt", f"data.path={tmp_path / 's.txt'}", f"data.attributes={tmp_path / 'a.json'}",
                   f"paths.artifacts={tmp_path}", "data.name=s")
    res = run(cfg)
    m = res.manifest
    assert (m["n_input_rows"], m["n_events"], m["n_quarantined"]) == (6, 5, 1)   # "3" alone is malformed
    assert m["time_kind"] == "order"
    ev = load_events(res.out_dir)
    assert list(ev.loc[ev["user_id"] == 0, "item_id"]) == [0, 1, 2]   # order kept
    items = load_items(res.out_dir).set_index("item_key")
    assert list(items.loc["10", "attributes"]) == [1, 5]
    assert items.loc["10", "category"] == "attr_5"   # attribute 1 is on every item: not a category
    q = load_quarantine(res.out_dir)
    assert q["reason"].tolist() == ["malformed_row"] and "line 3" in q["message"].iloc[0]
    assert "3" not in q["raw"].iloc[0].replace("pseudo:", "")[:1]  # the user id is pseudonymised


def test_pairs_txt(tmp_path):
    (tmp_path / "p.txt").write_text("7 100\n7 101\n8 100\n8\n")
    cfg = make_cfg("data=pairs_txt", f"data.path={tmp_path / 'p.txt'}", f"paths.artifacts={tmp_path}", "data.name=p")
    res = run(cfg)
    assert (res.manifest["n_events"], res.manifest["n_quarantined"]) == (3, 1)
    assert res.manifest["time_kind"] == "order"


def test_events_csv_truncated_last_line(tmp_path):
    (tmp_path / "e.csv").write_text("u,i,t,e\n1,a,2024-01-01T00:00:00,view\n2,b,2024-01-01T00:00:01,cart\n3,c,2024")
    cfg = make_cfg("data=events_csv", f"data.path={tmp_path / 'e.csv'}", f"paths.artifacts={tmp_path}", "data.name=e",
                   "data.columns.user=u", "data.columns.item=i", "data.columns.ts=t", "data.columns.event=e")
    res = run(cfg)
    q = load_quarantine(res.out_dir)
    assert q["reason"].tolist() == ["malformed_row"] and q["src_row"].tolist() == [2]
    assert "e.csv row 3" in q["message"].iloc[0]
    assert not q["raw"].iloc[0].startswith("3,")
    assert set(load_events(res.out_dir)["event"]) == {"view", "cart"}
    users = load_users(res.out_dir)
    assert not users["user_key"].isin(["1", "2"]).any()


def test_events_csv_missing_column_names_it(tmp_path):
    (tmp_path / "e.csv").write_text("u,i,t\n1,a,2024-01-01\n")
    cfg = make_cfg("data=events_csv", f"data.path={tmp_path / 'e.csv'}", f"paths.artifacts={tmp_path}",
                   "data.columns.user=u", "data.columns.item=i", "data.columns.ts=t", "data.columns.event=kind")
    with pytest.raises(DataConfigError, match=r"e\.csv: missing column 'kind' \(data.columns.event\)"):
        run(cfg)


def test_hillstrom_validation(tmp_path):
    header = "recency,history_segment,history,mens,womens,zip_code,newbie,channel,segment,visit,conversion,spend\n"
    good = '10,"2) $100 - $200",142.44,1,0,Surburban,0,Phone,Womens E-Mail,0,0,0\n'
    bad = '13,"2) $100 - $200",142.44,1,0,Surburban,0,Phone,Womens E-Mail,0,0,0\n'
    weird = '3,"1) $0 - $100",10,1,0,Mars,0,Phone,No E-Mail,1,0,0\n'
    (tmp_path / "h.csv").write_text(header + good + bad + weird)
    df = load_hillstrom(tmp_path / "h.csv")
    assert len(df) == 1 and df["treatment"].iloc[0] == "womens" and df["recency"].dtype == "int64"
    raw = pd.read_csv(tmp_path / "h.csv", dtype=str, keep_default_na=False)
    _, rejected = validate_hillstrom(raw)
    assert [m.split(":")[0] for m in rejected["message"]] == ["recency='13'", "zip_code='Mars'"]
    (tmp_path / "h2.csv").write_text("recency,history\n1,2\n")
    with pytest.raises(DataConfigError, match="missing column 'history_segment'"):
        load_hillstrom(tmp_path / "h2.csv")
