"""Alembic's environment for the store's migrations.

The store runs them itself (:func:`plugin.store.migrate.prepare_schema`) on a connection it
passes in ``config.attributes["connection"]``, inside its own transaction; no ``alembic.ini``
is needed. Run by hand (a new revision, SQL for a DBA), a connection is made from the
``sqlalchemy.url`` of the Config that :func:`plugin.store.migrate.alembic_config` builds.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from plugin.store.engine import create_store_engine, database_url
from plugin.store.migrate import migration_transaction
from plugin.store.models import Base, UTCDateTime

__all__: list[str] = []


def _render_item(kind: str, obj: Any, autogen: AutogenContext) -> str | Literal[False]:
    """Autogenerate writes the models' column types as plain SQLAlchemy, as 0001 does."""
    if kind != "type":
        return False
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, sa.JSON):
        autogen.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(), "postgresql")'
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things: recreate the table instead
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run() -> None:
    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    if url is None:
        raise RuntimeError("no connection in config.attributes and no sqlalchemy.url to make one")
    engine = create_store_engine(database_url(url))
    try:
        with migration_transaction(engine) as own:
            _configure(own)
    finally:
        engine.dispose()


_run()
