"""Tests of the simulated cohort's image side (`fusion.cohort.images`)."""

from __future__ import annotations

import sys
import zlib
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

import fusion.cohort.images as images
from connectors.domain import SiteDevice
from fusion.cohort.images import (
    inject_finding,
    remove_finding,
    render_study,
    synthesize,
    transplant,
    write_study,
)
from fusion.cohort.images.anatomy import build_chest
from fusion.cohort.images.blend import ct_lung_mask
from fusion.cohort.images.tamper import plan_tamper
from fusion.cohort.scenario import (
    ClinicalCondition,
    ImageFinding,
    Manipulation,
    PatientScenario,
    SimSite,
    StudyKind,
    StudyPlan,
)

ROOT = "1.2.826.0.1.3680043.10.999"
DX_PLAIN = SiteDevice("ACME Medical", "DigiRad 300", "DX1001", "DX", "XRROOM1", ("4.1",))
DX_JLS = SiteDevice("Borealis", "FlatPanel X", "DX2002", "DX", "XRPORT", ("2.7.1",))
CT = SiteDevice("ACME Medical", "Helix 64", "CT3003", "CT", "CT1", ("5.2",))
MR = SiteDevice("Magnetix", "Aurora 3T", "MR4004", "MR", "MR1", ("11.0",))
SITE = SimSite("org-1", "St Example Hospital", ROOT, "urn:mrn", "urn:acc", (DX_PLAIN, DX_JLS, CT, MR))


def make_plan(kind: StudyKind, device: SiteDevice, tag: str, findings=(), views=(), slices=0) -> StudyPlan:
    uid = f"{ROOT}.1.{tag}"
    n = max(len(views), 1)
    return StudyPlan(
        kind=kind,
        study_instance_uid=uid,
        series_instance_uids=tuple(f"{uid}.{i + 1}" for i in range(n)),
        accession_number=f"ACC{tag}",
        order_id=f"o{tag}",
        report_id=f"r{tag}",
        imaging_study_id=f"i{tag}",
        order_datetime=datetime(2023, 3, 1, 9, 0),
        study_datetime=datetime(2023, 3, 2, 10, 30),
        report_datetime=datetime(2023, 3, 2, 15, 0),
        device=device,
        image_findings=tuple(findings),
        views=tuple(views),
        slices=slices,
    )


def make_patient(pid: str = "p1", birth: date = date(1960, 5, 4), gender: str = "female") -> PatientScenario:
    return PatientScenario(pid, f"MRN-{pid}", "Doe", ("Jane",), gender, birth, 165.0, 70.0, False, (), ())


NODULE = ImageFinding(ClinicalCondition.LUNG_NODULE, "right", (0.3, 0.45, 0.5), 0.16, 0.5)
PNEUMONIA = ImageFinding(ClinicalCondition.PNEUMONIA, "left", (0.7, 0.5, 0.4), 0.2, 0.8)


@pytest.fixture(scope="module")
def patient() -> PatientScenario:
    return make_patient()


@pytest.fixture(scope="module")
def ct_plain(patient):
    return render_study(patient, make_plan(StudyKind.CHEST_CT, CT, "2", slices=12), seed=3)


@pytest.fixture(scope="module")
def ct_nodule(patient):
    return render_study(patient, make_plan(StudyKind.CHEST_CT, CT, "2", (NODULE,), slices=12), seed=3)


def _region(series, finding, half_mm=5.0):
    n, h, w = series.frames.shape
    x, y, z = finding.center
    k = round(z * (n - 1)) if n > 1 else 0
    r = max(int(half_mm / series.pixel_spacing[0]), 1)
    cy, cx = int(y * h), int(x * w)
    return series.frames[k, cy - r : cy + r, cx - r : cx + r]


def test_exports_sorted_and_complete():
    assert images.__all__ == sorted(images.__all__)
    for name in images.__all__:
        assert hasattr(images, name)


def test_same_seed_same_pixels_other_seed_other_noise(patient):
    plan = make_plan(StudyKind.CHEST_DX, DX_PLAIN, "1", views=("PA",))
    a, b = render_study(patient, plan, 7), render_study(patient, plan, 7)
    c = render_study(patient, plan, 8)
    assert np.array_equal(a.series[0].frames, b.series[0].frames)
    assert not np.array_equal(a.series[0].frames, c.series[0].frames)
    assert a.series[0].frames.dtype == np.float32 and a.series[0].frames.shape == (1, 512, 512)


def test_ct_hounsfield_ranges(ct_plain, patient):
    s = ct_plain.series[0]
    vol = s.frames
    assert s.slice_thickness and len(s.slice_positions) == vol.shape[0]
    assert np.allclose(np.diff(s.slice_positions), s.slice_thickness)
    assert abs(float(np.median(vol[:, :8, :8])) + 1000.0) < 40.0  # air outside the body
    lung = ct_lung_mask(vol)
    assert -900.0 < float(np.median(vol[lung])) < -750.0
    anat = build_chest(patient, (), 62.0, np.random.default_rng(zlib.crc32(patient.patient_id.encode())))
    sp = s.pixel_spacing[0]
    mid = vol.shape[0] // 2
    row = int(256 + anat.spine_y / sp)
    spine = vol[mid, row - 20 : row + 20, 236:276]
    assert 400.0 < float(spine.max()) < 1100.0  # cortical bone
    wall_col = int(256 - (anat.half_width - anat.fat - 8.0) / sp)  # muscle of the lateral chest wall
    soft = vol[mid, 250:262, wall_col - 2 : wall_col + 2]
    assert -20.0 < float(np.median(soft)) < 100.0


def test_ct_nodule_and_consolidation_raise_density(ct_plain, ct_nodule, patient):
    assert (
        _region(ct_nodule.series[0], NODULE, 3).mean() > _region(ct_plain.series[0], NODULE, 3).mean() + 400
    )
    cons = render_study(patient, make_plan(StudyKind.CHEST_CT, CT, "2", (PNEUMONIA,), slices=12), seed=3)
    assert (
        _region(cons.series[0], PNEUMONIA, 12).mean()
        > _region(ct_plain.series[0], PNEUMONIA, 12).mean() + 250
    )


def test_dx_consolidation_raises_signal(patient):
    f = replace(PNEUMONIA, center=(0.7, 0.5, 0.0))
    base = render_study(patient, make_plan(StudyKind.CHEST_DX, DX_PLAIN, "1", views=("PA",)), 5)
    sick = render_study(patient, make_plan(StudyKind.CHEST_DX, DX_PLAIN, "1", (f,), views=("PA",)), 5)
    assert _region(sick.series[0], f, 15).mean() > _region(base.series[0], f, 15).mean() + 200


def _heart_width(study) -> int:
    """Width (pixels) of the non-lung band around the heart on the widest heart row."""
    vol = study.series[0].frames
    lung = ct_lung_mask(vol)
    best = 0
    for k in range(vol.shape[0] // 4):
        for row in range(220, 300, 4):
            line = lung[k, row]
            left = np.nonzero(line[:280])[0]
            right = np.nonzero(line[280:])[0]
            if len(left) and len(right):
                best = max(best, int(280 + right[0] - left[-1]))
    return best


def test_heart_failure_enlarges_the_heart(ct_plain, patient):
    hf = ImageFinding(ClinicalCondition.HEART_FAILURE, None, (0.55, 0.45, 0.3), 0.3, 0.9)
    sick = render_study(patient, make_plan(StudyKind.CHEST_CT, CT, "2", (hf,), slices=12), seed=3)
    assert _heart_width(sick) > _heart_width(ct_plain) * 1.12


def test_brain_ventricles_grow_with_age():
    def csf_centre(birth: date) -> int:
        pt = make_patient("b", birth, "male")
        s = render_study(pt, make_plan(StudyKind.BRAIN_MR, MR, "3", slices=12), 4).series[0]
        assert s.frames.min() >= 0.0
        vals = []
        for k in range(s.frames.shape[0]):
            f = s.frames[k]
            bright = f > 0.75 * np.percentile(f, 99.5)
            vals.append(int(bright[206:306, 226:286].sum()))
        return max(vals)

    assert csf_centre(date(1938, 1, 1)) > 1.4 * csf_centre(date(1998, 1, 1))


def test_write_and_read_back(tmp_path: Path, patient, ct_plain):
    folder = write_study(ct_plain, patient, SITE, tmp_path)
    files = sorted(folder.glob("*.dcm"))
    assert folder.name == ct_plain.plan.study_instance_uid and len(files) == 12
    ds = pydicom.dcmread(files[3])
    assert ds.file_meta.ImplementationClassUID.startswith(ROOT + ".")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.SOPInstanceUID.startswith(ROOT + ".") and ds.FrameOfReferenceUID.startswith(ROOT + ".")
    assert ds.PatientID == patient.mrn and ds.PatientName == "Doe^Jane" and ds.PatientSex == "F"
    assert ds.PatientAge == "062Y" and ds.StudyDate == "20230302"
    for kw in (
        "KVP",
        "XRayTubeCurrent",
        "ExposureTime",
        "SliceThickness",
        "ConvolutionKernel",
        "ReconstructionDiameter",
        "GantryDetectorTilt",
        "ImagePositionPatient",
        "ImageOrientationPatient",
    ):
        assert kw in ds, kw
    assert ds.Manufacturer == CT.manufacturer and ds.DeviceSerialNumber == CT.serial_number
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.abs(hu - np.clip(ct_plain.series[0].frames[3], -1024, 3071)).max() <= 0.5 + 1e-3
    assert len({pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}) == 12


@pytest.mark.parametrize(
    "tamper",
    [None, Manipulation.HEADER_IDENTITY, Manipulation.HEADER_DATES, Manipulation.HEADER_DEVICE],
)
def test_series_encoder_writes_what_save_as_writes(tmp_path: Path, patient, ct_plain, monkeypatch, tamper):
    from fusion.cohort.images import dicomwrite

    mr = render_study(patient, make_plan(StudyKind.BRAIN_MR, MR, "41", slices=4), seed=2)
    for study in (ct_plain, mr):
        for seed in (0, 1):
            fast = write_study(study, patient, SITE, tmp_path / "fast", header_tamper=tamper, seed=seed)
            monkeypatch.setattr(dicomwrite, "_FAST_WRITE", False)
            slow = write_study(study, patient, SITE, tmp_path / "slow", header_tamper=tamper, seed=seed)
            monkeypatch.setattr(dicomwrite, "_FAST_WRITE", True)
            names = sorted(f.name for f in fast.glob("*.dcm"))
            assert names == sorted(f.name for f in slow.glob("*.dcm")) and names
            for name in names:
                assert (fast / name).read_bytes() == (slow / name).read_bytes(), name


def test_remove_finding_leaves_pixels_away_from_the_lesion(ct_nodule):
    cleaned = remove_finding(ct_nodule, NODULE, seed=5)
    before, after = ct_nodule.series[0].frames, cleaned.series[0].frames
    assert np.array_equal(before[:, :, 300:], after[:, :, 300:])
    assert np.array_equal(remove_finding(ct_nodule, NODULE, seed=5).series[0].frames, after)


def test_compressed_monochrome1_dx_decodes(tmp_path: Path, patient):
    study = render_study(patient, make_plan(StudyKind.CHEST_DX, DX_JLS, "5", views=("PA", "LL")), 2)
    folder = write_study(study, patient, SITE, tmp_path)
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 2
    ds = pydicom.dcmread(files[1])
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.ViewPosition == "LL"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
    top = (1 << ds.BitsStored) - 1
    expected = np.clip(np.rint(study.series[1].frames[0] * 4.0), 0, top)
    assert np.array_equal(top - ds.pixel_array.astype(np.int64), expected.astype(np.int64))
    for kw in (
        "KVP",
        "ExposureTime",
        "XRayTubeCurrent",
        "Exposure",
        "DistanceSourceToDetector",
        "DistanceSourceToPatient",
        "ImagerPixelSpacing",
        "PixelSpacing",
        "DetectorType",
    ):
        assert kw in ds, kw


def _flat(ds) -> dict[str, object]:
    out = {e.keyword: e.value for e in ds if e.keyword != "PixelData"}
    out.update({e.keyword: e.value for e in ds.file_meta})
    return out


@pytest.mark.parametrize(
    "kind", [Manipulation.HEADER_IDENTITY, Manipulation.HEADER_DATES, Manipulation.HEADER_DEVICE]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_header_tamper_changes_exactly_the_intended_attributes(tmp_path: Path, patient, kind, seed):
    plan = make_plan(StudyKind.CHEST_DX, DX_PLAIN, "6", views=("PA",))
    study = render_study(patient, plan, 1)
    clean = pydicom.dcmread(next(write_study(study, patient, SITE, tmp_path / "a").glob("*.dcm")))
    bad = pydicom.dcmread(
        next(write_study(study, patient, SITE, tmp_path / "b", header_tamper=kind, seed=seed).glob("*.dcm"))
    )
    a, b = _flat(clean), _flat(bad)
    changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    intended = plan_tamper(kind, patient, plan, SITE, "DX", seed)
    assert changed and changed == set(intended.keywords)
    assert bad.PatientID == clean.PatientID
    if kind is Manipulation.HEADER_DATES:
        assert bad.StudyDate < "20230301" or bad.StudyDate > "20230302"
    if kind is Manipulation.HEADER_DEVICE and intended.variant == "foreign-device":
        assert not SITE.profile.knows_device(
            bad.Manufacturer, bad.ManufacturerModelName, bad.DeviceSerialNumber
        )
    if kind is Manipulation.HEADER_DEVICE and intended.variant == "toolkit":
        assert not bad.file_meta.ImplementationClassUID.startswith(ROOT)


def test_inject_changes_only_the_lesion_region(ct_plain):
    out = inject_finding(ct_plain, NODULE, seed=11)
    before, after = ct_plain.series[0].frames, out.series[0].frames
    assert _region(out.series[0], NODULE, 3).mean() > _region(ct_plain.series[0], NODULE, 3).mean() + 400
    assert np.array_equal(before[:, :, 300:], after[:, :, 300:])  # the other lung is untouched
    assert out.series[0].series_instance_uid == ct_plain.series[0].series_instance_uid


def test_inject_dx_shows_in_both_views(patient):
    study = render_study(patient, make_plan(StudyKind.CHEST_DX, DX_PLAIN, "1", views=("PA", "LL")), 5)
    out = inject_finding(study, replace(NODULE, size=0.25), seed=3)
    for s0, s1 in zip(study.series, out.series, strict=True):
        assert np.abs(s1.frames - s0.frames).max() > 100.0


def test_remove_finding_reduces_the_lesion(ct_plain, ct_nodule):
    cleaned = remove_finding(ct_nodule, NODULE, seed=5)
    lesion = _region(ct_nodule.series[0], NODULE, 3).mean()
    healthy = _region(ct_plain.series[0], NODULE, 3).mean()
    after = _region(cleaned.series[0], NODULE, 3).mean()
    assert after < healthy + 0.25 * (lesion - healthy)


def test_transplant_keeps_donor_pixels_under_target_uids(ct_plain):
    target = make_plan(StudyKind.CHEST_CT, CT, "9", slices=12)
    out = transplant(target, ct_plain)
    assert out.plan is target
    assert out.series[0].series_instance_uid == target.series_instance_uids[0]
    assert np.array_equal(out.series[0].frames, ct_plain.series[0].frames)
    with pytest.raises(ValueError, match="series UIDs"):
        transplant(replace(target, series_instance_uids=()), ct_plain)


def test_synthesize_uses_the_generator_and_fails_clearly_without_one(ct_plain, monkeypatch):
    out = synthesize(ct_plain, 1, generator=lambda f, kind, rng: f * 0 + rng.normal(size=f.shape))
    assert out.series[0].frames.shape == ct_plain.series[0].frames.shape
    assert not np.array_equal(out.series[0].frames, ct_plain.series[0].frames)
    monkeypatch.setitem(sys.modules, "fusion.generators", None)
    with pytest.raises(RuntimeError, match="generator"):
        synthesize(ct_plain, 1)
