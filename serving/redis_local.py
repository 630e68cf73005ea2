"""A local ``redis-server`` for tests, demos and benchmarks (never for production).

``LocalRedis(folder, port)`` runs the distribution's ``redis-server`` on loopback with its data in
``folder`` and the durability the Redis store relies on: ``appendonly yes`` + ``appendfsync always``
(every write command is in the fsynced append-only file before Redis answers it). ``start()`` waits
until it answers PING; ``stop()`` ends it by its pid (SIGTERM, then SIGKILL); ``kill()`` is a crash
(SIGKILL, nothing flushed on the way out). A restart on the same folder replays the append-only file.

Command line (``scripts/redis_local.sh`` wraps it)::

    python -m serving.redis_local start [--dir artifacts/redis] [--port 6390]   # prints the URL
    python -m serving.redis_local stop  [--dir artifacts/redis]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REDIS_SERVER = os.environ.get("SHOPREC_REDIS_SERVER", "redis-server")
PID_FILE = "redis.pid"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    """One ``redis-server`` process on ``127.0.0.1:port`` with AOF + ``appendfsync always`` in ``folder``."""

    def __init__(self, folder: str | Path, port: int | None = None):
        self.folder = Path(folder).resolve()
        self.port = int(port) if port else free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        exe = shutil.which(REDIS_SERVER)
        if exe is None:
            raise FileNotFoundError(f"{REDIS_SERVER} not found: install the distribution's redis-server "
                                    f"(scripts/_system_deps.sh) or set SHOPREC_REDIS_SERVER")
        return [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--daemonize", "no", "--protected-mode", "yes", "--logfile", str(self.folder / "redis.log")]

    def start(self, timeout_s: float = 20.0) -> "LocalRedis":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        (self.folder / PID_FILE).write_text(f"{self.proc.pid} {self.port}\n")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} (see {self.folder / 'redis.log'})")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server on port {self.port} did not answer within {timeout_s:.0f} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown save. Acknowledged writes are in the fsynced AOF already."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        (self.folder / PID_FILE).unlink(missing_ok=True)

    def restart(self, timeout_s: float = 20.0) -> "LocalRedis":
        """Start again on the same port and folder (the AOF is replayed)."""
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> "LocalRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop_from_pid_file(folder: Path) -> int:
    pid_file = folder / PID_FILE
    if not pid_file.exists():
        print(f"no {pid_file}: nothing to stop", file=sys.stderr)
        return 1
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    print(f"stopped redis-server {pid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.redis_local", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--dir", default="artifacts/redis", help="data folder (AOF, log, pid file)")
    p.add_argument("--port", type=int, default=6390)
    a = p.parse_args(argv)
    folder = Path(a.dir)
    if a.action == "stop":
        return _stop_from_pid_file(folder)
    r = LocalRedis(folder, a.port)
    r.start()
    r.proc = None  # keep it running after this command exits (stop with `stop --dir`)
    print(r.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
