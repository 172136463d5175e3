"""The image archive: fingerprints kept in the database, an index of them, what other processes keep."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from imagehash import ImageHash

from fusion.checks.duplicates import FINGERPRINT_VERSION, ImageFingerprint
from plugin.store import ImageArchive, ResultSource, Store
from plugin.store.models import ImageFingerprintRow


def _fingerprint(seed: int, study_uid: str, *, texture_seed: int | None = None) -> ImageFingerprint:
    """Random hashes (one seed, one image layout) and a random unit texture (the acquisition)."""
    rng = np.random.default_rng(seed)
    phash, dhash = rng.random((16, 16)) < 0.5, rng.random((8, 8)) < 0.5
    noise = np.random.default_rng(seed if texture_seed is None else texture_seed).normal(size=(256, 256))
    texture = (noise / np.linalg.norm(noise)).astype(np.float32)
    return ImageFingerprint(study_uid, study_uid + ".1", ImageHash(phash), ImageHash(dhash), texture)


def test_an_image_kept_before_a_restart_is_found_after_it(db_path: Path) -> None:
    """Another patient's study re-filed: matched against the archive a new process reads."""
    with Store.open(db_path) as store:
        assert ImageArchive(store).keep([("pat-a", _fingerprint(1, "1.2.3.1"))], source=ResultSource.CDS) == 1
        ImageArchive(store).keep([("pat-b", _fingerprint(2, "1.2.3.2"))], source=ResultSource.REST)
    with Store.open(db_path) as store:  # a new process
        index = ImageArchive(store).index()
        assert len(index) == 2
        matches = index.query_fingerprint(_fingerprint(1, "1.2.3.9"), "pat-z")
        assert [(m.study_instance_uid, m.patient_key, m.same_patient) for m in matches] == [
            ("1.2.3.1", "pat-a", False)
        ]
        assert matches[0].texture_correlation == pytest.approx(1.0, abs=1e-3)
        assert matches[0].sop_instance_uid == "1.2.3.1.1"
        # the same layout with another acquisition's texture is not a duplicate
        assert index.query_fingerprint(_fingerprint(1, "1.2.3.9", texture_seed=99), "pat-z") == ()


def test_a_study_kept_again_replaces_its_fingerprint(store: Store) -> None:
    archive = ImageArchive(store)
    archive.keep([("pat-a", _fingerprint(1, "1.2.3.1"))], source=ResultSource.CDS)
    archive.keep([("pat-a", _fingerprint(3, "1.2.3.1"))], source=ResultSource.INGEST)
    archive.keep([("pat-b", _fingerprint(3, "1.2.3.1"))], source=ResultSource.INGEST)  # another patient's
    with store._transaction(write=False) as session:
        rows = session.execute(
            sa.select(ImageFingerprintRow.patient_key, ImageFingerprintRow.source).order_by("patient_key")
        ).all()
    assert rows == [("pat-a", "ingest"), ("pat-b", "ingest")]
    index = archive.index()
    assert index.query_fingerprint(_fingerprint(1, "1.2.3.8"), "pat-z") == ()
    assert {m.patient_key for m in index.query_fingerprint(_fingerprint(3, "1.2.3.8"), "pat-z")} == {
        "pat-a",
        "pat-b",
    }


def test_refresh_adds_what_another_process_kept(db_path: Path) -> None:
    with Store.open(db_path) as service, Store.open(db_path) as sweep:
        archive = ImageArchive(service)
        index = archive.index()
        assert len(index) == 0
        ImageArchive(sweep).keep(
            [("pat-a", _fingerprint(1, "1.2.3.1")), ("pat-b", _fingerprint(2, "1.2.3.2"))],
            source=ResultSource.SWEEP,
            input_fingerprints=["in-1", "in-2"],
        )
        assert archive.refresh(index) == 2
        assert len(index) == 2
        archive.refresh(index)  # rows read again in the overlap add nothing
        assert len(index) == 2 and len(index._rows) == 2
        assert index.query_fingerprint(_fingerprint(2, "1.2.3.9"), "pat-z")[0].study_instance_uid == "1.2.3.2"


def test_fingerprints_of_swept_inputs_come_back_with_their_texture(store: Store) -> None:
    archive = ImageArchive(store)
    fp = _fingerprint(1, "1.2.3.1")
    archive.keep(
        [("pat-a", fp), ("pat-b", _fingerprint(2, "1.2.3.2"))],
        source=ResultSource.SWEEP,
        input_fingerprints=["in-1", None],
    )
    found = archive.for_inputs(["in-1", "in-2", "in-1"])
    assert list(found) == ["in-1"]
    key, packed = found["in-1"]
    back = packed.unpacked()
    assert key == "pat-a" and (back.phash, back.dhash) == (fp.phash, fp.dhash)
    assert float(np.dot(fp.texture.ravel(), back.texture.ravel())) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="one each"):
        archive.keep([("pat-a", fp)], source=ResultSource.SWEEP, input_fingerprints=[])


def test_fingerprints_of_another_version_are_left_out(store: Store) -> None:
    """Hashes computed another way are not compared with new ones (the next scoring replaces them)."""
    archive = ImageArchive(store)
    archive.keep(
        [("pat-a", _fingerprint(1, "1.2.3.1"))], source=ResultSource.SWEEP, input_fingerprints=["in-1"]
    )
    with store._transaction(write=True) as session:
        session.execute(sa.update(ImageFingerprintRow).values(version=FINGERPRINT_VERSION - 1))
    assert len(archive.index()) == 0
    assert archive.texture("pat-a", "1.2.3.1") is None
    assert archive.for_inputs(["in-1"]) == {}


def test_a_flat_image_is_kept_without_texture(store: Store) -> None:
    archive = ImageArchive(store)
    flat = replace(_fingerprint(1, "1.2.3.1"), texture=None)
    archive.keep([("pat-a", flat)], source=ResultSource.CDS)
    assert archive.texture("pat-a", "1.2.3.1") is None
    (match,) = archive.index().query_fingerprint(_fingerprint(1, "1.2.3.9"), "pat-z")
    assert match.texture_correlation is None  # the hashes alone decide, as for a flat image held


def test_the_header_patient_id_is_kept_and_decides_a_mixed_pair(db_path: Path) -> None:
    """Kept without a record (keyed by the header's PatientID), found again with one: the same
    patient, also after a restart."""
    kept = replace(_fingerprint(1, "1.2.3.1"), dicom_patient_id="MRN1")
    with Store.open(db_path) as store:
        ImageArchive(store).keep([("MRN1", kept)], source=ResultSource.REST)
    with Store.open(db_path) as store:
        index = ImageArchive(store).index()
        (match,) = index.query_fingerprint(
            replace(_fingerprint(1, "1.2.3.9"), dicom_patient_id="MRN1"), "pat-1"
        )
        assert match.same_patient
        (match,) = index.query_fingerprint(
            replace(_fingerprint(1, "1.2.3.9"), dicom_patient_id="MRN2"), "pat-2"
        )
        assert not match.same_patient
