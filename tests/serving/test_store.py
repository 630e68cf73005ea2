"""serving.store: durable append-only log, replay on restart, several readers, partial lines."""
from __future__ import annotations

import csv
import time

from serving.store import LOG_COLUMNS, EventStore, OnlineEvent


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
