"""Password guessing refused: review-page logins counted per user name and per client address, and
lock-outs that grow.

The rules (a :class:`ThrottlePolicy`; the service takes it from its settings):

- Every login attempt let through is counted against its user name and its client address
  *before* the password is checked, in one transaction, so attempts sent in parallel cannot slip
  past the limit; a successful one is then taken back (:meth:`LoginThrottle.succeeded`): the user
  name's count and lock-outs are cleared, the address's count goes down by one. What stays counted
  are the failures. Successes never count against an address: a ward behind one NAT address logs
  in all day.
- Counts run in a fixed window (``window``, 15 minutes) from the first attempt counted. An attempt
  that finds ``max_failures`` (5) failures in the window for its user name, or
  ``max_failures_per_address`` (20) from its address, is refused and starts a lock-out: the first
  lasts ``lockout`` (5 minutes), each next one twice the one before, up to ``max_lockout`` (an
  hour). While it lasts, every attempt for that name, or from that address, is refused without the
  password being looked at (a right password does not get in) and without being counted.
- A name or address with no attempt counted for ``forget_after`` (a day) starts afresh, its
  lock-outs forgotten; :meth:`LoginThrottle.prune` deletes such rows (an attempt runs it now and
  then).
- Names are counted whether or not such a user exists, so a refusal says nothing about that.

Neither the user name nor the address is stored: a row holds HMAC-SHA256 of it under a key derived
from the review page's secret (`plugin.review.session.load_secret`), so a copy of the table does
not say who was tried, nor holds a password typed into the name field. Service processes sharing
the database share the throttle when they share that secret (the same data folder, or the file
copied). User names are compared as :class:`~plugin.store.users.Users` does (trimmed, lower case);
an IPv6 address counts with its /64 network (one host usually holds a whole /64), an IPv4-mapped
one as its IPv4 address.

Atomic across threads and processes: one write transaction per attempt (``BEGIN IMMEDIATE`` on
SQLite; rows locked ``FOR UPDATE`` on PostgreSQL, the address's always before the name's, so two
attempts never wait on each other in a circle)::

    throttle = LoginThrottle(store, secret)
    lock = throttle.attempt(user_name, request.client.host)
    if lock is not None:
        ...  # 429, Retry-After: lock.retry_after_s
    elif (user := users.verify_password(user_name, password)) is not None:
        throttle.succeeded(user_name, request.client.host)
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from plugin.store.models import LoginThrottleRow
from plugin.store.store import Store

__all__ = ["LoginLock", "LoginThrottle", "ThrottleKey", "ThrottleKind", "ThrottlePolicy"]

logger = logging.getLogger(__name__)

_KEY_CONTEXT = b"imaging-crosscheck review login throttle"
_MIN_SECRET_BYTES = 16


class ThrottleKind(StrEnum):
    """What attempts are counted against: a ``user`` name, or a client ``address``."""

    USER = "user"
    ADDRESS = "address"


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many failures a user name and an address may have in ``window`` before a lock-out, how
    long the first lock-out lasts (``lockout``; each next one twice the one before, at most
    ``max_lockout``), and after how long without an attempt a name or address starts afresh."""

    max_failures: int = 5
    max_failures_per_address: int = 20
    window: timedelta = timedelta(minutes=15)
    lockout: timedelta = timedelta(minutes=5)
    max_lockout: timedelta = timedelta(hours=1)
    forget_after: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.max_failures_per_address < 1:
            raise ValueError("a login throttle needs limits of at least 1 failure")
        if self.window <= timedelta(0) or self.lockout <= timedelta(0):
            raise ValueError("a login throttle needs a window and a lock-out longer than 0 s")
        if self.max_lockout < self.lockout:
            raise ValueError("the longest lock-out (max_lockout) cannot be shorter than the first (lockout)")
        if self.forget_after < max(self.window, self.max_lockout):
            raise ValueError("forget_after must be at least the window and the longest lock-out")

    def limit(self, kind: ThrottleKind | str) -> int:
        """The failures a ``kind`` of key may have in the window."""
        return self.max_failures if ThrottleKind(kind) is ThrottleKind.USER else self.max_failures_per_address

    def lockout_for(self, count: int) -> timedelta:
        """How long the ``count``-th lock-out (1 for the first) lasts."""
        if count < 1:
            raise ValueError(f"lock-outs are counted from 1, not {count}")
        seconds = self.lockout.total_seconds() * 2.0 ** min(count - 1, 64)
        return min(timedelta(seconds=min(seconds, self.max_lockout.total_seconds())), self.max_lockout)


@dataclass(frozen=True)
class ThrottleKey:
    """A user name or an address as the throttle stores it: its kind and ``hash``, HMAC-SHA256
    (hex) of the normalised value. What the audit trail quotes (a prefix of), never the value."""

    kind: ThrottleKind
    hash: str


@dataclass(frozen=True)
class LoginLock:
    """Why an attempt was refused: the lock-out in force ``until`` (the latest of those in force),
    the seconds left (``retry_after_s``, at least 1: HTTP's Retry-After), the keys it holds ``by``,
    whether this attempt ``started`` it, and which lock-out it is (``lockouts``, 1 for a first)."""

    until: datetime
    retry_after_s: int
    by: tuple[ThrottleKey, ...]
    started: bool
    lockouts: int


class LoginThrottle:
    """Login attempts and lock-outs on a :class:`~plugin.store.Store` (see the module's docstring);
    keys are HMAC-SHA256 under a key derived from ``secret`` (at least 16 bytes)."""

    def __init__(self, store: Store, secret: bytes, *, policy: ThrottlePolicy | None = None) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"the throttle's secret needs at least {_MIN_SECRET_BYTES} bytes")
        self._store = store
        self._key = hmac.new(secret, _KEY_CONTEXT, hashlib.sha256).digest()
        self._policy = policy or ThrottlePolicy()
        self._pruned_at: datetime | None = None

    @property
    def policy(self) -> ThrottlePolicy:
        return self._policy

    def key(self, kind: ThrottleKind | str, value: str) -> ThrottleKey:
        """The stored key of a user name or an address (normalised first: see the module)."""
        kind = ThrottleKind(kind)
        normal = value.strip().lower() if kind is ThrottleKind.USER else _network(value)
        digest = hmac.new(self._key, f"{kind.value}\0{normal}".encode(), hashlib.sha256).hexdigest()
        return ThrottleKey(kind, digest)

    def attempt(
        self, user_name: str, address: str | None, *, now: datetime | None = None
    ) -> LoginLock | None:
        """Count a login attempt for ``user_name`` from ``address`` (``None``: not known, only the
        name counts) before its password is checked: ``None`` when it may go on, or the
        :class:`LoginLock` that refuses it (the password must then not be checked)."""
        moment = self._moment(now)
        keys = self._keys(user_name, address)
        with self._store._transaction(write=True) as session:
            rows = [self._row(session, key, moment) for key in keys]
            lock = self._count(keys, rows, moment)
        if self._pruned_at is None or moment - self._pruned_at >= self._policy.window:
            self.prune(moment)
        return lock

    def succeeded(self, user_name: str, address: str | None, *, now: datetime | None = None) -> None:
        """The attempt counted by :meth:`attempt` got in: clear the user name's failures and
        lock-outs, and take the attempt back from the address's count."""
        self._moment(now)
        keys = self._keys(user_name, address)
        with self._store._transaction(write=True) as session:
            for key in keys:
                row = session.scalars(_select(key).with_for_update()).first()
                if row is None:
                    continue
                if key.kind is ThrottleKind.USER:
                    session.delete(row)
                elif row.failures > 0:
                    row.failures -= 1

    def prune(self, now: datetime | None = None) -> int:
        """Delete the rows with no attempt counted for ``forget_after`` (none of them is locked
        out); how many."""
        moment = self._moment(now)
        self._pruned_at = moment
        cutoff = moment - self._policy.forget_after
        with self._store._transaction(write=True) as session:
            deleted = session.execute(sa.delete(LoginThrottleRow).where(LoginThrottleRow.updated_at < cutoff))
            count = int(getattr(deleted, "rowcount", 0))
        if count:
            logger.debug("login throttle: %d rows forgotten", count)
        return count

    # -- inside an attempt's transaction ---------------------------------------------------

    def _keys(self, user_name: str, address: str | None) -> list[ThrottleKey]:
        """The keys of an attempt, the address first (the order rows are locked in)."""
        keys = [self.key(ThrottleKind.USER, user_name)]
        if address:
            keys.insert(0, self.key(ThrottleKind.ADDRESS, address))
        return keys

    @staticmethod
    def _row(session: Session, key: ThrottleKey, moment: datetime) -> LoginThrottleRow:
        """The key's row, made when missing (another process may be making it too), locked."""
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        fresh = {
            "kind": key.kind.value,
            "key_hash": key.hash,
            "failures": 0,
            "lockouts": 0,
            "updated_at": moment,
        }
        session.execute(insert(LoginThrottleRow).values(**fresh).on_conflict_do_nothing())
        return session.scalars(_select(key).with_for_update()).one()

    def _count(
        self, keys: list[ThrottleKey], rows: list[LoginThrottleRow], moment: datetime
    ) -> LoginLock | None:
        policy = self._policy
        for row in rows:
            _settle(row, moment, policy)
        locked = [(key, row) for key, row in zip(keys, rows, strict=True) if row.locked_until is not None]
        started = False
        if not locked:
            locked = [(k, r) for k, r in zip(keys, rows, strict=True) if r.failures >= policy.limit(k.kind)]
            for _, row in locked:
                row.lockouts += 1
                row.locked_until = moment + policy.lockout_for(row.lockouts)
                row.failures, row.window_start, row.updated_at = 0, None, moment
            started = bool(locked)
        if not locked:
            for row in rows:
                row.failures += 1
                row.window_start = row.window_start or moment
                row.updated_at = moment
            return None
        until = max(row.locked_until for _, row in locked if row.locked_until is not None)
        return LoginLock(
            until=until,
            retry_after_s=max(1, math.ceil((until - moment).total_seconds())),
            by=tuple(key for key, _ in locked),
            started=started,
            lockouts=max(row.lockouts for _, row in locked),
        )

    def _moment(self, now: datetime | None) -> datetime:
        if now is None:
            return self._store._now()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime (e.g. datetime.now(UTC))")
        return now


def _select(key: ThrottleKey) -> sa.Select[LoginThrottleRow]:
    return sa.select(LoginThrottleRow).where(
        LoginThrottleRow.kind == key.kind.value, LoginThrottleRow.key_hash == key.hash
    )


def _settle(row: LoginThrottleRow, moment: datetime, policy: ThrottlePolicy) -> None:
    """Bring a row to ``moment``: forgotten after ``forget_after``, a lock-out over, a window past."""
    if row.updated_at <= moment - policy.forget_after:
        row.failures, row.window_start, row.lockouts, row.locked_until = 0, None, 0, None
    if row.locked_until is not None and row.locked_until <= moment:
        row.locked_until = None
    if row.window_start is not None and row.window_start <= moment - policy.window:
        row.failures, row.window_start = 0, None


def _network(address: str) -> str:
    """An address as counted: IPv4 as it is, IPv4-mapped IPv6 as its IPv4, other IPv6 as its /64;
    anything else (a host name) in lower case."""
    text = address.strip()
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text.lower()
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip.exploded.split("%")[0], 64), strict=False))
    return str(ip)
