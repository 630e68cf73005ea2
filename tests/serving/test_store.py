"""serving.store: durable append-only log, replay on restart, several readers, partial lines, torn tails
repaired at open and before appends (nothing acknowledged lost), failed writes rolled back."""
from __future__ import annotations

import csv
import json
import os
import time

import pytest

from serving.store import LOG_COLUMNS, DurableLog, EventStore, OnlineEvent


def ev(user="u1", item="SKU000001", event="view", ts=None):
    return OnlineEvent(user, item, event, time.time() if ts is None else ts)


def test_append_is_visible_and_durable(tmp_path):
    log = tmp_path / "serve" / "events.csv"
    s = EventStore(log)
    s.append([ev(item="A"), ev(item="B", event="purchase")])
    assert [e.item_key for e in s.events_of("u1")] == ["A", "B"]
    rows = list(csv.DictReader(log.open()))
    assert tuple(rows[0]) == LOG_COLUMNS and [r["item_key"] for r in rows] == ["A", "B"]
    assert rows[1]["event"] == "purchase" and len(rows[1]["event_id"]) == 32
    restarted = EventStore(log)  # a restart replays the whole log
    assert [e.item_key for e in restarted.events_of("u1")] == ["A", "B"]
    assert restarted.n_events == 2


def test_other_replica_sees_events_and_partial_line_is_skipped(tmp_path):
    log = tmp_path / "events.csv"
    a, b = EventStore(log), EventStore(log)
    a.append([ev(user="x", item="A")])
    assert [e.item_key for e in b.events_of("x")] == ["A"]
    with log.open("a") as f:  # a writer crashed in the middle of a line
        f.write("x,B,view,2026-01-01T00:00:00+00:00")
    assert [e.item_key for e in b.events_of("x")] == ["A"]
    with log.open("a") as f:
        f.write(",2026-01-01T00:00:00+00:00,abc\nnot,a,valid,line\n")
    assert [e.item_key for e in b.events_of("x")] == ["A", "B"]
    assert b.n_bad_lines == 1


def test_trending_counts_only_the_window(tmp_path):
    s = EventStore(tmp_path / "e.csv", trending_window_s=60)
    s.append([ev(item="A"), ev(item="A"), ev(item="B")])
    assert s.trending() == {"A": 2, "B": 1}
    assert s.trending(now=time.time() + 120) == {}


def test_per_user_history_is_bounded(tmp_path):
    s = EventStore(tmp_path / "e.csv", max_per_user=3, fsync=False)
    s.append([ev(item=str(i)) for i in range(5)])
    assert [e.item_key for e in s.events_of("u1")] == ["2", "3", "4"]


# --- the durable log: torn tails, failed writes, refused lines ------------------------------------
TORN = 'deadbeefdeadbeef,"SKU'  # what a writer killed in the middle of a line leaves (an open quote)


def test_events_acknowledged_after_a_torn_tail_survive_a_restart(tmp_path):
    log = tmp_path / "events.csv"
    EventStore(log).append([ev(item="before")])
    with log.open("a") as f:  # a writer died mid-line
        f.write(TORN)
    s = EventStore(log)  # the repair at open
    assert s.log.torn_repairs == 1 and s.log.torn_bytes == len(TORN)
    acked = s.append([ev(item=f"after{i}") for i in range(5)])
    restarted = EventStore(log)
    assert [e.item_key for e in restarted.events_of("u1")] == ["before"] + [f"after{i}" for i in range(5)]
    assert sorted(e.event_id for e in restarted.events_of("u1")[1:]) == sorted(e.event_id for e in acked)
    assert restarted.n_bad_lines == 0 and restarted.log.torn_repairs == 0
    record = json.loads((tmp_path / "events.csv.torn").read_text())
    assert record["text"] == TORN and record["n_bytes"] == len(TORN)


def test_a_replica_that_was_running_repairs_a_torn_tail_before_appending(tmp_path):
    log = tmp_path / "events.csv"
    running = EventStore(log)
    running.append([ev(item="A")])
    with log.open("a") as f:  # another replica was killed mid-write
        f.write(TORN)
    running.append([ev(item=f"B{i}") for i in range(5)])
    assert [e.item_key for e in EventStore(log).events_of("u1")] == ["A"] + [f"B{i}" for i in range(5)]
    assert running.log.torn_repairs == 1


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    log = tmp_path / "events.csv"
    s = EventStore(log)
    s.append([ev(item="A")])
    size = log.stat().st_size

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        s.append([ev(item="B")])
    monkeypatch.undo()
    assert log.stat().st_size == size
    assert [e.item_key for e in EventStore(log).events_of("u1")] == ["A"]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "\ud800", "x\x00y", "\x1b[31m"])
def test_keys_that_would_break_a_line_are_refused_before_writing(tmp_path, bad):
    log = tmp_path / "events.csv"
    s = EventStore(log)
    size = log.stat().st_size
    with pytest.raises(ValueError, match="item_key"):
        s.append([ev(item="ok"), ev(item=bad)])
    assert log.stat().st_size == size


def test_keys_with_commas_and_quotes_round_trip(tmp_path):
    log = tmp_path / "events.csv"
    EventStore(log).append([ev(item='Bag, "jumbo"'), ev(item="ünïcødé ✓")])
    assert [e.item_key for e in EventStore(log).events_of("u1")] == ['Bag, "jumbo"', "ünïcødé ✓"]


def test_one_malformed_line_does_not_swallow_the_next(tmp_path):
    log = tmp_path / "events.csv"
    s = EventStore(log)
    with log.open("a") as f:  # an open quote on a complete line (e.g. written by hand)
        f.write('u1,"A,view,2026-01-01T00:00:00+00:00,2026-01-01T00:00:00+00:00,x\n')
    s.append([ev(item="B")])
    assert [e.item_key for e in EventStore(log).events_of("u1")] == ["B"]
    assert EventStore(log).n_bad_lines == 1


def test_durable_log_is_reusable(tmp_path):
    path = tmp_path / "exposures.jsonl"
    d = DurableLog(path)
    d.append(['{"a": 1}', '{"b": 2}'])
    with path.open("a") as f:
        f.write('{"c": ')
    lines, offset = d.read_lines()
    assert lines == ['{"a": 1}', '{"b": 2}'] and offset == len('{"a": 1}\n{"b": 2}\n')
    d2 = DurableLog(path, header="ignored: the file is not empty")
    assert d2.torn_repairs == 1 and path.read_text() == '{"a": 1}\n{"b": 2}\n'
    with pytest.raises(ValueError):
        d2.append(["two\nlines"])
    assert DurableLog(tmp_path / "h.csv", header="x,y").read_lines() == (["x,y"], 4)
