"""Alembic, run from code: the Config built here, the migrations shipped in ``migrations/``.

:func:`prepare_schema` is what :meth:`plugin.store.Store.open` calls: it refuses a database
written by a newer version (a revision the shipped scripts do not know), and upgrades an
older or empty one to the head in one transaction (or refuses, with ``migrate=False``).
Concurrent openers serialise: SQLite through ``BEGIN IMMEDIATE``, PostgreSQL through a
transaction-scoped advisory lock.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from plugin.errors import MigrationFailed, SchemaOutOfDate, SchemaTooNew
from plugin.store.engine import WRITE, database_url, describe_url

__all__ = [
    "MIGRATIONS",
    "alembic_config",
    "current_revisions",
    "head_revisions",
    "migration_transaction",
    "prepare_schema",
]

logger = logging.getLogger(__name__)

#: Where the migration scripts are, as Alembic's ``package:folder`` (resolved inside the
#: installed package, wherever it is).
MIGRATIONS = "plugin.store:migrations"

# pg_advisory_xact_lock key shared by every process migrating the store ("xchk" in ASCII)
_PG_LOCK_KEY = 0x7863686B


def alembic_config(url: str | Path | URL | None = None, *, connection: Connection | None = None) -> Config:
    """A Config for the shipped migrations: on ``connection`` when given (used as it is, inside
    its transaction), else on ``url`` (a connection is made and committed by ``env.py``)."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    if url is not None:
        parsed = url if isinstance(url, URL) else database_url(url)
        # ConfigParser interpolation: a % in a password must be doubled
        config.set_main_option(
            "sqlalchemy.url", parsed.render_as_string(hide_password=False).replace("%", "%%")
        )
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revisions() -> tuple[str, ...]:
    """The head revision(s) of the shipped migrations (one, unless a branch was left unmerged)."""
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(connection: Connection) -> tuple[str, ...]:
    """The revision(s) a database is at; empty for a database without the store's tables."""
    return tuple(MigrationContext.configure(connection).get_current_heads())


@contextlib.contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction that no other migrating process can interleave with:
    ``BEGIN IMMEDIATE`` and deferred foreign keys (a batch table rebuild drops and refills a
    referenced table) on SQLite, an advisory lock on PostgreSQL. Committed on success."""
    with engine.connect().execution_options(**{WRITE: True}) as connection, connection.begin():
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
        elif connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
        yield connection


def prepare_schema(engine: Engine, *, migrate: bool) -> None:
    """Check the database's revision against the shipped migrations, and upgrade it when it is
    behind and ``migrate`` is true.

    Raises :class:`SchemaTooNew` for a revision the migrations do not know,
    :class:`SchemaOutOfDate` when behind and not migrating, :class:`MigrationFailed` when an
    upgrade fails (rolled back). Connection errors propagate for the caller to wrap.
    """
    where = describe_url(engine.url)
    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    with engine.connect() as connection:
        current = set(current_revisions(connection))
        connection.rollback()
    _refuse_unknown(current, script, where)
    if current == heads:
        return
    if not migrate:
        raise SchemaOutOfDate(
            f"the database {where} is at revision {_names(current)}, this version needs {_names(heads)}: "
            "open the store with migrate=True to upgrade it"
        )
    try:
        with migration_transaction(engine) as connection:
            current = set(current_revisions(connection))  # another process may have upgraded it
            _refuse_unknown(current, script, where)
            if current != heads:
                logger.info("upgrading the store's schema from %s to %s", _names(current), _names(heads))
                command.upgrade(alembic_config(connection=connection), "heads")
    except (SQLAlchemyError, CommandError) as exc:
        raise MigrationFailed(
            f"upgrading the database {where} from revision {_names(current)} to {_names(heads)} failed "
            f"({type(exc).__name__}); it is left at {_names(current)}: check that it is the store's database "
            "and that the user may create tables"
        ) from exc


def _refuse_unknown(current: set[str], script: ScriptDirectory, where: str) -> None:
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = current - known
    if unknown:
        raise SchemaTooNew(
            f"the database {where} is at revision {_names(unknown)}, which this version of "
            f"imaging-crosscheck does not know (its newest is {_names(set(script.get_heads()))}): "
            "it was written by a newer version; upgrade imaging-crosscheck, or give it another database"
        )


def _names(revisions: set[str]) -> str:
    return ", ".join(sorted(revisions)) or "none (empty)"
