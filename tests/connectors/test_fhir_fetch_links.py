"""Whose record a study belongs to, and what changes when that record changes (`connectors.fhir.fetch`),
against a scripted FHIR server (`httpx.MockTransport`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx

from connectors.fhir.fetch import (
    PATIENT_SEARCHES,
    imaging_study_subjects,
    patients_with_identifier,
    record_versions,
)
from connectors.fhir.rest import FhirClient

BASE = "https://ehr.example.org/fhir"


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def _run(
    handler: Callable[[httpx.Request], httpx.Response], work: Callable[[FhirClient], Awaitable[Any]]
) -> Any:
    async def go() -> Any:
        async with FhirClient(BASE, transport=httpx.MockTransport(handler)) as client:
            return await work(client)

    return asyncio.run(go())


class Record:
    """A patient's record on a scripted server: each search answers with the resources of its type."""

    def __init__(self) -> None:
        self.resources: dict[str, list[dict[str, Any]]] = {
            "Patient": [{"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}}],
            "Observation": [
                {
                    "resourceType": "Observation",
                    "id": "o1",
                    "meta": {"versionId": "1", "lastUpdated": "2025-01-01"},
                },
                {"resourceType": "Observation", "id": "o2", "meta": {"versionId": "3"}},
            ],
            "Condition": [{"resourceType": "Condition", "id": "c1", "meta": {"lastUpdated": "2024-05-01"}}],
        }
        self.queries: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        query = dict(parse_qsl(request.url.query.decode()))
        self.queries.append(query)
        rtype = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json=_bundle(*self.resources.get(rtype, [])))

    def versions(self) -> tuple[str, ...]:
        result: tuple[str, ...] = _run(self, lambda c: record_versions(c, "p1"))
        return result


def test_record_versions_name_every_resource_of_the_record_with_its_version() -> None:
    record = Record()
    assert record.versions() == (
        "Condition/c1/_history/@2024-05-01",
        "Observation/o1/_history/1@2025-01-01",
        "Observation/o2/_history/3@",
        "Patient/p1/_history/1@",
    )
    assert len(record.queries) == len(PATIENT_SEARCHES) + 1  # the record's searches and the Patient
    assert all(q.get("_elements") == "meta" for q in record.queries)
    assert {q.get("patient") for q in record.queries} == {"p1", None}
    assert {"_id": "p1", "_elements": "meta", "_count": "200"} in record.queries


def test_record_versions_change_when_a_resource_is_updated_added_or_removed() -> None:
    record = Record()
    before = record.versions()
    record.resources["Observation"][1]["meta"]["versionId"] = "4"
    updated = record.versions()
    record.resources["Condition"].append({"resourceType": "Condition", "id": "c2"})
    added = record.versions()
    del record.resources["Condition"][0]
    removed = record.versions()
    assert len({before, updated, added, removed}) == 4


def test_record_versions_skip_searches_the_server_does_not_support() -> None:
    record = Record()
    capabilities = {"rest": [{"mode": "server", "resource": [{"type": "Patient"}, {"type": "Condition"}]}]}
    _run(record, lambda c: record_versions(c, "p1", capabilities=capabilities))
    assert len(record.queries) == 2


def test_imaging_study_subjects_are_the_patients_of_the_imaging_studies_with_the_uid() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(parse_qsl(request.url.query.decode())))
        return httpx.Response(
            200,
            json=_bundle(
                {"resourceType": "ImagingStudy", "id": "i1", "subject": {"reference": "Patient/p1"}},
                {"resourceType": "ImagingStudy", "id": "i2", "subject": {"reference": "Group/g1"}},
            ),
        )

    assert _run(handler, lambda c: imaging_study_subjects(c, "1.2.3")) == {"p1"}
    assert seen[0]["identifier"] == "urn:dicom:uid|urn:oid:1.2.3"


def test_patients_with_identifier_escape_the_token_search_characters() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(parse_qsl(request.url.query.decode())))
        return httpx.Response(200, json=_bundle({"resourceType": "Patient", "id": "p9"}))

    assert _run(handler, lambda c: patients_with_identifier(c, "A|B,C$D\\E")) == {"p9"}
    assert seen[0]["identifier"] == "A\\|B\\,C\\$D\\\\E"
