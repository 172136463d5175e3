"""The session's servers answer, with authentication on."""

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_orthanc_requires_credentials(orthanc):
    assert httpx.get(f"{orthanc.url}/system").status_code == 401
    assert httpx.get(f"{orthanc.url}/system", auth=orthanc.user).json()["DicomAet"] == "ORTHANC"


def test_sekmet_requires_credentials(sekmet):
    assert httpx.get(f"{sekmet.url}/Patient").status_code == 401
    assert httpx.get(f"{sekmet.url}/Patient", auth=sekmet.user).status_code == 200


def test_cohort_loads(loaded, orthanc, sekmet):
    import pydicom

    sops = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        for p in (loaded / "dicom").rglob("*")
        if p.is_file()
    }
    found = httpx.post(
        f"{orthanc.url}/tools/find",
        auth=orthanc.user,
        json={"Level": "Instance", "Query": {}, "Expand": True},
    ).json()
    on_pacs = {i["MainDicomTags"]["SOPInstanceUID"] for i in found}
    assert sops <= on_pacs
    patients = httpx.get(f"{sekmet.url}/Patient", params={"_count": 1000}, auth=sekmet.user).json()
    assert {f"pat-{n:06d}" for n in range(8)} <= {e["resource"]["id"] for e in patients["entry"]}
