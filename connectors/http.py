"""HTTP plumbing shared by the FHIR and DICOMweb connectors: retries, timeouts, errors.

One request goes through `send`: transport failures become `ServerUnreachable`
or `ServerTimeout`; 429 and 5xx are retried with exponential backoff, honouring
``Retry-After`` (seconds or an HTTP date), up to `RetryPolicy.attempts`; a final
error status becomes the `ServerError` subclass that names it, with the
OperationOutcome's diagnostics when the body is one. Error messages carry the URL
without its query string, because queries can carry patient identifiers.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from connectors.errors import (
    AuthenticationFailed,
    RemoteNotFound,
    RequestRejected,
    ServerError,
    ServerFailed,
    ServerTimeout,
    ServerUnreachable,
)

__all__ = [
    "RetryPolicy",
    "Timeouts",
    "error_for_response",
    "error_for_status",
    "outcome_issues",
    "redact_url",
    "retry_after_seconds",
    "send",
]

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait: to connect, and for each read of a response."""

    connect: float = 5.0
    read: float = 30.0

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(self.read, connect=self.connect)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry 429, 5xx and dropped connections.

    The wait before retry ``n`` (1-based) is ``backoff * 2**(n-1)`` seconds with
    +-25% jitter, capped at ``max_wait``; a ``Retry-After`` from the server
    replaces it (still capped at ``max_wait``).
    """

    attempts: int = 4
    backoff: float = 0.5
    max_wait: float = 30.0
    statuses: frozenset[int] = RETRY_STATUSES

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")

    def wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait)
        base = self.backoff * 2.0 ** (attempt - 1)
        return float(min(base * random.uniform(0.75, 1.25), self.max_wait))


def redact_url(url: httpx.URL | str) -> str:
    """The URL without query string or credentials."""
    u = httpx.URL(str(url))
    return str(u.copy_with(query=None, fragment=None, username=None, password=None))


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def outcome_issues(body: Any) -> tuple[str, ...]:
    """The human-readable lines of an OperationOutcome (diagnostics, details.text, code)."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "OperationOutcome":
        return ()
    lines: list[str] = []
    for issue in body.get("issue") or ():
        if not isinstance(issue, Mapping):
            continue
        details = issue.get("details") if isinstance(issue.get("details"), Mapping) else {}
        text = issue.get("diagnostics") or (details or {}).get("text") or issue.get("code")
        if text:
            severity = issue.get("severity")
            lines.append(f"{severity}: {text}" if severity else str(text))
    return tuple(lines)


def error_for_status(
    status: int, *, url: str, what: str, issues: tuple[str, ...] = (), retried: int = 0
) -> ServerError:
    """The `ServerError` subclass for an HTTP error status, with a message that says what to do."""
    said = f": {'; '.join(issues)}" if issues else ""
    after = f" after {retried} retries" if retried else ""
    if status in (401, 403):
        return AuthenticationFailed(
            f"{what} refused the credentials (HTTP {status}) at {url}{said}; check the user, password, "
            "token or client registration",
            url=url,
            status=status,
            issues=issues,
        )
    if status in (404, 410):
        return RemoteNotFound(
            f"{what}: not found (HTTP {status}) at {url}{said}", url=url, status=status, issues=issues
        )
    if status == 429 or status >= 500:
        return ServerFailed(
            f"{what} failed with HTTP {status}{after} at {url}{said}", url=url, status=status, issues=issues
        )
    return RequestRejected(
        f"{what} rejected the request (HTTP {status}) at {url}{said}", url=url, status=status, issues=issues
    )


def error_for_response(response: httpx.Response, *, what: str, retried: int = 0) -> ServerError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_for_status(
        response.status_code,
        url=redact_url(response.request.url),
        what=what,
        issues=outcome_issues(body),
        retried=retried,
    )


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    policy: RetryPolicy,
    what: str,
    stream: bool = False,
    idempotent: bool = True,
) -> httpx.Response:
    """Send ``request``, retrying per ``policy``; return a 2xx/3xx response or raise a `ServerError`.

    With ``stream=True`` the body is not read (the caller reads and closes it).
    A request that is not ``idempotent`` (a POSTed transaction) is retried only
    when the server cannot have acted on it: a refused connection, 429 or 503.
    """
    url = redact_url(request.url)
    statuses = policy.statuses if idempotent else policy.statuses & {429, 503}
    for attempt in range(1, policy.attempts + 1):
        last = attempt == policy.attempts
        try:
            response = await client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            if last or isinstance(exc, httpx.PoolTimeout) or not idempotent:
                raise ServerTimeout(
                    f"{what} did not answer within the timeout at {url} ({exc.__class__.__name__})", url=url
                ) from None
            await _sleep(policy.wait(attempt, None), what, url, "timeout")
            continue
        except httpx.TransportError as exc:
            sent = not isinstance(exc, httpx.ConnectError)
            if last or isinstance(exc, httpx.UnsupportedProtocol) or (sent and not idempotent):
                raise ServerUnreachable(f"{what} is unreachable at {url}: {_reason(exc)}", url=url) from None
            await _sleep(policy.wait(attempt, None), what, url, exc.__class__.__name__)
            continue
        if response.status_code in statuses and not last:
            wait = policy.wait(attempt, retry_after_seconds(response.headers.get("Retry-After")))
            await response.aclose()
            await _sleep(wait, what, url, f"HTTP {response.status_code}")
            continue
        if response.status_code >= 400:
            if stream:
                await response.aread()
                await response.aclose()
            raise error_for_response(response, what=what, retried=attempt - 1)
        return response
    raise AssertionError("unreachable")  # pragma: no cover


async def _sleep(seconds: float, what: str, url: str, why: str) -> None:
    logger.debug("%s: %s at %s; retrying in %.2f s", what, why, url, seconds)
    await asyncio.sleep(seconds)


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
