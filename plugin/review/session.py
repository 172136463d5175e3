"""Server-side sessions of the review page: a signed cookie names a session kept in memory.

The cookie holds a random session id and its HMAC-SHA256 under a secret kept in the data
folder (``review-secret``, made on first use, mode 0600), so a forged or altered cookie is
refused before any lookup. The session itself (the user name, the CSRF token) stays on the
server: logging out or an idle time-out ends it for good, and a restart ends them all.

The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Path=/review`` (and ``Secure`` when the
service is reached over https). Every POST form carries the session's CSRF token, compared in
constant time; the login form too (its session has no user yet). A login starts a new session
(no fixation).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = ["COOKIE_NAME", "IDLE_TIMEOUT_S", "ReviewSession", "SessionManager", "load_secret"]

logger = logging.getLogger(__name__)

#: The session cookie's name.
COOKIE_NAME = "crosscheck_review"

#: A session unused this long (seconds) is over.
IDLE_TIMEOUT_S = 30 * 60

_SECRET_FILE = "review-secret"
_SECRET_BYTES = 32
_MAX_SESSIONS = 10_000


def load_secret(data_dir: Path) -> bytes:
    """The cookie-signing secret of ``data_dir``, made (random, 32 bytes, mode 0600) on first use."""
    path = Path(data_dir) / _SECRET_FILE
    try:
        secret = bytes.fromhex(path.read_text("ascii").strip())
        if len(secret) >= _SECRET_BYTES:
            return secret
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(_SECRET_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secret.hex())
    return secret


@dataclass(frozen=True)
class ReviewSession:
    """One browser's session: ``user_name`` once logged in (None before), its CSRF token."""

    id: str
    csrf_token: str
    user_name: str | None = None
    last_seen: float = field(default_factory=time.monotonic)

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf_token.encode())


class SessionManager:
    """Sessions in memory, cookies signed with ``secret``; safe to share between threads."""

    def __init__(self, secret: bytes, *, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self._secret = secret
        self._idle = idle_timeout_s
        self._sessions: dict[str, ReviewSession] = {}
        self._lock = threading.Lock()

    def new(self, user_name: str | None = None) -> ReviewSession:
        """A fresh session (its own id and CSRF token)."""
        session = ReviewSession(
            id=secrets.token_urlsafe(32), csrf_token=secrets.token_urlsafe(32), user_name=user_name
        )
        with self._lock:
            self._expire()
            self._sessions[session.id] = session
        return session

    def cookie_value(self, session: ReviewSession) -> str:
        return f"{session.id}.{self._sign(session.id)}"

    def from_cookie(self, value: str | None) -> ReviewSession | None:
        """The live session the cookie names, its idle clock restarted; None for none, a bad
        signature, or one that is over."""
        if not value or "." not in value:
            return None
        session_id, signature = value.rsplit(".", 1)
        if not hmac.compare_digest(signature.encode(), self._sign(session_id).encode()):
            logger.debug("review session cookie with a bad signature refused")
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_seen > self._idle:
                del self._sessions[session_id]
                return None
            session = replace(session, last_seen=now)
            self._sessions[session_id] = session
            return session

    def end(self, session: ReviewSession) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)

    def _sign(self, session_id: str) -> str:
        return hmac.new(self._secret, session_id.encode(), hashlib.sha256).hexdigest()

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._sessions.items() if now - s.last_seen > self._idle]:
            del self._sessions[key]
        while len(self._sessions) >= _MAX_SESSIONS:  # the oldest go first
            del self._sessions[min(self._sessions, key=lambda k: self._sessions[k].last_seen)]
