"""`connectors.http`: retries, Retry-After, error mapping and URL redaction, against `httpx.MockTransport`."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import httpx
import pytest

from connectors.errors import (
    AuthenticationFailed,
    RemoteNotFound,
    RequestRejected,
    ServerError,
    ServerFailed,
    ServerTimeout,
    ServerUnreachable,
)
from connectors.http import (
    RetryPolicy,
    Timeouts,
    error_for_status,
    outcome_issues,
    redact_url,
    retry_after_seconds,
    send,
)

FAST = RetryPolicy(attempts=3, backoff=0.001, max_wait=0.05)
PATIENCE = RetryPolicy(attempts=3, backoff=0.001, max_wait=10.0)  # room to see Retry-After honoured
URL = "https://fhir.example.org/fhir/Patient?identifier=SECRET-MRN"
REDACTED = "https://fhir.example.org/fhir/Patient"


def outcome(status: int, diagnostics: str, *, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": diagnostics}],
    }
    return httpx.Response(status, json=body, headers=headers)


class Script:
    """A MockTransport handler that answers each request with the next scripted response or exception."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def run_send(
    script: Script,
    *,
    method: str = "GET",
    url: str = URL,
    policy: RetryPolicy = FAST,
    **kwargs: Any,
) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
            body = {"resourceType": "Bundle", "type": "transaction"} if method == "POST" else None
            request = client.build_request(method, url, json=body)
            response = await send(client, request, policy=policy, what="FHIR search", **kwargs)
            await response.aread()
            return response

    return asyncio.run(go())


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits `send` asks for between attempts, recorded instead of slept."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr("connectors.http.asyncio.sleep", fake_sleep)
    return recorded


# -- retries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
def test_retried_status_then_success(status: int, waits: list[float]) -> None:
    script = Script(httpx.Response(status), httpx.Response(status), httpx.Response(200, json={"ok": True}))
    response = run_send(script, policy=RetryPolicy(attempts=3, backoff=0.1, max_wait=10.0))
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert len(script.requests) == 3
    # exponential backoff with +-25% jitter: ~0.1 s, then ~0.2 s
    assert len(waits) == 2
    assert 0.075 <= waits[0] <= 0.125
    assert 0.15 <= waits[1] <= 0.25


def test_retry_after_seconds_is_honoured(waits: list[float]) -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200))
    assert run_send(script, policy=PATIENCE).status_code == 200
    assert waits == [3.0]


def test_retry_after_http_date_is_honoured(waits: list[float]) -> None:
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    script = Script(httpx.Response(503, headers={"Retry-After": when}), httpx.Response(200))
    assert run_send(script, policy=PATIENCE).status_code == 200
    (wait,) = waits
    assert 3.5 <= wait <= 5.0  # the date has whole-second resolution


@pytest.mark.parametrize("retry_after", ["120", "Thu, 01 Jan 2099 00:00:00 GMT"])
def test_retry_after_is_capped_at_max_wait(retry_after: str, waits: list[float]) -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": retry_after}), httpx.Response(200))
    assert run_send(script, policy=PATIENCE).status_code == 200
    assert waits == [10.0]


def test_exhausted_retries_raise_server_failed_with_the_outcome(waits: list[float]) -> None:
    script = Script(*(outcome(503, "database is down for maintenance") for _ in range(3)))
    with pytest.raises(ServerFailed) as info:
        run_send(script)
    exc = info.value
    assert len(script.requests) == 3 and len(waits) == 2
    assert exc.status == 503
    assert exc.url == REDACTED
    assert exc.issues == ("error: database is down for maintenance",)
    assert "HTTP 503 after 2 retries" in str(exc)
    assert "database is down for maintenance" in str(exc)


def test_a_single_attempt_policy_does_not_retry(waits: list[float]) -> None:
    script = Script(httpx.Response(503))
    with pytest.raises(ServerFailed) as info:
        run_send(script, policy=RetryPolicy(attempts=1))
    assert len(script.requests) == 1 and waits == []
    assert "retries" not in str(info.value)


def test_statuses_outside_the_policy_are_not_retried(waits: list[float]) -> None:
    script = Script(httpx.Response(500))
    with pytest.raises(ServerFailed):
        run_send(script, policy=RetryPolicy(attempts=3, backoff=0.001, statuses=frozenset({503})))
    assert len(script.requests) == 1


# -- error statuses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthenticationFailed),
        (403, AuthenticationFailed),
        (404, RemoteNotFound),
        (410, RemoteNotFound),
        (400, RequestRejected),
        (422, RequestRejected),
    ],
)
def test_client_errors_map_to_their_class_without_retry(
    status: int, error: type[ServerError], waits: list[float]
) -> None:
    script = Script(httpx.Response(status, text="<html>nope</html>"))
    with pytest.raises(error) as info:
        run_send(script)
    assert len(script.requests) == 1 and waits == []
    assert info.value.status == status
    assert info.value.url == REDACTED
    assert info.value.issues == ()
    assert f"HTTP {status}" in str(info.value)


def test_bad_request_carries_the_operation_outcome_issues() -> None:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": "Unknown search parameter 'colour'"},
            {"severity": "warning", "code": "processing", "details": {"text": "_count reduced to 100"}},
        ],
    }
    with pytest.raises(RequestRejected) as info:
        run_send(Script(httpx.Response(400, json=body)))
    assert info.value.issues == (
        "error: Unknown search parameter 'colour'",
        "warning: _count reduced to 100",
    )
    assert "Unknown search parameter 'colour'" in str(info.value)


def test_streamed_error_response_is_read_for_its_outcome() -> None:
    script = Script(outcome(404, "Patient/123 is not known"))
    with pytest.raises(RemoteNotFound) as info:
        run_send(script, stream=True)
    assert info.value.issues == ("error: Patient/123 is not known",)


def test_error_for_status_names_the_retries_and_what_to_do() -> None:
    failed = error_for_status(502, url=REDACTED, what="FHIR read", retried=3)
    assert isinstance(failed, ServerFailed)
    assert str(failed) == f"FHIR read failed with HTTP 502 after 3 retries at {REDACTED}"
    refused = error_for_status(401, url=REDACTED, what="FHIR read")
    assert "check the user, password, token or client registration" in str(refused)
    assert isinstance(error_for_status(429, url=REDACTED, what="x"), ServerFailed)


# -- requests that are not idempotent -------------------------------------------------------------


def test_post_is_not_retried_on_500(waits: list[float]) -> None:
    script = Script(httpx.Response(500), httpx.Response(200))
    with pytest.raises(ServerFailed) as info:
        run_send(script, method="POST", idempotent=False)
    assert len(script.requests) == 1
    assert info.value.status == 500


@pytest.mark.parametrize("status", [503, 429])
def test_post_is_retried_on_503_and_429(status: int, waits: list[float]) -> None:
    script = Script(httpx.Response(status), httpx.Response(200))
    assert run_send(script, method="POST", idempotent=False).status_code == 200
    assert [r.method for r in script.requests] == ["POST", "POST"]
    assert script.requests[1].content == script.requests[0].content != b""


def test_post_is_retried_after_a_refused_connection(waits: list[float]) -> None:
    script = Script(httpx.ConnectError("[Errno 111] Connection refused"), httpx.Response(200))
    assert run_send(script, method="POST", idempotent=False).status_code == 200
    assert len(script.requests) == 2


def test_post_is_not_retried_after_a_read_timeout(waits: list[float]) -> None:
    script = Script(httpx.ReadTimeout("timed out"), httpx.Response(200))
    with pytest.raises(ServerTimeout):
        run_send(script, method="POST", idempotent=False)
    assert len(script.requests) == 1


def test_post_is_not_retried_after_a_dropped_connection(waits: list[float]) -> None:
    script = Script(httpx.RemoteProtocolError("peer closed connection"), httpx.Response(200))
    with pytest.raises(ServerUnreachable):
        run_send(script, method="POST", idempotent=False)
    assert len(script.requests) == 1


# -- transport failures ---------------------------------------------------------------------------


def test_refused_connection_becomes_server_unreachable_after_retries(waits: list[float]) -> None:
    script = Script(*(httpx.ConnectError("[Errno 111] Connection refused") for _ in range(3)))
    with pytest.raises(ServerUnreachable) as info:
        run_send(script)
    assert len(script.requests) == 3 and len(waits) == 2
    assert info.value.url == REDACTED
    assert "Connection refused" in str(info.value)
    assert info.value.__cause__ is None  # raised "from None": no httpx traceback with the full URL


def test_read_timeout_becomes_server_timeout_after_retries(waits: list[float]) -> None:
    script = Script(*(httpx.ReadTimeout("timed out") for _ in range(3)))
    with pytest.raises(ServerTimeout) as info:
        run_send(script)
    assert len(script.requests) == 3
    assert "ReadTimeout" in str(info.value)


def test_read_timeout_then_success_is_retried(waits: list[float]) -> None:
    script = Script(httpx.ReadTimeout("timed out"), httpx.Response(200))
    assert run_send(script).status_code == 200
    assert len(script.requests) == 2


def test_pool_timeout_is_not_retried(waits: list[float]) -> None:
    script = Script(httpx.PoolTimeout("no free connection"), httpx.Response(200))
    with pytest.raises(ServerTimeout):
        run_send(script)
    assert len(script.requests) == 1


def test_unsupported_protocol_is_not_retried(waits: list[float]) -> None:
    script = Script(httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."))
    with pytest.raises(ServerUnreachable):
        run_send(script)
    assert len(script.requests) == 1


# -- no identifiers in messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    "answers",
    [
        [outcome(503, "busy") for _ in range(3)],
        [httpx.Response(404)],
        [httpx.Response(401)],
        [httpx.Response(400)],
        [httpx.ConnectError("[Errno 111] Connection refused") for _ in range(3)],
        [httpx.ReadTimeout("timed out") for _ in range(3)],
    ],
    ids=["5xx", "404", "401", "400", "refused", "timeout"],
)
def test_error_messages_never_contain_the_query_string(
    answers: list[httpx.Response | Exception], waits: list[float]
) -> None:
    with pytest.raises(ServerError) as info:
        run_send(Script(*answers))
    assert "SECRET-MRN" not in str(info.value)
    assert "identifier=" not in str(info.value)
    assert info.value.url == REDACTED


def test_redact_url_drops_query_fragment_and_credentials() -> None:
    assert redact_url("https://user:pa55@fhir.example.org/fhir/Patient?name=Doe#x") == REDACTED
    assert redact_url(httpx.URL(URL)) == REDACTED


# -- Retry-After, OperationOutcome, policy --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("soon", None),
        ("-3", None),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),  # 100 s after the epoch, "now" is 40 s after it
        ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),  # in the past
    ],
)
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, now=40.0) == seconds


def test_retry_after_with_non_ascii_digits_is_unreadable_not_an_error() -> None:
    assert retry_after_seconds("²") is None  # httpx decodes a b"\xb2" header byte as latin-1 "²"


def test_outcome_issues_reads_diagnostics_details_and_code() -> None:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "diagnostics": "first", "details": {"text": "ignored"}},
            {"details": {"text": "second"}},
            {"severity": "fatal", "code": "exception"},
            "not an issue",
            {"severity": "information"},
        ],
    }
    assert outcome_issues(body) == ("error: first", "second", "fatal: exception")
    assert outcome_issues({"resourceType": "Bundle", "issue": [{"diagnostics": "x"}]}) == ()
    assert outcome_issues(["not", "a", "mapping"]) == ()
    assert outcome_issues(None) == ()


def test_retry_policy_wait() -> None:
    policy = RetryPolicy(attempts=5, backoff=1.0, max_wait=3.0)
    assert policy.wait(1, 2.5) == 2.5
    assert policy.wait(1, 99.0) == 3.0
    assert policy.wait(1, -4.0) == 0.0
    assert 0.75 <= policy.wait(1, None) <= 1.25
    assert policy.wait(5, None) == 3.0  # 16 s of backoff, capped


def test_retry_policy_needs_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)


def test_timeouts_become_an_httpx_timeout() -> None:
    timeout = Timeouts(connect=2.0, read=9.0).httpx()
    assert timeout.connect == 2.0
    assert timeout.read == 9.0
