"""The service under uvicorn on a loopback port, scored by the shipped model, for HTTP tests."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.scorer import Scorer
from plugin.servers import ServerSettings
from plugin.service.app import create_app
from plugin.service.auth import hash_api_key
from plugin.service.background import serve_in_background
from plugin.settings import Settings
from tests.plugin.cds.cds_client import SimulatedCdsClient

API_KEY = "test-key-0123456789"

Serve = Callable[..., AbstractContextManager[str]]


@pytest.fixture(scope="session")
def scorer() -> Scorer:
    return Scorer(load_bundle(default_bundle_path(), device="cpu"))


@pytest.fixture(scope="session")
def cds_client() -> SimulatedCdsClient:
    return SimulatedCdsClient("https://ehr.example.org")


@pytest.fixture
def serve(tmp_path: Path, scorer: Scorer, cds_client: SimulatedCdsClient) -> Serve:
    """``with serve(**settings) as url:`` a running service; unless ``insecure_no_auth``, REST callers
    use ``API_KEY`` and the CDS client ``cds_client`` is on the allow-list."""

    @contextmanager
    def run(servers: ServerSettings | None = None, **fields: Any) -> Iterator[str]:
        fields.setdefault("data_dir", tmp_path / "data")
        if not fields.get("insecure_no_auth"):
            if "api_keys" not in fields:
                keys = tmp_path / "api-keys.json"
                keys.write_text(json.dumps({"tester": hash_api_key(API_KEY)}))
                fields["api_keys"] = keys
            if "cds_clients" not in fields:
                clients = tmp_path / "cds-clients.json"
                clients.write_text(json.dumps(cds_client.allow_list()))
                fields["cds_clients"] = clients
        app = create_app(Settings(**fields), servers, scorer=scorer)
        with serve_in_background(app) as url:
            yield url

    return run


def study_files(cohort: Path, index: int = 0) -> tuple[dict[str, Any], Path, list[Path]]:
    """The manifest entry of the cohort's ``index``-th study, its Bundle and its DICOM files."""
    manifest = json.loads((cohort / "manifest.json").read_text())
    case = manifest["cases"][index]
    return case, cohort / case["bundle"], sorted((cohort / case["dicom"]).rglob("*.dcm"))


def refiled_parts(dicom: list[Path], under: Path) -> list[tuple[str, tuple]]:
    """The study's pixels as a new study of the patient whose DICOM file ``under`` is (new UIDs)."""
    owner = pydicom.dcmread(under, stop_before_pixels=True)
    study, series = generate_uid(), generate_uid()
    parts = []
    for path in dicom:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "IssuerOfPatientID"):
            if keyword in owner:
                setattr(ds, keyword, owner[keyword].value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        parts.append(("dicom", (path.name, out.getvalue(), "application/dicom")))
    return parts
