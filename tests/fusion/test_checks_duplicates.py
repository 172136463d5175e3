from dataclasses import replace

import numpy as np
import pytest

from fusion.checks import duplicates
from fusion.checks.duplicates import PerceptualHashIndex


def study_with(cf, img, uid, modality="DX"):
    case = cf.with_pixels(cf.make_case(modality), img.astype(np.float32))
    return cf.with_study(case, study_instance_uid=uid).study


def reencoded_variants(img):
    rng = np.random.default_rng(7)
    return {
        "identical": img,
        "lossless-16bit": img.astype(np.uint16).astype(np.float32),
        "rescaled": img * 0.8 + 100,
        "mild-noise": img + rng.normal(0, 3, img.shape),
    }


@pytest.mark.parametrize("variant", ["identical", "lossless-16bit", "rescaled", "mild-noise"])
def test_same_pixels_refiled_under_another_patient_are_found(cf, variant):
    original = cf.smooth_image(1)
    index = PerceptualHashIndex()
    assert index.add(study_with(cf, original, "1.2.3.100"), "pat-other")
    refiled = study_with(cf, reencoded_variants(original)[variant], "1.2.3.200")
    matches = index.query(refiled, "pat-1")
    assert [m.study_instance_uid for m in matches] == ["1.2.3.100"]
    assert not matches[0].same_patient
    assert matches[0].texture_correlation is not None and matches[0].texture_correlation >= 0.9


def test_same_anatomy_with_its_own_acquisition_noise_is_not_a_duplicate(cf):
    """Hash candidates are confirmed by fine texture: a new acquisition has new noise."""
    rng = np.random.default_rng(3)
    base = cf.smooth_image(1)
    index = PerceptualHashIndex()
    index.add(study_with(cf, base, "1.2.3.100"), "pat-other")
    reacquired = study_with(cf, base + rng.normal(0, 10, base.shape), "1.2.3.200")
    candidates = PerceptualHashIndex(min_texture_correlation=-1.0)
    candidates.add(study_with(cf, base, "1.2.3.100"), "pat-other")
    assert candidates.query(reacquired, "pat-1"), "the hashes alone call it a duplicate"
    assert index.query(reacquired, "pat-1") == ()


def test_texture_threshold_is_validated():
    with pytest.raises(ValueError, match="min_texture_correlation"):
        PerceptualHashIndex(min_texture_correlation=1.5)


@pytest.mark.parametrize("amplitude", [150.0, 60.0])
def test_look_alike_images_of_different_patients_do_not_match(cf, amplitude):
    """Same template (body and lungs), each with its own random smooth structure."""
    index = PerceptualHashIndex()
    for seed in range(12):
        index.add(study_with(cf, cf.smooth_image(seed, amplitude=amplitude), f"1.2.3.{seed}"), f"pat-{seed}")
    for seed in range(12, 20):
        query = study_with(cf, cf.smooth_image(seed, amplitude=amplitude), f"1.2.4.{seed}")
        assert index.query(query, f"pat-{seed}") == ()


def test_check_reports_other_patient_as_critical(cf):
    index = PerceptualHashIndex()
    index.add(study_with(cf, cf.smooth_image(3), "1.2.3.100"), "pat-other")
    case = cf.with_pixels(cf.make_case("DX"), cf.smooth_image(3) + 5.0)
    findings = duplicates.check_duplicates(case, cf.ctx(hash_index=index))
    assert cf.codes(findings) == {("duplicate.other-patient", "critical")}
    assert any(e.value == "1.2.3.100" for e in findings[0].evidence)
    assert "pat-other" not in findings[0].message


def test_same_study_is_not_its_own_duplicate_but_an_older_one_is(cf):
    case = cf.make_case("DX")
    index = PerceptualHashIndex()
    index.add(case.study, "pat-1")
    assert duplicates.check_duplicates(case, cf.ctx(hash_index=index)) == []
    index.add(replace(case.study, study_instance_uid="1.2.3.999"), "pat-1")
    assert cf.codes(duplicates.check_duplicates(case, cf.ctx(hash_index=index))) == {
        ("duplicate.same-patient", "warning")
    }


def test_ct_middle_slice_is_hashed_in_a_fixed_window(cf):
    case = cf.make_case("CT", n_instances=5)
    index = PerceptualHashIndex()
    index.add(case.study, "pat-other")
    assert len(index.query(cf.with_study(case, study_instance_uid="1.2.9.9").study, "pat-1")) == 1
    assert index.query(study_with(cf, cf.ct_slice(seed=1) * 0.5, "1.2.9", "CT"), "pat-1") == ()


def test_study_without_pixels_is_not_indexed(cf):
    case = cf.with_instances(cf.make_case(), loader=None)
    index = PerceptualHashIndex()
    assert not index.add(case.study, "pat-1")
    assert len(index) == 0
    assert index.query(case.study, "pat-2") == ()


def test_no_index_no_finding(cf):
    assert duplicates.check_duplicates(cf.make_case(), cf.ctx()) == []


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="thresholds"):
        PerceptualHashIndex(max_phash_distance=300)


def test_a_packed_fingerprint_gives_the_same_hashes_and_nearly_the_same_texture(cf):
    fp = duplicates.fingerprint(study_with(cf, cf.smooth_image(1), "1.2.3.100"))
    packed = fp.packed()
    assert (len(packed.phash), len(packed.dhash), len(packed.texture)) == (32, 8, 256 * 256)
    back = packed.unpacked()
    assert (back.phash, back.dhash, back.sop_instance_uid) == (fp.phash, fp.dhash, fp.sop_instance_uid)
    assert back.texture.dtype == np.float32
    assert abs(float(np.dot(fp.texture.ravel(), back.texture.ravel())) - 1.0) < 1e-3
    assert packed.unpacked(with_texture=False).texture is None
    with pytest.raises(ValueError, match="bits"):
        replace(packed, phash=packed.phash[:-1]).unpacked()
    with pytest.raises(ValueError, match="texture"):
        replace(packed, texture=packed.texture[:-1]).unpacked()


def test_an_index_reads_a_texture_kept_elsewhere_only_for_a_hash_match(cf):
    """Textures kept elsewhere decide as textures held do: a re-filed copy matches, a new acquisition
    of the same anatomy does not; a study whose hashes are far is not read back at all."""
    rng = np.random.default_rng(3)
    base, far = cf.smooth_image(1), cf.smooth_image(5, amplitude=150.0)
    kept = {}
    read = []

    def texture(patient_key, study_uid):
        read.append(study_uid)
        return kept[(patient_key, study_uid)].unpacked().texture

    index = PerceptualHashIndex(textures=texture)
    for uid, img, patient in (("1.2.3.100", base, "pat-other"), ("1.2.3.300", far, "pat-3")):
        fp = duplicates.fingerprint(study_with(cf, img, uid))
        kept[(patient, uid)] = fp.packed()
        index.add_fingerprint(fp, patient, texture_elsewhere=True)
    refiled = index.query(study_with(cf, base, "1.2.3.200"), "pat-1")
    assert [(m.study_instance_uid, m.same_patient) for m in refiled] == [("1.2.3.100", False)]
    assert refiled[0].texture_correlation > 0.99
    assert read == ["1.2.3.100"]
    assert index.query(study_with(cf, base + rng.normal(0, 10, base.shape), "1.2.3.201"), "pat-1") == ()
    with pytest.raises(ValueError, match="texture loader"):
        PerceptualHashIndex().add_fingerprint(
            duplicates.fingerprint(study_with(cf, base, "1.2")), "p", texture_elsewhere=True
        )


def test_indexing_the_same_kept_fingerprint_again_adds_no_row(cf):
    fp = duplicates.fingerprint(study_with(cf, cf.smooth_image(1), "1.2.3.100"))
    index = PerceptualHashIndex(textures=lambda key, uid: None)
    for _ in range(3):
        index.add_fingerprint(fp, "pat-1", texture_elsewhere=True)
    assert len(index) == 1 and len(index._rows) == 1
    index.add_fingerprint(fp, "pat-1")  # now with its texture held: replaces the entry
    assert len(index) == 1 and len(index._rows) == 2


def test_a_study_indexed_under_another_key_is_not_its_own_duplicate(cf):
    """Scored once with its record (keyed by the FHIR Patient id) and once without (by its DICOM
    PatientID): the same StudyInstanceUID is the study itself, not an image of another patient."""
    study = study_with(cf, cf.smooth_image(1), "1.2.3.100")
    index = PerceptualHashIndex()
    index.add(study, "05360366")
    assert index.query(study, "pat-000000") == ()
    refiled = study_with(cf, cf.smooth_image(1), "1.2.3.200")
    assert [m.study_instance_uid for m in index.query(refiled, "pat-000000")] == ["1.2.3.100"]


def test_one_patient_under_a_fhir_id_and_a_dicom_patient_id_is_the_same_patient(cf):
    """The same pixels under a new UID: indexed without a record (keyed by the header's PatientID),
    queried with one (keyed by the FHIR Patient id) is the same patient; two FHIR ids that differ
    stay two patients whatever the headers say (an image re-filed under another record)."""
    img = cf.smooth_image(1)
    first, again = study_with(cf, img, "1.2.3.100"), study_with(cf, img, "1.2.3.200")
    header = duplicates.fingerprint(first).dicom_patient_id
    assert header and header == duplicates.fingerprint(again).dicom_patient_id
    index = PerceptualHashIndex()
    index.add(first, header)  # scored without its record
    (match,) = index.query(again, "pat-000000")  # scored with it
    assert match.same_patient
    records = PerceptualHashIndex()
    records.add(first, "pat-000001")
    (match,) = records.query(again, "pat-000000")
    assert not match.same_patient
    packed = duplicates.fingerprint(first).packed()
    assert packed.dicom_patient_id == header and packed.unpacked().dicom_patient_id == header


def test_a_study_is_hashed_once_for_its_check_and_its_indexing(cf, monkeypatch):
    """The service queries a study (its duplicate check), then indexes it: one fingerprint; a study
    whose hashing failed is hashed again next time."""
    computed = []
    real = duplicates.fingerprint

    def counted(study):
        computed.append(study.study_instance_uid)
        return real(study)

    monkeypatch.setattr(duplicates, "fingerprint", counted)
    index = PerceptualHashIndex()
    study = study_with(cf, cf.smooth_image(1), "1.2.3.100")
    index.query(study, "pat-1")
    index.add(study, "pat-1")
    assert computed == ["1.2.3.100"]
    other = study_with(cf, cf.smooth_image(2), "1.2.3.200")
    index.query(other, "pat-2")
    index.query(study, "pat-1")  # no longer the last one asked about
    assert computed == ["1.2.3.100", "1.2.3.200", "1.2.3.100"]
    monkeypatch.setattr(duplicates, "fingerprint", lambda s: (_ for _ in ()).throw(ValueError("bad pixels")))
    broken = study_with(cf, cf.smooth_image(3), "1.2.3.300")
    with pytest.raises(ValueError):
        index.query(broken, "pat-3")
    monkeypatch.setattr(duplicates, "fingerprint", counted)
    index.add(broken, "pat-3")
    assert computed[-1] == "1.2.3.300"
