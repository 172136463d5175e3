"""Duplicate check: is this image another patient's image, re-filed?

``PerceptualHashIndex`` keeps two perceptual hashes of the middle frame of
each study's primary series, under a patient key: ``imagehash`` pHash with
``hash_size=16`` (256 bits) and dHash (64 bits). A study whose hashes are both
within the thresholds of a study filed under *another* patient is reported as
``duplicate.other-patient`` (critical); under the *same* patient but another
StudyInstanceUID as ``duplicate.same-patient`` (warning: an old image passed
off as a new study, or a study stored twice). A key is the FHIR Patient id when
the study was scored with its record, else its header's PatientID; a pair keyed
one way each is the same patient when the PatientID key is the other image's
header PatientID (`_same_patient`). An entry with the query's own
StudyInstanceUID is the study itself, under any key.

Normalisation before hashing: CT in a fixed window (-1100 .. 500 HU, so the
hash does not depend on the header's WindowCenter/Width), other modalities
between their 1st and 99th percentiles; then 8 bits, grey.

Thresholds (pHash <= 14 of 256 bits and dHash <= 8 of 64 bits), measured on
chest-radiograph-like phantoms that share one body-and-lungs template and differ
only by random smooth structure (``tests/fusion/_cases.py``, 128 and 256 px):
the same pixels re-encoded (JPEG q70), noised, linearly rescaled or
downsampled stay within 8 pHash bits (12 with heavy noise on the faintest
structure) and 3 dHash bits; two different images are 20+ pHash bits apart
when their own structure is 3 % of the image contrast or more (38+ at 7.5 %),
but can come within 8 bits at 1.5 %: such near-identical images are the known
limit. The 64-bit pHash separated look-alikes by only 6-10 bits, hence the
256-bit one; dHash alone does not separate look-alikes (0-2 bits) and only
guards against a chance pHash collision. Not robust to crops, flips or rotations.

Verification. Perceptual hashes see the coarse layout, and two patients imaged
the same way share it (on the simulated cohort, where every chest is drawn from
one template, a quarter of clean studies hash-matched another patient). So a
hash match is only a candidate: it is confirmed when the *fine texture* of the
two images correlates, ``texture_correlation >= min_texture_correlation``
(0.90). The texture is the 256 x 256 area-downsampled frame minus its
Gaussian-smoothed self (sigma 1 px), clipped at 2.5 robust standard deviations
so that shared outlines do not dominate, then zero-mean and unit-norm: the
acquisition noise and fine detail, which re-filed pixels carry unchanged and two
acquisitions (even of one patient) do not share.

Measured on a held-out simulated cohort (200 patients, seed 2; 281 studies):
re-filed images correlate at 1.000; JPEG q70, 80 % rescaled or noised copies of
CT and MR at >= 0.75, all within 6 pHash and 3 dHash bits; pairs of different
acquisitions reach at most 0.89 (DX), 0.60 (CT), 0.59 (MR). Known limit: DX
copies re-noised by a fraudster (sigma 4 grey levels) can fall to 0.26 and are
missed; the simulated DX template is more uniform than real patients are.
Lossy 8-bit re-encoding (JPEG q70 of a windowed copy) and downscaling erase
the sub-grey-level acquisition noise the verification relies on: such copies
are missed too. A critical finding is worth that price only when confirmed by
the pixels' own noise.

Kept elsewhere. An index of a whole archive need not hold every texture (256 KB
each as float32): `ImageFingerprint.packed` gives the hashes as bytes and the
texture quantised to int8 (64 KB; correlations move by less than 1e-3), for a
database (`plugin.store.ImageArchive`), and an index made with ``textures=``
holds only the hashes of fingerprints added with ``texture_elsewhere=True``,
reading a texture back only for a study whose hashes matched.
``FINGERPRINT_VERSION`` changes whenever the hashes or the texture would come
out differently, so that fingerprints kept by an earlier version are not
compared with new ones.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from connectors.domain import Case, Study
from fusion.checks.context import CheckContext
from fusion.result import Evidence, Finding, Severity

__all__ = [
    "DEFAULT_MAX_DHASH_DISTANCE",
    "DEFAULT_MAX_PHASH_DISTANCE",
    "DEFAULT_MIN_TEXTURE_CORRELATION",
    "FINGERPRINT_VERSION",
    "AnyFingerprint",
    "DuplicateMatch",
    "ImageFingerprint",
    "PackedFingerprint",
    "PerceptualHashIndex",
    "TextureLoader",
    "check_duplicates",
    "duplicate_findings",
    "fingerprint",
    "normalise_to_uint8",
    "unpack_texture",
]

DEFAULT_MAX_PHASH_DISTANCE = 14  # of 256 bits
DEFAULT_MAX_DHASH_DISTANCE = 8  # of 64 bits
DEFAULT_MIN_TEXTURE_CORRELATION = 0.90
_TEXTURE_SIZE = 256
_TEXTURE_CLIP = 2.5  # robust standard deviations
_PHASH_SIZE = 16
_CT_WINDOW = (-1100.0, 500.0)
#: Changes whenever `fingerprint` would give other hashes or another texture for the same pixels.
FINGERPRINT_VERSION = 2
_TEXTURE_LEVELS = 127  # int8 quantisation of a kept texture: -127 .. 127 times its scale


@dataclass(frozen=True)
class PackedFingerprint:
    """An `ImageFingerprint` as bytes: the hashes' bits packed (32 and 8 bytes), the texture as
    int8 with the float32 scale that gives it back (``None`` without texture)."""

    study_instance_uid: str
    sop_instance_uid: str
    phash: bytes
    dhash: bytes
    texture: bytes | None
    texture_scale: float | None
    version: int = FINGERPRINT_VERSION
    dicom_patient_id: str | None = None

    def unpacked(self, *, with_texture: bool = True) -> ImageFingerprint:
        """The fingerprint back (the texture as float32, or left out)."""
        texture = None
        if with_texture and self.texture is not None and self.texture_scale is not None:
            texture = unpack_texture(self.texture, self.texture_scale)
        return ImageFingerprint(
            self.study_instance_uid,
            self.sop_instance_uid,
            _unpacked_hash(self.phash, _PHASH_SIZE),
            _unpacked_hash(self.dhash, 8),
            texture,
            self.dicom_patient_id,
        )


def unpack_texture(data: bytes, scale: float) -> NDArray[np.float32]:
    """A texture kept as `PackedFingerprint.texture`, as float32 (its norm within 1e-3 of 1)."""
    levels = np.frombuffer(data, dtype=np.int8)
    if levels.size != _TEXTURE_SIZE * _TEXTURE_SIZE:
        raise ValueError(f"a kept texture has {_TEXTURE_SIZE}x{_TEXTURE_SIZE} values, not {levels.size}")
    out: NDArray[np.float32] = (levels.astype(np.float32) * np.float32(scale)).reshape(
        _TEXTURE_SIZE, _TEXTURE_SIZE
    )
    return out


def _unpacked_hash(data: bytes, size: int) -> imagehash.ImageHash:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits.size != size * size:
        raise ValueError(f"a kept hash has {size * size} bits, not {bits.size}")
    return imagehash.ImageHash(bits.astype(bool).reshape(size, size))


@dataclass(frozen=True)
class ImageFingerprint:
    """The perceptual hashes of one study's representative frame."""

    study_instance_uid: str
    sop_instance_uid: str
    phash: imagehash.ImageHash
    dhash: imagehash.ImageHash
    texture: NDArray[np.float32] | None = None  # unit-norm fine-texture residual, see module docstring
    dicom_patient_id: str | None = None  # the header's PatientID (see PerceptualHashIndex: same patient)

    def distance(self, other: ImageFingerprint) -> tuple[int, int]:
        """Hamming distances (pHash of 256 bits, dHash of 64 bits)."""
        return int(self.phash - other.phash), int(self.dhash - other.dhash)

    def packed(self) -> PackedFingerprint:
        """The fingerprint as bytes, to keep (see the module docstring)."""
        texture, scale = None, None
        if self.texture is not None:
            peak = float(np.abs(self.texture).max())
            scale = peak / _TEXTURE_LEVELS if peak > 0 else 1.0
            levels = np.rint(self.texture / np.float32(scale))
            texture = np.clip(levels, -_TEXTURE_LEVELS, _TEXTURE_LEVELS).astype(np.int8).tobytes()
        return PackedFingerprint(
            self.study_instance_uid,
            self.sop_instance_uid,
            _packed(self.phash).tobytes(),
            _packed(self.dhash).tobytes(),
            texture,
            scale,
            dicom_patient_id=self.dicom_patient_id,
        )


@dataclass(frozen=True)
class DuplicateMatch:
    """A study in the index whose image matches the queried one."""

    study_instance_uid: str
    patient_key: str
    sop_instance_uid: str
    phash_distance: int
    dhash_distance: int
    same_patient: bool
    texture_correlation: float | None = None


def normalise_to_uint8(frame: NDArray[np.floating], modality: str) -> NDArray[np.uint8]:
    """Grey 8-bit version of one frame (see the module docstring for the windows)."""
    arr = np.asarray(frame, dtype=np.float32)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    if modality.upper() == "CT":
        lo, hi = _CT_WINDOW
    else:
        lo, hi = (float(v) for v in np.percentile(arr, (1, 99)))
    if hi <= lo:
        hi = lo + 1.0
    scaled = (arr - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    np.clip(scaled, 0.0, 255.0, out=scaled)
    grey: NDArray[np.uint8] = np.rint(scaled).astype(np.uint8)
    return grey


def _texture_residual(image: Image.Image) -> NDArray[np.float32] | None:
    """The unit-norm fine-texture residual of an 8-bit frame (see the module docstring)."""
    from scipy.ndimage import gaussian_filter

    small = np.asarray(image.resize((_TEXTURE_SIZE, _TEXTURE_SIZE), Image.Resampling.BOX), np.float32)
    residual = small - gaussian_filter(small, 1.0)
    sample = residual[::2, ::2]  # a quarter of the pixels estimate the spread as well, 4x faster
    spread = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    if spread > 0:
        # clip edges so that noise and fine detail, not the shared anatomy's outlines, decide
        np.clip(residual, -_TEXTURE_CLIP * spread, _TEXTURE_CLIP * spread, out=residual)
    residual -= residual.mean()
    norm = float(np.linalg.norm(residual))
    if norm < 1e-6:
        return None  # a flat image has no texture to compare
    out: NDArray[np.float32] = (residual / norm).astype(np.float32)
    return out


def _middle_frame(pixels: NDArray[np.float32], samples_per_pixel: int) -> NDArray[np.float32]:
    arr = np.asarray(pixels)
    if samples_per_pixel > 1 and arr.ndim >= 3 and arr.shape[-1] == samples_per_pixel:
        arr = arr.mean(axis=-1)  # colour -> grey
    while arr.ndim > 2:
        arr = arr[arr.shape[0] // 2]
    return arr


def fingerprint(study: Study) -> ImageFingerprint | None:
    """Hashes of the middle frame of the study's primary series; ``None`` without pixels.

    Decoding errors propagate: the pixel check reports them, and the caller of
    ``PerceptualHashIndex.add`` decides what to do with an undecodable study.
    """
    if not study.series:
        return None
    series = study.primary_series()
    instances = [i for i in series.instances if i.has_pixels]
    if not instances:
        return None
    inst = instances[len(instances) // 2]
    frame = _middle_frame(inst.pixels(), inst.samples_per_pixel)
    if frame.ndim != 2 or min(frame.shape) < 8:
        return None
    image = Image.fromarray(normalise_to_uint8(frame, series.modality), mode="L")
    return ImageFingerprint(
        study_instance_uid=study.study_instance_uid,
        sop_instance_uid=inst.sop_instance_uid,
        phash=imagehash.phash(image, hash_size=_PHASH_SIZE),
        dhash=imagehash.dhash(image),
        texture=_texture_residual(image),
        dicom_patient_id=(study.patient.patient_id or "")[:64] or None,  # LO: 64 characters at most
    )


def _packed(h: imagehash.ImageHash) -> NDArray[np.uint8]:
    packed: NDArray[np.uint8] = np.packbits(np.asarray(h.hash, dtype=bool).ravel())
    return packed


_BITS_SET = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)  # popcount of a byte


#: A fingerprint as `fingerprint` computes it, or as kept (`ImageFingerprint.packed`).
AnyFingerprint = ImageFingerprint | PackedFingerprint

#: Reads back the texture of a study indexed with ``texture_elsewhere``: (patient key,
#: StudyInstanceUID) -> its texture, or None when it has none (or is no longer kept).
TextureLoader = Callable[[str, str], NDArray[np.float32] | None]


@dataclass(frozen=True)
class _Row:
    patient_key: str
    fingerprint: ImageFingerprint  # without its texture: held as int8 below, or kept elsewhere
    texture_elsewhere: bool
    texture: bytes | None = None  # int8, as `PackedFingerprint.texture`
    texture_scale: float | None = None

    def texture_back(self) -> NDArray[np.float32] | None:
        if self.texture is None or self.texture_scale is None:
            return None
        return unpack_texture(self.texture, self.texture_scale)


class PerceptualHashIndex:
    """Perceptual hashes of studies already seen, by patient: a scan of packed bit arrays (numpy),
    fine to ~10^5 studies; a study indexed again under the same patient replaces its entry. The
    textures it holds are int8 (`ImageFingerprint.packed`): 64 KB a study.

    ``patient_key`` is whatever identifies a patient for the caller (the FHIR
    Patient id, say); it is stored, never logged. ``textures`` reads back the textures of the
    studies added with ``texture_elsewhere=True`` (the index then holds their hashes only). Safe to
    share between threads: one adds while others query.
    """

    def __init__(
        self,
        max_phash_distance: int = DEFAULT_MAX_PHASH_DISTANCE,
        max_dhash_distance: int = DEFAULT_MAX_DHASH_DISTANCE,
        min_texture_correlation: float = DEFAULT_MIN_TEXTURE_CORRELATION,
        *,
        textures: TextureLoader | None = None,
    ) -> None:
        if not -1.0 <= min_texture_correlation <= 1.0:
            raise ValueError(f"min_texture_correlation must be -1..1, not {min_texture_correlation}")
        self.min_texture_correlation = min_texture_correlation
        if not 0 <= max_phash_distance < _PHASH_SIZE**2 or not 0 <= max_dhash_distance < 64:
            raise ValueError(
                f"thresholds must be 0..{_PHASH_SIZE**2 - 1} (pHash) and 0..63 (dHash) bits, "
                f"not {max_phash_distance} and {max_dhash_distance}"
            )
        self.max_phash_distance = max_phash_distance
        self.max_dhash_distance = max_dhash_distance
        self.textures = textures
        self._lock = threading.Lock()
        self._rows: list[_Row] = []  # in the order they were indexed
        self._row_of: dict[tuple[str, str], int] = {}  # (patient key, StudyInstanceUID) -> live row
        self._phash = np.zeros((0, _PHASH_SIZE**2 // 8), np.uint8)
        self._dhash = np.zeros((0, 8), np.uint8)
        self._live = np.zeros(0, bool)
        self._last: tuple[weakref.ref[Study], ImageFingerprint | None] | None = None  # `fingerprint_of`

    def __len__(self) -> int:
        return len(self._row_of)

    def fingerprint_of(self, study: Study) -> ImageFingerprint | None:
        """`fingerprint` of ``study``, computed once for the study last asked about: the duplicate
        check queries a study, then its caller indexes the same study (a decoding error is not
        kept: the next call tries again)."""
        with self._lock:
            last = self._last
        if last is not None and last[0]() is study:
            return last[1]
        fp = fingerprint(study)
        with self._lock:
            self._last = (weakref.ref(study), fp)
        return fp

    def add(self, study: Study, patient_key: str) -> bool:
        """Index a study under a patient; ``False`` when it has no pixels to hash."""
        fp = self.fingerprint_of(study)
        if fp is None:
            return False
        self.add_fingerprint(fp, patient_key)
        return True

    def add_fingerprint(
        self, fp: AnyFingerprint, patient_key: str, *, texture_elsewhere: bool = False
    ) -> None:
        """Index a fingerprint (as computed, or packed); with ``texture_elsewhere`` its texture is not
        held but read back by the index's ``textures`` when a query's hashes match it."""
        if texture_elsewhere and self.textures is None:
            raise ValueError("an index without a texture loader holds its textures itself")
        packed = fp if isinstance(fp, PackedFingerprint) else fp.packed()
        base = packed.unpacked(with_texture=False)  # checks the hashes' lengths
        phash, dhash = np.frombuffer(packed.phash, np.uint8), np.frombuffer(packed.dhash, np.uint8)
        texture, scale = (None, None) if texture_elsewhere else (packed.texture, packed.texture_scale)
        key = (patient_key, base.study_instance_uid)
        row_entry = _Row(patient_key, base, texture_elsewhere, texture, scale)
        with self._lock:
            if key in self._row_of:
                old = self._row_of[key]
                if texture_elsewhere and self._rows[old] == row_entry:
                    return  # indexed already, as it is
                self._live[old] = False
            row = len(self._rows)
            if row == len(self._live):  # grow by doubling
                size = max(64, 2 * row)
                self._phash = np.resize(self._phash, (size, self._phash.shape[1]))
                self._dhash = np.resize(self._dhash, (size, self._dhash.shape[1]))
                self._live = np.concatenate([self._live, np.zeros(size - row, bool)])
            self._phash[row], self._dhash[row] = phash, dhash
            self._live[row] = True
            self._rows.append(row_entry)
            self._row_of[key] = row

    def query(self, study: Study, patient_key: str) -> tuple[DuplicateMatch, ...]:
        """Indexed studies whose image matches this study's, closest first (itself excluded: any
        entry with its StudyInstanceUID)."""
        fp = self.fingerprint_of(study)
        return () if fp is None else self.query_fingerprint(fp, patient_key)

    def query_fingerprint(self, fp: AnyFingerprint, patient_key: str) -> tuple[DuplicateMatch, ...]:
        """`query` for a fingerprint (as computed, or packed). Textures are compared as kept, int8 on
        both sides, so a correlation is the same whichever way the fingerprints came."""
        packed = fp if isinstance(fp, PackedFingerprint) else fp.packed()
        own = packed.unpacked(with_texture=False)
        texture = None
        if packed.texture is not None and packed.texture_scale is not None:
            texture = unpack_texture(packed.texture, packed.texture_scale)
        with self._lock:
            n = len(self._rows)
            phash_distance = _BITS_SET[self._phash[:n] ^ np.frombuffer(packed.phash, np.uint8)].sum(axis=1)
            dhash_distance = _BITS_SET[self._dhash[:n] ^ np.frombuffer(packed.dhash, np.uint8)].sum(axis=1)
            close = (
                self._live[:n]
                & (phash_distance <= self.max_phash_distance)
                & (dhash_distance <= self.max_dhash_distance)
            )
            candidates = [
                (self._rows[row], int(phash_distance[row]), int(dhash_distance[row]))
                for row in np.flatnonzero(close)
            ]
        matches = []
        for row, dp, dd in candidates:  # the textures kept elsewhere are read outside the lock
            other = row.fingerprint
            if other.study_instance_uid == own.study_instance_uid:
                # the study itself, even under another key: scored once with its record (the FHIR
                # Patient id) and once without (its DICOM PatientID). One study filed under two
                # patients is the identity check's to see; this check sees pixels under new UIDs.
                continue
            if row.texture_elsewhere:
                assert self.textures is not None
                theirs = self.textures(row.patient_key, other.study_instance_uid)
            else:
                theirs = row.texture_back()
            corr = (
                None if texture is None or theirs is None else float(np.dot(texture.ravel(), theirs.ravel()))
            )
            if corr is not None and corr < self.min_texture_correlation:
                continue  # same layout, different acquisition
            matches.append(
                DuplicateMatch(
                    other.study_instance_uid,
                    row.patient_key,
                    other.sop_instance_uid,
                    dp,
                    dd,
                    _same_patient(row.patient_key, other, patient_key, own),
                    corr,
                )
            )
        return tuple(
            sorted(matches, key=lambda m: (m.phash_distance + m.dhash_distance, m.study_instance_uid))
        )


def _same_patient(key: str, fp: ImageFingerprint, other_key: str, other: ImageFingerprint) -> bool:
    """Whether two indexed images are filed under one patient. Keys are compared; and where one
    side's key is the other's DICOM PatientID, they are the same patient too: a study scored
    without its record is keyed by its header's PatientID, the same patient's study scored with it
    by the FHIR Patient id. Two keys that are both FHIR ids are never overruled by the headers (an
    image re-filed under another record with its header left as it was stays another patient's)."""
    if key == other_key:
        return True
    return (other.dicom_patient_id is not None and key == other.dicom_patient_id) or (
        fp.dicom_patient_id is not None and other_key == fp.dicom_patient_id
    )


def check_duplicates(case: Case, ctx: CheckContext) -> list[Finding]:
    """The study's image matches a study filed under another patient (or an older one of this patient)."""
    if ctx.hash_index is None or case.patient_id is None:
        return []
    return duplicate_findings(case.study_instance_uid, ctx.hash_index.query(case.study, case.patient_id))


def duplicate_findings(study_instance_uid: str, matches: Sequence[DuplicateMatch]) -> list[Finding]:
    """The findings of `check_duplicates` for a study whose matches are known (a batch sweep queries
    the index with fingerprints its workers computed)."""
    findings = []
    others = [m for m in matches if not m.same_patient]
    same = [m for m in matches if m.same_patient]
    for code, severity, group, text in (
        ("duplicate.other-patient", Severity.CRITICAL, others, "filed under another patient"),
        ("duplicate.same-patient", Severity.WARNING, same, "of this patient with another StudyInstanceUID"),
    ):
        if not group:
            continue
        evidence = [Evidence("dicom", "StudyInstanceUID", study_instance_uid, uid=study_instance_uid)]
        for m in group[:5]:
            evidence.append(
                Evidence("dicom", "StudyInstanceUID", m.study_instance_uid, uid=m.sop_instance_uid)
            )
            evidence.append(
                Evidence("value", "hamming-distance-phash-dhash", [m.phash_distance, m.dhash_distance])
            )
            if m.texture_correlation is not None:
                evidence.append(Evidence("value", "texture-correlation", round(m.texture_correlation, 3)))
            if not m.same_patient:
                evidence.append(Evidence("value", "other-patient-key", m.patient_key))
        findings.append(
            Finding(
                code,
                severity,
                f"The image is the same as {len(group)} image(s) {text}.",
                tuple(evidence),
            )
        )
    return findings
