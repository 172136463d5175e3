"""Findings as pixel patches: where a lesion lies in a series, and how it changes the pixels.

A finding becomes a list of ``Patch``: a frame, a bounding box and a weight map
``alpha``. How the weight acts depends on the modality:

- CT and MR blend towards a target (``(1 - a) x + a t``): HU for CT, a multiple
  of the slice's tissue level for MR;
- DX adds attenuation: ``alpha`` is either a chord length through the lesion
  in mm (nodule, mass) or a fraction of the lung's own chord (consolidation,
  effusion), times the attenuation difference between tissue and lung.

The same patches serve the renderer (applied to the ideal phantom before the
acquisition physics, so the lesion carries the image's own noise) and
`fusion.cohort.images.edit` (applied to finished pixels with noise of its own).

``ImageFinding.center`` is read in image terms: x the column fraction (patient's
right at 0), y the row fraction (DX: head to feet; axial CT/MR: anterior to
posterior), z the slice fraction from the first to the last slice position.
Lung findings are clamped into a box that lies within the lung fields.
Sizes: nodules ``size * 100`` mm; other findings ``size`` times a reference
field of view (400 mm chest, 220 mm head), so a finding has the same physical
size in every modality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from fusion.cohort.images.raster import bbox
from fusion.cohort.scenario import ClinicalCondition, ImageFinding

__all__ = [
    "DX_GAIN",
    "MU_LUNG_DELTA",
    "FrameGeometry",
    "Patch",
    "finding_patches",
    "tissue_level",
]

F32 = NDArray[np.float32]

DX_GAIN = 650.0  # detector signal units per unit of line integral
MU_LUNG_DELTA = 0.015  # 1/mm: soft tissue (or fluid) minus aerated lung at ~60 keV
CHEST_FOV_MM = 400.0
HEAD_FOV_MM = 220.0

_LUNG = {ClinicalCondition.PNEUMONIA, ClinicalCondition.LUNG_NODULE, ClinicalCondition.LUNG_CANCER}


@dataclass(frozen=True)
class FrameGeometry:
    """What placing a lesion needs to know about a series."""

    modality: str
    view: str | None
    shape: tuple[int, int, int]
    spacing: tuple[float, float]
    positions: tuple[float, ...]
    thickness: float | None


@dataclass(frozen=True)
class Patch:
    """A lesion's weight map on one frame, and what the weight does there."""

    frame: int
    rows: slice
    cols: slice
    alpha: F32
    target: float  # CT: HU; MR: multiple of the tissue level; DX: attenuation per mm
    lung_weighted: bool = False  # DX: alpha is a fraction of the lung chord
    restrict: str | None = None  # "lung" (CT) or "tissue" (MR): only where that is


def tissue_level(frame: F32) -> float:
    """An MR slice's reference level: the median of the pixels above a fifth of its 99th percentile."""
    hi = float(np.percentile(frame[::4, ::4], 99))
    sample = frame[::4, ::4]
    vals = sample[sample > 0.2 * hi]
    return float(np.median(vals)) if vals.size else 1.0


def _center(geom: FrameGeometry, finding: ImageFinding) -> tuple[float, float, float]:
    x, y, z = (float(np.clip(c, 0.0, 1.0)) for c in finding.center)
    if finding.condition in _LUNG:
        side = finding.side or ("right" if x < 0.5 else "left")
        lo, hi = (0.18, 0.42) if side == "right" else (0.58, 0.82)
        x = float(np.clip(x, lo, hi))
        y = float(np.clip(y, 0.22, 0.68)) if geom.modality == "DX" else float(np.clip(y, 0.32, 0.66))
    if geom.view == "LL":  # a lateral projection sees depth, not side: put it mid-chest
        x = 0.5
    return x, y, z


def _diameter_mm(finding: ImageFinding) -> float:
    c = finding.condition
    if c is ClinicalCondition.LUNG_NODULE:
        return float(np.clip(finding.size * 100.0, 4.0, 30.0))
    if c is ClinicalCondition.LUNG_CANCER:
        return float(np.clip(finding.size * CHEST_FOV_MM, 25.0, 70.0))
    if c is ClinicalCondition.PNEUMONIA:
        return float(np.clip(finding.size * CHEST_FOV_MM, 40.0, 150.0))
    if c is ClinicalCondition.BRAIN_TUMOUR:
        return float(np.clip(finding.size * HEAD_FOV_MM, 10.0, 60.0))
    return float(np.clip(finding.size * CHEST_FOV_MM, 5.0, 200.0))


def _texture(shape: tuple[int, int], rng: np.random.Generator, lo: float, hi: float) -> F32:
    """A smooth random field in [lo, hi] of the given shape (zoomed from a coarse grid)."""
    coarse = rng.uniform(lo, hi, size=(6, 6)).astype(np.float32)
    zoom = (shape[0] / 6.0, shape[1] / 6.0)
    out = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)
    out = out[: shape[0], : shape[1]]
    if out.shape != shape:
        out = np.pad(out, ((0, shape[0] - out.shape[0]), (0, shape[1] - out.shape[1])), mode="edge")
    result: F32 = out.astype(np.float32)
    return result


def _blob(
    geom: FrameGeometry,
    cy: float,
    cx: float,
    zc: float,
    radius_mm: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    spiculated: bool = False,
    chord: bool = False,
) -> list[tuple[int, slice, slice, F32]]:
    """A (possibly irregular) ellipsoid's per-frame weights: occupancy, or chord in mm for DX."""
    _, h, w = geom.shape
    ry, rx = radius_mm[1] / geom.spacing[0], radius_mm[0] / geom.spacing[1]
    out: list[tuple[int, slice, slice, F32]] = []
    phases = rng.uniform(0, 2 * math.pi, size=3)
    freqs = (5.0, 9.0, 13.0)
    frames: list[tuple[int, float, float]] = []  # (frame, in-plane scale, slab occupancy)
    if geom.modality == "DX":
        frames = [(0, 1.0, 1.0)]
    else:
        half_t = (geom.thickness or 1.0) / 2.0
        for i, zpos in enumerate(geom.positions):
            lo, hi = max(zpos - half_t, zc - radius_mm[2]), min(zpos + half_t, zc + radius_mm[2])
            if hi <= lo:
                continue
            dz = 0.0 if lo <= zc <= hi else min(abs(lo - zc), abs(hi - zc))
            scale = math.sqrt(max(1.0 - (dz / radius_mm[2]) ** 2, 0.0))
            frames.append((i, scale, min((hi - lo) / (2 * half_t) * 1.3, 1.0)))
    for i, scale, occ in frames:
        box = bbox((h, w), cy, cx, ry * scale * 1.35 + 1, rx * scale * 1.35 + 1)
        if box is None or scale <= 0:
            continue
        sy, sx, dy, dx = box
        py, px = dy * np.float32(ry * scale * 1.35 + 1), dx * np.float32(rx * scale * 1.35 + 1)
        r = np.sqrt(
            (py / np.float32(max(ry * scale, 0.5))) ** 2 + (px / np.float32(max(rx * scale, 0.5))) ** 2
        )
        if spiculated:
            ang = np.arctan2(py, px)
            mod = np.float32(1.0)
            for ph, fr in zip(phases, freqs, strict=True):
                mod = mod + np.float32(0.09) * np.sin(fr * ang + ph).astype(np.float32)
            r = r / mod
        a: NDArray[np.floating[Any]]
        if chord:
            depth = 2.0 * min(radius_mm[0], radius_mm[1])
            a = np.float32(depth) * np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0))
        else:
            edge = 1.5 / max(min(ry, rx) * scale, 1.0)
            a = np.clip((1.0 - r) / np.float32(edge) + 0.5, 0.0, 1.0) * np.float32(occ)
        out.append((i, sy, sx, a.astype(np.float32)))
    return out


def _effusion(geom: FrameGeometry, side: str | None, severity: float) -> list[Patch]:
    n, h, w = geom.shape
    sev = float(np.clip(severity, 0.05, 1.0))
    sides = [side] if side in {"left", "right"} else ["right", "left"]
    patches: list[Patch] = []
    rows = np.arange(h, dtype=np.float32)[:, None]
    for sd in sides:
        cols = slice(0, w // 2) if sd == "right" else slice(w // 2, w)
        xs = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] / w
        if geom.modality == "DX":
            if geom.view == "LL":
                cols = slice(0, w)
                xs = np.arange(w, dtype=np.float32)[None, :] / w
                lat = np.clip((xs - 0.5) / 0.3, -1.0, 1.0)
            else:
                lat = np.abs(xs - (0.3 if sd == "right" else 0.7)) / 0.2
            level: float | NDArray[np.float64] = (0.80 - (0.06 + 0.30 * sev) - 0.05 * lat**2) * h
            alpha = np.clip((rows - level) / 4.0 + 0.5, 0.0, 1.0).astype(np.float32)
            patches.append(Patch(0, slice(0, h), cols, alpha, MU_LUNG_DELTA, lung_weighted=True))
            if geom.view == "LL":
                break
            continue
        z_top = 0.15 + 0.5 * sev
        for i in range(n):
            z_rel = i / max(n - 1, 1)
            if z_rel >= z_top:
                continue
            depth = sev * math.sqrt(1.0 - z_rel / z_top)
            level = (0.70 - 0.32 * depth) * h
            alpha = np.broadcast_to(
                np.clip((rows - level) / 2.0 + 0.5, 0.0, 1.0), (h, cols.stop - cols.start)
            ).astype(np.float32)
            patches.append(Patch(i, slice(0, h), cols, alpha, 12.0, restrict="lung"))
    return patches


def _cardiomegaly(geom: FrameGeometry, severity: float) -> list[Patch]:
    """An enlarged cardiac silhouette pasted over the lung next to the heart (editing only)."""
    n, h, w = geom.shape
    sev = float(np.clip(severity, 0.0, 1.0))
    out: list[Patch] = []
    if geom.modality == "DX":
        cx = 0.5 * w if geom.view == "LL" else 0.56 * w
        rx = (0.15 + 0.07 * sev) * w
        ry = (0.10 + 0.03 * sev) * h
        box = bbox((h, w), 0.62 * h, cx, ry, rx)
        if box is not None:
            sy, sx, dy, dx = box
            a = np.clip((1.0 - np.sqrt(dy * dy + dx * dx)) * 6.0, 0.0, 1.0).astype(np.float32)
            out.append(Patch(0, sy, sx, a, MU_LUNG_DELTA, lung_weighted=True))
        return out
    for i in range(n):
        z_rel = i / max(n - 1, 1)
        if not 0.1 <= z_rel <= 0.5:
            continue
        s = math.sqrt(max(1.0 - ((z_rel - 0.3) / 0.2) ** 2, 0.0))
        box = bbox((h, w), 0.42 * h, 0.55 * w, (0.12 + 0.03 * sev) * h * s, (0.14 + 0.06 * sev) * w * s)
        if box is None:
            continue
        sy, sx, dy, dx = box
        a = np.clip((1.0 - np.sqrt(dy * dy + dx * dx)) * 10.0, 0.0, 1.0).astype(np.float32)
        out.append(Patch(i, sy, sx, a, 40.0, restrict="lung"))
    return out


def _pneumothorax(geom: FrameGeometry, side: str | None, severity: float) -> list[Patch]:
    """Air between chest wall and a retracted lung edge, with a pleural line (editing only)."""
    n, h, w = geom.shape
    sev = float(np.clip(severity, 0.05, 1.0))
    sign = -1.0 if side != "left" else 1.0
    cx = (0.5 + sign * 0.14) * w
    f = 1.0 - 0.55 * sev
    out: list[Patch] = []
    frames = [0] if geom.modality == "DX" else list(range(n))
    for i in frames:
        if geom.modality == "DX":
            cy, ry, rx = 0.45 * h, 0.30 * h * f, 0.16 * w * f
            if geom.view == "LL":
                cx = 0.5 * w
            box = bbox((h, w), cy, cx, 0.36 * h, 0.22 * w)
        else:
            cy, ry, rx = 0.48 * h, 0.17 * h * f, 0.15 * w * f
            box = bbox((h, w), cy, cx + sign * 0.08 * w, 0.3 * h, 0.22 * w)
        if box is None:
            continue
        sy, sx, _, _ = box
        yy = (np.arange(sy.start, sy.stop, dtype=np.float32)[:, None] - np.float32(cy)) / np.float32(ry)
        xx = (np.arange(sx.start, sx.stop, dtype=np.float32)[None, :] - np.float32(cx)) / np.float32(rx)
        r = np.sqrt(yy * yy + xx * xx)
        on_side = (xx * sign >= -0.2).astype(np.float32)
        outside = np.clip((r - 1.0) * 12.0, 0.0, 1.0) * on_side
        line = np.clip(1.0 - np.abs(r - 1.0) * 40.0, 0.0, 1.0) * on_side
        if geom.modality == "DX":
            out.append(Patch(i, sy, sx, outside.astype(np.float32), -0.005, lung_weighted=True))
            out.append(Patch(i, sy, sx, (line * 1.5).astype(np.float32), 0.03))
        else:
            out.append(Patch(i, sy, sx, outside.astype(np.float32), -1000.0, restrict="lung"))
            out.append(Patch(i, sy, sx, (line * 0.8).astype(np.float32), -250.0, restrict="lung"))
    return out


def _stroke(geom: FrameGeometry, finding: ImageFinding, rng: np.random.Generator) -> list[Patch]:
    n, h, w = geom.shape
    sign = -1.0 if finding.side != "left" else 1.0
    zc = float(np.clip(finding.center[2], 0.2, 0.8))
    width = 0.35 + 0.6 * float(np.clip(finding.size, 0.0, 0.5))
    out: list[Patch] = []
    yy = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / (0.40 * h)
    xx = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / (0.34 * w)
    r = np.sqrt(yy * yy + xx * xx)
    ang = np.arctan2(yy, xx * sign)  # 0 = lateral on the affected side
    ang_c = float(rng.uniform(-0.3, 0.3))
    for i in range(n):
        z_rel = i / max(n - 1, 1)
        dz = abs(z_rel - zc) / 0.2
        if dz >= 1.0:
            continue
        wedge = np.clip((width * (1 - dz**2) - np.abs(ang - ang_c)) * 6.0, 0.0, 1.0)
        radial = np.clip((r - 0.35) * 8.0, 0.0, 1.0) * np.clip((1.05 - r) * 8.0, 0.0, 1.0)
        a = (wedge * radial * (0.6 + 0.4 * float(np.clip(finding.severity, 0, 1)))).astype(np.float32)
        out.append(Patch(i, slice(0, h), slice(0, w), a, 1.9, restrict="tissue"))
    return out


def finding_patches(
    geom: FrameGeometry, finding: ImageFinding, rng: np.random.Generator, *, structural: bool
) -> list[Patch]:
    """The patches that show ``finding`` in a series of this geometry.

    ``structural`` adds approximations of findings the phantom renders as anatomy
    (cardiomegaly, pneumothorax): the renderer passes False, editing passes True.
    A finding that does not show in this modality gives no patches.
    """
    c = finding.condition
    _, h, w = geom.shape
    head = c.region == "head"
    if head != (geom.modality == "MR"):
        return []
    x, y, z = _center(geom, finding)
    cy, cx = y * h, x * w
    if geom.positions:
        zc = geom.positions[0] + z * (geom.positions[-1] - geom.positions[0])
    else:
        zc = 0.0
    d = _diameter_mm(finding)
    dx_mode = geom.modality == "DX"
    if c is ClinicalCondition.LUNG_NODULE or c is ClinicalCondition.LUNG_CANCER:
        spic = c is ClinicalCondition.LUNG_CANCER
        blobs = _blob(geom, cy, cx, zc, (d / 2, d / 2, d / 2), rng, spiculated=spic, chord=dx_mode)
        target = MU_LUNG_DELTA * 1.05 if dx_mode else (38.0 if spic else 42.0)
        return [Patch(i, sy, sx, a, target) for i, sy, sx, a in blobs]
    if c is ClinicalCondition.PNEUMONIA:
        radii = (d / 2 * 0.8, d / 2 * 0.7, d / 2)
        if dx_mode:
            radii = (d / 2 * 0.8, d / 2, d / 2 * 0.7)
        blobs = _blob(geom, cy, cx, zc, radii, rng, spiculated=True)
        out = []
        for i, sy, sx, a in blobs:
            tex = _texture(a.shape, rng, 0.45, 1.0)
            if dx_mode:
                out.append(Patch(i, sy, sx, a * tex * 0.85, MU_LUNG_DELTA, lung_weighted=True))
            else:
                out.append(Patch(i, sy, sx, a * tex, 25.0, restrict="lung"))
        return out
    if c is ClinicalCondition.PLEURAL_EFFUSION:
        return _effusion(geom, finding.side, finding.severity)
    if c is ClinicalCondition.HEART_FAILURE:
        out = _cardiomegaly(geom, finding.severity) if structural else []
        if finding.severity > 0.6:
            out += _effusion(geom, None, 0.15 + 0.2 * (finding.severity - 0.6))
        return out
    if c is ClinicalCondition.PNEUMOTHORAX:
        return _pneumothorax(geom, finding.side, finding.severity) if structural else []
    if c is ClinicalCondition.BRAIN_TUMOUR:
        r = d / 2
        oedema = _blob(geom, cy, cx, zc, (r * 1.9, r * 1.7, r * 1.6), rng, spiculated=True)
        core = _blob(geom, cy, cx, zc, (r, r * 0.9, r * 0.9), rng, spiculated=True)
        out = [Patch(i, sy, sx, a * 0.9, 1.75, restrict="tissue") for i, sy, sx, a in oedema]
        for i, sy, sx, a in core:
            out.append(Patch(i, sy, sx, a * _texture(a.shape, rng, 0.7, 1.0), 1.45))
        return out
    if c is ClinicalCondition.STROKE:
        return _stroke(geom, finding, rng)
    return []  # rib fracture: anatomy in the renderer, a gap in `edit`
