"""Fault injection on the event log: writer processes killed at random points (also in the middle of a
``write``, several writers at once), then a restart. Every event acknowledged (its ``append`` returned)
must be in the log exactly once, nothing may be glued onto a torn line, and every torn tail must be
moved aside (counted) rather than read as an event."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.store import LOG_COLUMNS, DurableLog, EventStore

pytestmark = pytest.mark.timeout(300)

# A writer: appends batches and records the ids of each acknowledged batch in an ack file (after
# ``append`` returned). With a cut fraction, its write number ``die_at`` writes only that fraction
# of its bytes and the process kills itself: what a crash in the middle of a write leaves.
WRITER = r"""
import os, random, signal, sys, time
import serving.store as store_mod
from serving.store import EventStore, OnlineEvent

log, acks, seed, die_at, cut, pause = (sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]),
                                      float(sys.argv[6]))
rng = random.Random(seed)
store = EventStore(log, fsync=True)
ack_fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
real_write = os.write

def dying_write(fd, data):
    n = int(len(data) * cut)
    if n:
        real_write(fd, bytes(data[:n]))
    os.kill(os.getpid(), signal.SIGKILL)

print("ready", flush=True)
i = 0
while True:
    if i == die_at:
        store_mod.os.write = dying_write
    items = ['SKU' + str(rng.randrange(10**6)), 'Bag, "jumbo"', 'ünï ✓']
    batch = [OnlineEvent(f"{seed:04d}{rng.randrange(16**12):012x}", rng.choice(items), "view", time.time())
             for _ in range(rng.randint(1, 40))]
    stamped = store.append(batch)
    real_write(ack_fd, ("".join(e.event_id + "\n" for e in stamped)).encode())
    i += 1
    time.sleep(pause)
"""


def spawn(log, acks, seed, die_at=-1, cut=0.0, pause=0.002):
    args = [str(log), str(acks), str(seed), str(die_at), str(cut), str(pause)]
    p = subprocess.Popen([sys.executable, "-c", WRITER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "ready", p.communicate()[1][-2000:]
    return p


def acknowledged(acks) -> list[str]:
    """Ids from complete ack lines (a writer killed while writing its ack file leaves a partial one)."""
    if not acks.exists():
        return []
    return [x for x in acks.read_text().split("\n")[:-1] if len(x) == 32]


def logged_ids(log) -> tuple[list[str], int]:
    """Event ids of the log's complete lines (a reader's view) and the number of malformed lines."""
    lines, _ = DurableLog(log).read_lines()
    ids, bad = [], 0
    for line in lines:
        if line == ",".join(LOG_COLUMNS):
            continue
        row = next(csv.reader([line]))
        if len(row) != len(LOG_COLUMNS) or len(row[5]) != 32:
            bad += 1
            continue
        ids.append(row[5])
    return ids, bad


def check_exactly_once(log, acks):
    restarted = EventStore(log)  # the restart: repairs a torn tail, replays the log
    ids, bad = logged_ids(log)
    acked = acknowledged(acks)
    assert bad == 0 and restarted.n_bad_lines == 0, "a torn line was read as (or glued onto) an event"
    assert len(ids) == len(set(ids)), "an event is in the log twice"
    missing = set(acked) - set(ids)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged events lost"
    assert restarted.n_events == len(ids)
    assert log.read_bytes().endswith(b"\n")
    return restarted, ids, acked


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(crashes=st.lists(st.tuples(st.integers(0, 3), st.floats(0.0, 0.999)), min_size=1, max_size=4))
def test_writer_killed_in_the_middle_of_a_write(tmp_path_factory, crashes):
    tmp = tmp_path_factory.mktemp("crash")
    log, acks = tmp / "events.csv", tmp / "acks.txt"
    torn = 0
    for seed, (ok_batches, cut) in enumerate(crashes):
        p = spawn(log, acks, seed, die_at=ok_batches, cut=cut)
        assert p.wait(timeout=60) == -signal.SIGKILL
        torn += not log.read_bytes().endswith(b"\n")
    restarted, ids, acked = check_exactly_once(log, acks)
    repaired = [json.loads(x) for x in (tmp / "events.csv.torn").read_text().splitlines()] if torn else []
    assert len(repaired) == torn  # each torn tail moved aside once (by the next writer or the restart)
    # a writer that appends after a torn tail is not glued onto it: its events are all there
    p = spawn(log, acks, 99)
    time.sleep(0.3)
    p.kill()
    p.wait()
    check_exactly_once(log, acks)


def test_writers_killed_at_random_times_with_restarts(tmp_path):
    """Three writers at once on one log, each killed (SIGKILL) at a random moment, restarted, 6 rounds."""
    log, acks = tmp_path / "events.csv", tmp_path / "acks.txt"
    rng = random.Random(20)
    seed = 0
    for _ in range(6):
        procs = []
        for _ in range(3):
            procs.append(spawn(log, acks, seed, pause=0.01))
            seed += 1
        time.sleep(rng.uniform(0.05, 0.6))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            time.sleep(rng.uniform(0, 0.05))
        for p in procs:
            p.wait(timeout=30)
        check_exactly_once(log, acks)
    restarted, ids, acked = check_exactly_once(log, acks)
    assert len(acked) > 50  # the writers did get work acknowledged
