"""The service's duplicate check over HTTP: what it kept before a restart is still searched after."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.plugin.service.conftest import API_KEY, Serve, refiled_parts, study_files

pytestmark = pytest.mark.slow

KEY = {"X-API-Key": API_KEY}


def _findings(response: httpx.Response) -> dict[str, dict]:
    assert response.status_code == 200, response.text
    (item,) = response.json()["results"]
    return {f["code"]: f for f in item["result"]["findings"]}


def test_an_image_scored_before_a_restart_is_found_refiled_after_it(serve: Serve, cohort: Path) -> None:
    original_case, _, original = study_files(cohort, 0)
    other = next(
        i for i in range(1, 20) if study_files(cohort, i)[0]["patient_id"] != original_case["patient_id"]
    )
    _, other_bundle, other_dicom = study_files(cohort, other)
    upload = [("dicom", (p.name, p.read_bytes(), "application/dicom")) for p in original]
    with serve() as url:
        first = httpx.post(f"{url}/v1/crosscheck", files=upload, headers=KEY, timeout=60)
        assert "duplicate.other-patient" not in _findings(first)
    refiled = [
        *refiled_parts(original, other_dicom[0]),
        ("bundle", ("bundle.json", other_bundle.read_bytes(), "application/fhir+json")),
    ]
    with serve() as url:  # a new process on the same data folder
        again = httpx.post(f"{url}/v1/crosscheck", files=refiled, headers=KEY, timeout=60)
    found = _findings(again)
    assert "duplicate.other-patient" in found, sorted(found)
    cited = [
        e["value"]
        for e in found["duplicate.other-patient"]["evidence"]
        if e["reference"] == "StudyInstanceUID"
    ]
    assert original_case["study_instance_uid"] in cited
