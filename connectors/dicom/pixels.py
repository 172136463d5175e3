"""Decoding one instance's pixels into physical units, as ``float32``.

What comes out (see `connectors.domain.imaging`):

- grayscale: ``(rows, columns)``, or ``(frames, rows, columns)`` when the
  instance has more than one frame; the Modality LUT (``RescaleSlope`` /
  ``RescaleIntercept`` or a ``ModalityLUTSequence``, including the
  functional-group form of enhanced multi-frame objects) is applied, so CT is in
  Hounsfield units;
- ``MONOCHROME1`` is inverted so that higher always means brighter: ``v' = lo +
  hi - v`` where ``[lo, hi]`` is the range the stored bits can hold after the
  Modality LUT (for unsigned data without rescale that is ``max - v``);
- colour: ``(rows, columns, samples)`` or ``(frames, rows, columns, samples)`` in
  RGB (YBR is converted by pydicom; PALETTE COLOR goes through its LUT).

Compressed transfer syntaxes are decoded by pydicom's plugins (pylibjpeg with
its libjpeg / openjpeg / rle backends, pyjpegls, Pillow, GDCM when installed).
pydicom's errors are wrapped: truncated or corrupt data raises
`InvalidDicomInput`, a syntax no installed plugin decodes raises
`UnsupportedTransferSyntax` saying what to install.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.uid import UID

from connectors.dicom.limits import DicomLimits
from connectors.errors import InvalidDicomInput, UnsupportedTransferSyntax

__all__ = ["decode_pixels", "install_hint", "load_pixels"]

logger = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

_JPEG = "pylibjpeg and pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg), or python-gdcm"
_JPEG_LS = "pyjpegls (pip install pyjpegls), or pylibjpeg with pylibjpeg-libjpeg, or python-gdcm"
_J2K = "pylibjpeg and pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg), or python-gdcm"
_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": _JPEG,
    "1.2.840.10008.1.2.4.51": _JPEG,
    "1.2.840.10008.1.2.4.57": _JPEG,
    "1.2.840.10008.1.2.4.70": _JPEG,
    "1.2.840.10008.1.2.4.80": _JPEG_LS,
    "1.2.840.10008.1.2.4.81": _JPEG_LS,
    "1.2.840.10008.1.2.4.90": _J2K,
    "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.201": _J2K,
    "1.2.840.10008.1.2.4.202": _J2K,
    "1.2.840.10008.1.2.4.203": _J2K,
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (pip install pylibjpeg pylibjpeg-rle); numpy alone also works",
}


def install_hint(transfer_syntax_uid: str) -> str:
    """Which package(s) decode pixel data in this transfer syntax."""
    return _HINTS.get(
        str(transfer_syntax_uid),
        "no pydicom plugin decodes it; convert the file to a supported transfer syntax "
        "first (e.g. dcmtk's dcmconv, or ffmpeg for video)",
    )


def load_pixels(path: str | Path, *, limits: DicomLimits | None = None) -> NDArray[np.float32]:
    """Read ``path`` (with its pixel data) and decode it; see `decode_pixels`."""
    source = str(path)
    try:
        ds = pydicom.dcmread(path, force=False)
    except InvalidDicomError as exc:
        raise InvalidDicomInput(f"{source}: not a DICOM file ({exc})") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidDicomInput(f"{source}: truncated or corrupt DICOM: {exc}") from exc
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        # pydicom drops a pixel data element the file ends in the middle of
        raise InvalidDicomInput(f"{source}: no pixel data: the file has none, or it is truncated")
    return decode_pixels(ds, source=source, limits=limits)


def decode_pixels(
    ds: Dataset, *, source: str = "dataset", limits: DicomLimits | None = None
) -> NDArray[np.float32]:
    """Decode ``ds``'s pixels in physical units (see the module docstring).

    The header is checked against ``limits`` before anything is decoded.
    """
    limits = limits or DicomLimits()
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise InvalidDicomInput(f"{source}: has no pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if rows <= 0 or columns <= 0:
        raise InvalidDicomInput(f"{source}: Rows and Columns must be present and positive")
    frames = max(_int(ds, "NumberOfFrames", 1), 1)
    samples = max(_int(ds, "SamplesPerPixel", 1), 1)
    limits.check_instance(
        rows=rows,
        columns=columns,
        frames=frames,
        samples_per_pixel=samples,
        bits_allocated=_int(ds, "BitsAllocated", 16),
        source=source,
    )
    tsyntax = _transfer_syntax(ds)
    if tsyntax is not None and tsyntax.is_compressed:
        _check_decoder(tsyntax, source)
    arr = _decode(ds, tsyntax, source)

    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif samples == 1:
        arr = _modality_lut(arr, ds, frames)
        if photometric == "MONOCHROME1":
            lo, hi = _output_range(ds)
            arr = (lo + hi) - arr
    out = np.ascontiguousarray(arr, dtype=np.float32)
    logger.debug("decoded %s: shape %s", ds.get("SOPInstanceUID", source), out.shape)
    return out


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(value)) if value else None


def _check_decoder(tsyntax: UID, source: str) -> None:
    name = f"{tsyntax.name} ({tsyntax})" if tsyntax.name != str(tsyntax) else str(tsyntax)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntax(
            f"{source}: pixel data in transfer syntax {name}: {install_hint(tsyntax)}"
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise UnsupportedTransferSyntax(
            f"{source}: no installed plugin decodes transfer syntax {name} (missing: {missing}); "
            f"install {install_hint(tsyntax)}"
        )


def _decode(ds: Dataset, tsyntax: UID | None, source: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        text = str(exc)
        name = f"{tsyntax.name} ({tsyntax})" if tsyntax is not None else "an unknown transfer syntax"
        missing: list[str] = []
        if tsyntax is not None and tsyntax.is_compressed:
            try:
                missing = list(get_decoder(tsyntax).missing_dependencies)
            except NotImplementedError:
                missing = ["a decoder"]
        if "truncat" in text.lower() or "less than expected" in text.lower():
            raise InvalidDicomInput(f"{source}: truncated pixel data: {_first_lines(text)}") from exc
        if missing:
            raise UnsupportedTransferSyntax(
                f"{source}: the installed plugins could not decode this {name} pixel data "
                f"({_first_lines(text)}); install {install_hint(tsyntax or '')} to try the "
                f"plugins not installed ({'; '.join(missing)}), or the data is corrupt"
            ) from exc
        raise InvalidDicomInput(f"{source}: pixel data could not be decoded: {_first_lines(text)}") from exc
    except (ValueError, EOFError, AttributeError, KeyError, TypeError) as exc:
        text = str(exc)
        if "less than expected" in text or "truncat" in text.lower():
            reason = "truncated: pixel data is shorter than Rows x Columns x frames needs"
        else:
            reason = "pixel data could not be decoded"
        raise InvalidDicomInput(f"{source}: {reason} ({_first_lines(text)})") from exc


def _first_lines(text: str, limit: int = 300) -> str:
    flat = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _rescale_from_groups(ds: Dataset, frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(slopes, intercepts) per frame from enhanced multi-frame functional groups, if any."""

    def from_group(group: Dataset) -> tuple[float, float] | None:
        seq = group.get("PixelValueTransformationSequence")
        if not seq:
            return None
        item = seq[0]
        if "RescaleSlope" not in item and "RescaleIntercept" not in item:
            return None
        return float(item.get("RescaleSlope", 1.0) or 1.0), float(item.get("RescaleIntercept", 0.0) or 0.0)

    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = from_group(shared_seq[0]) if shared_seq else None
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence") or []
    per_frame = [from_group(item) for item in per_frame_seq]
    if shared is None and not any(per_frame):
        return None
    default = shared or (1.0, 0.0)
    params: list[tuple[float, float]] = []
    for i in range(frames):
        item = per_frame[i] if i < len(per_frame) else None
        params.append(item if item is not None else default)
    return np.array([p[0] for p in params]), np.array([p[1] for p in params])


def _modality_lut(arr: np.ndarray, ds: Dataset, frames: int) -> np.ndarray:
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return np.asarray(apply_modality_lut(arr, ds))
    params = _rescale_from_groups(ds, frames)
    if params is None:
        return arr
    slopes, intercepts = params
    if arr.ndim == 3 and frames > 1:
        return np.asarray(arr * slopes[:, None, None] + intercepts[:, None, None])
    return np.asarray(arr * slopes[0] + intercepts[0])


def _output_range(ds: Dataset) -> tuple[float, float]:
    """The range the stored values can span after the Modality LUT (for MONOCHROME1)."""
    if "ModalityLUTSequence" in ds:
        lut = np.asarray(ds.ModalityLUTSequence[0].get("LUTData") or [0], dtype=np.float64)
        return float(lut.min()), float(lut.max())
    bits = _int(ds, "BitsStored", _int(ds, "BitsAllocated", 16))
    if _int(ds, "PixelRepresentation", 0) == 1:
        lo_stored, hi_stored = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo_stored, hi_stored = 0, 2**bits - 1
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    ends = sorted((lo_stored * slope + intercept, hi_stored * slope + intercept))
    return ends[0], ends[1]
