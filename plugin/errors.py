"""Errors of the plugin layer.

    PluginError
     +-- UsageError                a command line that cannot work
     +-- CdsAuthenticationError    a CDS client's call whose JWT cannot be trusted (.reason)
     |    +-- CdsJwksUnavailable   the allow-listed JWK Set could not be fetched or read
     +-- CdsClientsConfigError     the CDS clients allow-list file cannot be used
     +-- StoreError                the plugin's database (results, feedback, audit trail)
     |    +-- StoreUnavailable     cannot be opened or reached: file, server, driver, lock timeout
     |    +-- MigrationFailed      a schema migration did not complete (it is rolled back)
     |    +-- SchemaTooNew         written by a newer imaging-crosscheck than this one
     |    +-- SchemaOutOfDate      older than this code, and opened without migrating
     |    +-- ResultNotFound       a result id that is not stored (404)
     +-- RequestInvalid            a request to the service that cannot be answered as sent (400)
     +-- ApiAuthenticationError    a REST call without a valid API key or bearer token (401)

Each area of the plugin (CDS Hooks, write-back, the store) adds its own branch below
``PluginError``; the service maps the branches to HTTP answers in one exception handler
(``CdsAuthenticationError`` to 401). Store messages name the database (password hidden),
revisions and result ids, never patient data or SQL parameters.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ApiAuthenticationError",
    "CdsAuthReason",
    "CdsAuthenticationError",
    "CdsClientsConfigError",
    "CdsJwksUnavailable",
    "MigrationFailed",
    "PluginError",
    "PrefetchUnavailable",
    "RequestInvalid",
    "ResultNotFound",
    "SchemaOutOfDate",
    "SchemaTooNew",
    "StoreError",
    "StoreUnavailable",
    "UsageError",
]

CdsAuthReason = Literal[
    "missing-token",
    "malformed",
    "unsigned",
    "disallowed-algorithm",
    "missing-kid",
    "unknown-issuer",
    "wrong-jku",
    "unknown-kid",
    "jwks-unavailable",
    "bad-signature",
    "missing-claim",
    "expired",
    "not-yet-valid",
    "lifetime-too-long",
    "wrong-audience",
    "replayed",
]
"""Why a CDS client's JWT was refused, in a word a log line or a metric label can carry."""


class PluginError(Exception):
    """Base of the plugin layer's errors."""


class UsageError(PluginError):
    """A command line that cannot work (a missing, out-of-range or contradictory option)."""


class CdsAuthenticationError(PluginError):
    """A CDS client's call whose bearer JWT cannot be trusted (CDS Hooks "Trusting CDS Clients").

    ``reason`` is one of `CdsAuthReason`; the message says what was wrong without
    repeating the token or its claims.
    """

    def __init__(self, message: str, *, reason: CdsAuthReason) -> None:
        super().__init__(message)
        self.reason: CdsAuthReason = reason


class CdsJwksUnavailable(CdsAuthenticationError):
    """The JWK Set at an allow-listed ``jwks_url`` could not be fetched, or is not a usable JWK Set."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="jwks-unavailable")


class CdsClientsConfigError(PluginError):
    """The CDS clients allow-list file (``--cds-clients``) is missing, not JSON, or has an unusable entry."""


# -- the store (plugin.store) -------------------------------------------------------------------


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


# -- the service (plugin.service) ---------------------------------------------------------------


class RequestInvalid(PluginError):
    """A request to the service that cannot be answered as sent (400)."""


class ApiAuthenticationError(PluginError):
    """A REST call without a valid API key or OAuth2 bearer token (401)."""


class PrefetchUnavailable(PluginError):
    """A CDS Hooks call without the prefetch the service needs and no FHIR server to ask (412)."""
