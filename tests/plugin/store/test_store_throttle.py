"""The login throttle: attempts counted per user name and address, windows, lock-outs that double,
successes taken back, rows forgotten, and nothing in clear in the table."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from plugin.store import LoginThrottle, Store, ThrottleKind, ThrottlePolicy
from plugin.store.throttle import LoginLock

SECRET = bytes(range(32))
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ADDRESS = "192.0.2.10"
#: the defaults: 5 failures per name, 20 per address, in 15 minutes; lock-outs of 5 minutes doubling
#: up to an hour; a day quiet and a name or address is forgotten
POLICY = ThrottlePolicy()


@pytest.fixture
def throttle(store: Store) -> LoginThrottle:
    return LoginThrottle(store, SECRET, policy=POLICY)


def _fail(throttle: LoginThrottle, times: int, name: str = "alice", address: str | None = ADDRESS) -> None:
    """``times`` attempts let through (and, not taken back, failures)."""
    for n in range(times):
        assert throttle.attempt(name, address, now=NOW) is None, f"attempt {n + 1} refused"


def _refused(lock: LoginLock | None) -> LoginLock:
    assert lock is not None, "the attempt was let through"
    return lock


def _rows(db_path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute("SELECT * FROM login_throttle"))


def test_five_failures_then_the_name_is_locked_out(throttle: LoginThrottle) -> None:
    _fail(throttle, 5)
    lock = _refused(throttle.attempt("alice", ADDRESS, now=NOW + timedelta(seconds=10)))
    assert lock.by == (throttle.key(ThrottleKind.USER, "alice"),)
    assert lock.started and lock.lockouts == 1
    assert lock.until == NOW + timedelta(seconds=10, minutes=5)
    assert lock.retry_after_s == 300
    # still refused during the lock-out, not started again nor lengthened by the refusals
    later = _refused(throttle.attempt("ALICE ", ADDRESS, now=NOW + timedelta(minutes=2)))
    assert (later.until, later.started, later.retry_after_s) == (lock.until, False, 190)
    # another name from the same address is not locked out
    assert throttle.attempt("bob", ADDRESS, now=NOW + timedelta(minutes=2)) is None


def test_the_lock_out_ends(throttle: LoginThrottle) -> None:
    _fail(throttle, 5)
    lock = _refused(throttle.attempt("alice", ADDRESS, now=NOW))
    assert (
        _refused(throttle.attempt("alice", ADDRESS, now=lock.until - timedelta(seconds=1))).retry_after_s == 1
    )
    assert throttle.attempt("alice", ADDRESS, now=lock.until) is None


def test_failures_outside_the_window_do_not_add_up(throttle: LoginThrottle) -> None:
    _fail(throttle, 4)
    after = NOW + timedelta(minutes=15)  # the window opened at NOW's first attempt
    for n in range(5):
        assert throttle.attempt("alice", ADDRESS, now=after + timedelta(seconds=n)) is None
    assert throttle.attempt("alice", ADDRESS, now=after + timedelta(seconds=5)) is not None


def test_lock_outs_double_up_to_the_longest(throttle: LoginThrottle) -> None:
    moment, lengths = NOW, []
    for _ in range(7):
        for _ in range(5):
            assert throttle.attempt("alice", None, now=moment) is None
        lock = _refused(throttle.attempt("alice", None, now=moment))
        assert lock.started
        lengths.append(lock.retry_after_s)
        moment = lock.until
    assert lengths == [300, 600, 1200, 2400, 3600, 3600, 3600]
    assert POLICY.lockout_for(1000) == timedelta(hours=1)  # no overflow far out


def test_a_success_clears_the_names_failures_and_lock_outs(throttle: LoginThrottle) -> None:
    _fail(throttle, 5)
    first = _refused(throttle.attempt("alice", ADDRESS, now=NOW))
    resume = first.until
    for _ in range(5):
        assert throttle.attempt("alice", ADDRESS, now=resume) is None
    second = _refused(throttle.attempt("alice", ADDRESS, now=resume))
    assert second.lockouts == 2 and second.retry_after_s == 600
    # the lock-out over, a right password: what was counted is forgotten, backoff included
    assert throttle.attempt("alice", ADDRESS, now=second.until) is None
    throttle.succeeded("Alice", ADDRESS, now=second.until)
    for _ in range(5):
        assert throttle.attempt("alice", ADDRESS, now=second.until) is None
    third = _refused(throttle.attempt("alice", ADDRESS, now=second.until))
    assert third.lockouts == 1 and third.retry_after_s == 300


def test_a_success_just_under_the_limit_leaves_room(throttle: LoginThrottle) -> None:
    _fail(throttle, 4)
    assert throttle.attempt("alice", ADDRESS, now=NOW) is None
    throttle.succeeded("alice", ADDRESS, now=NOW)  # the fifth was right
    _fail(throttle, 5)
    assert throttle.attempt("alice", ADDRESS, now=NOW) is not None


def test_the_address_limit_counts_failures_of_every_name(throttle: LoginThrottle) -> None:
    for _ in range(30):  # successes from the address do not count against it
        assert throttle.attempt("carol", ADDRESS, now=NOW) is None
        throttle.succeeded("carol", ADDRESS, now=NOW)
    for n in range(20):
        assert throttle.attempt(f"user{n % 4}", ADDRESS, now=NOW) is None  # 5 each: names at their limit
    lock = _refused(throttle.attempt("dave", ADDRESS, now=NOW))
    assert [key.kind for key in lock.by] == [ThrottleKind.ADDRESS]
    assert lock.by[0] == throttle.key("address", ADDRESS)
    assert throttle.attempt("dave", "192.0.2.11", now=NOW) is None  # another address, the same name
    assert throttle.attempt("erin", None, now=NOW) is None  # no address known: the name alone


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4(throttle: LoginThrottle) -> None:
    key = throttle.key
    assert key("address", "2001:db8:1:2::1") == key("address", "2001:db8:1:2:ffff::9")
    assert key("address", "2001:db8:1:2::1") != key("address", "2001:db8:1:3::1")
    assert key("address", "::ffff:192.0.2.10") == key("address", ADDRESS)
    assert key("user", "Alice ") == key("user", "alice")
    assert key("user", "alice") != key("address", "alice")


def test_names_and_addresses_are_stored_as_keyed_hashes(store: Store, db_path: Path) -> None:
    throttle = LoginThrottle(store, SECRET, policy=POLICY)
    typed = "my-password-typed-as-a-name"
    throttle.attempt(typed, "198.51.100.23", now=NOW)
    throttle.attempt("alice", "198.51.100.23", now=NOW)
    rows = _rows(db_path)
    assert len(rows) == 3
    text = repr(rows) + db_path.read_bytes().decode("latin-1")
    for clear in (typed, "alice", "198.51.100.23"):
        assert clear not in text
    hashes = {row[1] for row in rows}
    assert throttle.key("user", "alice").hash in hashes
    assert all(len(str(h)) == 64 for h in hashes)
    # another secret, other keys: the hashes cannot be made without it
    other = LoginThrottle(store, bytes(32), policy=POLICY)
    assert other.key("user", "alice") != throttle.key("user", "alice")
    with pytest.raises(ValueError, match="16 bytes"):
        LoginThrottle(store, b"short")


def test_two_stores_on_one_database_share_the_counts(db_path: Path, store: Store) -> None:
    """Two service processes (two Stores on one file, the same secret) see one count."""
    first = LoginThrottle(store, SECRET, policy=POLICY)
    with Store.open(db_path) as other_store:
        second = LoginThrottle(other_store, SECRET, policy=POLICY)
        for n in range(5):
            assert (first if n % 2 else second).attempt("alice", ADDRESS, now=NOW) is None
        assert second.attempt("alice", ADDRESS, now=NOW) is not None
        assert first.attempt("alice", ADDRESS, now=NOW + timedelta(minutes=1)) is not None


def test_a_reopened_store_keeps_the_lock_out(db_path: Path) -> None:
    with Store.open(db_path) as store:
        throttle = LoginThrottle(store, SECRET, policy=POLICY)
        _fail(throttle, 5)
        lock = _refused(throttle.attempt("alice", ADDRESS, now=NOW))
    with Store.open(db_path) as store:
        again = LoginThrottle(store, SECRET, policy=POLICY).attempt("alice", ADDRESS, now=NOW)
        assert again is not None and again.until == lock.until


def test_quiet_names_are_forgotten_and_pruned(throttle: LoginThrottle, db_path: Path) -> None:
    _fail(throttle, 5)
    lock = _refused(throttle.attempt("alice", ADDRESS, now=NOW))
    _fail(throttle, 1, "bob")
    assert len(_rows(db_path)) == 3
    assert throttle.prune(lock.until) == 0  # nothing a day old yet
    a_day = NOW + timedelta(days=1, seconds=1)
    assert throttle.attempt("carol", "192.0.2.99", now=a_day) is None  # a day quiet: pruned in passing
    remaining = {(row[0], row[1]) for row in _rows(db_path)}
    assert remaining == {
        ("user", throttle.key("user", "carol").hash),
        ("address", throttle.key("address", "192.0.2.99").hash),
    }
    assert throttle.prune(a_day + timedelta(days=2)) == 2
    assert _rows(db_path) == []


def test_a_row_a_day_quiet_starts_afresh_before_it_is_pruned(throttle: LoginThrottle) -> None:
    """The lock-out count is forgotten with the row, whether or not prune ran."""
    moment = NOW
    for _ in range(2):
        start = moment
        for _ in range(5):
            assert throttle.attempt("alice", None, now=start) is None
        moment = _refused(throttle.attempt("alice", None, now=start)).until
    later = moment + timedelta(days=1)
    throttle._pruned_at = later  # keep prune from running: the row itself must be read as stale
    for _ in range(5):
        assert throttle.attempt("alice", None, now=later) is None
    assert _refused(throttle.attempt("alice", None, now=later)).lockouts == 1


def test_parallel_attempts_cannot_pass_the_limit(db_path: Path) -> None:
    """Twelve attempts at once through two Stores: exactly five are let through."""
    stores = [Store.open(db_path) for _ in range(2)]
    try:
        throttles = [LoginThrottle(s, SECRET, policy=POLICY) for s in stores]
        barrier = threading.Barrier(12)

        def attempt(i: int) -> bool:
            barrier.wait()
            return throttles[i % 2].attempt("alice", None, now=NOW) is None

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(attempt, range(12)))
        assert answers.count(True) == 5, answers
    finally:
        for one in stores:
            one.close()


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"max_failures": 0}, "at least 1"),
        ({"window": timedelta(0)}, "longer than 0"),
        ({"max_lockout": timedelta(minutes=1)}, "cannot be shorter"),
        ({"forget_after": timedelta(minutes=30)}, "forget_after"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ThrottlePolicy(**fields)  # type: ignore[arg-type]


def test_naive_datetimes_are_refused(throttle: LoginThrottle) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        throttle.attempt("alice", None, now=datetime(2026, 3, 1, 12, 0))
