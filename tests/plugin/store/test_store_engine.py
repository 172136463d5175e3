"""Database URLs, SQLite connection settings, concurrent writers, and the errors when it goes wrong."""

from __future__ import annotations

import importlib.util
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from plugin.errors import StoreError, StoreUnavailable
from plugin.store import Actor, ActorKind, Store
from plugin.store.engine import create_store_engine, database_url, describe_url


@pytest.mark.parametrize(
    ("given", "driver", "database"),
    [
        ("crosscheck.db", "sqlite+pysqlite", "crosscheck.db"),
        ("sqlite:///data/crosscheck.db", "sqlite+pysqlite", "data/crosscheck.db"),
        ("sqlite+pysqlite:////var/lib/crosscheck.db", "sqlite+pysqlite", "/var/lib/crosscheck.db"),
        ("postgresql://u:p@db:5432/crosscheck", "postgresql+psycopg", "crosscheck"),
        ("postgres://u@db/crosscheck", "postgresql+psycopg", "crosscheck"),
        ("postgresql+psycopg://u@db/crosscheck", "postgresql+psycopg", "crosscheck"),
    ],
)
def test_database_url(given: str, driver: str, database: str) -> None:
    url = database_url(given)
    assert url.drivername == driver
    assert url.database is not None and url.database.endswith(database)


def test_a_path_becomes_an_absolute_sqlite_file(tmp_path: Path) -> None:
    url = database_url(tmp_path / "x.db")
    assert url.database == str(tmp_path / "x.db")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (":memory:", "in-memory"),
        ("sqlite://", "in-memory"),
        ("mysql://u@db/x", "SQLite or PostgreSQL, not mysql"),
        ("postgresql+psycopg2://u@db/x", "psycopg 3, not psycopg2"),
        ("sqlite+aiosqlite:///x.db", "pysqlite, not aiosqlite"),
    ],
)
def test_unsupported_urls(given: str, message: str) -> None:
    with pytest.raises(StoreUnavailable, match=message):
        database_url(given)


def test_describe_url_hides_the_password() -> None:
    text = describe_url(database_url("postgresql://crosscheck:s3cret@db/crosscheck"))
    assert text == "postgresql+psycopg://crosscheck:***@db/crosscheck"


def test_postgresql_engine_needs_psycopg() -> None:
    url = database_url("postgresql://crosscheck:s3cret@127.0.0.1:9/crosscheck")
    if importlib.util.find_spec("psycopg") is None:
        with pytest.raises(StoreUnavailable, match=r"psycopg package") as info:
            create_store_engine(url)
        assert "s3cret" not in str(info.value)
    else:
        engine = create_store_engine(url)  # no connection yet
        assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        engine.dispose()


def test_sqlite_connection_settings(store: Store) -> None:
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_an_unreachable_database(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StoreUnavailable, match="cannot create the folder"):
        Store.open(tmp_path / "a-file" / "crosscheck.db")
    (tmp_path / "a-folder.db").mkdir()
    with pytest.raises(StoreUnavailable, match="cannot open the database"):
        Store.open(tmp_path / "a-folder.db")
    (tmp_path / "notes.txt").write_text("not a database, only text " * 40)
    with pytest.raises(StoreUnavailable, match=r"notes\.txt \(DatabaseError\).*is a SQLite database"):
        Store.open(tmp_path / "notes.txt")


def test_a_lock_held_past_the_busy_timeout(db_path: Path, make_result) -> None:
    Store.open(db_path).close()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with Store.open(db_path, busy_timeout_s=0.05) as store:
            with pytest.raises(StoreUnavailable, match="locked by another writer") as info:
                store.save_result(make_result(), source="cli")
            assert isinstance(info.value, StoreError)
            assert "pat-1" not in str(info.value)  # no SQL parameters in the message
            assert store.get_result("x") is None  # readers are not blocked (WAL)
    finally:
        holder.rollback()
        holder.close()


def test_concurrent_writers_on_one_file(db_path: Path, make_result) -> None:
    """Two threads, each with its own Store (its own connections, like two processes), write at
    once, with reads between writes; nothing is lost and nobody fails."""
    stores = [Store.open(db_path), Store.open(db_path)]
    barrier = threading.Barrier(2)

    def write(i: int) -> list[str]:
        store = stores[i]
        barrier.wait()
        ids = []
        for n in range(40):
            uid = f"1.2.826.0.1.3680043.8.498.{i}.{n}"
            ids.append(
                store.save_result(make_result(uid), source="sweep", inputs={"n": str(n), "w": str(i)}).id
            )
            store.audit("result.create", Actor(ActorKind.SYSTEM), result_id=ids[-1])
            assert store.latest_result(uid, "a" * 64) is not None
        return ids

    try:
        with ThreadPoolExecutor(2) as pool:
            written = [i for ids in pool.map(write, range(2)) for i in ids]
        assert len(set(written)) == 80
        with stores[0].engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM results")).scalar() == 80
            assert connection.execute(sa.text("SELECT count(*) FROM audit_events")).scalar() == 80
    finally:
        for store in stores:
            store.close()
