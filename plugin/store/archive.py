"""The archive the duplicate check searches: every study's image fingerprint, kept in the database.

The service checks each study it scores against every image it has seen, and the review page
shows a case's similar images elsewhere in the archive. Held in memory only, that archive would
be what the process scored since it started: after a restart, an image re-filed under another
patient would be compared with nothing. So the service and sweeps keep each study's fingerprint
(`fusion.checks.duplicates.ImageFingerprint`: its perceptual hashes, and its fine texture as
int8) in ``image_fingerprints``, one row per (patient key, StudyInstanceUID), replaced when the
study is scored again::

    archive = ImageArchive(store)
    index = archive.index()                # every kept fingerprint's hashes; textures read on a match
    archive.keep([(patient_key, fp)], source=ResultSource.CDS)
    archive.refresh(index)                 # what other processes (a sweep) kept since

The index holds about 100 bytes a study (hashes and keys); a texture (64 KB) is read from the
database only for a study whose hashes matched, so an archive of 10^5 studies costs about 10 MB
of memory rather than 25 GB. Fingerprints of another `FINGERPRINT_VERSION` are left out: they
were computed another way, and the study's next scoring replaces them.

Patient keys are patient data (the FHIR Patient id, or the DICOM PatientID): stored like the
results' patient ids, never logged.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timedelta

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy.dialects import postgresql, sqlite

from fusion.checks.duplicates import (
    DEFAULT_MAX_DHASH_DISTANCE,
    DEFAULT_MAX_PHASH_DISTANCE,
    DEFAULT_MIN_TEXTURE_CORRELATION,
    FINGERPRINT_VERSION,
    AnyFingerprint,
    PackedFingerprint,
    PerceptualHashIndex,
    unpack_texture,
)
from plugin.store.models import ImageFingerprintRow
from plugin.store.records import ResultSource
from plugin.store.store import Store

__all__ = ["ImageArchive"]

logger = logging.getLogger(__name__)

#: `refresh` reads again what was kept this long before the newest row it saw: a writer's clock
#: and its commit may lag another's.
_REFRESH_OVERLAP = timedelta(minutes=2)
_PAGE = 5000


class ImageArchive:
    """See the module docstring; safe to share between threads, as its `Store` is."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._seen: weakref.WeakKeyDictionary[PerceptualHashIndex, datetime] = weakref.WeakKeyDictionary()
        # an index -> the newest recorded_at it holds

    def keep(
        self,
        images: Iterable[tuple[str, AnyFingerprint]],
        *,
        source: ResultSource,
        input_fingerprints: Sequence[str | None] | None = None,
    ) -> int:
        """Keep (patient key, fingerprint) pairs (as computed, or packed) in one statement, replacing a
        study's earlier one under the same patient (the last of a study given twice wins);
        ``input_fingerprints`` names each one's swept input. How many rows were written."""
        pairs = list(images)
        inputs = list(input_fingerprints) if input_fingerprints is not None else [None] * len(pairs)
        if len(inputs) != len(pairs):
            raise ValueError(f"{len(inputs)} input fingerprints for {len(pairs)} images: give one each")
        if not pairs:
            return 0
        now = self.store._now()
        rows: dict[tuple[str, str], dict[str, object]] = {}
        for (key, fp), input_fp in zip(pairs, inputs, strict=True):
            packed = fp if isinstance(fp, PackedFingerprint) else fp.packed()
            rows[(key, packed.study_instance_uid)] = _row(key, packed, source, input_fp, now)
        with self.store._transaction(write=True) as session:
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            values = list(rows.values())
            for start in range(0, len(values), _PAGE // 10):  # within any database's bound parameters
                statement = insert(ImageFingerprintRow).values(values[start : start + _PAGE // 10])
                session.execute(
                    statement.on_conflict_do_update(
                        index_elements=list(_KEY),
                        set_={k: statement.excluded[k] for k in _COLUMNS if k not in _KEY},
                    )
                )
        logger.debug("kept the fingerprints of studies %s", ", ".join(uid for _, uid in rows))
        return len(rows)

    def index(
        self,
        max_phash_distance: int = DEFAULT_MAX_PHASH_DISTANCE,
        max_dhash_distance: int = DEFAULT_MAX_DHASH_DISTANCE,
        min_texture_correlation: float = DEFAULT_MIN_TEXTURE_CORRELATION,
    ) -> PerceptualHashIndex:
        """A `PerceptualHashIndex` (these thresholds) of every kept fingerprint, its textures read
        back on a match."""
        index = PerceptualHashIndex(
            max_phash_distance, max_dhash_distance, min_texture_correlation, textures=self.texture
        )
        self.refresh(index)
        return index

    def refresh(self, index: PerceptualHashIndex) -> int:
        """Add to ``index`` what was kept since it last looked (by this archive): another process's
        sweep, say. How many fingerprints it read."""
        if index.textures is None:
            raise ValueError("the index must read its textures back (ImageArchive.index makes one)")
        since = self._seen.get(index)
        query = sa.select(
            ImageFingerprintRow.patient_key,
            ImageFingerprintRow.study_instance_uid,
            ImageFingerprintRow.sop_instance_uid,
            ImageFingerprintRow.phash,
            ImageFingerprintRow.dhash,
            ImageFingerprintRow.dicom_patient_id,
            ImageFingerprintRow.recorded_at,
        ).where(ImageFingerprintRow.version == FINGERPRINT_VERSION)
        if since is not None:
            query = query.where(ImageFingerprintRow.recorded_at >= since - _REFRESH_OVERLAP)
        count = 0
        newest = since
        with self.store._transaction(write=False) as session:
            for key, study, sop, phash, dhash, dicom_patient, recorded in session.execute(
                query.execution_options(yield_per=_PAGE)
            ):
                packed = PackedFingerprint(
                    study, sop, phash, dhash, None, None, dicom_patient_id=dicom_patient
                )
                index.add_fingerprint(packed, key, texture_elsewhere=True)
                newest = recorded if newest is None else max(newest, recorded)
                count += 1
        if newest is not None:
            self._seen[index] = newest
        return count

    def texture(self, patient_key: str, study_instance_uid: str) -> NDArray[np.float32] | None:
        """The kept texture of a study under a patient, or None (none kept, or of another version)."""
        query = sa.select(ImageFingerprintRow.texture, ImageFingerprintRow.texture_scale).where(
            ImageFingerprintRow.patient_key == patient_key,
            ImageFingerprintRow.study_instance_uid == study_instance_uid,
            ImageFingerprintRow.version == FINGERPRINT_VERSION,
        )
        with self.store._transaction(write=False) as session:
            found = session.execute(query).first()
        if found is None or found.texture is None or found.texture_scale is None:
            return None
        return unpack_texture(found.texture, found.texture_scale)

    def for_inputs(self, input_fingerprints: Collection[str]) -> dict[str, tuple[str, PackedFingerprint]]:
        """The kept (patient key, packed fingerprint) of swept inputs, by input fingerprint; inputs
        without one kept (of this version) are left out."""
        wanted = list(dict.fromkeys(input_fingerprints))
        found: dict[str, tuple[str, PackedFingerprint]] = {}
        with self.store._transaction(write=False) as session:
            for start in range(0, len(wanted), 500):  # within any database's bound parameters
                query = sa.select(ImageFingerprintRow).where(
                    ImageFingerprintRow.input_fingerprint.in_(wanted[start : start + 500]),
                    ImageFingerprintRow.version == FINGERPRINT_VERSION,
                )
                for row in session.scalars(query):
                    assert row.input_fingerprint is not None
                    found[row.input_fingerprint] = (row.patient_key, _packed(row))
        return found


_KEY = ("patient_key", "study_instance_uid")
_COLUMNS = (
    *_KEY,
    "sop_instance_uid",
    "version",
    "phash",
    "dhash",
    "texture",
    "texture_scale",
    "dicom_patient_id",
    "source",
    "input_fingerprint",
    "recorded_at",
)


def _row(
    patient_key: str,
    packed: PackedFingerprint,
    source: ResultSource,
    input_fingerprint: str | None,
    now: datetime,
) -> dict[str, object]:
    return {
        "patient_key": patient_key,
        "study_instance_uid": packed.study_instance_uid,
        "sop_instance_uid": packed.sop_instance_uid,
        "version": packed.version,
        "phash": packed.phash,
        "dhash": packed.dhash,
        "texture": packed.texture,
        "texture_scale": packed.texture_scale,
        "dicom_patient_id": packed.dicom_patient_id,
        "source": source.value,
        "input_fingerprint": input_fingerprint,
        "recorded_at": now,
    }


def _packed(row: ImageFingerprintRow) -> PackedFingerprint:
    return PackedFingerprint(
        row.study_instance_uid,
        row.sop_instance_uid,
        row.phash,
        row.dhash,
        row.texture,
        row.texture_scale,
        row.version,
        row.dicom_patient_id,
    )
