"""The review page's fixtures: an investigator's login, and a running service with a flagged case
(a cohort study uploaded through the REST API, as ``tests/plugin/service/test_rest.py`` does)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugin.store import CaseQueue, Store
from plugin.store.users import ScryptParams, Users
from tests.plugin.service.conftest import (
    API_KEY,
    Serve,
    cds_client,
    refiled_parts,
    scorer,
    serve,
    study_files,
)

__all__ = ["PASSWORD", "USER", "Flagged", "cds_client", "flagged", "login", "scorer", "serve"]

USER = "alice"
PASSWORD = "correct horse battery"
OTHER = "bob"


def add_users(data_dir: Path) -> None:
    """Two investigators, before the service starts (cheap scrypt: tests)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with Store.open(f"sqlite:///{data_dir / 'crosscheck.db'}") as store:
        users = Users(store, params=ScryptParams(n=2**10))
        users.create_user(USER, PASSWORD, display_name="Alice")
        users.create_user(OTHER, PASSWORD + "!")


def browser_api() -> Any:
    """Playwright's sync API, with Debian's Chromium present. Missing, the test is skipped on a
    developer's machine but fails in CI, where scripts/test.sh installs both."""
    problem = None
    if shutil.which("chromium") is None:
        problem = "Debian's chromium is not installed (scripts/test.sh installs it)"
    else:
        try:
            import playwright.sync_api as sync_api
        except ImportError:
            problem = "playwright is not installed (the test extra has it)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return sync_api


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no CSRF token"
    return found.group(1)


def login(http: httpx.Client, user: str = USER, password: str = PASSWORD) -> httpx.Response:
    """Log ``http`` (a client that keeps cookies) in through the form; the answer to the POST."""
    form = http.get("/review/login")
    assert form.status_code == 200
    return http.post(
        "/review/login",
        data={"user_name": user, "password": password, "csrf_token": csrf_of(form.text), "next": "/review"},
    )


@dataclass(frozen=True)
class Flagged:
    url: str
    data_dir: Path
    case_id: int
    result_id: str
    study_instance_uid: str
    patient_id: str


@pytest.fixture
def flagged(serve: Serve, cohort: Path, tmp_path: Path) -> Iterator[Flagged]:
    """A running service holding one flagged case (pat-000000's synthetic study), its heatmap
    written."""
    data_dir = tmp_path / "data"
    add_users(data_dir)
    entry, bundle, dicom = study_files(cohort, 0)
    parts = [("dicom", (p.name, p.read_bytes(), "application/dicom")) for p in dicom]
    parts.append(("bundle", ("bundle.json", bundle.read_bytes(), "application/fhir+json")))
    with serve(data_dir=data_dir) as url:
        answer = httpx.post(f"{url}/v1/crosscheck", files=parts, headers={"X-API-Key": API_KEY}, timeout=120)
        assert answer.status_code == 200, answer.text
        (item,) = answer.json()["results"]
        assert item["result"]["flagged"], "pat-000000's synthetic study should be flagged"
        heatmap = data_dir / "heatmaps" / f"{item['id']}.json"
        for _ in range(600):  # written after the answer, off the caller's path
            if heatmap.is_file():
                break
            time.sleep(0.1)
        assert heatmap.is_file(), "the engine wrote no heatmap data"
        with Store.open(f"sqlite:///{data_dir / 'crosscheck.db'}") as store:
            case = CaseQueue(store).case_for_study(item["result"]["case"]["study_instance_uid"])
        assert case is not None
        yield Flagged(
            url,
            data_dir,
            case.id,
            item["id"],
            case.study_instance_uid,
            entry["patient_id"],
        )


def refile_flagged(flagged: Flagged, cohort: Path) -> tuple[int, str]:
    """The flagged case's images filed again, under new UIDs, as a study of another patient (with
    that patient's Bundle), uploaded to the running service: the copy's case id and StudyInstanceUID
    (the duplicate check flags it)."""
    *_, original = study_files(cohort, 0)
    other = next(i for i in range(1, 20) if study_files(cohort, i)[0]["patient_id"] != flagged.patient_id)
    _, other_bundle, other_dicom = study_files(cohort, other)
    parts = [
        *refiled_parts(original, other_dicom[0]),
        ("bundle", ("bundle.json", other_bundle.read_bytes(), "application/fhir+json")),
    ]
    answer = httpx.post(
        f"{flagged.url}/v1/crosscheck", files=parts, headers={"X-API-Key": API_KEY}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    (item,) = answer.json()["results"]
    assert "duplicate.other-patient" in {f["code"] for f in item["result"]["findings"]}
    uid = item["result"]["case"]["study_instance_uid"]
    with Store.open(f"sqlite:///{flagged.data_dir / 'crosscheck.db'}") as store:
        copy = CaseQueue(store).case_for_study(uid)
    assert copy is not None
    return copy.id, uid
