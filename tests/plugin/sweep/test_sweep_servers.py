"""A server sweep's selection, its units' inputs, and its command line, without servers (fakes and
`httpx.MockTransport`; the real Orthanc and FHIR server: tests/integration/test_server_sweep_live.py)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from pydicom.dataset import Dataset

from connectors.dicom.web import StudyRef
from connectors.fhir.rest import FhirClient
from plugin.cli import main
from plugin.errors import EmptySelection, UsageError
from plugin.servers import ServerSettings
from plugin.sweep import ServerStudy, StudySelection, SweepUnit, units_from_servers
from plugin.sweep.servers import digest, parse_study_date, read_identifiers

FHIR = "https://ehr.example.org/fhir"
PACS = "https://pacs.example.org/dicom-web"


def _ref(uid: str, patient: str | None = "MRN1", accession: str | None = "A1", modality: str = "CT",
         day: str | None = "20240105") -> StudyRef:  # fmt: skip
    return StudyRef(uid, patient, accession, day, (modality,) if modality else (), 1, 2)


# -- the selection -------------------------------------------------------------------------------


def test_a_date_range_is_one_search_in_dicom_range_matching() -> None:
    assert StudySelection(date(2024, 1, 1), date(2024, 1, 31)).queries() == [
        {"StudyDate": "20240101-20240131"}
    ]
    assert StudySelection(date_from=date(2024, 1, 1)).queries() == [{"StudyDate": "20240101-"}]
    assert StudySelection(date_to=date(2024, 1, 31)).queries() == [{"StudyDate": "-20240131"}]


def test_single_values_go_into_every_search_and_lists_make_one_search_each() -> None:
    selection = StudySelection(date_from=date(2024, 1, 1), modalities=("ct",), patient_ids=("P2", "P1"))
    assert selection.modalities == ("CT",)
    assert selection.queries() == [
        {"StudyDate": "20240101-", "PatientID": "P1"},
        {"StudyDate": "20240101-", "PatientID": "P2"},
    ]
    by_accession = StudySelection(patient_ids=("P1",), accession_numbers=("A2", "A1", "A2"))
    assert by_accession.queries() == [
        {"PatientID": "P1", "AccessionNumber": "A1"},
        {"PatientID": "P1", "AccessionNumber": "A2"},
    ]
    assert StudySelection(patient_ids=("P1", "P2"), accession_numbers=("A1",)).queries() == [
        {"AccessionNumber": "A1"}  # the patients are checked on what comes back
    ]


def test_modalities_are_never_sent_orthanc_pages_them_wrongly() -> None:
    assert StudySelection(modalities=("MR", "CT")).queries() == [{}]  # the whole archive, page by page
    assert StudySelection(date_to=date(2024, 1, 31), modalities=("CT",)).queries() == [
        {"StudyDate": "-20240131"}
    ]


def test_filters_combine_as_and_on_what_the_pacs_returns() -> None:
    selection = StudySelection(
        date_from=date(2024, 1, 1),
        date_to=date(2024, 1, 31),
        modalities=("CT", "MR"),
        patient_ids=("MRN1", "MRN2"),
        accession_numbers=("A1",),
    )
    (query,) = selection.queries()
    assert query == {"StudyDate": "20240101-20240131", "AccessionNumber": "A1"}
    assert selection.matches(_ref("1"), query)
    assert selection.matches(_ref("1", day="20240131"), query)  # both ends of the range are in it
    assert not selection.matches(_ref("1", day="20240201"), query)
    assert not selection.matches(_ref("1", patient="MRN3"), query)
    assert not selection.matches(_ref("1", accession="A9"), query)
    assert not selection.matches(_ref("1", modality="DX"), query)
    # an attribute left out of the match: matched by the PACS if the search carried it, else not known
    assert selection.matches(_ref("1", day=None, accession=None), query)
    assert not selection.matches(_ref("1", patient=None), query)
    assert not selection.matches(_ref("1", modality=""), query)


def test_a_selection_needs_a_filter_sane_dates_and_no_empty_value() -> None:
    with pytest.raises(UsageError, match="at least one filter"):
        StudySelection()
    with pytest.raises(UsageError, match="after"):
        StudySelection(date(2024, 2, 1), date(2024, 1, 1))
    with pytest.raises(UsageError, match="empty"):
        StudySelection(patient_ids=("P1", " "))


def test_study_instance_uids_make_one_search_each_and_are_checked_on_what_comes_back() -> None:
    selection = StudySelection(
        date_from=date(2024, 1, 1), accession_numbers=("A1",), study_instance_uids=("1.2.9", "1.2.3", "1.2.9")
    )
    assert selection.study_instance_uids == ("1.2.3", "1.2.9")
    assert selection.queries() == [
        {"StudyDate": "20240101-", "StudyInstanceUID": "1.2.3"},
        {"StudyDate": "20240101-", "StudyInstanceUID": "1.2.9"},
    ]
    query = selection.queries()[0]
    assert selection.matches(_ref("1.2.3"), query)
    assert not selection.matches(_ref("1.2.4"), query)  # a PACS that ignores the UID does not widen it
    assert not selection.matches(_ref("1.2.3", accession="A9"), query)  # AND with the other filters
    assert StudySelection(study_instance_uids=("1.2.3",)).describe() == "1 StudyInstanceUID"


def test_the_description_names_no_patient_or_accession() -> None:
    selection = StudySelection(
        date_from=date(2024, 1, 1),
        modalities=("CT",),
        patient_ids=("MRN1", "MRN2"),
        accession_numbers=("A7",),
    )
    text = selection.describe()
    assert text == "StudyDate 20240101-, ModalitiesInStudy CT, 2 PatientIDs, 1 AccessionNumber"
    assert "MRN1" not in text and "A7" not in text


def test_dates_and_identifier_files(tmp_path: Path) -> None:
    assert (
        parse_study_date("2024-03-05", "--date-from")
        == parse_study_date("20240305", "--x")
        == date(2024, 3, 5)
    )
    with pytest.raises(UsageError, match="--date-to '2024-02-30' is not a date"):
        parse_study_date("2024-02-30", "--date-to")
    ids = tmp_path / "ids.txt"
    ids.write_text("# patients of the referral\nMRN1\n\n  MRN2  # second\n")
    assert read_identifiers(ids, "--patients-file") == ("MRN1", "MRN2")
    ids.write_text("# nothing\n")
    with pytest.raises(UsageError, match="no identifiers"):
        read_identifiers(ids, "--patients-file")
    with pytest.raises(UsageError, match="cannot read"):
        read_identifiers(tmp_path / "missing.txt", "--patients-file")


def test_digest_is_of_the_set_of_values() -> None:
    assert digest(["1.2", "1.3"]) == digest(["1.3", "1.2", "1.2"])
    assert digest(["1.2", "1.3"]).startswith("2 sha256:")
    assert digest(["1.2", "1.3", "1.4"]) != digest(["1.2", "1.3"])
    assert digest(["1.2", "1.4"]) != digest(["1.2", "1.3"])


# -- units from (fake) servers -------------------------------------------------------------------


class FakePacs:
    """What `units_from_servers` asks of a `DicomWebSource`: study pages and instance searches."""

    def __init__(self, studies: list[StudyRef], instances: Mapping[str, list[str]]) -> None:
        self.studies = studies
        self.instances = dict(instances)
        self.url = PACS
        self.queries: list[dict[str, str]] = []
        self.series_modality: dict[str, str] = {}

    def __enter__(self) -> FakePacs:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def search_studies(self, filters: Mapping[str, str], *, page_size: int = 500) -> Iterator[list[StudyRef]]:
        self.queries.append(dict(filters))
        assert "ModalitiesInStudy" not in filters
        found = [s for s in self.studies if filters.get("PatientID") in (None, s.patient_id)]
        for start in range(0, len(found), page_size):
            yield found[start : start + page_size]

    def find_series(self, study_instance_uid: str) -> list[Dataset]:
        ds = Dataset()
        ds.Modality = self.series_modality[study_instance_uid]
        return [ds]

    def find_instances(self, study_instance_uid: str) -> list[Dataset]:
        out = []
        for sop in self.instances[study_instance_uid]:
            ds = Dataset()
            ds.SOPInstanceUID = sop
            out.append(ds)
        return out


class FakeEhr:
    """ImagingStudy, Patient and record searches of a FHIR server, scripted."""

    def __init__(self) -> None:
        self.subjects = {"1.1": "p1", "1.2": "p1"}  # ImagingStudy identifier -> subject
        self.identifiers = {"MRN2": ["p2"], "MRN3": ["p3", "p4"]}  # Patient identifier -> ids
        self.version = {"p1": "1", "p2": "1"}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        query = dict(parse_qsl(request.url.query.decode()))
        rtype = request.url.path.rsplit("/", 1)[-1]
        if rtype == "metadata":
            return httpx.Response(200, json={"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})
        resources: list[dict[str, Any]] = []
        if rtype == "ImagingStudy" and "identifier" in query:
            uid = query["identifier"].rsplit(":", 1)[-1]
            if uid in self.subjects:
                resources = [
                    {
                        "resourceType": "ImagingStudy",
                        "id": "i",
                        "subject": {"reference": f"Patient/{self.subjects[uid]}"},
                    }
                ]
        elif rtype == "Patient" and "identifier" in query:
            resources = [
                {"resourceType": "Patient", "id": i} for i in self.identifiers.get(query["identifier"], [])
            ]
        elif rtype == "Patient":
            pid = query["_id"]
            resources = [{"resourceType": "Patient", "id": pid, "meta": {"versionId": self.version[pid]}}]
        entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries})


@pytest.fixture()
def servers(monkeypatch: pytest.MonkeyPatch) -> tuple[FakePacs, FakeEhr]:
    pacs = FakePacs(
        [
            _ref("1.3", patient="MRN2", accession="A3"),
            _ref("1.1"),
            _ref("1.2", accession="A2", modality="MR"),
            _ref("1.4", patient="MRN3", accession="A4"),
        ],
        {"1.1": ["1.1.1", "1.1.2"], "1.2": ["1.2.1"], "1.3": ["1.3.1"], "1.4": ["1.4.1"]},
    )
    ehr = FakeEhr()
    monkeypatch.setattr(ServerSettings, "dicomweb_source", lambda self, url, limits=None: pacs)
    monkeypatch.setattr(
        ServerSettings,
        "fhir_client",
        lambda self, retry=None: FhirClient(FHIR, transport=httpx.MockTransport(ehr)),
    )
    return pacs, ehr


SETTINGS = ServerSettings(fhir_url=FHIR, dicomweb_url=PACS)


def _units(tmp_path: Path, selection: StudySelection | None = None) -> dict[str, SweepUnit]:
    units = units_from_servers(SETTINGS, selection or StudySelection(modalities=("CT", "MR")), cache=tmp_path)
    return {u.study_instance_uid: u for u in units}


def test_units_are_linked_to_their_records_with_what_changes_when_they_change(
    servers: tuple[FakePacs, FakeEhr], tmp_path: Path
) -> None:
    units = units_from_servers(SETTINGS, StudySelection(modalities=("CT", "MR")), cache=tmp_path)
    assert [u.study_instance_uid for u in units] == ["1.4", "1.1", "1.2", "1.3"]  # by patient, then UID
    by_uid = {u.study_instance_uid: u for u in units}
    one = by_uid["1.1"]
    assert one.patient_id == "p1"  # the record's Patient, as the duplicate index and the result name it
    assert dict(one.inputs) == {
        "study_instance_uid": "1.1",
        "patient_id": "MRN1",
        "accession_number": "A1",
        "instances": digest(["1.1.1", "1.1.2"]),
        "fhir_patient": "p1",
        "record": digest(["Patient/p1/_history/1@"]),
    }
    assert one.source == ServerStudy(settings=SETTINGS, cache=tmp_path, fhir_patient="p1")
    assert by_uid["1.3"].source is not None and by_uid["1.3"].source.fhir_patient == "p2"  # by PatientID
    lone = by_uid["1.4"]  # two Patients carry its PatientID: no record rather than the wrong one
    assert lone.patient_id == "MRN3" and lone.source is not None and lone.source.fhir_patient is None
    assert "record" not in lone.inputs and "fhir_patient" not in lone.inputs
    assert pickle.loads(pickle.dumps(one)) == one  # what a reader process or a Ray task receives


def test_only_the_changed_study_or_record_gets_a_new_fingerprint(
    servers: tuple[FakePacs, FakeEhr], tmp_path: Path
) -> None:
    pacs, ehr = servers
    before = {uid: u.fingerprint for uid, u in _units(tmp_path).items()}
    assert before == {uid: u.fingerprint for uid, u in _units(tmp_path).items()}
    pacs.instances["1.3"].append("1.3.2")
    added = {uid: u.fingerprint for uid, u in _units(tmp_path).items()}
    assert {uid for uid in before if added[uid] != before[uid]} == {"1.3"}
    ehr.version["p1"] = "2"
    updated = {uid: u.fingerprint for uid, u in _units(tmp_path).items()}
    assert {uid for uid in before if updated[uid] != added[uid]} == {"1.1", "1.2"}


def test_the_selection_is_checked_on_what_the_pacs_returns(
    servers: tuple[FakePacs, FakeEhr], tmp_path: Path
) -> None:
    pacs, _ = servers
    units = _units(tmp_path, StudySelection(modalities=("MR",), patient_ids=("MRN1", "MRN2")))
    assert list(units) == ["1.2"]
    assert pacs.queries == [{"PatientID": "MRN1"}, {"PatientID": "MRN2"}]


def test_a_study_whose_match_leaves_out_its_modalities_is_judged_by_its_series(
    servers: tuple[FakePacs, FakeEhr], tmp_path: Path
) -> None:
    pacs, _ = servers
    pacs.studies = [_ref("1.1", modality=""), _ref("1.2", accession="A2", modality="")]
    pacs.series_modality = {"1.1": "CT", "1.2": "MR"}
    assert list(_units(tmp_path, StudySelection(modalities=("MR",)))) == ["1.2"]


def test_an_empty_selection_is_an_error_that_names_no_identifier(
    servers: tuple[FakePacs, FakeEhr], tmp_path: Path
) -> None:
    with pytest.raises(EmptySelection) as empty:
        _units(tmp_path, StudySelection(modalities=("XA",), patient_ids=("MRN1",)))
    assert "MRN1" not in str(empty.value) and "ModalitiesInStudy XA" in str(empty.value)


def test_without_a_fhir_server_studies_are_swept_on_their_images(
    servers: tuple[FakePacs, FakeEhr], tmp_path: Path
) -> None:
    units = units_from_servers(
        ServerSettings(dicomweb_url=PACS), StudySelection(modalities=("CT",)), cache=tmp_path
    )
    assert {u.study_instance_uid for u in units} == {"1.1", "1.3", "1.4"}
    assert all(
        u.source is not None and u.source.fhir_patient is None and "record" not in u.inputs for u in units
    )
    assert {u.patient_id for u in units} == {"MRN1", "MRN2", "MRN3"}


def test_a_server_unit_is_loaded_from_the_servers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from plugin.sweep import prepare

    unit = SweepUnit(
        "1.1", "p1", "A1", tmp_path, None, {"study_instance_uid": "1.1"}, ServerStudy(SETTINGS, tmp_path)
    )
    calls: list[str] = []
    monkeypatch.setattr(
        prepare, "load_server_case", lambda u, s: calls.append(u.study_instance_uid) or "case"
    )
    assert prepare.load_case(unit) == "case"
    assert calls == ["1.1"]


# -- the command line ----------------------------------------------------------------------------


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_sweep_takes_a_folder_or_server_filters_but_not_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "not both" in _error(
        capsys, ["sweep", str(tmp_path), "--modality", "CT", "--data-dir", str(tmp_path)]
    )
    assert "not both" in _error(
        capsys, ["sweep", str(tmp_path), "--dicomweb", PACS, "--data-dir", str(tmp_path)]
    )
    assert "give a FOLDER" in _error(capsys, ["sweep", "--data-dir", str(tmp_path)])


def test_sweep_refuses_bad_filters_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("CROSSCHECK_DICOMWEB_URL", "CROSSCHECK_FHIR_URL"):
        monkeypatch.delenv(variable, raising=False)
    data = ["--data-dir", str(tmp_path)]
    assert "is not a date" in _error(
        capsys, ["sweep", "--date-from", "2024-02-30", "--dicomweb", PACS, *data]
    )
    assert "after" in _error(capsys, ["sweep", "--date-from", "2024-03-01", "--date-to", "2024-02-01", *data])
    assert "DICOMweb" in _error(capsys, ["sweep", "--modality", "CT", *data])
    assert "--patients-file" in _error(capsys, ["sweep", "--patients-file", str(tmp_path / "no.txt"), *data])
    assert not (tmp_path / "crosscheck.db").exists()  # nothing was opened for a sweep that cannot run


def test_the_download_cache_is_removed_and_a_killed_sweeps_is_too(tmp_path: Path) -> None:
    """A sweep's download folder goes when it ends; one a killed sweep left (its process gone) goes
    when the next sweep starts; a running sweep's stays."""
    import subprocess
    import sys

    from plugin.sweep.fetch import download_cache

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    root = tmp_path / "sweep-cache"
    left = root / f"{gone.stdout.strip()}-abc"
    running = root / "1-def"  # pid 1 is always alive
    for folder in (left, running):
        (folder / "1.2.3").mkdir(parents=True)
        (folder / "1.2.3" / "image.dcm").write_bytes(b"pixels of a patient")
    with download_cache(tmp_path) as cache:
        assert cache.parent == root and cache.name.startswith(f"{os.getpid()}-")
        assert not left.exists() and running.exists()
        (cache / "x.dcm").write_bytes(b"")
    assert not cache.exists()
