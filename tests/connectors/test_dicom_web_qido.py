"""QIDO-RS study search: values encoded as Orthanc can match them, pages followed to the end."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from requests.adapters import BaseAdapter

from connectors.dicom.web import DicomWebSource, qido_query
from connectors.errors import AuthenticationFailed, ServerUnreachable


def _study(uid: str, patient: str = "P1", day: str = "20240105") -> dict:
    return {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00100020": {"vr": "LO", "Value": [patient]},
        "00080050": {"vr": "SH", "Value": [f"A{uid}"]},
        "00080020": {"vr": "DA", "Value": [day]},
        "00080061": {"vr": "CS", "Value": ["CT"]},
        "00201208": {"vr": "IS", "Value": [3]},
    }


class FakePacs(BaseAdapter):
    """A QIDO-RS ``/studies`` endpoint over a list of studies, honouring limit and offset (or not)."""

    def __init__(self, studies: list[dict], *, honour_offset: bool = True, status: int = 200) -> None:
        super().__init__()
        self.studies = studies
        self.honour_offset = honour_offset
        self.status = status
        self.urls: list[str] = []

    def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        assert request.url is not None
        self.urls.append(request.url)
        query = dict(parse_qsl(urlsplit(request.url).query))
        limit, offset = int(query.get("limit", 1000)), int(query.get("offset", 0))
        start = offset if self.honour_offset else 0
        response = requests.Response()
        response.status_code = self.status
        response.url = request.url
        response.request = request
        body = self.studies[start : start + limit] if self.status == 200 else {}
        response._content = json.dumps(body).encode()
        response.headers["Content-Type"] = "application/dicom+json"
        return response

    def close(self) -> None:
        pass


def _pacs(adapter: BaseAdapter) -> DicomWebSource:
    pacs = DicomWebSource("http://pacs.test/dicom-web")
    pacs._session.mount("http://", adapter)
    return pacs


def test_qido_values_keep_range_wildcard_and_list_characters_as_written() -> None:
    query = qido_query(
        {"StudyDate": "20240101-20240131", "AccessionNumber": "A1*", "StudyInstanceUID": "1.2,1.3"}
    )
    assert query == "StudyDate=20240101-20240131&AccessionNumber=A1*&StudyInstanceUID=1.2,1.3"


def test_qido_values_encode_what_a_query_cannot_hold() -> None:
    query = qido_query({"PatientID": "A B&C=D+E%F#", "includefield": ["PatientID", "StudyDate"]})
    assert query == "PatientID=A%20B%26C%3DD%2BE%25F%23&includefield=PatientID&includefield=StudyDate"


def test_pages_follow_by_offset_until_an_empty_page() -> None:
    adapter = FakePacs([_study(f"1.{i}") for i in range(5)])
    pages = list(_pacs(adapter).search_studies({"StudyDate": "20240101-20240131"}, page_size=2))
    assert [[r.study_instance_uid for r in p] for p in pages] == [["1.0", "1.1"], ["1.2", "1.3"], ["1.4"]]
    offsets = [dict(parse_qsl(urlsplit(u).query))["offset"] for u in adapter.urls]
    assert offsets == ["0", "2", "4", "6"]  # a short page is not taken as the end: a PACS may cap pages
    assert "StudyDate=20240101-20240131" in adapter.urls[0]  # not %2D: Orthanc would not decode it
    ref = pages[0][0]
    assert (ref.patient_id, ref.accession_number, ref.study_date, ref.modalities, ref.instances) == (
        "P1",
        "A1.0",
        "20240105",
        ("CT",),
        3,
    )


def test_a_pacs_that_ignores_offset_ends_the_search_instead_of_looping() -> None:
    adapter = FakePacs([_study(f"1.{i}") for i in range(3)], honour_offset=False)
    pages = list(_pacs(adapter).search_studies({"ModalitiesInStudy": "CT"}, page_size=2))
    assert [[r.study_instance_uid for r in p] for p in pages] == [["1.0", "1.1"]]
    assert len(adapter.urls) == 2  # the second page repeated the first: no new study, the end


def test_a_search_without_filters_lists_every_study() -> None:
    adapter = FakePacs([_study(f"1.{i}") for i in range(3)])
    pages = list(_pacs(adapter).search_studies({}, page_size=500))
    assert [r.study_instance_uid for p in pages for r in p] == ["1.0", "1.1", "1.2"]
    assert urlsplit(adapter.urls[0]).query.startswith("includefield=PatientID&")


def test_refused_credentials_and_an_unreachable_pacs_are_server_errors_without_the_query() -> None:
    with pytest.raises(AuthenticationFailed) as refused:
        list(_pacs(FakePacs([], status=401)).search_studies({"PatientID": "SECRET-MRN"}))
    assert "SECRET-MRN" not in str(refused.value)
    pacs = DicomWebSource("http://127.0.0.1:9/dicom-web")
    with pytest.raises(ServerUnreachable) as unreachable:
        list(pacs.search_studies({"PatientID": "SECRET-MRN"}))
    assert "SECRET-MRN" not in str(unreachable.value)
