"""The session's servers answer, with authentication on."""

import httpx


def test_orthanc_requires_credentials(orthanc):
    assert httpx.get(f"{orthanc.url}/system").status_code == 401
    assert httpx.get(f"{orthanc.url}/system", auth=orthanc.user).json()["DicomAet"] == "ORTHANC"


def test_sekmet_requires_credentials(sekmet):
    assert httpx.get(f"{sekmet.url}/Patient").status_code == 401
    assert httpx.get(f"{sekmet.url}/Patient", auth=sekmet.user).status_code == 200


def test_cohort_loads(loaded, orthanc):
    stats = httpx.get(f"{orthanc.url}/statistics", auth=orthanc.user).json()
    assert stats["CountInstances"] == sum(1 for p in (loaded / "dicom").rglob("*") if p.is_file())
