"""Errors as HTTP answers: one table from exception class to status, an OperationOutcome body.

Bad input is a 4xx naming what was wrong (and where: ``expression`` holds the
field path); a server behind us that failed is a 502/504; a missing prefetch is
412 as CDS Hooks says; nothing ever answers with a stack trace. Messages come
from our own exceptions, which name files, resource ids and UIDs, never patient
data; unexpected exceptions are answered with a generic text and logged by type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from connectors import errors as ce
from fusion import errors as fe
from plugin import errors as pe

__all__ = ["ERROR_STATUS", "install_error_handlers", "operation_outcome", "status_for"]

logger = logging.getLogger(__name__)

#: (exception class, HTTP status, OperationOutcome issue code); the first match wins.
ERROR_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (pe.PrefetchUnavailable, 412, "incomplete"),
    (pe.CdsJwksUnavailable, 503, "transient"),  # the client's keys are unreachable: ours to fix, not theirs
    (pe.CdsAuthenticationError, 401, "login"),
    (pe.ApiAuthenticationError, 401, "login"),
    (pe.RequestInvalid, 400, "invalid"),
    (pe.CdsRequestInvalid, 400, "invalid"),
    (pe.UnknownCdsService, 404, "not-found"),
    (pe.UnsuitableResult, 422, "processing"),
    (pe.ResultNotFound, 404, "not-found"),
    (ce.FhirResourceInvalid, 422, "structure"),
    (ce.FhirBundleInvalid, 400, "structure"),
    (ce.PixelDataTooLarge, 413, "too-costly"),
    (ce.UnsupportedTransferSyntax, 415, "not-supported"),
    (ce.DicomError, 400, "structure"),
    (ce.NoImagingFound, 404, "not-found"),
    (ce.NoInputFound, 400, "required"),
    (ce.RemoteNotFound, 404, "not-found"),
    (ce.ServerTimeout, 504, "timeout"),
    (ce.ServerError, 502, "transient"),
    (fe.CaseNotScorable, 422, "processing"),
    (pe.DuplicateCard, 409, "duplicate"),
    (pe.CaseNotFound, 404, "not-found"),
    (pe.UserNotFound, 404, "not-found"),
    (pe.StaleCase, 409, "conflict"),
    (pe.DuplicateUser, 409, "duplicate"),
    (pe.CaseChangeRefused, 422, "business-rule"),
    (pe.StoreError, 503, "transient"),
    (pe.PluginError, 400, "invalid"),
)


def status_for(exc: BaseException) -> tuple[int, str]:
    for cls, status, code in ERROR_STATUS:
        if isinstance(exc, cls):
            return status, code
    return 500, "exception"


def operation_outcome(
    status: int,
    code: str,
    diagnostics: str,
    *,
    expressions: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
    issues: Sequence[dict[str, Any]] | None = None,
) -> JSONResponse:
    """A FHIR R4 OperationOutcome with one issue (or ``issues``), as the response body."""
    if issues is None:
        issue: dict[str, Any] = {
            "severity": "error" if status < 500 else "fatal",
            "code": code,
            "diagnostics": diagnostics,
        }
        if expressions:
            issue["expression"] = list(expressions)
        issues = [issue]
    return JSONResponse(
        {"resourceType": "OperationOutcome", "issue": list(issues)},
        status_code=status,
        headers=headers,
        media_type="application/fhir+json" if status != 401 else "application/json",
    )


def _validation_issues(exc: RequestValidationError) -> list[dict[str, Any]]:
    issues = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
        issues.append(
            {
                "severity": "error",
                "code": "required" if error.get("type") == "missing" else "invalid",
                "diagnostics": f"{where or 'body'}: {error.get('msg', 'invalid')}",
                **({"expression": [where]} if where else {}),
            }
        )
    return issues or [{"severity": "error", "code": "invalid", "diagnostics": "the request is invalid"}]


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to an OperationOutcome answer (see `ERROR_STATUS`)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return operation_outcome(400, "invalid", "the request is invalid", issues=_validation_issues(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "not-supported", 401: "login", 403: "forbidden"}.get(
            exc.status_code, "processing"
        )
        return operation_outcome(exc.status_code, code, str(exc.detail), headers=exc.headers)

    async def _known(request: Request, exc: Exception) -> JSONResponse:
        status, code = status_for(exc)
        if status == 500:
            route = getattr(request.scope.get("route"), "path", "unmatched")  # the template: no ids in it
            logger.error("unexpected %s answering %s %s", type(exc).__name__, request.method, route)
            return operation_outcome(500, code, "internal error; the service log has its type")
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else None
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problems = getattr(exc, "problems", None) if isinstance(exc, pe.CdsRequestInvalid) else None
        if problems:
            issues = [
                {"severity": "error", "code": code, "diagnostics": p.message, "expression": [p.location]}
                for p in problems
            ]
            return operation_outcome(status, code, message, headers=headers, issues=issues)
        return operation_outcome(status, code, message, headers=headers)

    # Our own error families are answered here; anything else reaches Starlette's last-resort
    # handler below (which also logs it): still an OperationOutcome, never a trace in the body.
    for family in (pe.PluginError, ce.ConnectorError, fe.FusionError):
        app.add_exception_handler(family, _known)
    app.add_exception_handler(Exception, _known)
