"""Pixel checks: are the decoded values physically possible for the modality?

Decoding is the slow part, so only a sample is read: the first, middle and
last instance of each image series (``ctx.pixel_instances_per_series``).
``Instance.pixels()`` returns physical units (Hounsfield units for CT).

- ``pixels.undecodable`` (critical): decoding raised; the reason is in the evidence.
- ``pixels.non-finite`` (critical): NaN or infinite values.
- ``pixels.constant`` (warning): every pixel has the same value.
- ``pixels.outside-bits-stored`` (warning): values the header's BitsStored,
  PixelRepresentation and rescale cannot encode (the pixels were replaced, or
  the header edited, after the fact; or junk in the unused high bits).
- ``pixels.ct-hu-out-of-range`` (critical): more than ``ctx.ct_outlier_fraction``
  of CT pixels below -1100 HU or above 4000 HU, not counting the constant
  padding value scanners write outside the reconstruction circle (the minimum
  value, when at least 1 % of pixels have it and it is not clipped air).
- ``pixels.ct-air-not-air`` (warning): the darkest 1 % of CT pixels is not near
  -1000 HU, where the air around the body is. (A reconstruction with a field
  of view inside the body has no air and would warn.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from connectors.domain import Case, Instance, Series
from fusion.checks.context import CheckContext
from fusion.checks.order import IMAGE_MODALITIES
from fusion.result import Evidence, Finding, Severity

__all__ = ["CT_HU_RANGE", "check_pixels", "sample_instances"]

logger = logging.getLogger(__name__)

CT_HU_RANGE = (-1100.0, 4000.0)
_CT_AIR_RANGE = (-1100.0, -850.0)
_PADDING_SHARE = 0.01  # a minimum value this common is padding, not tissue

_MESSAGES = {
    "pixels.undecodable": (Severity.CRITICAL, "{n} image(s) could not be decoded."),
    "pixels.non-finite": (Severity.CRITICAL, "{n} image(s) contain NaN or infinite pixel values."),
    "pixels.constant": (Severity.WARNING, "{n} image(s) are blank: every pixel has the same value."),
    "pixels.outside-bits-stored": (
        Severity.WARNING,
        "{n} image(s) hold pixel values their header's bit depth cannot encode.",
    ),
    "pixels.ct-hu-out-of-range": (
        Severity.CRITICAL,
        "{n} CT image(s) have many pixels outside the physical Hounsfield range (-1100 to 4000 HU).",
    ),
    "pixels.ct-air-not-air": (
        Severity.WARNING,
        "{n} CT image(s) have no air near -1000 HU; the Hounsfield scale looks shifted or rescaled.",
    ),
}


@dataclass
class _Collected:
    evidence: dict[str, list[Evidence]] = field(default_factory=dict)

    def add(self, code: str, *evidence: Evidence) -> None:
        self.evidence.setdefault(code, []).extend(evidence)


def sample_instances(series: Series, per_series: int) -> list[Instance]:
    """Up to ``per_series`` instances with pixels: the ends and evenly spaced between."""
    with_pixels = [i for i in series.instances if i.has_pixels]
    if len(with_pixels) <= per_series:
        return with_pixels
    if per_series <= 1:
        return [with_pixels[len(with_pixels) // 2]]
    idx = np.linspace(0, len(with_pixels) - 1, per_series).round().astype(int)
    return [with_pixels[i] for i in sorted(set(idx.tolist()))]


def _stored_range(inst: Instance) -> tuple[float, float] | None:
    """The physical value range BitsStored/PixelRepresentation/rescale can express."""
    if inst.bits_stored is None or inst.pixel_representation is None or inst.samples_per_pixel != 1:
        return None
    bits = inst.bits_stored
    if inst.pixel_representation == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    slope = inst.rescale_slope if inst.rescale_slope is not None else 1.0
    intercept = inst.rescale_intercept if inst.rescale_intercept is not None else 0.0
    a, b = lo * slope + intercept, hi * slope + intercept
    margin = abs(slope) / 2 + 1e-3
    return min(a, b) - margin, max(a, b) + margin


def _check_ct(arr: NDArray[np.float32], inst: Instance, ctx: CheckContext, out: _Collected) -> None:
    lo, hi = CT_HU_RANGE
    # Padding (outside the reconstruction circle) is one constant value, the minimum, set
    # apart from the rest; air clipped at -1024 HU is a plateau too, but continuous with
    # the noisy air just above it, and stays.
    floor = float(arr.min())
    is_padding = arr == floor
    n_floor = int(is_padding.sum())
    near = int(((arr > floor) & (arr <= floor + 50.0)).sum())
    padding = n_floor >= _PADDING_SHARE * arr.size and (floor < lo or near < 0.1 * n_floor)
    tissue = arr[~is_padding] if padding else arr
    n_below = int((tissue < lo).sum())
    n_above = int((tissue > hi).sum())
    fraction = (n_below + n_above) / max(arr.size, 1)
    uid = inst.sop_instance_uid
    if fraction > ctx.ct_outlier_fraction:
        out.add(
            "pixels.ct-hu-out-of-range",
            Evidence("value", "fraction-outside-hu-range", round(fraction, 4), uid=uid),
            Evidence("value", "min-max-hu", [float(arr.min()), float(arr.max())], uid=uid),
        )
    if tissue.size:
        p1 = float(np.percentile(tissue, 1))
        if not _CT_AIR_RANGE[0] <= p1 <= _CT_AIR_RANGE[1]:
            out.add("pixels.ct-air-not-air", Evidence("value", "hu-1st-percentile", round(p1, 1), uid=uid))


def _check_instance(series: Series, inst: Instance, ctx: CheckContext, out: _Collected) -> None:
    uid = inst.sop_instance_uid
    try:
        arr = np.asarray(inst.pixels(), dtype=np.float32)  # as decoded: no copy
    except Exception as exc:  # any decoder failure is a finding, not a crash
        logger.warning("pixel decoding failed (%s) for one instance", type(exc).__name__)
        out.add(
            "pixels.undecodable",
            Evidence("value", "decode-error", f"{type(exc).__name__}: {exc}"[:300], uid=uid),
        )
        return
    if arr.size == 0:
        out.add("pixels.undecodable", Evidence("value", "decode-error", "no pixels", uid=uid))
        return
    finite = np.isfinite(arr)
    if not finite.all():
        out.add("pixels.non-finite", Evidence("value", "non-finite-pixels", int((~finite).sum()), uid=uid))
        arr = arr[finite]
        if arr.size == 0:
            return
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        out.add("pixels.constant", Evidence("value", "constant-value", lo, uid=uid))
        return
    rng = _stored_range(inst)
    if rng is not None:
        if (inst.photometric_interpretation or "").upper() == "MONOCHROME1":
            bad = hi - lo > rng[1] - rng[0]  # inverted: only the span is meaningful
        else:
            bad = lo < rng[0] or hi > rng[1]
        if bad:
            out.add(
                "pixels.outside-bits-stored",
                Evidence("value", "min-max", [lo, hi], uid=uid),
                Evidence("value", "encodable-range", [round(rng[0], 3), round(rng[1], 3)], uid=uid),
            )
    if series.modality.upper() == "CT":
        _check_ct(arr, inst, ctx, out)


def check_pixels(case: Case, ctx: CheckContext) -> list[Finding]:
    """Decode a sample of each image series and check the values (see the module docstring)."""
    out = _Collected()
    for s in case.study.series:
        if s.modality.upper() not in IMAGE_MODALITIES:
            continue
        for inst in sample_instances(s, ctx.pixel_instances_per_series):
            _check_instance(s, inst, ctx, out)
    findings = []
    for code, (severity, template) in _MESSAGES.items():
        evidence = out.evidence.get(code)
        if not evidence:
            continue
        n = len({e.uid for e in evidence})
        findings.append(Finding(code, severity, template.format(n=n), tuple(evidence[:10])))
    return findings
