"""Feature extraction: per-modality normalisation, frame choice, forensic view, record tokens."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from connectors.domain import Case, Series
from fusion.features import (
    MODALITIES,
    CaseFeatures,
    FeatureConfig,
    TokenKind,
    extract_features,
    hash_bucket,
)
from fusion.features import window as hu_window


def _load_model_cases() -> ModuleType:
    """``_model_cases.py`` under a unique name (the test directories are not packages)."""
    name = "tests_fusion_model_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_model_cases.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


mc = _load_model_cases()
STUDY_TIME, make_case, make_record, make_study, phantom = (
    mc.STUDY_TIME,
    mc.make_case,
    mc.make_record,
    mc.make_study,
    mc.phantom,
)

CFG = FeatureConfig(image_size=32, forensic_crop=32, max_tokens=32, code_buckets=256)


def _ct_case(volume: np.ndarray, idx: int = 1) -> Case:
    return Case(study=make_study(idx, "CT", volume.astype(np.float32)))


def test_hu_windows_map_to_unit_interval() -> None:
    x = np.array([-1200.0, -1000.0, -400.0, 200.0, 900.0], np.float32)
    assert hu_window(x, -1000, 200).tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize(
    ("hu", "expected"),
    [(-1000.0, 0.0), (240.0, 1.0), (40.0, 0.5 * (1040 / 1200 + 200 / 400)), (-600.0, 0.5 * (400 / 1200))],
)
def test_ct_image_is_mean_of_lung_and_soft_tissue_windows(hu: float, expected: float) -> None:
    feats = extract_features(_ct_case(np.full((5, 40, 40), hu)), CFG)
    assert feats.has_pixels
    assert feats.image.shape == (3, 32, 32)
    assert feats.image.dtype == np.float32
    assert np.allclose(feats.image, expected, atol=1e-5)
    assert feats.modality[MODALITIES.index("CT")] == 1.0


def test_ct_takes_slices_at_30_50_70_percent() -> None:
    # 11 slices, slice k has HU -1000 + 100 k: positions 3, 5, 7 are expected
    volume = np.stack([np.full((32, 32), -1000.0 + 100 * k) for k in range(11)])
    feats = extract_features(_ct_case(volume), CFG)
    lung = [(-1000 + 100 * k + 1000) / 1200 for k in (3, 5, 7)]
    soft = [min(1.0, max(0.0, (-1000 + 100 * k + 160) / 400)) for k in (3, 5, 7)]
    got = feats.image.mean(axis=(1, 2))
    assert got == pytest.approx([0.5 * (a + b) for a, b in zip(lung, soft, strict=True)], abs=1e-5)


def test_dx_percentile_normalisation_ignores_intensity_scale() -> None:
    pixels = phantom("DX", 64, lesion=True, seed=3)
    a = extract_features(Case(study=make_study(1, "DX", pixels)), CFG)
    b = extract_features(Case(study=make_study(1, "DX", pixels * 7.0 + 500.0)), CFG)
    assert a.image.min() >= 0.0 and a.image.max() <= 1.0
    assert a.image.max() > 0.9 and a.image.min() < 0.1
    np.testing.assert_allclose(a.image, b.image, atol=1e-4)
    np.testing.assert_allclose(a.forensic, b.forensic, atol=1e-3)  # robust-std normalised residual
    assert a.modality[MODALITIES.index("DX")] == 1.0
    # one frame, repeated into the three channels
    np.testing.assert_array_equal(a.image[0], a.image[2])


def test_mr_robust_zscore_is_scale_free_and_bounded() -> None:
    vol = phantom("MR", 48, lesion=True, seed=5)
    a = extract_features(Case(study=make_study(1, "MR", vol)), CFG)
    b = extract_features(Case(study=make_study(1, "MR", vol * 3.0)), CFG)
    np.testing.assert_allclose(a.image, b.image, atol=1e-4)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    # background is far below the brain's median: it maps to the bottom of the range
    assert a.image[:, 0, 0].max() < 0.1


def test_dx_uses_frontal_view_when_there_are_several() -> None:
    pixels = phantom("DX", 48, lesion=False, seed=1)
    study = make_study(1, "DX", pixels, views=("LL", "PA"))
    # make the lateral series blank so we can tell which one was used
    ll, pa = study.series
    blank = tuple(replace(i, loader=lambda: np.zeros((48, 48), np.float32)) for i in ll.instances)
    study = replace(study, series=(Series(**{**ll.__dict__, "instances": blank}), pa))
    feats = extract_features(Case(study=study), CFG)
    assert feats.image.std() > 0.05


def test_forensic_view_is_full_resolution_residual_crop() -> None:
    pixels = phantom("DX", 64, lesion=False, seed=2)
    smooth = phantom("DX", 64, lesion=False, seed=2, smooth=True)
    noisy = extract_features(Case(study=make_study(1, "DX", pixels)), CFG).forensic
    clean = extract_features(Case(study=make_study(1, "DX", smooth)), CFG).forensic
    assert noisy.shape == (1, 32, 32) and noisy.dtype == np.float32
    # a median-filter residual: ~zero mean, and much weaker on the smoothed ("synthetic") image
    assert abs(float(noisy.mean())) < 0.2
    assert float(np.abs(clean).mean()) < 0.5 * float(np.abs(noisy).mean())
    # larger crop than the frame: zero-padded, not resized
    big = extract_features(Case(study=make_study(1, "DX", pixels)), replace(CFG, forensic_crop=96)).forensic
    assert big.shape == (1, 96, 96)
    assert np.all(big[0, :10, :] == 0.0) and np.abs(big[0, 20:70, 20:70]).mean() > 0


def test_record_tokens_from_hand_built_record() -> None:
    case = make_case(7, modality="DX", lesion=True)  # record: pneumonia, CRP 85 (0-5), WBC 16 (4-11)
    feats = extract_features(case, CFG)
    n = feats.n_tokens
    kinds = [TokenKind(int(k)) for k in feats.token_kind[:n]]
    labels = list(feats.token_labels)
    assert kinds[0] is TokenKind.STUDY and labels[0] == "DX CHEST"
    assert not feats.token_mask[n:].any() and (feats.token_kind[n:] == 0).all()

    crp = labels.index("CRP 85 mg/L (high)")
    assert feats.token_refs[crp] == "Observation/crp-7"
    assert kinds[crp] is TokenKind.LAB
    assert feats.token_value[crp] == pytest.approx(4.0)  # 17 x the range, clipped to 4
    assert feats.token_time[crp] == pytest.approx(-math.log1p(1.0), abs=1e-6)  # 1 day before
    assert feats.token_present[crp] == 1.0
    wbc = labels.index("WBC 16 10*3/uL (high)")
    assert feats.token_value[wbc] == pytest.approx((16 - 4) / 7, rel=1e-5)
    assert feats.token_code[crp] == hash_bucket("http://loinc.org|1988-5", CFG.code_buckets)

    cond = labels.index("Pneumonia")
    assert kinds[cond] is TokenKind.CONDITION and feats.token_refs[cond] == "Condition/cond-7"
    assert feats.token_time[cond] == pytest.approx(-math.log1p(3.0), abs=1e-6)

    words = [labels[i] for i in range(n) if kinds[i] is TokenKind.REPORT_WORD]
    assert words == [
        f"report says '{w}'" for w in ("right", "lung", "consolidation", "consistent", "pneumonia")
    ]
    assert any(lb == "ordered for Pneumonia" for lb in labels)

    demo = {labels[i] for i in range(n) if kinds[i] is TokenKind.DEMOGRAPHICS}
    age = (STUDY_TIME.date() - case.record.patient.birth_date).days / 365.25  # type: ignore[union-attr]
    assert demo == {f"age {age:.0f}", "sex female", "BMI 24.0"}
    vital = [i for i in range(n) if kinds[i] is TokenKind.VITAL]
    assert len(vital) == 1 and feats.token_refs[vital[0]] == "Observation/bmi-7"


def test_normal_record_has_normal_lab_values_and_no_condition() -> None:
    feats = extract_features(make_case(8, lesion=False), CFG)
    labels = list(feats.token_labels)
    crp = labels.index("CRP 2 mg/L (normal)")
    assert feats.token_value[crp] == pytest.approx(0.4)
    assert TokenKind.CONDITION not in set(feats.token_kind.tolist())


def test_tokens_truncate_to_max_tokens_keeping_study_and_demographics() -> None:
    feats = extract_features(make_case(9, lesion=True), replace(CFG, max_tokens=5))
    assert feats.token_kind.shape == (5,) and feats.token_mask.all()
    assert feats.token_kind[0] == TokenKind.STUDY
    assert set(feats.token_kind[1:4].tolist()) == {int(TokenKind.DEMOGRAPHICS)}


def test_no_record_gives_only_the_study_token() -> None:
    feats = extract_features(make_case(3, with_record=False), CFG)
    assert not feats.has_record and feats.has_pixels
    assert feats.n_tokens == 1 and feats.token_kind[0] == TokenKind.STUDY


def test_undecodable_pixels_do_not_raise() -> None:
    feats = extract_features(make_case(4, undecodable=True), CFG)
    assert not feats.has_pixels
    assert feats.image.shape == (3, 32, 32) and not feats.image.any()
    assert feats.forensic.shape == (1, 32, 32) and not feats.forensic.any()
    assert feats.n_tokens > 1  # the record is still read


def test_features_are_deterministic_and_roundtrip_npz(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = extract_features(make_case(11, modality="CT", lesion=True), CFG)
    b = extract_features(make_case(11, modality="CT", lesion=True), CFG)
    for name in ("image", "forensic", "token_kind", "token_code", "token_value", "token_time"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.token_labels == b.token_labels
    a.save_npz(tmp_path / "f.npz")
    c = CaseFeatures.load_npz(tmp_path / "f.npz")
    np.testing.assert_array_equal(a.image, c.image)
    assert c.token_refs == a.token_refs and c.token_labels == a.token_labels
    assert c.has_pixels and c.has_record


def test_hash_bucket_is_stable_and_never_padding() -> None:
    assert hash_bucket("http://loinc.org|1988-5", 4096) == hash_bucket("http://loinc.org|1988-5", 4096)
    buckets = {hash_bucket(f"code-{i}", 16) for i in range(500)}
    assert 0 not in buckets and buckets <= set(range(1, 16))
    # pinned: a change here silently invalidates every trained bundle
    assert hash_bucket("http://loinc.org|1988-5", 4096) == _PINNED_CRP_BUCKET


def test_record_of_another_patient_changes_tokens_not_image() -> None:
    case = make_case(12, lesion=False)
    record, order, report = make_record(13, condition=True)
    other = replace(case, record=record, order=order, report=report)
    a, b = extract_features(case, CFG), extract_features(other, CFG)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.token_labels != b.token_labels


_PINNED_CRP_BUCKET = 536
