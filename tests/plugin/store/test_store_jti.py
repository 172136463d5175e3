"""Used CDS Client JWT ids: the first use wins, replays are refused, expired ids are forgotten."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from plugin.store import Store, StoreReplayCache

ISS = "https://ehr.example"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EXP = NOW + timedelta(minutes=5)


def test_first_use_wins_and_replays_are_refused(store: Store) -> None:
    assert store.use_jti(ISS, "jti-1", EXP, now=NOW) is True
    assert store.use_jti(ISS, "jti-1", EXP, now=NOW) is False
    assert store.use_jti(ISS, "jti-2", EXP, now=NOW) is True
    assert store.use_jti("https://other.example", "jti-1", EXP, now=NOW) is True


def test_expired_ids_are_purged_and_forgotten(store: Store) -> None:
    assert store.use_jti(ISS, "old", NOW + timedelta(seconds=30), now=NOW)
    assert store.use_jti(ISS, "young", NOW + timedelta(minutes=10), now=NOW)
    later = NOW + timedelta(minutes=1)
    assert store.use_jti(ISS, "young", NOW + timedelta(minutes=10), now=later) is False
    assert store.use_jti(ISS, "old", later + timedelta(minutes=5), now=later) is True  # purged, then new
    assert store.purge_expired_jti(NOW + timedelta(minutes=7)) == 1  # "old" again
    assert store.purge_expired_jti(NOW + timedelta(hours=1)) == 1  # "young"
    assert store.purge_expired_jti(NOW + timedelta(hours=1)) == 0


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="expires_at"):
        store.use_jti(ISS, "x", datetime(2026, 3, 1, 12, 5))
    with pytest.raises(ValueError, match="now"):
        store.purge_expired_jti(datetime(2026, 3, 1, 12, 5))


@pytest.mark.parametrize("stores", [1, 2], ids=["one-store", "two-stores"])
def test_only_one_of_many_threads_gets_a_jti(db_path: Path, stores: int) -> None:
    """Eight threads present the same jti at once (through one Store, or two like two workers)."""
    opened = [Store.open(db_path) for _ in range(stores)]
    try:
        for round_ in range(5):
            barrier = threading.Barrier(8)

            def present(i: int, jti: str = f"jti-{round_}", barrier: threading.Barrier = barrier) -> bool:
                barrier.wait()
                return opened[i % stores].use_jti(ISS, jti, datetime.now(UTC) + timedelta(minutes=5))

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(present, range(8)))
            assert answers.count(True) == 1, answers
    finally:
        for one in opened:
            one.close()


def test_replay_cache_runs_in_a_worker_thread(store: Store) -> None:
    cache = StoreReplayCache(store)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    original = store.use_jti

    def spy(iss: str, jti: str, expires_at: datetime) -> bool:
        seen.append(threading.get_ident())
        return original(iss, jti, expires_at)

    store.use_jti = spy  # type: ignore[method-assign]
    expires = datetime.now(UTC) + timedelta(minutes=5)

    async def twice() -> tuple[bool, bool]:
        return await cache.use(ISS, "abc", expires), await cache.use(ISS, "abc", expires)

    assert asyncio.run(twice()) == (True, False)
    assert seen and all(ident != loop_thread for ident in seen)
