"""Errors of the plugin layer.

    PluginError
     +-- UsageError                a command line that cannot work
     +-- CdsAuthenticationError    a CDS client's call whose JWT cannot be trusted (.reason)
     |    +-- CdsJwksUnavailable   the allow-listed JWK Set could not be fetched or read
     +-- CdsClientsConfigError     the CDS clients allow-list file cannot be used

Each area of the plugin (CDS Hooks, write-back, the store) adds its own branch below
``PluginError``; the service maps the branches to HTTP answers in one exception handler
(``CdsAuthenticationError`` to 401).
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "CdsAuthReason",
    "CdsAuthenticationError",
    "CdsClientsConfigError",
    "CdsJwksUnavailable",
    "PluginError",
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
