"""Manipulations that need no trained model: copy-move, and the nuisances of re-encoding and resizing.

- `copy_move_fill` fills a masked region with a patch copied from elsewhere in
  the same frame (the classic way to hide a lesion in a photo editor): the
  source is the same-sized window, away from the mask, whose border best
  matches the mask's surroundings; pasted with a feathered edge.
- `reencode` is a lossy JPEG 2000 round trip at a given compression ratio, as a
  PACS or a teleradiology link does to real images;
- `resize_roundtrip` scales a frame down and back up, as exporting through a
  viewer or a screenshot does.

The last two are *nuisances*: the simulator applies them to clean and
manipulated studies alike, so that a detector learns generative traces rather
than "was re-compressed". All functions take and return float32 frames in
physical units and are deterministic given ``rng``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from openjpeg import decode as j2k_decode  # type: ignore[attr-defined]
from openjpeg import encode as j2k_encode  # type: ignore[attr-defined]
from PIL import Image
from scipy import ndimage

from fusion.generators.vae import check_frame

__all__ = ["copy_move_fill", "reencode", "resize_roundtrip"]

F32 = NDArray[np.float32]


def copy_move_fill(
    frame: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, candidates: int = 48
) -> F32:
    """Cover ``mask`` (bool or 0..1, same shape) with a window copied from elsewhere in the frame."""
    frame = check_frame(frame, "copy_move_fill")
    mask = np.asarray(mask)
    if mask.shape != frame.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the frame's {frame.shape}")
    hard = mask > 0.05 if mask.dtype != np.bool_ else mask
    if not hard.any():
        raise ValueError("the mask is empty: nothing to cover")
    hard = ndimage.binary_dilation(hard, iterations=2)
    rows, cols = np.nonzero(hard)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    h, w = r1 - r0, c1 - c0
    H, W = frame.shape
    if h >= H // 2 or w >= W // 2:
        raise ValueError("the mask is too large to copy a window over it from the same frame")
    ring = ndimage.binary_dilation(hard, iterations=4) & ~hard
    ring_box = ring[r0:r1, c0:c1]
    target_ring = frame[r0:r1, c0:c1][ring_box]
    best, best_cost = None, np.inf
    for _ in range(candidates):
        sr, sc = int(rng.integers(0, H - h)), int(rng.integers(0, W - w))
        if hard[sr : sr + h, sc : sc + w].any():
            continue
        window = frame[sr : sr + h, sc : sc + w]
        cost = float(np.mean((window[ring_box] - target_ring) ** 2)) if ring_box.any() else 0.0
        if cost < best_cost:
            best, best_cost = (sr, sc), cost
    if best is None:
        raise ValueError("no window away from the mask to copy from")
    sr, sc = best
    soft = ndimage.gaussian_filter(hard.astype(np.float32), 1.2)[r0:r1, c0:c1]
    out = frame.copy()
    out[r0:r1, c0:c1] = frame[r0:r1, c0:c1] * (1.0 - soft) + frame[sr : sr + h, sc : sc + w] * soft
    return out


def reencode(frame: np.ndarray, rng: np.random.Generator, *, ratio: float | None = None) -> F32:
    """Lossy JPEG 2000 round trip; ``ratio`` (compression ratio) drawn from 8..40 when not given."""
    frame = check_frame(frame, "reencode")
    if ratio is None:
        ratio = float(rng.uniform(8.0, 40.0))
    if ratio <= 1.0:
        raise ValueError(f"compression ratio must be > 1, got {ratio}")
    low = float(np.floor(frame.min()))
    stored = np.clip(np.rint(frame - low), 0, 65535).astype(np.uint16)
    bits = max(int(stored.max()).bit_length(), 8)
    code = j2k_encode(stored, bits_stored=bits, compression_ratios=[ratio])
    decoded = np.asarray(j2k_decode(code), dtype=np.float32)
    return (decoded + np.float32(low)).astype(np.float32)


def resize_roundtrip(frame: np.ndarray, rng: np.random.Generator, *, factor: float | None = None) -> F32:
    """Scale down by ``factor`` (0.5..0.85 when not given) averaging areas, then back up bilinearly."""
    frame = check_frame(frame, "resize_roundtrip")
    if factor is None:
        factor = float(rng.uniform(0.5, 0.85))
    if not 0.1 <= factor < 1.0:
        raise ValueError(f"resize factor must be in [0.1, 1), got {factor}")
    H, W = frame.shape
    small = Image.fromarray(frame, mode="F").resize(
        (max(round(W * factor), 4), max(round(H * factor), 4)), Image.Resampling.BOX
    )
    result: F32 = np.asarray(small.resize((W, H), Image.Resampling.BILINEAR), dtype=np.float32)
    return result
