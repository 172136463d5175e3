"""Rasterising the phantoms' primitives cheaply: ellipses in their bounding box, disk stamps, chords.

Everything works on float32 arrays and touches only the pixels a primitive can
cover, so a slice with a hundred small structures costs about as much as one
full-image operation. Coordinates are in pixels (row, column), floats allowed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "bbox",
    "disk_offsets",
    "ellipse_alpha",
    "ellipsoid_chord",
    "fill_ellipse",
    "splat",
    "stamp_disks",
]

F32 = NDArray[np.float32]


def bbox(
    shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float
) -> tuple[slice, slice, NDArray[np.float32], NDArray[np.float32]] | None:
    """The clipped bounding box of an ellipse and its normalised offsets ((y-cy)/ry, (x-cx)/rx)."""
    if ry <= 0 or rx <= 0:
        return None
    y0, y1 = max(int(np.floor(cy - ry)) - 1, 0), min(int(np.ceil(cy + ry)) + 2, shape[0])
    x0, x1 = max(int(np.floor(cx - rx)) - 1, 0), min(int(np.ceil(cx + rx)) + 2, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    dy = ((np.arange(y0, y1, dtype=np.float32) - np.float32(cy)) / np.float32(ry))[:, None]
    dx = ((np.arange(x0, x1, dtype=np.float32) - np.float32(cx)) / np.float32(rx))[None, :]
    return slice(y0, y1), slice(x0, x1), dy, dx


def fill_ellipse(img: F32, cy: float, cx: float, ry: float, rx: float, value: float) -> None:
    """Set the pixels inside an axis-aligned ellipse to ``value`` (in place)."""
    box = bbox((img.shape[0], img.shape[1]), cy, cx, ry, rx)
    if box is None:
        return
    sy, sx, dy, dx = box
    inside = dy * dy + dx * dx <= 1.0
    img[sy, sx][inside] = value


def ellipse_alpha(
    shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, edge: float = 1.0
) -> tuple[slice, slice, F32] | None:
    """A soft ellipse: 1 inside, falling linearly to 0 over ``edge`` pixels at the border."""
    pad = edge
    box = bbox(shape, cy, cx, ry + pad, rx + pad)
    if box is None:
        return None
    sy, sx, dy, dx = box
    # back to pixel offsets, then an approximate signed distance to the border
    py, px = dy * np.float32(ry + pad), dx * np.float32(rx + pad)
    r = np.sqrt((py / np.float32(ry)) ** 2 + (px / np.float32(rx)) ** 2)
    dist = (np.float32(1.0) - r) * np.float32(min(ry, rx))
    alpha = np.clip(dist / np.float32(max(edge, 1e-3)) + np.float32(0.5), 0.0, 1.0).astype(np.float32)
    return sy, sx, alpha


def ellipsoid_chord(
    shape: tuple[int, int], cu: float, cv: float, ru: float, rv: float, depth: float
) -> tuple[slice, slice, F32] | None:
    """The chord length (mm) through an ellipsoid projected along its third axis.

    ``cu, cv, ru, rv`` are the projected ellipse in pixels (rows, columns) and
    ``depth`` the semi-axis along the projection in mm: chord = 2 depth sqrt(1 - r^2).
    """
    box = bbox(shape, cu, cv, ru, rv)
    if box is None:
        return None
    sy, sx, dy, dx = box
    q = np.float32(1.0) - dy * dy - dx * dx
    chord = np.float32(2.0 * depth) * np.sqrt(np.maximum(q, np.float32(0.0)))
    return sy, sx, chord.astype(np.float32)


@lru_cache(maxsize=32)
def disk_offsets(radius: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Integer (dy, dx) offsets of the pixels of a disk of ``radius`` pixels."""
    r = max(int(radius), 0)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = yy * yy + xx * xx <= r * r + r * 0.8
    return yy[keep].astype(np.intp), xx[keep].astype(np.intp)


def stamp_disks(
    img: F32, ys: NDArray[np.floating], xs: NDArray[np.floating], radius: int, value: float
) -> None:
    """Set disks of ``radius`` pixels centred on (ys, xs) to ``value`` (vectorised, in place)."""
    if len(ys) == 0:
        return
    h, w = img.shape
    cy = np.rint(ys).astype(np.intp)
    cx = np.rint(xs).astype(np.intp)
    oy, ox = disk_offsets(radius)
    yy = (cy[:, None] + oy[None, :]).ravel()
    xx = (cx[:, None] + ox[None, :]).ravel()
    ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    img[yy[ok], xx[ok]] = value


def splat(
    shape: tuple[int, int], ys: NDArray[np.floating], xs: NDArray[np.floating], weights: NDArray[np.floating]
) -> F32:
    """Accumulate point weights onto an image (bilinear, summing overlaps) with ``np.bincount``."""
    h, w = shape
    y0 = np.floor(ys).astype(np.intp)
    x0 = np.floor(xs).astype(np.intp)
    fy = (ys - y0).astype(np.float32)
    fx = (xs - x0).astype(np.float32)
    idx_parts, w_parts = [], []
    for oy, ox, wt in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = y0 + oy, x0 + ox
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        idx_parts.append(yy[ok] * w + xx[ok])
        w_parts.append((weights * wt)[ok])
    if not idx_parts:
        return np.zeros(shape, np.float32)
    acc = np.bincount(np.concatenate(idx_parts), np.concatenate(w_parts), minlength=h * w)
    return acc.reshape(h, w).astype(np.float32)
