"""Errors of the plugin layer.

    PluginError
     +-- UsageError        a command line that cannot work
     +-- StoreError        the plugin's database (results, feedback, audit trail)
          +-- StoreUnavailable   cannot be opened or reached: file, server, driver, lock timeout
          +-- MigrationFailed    a schema migration did not complete (it is rolled back)
          +-- SchemaTooNew       written by a newer imaging-crosscheck than this one
          +-- SchemaOutOfDate    older than this code, and opened without migrating
          +-- ResultNotFound     a reference to a result id that is not stored

Each area of the plugin (CDS Hooks, write-back, the store) adds its own branch below
``PluginError``; the service maps the branches to HTTP answers in one exception handler.
Store messages name the database (password hidden), revisions and result ids, never
patient data or SQL parameters.
"""

from __future__ import annotations

__all__ = [
    "MigrationFailed",
    "PluginError",
    "ResultNotFound",
    "SchemaOutOfDate",
    "SchemaTooNew",
    "StoreError",
    "StoreUnavailable",
    "UsageError",
]


class PluginError(Exception):
    """Base of the plugin layer's errors."""


class UsageError(PluginError):
    """A command line that cannot work (a missing, out-of-range or contradictory option)."""


class StoreError(PluginError):
    """The plugin's database could not do what was asked."""


class StoreUnavailable(StoreError):
    """The database cannot be opened or reached (missing driver, refused connection, lock timeout)."""


class MigrationFailed(StoreError):
    """A schema migration failed; the database is left at the revision it had."""


class SchemaTooNew(StoreError):
    """The database carries a schema revision this version of imaging-crosscheck does not know."""


class SchemaOutOfDate(StoreError):
    """The database's schema is older than this code's and the store was opened with ``migrate=False``."""


class ResultNotFound(StoreError):
    """A result id that the store does not hold (e.g. feedback naming the result its Card came from)."""
