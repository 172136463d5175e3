"""Applying lesion patches to frames, and the masks that confine them (lung, brain tissue).

The masks come either from the phantom (exact, while rendering) or from the
pixels themselves (estimated, when editing a finished image): a CT lung mask
is air-like pixels inside the body's hull; an MR tissue mask is the band of
intensities around the slice's tissue level; a DX lung chord is estimated from
how far a pixel's signal falls below the densest part of its row.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from fusion.cohort.images.lesions import DX_GAIN, MU_LUNG_DELTA, Patch, tissue_level

__all__ = ["apply_patches", "ct_lung_mask", "dx_lung_chord", "mr_tissue_mask"]

F32 = NDArray[np.float32]
B = NDArray[np.bool_]


def _span(inside: B, axis: int) -> B:
    """Pixels between the first and the last ``inside`` pixel of their line along ``axis``."""
    n = inside.shape[axis]
    first = np.expand_dims(np.argmax(inside, axis=axis), axis)
    last = n - 1 - np.expand_dims(np.argmax(np.flip(inside, axis=axis), axis=axis), axis)
    shape = [1] * inside.ndim
    shape[axis] = n
    idx = np.arange(n).reshape(shape)
    # a line with nothing inside has first = 0 and last = n - 1 - 0: the test below is empty then
    span: B = (idx >= first) & (idx <= last) & np.expand_dims(inside.any(axis=axis), axis)
    return span


def _hull(inside: B) -> B:
    """Pixels between the first and last ``inside`` pixel of their row and of their column."""
    return _span(inside, inside.ndim - 1) & _span(inside, inside.ndim - 2)


def ct_lung_mask(volume_hu: F32) -> B:
    """Aerated lung (and pleural air): below -400 HU inside the body's hull."""
    body = volume_hu > -500.0
    return (volume_hu < -400.0) & _hull(body)


def mr_tissue_mask(frames: F32) -> B:
    """Brain-tissue-like pixels: within a band around each slice's tissue level."""
    out = np.zeros(frames.shape, dtype=bool)
    for i, f in enumerate(frames):
        lvl = tissue_level(f)
        out[i] = (f > 0.55 * lvl) & (f < 1.45 * lvl)
    return out


def dx_lung_chord(signal: F32) -> F32:
    """Estimated lung path length (mm) per pixel of radiographs in detector units."""
    out = np.zeros(signal.shape, np.float32)
    for i, s in enumerate(signal):
        small = ndimage.gaussian_filter(s[::4, ::4], 2.0)
        ref = np.percentile(small, 97, axis=1, keepdims=True)
        body = small > 0.35 * ref
        chord = np.clip((ref - small) / (DX_GAIN * MU_LUNG_DELTA), 0.0, 220.0) * body
        chord = ndimage.zoom(chord, 4, order=1)[: s.shape[0], : s.shape[1]]
        out[i, : chord.shape[0], : chord.shape[1]] = chord
    return out


def apply_patches(
    frames: F32,
    modality: str,
    patches: list[Patch],
    *,
    masks: B | None = None,
    lung_chord: F32 | None = None,
    dx_scale: float = 1.0,
    noise: tuple[np.random.Generator, float] | None = None,
) -> F32:
    """Frames with the patches applied (a new array; the input is not changed).

    ``masks`` confine restricted patches (CT lung, MR tissue); ``lung_chord``
    weighs DX lung-weighted patches; ``dx_scale`` converts line integrals to
    the frames' units (1 on the ideal phantom, ``DX_GAIN`` on finished images);
    ``noise`` = (rng, sigma) adds independent white noise of that standard
    deviation where the patch acts, as a pasted lesion would carry.
    """
    out = frames.copy()
    levels: dict[int, float] = {}
    for p in patches:
        region = out[p.frame, p.rows, p.cols]
        a = p.alpha
        if p.restrict is not None and masks is not None:
            a = a * masks[p.frame, p.rows, p.cols]
        if modality == "DX":
            delta = a * np.float32(p.target * dx_scale)
            if p.lung_weighted:
                if lung_chord is None:
                    raise ValueError("a lung-weighted DX patch needs lung_chord")
                delta = delta * lung_chord[p.frame, p.rows, p.cols]
            region += delta
            weight = np.clip(np.abs(delta) / np.float32(max(abs(p.target * dx_scale) * 20.0, 1e-6)), 0, 1)
        else:
            target = p.target
            if modality == "MR":
                if p.frame not in levels:
                    levels[p.frame] = tissue_level(frames[p.frame])
                target = p.target * levels[p.frame]
            region *= np.float32(1.0) - a
            region += a * np.float32(target)
            weight = a
        if noise is not None:
            rng, sigma = noise
            region += rng.standard_normal(region.shape, dtype=np.float32) * np.float32(sigma) * weight
    if modality == "MR" or modality == "DX":
        np.maximum(out, 0.0, out=out)
    return out
