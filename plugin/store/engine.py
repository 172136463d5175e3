"""Database URLs and engines: a SQLite file by default, PostgreSQL through a URL.

SQLite: a path (or ``sqlite:///path``); each connection runs with ``journal_mode=WAL``
(readers do not block the writer), ``foreign_keys=ON`` and a busy timeout, so writers from
several threads or processes wait for each other instead of failing. Write transactions
start with ``BEGIN IMMEDIATE``: they take the write lock before they read, so a
read-then-write transaction waits its turn instead of failing with "database is locked".

PostgreSQL: ``postgresql+psycopg://user:password@host:5432/dbname`` through psycopg 3
(``pip install 'imaging-crosscheck[postgresql]'``); ``postgresql://`` and ``postgres://``
mean the same. The password can be left out of the URL and given by ``PGPASSWORD`` or
``~/.pgpass``, which libpq reads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError

from plugin.errors import StoreUnavailable

__all__ = ["DEFAULT_BUSY_TIMEOUT_S", "WRITE", "create_store_engine", "database_url", "describe_url"]

logger = logging.getLogger(__name__)

#: Seconds a SQLite writer waits for another one before giving up.
DEFAULT_BUSY_TIMEOUT_S = 30.0

#: Execution option naming a write transaction (``BEGIN IMMEDIATE`` on SQLite).
WRITE = "crosscheck_write"


def database_url(url: str | Path) -> URL:
    """The SQLAlchemy URL for a SQLite path or a database URL, with the driver made explicit.

    A ``Path`` or a string without ``://`` is a SQLite file. Only SQLite (pysqlite) and
    PostgreSQL (psycopg 3) are supported.
    """
    if isinstance(url, Path) or "://" not in url:
        path = Path(url).expanduser()
        if str(path) in ("", ":memory:"):
            raise StoreUnavailable(
                "an in-memory SQLite database is not shared between threads: give the store a file"
            )
        return URL.create("sqlite+pysqlite", database=str(path.absolute()))
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    try:
        parsed = sa.make_url(url)
    except ArgumentError as exc:
        raise StoreUnavailable(
            "the database URL cannot be parsed: give a SQLite path or postgresql+psycopg://..."
        ) from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StoreUnavailable(
                "an in-memory SQLite database is not shared between threads: give the store a file"
            )
        if driver not in ("", "pysqlite"):
            raise StoreUnavailable(f"SQLite is used through pysqlite, not {driver}: write sqlite:///PATH")
        return parsed.set(drivername="sqlite+pysqlite")
    if backend == "postgresql":
        if driver not in ("", "psycopg"):
            raise StoreUnavailable(
                f"PostgreSQL is used through psycopg 3, not {driver}: write postgresql+psycopg://..."
            )
        return parsed.set(drivername="postgresql+psycopg")
    raise StoreUnavailable(
        f"the store runs on SQLite or PostgreSQL, not {backend}: give a file path or postgresql+psycopg://..."
    )


def describe_url(url: URL) -> str:
    """The URL as it may appear in messages and logs: the password hidden."""
    return url.render_as_string(hide_password=True)


def create_store_engine(url: URL, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> Engine:
    """An engine for ``url`` (from :func:`database_url`) with the store's connection settings.

    SQL parameters are kept out of error messages and logs (``hide_parameters``): they can
    hold patient identifiers.
    """
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create the folder of the SQLite database {url.database}: {exc.strerror}"
            ) from exc
        engine = sa.create_engine(url, hide_parameters=True)
        _configure_sqlite(engine, busy_timeout_s)
        return engine
    try:
        return sa.create_engine(url, hide_parameters=True, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise StoreUnavailable(
            "PostgreSQL needs the psycopg package (version 3): pip install 'imaging-crosscheck[postgresql]'"
        ) from exc


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    """The pragmas on every connection, and transactions begun by us rather than by pysqlite.

    pysqlite would begin a transaction only at the first INSERT/UPDATE/DELETE, and always as
    a deferred one; with its own transaction handling off, ``BEGIN`` or ``BEGIN IMMEDIATE``
    comes from the ``begin`` event (the recipe of SQLAlchemy's SQLite dialect documentation).
    """

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        finally:
            cursor.close()
        if mode != "wal":
            logger.warning("SQLite database is in journal mode %s, not WAL (readers will block)", mode)

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")
