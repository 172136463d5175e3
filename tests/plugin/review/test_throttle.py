"""Password guessing on the review page's login, over HTTP with the service running: lock-outs per user
name and per address, 429 with Retry-After, audited, kept across a restart; X-Forwarded-For believed
from a trusted proxy only."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from plugin.review.routes import throttle_policy
from plugin.settings import Settings
from plugin.store import AuditEvent, Store, ThrottlePolicy
from plugin.store.models import LoginThrottleRow
from tests.plugin.review.conftest import OTHER, PASSWORD, USER, add_users, login
from tests.plugin.service.conftest import Serve

OTHER_PASSWORD = PASSWORD + "!"


def _client(url: str, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60, follow_redirects=False, headers=headers)


def _db(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'crosscheck.db'}"


def _time_passes(data_dir: Path, by: timedelta) -> None:
    """``by`` goes by for the throttle: every time it stored moves that far back."""
    with Store.open(_db(data_dir)) as store, Session(store.engine) as session, session.begin():
        for row in session.scalars(sa.select(LoginThrottleRow)):
            row.updated_at -= by
            row.window_start = None if row.window_start is None else row.window_start - by
            row.locked_until = None if row.locked_until is None else row.locked_until - by


def _throttled_events(data_dir: Path) -> list[AuditEvent]:
    with Store.open(_db(data_dir)) as store:
        return list(reversed(store.audit_events(limit=500, action="user.login-throttled")))


def _throttle_rows(data_dir: Path) -> list[tuple[Any, ...]]:
    with Store.open(_db(data_dir)) as store, store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text("SELECT * FROM login_throttle"))]


def _refused(answer: httpx.Response, longest_s: int) -> int:
    """Checks a throttled answer (the form again, 429, Retry-After); its Retry-After."""
    assert answer.status_code == 429, answer.text
    retry_after = int(answer.headers["retry-after"])
    assert 0 < retry_after <= longest_s
    assert "Too many failed logins" in answer.text and 'type="password"' in answer.text
    return retry_after


def _message(answer: httpx.Response) -> str:
    found = re.search(r'<p class="message error" role="alert">([^<]*)</p>', answer.text)
    assert found, "no message on the page"
    return re.sub(r"\d+", "N", found.group(1))


@pytest.mark.slow
def test_five_wrong_passwords_lock_the_name_out_not_the_address_until_its_limit(
    serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="plugin")
    data_dir = tmp_path / "data"
    add_users(data_dir)
    with serve(login_max_failures_per_address=8) as url, _client(url) as alice, _client(url) as bob:
        for n in range(5):
            assert login(alice, USER, f"guess number {n}").status_code == 401
        _refused(login(alice), 300)  # the right password, refused unchecked
        assert alice.get("/review").status_code == 303  # not logged in
        # another user from the same address (127.0.0.1) still gets in
        assert login(bob, OTHER, OTHER_PASSWORD).status_code == 303
        assert bob.get("/review").status_code == 200
        # ... until the address has 8 failures, whichever names they were for
        with _client(url) as guesser:
            assert login(guesser, OTHER, "wrong once").status_code == 401
            assert login(guesser, OTHER, "wrong twice").status_code == 401
            assert login(guesser, "nobody", "wrong as well").status_code == 401
            _refused(login(guesser, OTHER, OTHER_PASSWORD), 300)
            _refused(login(guesser, "carol", "anything at all"), 300)
        _time_passes(data_dir, timedelta(minutes=16))  # both lock-outs and the window are over
        with _client(url) as again:
            assert login(again).status_code == 303
            assert again.get("/review").status_code == 200
        with _client(url) as again:
            assert login(again, OTHER, OTHER_PASSWORD).status_code == 303

    events = _throttled_events(data_dir)
    assert [(e.actor.kind, e.actor.id, e.status_code, e.outcome) for e in events] == [
        ("anonymous", None, 429, "refused")
    ] * 3
    assert [e.detail["by"] for e in events] == [["user"], ["address"], ["address"]]
    assert [e.detail["started"] for e in events] == [True, True, False]
    assert events[0].detail["retry_after_s"] == 300 and events[0].detail["lockouts"] == 1
    assert all(len(key) == 16 for e in events for key in e.detail["keys"])
    # logged at INFO, and neither the names nor the address in clear, in the log or the table
    refusals = [r for r in caplog.records if "login refused" in r.getMessage()]
    assert len(refusals) == 3 and all(r.levelno == logging.INFO for r in refusals)
    plugin_log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("plugin"))
    stored = repr(_throttle_rows(data_dir))
    for clear in (USER, OTHER, "nobody", "carol", "127.0.0.1"):
        assert clear not in plugin_log
        assert clear not in stored
    assert stored != "[]"


@pytest.mark.slow
def test_a_lock_out_outlives_a_restart_and_says_nothing_of_who_exists(serve: Serve, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    add_users(data_dir)
    with serve() as url, _client(url) as http:
        for name in (USER, "nobody"):
            for n in range(5):
                assert login(http, name, f"guess number {n}").status_code == 401
        known, unknown = login(http), login(http, "nobody", PASSWORD)
        _refused(known, 300)
        _refused(unknown, 300)
        assert _message(known) == _message(unknown)
    with serve() as url, _client(url) as http:  # the same data folder: the lock-out is in the database
        _refused(login(http), 300)
        assert http.get("/review").status_code == 303
    assert len(_throttled_events(data_dir)) == 3


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [False, True], ids=["no-proxy-trusted", "proxy-trusted"])
def test_forwarded_for_is_believed_from_a_trusted_proxy_only(
    serve: Serve, tmp_path: Path, trusted: bool
) -> None:
    """Three failures forwarded for 203.0.113.1 reach the address limit of 3. Without a trusted
    proxy they count against the connection's address (127.0.0.1), so a header naming another
    client changes nothing; behind a trusted proxy the forwarded address is the one counted."""
    data_dir = tmp_path / "data"
    add_users(data_dir)
    proxies = ["127.0.0.1"] if trusted else []
    with serve(login_max_failures_per_address=3, trusted_proxies=proxies) as url:
        with _client(url, **{"X-Forwarded-For": "203.0.113.1"}) as first:
            for name in ("x1", "x2", "x3"):
                assert login(first, name, "a wrong password").status_code == 401
            _refused(login(first), 300)
        with _client(url, **{"X-Forwarded-For": "203.0.113.2"}) as second:
            answer = login(second)
            if trusted:
                assert answer.status_code == 303
            else:
                _refused(answer, 300)


def test_the_policy_comes_from_the_settings() -> None:
    settings = Settings(
        login_max_failures=3,
        login_max_failures_per_address=9,
        login_failure_window_s=60,
        login_lockout_s=30,
        login_lockout_max_s=120,
    )
    assert throttle_policy(settings) == ThrottlePolicy(
        max_failures=3,
        max_failures_per_address=9,
        window=timedelta(minutes=1),
        lockout=timedelta(seconds=30),
        max_lockout=timedelta(minutes=2),
        forget_after=timedelta(days=1),
    )
    defaults = throttle_policy(Settings())
    assert (defaults.max_failures, defaults.max_failures_per_address) == (5, 20)
    assert (defaults.window, defaults.lockout, defaults.max_lockout) == (
        timedelta(minutes=15),
        timedelta(minutes=5),
        timedelta(hours=1),
    )
