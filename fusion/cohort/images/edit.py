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
        s.slice_thickness,  # type: ignore[arg-type]
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


def _inpaint(frame: F32, mask: F32, rng: np.random.Generator) -> F32:
    """Fill where ``mask`` (0..1) is high from the surroundings, then re-noise with white noise."""
    hard = mask > 0.05
    if not hard.any():
        return frame
    hard = ndimage.binary_dilation(hard, iterations=3)
    known = (~hard).astype(np.float32)
    extent = float(np.sqrt(hard.sum()))
    fill = np.zeros_like(frame)
    weight_sum = np.zeros_like(frame)
    for sigma in (max(extent / 6.0, 2.0), max(extent / 2.0, 6.0)):
        num = ndimage.gaussian_filter(frame * known, sigma, truncate=3.0)
        den = ndimage.gaussian_filter(known, sigma, truncate=3.0)
        ok = (den > 0.05) & (weight_sum == 0)
        fill[ok] = num[ok] / den[ok]
        weight_sum[ok] = 1.0
    fill[weight_sum == 0] = float(np.median(frame[~hard])) if (~hard).any() else 0.0
    ring = ndimage.binary_dilation(hard, iterations=6) & ~hard
    resid = frame - ndimage.gaussian_filter(frame, 1.5)
    sigma_n = float(np.std(resid[ring])) * 1.6 if ring.any() else 5.0
    fill += rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(sigma_n)
    soft = ndimage.gaussian_filter(hard.astype(np.float32), 1.5)
    return (frame * (1.0 - soft) + fill * soft).astype(np.float32)


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


def remove_finding(study: RenderedStudy, finding: ImageFinding, seed: int) -> RenderedStudy:
    """Inpaint the region of an existing ``finding`` away, in every series where it shows."""
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
            frames[i] = _inpaint(frames[i], m, rng)
        out.append(replace(s, frames=frames))
    return RenderedStudy(study.plan, tuple(out))
