"""The online sequence store and the durable, append-only log it is built on.

``DurableLog(path)`` is a line-oriented, append-only file shared by processes (every ingress replica,
and other logs of the service such as the experiments' exposure log, use it):

- ``append(lines)`` writes whole lines under an exclusive ``flock`` and fsyncs before returning, so
  a caller that answers "accepted" only after ``append`` returned never acknowledges anything a crash
  can lose. A write that fails (disk full, fsync error) is truncated away again before the error is
  raised: nothing half-written stays behind a live process.
- A *torn tail* (bytes after the last newline, left by a writer killed in the middle of a write) is
  repaired under the lock, when the log is opened and before every append: the torn bytes are moved
  to ``<path>.torn`` (one JSON line per repair: time, offset, bytes) and the log is truncated to its
  last newline. The torn bytes were never acknowledged (their ``append`` never returned), so a torn
  tail costs nothing acknowledged, and nothing appended later is glued onto it. Repairs are counted
  (``torn_repairs``, ``torn_bytes``), logged as a warning and exported in ``/metrics``.
- ``read_lines(offset)`` returns the complete lines from ``offset`` on and the offset after them; a
  line still being written is never returned.

A batch is written with one ``write``; if a writer dies during it, the lines of that batch that are
complete stay in the log (each line is one record: a reader never sees half a record), the rest goes
to ``<path>.torn``. Since the batch was not acknowledged, its client retries it.

``EventStore`` keeps every accepted event in ``serve.store.event_log`` as one CSV line:

    user_key,item_key,event,ts,received_at,event_id

``user_key`` is the pseudonymised user id (never the raw one) and ``item_key`` the original item key,
so the log survives bundle swaps and the data layer can ingest it: ``python -m features.prepare
data=serve_events [data.path=<log>]`` (``conf/data/serve_events.yaml``: the table adapter with
``data.user_key_pseudonymised=true``, so the keys are not hashed a second time). Keys with control
characters or unpaired surrogates are refused (``ValueError``), so every event is one physical line.

Two kinds of online store share the ``OnlineStore`` interface (``serving.stores.open_store(serve.store)`` picks
one by ``serve.store.kind``): ``file`` (``EventStore`` below, the default: one host) and ``redis``
(``serving.redis_store.RedisEventStore``: a Redis stream and per-user sequences, across hosts). A
store that cannot take an event raises ``StoreUnavailable`` (the API answers 503, never 202).

The in-memory store is rebuilt from the log: on start it replays the whole file, and before every
read it "catches up" by reading lines appended since its last offset (one ``os.stat`` when nothing
changed). So every ingress replica on the machine, and a restarted one, sees every accepted event;
the replica that accepted an event sees it at once. Each line is parsed on its own: a malformed line
is counted (``n_bad_lines``) and skipped, and never swallows the lines after it.
"""
from __future__ import annotations

import collections
import csv
import datetime as dt
import fcntl
import io
import json
import logging
import os
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

log = logging.getLogger(__name__)

LOG_COLUMNS = ("user_key", "item_key", "event", "ts", "received_at", "event_id")
PURCHASE_EVENTS = frozenset({"purchase"})
_TAIL_CHUNK = 1 << 16


class DurableLog:
    """An append-only file of text lines: durable appends, torn tails repaired (see the module docstring).

    ``header`` (one line, without newline) is written first when the file is empty. ``fsync=False``
    skips the fsync (benchmarks and tests only: an acknowledged line could then be lost by a power cut).
    """

    def __init__(self, path: str | Path, *, header: str | None = None, fsync: bool = True):
        self.path = Path(path)
        self.quarantine_path = self.path.with_name(self.path.name + ".torn")
        self.header = header
        self.fsync = bool(fsync)
        self.torn_repairs = 0
        self.torn_bytes = 0
        if header is not None:
            _check_line(header)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._repair(fd)
                if os.fstat(fd).st_size == 0 and header is not None:
                    _write_all(fd, (header + "\n").encode())
                    if self.fsync:
                        os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        if created and self.fsync:
            _fsync_dir(self.path.parent)

    def append(self, lines: Iterable[str]) -> None:
        """Append ``lines`` (each without its newline) and fsync; durable once this returns.

        A line with a newline, carriage return or an unpaired surrogate is refused (``ValueError``)
        before anything is written.
        """
        data = b"".join(_check_line(line).encode("utf-8") + b"\n" for line in lines)
        if not data:
            return
        fd = self._open_locked()
        try:
            try:
                self._repair(fd)
                start = os.fstat(fd).st_size
                try:
                    if start == 0 and self.header is not None:
                        data = (self.header + "\n").encode() + data
                    _write_all(fd, data)
                    if self.fsync:
                        os.fsync(fd)
                except BaseException:
                    _truncate_quietly(fd, start)
                    raise
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def read_lines(self, offset: int = 0, size: int | None = None) -> tuple[list[str], int]:
        """The complete lines between ``offset`` and ``size`` (default: the current size) and the
        offset after the last of them. Bytes that are not UTF-8 are replaced (U+FFFD)."""
        with open(self.path, "rb") as f:
            if size is None:
                size = os.fstat(f.fileno()).st_size
            if size <= offset:
                return [], offset
            f.seek(offset)
            chunk = f.read(size - offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return [], offset
        text = chunk[:end].decode("utf-8", errors="replace")
        return text.split("\n"), offset + end + 1

    def _open_locked(self) -> int:
        """The log's file descriptor under the exclusive lock; reopened when ``remove_lines`` replaced the file
        while this process waited for the lock (an append never goes to the replaced file)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def remove_lines(self, drop: Callable[[str], bool]) -> list[str]:
        """Rewrite the log without the lines for which ``drop(line)`` holds (the right to be forgotten,
        ``serving.forget``); returns the removed lines. The header stays. Under the exclusive lock the kept
        lines go to a temporary file (fsynced) that replaces the log: a crash leaves the old log or the new
        one, never a mix. Appenders that waited for the lock reopen the new file (``_open_locked``) and readers
        notice the new inode and replay it (``EventStore.catch_up``)."""
        fd = self._open_locked()
        try:
            try:
                self._repair(fd)
                raw = os.pread(fd, os.fstat(fd).st_size, 0)
                keep: list[bytes] = []
                gone: list[str] = []
                for i, line in enumerate(raw.split(b"\n")[:-1]):
                    text = line.decode("utf-8", errors="replace")
                    if (i == 0 and self.header is not None and text == self.header) or not drop(text):
                        keep.append(line + b"\n")
                    else:
                        gone.append(text)
                if gone:
                    tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.rewrite")
                    with open(tmp, "wb") as out:
                        out.write(b"".join(keep))
                        out.flush()
                        os.fsync(out.fileno())
                    os.chmod(tmp, 0o640)
                    os.replace(tmp, self.path)
                    _fsync_dir(self.path.parent)
                return gone
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def stat(self) -> tuple[int, int | None]:
        """(size, inode) of the log; (0, None) when it does not exist."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return 0, None
        return st.st_size, st.st_ino

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    # -------------------------------------------------------------------------------------------
    def _repair(self, fd: int) -> None:
        """Under the lock: move bytes after the last newline to the quarantine file, truncate."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        with open(self.path, "rb") as f:
            keep = 0
            pos = size
            while pos > 0:
                start = max(0, pos - _TAIL_CHUNK)
                f.seek(start)
                i = f.read(pos - start).rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                    break
                pos = start
            f.seek(keep)
            torn = f.read(size - keep)
        record = {"repaired_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "log": self.path.name, "offset": keep, "n_bytes": len(torn),
                  "text": torn.decode("utf-8", errors="backslashreplace")}
        with open(self.quarantine_path, "a", encoding="utf-8") as q:
            q.write(json.dumps(record, ensure_ascii=True) + "\n")
            q.flush()
            os.fsync(q.fileno())
        os.ftruncate(fd, keep)
        os.fsync(fd)
        self.torn_repairs += 1
        self.torn_bytes += len(torn)
        log.warning("%s: torn tail of %d bytes at offset %d (a writer died mid-write; never acknowledged) "
                    "moved to %s", self.path, len(torn), keep, self.quarantine_path)


def _check_line(line: str) -> str:
    if "\n" in line or "\r" in line:
        raise ValueError(f"a log line may not contain a newline: {line[:80]!r}")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"a log line must be valid Unicode (unpaired surrogate at {e.start}): {line[:80]!r}") from None
    return line


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _truncate_quietly(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as e:  # the repair at the next open/append moves what is left aside
        log.error("could not truncate a failed append back to %d bytes: %s", size, e)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def key_problem(value: str) -> str | None:
    """Why ``value`` cannot be a key (a control character or an unpaired surrogate), or None."""
    for i, ch in enumerate(value):
        cat = unicodedata.category(ch)
        if cat == "Cs":
            return f"unpaired surrogate U+{ord(ch):04X} at position {i}"
        if cat == "Cc":
            return f"control character U+{ord(ch):04X} at position {i}"
    return None


def check_key(value: str, field: str) -> str:
    """``value`` if it can be one field of a log line, else ``ValueError`` naming ``field``."""
    problem = key_problem(value)
    if problem:
        raise ValueError(f"{field}: {problem}")
    return value


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


def _csv_line(fields: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()[:-1]


def stamp(events: list[OnlineEvent], now: float | None = None) -> list[OnlineEvent]:
    """The events with ``received_at`` (now) and a new ``event_id`` each."""
    now = time.time() if now is None else now
    return [OnlineEvent(e.user_key, e.item_key, e.event, e.ts, now, uuid.uuid4().hex) for e in events]


def event_fields(e: OnlineEvent) -> list[str]:
    """The ``LOG_COLUMNS`` of one event as text; ``ValueError`` naming the field for a key with a
    control character or an unpaired surrogate, or a timestamp that has no ISO 8601 form."""
    check_key(e.user_key, "user_key")
    check_key(e.item_key, "item_key")
    check_key(e.event, "event")
    try:
        ts = _iso(e.ts)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"ts: {e.ts!r} is not a representable time") from None
    return [e.user_key, e.item_key, e.event, ts, _iso(e.received_at), e.event_id]


def event_line(e: OnlineEvent) -> str:
    """One event as one CSV line of the event log (``LOG_COLUMNS``)."""
    return _csv_line(event_fields(e))


def fields_line(fields: list[str]) -> str:
    """``LOG_COLUMNS`` values (text, already checked) as one CSV line of the event log."""
    return _csv_line(fields)


def parse_event_line(line: str) -> OnlineEvent:
    """The event of one CSV line of the event log; ``ValueError`` for a malformed one."""
    try:
        row = next(csv.reader([line]))
        if len(row) != len(LOG_COLUMNS):
            raise ValueError(f"{len(row)} fields, expected {len(LOG_COLUMNS)}")
        return OnlineEvent(row[0], row[1], row[2], _parse_ts(row[3]), _parse_ts(row[4]), row[5])
    except (csv.Error, StopIteration, OverflowError) as e:
        raise ValueError(str(e)) from None


class StoreUnavailable(RuntimeError):
    """The online store cannot take (or read) events now: the API answers 503, never 202."""


@runtime_checkable
class OnlineStore(Protocol):
    """What the service needs of an online store (``EventStore``, ``serving.redis_store.RedisEventStore``)."""

    def append(self, events: list[OnlineEvent]) -> list[OnlineEvent]:
        """Store the events durably (stamped); ``StoreUnavailable`` when they could not be stored."""

    def events_of(self, user_key: str) -> list[OnlineEvent]:
        """The user's recent online events, oldest first."""

    def trending(self, now: float | None = None) -> dict[str, int]:
        """Item key -> events received in the trending window."""

    def forget_user(self, user_key: str) -> int:
        """Delete every stored event of ``user_key`` (the right to be forgotten); the number deleted."""

    @property
    def unavailable(self) -> bool:
        """True while reads are answered from a replica's cache (the store is out of reach)."""


class EventStore:
    """Per-user recent events (bounded) and recent item counts, backed by a ``DurableLog``."""

    def __init__(self, log_path: str | Path, *, max_per_user: int = 200, fsync: bool = True,
                 trending_window_s: float = 3600.0):
        self.log = DurableLog(log_path, header=",".join(LOG_COLUMNS), fsync=fsync)
        self.path = self.log.path
        self.max_per_user = int(max_per_user)
        self.fsync = bool(fsync)
        self.trending_window_s = float(trending_window_s)
        self._users: dict[str, collections.deque[OnlineEvent]] = {}
        self._recent_items: collections.deque[tuple[float, str]] = collections.deque()
        self._item_counts: collections.Counter[str] = collections.Counter()
        self._offset = 0
        self._size_seen = -1
        self._inode: int | None = None
        self._lock = threading.Lock()
        self.n_events = 0
        self.n_bad_lines = 0
        self.catch_up()

    # writing ------------------------------------------------------------------------------------
    def append(self, events: list[OnlineEvent]) -> list[OnlineEvent]:
        """Durably append events (fills ``received_at`` and ``event_id``), then apply them here.

        ``ValueError`` (nothing written) for a key with a control character or an unpaired
        surrogate, or a timestamp that has no ISO 8601 form."""
        stamped = stamp(events)
        lines = [event_line(e) for e in stamped]
        self.log.append(lines)
        self.catch_up()
        return stamped

    # reading ------------------------------------------------------------------------------------
    def catch_up(self) -> int:
        """Apply lines appended to the log since the last call; returns how many events were applied."""
        size, inode = self.log.stat()
        if size == self._size_seen and inode == self._inode:
            return 0
        with self._lock:
            if inode != self._inode:  # a new file (remove_lines rewrote it): start over
                self._reset()
                self._inode = inode
            if size < self._offset:  # the log was truncated or replaced: start over
                log.warning("%s shrank (%d < %d bytes): replaying it", self.path, size, self._offset)
                self._reset()
            try:
                lines, new_offset = self.log.read_lines(self._offset, size)
            except FileNotFoundError:
                return 0
            self._offset = new_offset
            self._size_seen = size if new_offset == size else -1
            applied = 0
            for line in lines:
                if not line or line.startswith(LOG_COLUMNS[0] + ","):
                    continue
                try:
                    e = parse_event_line(line)
                except ValueError:
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

    def forget_user(self, user_key: str) -> int:
        """Remove every event of ``user_key`` from the log (``DurableLog.remove_lines``) and from memory;
        returns how many were removed. Other replicas replay the rewritten log at their next read."""
        def drop(line: str) -> bool:
            if user_key not in line:
                return False
            try:
                return parse_event_line(line).user_key == user_key
            except ValueError:
                return True  # a malformed line naming the user goes too
        gone = self.log.remove_lines(drop)
        self.catch_up()
        return len(gone)

    @property
    def n_users(self) -> int:
        return len(self._users)

    @property
    def unavailable(self) -> bool:
        return False  # a local file: an append that fails raises its OSError
