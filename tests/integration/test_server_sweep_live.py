"""``crosscheck sweep`` over a real PACS (Orthanc, DICOMweb) and a real FHIR server (sekmet-fhir).

The selection is checked against Orthanc's own index (its REST ``/tools/find``, not QIDO-RS); the
results against ``crosscheck check`` on the cohort's files. The changes (an instance added to a
study, a resource of a record updated) are made on servers of this module's own, so the session's
servers stay as the other tests expect them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from connectors.auth import Credentials
from connectors.dicom.web import DicomWebSource
from connectors.fhir.rest import FhirClient
from plugin.cli import main
from plugin.servers import ServerSettings, server_settings
from plugin.sweep import StudySelection, units_from_servers
from plugin.sweep.servers import digest

pytestmark = pytest.mark.integration

test_servers = sys.modules["crosscheck_test_servers"]  # tests/integration/servers.py, loaded by conftest


@dataclass(frozen=True)
class OnPacs:
    """A study as Orthanc's own index has it."""

    uid: str
    patient_id: str
    accession: str
    day: str
    modalities: frozenset[str]


def _on_pacs(orthanc: test_servers.Orthanc) -> dict[str, OnPacs]:
    def find(level: str) -> list[dict]:
        query = {"Level": level, "Query": {}, "Expand": True}
        response = httpx.post(f"{orthanc.url}/tools/find", json=query, auth=orthanc.user, timeout=30)
        response.raise_for_status()
        found: list[dict] = response.json()
        return found

    modalities: dict[str, set[str]] = {}
    for series in find("Series"):
        modalities.setdefault(series["ParentStudy"], set()).add(series["MainDicomTags"].get("Modality", ""))
    return {
        s["MainDicomTags"]["StudyInstanceUID"]: OnPacs(
            uid=s["MainDicomTags"]["StudyInstanceUID"],
            patient_id=s["PatientMainDicomTags"].get("PatientID", ""),
            accession=s["MainDicomTags"].get("AccessionNumber", ""),
            day=s["MainDicomTags"].get("StudyDate", ""),
            modalities=frozenset(modalities.get(s["ID"], set())),
        )
        for s in find("Study")
    }


@dataclass(frozen=True)
class InCohort:
    """A study of the cohort's files: its header, its record's Patient, and its SOPInstanceUIDs."""

    uid: str
    patient_id: str
    accession: str
    day: str
    modality: str
    fhir_patient: str
    sops: frozenset[str]


def _cohort(folder: Path) -> dict[str, InCohort]:
    studies = {}
    for case in json.loads((folder / "manifest.json").read_text())["cases"]:
        headers = [
            pydicom.dcmread(p, stop_before_pixels=True) for p in (folder / case["dicom"]).rglob("*.dcm")
        ]
        first = headers[0]
        studies[case["study_instance_uid"]] = InCohort(
            uid=case["study_instance_uid"],
            patient_id=str(first.PatientID),
            accession=str(first.AccessionNumber),
            day=str(first.StudyDate),
            modality=str(first.Modality),
            fhir_patient=case["patient_id"],
            sops=frozenset(str(h.SOPInstanceUID) for h in headers),
        )
    return studies


def _settings(env: dict[str, str]) -> ServerSettings:
    return server_settings(argparse.Namespace(), env=env)


def _sweep(
    capsys: pytest.CaptureFixture[str], data: Path, *argv: str, debug: bool = False
) -> tuple[int, int]:
    """Run a server sweep (logging at DEBUG level with ``debug``); (studies scored now, done before)."""
    capsys.readouterr()
    options = ["sweep", *argv, "--data-dir", str(data), "--workers", "1", "--batch-size", "4", "-q"]
    code = main(["-vv", *options] if debug else options)
    out, err = capsys.readouterr()
    assert code == 0, err
    found = re.search(r"(\d+) scored and stored, (\d+) done before, 0 unreadable", out)
    assert found, out
    return int(found[1]), int(found[2])


def _stored(data: Path) -> dict[str, list[dict]]:
    """StudyInstanceUID -> its swept results, oldest first."""
    with sqlite3.connect(data / "crosscheck.db") as con:
        rows = con.execute(
            "SELECT r.study_instance_uid, r.result_json FROM sweep_results s "
            "JOIN results r ON r.id = s.result_id ORDER BY r.created_at"
        ).fetchall()
    out: dict[str, list[dict]] = {}
    for uid, js in rows:
        out.setdefault(uid, []).append(json.loads(js))
    return out


# -- the session's servers: what a selection picks, and what is stored -----------------------------


def test_each_filter_picks_what_the_pacs_index_holds(
    loaded: Path, orthanc, server_env, tmp_path: Path
) -> None:
    pacs = _on_pacs(orthanc)
    cohort = _cohort(loaded)
    twins = sorted(
        {
            c.patient_id
            for c in cohort.values()
            if sum(d.patient_id == c.patient_id for d in cohort.values()) > 1
        }
    )
    accessions = sorted(c.accession for c in cohort.values())[:3]
    selections = {
        "date range": (
            StudySelection(date(2020, 1, 1), date(2023, 12, 31)),
            lambda s: "20200101" <= s.day <= "20231231",
        ),
        "open date range": (StudySelection(date_from=date(2024, 6, 1)), lambda s: s.day >= "20240601"),
        "modality": (StudySelection(modalities=("CT",)), lambda s: "CT" in s.modalities),
        "modalities": (StudySelection(modalities=("mr", "DX")), lambda s: bool({"MR", "DX"} & s.modalities)),
        "patients": (StudySelection(patient_ids=tuple(twins[:2])), lambda s: s.patient_id in twins[:2]),
        "accessions": (
            StudySelection(accession_numbers=tuple(accessions)),
            lambda s: s.accession in accessions,
        ),
        "modality and dates": (
            StudySelection(date_from=date(2020, 1, 1), modalities=("CT",)),
            lambda s: "CT" in s.modalities and s.day >= "20200101",
        ),
    }
    settings = _settings(server_env)
    for name, (selection, picks) in selections.items():
        expected = {uid for uid, s in pacs.items() if picks(s)}
        assert expected, name
        units = units_from_servers(settings, selection, cache=tmp_path, page_size=2)  # paging, too
        assert {u.study_instance_uid for u in units} == expected, name
        for unit in units:
            study = cohort.get(unit.study_instance_uid)
            if study is not None:  # a cohort study is linked to its own record
                assert unit.source is not None and unit.source.fhir_patient == study.fhir_patient, name
                assert unit.inputs["accession_number"] == study.accession


def _patient_data(cohort: Path, study: InCohort, env: dict[str, str]) -> set[str]:
    """What must never be logged of the study's patient: identifiers, names, birth date; and the
    servers' passwords."""
    bundle = json.loads((cohort / "bundles" / f"{study.fhir_patient}.json").read_text())
    (patient,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    values = {study.patient_id, study.accession, patient["birthDate"]}
    values |= {i["value"] for i in patient.get("identifier", [])}
    for name in patient.get("name", []):
        values |= {name.get("family", "")} | set(name.get("given", []))
    values |= {env["CROSSCHECK_FHIR_PASSWORD"], env["CROSSCHECK_DICOMWEB_PASSWORD"]}
    return values - {""}


def test_sweeps_by_accession_patient_modality_and_date_store_what_check_gives(
    loaded: Path,
    server_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for key, value in server_env.items():
        monkeypatch.setenv(key, value)
    cohort = _cohort(loaded)
    units = units_from_servers(
        _settings(server_env), StudySelection(date_from=date(2015, 1, 1)), cache=tmp_path
    )
    # studies other tests changed on the session's PACS (a Structured Report added) are left out
    clean = {
        u.study_instance_uid
        for u in units
        if u.study_instance_uid in cohort
        and u.inputs["instances"] == digest(cohort[u.study_instance_uid].sops)
    }
    by_patient: dict[str, list[InCohort]] = {}
    for study in sorted(cohort.values(), key=lambda s: s.uid):
        by_patient.setdefault(study.patient_id, []).append(study)
    twin = next(
        p
        for p, studies in sorted(by_patient.items())
        if len(studies) > 1 and all(s.uid in clean and s.modality != "MR" for s in studies)
    )
    other = next(s for s in cohort.values() if s.uid in clean and s.patient_id != twin and s.modality != "MR")
    first = by_patient[twin][0]
    data, site = tmp_path / "data", ["--site", str(loaded / "site.json")]
    (tmp_path / "accessions.txt").write_text(f"# a referral\n{other.accession}\n")

    accessions = ["--accession", first.accession, "--accessions-file", str(tmp_path / "accessions.txt")]
    assert _sweep(capsys, data, *accessions, *site) == (2, 0)
    assert set(_stored(data)) == {first.uid, other.uid}

    with caplog.at_level(logging.DEBUG):
        assert _sweep(capsys, data, "--patient", twin, *site, debug=True) == (len(by_patient[twin]) - 1, 1)
    assert set(_stored(data)) == {other.uid} | {s.uid for s in by_patient[twin]}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert by_patient[twin][-1].uid in logged  # UIDs at DEBUG are fine, and are there
    leaked = sorted(v for v in _patient_data(loaded, by_patient[twin][0], server_env) if v in logged)
    assert not leaked, f"patient data or secrets in the logs: {len(leaked)} value(s)"

    mr = {s.uid for s in cohort.values() if s.modality == "MR"}
    assert mr and mr <= clean
    assert _sweep(capsys, data, "--modality", "MR", "--date-from", "2015-01-01", *site) == (len(mr), 0)

    day = next(
        s.day
        for s in sorted(cohort.values(), key=lambda s: s.uid)
        if s.uid in clean and s.uid not in _stored(data)
    )
    on_day = {s.uid for s in cohort.values() if s.day == day}
    iso = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    assert _sweep(capsys, data, "--date-from", iso, "--date-to", iso, *site) == (len(on_day), 0)
    again = _sweep(capsys, data, "--date-from", iso, "--date-to", day, *site)  # the same day, as YYYYMMDD
    assert again == (0, len(on_day))  # nothing redone

    stored = _stored(data)
    assert set(stored) == {other.uid, *(s.uid for s in by_patient[twin]), *mr, *on_day}
    assert all(len(results) == 1 for results in stored.values())
    capsys.readouterr()
    files = ["--bundle", str(loaded / "bundles"), "--dicom", str(loaded / "dicom")]
    with monkeypatch.context() as files_only:
        for key in server_env:
            files_only.delenv(key)
        assert main(["check", *files, *site, "--format", "json"]) == 0
    checked = {
        r["case"]["study_instance_uid"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())
    }
    for uid, (result,) in stored.items():
        assert result["case"] == checked[uid]["case"], uid
        assert result["scores"]["overall"] == pytest.approx(checked[uid]["scores"]["overall"], abs=1e-4), uid
        assert [f["code"] for f in result["findings"]] == [f["code"] for f in checked[uid]["findings"]], uid


def test_an_unreachable_pacs_or_refused_credentials_are_one_line(
    server_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for key, value in server_env.items():
        monkeypatch.setenv(key, value)
    closed = f"http://127.0.0.1:{test_servers.free_port()}/dicom-web"
    runs = {
        "unreachable": ["--dicomweb", closed],
        "HTTP 401": ["--dicomweb-password", "not-the-password"],
    }
    for said, options in runs.items():
        capsys.readouterr()
        assert main(["sweep", "--modality", "CT", *options, "--data-dir", str(tmp_path), "-q"]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "01234567" not in err  # no PatientID of the cohort in what is shown
    assert not (tmp_path / "crosscheck.db").exists()


# -- servers of this module's own: a study or a record changes -------------------------------------


@dataclass
class Site:
    cohort: Path
    orthanc: test_servers.Orthanc
    sekmet: test_servers.Sekmet
    env: dict[str, str]


@pytest.fixture(scope="module")
def own_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("sweep-own")
    cohort = folder / "cohort"
    assert (
        main(["simulate", "--out", str(cohort), "--patients", "2", "--seed", "11", "--workers", "1", "-q"])
        == 0
    )
    orthanc = test_servers.start_orthanc(folder / "orthanc")
    try:
        sekmet = test_servers.start_sekmet(folder / "sekmet")
        try:
            env = {
                "CROSSCHECK_FHIR_URL": sekmet.url,
                "CROSSCHECK_FHIR_TOKEN": sekmet.token,
                "CROSSCHECK_DICOMWEB_URL": orthanc.dicomweb,
                "CROSSCHECK_DICOMWEB_USER": orthanc.user[0],
                "CROSSCHECK_DICOMWEB_PASSWORD": orthanc.user[1],
            }
            with pytest.MonkeyPatch.context() as mp:
                for key, value in env.items():
                    mp.setenv(key, value)
                assert main(["load", str(cohort), "-q"]) == 0
            yield Site(cohort, orthanc, sekmet, env)
        finally:
            test_servers.stop(sekmet.process)
    finally:
        test_servers.stop(orthanc.process)


def _add_instance(site: Site, study: InCohort) -> None:
    """STOW-RS a copy of one of the study's instances under a new SOPInstanceUID."""
    path = next(
        p
        for p in (site.cohort / "dicom").rglob("*.dcm")
        if pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID == study.uid
    )
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = int(ds.get("InstanceNumber") or 1) + 100
    credentials = Credentials(username=site.orthanc.user[0], password=site.orthanc.user[1])
    with DicomWebSource(site.orthanc.dicomweb, credentials=credentials) as pacs:
        assert pacs.store_datasets([ds]) == 1


def _update_a_resource(site: Site, patient: str) -> None:
    """Update one Condition (or Observation) of the patient's record: a new versionId."""

    async def update() -> None:
        async with FhirClient(site.sekmet.url, credentials=Credentials(token=site.sekmet.token)) as fhir:
            for rtype in ("Condition", "Observation"):
                found = await fhir.search_all(rtype, {"patient": patient, "_count": 1})
                if found:
                    resource = found[0]
                    resource.setdefault("note", []).append({"text": "reviewed again"})
                    written = await fhir.update(resource)
                    assert written.version_id not in (None, resource.get("meta", {}).get("versionId"))
                    return
            raise AssertionError(f"Patient/{patient} has no Condition or Observation to update")

    asyncio.run(update())


def test_only_the_changed_study_and_the_changed_record_are_swept_again(
    own_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for key, value in own_site.env.items():
        monkeypatch.setenv(key, value)
    cohort = _cohort(own_site.cohort)
    patients: dict[str, list[str]] = {}
    for study in cohort.values():
        patients.setdefault(study.fhir_patient, []).append(study.uid)
    changed_study_of = max(patients, key=lambda p: len(patients[p]))  # a patient with an untouched study too
    changed_record = next(p for p in sorted(patients) if p != changed_study_of)
    changed_study = cohort[sorted(patients[changed_study_of])[0]]
    untouched = set(cohort) - {changed_study.uid} - set(patients[changed_record])
    assert untouched, "the cohort needs a study that stays as it is"
    data, every = tmp_path / "data", ["--date-from", "2000-01-01"]

    assert _sweep(capsys, data, *every) == (len(cohort), 0)
    before = {
        u.study_instance_uid: dict(u.inputs)
        for u in units_from_servers(
            _settings(own_site.env), StudySelection(date_from=date(2000, 1, 1)), cache=tmp_path
        )
    }

    _add_instance(own_site, changed_study)
    _update_a_resource(own_site, changed_record)
    after = {
        u.study_instance_uid: dict(u.inputs)
        for u in units_from_servers(
            _settings(own_site.env), StudySelection(date_from=date(2000, 1, 1)), cache=tmp_path
        )
    }
    assert {uid for uid in cohort if after[uid]["instances"] != before[uid]["instances"]} == {
        changed_study.uid
    }
    assert {uid for uid in cohort if after[uid]["record"] != before[uid]["record"]} == set(
        patients[changed_record]
    )

    redone = 1 + len(patients[changed_record])
    assert _sweep(capsys, data, *every) == (redone, len(untouched))
    stored = _stored(data)
    assert {uid for uid, results in stored.items() if len(results) == 2} == {
        changed_study.uid,
        *patients[changed_record],
    }
    assert {uid for uid, results in stored.items() if len(results) == 1} == untouched
    newest = stored[changed_study.uid][-1]
    assert newest["case"]["study_instance_uid"] == changed_study.uid
