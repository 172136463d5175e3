"""From a ``Case`` to the numbers the fusion model reads: ``extract_features``.

Three views of one case, all deterministic and computed with numpy (and
torch's area interpolation for the resize):

- **image view** (``CaseFeatures.image``, float32 ``(3, S, S)`` in [0, 1]): up
  to three representative frames of ``case.study.primary_series()`` -- CT and
  MR: the slices at 30 / 50 / 70 % of the stack; DX: the frontal (PA/AP) view,
  repeated -- normalised per modality and resized with area interpolation
  after zero-padding to a square. CT maps Hounsfield units through two windows
  (lung -1000..200 and soft tissue -160..240) and keeps their mean, so both
  the lung texture and the mediastinum survive in one channel per slice; MR is
  a robust z-score (median and inter-quartile range of the non-background
  voxels, those above 10 % of the 99th percentile) mapped from [-3, 3] to [0, 1]; DX (and any
  other modality) maps its
  1st..99th percentiles to [0, 1]. ``modality`` is a one-hot over ``MODALITIES``.
- **forensic view** (``CaseFeatures.forensic``, float32 ``(1, C, C)``): the
  central frame at full resolution, minus a 3x3-median-filtered copy of itself
  (the high-frequency residual where generators and inpainting leave traces,
  and which any resize would destroy), divided by the frame's robust standard
  deviation so the intensity scale does not matter, centre-cropped (or
  zero-padded) to ``forensic_crop``.
- **record tokens** (``token_*`` arrays of length ``max_tokens``): one token
  per event of the patient's record -- kind (``TokenKind``), a stable hash of
  ``"system|code"`` into ``code_buckets`` buckets, a value (a lab's
  ``relative_value`` clipped to [-3, 4]), the time from the study in days
  (``sign(d) * log1p(|d|)``) and a "present" flag (active condition, lab with a
  value ...). Words of the report conclusion become ``REPORT_WORD`` tokens
  (position / 16 as their value, so word order is not lost). Demographics (age,
  sex, BMI) and a study token (modality + body part) complete the set.
  ``token_mask`` is True on real tokens. ``token_refs`` / ``token_labels`` say
  which FHIR resource each token came from, in words, for explanations.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, fields
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from connectors.domain import (
    Case,
    Coding,
    Condition,
    DiagnosticReport,
    ImagingOrder,
    Instance,
    LabResult,
    PatientRecord,
    Series,
)

__all__ = [  # constants (MODALITIES, NUM_TOKEN_KINDS) are importable but left out of the sort
    "CaseFeatures",
    "FeatureConfig",
    "TokenKind",
    "central_frame",
    "examined_frame",
    "examined_window",
    "extract_features",
    "hash_bucket",
    "lab_label",
    "modality_name",
    "robust_std",
    "signed_log_days",
    "window",
]

log = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("CT", "MR", "DX", "OTHER")
_PROJECTION = {"DX", "CR", "RG", "MG"}
_FRONTAL = {"PA", "AP"}
FORENSIC_GAIN = 10.0  # residual / robust std is ~0.01-0.1 on real images; bring it near 1
_LUNG_WINDOW = (-1000.0, 200.0)
_SOFT_WINDOW = (-160.0, 240.0)
_REPORT_WORDS = 16
_STOPWORDS = frozenset(
    "a an and are as at be by for from in is it of on or the there this to was were with".split()
)
_WORD_RE = re.compile(r"[a-z]+")
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"


class TokenKind(IntEnum):
    """What a record token stands for; 0 is padding."""

    PAD = 0
    STUDY = 1
    DEMOGRAPHICS = 2
    LAB = 3
    VITAL = 4
    CONDITION = 5
    MEDICATION = 6
    PROCEDURE = 7
    ORDER = 8
    REPORT = 9
    REPORT_WORD = 10


NUM_TOKEN_KINDS = len(TokenKind)


@dataclass(frozen=True)
class FeatureConfig:
    """Sizes of the three views; part of every model config (see `fusion.model.config`)."""

    image_size: int = 128
    forensic_crop: int = 256
    max_tokens: int = 64
    code_buckets: int = 4096

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.forensic_crop < 16:
            raise ValueError("image_size must be >= 8 and forensic_crop >= 16")
        if self.max_tokens < 4:
            raise ValueError("max_tokens must be >= 4 (study + demographics)")
        if self.code_buckets < 16:
            raise ValueError("code_buckets must be >= 16")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureConfig:
        return cls(**data)


@dataclass(frozen=True)
class CaseFeatures:
    """The model's input for one case (see the module docstring for each array)."""

    image: NDArray[np.float32]  # (3, S, S)
    modality: NDArray[np.float32]  # (len(MODALITIES),)
    forensic: NDArray[np.float32]  # (1, C, C)
    token_kind: NDArray[np.int64]  # (T,)
    token_code: NDArray[np.int64]  # (T,)
    token_value: NDArray[np.float32]  # (T,)
    token_time: NDArray[np.float32]  # (T,)
    token_present: NDArray[np.float32]  # (T,)
    token_mask: NDArray[np.bool_]  # (T,)
    has_pixels: bool
    has_record: bool
    token_refs: tuple[str | None, ...] = ()  # per real token: "Observation/123" or None
    token_labels: tuple[str, ...] = ()  # per real token: "CRP 2 mg/L (normal)"

    @property
    def n_tokens(self) -> int:
        return int(self.token_mask.sum())

    def save_npz(self, path: Path) -> None:
        arrays = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in {"token_refs", "token_labels", "has_pixels", "has_record"}
        }
        np.savez_compressed(
            path,
            **arrays,
            flags=np.array([self.has_pixels, self.has_record]),
            token_refs=np.array([r or "" for r in self.token_refs], dtype=str),
            token_labels=np.array(self.token_labels, dtype=str),
        )

    @classmethod
    def load_npz(cls, path: Path) -> CaseFeatures:
        with np.load(path) as z:
            flags = z["flags"]
            return cls(
                image=z["image"],
                modality=z["modality"],
                forensic=z["forensic"],
                token_kind=z["token_kind"],
                token_code=z["token_code"],
                token_value=z["token_value"],
                token_time=z["token_time"],
                token_present=z["token_present"],
                token_mask=z["token_mask"],
                has_pixels=bool(flags[0]),
                has_record=bool(flags[1]),
                token_refs=tuple(str(r) or None for r in z["token_refs"]),
                token_labels=tuple(str(x) for x in z["token_labels"]),
            )


def hash_bucket(text: str, buckets: int) -> int:
    """A stable bucket in ``1 .. buckets-1`` for ``text`` (0 is padding)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


def extract_features(case: Case, config: FeatureConfig) -> CaseFeatures:
    """The three views of ``case``; never raises for undecodable pixels (``has_pixels`` False)."""
    image, modality, forensic, has_pixels = _image_views(case, config)
    tokens = _record_tokens(case, config)
    return CaseFeatures(
        image=image,
        modality=modality,
        forensic=forensic,
        has_pixels=has_pixels,
        has_record=case.record is not None,
        **tokens,
    )


# --------------------------------------------------------------------------- image views


def modality_name(modality: str | None) -> str:
    m = (modality or "").upper()
    if m in _PROJECTION:
        return "DX"
    return m if m in MODALITIES else "OTHER"


def _image_series(case: Case) -> Series:
    study = case.study
    primary = study.primary_series()
    if modality_name(primary.modality) != "DX":
        return primary
    frontal = [
        s
        for s in study.series
        if modality_name(s.modality) == "DX"
        and any(i.has_pixels for i in s.instances)
        and _view(s) in _FRONTAL
    ]
    return min(frontal, key=lambda s: s.series_number or 0) if frontal else primary


def _view(series: Series) -> str:
    if series.view_position:
        return series.view_position.upper()
    for inst in series.instances:
        if inst.view_position:
            return inst.view_position.upper()
    return ""


class _FrameReader:
    """Decodes frames of a series by their index in the stack, each instance at most once."""

    def __init__(self, series: Series) -> None:
        self.index: list[tuple[Instance, int]] = [
            (inst, k)
            for inst in series.instances
            if inst.has_pixels
            for k in range(max(1, inst.number_of_frames))
        ]
        self._cache: dict[str, NDArray[np.float32]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def frame(self, position: int) -> NDArray[np.float32]:
        inst, k = self.index[position]
        arr = self._cache.get(inst.sop_instance_uid)
        if arr is None:
            arr = np.asarray(inst.pixels(), dtype=np.float32)
            if inst.samples_per_pixel > 1 and arr.ndim >= 3 and arr.shape[-1] == inst.samples_per_pixel:
                arr = arr.mean(axis=-1)
            self._cache[inst.sop_instance_uid] = arr
        if arr.ndim == 3:
            arr = arr[min(k, arr.shape[0] - 1)]
        if arr.ndim != 2:
            raise ValueError(f"frame of instance {inst.sop_instance_uid} has shape {arr.shape}")
        return np.nan_to_num(arr.astype(np.float32, copy=False))


def _image_views(
    case: Case, config: FeatureConfig
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], bool]:
    size, crop = config.image_size, config.forensic_crop
    empty = (
        np.zeros((3, size, size), np.float32),
        np.zeros((crop, crop), np.float32),
    )
    try:
        series = _image_series(case)
    except ValueError:
        series = None
    mod_name = modality_name(series.modality if series is not None else None)
    modality = np.zeros(len(MODALITIES), np.float32)
    modality[MODALITIES.index(mod_name)] = 1.0
    if series is None:
        return empty[0], modality, empty[1][None], False
    reader = _FrameReader(series)
    if len(reader) == 0:
        return empty[0], modality, empty[1][None], False
    try:
        if len(reader) >= 3 and mod_name in {"CT", "MR"}:
            positions = [min(len(reader) - 1, round(f * (len(reader) - 1))) for f in (0.3, 0.5, 0.7)]
        else:
            positions = [len(reader) // 2]
        frames = [reader.frame(p) for p in positions]
        central = frames[len(frames) // 2]
    except Exception as exc:  # pixel decoders raise many types; the checks report it as a finding
        log.info("pixels of study could not be decoded (%s); scoring without pixels", type(exc).__name__)
        return empty[0], modality, empty[1][None], False
    normalised = _normalise(frames, mod_name)
    image = np.stack([_resize_square(f, size) for f in normalised])
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    elif image.shape[0] == 2:  # pragma: no cover - positions are 1 or 3
        image = np.concatenate([image, image[-1:]], axis=0)
    return image.astype(np.float32), modality, _forensic(central, crop)[None], True


def _examined_position(frames: int, mod_name: str) -> int:
    return (
        min(frames - 1, round(0.5 * (frames - 1)))
        if frames >= 3 and mod_name in {"CT", "MR"}
        else frames // 2
    )


def _examined(case: Case) -> tuple[_FrameReader, int, str] | None:
    """The frames of the series the forensic branch reads, the position of the one it examines,
    and the modality's name; None when the study has no image series or no frames."""
    try:
        series = _image_series(case)
    except ValueError:
        return None
    reader = _FrameReader(series)
    if len(reader) == 0:
        return None
    mod_name = modality_name(series.modality)
    return reader, _examined_position(len(reader), mod_name), mod_name


def examined_frame(case: Case) -> tuple[Instance, int] | None:
    """The instance, and its 1-based frame number, whose frame the forensic branch examines
    (`central_frame` shows it); None when the study has no pixels."""
    found = _examined(case)
    if found is None:
        return None
    reader, position, _ = found
    instance, k = reader.index[position]
    return instance, k + 1


def central_frame(
    case: Case, config: FeatureConfig
) -> tuple[NDArray[np.float32], str, tuple[int, int]] | None:
    """The frame the forensic branch looks at, normalised to 0..1 for display, its modality, and
    the (top, left) of the ``forensic_crop`` window within it; None when there are no pixels."""
    try:
        found = _examined(case)
        if found is None:
            return None
        reader, position, mod_name = found
        frame = reader.frame(position)
    except Exception:  # undecodable pixels: nothing to show (the checks report it)
        return None
    shown = _normalise([frame], mod_name)[0]
    return shown.astype(np.float32), mod_name, _crop_origin(frame.shape, config.forensic_crop)


def examined_window(
    case: Case, config: FeatureConfig
) -> tuple[Instance, int, tuple[int, int], tuple[int, int]] | None:
    """Where the forensic branch looks, without normalising the frame for display: the instance,
    its 1-based frame number, the frame's (rows, columns) and the (top, left) of the
    ``forensic_crop`` window within it; None when there are no decodable pixels."""
    try:
        found = _examined(case)
        if found is None:
            return None
        reader, position, _ = found
        h, w = reader.frame(position).shape
    except Exception:  # undecodable pixels: nowhere (the checks report it)
        return None
    instance, k = reader.index[position]
    return instance, k + 1, (h, w), _crop_origin((h, w), config.forensic_crop)


def _crop_origin(shape: tuple[int, ...], crop: int) -> tuple[int, int]:
    h, w = shape[0], shape[1]
    return max(0, (h - crop) // 2), max(0, (w - crop) // 2)


def window(x: NDArray[np.float32], low: float, high: float) -> NDArray[np.float32]:
    """Map ``low..high`` linearly to [0, 1], clipping outside."""
    out: NDArray[np.float32] = np.clip((x - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return out


def _normalise(frames: list[NDArray[np.float32]], mod_name: str) -> list[NDArray[np.float32]]:
    if mod_name == "CT":
        return [0.5 * (window(f, *_LUNG_WINDOW) + window(f, *_SOFT_WINDOW)) for f in frames]
    if mod_name == "MR":
        values = np.concatenate([f.ravel() for f in frames])
        p99 = float(np.percentile(values, 99))
        fg = values[values > 0.1 * p99] if p99 > 0 else values  # MR background is near zero
        if fg.size < 64:
            fg = values
        q25, med, q75 = np.percentile(fg, [25, 50, 75])
        scale = (q75 - q25) / 1.349
        if not scale > 0:
            scale = float(fg.std()) or 1.0
        return [np.clip(((f - med) / scale + 3.0) / 6.0, 0.0, 1.0).astype(np.float32) for f in frames]
    out = []
    for f in frames:
        p1, p99 = np.percentile(f, [1, 99])
        out.append(window(f, float(p1), float(p99)) if p99 > p1 else np.zeros_like(f))
    return out


def _resize_square(frame: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    import torch
    import torch.nn.functional as F

    h, w = frame.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = frame
    if side == size:
        return square
    t = torch.from_numpy(square)[None, None]
    mode = "area" if side > size else "bilinear"
    kwargs: dict[str, Any] = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(t, size=(size, size), mode=mode, **kwargs)[0, 0].numpy()


def robust_std(x: NDArray[np.float32]) -> float:
    q25, q75 = np.percentile(x, [25, 75])
    s = float(q75 - q25) / 1.349
    if not s > 0:
        s = float(x.std())
    return s if s > 0 else 1.0


def _forensic(frame: NDArray[np.float32], crop: int) -> NDArray[np.float32]:
    h, w = frame.shape
    # crop a margin first so the median filter only runs on what we keep
    top, left = max(0, (h - crop) // 2 - 1), max(0, (w - crop) // 2 - 1)
    region = frame[top : top + crop + 2, left : left + crop + 2]
    residual = region - ndimage.median_filter(region, size=3, mode="reflect")
    residual = residual[1:-1, 1:-1] if region.shape[0] > 2 and region.shape[1] > 2 else residual
    residual = np.clip(residual / robust_std(frame) * FORENSIC_GAIN, -50.0, 50.0)
    out = np.zeros((crop, crop), np.float32)
    rh, rw = min(crop, residual.shape[0]), min(crop, residual.shape[1])
    oy, ox = (crop - rh) // 2, (crop - rw) // 2
    out[oy : oy + rh, ox : ox + rw] = residual[:rh, :rw]
    return out


# --------------------------------------------------------------------------- record tokens


@dataclass
class _Token:
    kind: TokenKind
    key: str  # hashed into a code bucket
    value: float
    time: float
    present: float
    ref: str | None
    label: str
    priority: int  # lower is kept first when truncating


def signed_log_days(when: datetime | None, ref: datetime | None) -> float:
    if when is None or ref is None:
        return 0.0
    if (when.tzinfo is None) != (ref.tzinfo is None):
        when, ref = when.replace(tzinfo=None), ref.replace(tzinfo=None)
    days = (when - ref).total_seconds() / 86400.0
    return math.copysign(math.log1p(abs(days)), days)


def _best_coding(codes: tuple[Coding, ...]) -> Coding | None:
    for system in (SNOMED, LOINC):
        for c in codes:
            if c.system == system:
                return c
    return codes[0] if codes else None


def _key(c: Coding | None, fallback: str) -> str:
    return f"{c.system}|{c.code}" if c is not None else fallback


def _name(c: Coding | None, text: str | None) -> str:
    if c is not None and c.display:
        return c.display
    if text:
        return text
    return c.code if c is not None else "unknown"


def lab_label(lab: LabResult) -> str:
    name = lab.code.display or lab.code.code
    if lab.value is None:
        return f"{name} {lab.value_text or '(no value)'}"
    unit = f" {lab.unit}" if lab.unit else ""
    rel = lab.relative_value
    status = "" if rel is None else " (low)" if rel < 0 else " (high)" if rel > 1 else " (normal)"
    return f"{name} {lab.value:g}{unit}{status}"


def _study_time(case: Case) -> datetime | None:
    if case.study.study_datetime is not None:
        return case.study.study_datetime
    if case.order is not None:
        return case.order.occurrence or case.order.authored
    if case.report is not None:
        return case.report.effective or case.report.issued
    return None


def _record_tokens(case: Case, config: FeatureConfig) -> dict[str, Any]:
    t0 = _study_time(case)
    series = None
    try:
        series = case.study.primary_series()
    except ValueError:
        pass
    mod = modality_name(series.modality if series else None)
    body = ((series.body_part_examined if series else None) or "UNKNOWN").upper()
    toks: list[_Token] = [
        _Token(TokenKind.STUDY, f"study|{mod}|{body}", 0.0, 0.0, 1.0, None, f"{mod} {body}", 0)
    ]
    record = case.record
    if record is not None:
        toks += _demographic_tokens(record, t0)
        toks += _report_tokens(case.report, t0)
        toks += _order_tokens(case.order, t0)
        toks += _event_tokens(record, t0)
    toks.sort(key=lambda t: (t.priority, abs(t.time)))
    toks = toks[: config.max_tokens]
    n, T = len(toks), config.max_tokens
    kind = np.zeros(T, np.int64)
    code = np.zeros(T, np.int64)
    value = np.zeros(T, np.float32)
    time = np.zeros(T, np.float32)
    present = np.zeros(T, np.float32)
    mask = np.zeros(T, np.bool_)
    for i, t in enumerate(toks):
        kind[i] = int(t.kind)
        code[i] = hash_bucket(t.key, config.code_buckets)
        value[i] = float(np.clip(t.value, -3.0, 4.0))
        time[i] = t.time
        present[i] = t.present
        mask[i] = True
    return {
        "token_kind": kind,
        "token_code": code,
        "token_value": value,
        "token_time": time,
        "token_present": present,
        "token_mask": mask,
        "token_refs": tuple(t.ref for t in toks[:n]),
        "token_labels": tuple(t.label for t in toks[:n]),
    }


def _demographic_tokens(record: PatientRecord, t0: datetime | None) -> list[_Token]:
    p = record.patient
    ref = f"Patient/{p.id}"
    out: list[_Token] = []
    if p.birth_date is not None and t0 is not None:
        age = (t0.date() - p.birth_date).days / 365.25
        out.append(
            _Token(TokenKind.DEMOGRAPHICS, "demographics|age", age / 50.0, 0.0, 1.0, ref, f"age {age:.0f}", 1)
        )
    sex = (p.gender or "unknown").lower()
    out.append(_Token(TokenKind.DEMOGRAPHICS, f"demographics|sex|{sex}", 0.0, 0.0, 1.0, ref, f"sex {sex}", 1))
    bmi_lab = _closest(record.labs_with_code(LOINC, "39156-5"), t0)
    bmi: float | None = bmi_lab.value if bmi_lab is not None else None
    bmi_ref = f"Observation/{bmi_lab.id}" if bmi_lab is not None else ref
    if bmi is None:
        weight = _closest(record.labs_with_code(LOINC, "29463-7"), t0)
        height = _closest(record.labs_with_code(LOINC, "8302-2"), t0)
        if weight and height and weight.value and height.value:
            metres = height.value / 100.0 if height.value > 3 else height.value
            bmi = weight.value / metres**2
    if bmi is not None:
        out.append(
            _Token(
                TokenKind.DEMOGRAPHICS,
                "demographics|bmi",
                (bmi - 25.0) / 10.0,
                0.0,
                1.0,
                bmi_ref,
                f"BMI {bmi:.1f}",
                1,
            )
        )
    return out


def _closest(labs: tuple[LabResult, ...], t0: datetime | None) -> LabResult | None:
    with_values = [lab for lab in labs if lab.value is not None]
    if not with_values:
        return None
    return min(with_values, key=lambda lab: abs(signed_log_days(lab.effective, t0)))


def _report_tokens(report: DiagnosticReport | None, t0: datetime | None) -> list[_Token]:
    if report is None:
        return []
    ref = f"DiagnosticReport/{report.id}"
    dt = signed_log_days(report.effective or report.issued, t0)
    out = [
        _Token(TokenKind.REPORT, _key(c, "report|?"), 0.0, dt, 1.0, ref, f"report: {_name(c, None)}", 2)
        for c in report.conclusion_codes
    ]
    words = [w for w in _WORD_RE.findall((report.conclusion or "").lower()) if w not in _STOPWORDS]
    for pos, w in enumerate(words[:_REPORT_WORDS]):
        out.append(
            _Token(
                TokenKind.REPORT_WORD, f"word|{w}", pos / _REPORT_WORDS, dt, 1.0, ref, f"report says '{w}'", 3
            )
        )
    return out


def _order_tokens(order: ImagingOrder | None, t0: datetime | None) -> list[_Token]:
    if order is None:
        return []
    ref = f"ServiceRequest/{order.id}"
    dt = signed_log_days(order.authored or order.occurrence, t0)
    c = _best_coding(order.codes)
    out = [
        _Token(TokenKind.ORDER, _key(c, "order|?"), 0.0, dt, 1.0, ref, f"order: {_name(c, order.text)}", 2)
    ]
    for rc in order.reason_codes:
        out.append(
            _Token(
                TokenKind.ORDER, _key(rc, "reason|?"), 1.0, dt, 1.0, ref, f"ordered for {_name(rc, None)}", 2
            )
        )
    return out


def _condition_token(cond: Condition, t0: datetime | None) -> _Token:
    c = _best_coding(cond.codes)
    name = _name(c, cond.text)
    active = cond.is_active and (
        cond.abatement is None or t0 is None or signed_log_days(cond.abatement, t0) > 0
    )
    label = name if active else f"{name} (resolved)"
    when = cond.onset or cond.recorded
    return _Token(
        TokenKind.CONDITION,
        _key(c, "condition|?"),
        0.0,
        signed_log_days(when, t0),
        1.0 if active else 0.0,
        f"Condition/{cond.id}",
        label,
        4,
    )


def _event_tokens(record: PatientRecord, t0: datetime | None) -> list[_Token]:
    out = [_condition_token(c, t0) for c in record.conditions]
    for lab in record.labs:
        kind = TokenKind.VITAL if (lab.category or "") == "vital-signs" else TokenKind.LAB
        rel = lab.relative_value
        out.append(
            _Token(
                kind,
                f"{lab.code.system}|{lab.code.code}",
                0.0 if rel is None else rel,
                signed_log_days(lab.effective, t0),
                0.0 if lab.value is None else 1.0,
                f"Observation/{lab.id}",
                lab_label(lab),
                5,
            )
        )
    for med in record.medications:
        c = _best_coding(med.codes)
        rtype = med.kind if med.kind.startswith("Medication") else "MedicationRequest"
        active = 1.0 if med.status in {None, "active", "completed", "intended"} else 0.0
        out.append(
            _Token(
                TokenKind.MEDICATION,
                _key(c, "medication|?"),
                0.0,
                signed_log_days(med.start, t0),
                active,
                f"{rtype}/{med.id}",
                f"medication: {_name(c, med.text)}",
                6,
            )
        )
    for proc in record.procedures:
        c = _best_coding(proc.codes)
        out.append(
            _Token(
                TokenKind.PROCEDURE,
                _key(c, "procedure|?"),
                0.0,
                signed_log_days(proc.performed, t0),
                1.0 if proc.status in {None, "completed"} else 0.0,
                f"Procedure/{proc.id}",
                f"procedure: {_name(c, proc.text)}",
                6,
            )
        )
    return out
