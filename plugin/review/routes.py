"""The investigators' review page at ``/review``: log in, the case queue, a case, its disposition.

| route | what it is |
|---|---|
| ``GET/POST /review/login``, ``POST /review/logout`` | the login form (``Users.verify_password``); logout |
| ``GET /review`` | the queue: filters (status, assignee, mine, unassigned), sorting, search, pages |
| ``GET /review/cases/{id}`` | the case page: image, heatmap overlay, scores, findings, timeline, history |
| ``GET /review/studies/{StudyInstanceUID}`` | redirects to the study's case (the CDS Cards link here) |
| ``GET /review/results/{id}`` | redirects to the case of the result's study (the REST API links here) |
| ``GET /review/cases/{id}/frames/{series}/{n}.png`` | frame ``n`` of a series, PNG, ``?center=&width=`` |
| ``GET /review/cases/{id}/overlay.png``, ``heatmap.png`` | the heatmap overlay (transparent PNG), figure |
| ``POST /review/cases/{id}/disposition``, ``comments`` | status/assignee (with the case version); comment |

No anonymous access, whatever the service's other settings (``--insecure-no-auth`` included):
every route but the login form needs a session (`plugin.review.session`); without one a browser
is sent to the login form. Every POST checks the session's CSRF token. Every view and change is
audited (``user.login``, ``user.logout``, ``case.list``, ``case.read``; the queue records its own
``case.update`` and ``case.comment``), with ids only.

Password guessing is throttled (`plugin.store.throttle`, limits in `plugin.settings`): too many
failed logins for a user name, or from a client address, and further logins for that name or from
that address are refused for a lock-out that doubles each time, the password not even checked:
the login form again, HTTP 429 with ``Retry-After``, audited as ``user.login-throttled`` (the keyed
hashes' prefixes in its detail, never the name or address) and logged at INFO likewise.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from plugin.errors import CaseChangeRefused, CaseNotFound, StaleCase
from plugin.review.casefile import CaseFile, build_case_file
from plugin.review.imaging import StudyImages, Window, auto_window, frame_pixels, overlay_png, render_png
from plugin.review.imaging import series_frames as _series_frames
from plugin.review.session import COOKIE_NAME, ReviewSession, SessionManager, load_secret
from plugin.service.state import ServiceState, get_state
from plugin.settings import Settings
from plugin.store import (
    Actor,
    ActorKind,
    AuditAction,
    Case,
    CaseOrder,
    CaseQueue,
    CaseStatus,
    FabricationKind,
    LoginLock,
    LoginThrottle,
    ThrottlePolicy,
    Users,
)

__all__ = [
    "PAGE_SIZE",
    "ReviewParts",
    "case_page",
    "comment",
    "disposition",
    "frame",
    "heatmap_figure",
    "install_review",
    "login",
    "login_form",
    "logout",
    "overlay",
    "queue",
    "result_case",
    "router",
    "study_case",
    "templates",
    "throttle_policy",
]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/review", include_in_schema=False)

#: Cases per page of the queue.
PAGE_SIZE = 25

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def templates() -> Environment:
    """The review page's Jinja2 templates (HTML autoescaped)."""
    env = Environment(
        loader=PackageLoader("plugin.review", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["statuses"] = list(CaseStatus)
    env.globals["fabrication_kinds"] = list(FabricationKind)
    return env


@dataclass
class ReviewParts:
    """What the review page keeps in the service: sessions, the kept images, logins, the login
    throttle, templates."""

    sessions: SessionManager
    images: StudyImages
    users: Users
    throttle: LoginThrottle
    env: Environment

    @classmethod
    def of(cls, state: ServiceState) -> ReviewParts:
        parts = state.extras.get("review")
        if parts is None:
            data_dir = Path(state.settings.data_dir)
            secret = load_secret(data_dir)
            parts = cls(
                sessions=SessionManager(secret),
                images=StudyImages(data_dir / "images"),
                users=Users(state.store),
                throttle=LoginThrottle(state.store, secret, policy=throttle_policy(state.settings)),
                env=templates(),
            )
            state.extras["review"] = parts
        assert isinstance(parts, ReviewParts)
        return parts


def throttle_policy(settings: Settings) -> ThrottlePolicy:
    """The login throttle's limits from the service's settings (``login_*``)."""
    window = timedelta(seconds=settings.login_failure_window_s)
    longest = timedelta(seconds=settings.login_lockout_max_s)
    return ThrottlePolicy(
        max_failures=settings.login_max_failures,
        max_failures_per_address=settings.login_max_failures_per_address,
        window=window,
        lockout=timedelta(seconds=settings.login_lockout_s),
        max_lockout=longest,
        forget_after=max(timedelta(days=1), window, longest),
    )


class _LoginRequired(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class _CsrfRefused(Exception):
    pass


def install_review(app: FastAPI) -> None:
    """Add the review page's routes, static files and its redirect-to-login answer to ``app``."""

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _LoginRequired)
        return RedirectResponse(f"/review/login?{urlencode({'next': exc.next_url})}", status_code=303)

    async def csrf_refused(request: Request, exc: Exception) -> Response:
        return HTMLResponse(
            "<!doctype html><title>Refused</title><p>This form is out of date or did not come from "
            "this site (CSRF token missing or wrong). Go back, reload the page and submit again.",
            status_code=403,
            headers=_HEADERS,
        )

    app.add_exception_handler(_LoginRequired, login_required)
    app.add_exception_handler(_CsrfRefused, csrf_refused)
    app.include_router(router)
    app.mount("/review/static", StaticFiles(directory=Path(__file__).parent / "static"), name="review-static")


# ---------------------------------------------------------------------------------- helpers


def _page(parts: ReviewParts, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = parts.env.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def _session(request: Request, parts: ReviewParts) -> ReviewSession | None:
    return parts.sessions.from_cookie(request.cookies.get(COOKIE_NAME))


def _set_cookie(request: Request, response: Response, parts: ReviewSession, sessions: SessionManager) -> None:
    response.set_cookie(
        COOKIE_NAME,
        sessions.cookie_value(parts),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/review",
    )


async def _logged_in(request: Request) -> tuple[ServiceState, ReviewParts, ReviewSession]:
    state = get_state(request)
    parts = ReviewParts.of(state)
    session = _session(request, parts)
    if session is not None and session.user_name is not None:
        user = await asyncio.to_thread(parts.users.user, session.user_name)
        if user is not None and user.active:
            return state, parts, session
        parts.sessions.end(session)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise _LoginRequired(target)


async def _posted(request: Request, csrf_token: str) -> tuple[ServiceState, ReviewParts, ReviewSession, str]:
    """A POST form's session, its CSRF token checked; and the user's name."""
    state, parts, session = await _logged_in(request)
    _check_csrf(session, csrf_token)
    assert session.user_name is not None
    return state, parts, session, session.user_name


def _check_csrf(session: ReviewSession, token: str | None) -> None:
    if not session.csrf_ok(token):
        raise _CsrfRefused()


def _actor(session: ReviewSession) -> Actor:
    return Actor(ActorKind.USER, session.user_name)


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/review") and not value.startswith("//") and "\\" not in value:
        return value
    return "/review"


# ---------------------------------------------------------------------------------- login


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    parts = ReviewParts.of(get_state(request))
    session = _session(request, parts) or parts.sessions.new()
    response = _page(parts, "login.html.j2", session=session, next=_safe_next(next), error=None)
    _set_cookie(request, response, session, parts.sessions)
    return response


@router.post("/login")
async def login(
    request: Request,
    user_name: str = Form(default="", max_length=200),
    password: str = Form(default="", max_length=1000),
    csrf_token: str = Form(default=""),
    next: str = Form(default="/review"),
) -> Response:
    state = get_state(request)
    parts = ReviewParts.of(state)
    session = _session(request, parts)
    if session is None:  # no form of ours was loaded first
        return RedirectResponse(f"/review/login?{urlencode({'next': _safe_next(next)})}", status_code=303)
    _check_csrf(session, csrf_token)
    address = request.client.host if request.client is not None else None
    lock = await asyncio.to_thread(parts.throttle.attempt, user_name, address)
    if lock is not None:  # refused before the password is looked at
        return await _throttled(state, parts, session, next, lock)
    user = await asyncio.to_thread(parts.users.verify_password, user_name, password)
    if user is None:
        await state.audit(Actor(ActorKind.ANONYMOUS), AuditAction.USER_LOGIN, status=401)
        return _page(
            parts,
            "login.html.j2",
            status=401,
            session=session,
            next=_safe_next(next),
            error="The user name or password is wrong, or the login is disabled.",
        )
    await asyncio.to_thread(parts.throttle.succeeded, user_name, address)
    parts.sessions.end(session)
    fresh = parts.sessions.new(user.user_name)
    await state.audit(Actor(ActorKind.USER, user.user_name), AuditAction.USER_LOGIN)
    response = RedirectResponse(_safe_next(next), status_code=303)
    _set_cookie(request, response, fresh, parts.sessions)
    return response


async def _throttled(
    state: ServiceState, parts: ReviewParts, session: ReviewSession, next: str, lock: LoginLock
) -> Response:
    """The answer to a login attempt refused by a lock-out: audited and logged with the keyed
    hashes only, the form again with 429 and ``Retry-After``; nothing says whether the user exists."""
    by = "+".join(key.kind.value for key in lock.by)
    keys = [key.hash[:16] for key in lock.by]
    logger.info(
        "review login refused: locked out by %s (key %s, lock-out %d%s), %d s left",
        by,
        ",".join(keys),
        lock.lockouts,
        ", started now" if lock.started else "",
        lock.retry_after_s,
    )
    detail = {
        "by": [key.kind.value for key in lock.by],
        "keys": keys,
        "lockouts": lock.lockouts,
        "started": lock.started,
        "retry_after_s": lock.retry_after_s,
    }
    await state.audit(Actor(ActorKind.ANONYMOUS), AuditAction.USER_LOGIN_THROTTLED, status=429, detail=detail)
    response = _page(
        parts,
        "login.html.j2",
        status=429,
        session=session,
        next=_safe_next(next),
        error=(
            "Too many failed logins for this user name or from this address: logins are refused until "
            f"{lock.until:%H:%M} UTC. Try again in {_wait(lock.retry_after_s)}."
        ),
    )
    response.headers["Retry-After"] = str(lock.retry_after_s)
    return response


def _wait(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"


@router.post("/logout")
async def logout(request: Request, csrf_token: str = Form(default="")) -> Response:
    state, parts, session = await _logged_in(request)
    _check_csrf(session, csrf_token)
    parts.sessions.end(session)
    await state.audit(_actor(session), AuditAction.USER_LOGOUT)
    response = RedirectResponse("/review/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/review")
    return response


# ---------------------------------------------------------------------------------- the queue


@router.get("")
async def queue(
    request: Request,
    status: str = Query(default=""),
    who: str = Query(default="all", max_length=100),
    sort: str = Query(default="rank"),
    q: str = Query(default="", max_length=100),
    page: int = Query(default=1, ge=1, le=100_000),
) -> Response:
    state, parts, session = await _logged_in(request)
    cases = CaseQueue(state.store)
    filters: dict[str, Any] = {"search": q or None}
    error = None
    try:
        filters["status"] = CaseStatus(status) if status else None
        order = CaseOrder(sort)
    except ValueError:
        filters["status"], order, error = None, CaseOrder.RANK, "Unknown status or sort order: showing all."
    if who == "mine":
        filters["assignee"] = session.user_name
    elif who == "unassigned":
        filters["unassigned"] = True
    elif who.startswith("user:"):
        filters["assignee"] = who.removeprefix("user:")
    total = await asyncio.to_thread(partial(cases.count_cases, **filters))
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(page, pages)
    listed = await asyncio.to_thread(
        partial(cases.cases, **filters, order_by=order, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    )
    users = await asyncio.to_thread(parts.users.users)
    await state.audit(
        _actor(session),
        AuditAction.CASE_LIST,
        detail={"cases": [c.id for c in listed], "page": page, "sort": order.value},
    )
    query = {"status": status, "who": who, "sort": order.value, "q": q}
    return _page(
        parts,
        "queue.html.j2",
        session=session,
        cases=listed,
        total=total,
        page=page,
        pages=pages,
        query=query,
        page_link=lambda n: "/review?" + urlencode({**query, "page": n}),
        users=[u for u in users if u.active],
        error=error,
    )


# ---------------------------------------------------------------------------------- links in


@router.get("/studies/{study_instance_uid}")
async def study_case(request: Request, study_instance_uid: str) -> Response:
    state, parts, session = await _logged_in(request)
    case = await asyncio.to_thread(CaseQueue(state.store).case_for_study, study_instance_uid)
    if case is None:
        await state.audit(_actor(session), AuditAction.CASE_READ, study_instance_uid=None, status=404)
        return _page(parts, "missing.html.j2", status=404, session=session, what="this study")
    return RedirectResponse(f"/review/cases/{case.id}", status_code=303)


@router.get("/results/{result_id}")
async def result_case(request: Request, result_id: str) -> Response:
    state, parts, session = await _logged_in(request)
    stored = await asyncio.to_thread(state.store.get_result, result_id)
    case = None
    if stored is not None:
        uid = stored.result.case.study_instance_uid
        case = await asyncio.to_thread(CaseQueue(state.store).case_for_study, uid)
    if case is None:
        await state.audit(_actor(session), AuditAction.CASE_READ, status=404)
        return _page(parts, "missing.html.j2", status=404, session=session, what="this result")
    return RedirectResponse(f"/review/cases/{case.id}", status_code=303)


# ---------------------------------------------------------------------------------- a case


async def _case_or_404(state: ServiceState, case_id: int) -> Case | None:
    return await asyncio.to_thread(CaseQueue(state.store).case, case_id)


async def _case_file(state: ServiceState, parts: ReviewParts, case: Case) -> CaseFile:
    return await asyncio.to_thread(
        partial(
            build_case_file,
            case,
            store=state.store,
            data_dir=Path(state.settings.data_dir),
            images=parts.images,
            hash_index=state.engine.hash_index,
        )
    )


async def _case_page(
    request: Request,
    state: ServiceState,
    parts: ReviewParts,
    session: ReviewSession,
    case: Case,
    *,
    status: int = 200,
    message: str | None = None,
    form: dict[str, Any] | None = None,
) -> Response:
    file = await _case_file(state, parts, case)
    users = await asyncio.to_thread(parts.users.users)
    await state.audit(
        _actor(session),
        AuditAction.CASE_READ,
        result_id=case.result_id,
        study_instance_uid=case.study_instance_uid,
        detail={"case": case.id, "version": case.version},
    )
    return _page(
        parts,
        "case.html.j2",
        status=status,
        session=session,
        file=file,
        case=case,
        users=[u for u in users if u.active],
        message=message,
        form=form or {},
    )


@router.get("/cases/{case_id}")
async def case_page(request: Request, case_id: int) -> Response:
    state, parts, session = await _logged_in(request)
    case = await _case_or_404(state, case_id)
    if case is None:
        await state.audit(_actor(session), AuditAction.CASE_READ, status=404, detail={"case": case_id})
        return _page(parts, "missing.html.j2", status=404, session=session, what=f"case {case_id}")
    return await _case_page(request, state, parts, session, case)


@router.post("/cases/{case_id}/disposition")
async def disposition(
    request: Request,
    case_id: int,
    csrf_token: str = Form(default=""),
    version: int = Form(...),
    status: str = Form(default=""),
    assignee: str = Form(default=""),
    note: str = Form(default="", max_length=20_000),
    fabrication_kind: str = Form(default=""),
) -> Response:
    state, parts, session, user_name = await _posted(request, csrf_token)
    case = await _case_or_404(state, case_id)
    if case is None:
        return _page(parts, "missing.html.j2", status=404, session=session, what=f"case {case_id}")
    form = {"status": status, "assignee": assignee, "note": note, "fabrication_kind": fabrication_kind}
    try:
        new_status = CaseStatus(status) if status else None
        new_assignee = assignee or None
        # the kind is taken with confirmed-fabricated only; "" is "not said"
        kind = fabrication_kind or None  # the queue checks it (a StrEnum compares equal to its value)
        fabricated = (new_status or case.status) is CaseStatus.CONFIRMED_FABRICATED
        kind_changes = fabricated and kind != case.fabrication_kind
        await asyncio.to_thread(
            partial(
                CaseQueue(state.store).update_case,
                case_id,
                actor=user_name,
                expected_version=version,
                status=None if new_status is case.status else new_status,
                assignee=None if new_assignee == case.assignee else new_assignee,
                unassign=new_assignee is None and case.assignee is not None,
                note=note.strip() or None,
                fabrication_kind=kind if kind_changes else None,
                clear_fabrication_kind=kind_changes and kind is None,
            )
        )
    except StaleCase as exc:
        current = await _case_or_404(state, case_id) or case
        message = (
            f"Not saved: case {case_id} was changed by someone else after you opened it (your form was "
            f"for version {version}, the case is now at version {exc.current_version}). Read its history "
            "below, then submit your decision again."
        )
        return await _case_page(
            request, state, parts, session, current, status=409, message=message, form=form
        )
    except (CaseChangeRefused, CaseNotFound, ValueError) as exc:
        message = f"Not saved: {exc}"
        return await _case_page(request, state, parts, session, case, status=422, message=message, form=form)
    return RedirectResponse(f"/review/cases/{case_id}#history", status_code=303)


@router.post("/cases/{case_id}/comments")
async def comment(
    request: Request,
    case_id: int,
    csrf_token: str = Form(default=""),
    text: str = Form(default="", max_length=20_000),
) -> Response:
    state, parts, session, user_name = await _posted(request, csrf_token)
    try:
        await asyncio.to_thread(CaseQueue(state.store).comment, case_id, user_name, text)
    except CaseNotFound:
        return _page(parts, "missing.html.j2", status=404, session=session, what=f"case {case_id}")
    except ValueError as exc:
        case = await _case_or_404(state, case_id)
        assert case is not None
        return await _case_page(
            request, state, parts, session, case, status=422, message=f"Comment not saved: {exc}"
        )
    return RedirectResponse(f"/review/cases/{case_id}#history", status_code=303)


# ---------------------------------------------------------------------------------- images


def _png(body: bytes) -> Response:
    return Response(body, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get("/cases/{case_id}/frames/{series_instance_uid}/{index}.png")
async def frame(
    request: Request,
    case_id: int,
    series_instance_uid: str,
    index: int,
    center: float | None = Query(default=None),
    width: float | None = Query(default=None, gt=0),
) -> Response:
    state, parts, _ = await _logged_in(request)
    case = await _case_or_404(state, case_id)
    if case is None:
        return Response(status_code=404)

    def render() -> bytes | None:
        study = parts.images.study(case.study_instance_uid)
        series = (
            None
            if study is None
            else next((s for s in study.series if s.series_instance_uid == series_instance_uid), None)
        )
        if series is None:
            return None
        frames = _series_frames(series)
        if not 0 <= index < len(frames):
            return None
        pixels = frame_pixels(frames[index])
        window = Window(center, width) if center is not None and width is not None else auto_window(pixels)
        return render_png(pixels, window)

    body = await asyncio.to_thread(render)
    return Response(status_code=404) if body is None else _png(body)


@router.get("/cases/{case_id}/overlay.png")
async def overlay(request: Request, case_id: int) -> Response:
    state, _, _ = await _logged_in(request)
    case = await _case_or_404(state, case_id)
    if case is None:
        return Response(status_code=404)
    from plugin.review.casefile import heatmap_data

    data = heatmap_data(Path(state.settings.data_dir), case.result_id)
    if data is None:
        return Response(status_code=404)
    return _png(await asyncio.to_thread(overlay_png, data))


@router.get("/cases/{case_id}/heatmap.png")
async def heatmap_figure(request: Request, case_id: int) -> Response:
    state, _, _ = await _logged_in(request)
    case = await _case_or_404(state, case_id)
    path = None if case is None else state.engine.evidence.heatmap_path(case.result_id)
    if path is None or not path.is_file():
        return Response(status_code=404)
    return _png(await asyncio.to_thread(path.read_bytes))
