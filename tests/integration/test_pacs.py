"""The DICOM connectors against a real PACS (Orthanc): DICOMweb and DIMSE, limits, failures, Endpoints."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest

from connectors.auth import Credentials
from connectors.dicom import DicomLimits
from connectors.dicom.dimse import DimsePeer, DimseSource
from connectors.dicom.web import DicomWebSource
from connectors.errors import (
    AuthenticationFailed,
    NoImagingFound,
    PixelDataTooLarge,
    ServerUnreachable,
)
from connectors.http import RetryPolicy
from plugin.cli import main

pytestmark = pytest.mark.integration


def _web(orthanc, **kwargs) -> DicomWebSource:
    return DicomWebSource(
        orthanc.dicomweb,
        credentials=Credentials(username=orthanc.user[0], password=orthanc.user[1]),
        **kwargs,
    )


def _dimse(orthanc, **kwargs) -> DimseSource:
    peer = DimsePeer(host="127.0.0.1", port=orthanc.dicom_port, ae_title=orthanc.aet)
    return DimseSource(peer, calling_ae="CROSSCHECK", storage_port=orthanc.storage_port, **kwargs)


def _first_case(cohort: Path) -> dict:
    return json.loads((cohort / "manifest.json").read_text())["cases"][0]


def _files_of(cohort: Path, case: dict) -> dict[str, Path]:
    """SOPInstanceUID -> file, for the case's study."""
    found = {}
    for path in (cohort / case["dicom"]).rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.StudyInstanceUID == case["study_instance_uid"]:
                found[ds.SOPInstanceUID] = path
    return found


def _study_header(cohort: Path, case: dict) -> pydicom.Dataset:
    return pydicom.dcmread(next(iter(_files_of(cohort, case).values())), stop_before_pixels=True)


# -- DICOMweb --------------------------------------------------------------------------------------


def test_qido_finds_a_study_by_patient_accession_uid_and_date(loaded, orthanc):
    case = _first_case(loaded)
    header = _study_header(loaded, case)
    day = date(int(header.StudyDate[:4]), int(header.StudyDate[4:6]), int(header.StudyDate[6:]))
    with _web(orthanc) as pacs:
        by = {
            "patient": pacs.find_studies(patient_id=header.PatientID),
            "accession": pacs.find_studies(accession_number=header.AccessionNumber),
            "uid": pacs.find_studies(study_instance_uid=case["study_instance_uid"]),
            "date": pacs.find_studies(date_from=day, date_to=day),
        }
    for name, refs in by.items():
        assert case["study_instance_uid"] in {r.study_instance_uid for r in refs}, name
    (ref,) = by["uid"]
    assert ref.patient_id == header.PatientID
    assert ref.instances == len(_files_of(loaded, case))


def test_wado_metadata_then_instances_byte_for_byte(loaded, orthanc, tmp_path):
    case = _first_case(loaded)
    originals = _files_of(loaded, case)
    with _web(orthanc) as pacs:
        metadata = pacs.study_metadata(case["study_instance_uid"])
        assert {str(ds.SOPInstanceUID) for ds in metadata} == set(originals)
        assert all("PixelData" not in ds or not ds.PixelData for ds in metadata)
        files = pacs.download_study(case["study_instance_uid"], tmp_path, metadata=metadata)
    assert len(files) == len(originals)
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert path.read_bytes() == originals[uid].read_bytes()


def test_wado_frames_come_back_as_octet_stream(loaded, orthanc):
    case = _first_case(loaded)
    with _web(orthanc) as pacs:
        ds = pacs.study_metadata(case["study_instance_uid"])[0]
        (frame,) = pacs.frames(case["study_instance_uid"], ds.SeriesInstanceUID, ds.SOPInstanceUID, [1])
    assert len(frame) > 0


def test_limits_refuse_a_study_before_any_pixel_moves(loaded, orthanc, tmp_path):
    case = _first_case(loaded)
    with _web(orthanc, limits=DicomLimits(max_pixels_per_frame=64 * 64)) as pacs:
        with pytest.raises(PixelDataTooLarge, match="max_pixels_per_frame"):
            pacs.download_study(case["study_instance_uid"], tmp_path)
        assert pacs.requests == 1  # the metadata request only
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_unknown_study_is_no_imaging_found(loaded, orthanc):
    with _web(orthanc) as pacs, pytest.raises(NoImagingFound, match=r"1\.2\.3\.999"):
        pacs.study_metadata("1.2.3.999")


def test_wrong_pacs_password_is_authentication_failed(orthanc):
    pacs = DicomWebSource(orthanc.dicomweb, credentials=Credentials(username="crosscheck", password="nope"))
    with pytest.raises(AuthenticationFailed, match="401"):
        pacs.find_studies(patient_id="x")


def test_pacs_that_is_down_is_unreachable():
    pacs = DicomWebSource("http://127.0.0.1:9/dicom-web", retry=RetryPolicy(attempts=1))
    with pytest.raises(ServerUnreachable):
        pacs.find_studies(patient_id="x")


# -- DIMSE ----------------------------------------------------------------------------------------------


def test_echo_and_find(loaded, orthanc):
    case = _first_case(loaded)
    header = _study_header(loaded, case)
    pacs = _dimse(orthanc)
    pacs.echo()
    refs = pacs.find_studies(patient_id=header.PatientID)
    assert case["study_instance_uid"] in {r.study_instance_uid for r in refs}
    series = pacs.find_series(case["study_instance_uid"])
    assert {s.SeriesInstanceUID for s in series} == {
        pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID
        for p in _files_of(loaded, case).values()
    }


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_retrieve_gives_the_same_pixels(loaded, orthanc, tmp_path, retrieve):
    case = _first_case(loaded)
    originals = _files_of(loaded, case)
    files = _dimse(orthanc, retrieve=retrieve).download_study(case["study_instance_uid"], tmp_path)
    assert len(files) == len(originals)
    for path in files:
        got = pydicom.dcmread(path)
        want = pydicom.dcmread(originals[got.SOPInstanceUID])
        assert got.file_meta.TransferSyntaxUID == want.file_meta.TransferSyntaxUID
        assert got.PixelData == want.PixelData


def test_unknown_calling_ae_is_refused(orthanc):
    stranger = DimseSource(DimsePeer("127.0.0.1", orthanc.dicom_port, orthanc.aet), calling_ae="STRANGER")
    with pytest.raises((AuthenticationFailed, ServerUnreachable)):
        stranger.find_studies(patient_id="x")


def test_wrong_called_ae_is_refused(orthanc):
    wrong = DimseSource(DimsePeer("127.0.0.1", orthanc.dicom_port, "NOT-ORTHANC"), calling_ae="CROSSCHECK")
    with pytest.raises(
        AuthenticationFailed, match=r"rejected the association .*Called AE title not recognised"
    ):
        wrong.echo()


def test_c_get_of_an_unknown_study_is_no_imaging_found(orthanc, tmp_path):
    with pytest.raises(NoImagingFound):
        _dimse(orthanc).get_study("1.2.3.999", tmp_path)


def test_dimse_peer_is_parsed_strictly():
    assert DimsePeer.parse("pacs.example.org:104:PACS") == DimsePeer("pacs.example.org", 104, "PACS")
    for bad in ("pacs:104", "pacs:x:PACS", "pacs:104:" + "A" * 17, "pacs:0:PACS"):
        with pytest.raises(ValueError):
            DimsePeer.parse(bad)


# -- the command line ---------------------------------------------------------------------------------


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("crosscheck check: error: "), err
    return err


def test_patient_without_imaging_is_a_clear_error(loaded, sekmet, orthanc, server_env, monkeypatch, capsys):
    import asyncio

    from connectors.fhir.rest import FhirClient

    async def put() -> None:
        creds = Credentials(username=sekmet.user[0], password=sekmet.user[1])
        async with FhirClient(sekmet.url, credentials=creds) as fhir:
            await fhir.transaction(
                {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        {
                            "resource": {
                                "resourceType": "Patient",
                                "id": "pat-no-imaging",
                                "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-NO-IMAGING"}],
                            },
                            "request": {"method": "PUT", "url": "Patient/pat-no-imaging"},
                        }
                    ],
                }
            )

    asyncio.run(put())
    for key, value in server_env.items():
        monkeypatch.setenv(key, value)
    err = _one_line_error(capsys, ["check", "--patient", "pat-no-imaging"])
    assert "no imaging study found for Patient/pat-no-imaging" in err
    assert "MRN-NO-IMAGING" not in err


def test_unknown_study_uid_is_a_clear_error(loaded, server_env, monkeypatch, capsys):
    for key, value in server_env.items():
        monkeypatch.setenv(key, value)
    err = _one_line_error(capsys, ["check", "--patient", "pat-000000", "--study", "1.2.3.999"])
    assert "study 1.2.3.999" in err


def test_images_found_through_the_imaging_study_endpoint(linked_sekmet, loaded, orthanc, monkeypatch, capsys):
    """With ImagingStudy.endpoint set, `check --fhir --patient` needs no PACS option; scores as files do."""
    case = _first_case(loaded)
    capsys.readouterr()
    assert (
        main(
            [
                "check",
                "--bundle",
                str(loaded / case["bundle"]),
                "--dicom",
                str(loaded / "dicom" / case["patient_id"]),
                "--format",
                "json",
            ]
        )
        == 0
    )
    from_files = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    monkeypatch.setenv("CROSSCHECK_FHIR_TOKEN", linked_sekmet.token)
    monkeypatch.setenv("CROSSCHECK_DICOMWEB_USER", orthanc.user[0])
    monkeypatch.setenv("CROSSCHECK_DICOMWEB_PASSWORD", orthanc.user[1])
    assert (
        main(["check", "--fhir", linked_sekmet.url, "--patient", case["patient_id"], "--format", "json"]) == 0
    )
    from_endpoint = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for results in (from_files, from_endpoint):
        for r in results:
            r.pop("timings_ms")
    key = lambda r: r["case"]["study_instance_uid"]  # noqa: E731
    got, want = sorted(from_endpoint, key=key), sorted(from_files, key=key)
    assert [r["case"] for r in got] == [r["case"] for r in want]
    assert got == want


# -- transfer syntaxes through the PACS -----------------------------------------------------------------

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SYNTAX_FILES = [
    "MR_small_RLE.dcm",  # RLE Lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    "JPEGLSNearLossless_08.dcm",  # JPEG-LS Near-lossless
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1
    "JPGExtended.dcm",  # JPEG Extended
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_dcmtk_+eb+cr.dcm",  # JPEG Baseline
    "examples_ybr_color.dcm",  # JPEG Baseline, 30 frames
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "CT_small.dcm",  # Explicit VR Little Endian, CT in HU
]


@pytest.fixture(scope="module")
def stored_syntaxes(orthanc, tmp_path_factory) -> dict[str, Path]:
    """pydicom's test files of each transfer syntax, given fresh UIDs (several share theirs, one has
    none), and stored on the PACS over STOW-RS; pixel data and transfer syntax untouched."""
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("syntaxes")
    copies = {}
    for name in SYNTAX_FILES:
        source = TEST_FILES / name
        assert source.is_file(), f"pydicom's test data lacks {name}"
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = ds.get("PatientID") or "SYNTAX-TEST"
        ds.save_as(folder / name, enforce_file_format=True)
        copies[name] = folder / name
    with _web(orthanc) as pacs:
        assert pacs.store(list(copies.values())) == len(copies)
    return copies


@pytest.mark.parametrize("name", SYNTAX_FILES)
@pytest.mark.parametrize("via", ["dicomweb", "dimse"])
def test_every_transfer_syntax_survives_the_pacs(stored_syntaxes, orthanc, tmp_path, name, via):
    from connectors import read_dicom

    copy = stored_syntaxes[name]
    header = pydicom.dcmread(copy, stop_before_pixels=True)
    source = _web(orthanc) if via == "dicomweb" else _dimse(orthanc)
    (path,) = source.download_study(header.StudyInstanceUID, tmp_path)
    (fetched,) = read_dicom(path)
    (local,) = read_dicom(copy)
    assert fetched.instances[0].sop_instance_uid == header.SOPInstanceUID
    # sent as stored, never transcoded on the way
    assert (
        pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.dcmread(copy).file_meta.TransferSyntaxUID
    )
    np.testing.assert_array_equal(fetched.instances[0].pixels(), local.instances[0].pixels())


def test_dimse_retrieval_stops_at_the_byte_limit(loaded, orthanc, tmp_path):
    case = _first_case(loaded)
    pacs = _dimse(orthanc, limits=DicomLimits(max_bytes_per_study=1000))
    with pytest.raises(PixelDataTooLarge, match="max_bytes_per_study"):
        pacs.get_study(case["study_instance_uid"], tmp_path)
