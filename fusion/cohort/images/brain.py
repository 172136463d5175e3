"""The brain MR phantom: axial T2-weighted slices.

Concentric layers of the head (skin, scalp fat, skull with diploe, CSF, a
cortical ribbon folded into gyri with CSF-filled sulci, white matter) around
lateral ventricles, a third ventricle, deep grey nuclei and the
interhemispheric fissure. Age shows as atrophy: wider sulci, a thicker CSF
rim and larger ventricles (``ventricle_scale``). Intensities follow T2
contrast: CSF brightest, grey above white matter, cortical bone dark.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from fusion.cohort.images.raster import fill_ellipse

__all__ = ["T2", "brain_volume", "ventricle_scale"]

F32 = NDArray[np.float32]

T2 = {
    "skin": 350.0,
    "fat": 720.0,
    "bone": 30.0,
    "diploe": 260.0,
    "csf": 1000.0,
    "gm": 600.0,
    "wm": 410.0,
    "deep": 540.0,
}


def ventricle_scale(age: float) -> float:
    """Linear size of the ventricles relative to a young adult's (grows with age)."""
    return 1.0 + 0.011 * max(age - 25.0, 0.0) + 0.00025 * max(age - 55.0, 0.0) ** 2


@lru_cache(maxsize=8)
def _polar(h: int, w: int, spacing: float, ax: float, ay: float) -> tuple[F32, F32, F32]:
    y = ((np.arange(h, dtype=np.float32) - h / 2) * np.float32(spacing))[:, None]
    x = ((np.arange(w, dtype=np.float32) - w / 2) * np.float32(spacing))[None, :]
    rn = np.sqrt((x / ax) ** 2 + (y / ay) ** 2).astype(np.float32)
    theta = np.arctan2(y, x).astype(np.float32)
    return rn, theta, np.broadcast_to(x, (h, w)).astype(np.float32)


def brain_volume(
    z_mm: NDArray[np.floating], spacing: float, age: float, female: bool, rng: np.random.Generator
) -> F32:
    """Ideal T2 slices (512 x 512) at heights ``z_mm`` (0 = centre of the head, up positive)."""
    h = w = 512
    size = 0.95 if female else 1.0
    ax, ay, az = 74.0 * size, 92.0 * size, 82.0 * size
    rn, theta, xmm = _polar(h, w, spacing, ax, ay)
    csf_rim = 1.5 + 0.045 * max(age - 25.0, 0.0)
    sulcus_w = 0.10 + 0.0045 * max(age - 25.0, 0.0)
    vs = ventricle_scale(age)
    phase = rng.uniform(0, 2 * math.pi, size=3)
    edges_mm = np.array([0.0, 2.0, 5.5, 7.5, 9.5, 11.5], np.float32)
    values = np.array(
        [0.0, T2["skin"], T2["fat"], T2["bone"], T2["diploe"], T2["bone"], T2["csf"]], np.float32
    )
    vol = np.zeros((len(z_mm), h, w), np.float32)
    # work inside the head's bounding box only
    inside = np.nonzero((rn < 1.0).any(axis=1))[0]
    r0, r1 = int(inside[0]), int(inside[-1]) + 1
    inside = np.nonzero((rn < 1.0).any(axis=0))[0]
    c0, c1 = int(inside[0]), int(inside[-1]) + 1
    rn, theta, xmm = rn[r0:r1, c0:c1], theta[r0:r1, c0:c1], xmm[r0:r1, c0:c1]
    gyri = 17.0 * theta + 2.5 * np.sin(5.0 * theta + phase[0]) + phase[1]
    sin_g, cos_g = np.sin(gyri).astype(np.float32), np.cos(gyri).astype(np.float32)
    midline = np.abs(xmm)
    for i, z in enumerate(np.asarray(z_mm, dtype=float)):
        q = 1.0 - (z / az) ** 2
        img = vol[i, r0:r1, c0:c1]
        if q <= 0.02:
            continue
        s = math.sqrt(q)
        radius = 0.5 * (ax + ay) * s
        depth = (np.float32(1.0) - rn * np.float32(1.0 / s)) * np.float32(radius)  # mm inside the surface
        img[:] = values[np.searchsorted(edges_mm, depth, side="right")]
        g = sin_g * np.float32(math.cos(z * 0.09)) + cos_g * np.float32(math.sin(z * 0.09))
        brain_top = 11.5 + csf_rim
        cortex = depth > brain_top
        wm_edge = g + np.float32(brain_top + 7.0)
        wm_edge += g * np.float32(2.0)
        np.copyto(img, np.float32(T2["gm"]), where=cortex)
        np.copyto(img, np.float32(T2["wm"]), where=depth > wm_edge)
        sulci = cortex & (depth < wm_edge + 1.0) & (g > 1.0 - 2.0 * sulcus_w)
        np.copyto(img, np.float32(T2["csf"]), where=sulci)
        fissure = cortex & (midline < 0.8 + 0.02 * age) & (depth < brain_top + 25.0)
        np.copyto(img, np.float32(T2["csf"]), where=fissure)
        img = vol[i]
        # deep structures, in pixels about the image centre
        c = h / 2
        if -25.0 < z < 15.0:
            for sgn in (-1, 1):
                fill_ellipse(
                    img, c + 5 / spacing, c + sgn * 20 / spacing, 14 / spacing, 9 / spacing, T2["deep"]
                )
            fill_ellipse(
                img, c + 2 / spacing, c, 12 / spacing, 1.5 * vs / spacing, T2["csf"]
            )  # 3rd ventricle
        if -15.0 < z < 40.0:
            t = 1.0 - abs(z - 12.0) / 28.0
            for sgn in (-1, 1):
                for cy_mm, ry, rx in ((-14.0, 16.0, 5.0), (10.0, 14.0, 4.0), (28.0, 8.0, 5.5)):
                    fill_ellipse(
                        img,
                        c + cy_mm * vs / spacing,
                        c + sgn * (6.0 + 2.0 * vs) / spacing,
                        ry * vs * max(t, 0.3) / spacing,
                        rx * vs * max(t, 0.3) / spacing,
                        T2["csf"],
                    )
    return vol
