"""Investigator logins: scrypt hashes with their parameters, verification, deactivation."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from plugin.errors import DuplicateUser, UserNotFound
from plugin.store import Store, UserRole, Users
from plugin.store.users import ScryptParams, normalize_user_name

FAST = ScryptParams(n=2**4, r=1, p=1)
PASSWORD = "correct horse battery"


@pytest.fixture
def users(store: Store) -> Users:
    return Users(store, params=FAST)


def _hash_of(db_path: Path, name: str) -> str:
    with sqlite3.connect(db_path) as db:
        return str(db.execute("SELECT password_hash FROM users WHERE user_name = ?", (name,)).fetchone()[0])


def test_right_wrong_and_inactive(users: Users, db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    alice = users.create_user("Alice", PASSWORD, display_name="Alice A.")
    assert (alice.user_name, alice.role, alice.active, alice.display_name) == (
        "alice",
        UserRole.INVESTIGATOR,
        True,
        "Alice A.",
    )
    assert users.verify_password("alice", PASSWORD) == alice
    assert users.verify_password("ALICE", PASSWORD) == alice
    assert users.verify_password("alice", PASSWORD + "!") is None
    assert users.verify_password("nobody", PASSWORD) is None
    assert users.verify_password("not a name!", PASSWORD) is None
    stored = _hash_of(db_path, "alice")
    assert stored.startswith("scrypt$16$1$1$") and PASSWORD not in stored
    disabled = users.deactivate_user("alice")
    assert not disabled.active
    assert users.verify_password("alice", PASSWORD) is None
    assert PASSWORD not in caplog.text


def test_each_user_gets_a_salt(users: Users, db_path: Path) -> None:
    users.create_user("a", PASSWORD)
    users.create_user("b", PASSWORD)
    assert _hash_of(db_path, "a").split("$")[4] != _hash_of(db_path, "b").split("$")[4]
    assert _hash_of(db_path, "a").split("$")[5] != _hash_of(db_path, "b").split("$")[5]


def test_set_password(users: Users) -> None:
    users.create_user("bob", PASSWORD, role="admin")
    users.set_password("bob", "another long password")
    assert users.verify_password("bob", PASSWORD) is None
    bob = users.verify_password("bob", "another long password")
    assert bob is not None and bob.role is UserRole.ADMIN
    with pytest.raises(UserNotFound, match="'carol'"):
        users.set_password("carol", "another long password")
    with pytest.raises(UserNotFound):
        users.deactivate_user("carol")


def test_a_hash_with_old_parameters_is_redone_at_login(store: Store, db_path: Path) -> None:
    Users(store, params=ScryptParams(n=2**3, r=1, p=1)).create_user("dana", PASSWORD)
    assert _hash_of(db_path, "dana").startswith("scrypt$8$1$1$")
    assert Users(store, params=FAST).verify_password("dana", PASSWORD) is not None
    assert _hash_of(db_path, "dana").startswith("scrypt$16$1$1$")


def test_refusals(users: Users) -> None:
    users.create_user("erin", PASSWORD)
    with pytest.raises(DuplicateUser, match="'erin' is taken"):
        users.create_user("ERIN", PASSWORD)
    with pytest.raises(ValueError, match="12 characters"):
        users.create_user("frank", "short")
    with pytest.raises(ValueError, match="user name"):
        users.create_user("frank smith", PASSWORD)
    with pytest.raises(ValueError, match="'boss'"):
        users.create_user("frank", PASSWORD, role="boss")
    assert [u.user_name for u in users.users()] == ["erin"]
    assert users.user("frank") is None


def test_default_parameters_are_owasp_equivalent() -> None:
    assert ScryptParams() == ScryptParams(n=2**15, r=8, p=3)
    with pytest.raises(ValueError, match="power of 2"):
        ScryptParams(n=1000)
    assert normalize_user_name(" Investigator.One@site ") == "investigator.one@site"
