"""Console sign-in: an API key in, a signed session cookie out (the key itself is never stored).

``Sessions.login(key)`` checks the key with the service's ``Auth`` (an admin key gives the role
``admin``, any other accepted key ``analyst``) and returns a ``Session``: role, the key's sha256 digest
(the actor of audited actions), a CSRF token and an expiry. ``Sessions.encode`` signs it with
HMAC-SHA256 into the cookie value ``<base64 payload>.<base64 signature>``; ``Sessions.decode`` refuses a
bad signature, an expired session, and a key that is no longer accepted (keys removed from the
configuration end their sessions).

The signing secret comes from the environment variable named by ``serve.console.secret_env``; when it
is unset, a random one is created once in ``<artifacts>/secrets/console_session.key`` (mode 0600) and
shared by every replica on the machine. The cookie is ``HttpOnly``, ``SameSite=Strict`` and
``Secure`` (``serve.console.cookie_secure``; browsers accept secure cookies from ``http://localhost``).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serving.auth import Auth, AuthError, sha256_hex

log = logging.getLogger(__name__)

COOKIE = "shoprec_console"
SECRET_FILE = "console_session.key"


@dataclass(frozen=True)
class Session:
    role: str          # admin | analyst
    digest: str        # sha256 of the key (never the key)
    csrf: str
    expires: float

    @property
    def actor(self) -> str:
        """Who did it, for the audit log: the role and a prefix of the key's digest."""
        return f"console:{self.role}:{self.digest[:12]}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(secret_env: str, artifacts: str | Path, environ: dict[str, str] | None = None) -> bytes:
    """The signing secret: ``$<secret_env>``, else the shared file under ``<artifacts>/secrets/`` (created once)."""
    env = os.environ if environ is None else environ
    value = env.get(secret_env, "").strip()
    if value:
        return value.encode()
    path = Path(artifacts) / "secrets" / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # atomic and never overwrites one another replica wrote first
            log.warning("%s unset: console sessions are signed with a key kept in %s", secret_env, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


class Sessions:
    """Creates and checks console sessions over the service's ``Auth``."""

    def __init__(self, auth: Auth, secret: bytes, *, hours: float = 8.0):
        if len(secret) < 16:
            raise ValueError("serve.console: the session secret must be at least 16 characters")
        self.auth = auth
        self._key = hashlib.sha256(b"shoprec-console-session:" + secret).digest()
        self.seconds = float(hours) * 3600.0

    def login(self, key: str | None, now: float | None = None) -> Session:
        """A session for ``key``, or ``AuthError`` (401 no key, 403 unknown key, 429 rate limit)."""
        key = (key or "").strip()
        if not key:
            raise AuthError(401, "enter an API key")
        now = time.time() if now is None else now
        if not self.auth.enabled:  # a development service without keys: every visitor is admin
            return Session("admin", sha256_hex(key), secrets.token_urlsafe(24), now + self.seconds)
        # The role first, so that an analyst key is never checked (and audited as refused) on the admin list.
        is_admin = sha256_hex(key) in self.accepted(admin=True)
        digest = self.auth.check(key, admin=is_admin)
        return Session("admin" if is_admin else "analyst", digest, secrets.token_urlsafe(24), now + self.seconds)

    def accepted(self, *, admin: bool) -> frozenset[str]:
        """Digests of the accepted admin (or API) keys: configured ones and those of ``serve.auth.keys_file``."""
        refresh = getattr(self.auth, "refresh_keys", None)
        if refresh is not None:
            refresh()
        static = self.auth.admin_digests if admin else self.auth.key_digests
        return static | getattr(self.auth, "_file_admin" if admin else "_file_keys", frozenset())

    def encode(self, s: Session) -> str:
        payload = _b64(json.dumps(asdict(s), separators=(",", ":")).encode())
        return payload + "." + _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def decode(self, value: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie value, or None (absent, tampered, expired, key withdrawn)."""
        if not value or value.count(".") != 1:
            return None
        payload, sig = value.split(".")
        want = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(want, _unb64(sig)):
                return None
            data: dict[str, Any] = json.loads(_unb64(payload))
            s = Session(str(data["role"]), str(data["digest"]), str(data["csrf"]), float(data["expires"]))
        except (ValueError, KeyError, TypeError):
            return None
        if s.expires < (time.time() if now is None else now) or s.role not in ("admin", "analyst"):
            return None
        if self.auth.enabled:
            allowed = self.accepted(admin=True) if s.is_admin else self.accepted(admin=False) | self.accepted(admin=True)
            if s.digest not in allowed:
                return None
        return s
