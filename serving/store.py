"""The online sequence store and its durable, append-only event log.

Every accepted event is appended as one CSV line to ``serve.store.event_log`` (under an exclusive
``flock``, flushed and fsync'ed before the API answers 202), with the columns

    user_key,item_key,event,ts,received_at,event_id

``user_key`` is the pseudonymised user id (never the raw one) and ``item_key`` the original item key,
so the log survives bundle swaps and the data layer can ingest it: ``python -m features.prepare
data=serve_events [data.path=<log>]`` (``conf/data/serve_events.yaml``: the table adapter with
``data.user_key_pseudonymised=true``, so the keys are not hashed a second time).

The in-memory store is rebuilt from the log: on start it replays the whole file, and before every
read it "catches up" by reading lines appended since its last offset (one ``os.stat`` when nothing
changed). So every ingress replica on the machine, and a restarted one, sees every accepted event;
the replica that accepted an event sees it at once. Only complete lines (ending in a newline) are
read, so a crash in the middle of a write never yields a half event.
"""
from __future__ import annotations

import collections
import csv
import datetime as dt
import fcntl
import io
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOG_COLUMNS = ("user_key", "item_key", "event", "ts", "received_at", "event_id")
PURCHASE_EVENTS = frozenset({"purchase"})


@dataclass(frozen=True)
class OnlineEvent:
    """One accepted event (user already pseudonymised)."""

    user_key: str
    item_key: str
    event: str
    ts: float              # epoch seconds, UTC
    received_at: float = 0.0
    event_id: str = ""


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="microseconds")


def _parse_ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


class EventStore:
    """Per-user recent events (bounded) and recent item counts, backed by the durable log."""

    def __init__(self, log_path: str | Path, *, max_per_user: int = 200, fsync: bool = True,
                 trending_window_s: float = 3600.0):
        self.path = Path(log_path)
        self.max_per_user = int(max_per_user)
        self.fsync = bool(fsync)
        self.trending_window_s = float(trending_window_s)
        self._users: dict[str, collections.deque[OnlineEvent]] = {}
        self._recent_items: collections.deque[tuple[float, str]] = collections.deque()
        self._item_counts: collections.Counter[str] = collections.Counter()
        self._offset = 0
        self._size_seen = -1
        self._lock = threading.Lock()
        self.n_events = 0
        self.n_bad_lines = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self.catch_up()

    # writing ------------------------------------------------------------------------------------
    def append(self, events: list[OnlineEvent]) -> list[OnlineEvent]:
        """Durably append events (fills ``received_at`` and ``event_id``), then apply them here."""
        now = time.time()
        stamped = [OnlineEvent(e.user_key, e.item_key, e.event, e.ts, now, uuid.uuid4().hex) for e in events]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for e in stamped:
            w.writerow([e.user_key, e.item_key, e.event, _iso(e.ts), _iso(e.received_at), e.event_id])
        data = buf.getvalue().encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size == 0:
                    os.write(fd, (",".join(LOG_COLUMNS) + "\n").encode())
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        self.catch_up()
        return stamped

    # reading ------------------------------------------------------------------------------------
    def catch_up(self) -> int:
        """Apply lines appended to the log since the last call; returns how many events were applied."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        if size == self._size_seen:
            return 0
        with self._lock:
            if size < self._offset:  # the log was truncated or replaced: start over
                log.warning("%s shrank (%d < %d bytes): replaying it", self.path, size, self._offset)
                self._reset()
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(size - self._offset)
            end = chunk.rfind(b"\n")
            if end < 0:
                self._size_seen = size if not chunk else -1
                return 0
            complete = chunk[: end + 1]
            self._offset += len(complete)
            self._size_seen = size if end + 1 == len(chunk) else -1
            applied = 0
            for row in csv.reader(io.StringIO(complete.decode("utf-8", errors="replace"))):
                if not row or row[0] == LOG_COLUMNS[0]:
                    continue
                try:
                    e = OnlineEvent(row[0], row[1], row[2], _parse_ts(row[3]), _parse_ts(row[4]), row[5])
                except (IndexError, ValueError):
                    self.n_bad_lines += 1
                    continue
                self._apply(e)
                applied += 1
            self.n_events += applied
            return applied

    def _reset(self) -> None:
        self._users.clear()
        self._recent_items.clear()
        self._item_counts.clear()
        self._offset = 0
        self._size_seen = -1
        self.n_events = 0

    def _apply(self, e: OnlineEvent) -> None:
        q = self._users.get(e.user_key)
        if q is None:
            q = self._users[e.user_key] = collections.deque(maxlen=self.max_per_user)
        q.append(e)
        self._recent_items.append((e.received_at, e.item_key))
        self._item_counts[e.item_key] += 1

    def events_of(self, user_key: str) -> list[OnlineEvent]:
        """The user's online events, oldest first (after catching up with the log)."""
        self.catch_up()
        q = self._users.get(user_key)
        return list(q) if q else []

    def trending(self, now: float | None = None) -> dict[str, int]:
        """Item key -> number of events received in the last ``trending_window_s`` seconds."""
        self.catch_up()
        cutoff = (time.time() if now is None else now) - self.trending_window_s
        with self._lock:
            while self._recent_items and self._recent_items[0][0] < cutoff:
                _, key = self._recent_items.popleft()
                self._item_counts[key] -= 1
                if self._item_counts[key] <= 0:
                    del self._item_counts[key]
            return dict(self._item_counts)

    @property
    def n_users(self) -> int:
        return len(self._users)
