"""Investigator logins for the review page: user names, roles, and scrypt password hashes.

Passwords are hashed with scrypt (``hashlib.scrypt``, OpenSSL's) and a random 16-byte salt
per user; the hash keeps its parameters, ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (base64), so they
can be raised later: a hash made with older parameters is redone at the next successful
login. The default, N=2**15, r=8, p=3 (32 MiB, about 0.1 s), is one of the settings OWASP's
Password Storage Cheat Sheet lists as equal to its scrypt minimum.

:meth:`Users.verify_password` takes the same time whether the user exists or not, and compares
in constant time. Passwords are never logged nor kept; user names are compared
case-insensitively (stored in lower case).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from plugin.errors import DuplicateUser, UserNotFound
from plugin.store.models import UserRow
from plugin.store.store import Store

__all__ = [
    "MIN_PASSWORD_CHARS",
    "USER_NAME_PATTERN",
    "ScryptParams",
    "User",
    "UserRole",
    "Users",
    "normalize_user_name",
]

logger = logging.getLogger(__name__)

#: The shortest password taken.
MIN_PASSWORD_CHARS = 12

#: What a user name may be: letters, digits and ``. _ @ -``, 1 to 64 characters, starting with
#: a letter or a digit.
USER_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")

_SALT_BYTES = 16
_KEY_BYTES = 32


class UserRole(StrEnum):
    """What a user may do: ``investigator`` reviews cases; ``admin`` also manages users."""

    INVESTIGATOR = "investigator"
    ADMIN = "admin"


@dataclass(frozen=True)
class ScryptParams:
    """scrypt's cost parameters: N (CPU and memory), r (block size), p (parallelism)."""

    n: int = 2**15
    r: int = 8
    p: int = 3

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.r < 1 or self.p < 1:
            raise ValueError("scrypt needs N a power of 2 above 1, and r and p of at least 1")

    @property
    def maxmem(self) -> int:
        """Memory scrypt may use (its need, 128 * N * r bytes, with room to spare)."""
        return 2 * 128 * self.n * self.r + 1024 * 1024

    def hash(self, password: str, salt: bytes) -> bytes:
        return hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=self.maxmem,
            dklen=_KEY_BYTES,
        )


@dataclass(frozen=True)
class User:
    """An investigator's login, without its password hash."""

    id: int
    user_name: str
    display_name: str | None
    role: UserRole
    active: bool
    created_at: datetime


class Users:
    """The logins on a :class:`~plugin.store.Store`; ``params`` are the scrypt parameters new
    hashes get (tests lower them)."""

    def __init__(self, store: Store, *, params: ScryptParams | None = None) -> None:
        self._store = store
        self._params = params or ScryptParams()
        # verified against when the user does not exist, so that takes as long as a wrong password
        self._dummy = _encode(self._params, secrets.token_bytes(_SALT_BYTES), secrets.token_bytes(_KEY_BYTES))

    def create_user(
        self,
        user_name: str,
        password: str,
        *,
        display_name: str | None = None,
        role: UserRole | str = UserRole.INVESTIGATOR,
    ) -> User:
        """A new active login. Raises :class:`~plugin.errors.DuplicateUser` for a name taken,
        ``ValueError`` for a name or password that cannot be used."""
        name = normalize_user_name(user_name)
        row = UserRow(
            user_name=name,
            display_name=(display_name or "").strip() or None,
            password_hash=self._hash(password),
            role=UserRole(role).value,
            active=True,
            created_at=self._store._now(),
        )
        try:
            with self._store._transaction(write=True, integrity_errors=True) as session:
                session.add(row)
                session.flush()
                return _user(row)
        except IntegrityError as exc:
            raise DuplicateUser(f"the user name {name!r} is taken: choose another") from exc

    def user(self, user_name: str) -> User | None:
        """The login with this name (active or not), or ``None``."""
        with self._store._transaction(write=False) as session:
            row = self._row(session, user_name)
            return None if row is None else _user(row)

    def users(self) -> list[User]:
        """Every login, active or not, by name."""
        with self._store._transaction(write=False) as session:
            return [_user(row) for row in session.scalars(sa.select(UserRow).order_by(UserRow.user_name))]

    def verify_password(self, user_name: str, password: str) -> User | None:
        """The user, when ``password`` is theirs and the login is active; else ``None`` (no
        reason given: a caller must not tell an unknown name from a wrong password)."""
        with self._store._transaction(write=False) as session:
            row = self._row(session, user_name) if USER_NAME_PATTERN.fullmatch(user_name.lower()) else None
            stored = self._dummy if row is None else row.password_hash
        good = _verify(stored, password)
        if row is None or not good or not row.active:
            logger.debug("login refused")
            return None
        if _decode(stored)[0] != self._params:  # made with older parameters: redo it now
            self.set_password(row.user_name, password)
        return _user(row)

    def set_password(self, user_name: str, password: str) -> None:
        """Give a login a new password. Raises :class:`~plugin.errors.UserNotFound`."""
        hashed = self._hash(password)
        with self._store._transaction(write=True) as session:
            row = self._required(session, user_name)
            row.password_hash = hashed

    def deactivate_user(self, user_name: str) -> User:
        """Refuse the login from now on (the user and their history stay). Raises
        :class:`~plugin.errors.UserNotFound`."""
        with self._store._transaction(write=True) as session:
            row = self._required(session, user_name)
            row.active = False
            session.flush()
            return _user(row)

    def _hash(self, password: str) -> str:
        if len(password) < MIN_PASSWORD_CHARS:
            raise ValueError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
        salt = secrets.token_bytes(_SALT_BYTES)
        return _encode(self._params, salt, self._params.hash(password, salt))

    @staticmethod
    def _row(session: Session, user_name: str) -> UserRow | None:
        query = sa.select(UserRow).where(UserRow.user_name == user_name.strip().lower())
        return session.scalars(query).first()

    def _required(self, session: Session, user_name: str) -> UserRow:
        row = self._row(session, user_name)
        if row is None:
            raise UserNotFound(f"there is no user {user_name.strip().lower()!r}: see `crosscheck users list`")
        return row


def normalize_user_name(user_name: str) -> str:
    """The user name as stored (lower case); ``ValueError`` for one that is not allowed."""
    name = user_name.strip().lower()
    if not USER_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            "a user name is 1 to 64 letters, digits or . _ @ -, starting with a letter or a digit"
        )
    return name


def _encode(params: ScryptParams, salt: bytes, key: bytes) -> str:
    b64 = base64.b64encode
    return f"scrypt${params.n}${params.r}${params.p}${b64(salt).decode()}${b64(key).decode()}"


def _decode(stored: str) -> tuple[ScryptParams, bytes, bytes]:
    scheme, n, r, p, salt, key = stored.split("$")
    if scheme != "scrypt":
        raise ValueError(f"unknown password hash scheme {scheme!r}")
    return ScryptParams(int(n), int(r), int(p)), base64.b64decode(salt), base64.b64decode(key)


def _verify(stored: str, password: str) -> bool:
    params, salt, key = _decode(stored)
    return hmac.compare_digest(params.hash(password, salt), key)


def _user(row: UserRow) -> User:
    values = {f.name: getattr(row, f.name) for f in fields(User)}
    return User(**{**values, "role": UserRole(row.role)})
