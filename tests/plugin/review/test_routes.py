"""The review page over plain HTTP (no browser): logins, the queue, a case, dispositions, audit."""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path

import httpx
import pytest
from PIL import Image

from plugin.store import Store
from tests.plugin.review.conftest import (
    OTHER,
    PASSWORD,
    USER,
    Flagged,
    add_users,
    csrf_of,
    login,
    refile_flagged,
)
from tests.plugin.service.conftest import Serve

pytestmark = pytest.mark.slow


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60, follow_redirects=False)


def _decide(
    http: httpx.Client, case: str, form: str, version: str, status: str, note: str, assignee: str = ""
) -> httpx.Response:
    """Submit the disposition form of the case page ``form`` (its HTML)."""
    fields = {"csrf_token": csrf_of(form), "version": version, "status": status, "note": note}
    return http.post(f"{case}/disposition", data={**fields, "assignee": assignee})


def _audit(data_dir: Path) -> list[tuple[str, str | None, str | None, int]]:
    with Store.open(f"sqlite:///{data_dir / 'crosscheck.db'}") as store:
        events = store.audit_events(limit=500)
    return [(e.action, e.actor.kind, e.actor.id, e.status_code) for e in events]


@pytest.mark.parametrize("insecure", [False, True])
def test_no_anonymous_access_even_without_service_auth(serve: Serve, tmp_path: Path, insecure: bool) -> None:
    with serve(insecure_no_auth=insecure) as url, _client(url) as http:
        for path in ("/review", "/review/cases/1", "/review/studies/1.2.3", "/review/cases/1/overlay.png"):
            answer = http.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/review/login?next=")
        assert http.post("/review/cases/1/disposition", data={"version": "1"}).status_code == 303
        form = http.get("/review/login")
        assert form.status_code == 200 and 'type="password"' in form.text
        cookie = form.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/review" in cookie
        assert "default-src 'none'" in form.headers["content-security-policy"]


def test_wrong_password_is_refused_and_audited(serve: Serve, tmp_path: Path) -> None:
    add_users(tmp_path / "data")
    with serve() as url, _client(url) as http:
        refused = login(http, USER, "not the password at all")
        assert refused.status_code == 401
        assert "wrong" in refused.text
        assert http.get("/review").status_code == 303  # still not logged in
        forged = http.post(
            "/review/login", data={"user_name": USER, "password": PASSWORD, "csrf_token": "forged"}
        )
        assert forged.status_code == 403
        assert login(http).status_code == 303
        assert http.get("/review").status_code == 200
    events = _audit(tmp_path / "data")
    assert ("user.login", "anonymous", None, 401) in events
    assert ("user.login", "user", USER, 200) in events


def test_the_queue_lists_filters_and_searches(flagged: Flagged) -> None:
    with _client(flagged.url) as http:
        assert login(http).status_code == 303
        page = http.get("/review")
        assert page.status_code == 200
        assert f'href="/review/cases/{flagged.case_id}"' in page.text
        found = http.get("/review", params={"q": flagged.patient_id[:7], "sort": "score"})
        assert f"/review/cases/{flagged.case_id}" in found.text
        for params in ({"q": "no-such-patient"}, {"status": "confirmed-genuine"}, {"who": "mine"}):
            assert f"/review/cases/{flagged.case_id}" not in http.get("/review", params=params).text
        assert f"/review/cases/{flagged.case_id}" in http.get("/review", params={"who": "unassigned"}).text
        assert "Unknown status" in http.get("/review", params={"status": "bogus"}).text
    assert ("case.list", "user", USER, 200) in _audit(flagged.data_dir)


def test_the_case_page_shows_the_image_overlay_and_result(flagged: Flagged) -> None:
    with _client(flagged.url) as http:
        login(http)
        link = http.get(f"/review/studies/{flagged.study_instance_uid}")  # where the CDS Cards link
        assert link.status_code == 303 and link.headers["location"] == f"/review/cases/{flagged.case_id}"
        result_link = http.get(f"/review/results/{flagged.result_id}")
        assert result_link.headers["location"] == f"/review/cases/{flagged.case_id}"
        page = http.get(f"/review/cases/{flagged.case_id}")
        assert page.status_code == 200
        for words in ("Scores and calibration", "threshold", "Findings and evidence", "Similar images"):
            assert words in page.text
        src = re.search(r'id="frame" alt="[^"]*"\s+src="([^"]+)"', page.text)
        assert src, "no frame in the page"
        frame = http.get(src.group(1).replace("&amp;", "&"))
        assert frame.status_code == 200 and frame.headers["content-type"] == "image/png"
        pixels = Image.open(io.BytesIO(frame.content))
        assert pixels.mode == "L" and max(pixels.getextrema()) > min(pixels.getextrema())
        narrow = http.get(src.group(1).split("?")[0], params={"center": 0, "width": 1})
        assert narrow.content != frame.content  # the window changes the rendering
        overlay = Image.open(io.BytesIO(http.get(f"/review/cases/{flagged.case_id}/overlay.png").content))
        assert overlay.mode == "RGBA" and overlay.size == pixels.size
        alpha = overlay.getchannel("A").getextrema()
        assert alpha[0] == 0 and alpha[1] > 0  # transparent outside the examined window, not inside
        assert http.get(f"/review/cases/{flagged.case_id}/frames/nope/0.png").status_code == 404
        assert http.get("/review/cases/9999").status_code == 404
    events = _audit(flagged.data_dir)
    assert ("case.read", "user", USER, 200) in events


def test_a_disposition_goes_to_the_history_and_a_stale_form_is_refused(flagged: Flagged) -> None:
    case = f"/review/cases/{flagged.case_id}"
    with _client(flagged.url) as alice, _client(flagged.url) as bob:
        login(alice)
        login(bob, OTHER, PASSWORD + "!")
        alice_form, bob_form = alice.get(case).text, bob.get(case).text
        version = re.search(r'name="version" value="(\d+)"', alice_form)
        assert version
        no_csrf = alice.post(f"{case}/disposition", data={"version": version.group(1), "status": "in-review"})
        assert no_csrf.status_code == 403
        saved = _decide(
            alice, case, alice_form, version.group(1), "confirmed-fabricated", "generated pixels", USER
        )
        assert saved.status_code == 303
        page = alice.get(case).text
        assert "confirmed-fabricated" in page and "generated pixels" in page
        stale = _decide(bob, case, bob_form, version.group(1), "confirmed-genuine", "looks fine to me")
        assert stale.status_code == 409
        assert "changed by someone else" in stale.text and "looks fine to me" in stale.text
        comment = alice.post(f"{case}/comments", data={"csrf_token": csrf_of(page), "text": "sent to audit"})
        assert comment.status_code == 303
        assert "sent to audit" in alice.get(case).text
        logout = alice.post("/review/logout", data={"csrf_token": csrf_of(page)})
        assert logout.status_code == 303
        assert alice.get(case).status_code == 303
    events = _audit(flagged.data_dir)
    done = {(action, kind, who) for action, kind, who, _ in events}
    assert {("case.update", "user", USER), ("case.comment", "user", USER)} <= done  # by the queue
    assert ("user.logout", "user", USER, 200) in events


def test_the_case_page_draws_the_record_timeline_from_the_snapshot(flagged: Flagged) -> None:
    """The REST upload stored the record snapshot with the result; the page draws it, marks what
    the model weighed, and says so plainly once the snapshot is gone."""
    with Store.open(f"sqlite:///{flagged.data_dir / 'crosscheck.db'}") as store:
        snapshot = store.timeline(flagged.result_id)
        stored = store.get_result(flagged.result_id)
    assert snapshot is not None and stored is not None
    assert (snapshot.study_instance_uid, snapshot.patient_id) == (
        flagged.study_instance_uid,
        flagged.patient_id,
    )
    assert snapshot.of_kind("lab") and snapshot.of_kind("order") and snapshot.study_date is not None
    case = f"/review/cases/{flagged.case_id}"
    with _client(flagged.url) as http:
        login(http)
        page = http.get(case)
        assert page.status_code == 200
        section = page.text[page.text.index('<section id="timeline">') :]
        section = section[: section.index("</section>")]
        assert section.count('<svg class="chart"') == len({e.code for e in snapshot.of_kind("lab", "vital")})
        assert '<line class="study"' in section and '<rect class="band"' in section
        assert '<tr class="study-row">' in section
        for entry in snapshot.of_kind("order", "report", "condition"):
            assert f'data-reference="{entry.reference}"' in section
        weighed = {c["reference"] for c in stored.result.contributions} & snapshot.references
        assert weighed, "the model weighed none of the record's items"
        for reference in weighed:
            marked = re.search(rf'class="[^"]*weighed[^"]*" data-reference="{re.escape(reference)}"', section)
            ringed = re.search(
                rf'<circle class="weighed"[^>]*>\s*<circle[^>]*data-reference="{re.escape(reference)}"',
                section,
            )
            assert marked or ringed, f"{reference} is not marked as weighed"
        with sqlite3.connect(flagged.data_dir / "crosscheck.db") as db:
            db.execute("DELETE FROM record_snapshots")
        gone = http.get(case)
        assert gone.status_code == 200
        assert (
            "No record snapshot was kept for this result" in gone.text
            and '<svg class="chart"' not in gone.text
        )


def test_a_refiled_image_shows_the_original_beside_it(flagged: Flagged, cohort: Path) -> None:
    """The case's image filed again under another patient: the copy's case lists the original
    among its similar images, with the original's matching frame, and the original lists the copy."""
    copy_case, copy_uid = refile_flagged(flagged, cohort)
    with _client(flagged.url) as http:
        login(http)
        page = http.get(f"/review/cases/{copy_case}").text
        similar = page[page.index('id="similar"') :]
        assert flagged.study_instance_uid in similar and "another patient" in similar
        src = re.search(r'<img class="similar" src="([^"]+)"', similar)
        assert src and src.group(1).startswith(f"/review/cases/{flagged.case_id}/frames/")
        thumb = http.get(src.group(1))
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        assert max(Image.open(io.BytesIO(thumb.content)).getextrema()) > 0
        back = http.get(f"/review/cases/{flagged.case_id}").text
        assert copy_uid in back[back.index('id="similar"') :]
