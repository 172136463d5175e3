"""Editing finished pixels: pasting a finding in, or inpainting one away.

Both work on the finished image the way a forger's tool would, and leave the
traces such tools leave:

- ``inject_finding`` (CT-GAN-like) blends the rendered lesion into the pixels,
  confined by masks estimated from the image itself (CT lung, MR tissue, DX
  lung path), with white noise of its own, which lacks the scanner's noise
  correlation;
- ``remove_finding`` fills the lesion's footprint from its surroundings by
  normalised convolution (a smooth membrane, without vessels or texture) and
  re-noises it with white noise matched to the local noise level, feathered at
  the border.

A rib fracture is pasted as a short inpainted gap in the bone at its centre.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from fusion.cohort.images.blend import apply_patches, ct_lung_mask, dx_lung_chord, mr_tissue_mask
from fusion.cohort.images.lesions import DX_GAIN, FrameGeometry, Patch, finding_patches
from fusion.cohort.images.series import RenderedSeries, RenderedStudy
from fusion.cohort.scenario import ClinicalCondition, ImageFinding

__all__ = ["inject_finding", "remove_finding"]

logger = logging.getLogger(__name__)

F32 = NDArray[np.float32]

_OWN_NOISE = {"CT": 12.0, "DX": 14.0, "MR": 10.0}


def _geometry(s: RenderedSeries) -> FrameGeometry:
    return FrameGeometry(
        s.modality,
        s.view,
        s.frames.shape,
        s.pixel_spacing,
        s.slice_positions,
        s.slice_thickness,
    )


def _fracture_footprint(s: RenderedSeries, finding: ImageFinding) -> list[tuple[int, F32]]:
    """A small disk at the finding's centre (a gap across the rib), on the frames it reaches."""
    n, h, w = s.frames.shape
    x, y, z = finding.center
    if s.view == "LL":
        x = 0.75
    r_px = 4.5 / s.pixel_spacing[0]
    yy = np.arange(h, dtype=np.float32)[:, None] - y * h
    xx = np.arange(w, dtype=np.float32)[None, :] - x * w
    disk = np.clip(r_px + 0.5 - np.sqrt(yy * yy + xx * xx), 0.0, 1.0).astype(np.float32)
    if s.modality == "DX" or n == 1:
        return [(0, disk)]
    k = round(float(np.clip(z, 0, 1)) * (n - 1))
    return [(k, disk)]


def _footprints(s: RenderedSeries, finding: ImageFinding, rng: np.random.Generator) -> list[Patch]:
    if finding.condition is ClinicalCondition.RIB_FRACTURE:
        if s.modality == "MR":
            return []
        h, w = s.frames.shape[1:]
        return [Patch(i, slice(0, h), slice(0, w), a, 0.0) for i, a in _fracture_footprint(s, finding)]
    return finding_patches(_geometry(s), finding, rng, structural=True)


# How far around the (dilated) footprint the result depends on the frame: the
# 3-pixel dilation, the 6-pixel noise ring, the 1.5-sigma residual filter's
# 6-pixel support and the feather's; beyond it the output is the input.
_INPAINT_PAD = 16


def _box(hard: NDArray[np.bool_], pad: int) -> tuple[slice, slice]:
    """The bounding box of ``hard`` grown by ``pad`` pixels, clipped to the frame."""
    h, w = hard.shape
    rows = np.flatnonzero(hard.any(axis=1))
    cols = np.flatnonzero(hard.any(axis=0))
    return (
        slice(max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, h)),
        slice(max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, w)),
    )


def _upsample_axis(coarse: NDArray[np.float64], start: int, n: int, f: int, axis: int) -> NDArray[np.float64]:
    """Linear interpolation along ``axis`` of block means of ``f`` pixels (block 0 starting
    at pixel 0) onto pixels ``start .. start + n - 1``; constant beyond the end blocks."""
    m = coarse.shape[axis]
    pos = (np.arange(start, start + n, dtype=np.float64) - (f - 1) / 2.0) / f
    pos = np.clip(pos, 0.0, m - 1.0)
    i0 = np.minimum(pos.astype(np.intp), m - 1)
    i1 = np.minimum(i0 + 1, m - 1)
    t = pos - i0
    shape = [1, 1]
    shape[axis] = n
    t = t.reshape(shape)
    out: NDArray[np.float64] = np.take(coarse, i0, axis=axis) * (1.0 - t) + np.take(coarse, i1, axis=axis) * t
    return out


def _blocks(lo: int, hi: int, n: int, f: int) -> tuple[int, int]:
    """``[lo, hi)`` clipped to ``[0, n)`` and grown to whole blocks of ``f``, kept inside the
    frame where it fits (aligned to the frame's start or end), else running past the end."""
    lo, hi = max(lo, 0), min(hi, n)
    size = -(-(hi - lo) // f) * f
    if lo + size > n:
        lo = max(n - size, 0)
    return lo, lo + size


def _membrane(
    frame: F32, hard: NDArray[np.bool_], box: tuple[slice, slice], extent: float
) -> NDArray[np.float64]:
    """The smooth fill over ``box``: normalised convolution of the known pixels at two scales.

    The small scale fills where enough known pixels lie within reach, the large
    one the rest (the median of the known pixels where neither reaches). Both
    are computed on block means of ``f`` x ``f`` pixels, ``f`` a power of two at most 0.4 of
    the small scale (so the fill, smooth on that scale, loses nothing), within
    the reach of the large scale around the footprint, and interpolated back.
    """
    h, w = frame.shape
    s_small, s_large = max(extent / 6.0, 2.0), max(extent / 2.0, 6.0)
    f = 1 << max(int(np.log2(max(s_small / 2.5, 1.0))), 0)  # a power of two: divides 512
    reach = int(np.ceil(3.0 * s_large)) + 2 * f
    sy, sx = box
    # the context: the footprint's box plus the large scale's reach, in whole blocks; a
    # context that meets the frame's edge is aligned to it, so that the filters' mirror
    # boundary (as on the full frame) mirrors whole blocks
    (y0, y1), (x0, x1) = (_blocks(s.start - reach, s.stop + reach, n, f) for s, n in ((sy, h), (sx, w)))
    ny, nx = (y1 - y0) // f, (x1 - x0) // f
    vy, vx = min(y1, h) - y0, min(x1, w) - x0  # the part inside the frame
    known = np.zeros((ny * f, nx * f), np.float64)  # beyond the frame (odd sizes only): unknown
    known[:vy, :vx] = 1.0
    known[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0][hard] = 0.0
    values = np.zeros_like(known)
    values[:vy, :vx] = frame[y0 : y0 + vy, x0 : x0 + vx]
    values *= known
    num_c = values.reshape(ny, f, nx, f).mean(axis=(1, 3))
    den_c = known.reshape(ny, f, nx, f).mean(axis=(1, 3))

    def up(coarse: NDArray[np.float64]) -> NDArray[np.float64]:
        rows = _upsample_axis(coarse, sy.start - y0, sy.stop - sy.start, f, 0)
        return _upsample_axis(rows, sx.start - x0, sx.stop - sx.start, f, 1)

    # numerator and denominator are smooth: interpolate them, divide at full resolution
    fill = np.full((sy.stop - sy.start, sx.stop - sx.start), np.nan)
    for sigma in (s_small, s_large):
        num = up(ndimage.gaussian_filter(num_c, sigma / f, truncate=3.0))
        den = up(ndimage.gaussian_filter(den_c, sigma / f, truncate=3.0))
        ok = (den > 0.05) & np.isnan(fill)
        fill[ok] = num[ok] / den[ok]
    if np.isnan(fill).any():
        outside = np.ones(frame.shape, bool)
        outside[sy, sx] = ~hard
        fill[np.isnan(fill)] = float(np.median(frame[outside])) if outside.any() else 0.0
    return fill


def _inpaint(frame: F32, mask: F32, rng: np.random.Generator) -> F32:
    """Fill where ``mask`` (0..1) is high from the surroundings, then re-noise with white noise.

    Works on the footprint's bounding box (plus what the noise estimate and the
    feather read); the rest of the frame is returned unchanged.
    """
    hard0 = mask > 0.05
    if not hard0.any():
        return frame
    box = _box(hard0, _INPAINT_PAD)
    win = frame[box]
    hard = ndimage.binary_dilation(hard0[box], iterations=3)
    extent = float(np.sqrt(hard.sum()))
    fill = _membrane(frame, hard, box, extent)
    ring = ndimage.binary_dilation(hard, iterations=6) & ~hard
    resid = win - ndimage.gaussian_filter(win, 1.5)
    sigma_n = float(np.std(resid[ring])) * 1.6 if ring.any() else 5.0
    noisy = fill.astype(np.float32)
    noisy += rng.standard_normal(win.shape, dtype=np.float32) * np.float32(sigma_n)
    soft = ndimage.gaussian_filter(hard.astype(np.float32), 1.5)
    out = frame.copy()
    out[box] = (win * (1.0 - soft) + noisy * soft).astype(np.float32)
    return out


def inject_finding(study: RenderedStudy, finding: ImageFinding, seed: int) -> RenderedStudy:
    """Paste ``finding`` into the study's pixels, in every series where it would show."""
    rng = np.random.default_rng(seed)
    out = []
    for s in study.series:
        if finding.condition is ClinicalCondition.RIB_FRACTURE:
            frames = s.frames.copy()
            for i, disk in _fracture_footprint(s, finding) if s.modality != "MR" else []:
                frames[i] = _inpaint(frames[i], disk, rng)
            out.append(replace(s, frames=frames))
            continue
        patches = finding_patches(_geometry(s), finding, rng, structural=True)
        if not patches:
            out.append(s)
            continue
        noise = (rng, _OWN_NOISE[s.modality])
        if s.modality == "CT":
            frames = apply_patches(s.frames, "CT", patches, masks=ct_lung_mask(s.frames), noise=noise)
        elif s.modality == "MR":
            frames = apply_patches(s.frames, "MR", patches, masks=mr_tissue_mask(s.frames), noise=noise)
        else:
            chord = dx_lung_chord(s.frames)
            frames = apply_patches(s.frames, "DX", patches, lung_chord=chord, dx_scale=DX_GAIN, noise=noise)
        out.append(replace(s, frames=frames.astype(np.float32)))
    return RenderedStudy(study.plan, tuple(out))


def remove_finding(
    study: RenderedStudy,
    finding: ImageFinding,
    seed: int,
    fill: Callable[[F32, F32, np.random.Generator], np.ndarray] | None = None,
) -> RenderedStudy:
    """Inpaint the region of an existing ``finding`` away, in every series where it shows.

    ``fill(frame, mask, rng)`` does the hiding (``mask`` 0..1 over the lesion's
    footprint); by default the smooth membrane fill. A ``fill`` that cannot
    (a copy-move over a region too large to copy) raises ValueError.
    """
    rng = np.random.default_rng(seed)
    out = []
    for s in study.series:
        patches = _footprints(s, finding, rng)
        if not patches:
            out.append(s)
            continue
        _, h, w = s.frames.shape
        masks: dict[int, F32] = {}
        for p in patches:
            m = masks.setdefault(p.frame, np.zeros((h, w), np.float32))
            a = np.abs(p.alpha)
            peak = float(a.max()) if a.size else 0.0
            if peak > 0:
                np.maximum(m[p.rows, p.cols], a / peak, out=m[p.rows, p.cols])
        frames = s.frames.copy()
        for i, m in masks.items():
            if fill is None:
                frames[i] = _inpaint(frames[i], m, rng)
            else:
                frames[i] = np.asarray(fill(frames[i], m, rng), dtype=np.float32)
        out.append(replace(s, frames=frames))
    return RenderedStudy(study.plan, tuple(out))
