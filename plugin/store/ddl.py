"""DDL the ORM models cannot express, for the migrations to run per dialect.

Append-only tables (the audit trail, a case's events and comments): the database itself refuses
UPDATE and DELETE (and TRUNCATE on PostgreSQL), whatever code or console is connected.
Migrations call these functions by name; their output for a table must never change, or a
revision already run would differ from the same revision run again.
"""

from __future__ import annotations

__all__ = ["append_only_triggers", "drop_append_only_triggers"]


def append_only_triggers(table: str, dialect: str) -> tuple[str, ...]:
    """Statements that make ``table`` append-only on ``dialect`` (``sqlite`` or ``postgresql``)."""
    message = f"{table} is append-only: rows are never updated or deleted"
    if dialect == "sqlite":
        return tuple(
            f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            for verb in ("UPDATE", "DELETE")
        )
    if dialect == "postgresql":
        return (
            f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{message}' USING ERRCODE = 'restrict_violation'; END $$",
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()",
        )
    raise ValueError(
        f"no append-only triggers for the {dialect} dialect (the store runs on sqlite, postgresql)"
    )


def drop_append_only_triggers(table: str, dialect: str) -> tuple[str, ...]:
    """Statements that undo :func:`append_only_triggers` (for a downgrade)."""
    if dialect == "sqlite":
        return tuple(f"DROP TRIGGER IF EXISTS {table}_no_{verb}" for verb in ("update", "delete"))
    if dialect == "postgresql":
        return (
            f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
            f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}",
            f"DROP FUNCTION IF EXISTS {table}_append_only()",
        )
    raise ValueError(
        f"no append-only triggers for the {dialect} dialect (the store runs on sqlite, postgresql)"
    )
