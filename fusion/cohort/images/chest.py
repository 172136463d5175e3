"""Chest images from the phantom: axial CT slices in HU, and radiograph projections.

CT: each slice is painted back to front from the ellipsoids' cross-sections
at the slice's z (body and subcutaneous fat, lungs, diaphragm domes with liver
and spleen, heart in its pericardial fat, aorta, pulmonary trunk, trachea and
bronchi, oesophagus, vertebra with cortical shell and canal, sternum), then the
bone and vessel point clouds within the slab are stamped as disks (ribs as
cortical rings; vessels with partial-volume HU), lung density rises towards
the dependent (posterior) lung, and smokers get emphysematous holes.

DX: line integrals of attenuation ``L = sum mu * chord`` through the same
ellipsoids, computed analytically (an ellipsoid's chord is
``2 c sqrt(1 - u^2 - v^2)``), plus projected ribs and clavicles (disks with a
brighter cortex) and the lung vessel trees splatted as lung markings. PA and AP
views project along y (AP magnifies the heart), the lateral (LL) along x.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from fusion.cohort.images.anatomy import ChestAnatomy, Ellipsoid
from fusion.cohort.images.raster import ellipsoid_chord, fill_ellipse, splat, stamp_disks

__all__ = ["MU", "ct_volume", "dx_line_integrals"]

logger = logging.getLogger(__name__)

F32 = NDArray[np.float32]

# Linear attenuation (1/mm) at an effective ~60 keV.
MU = {"tissue": 0.0200, "fat": 0.0180, "lung": 0.0050, "bone": 0.0330, "air": 0.0}


@lru_cache(maxsize=8)
def _lung_gradient(h: int, w: int, spacing: float, b: float) -> F32:
    """Lung HU rising towards the back (gravity-dependent density), per row."""
    y = (np.arange(h, dtype=np.float32) - h / 2) * np.float32(spacing)
    row = -870.0 + 70.0 * np.clip((y + b) / (2 * b), 0.0, 1.0)
    return np.broadcast_to(row[:, None], (h, w)).astype(np.float32)


def _mm_to_px(x: float, y: float, spacing: float, h: int, w: int) -> tuple[float, float]:
    return h / 2 + y / spacing, w / 2 + x / spacing


def _paint(img: F32, e: Ellipsoid, z: float, spacing: float, value: float, grow: float = 0.0) -> None:
    sec = e.section(z)
    if sec is None:
        return
    cx, cy, rx, ry = sec
    r, c = _mm_to_px(cx, cy, spacing, *img.shape)
    fill_ellipse(img, r, c, (ry + grow) / spacing, (rx + grow) / spacing, value)


def _stamp_cloud(
    img: F32, pts: F32, radius_mm: F32, z: float, half: float, spacing: float, values: tuple[float, float]
) -> None:
    """Bone points within the slab: disks at ``values[0]`` with an inner core at ``values[1]``."""
    sel = np.abs(pts[:, 2] - z) < half + radius_mm * 0.6
    if not sel.any():
        return
    p, r = pts[sel], radius_mm[sel]
    h, w = img.shape
    rows = h / 2 + p[:, 1] / spacing
    cols = w / 2 + p[:, 0] / spacing
    for rad in np.unique(np.rint(r / spacing).astype(int)):
        k = np.rint(r / spacing).astype(int) == rad
        stamp_disks(img, rows[k], cols[k], int(rad), values[0])
    for rad in np.unique(np.rint(r / spacing * 0.55).astype(int)):
        k = np.rint(r / spacing * 0.55).astype(int) == rad
        stamp_disks(img, rows[k], cols[k], int(rad), values[1])


def ct_volume(anat: ChestAnatomy, z_mm: NDArray[np.floating], thickness: float, spacing: float) -> F32:
    """Ideal (noise-free, unblurred) axial slices in HU at phantom heights ``z_mm``, 512 x 512."""
    h = w = 512
    vol = np.empty((len(z_mm), h, w), np.float32)
    half = thickness / 2.0
    a_in = anat.half_width - anat.fat
    b_in = anat.half_depth - anat.fat
    grad = _lung_gradient(h, w, spacing, anat.lungs["right"].ay)
    ax, sy = anat.aorta_radius, anat.spine_y
    vx, vr = anat.vessels, anat.vessel_radius
    vessel_img = np.empty((h, w), np.float32)
    for i, z in enumerate(np.asarray(z_mm, dtype=float)):
        img = vol[i]
        img.fill(-1000.0)
        taper = 1.0 if z < 60 else max(0.82, 1.0 - (z - 60) / 400)
        rc = _mm_to_px(0.0, 0.0, spacing, h, w)
        fill_ellipse(img, rc[0], rc[1], anat.half_depth / spacing, anat.half_width * taper / spacing, -100.0)
        for br in anat.breasts:
            _paint(img, br, z, spacing, -60.0)
        fill_ellipse(img, rc[0], rc[1], b_in / spacing, a_in * taper / spacing, 45.0)
        # lungs: pleural cavity (air), then the aerated lung with its visceral pleural line
        lung_marker = -850.0
        for side in ("right", "left"):
            if anat.collapsed[side] is not anat.lungs[side]:
                _paint(img, anat.lungs[side], z, spacing, -1000.0)
                _paint(img, anat.collapsed[side], z, spacing, -200.0, grow=1.2)
            _paint(img, anat.collapsed[side], z, spacing, lung_marker)
        for p in anat.emphysema:
            if abs(p[2] - z) < half + 4:
                r, c = _mm_to_px(float(p[0]), float(p[1]), spacing, h, w)
                fill_ellipse(img, r, c, 6 / spacing, 6 / spacing, -985.0)
        _paint(img, anat.domes["right"], z, spacing, 58.0)  # liver
        _paint(img, anat.domes["left"], z, spacing, 45.0)  # spleen / stomach wall
        _paint(img, anat.stomach, z, spacing, -1000.0)
        _paint(img, anat.heart, z, spacing, -90.0, grow=5.0)  # pericardial fat
        _paint(img, anat.heart, z, spacing, 38.0)
        # great vessels, airway, oesophagus
        px: Callable[[float, float], tuple[float, float]] = lambda xm, ym: _mm_to_px(xm, ym, spacing, h, w)  # noqa: E731
        if z > -150:
            r, c = px(a_in * 0.14, sy - 18.0)
            fill_ellipse(img, r, c, ax / spacing, ax / spacing, 40.0)  # descending aorta
        if -40 < z < 35:
            r, c = px(-16.0, -b_in * 0.25)
            fill_ellipse(img, r, c, (ax + 2) / spacing, (ax + 2) / spacing, 40.0)  # ascending aorta
        if -15 < z < 12:
            r, c = px(18.0, -b_in * 0.22)
            fill_ellipse(img, r, c, 13 / spacing, 13 / spacing, 38.0)  # pulmonary trunk
        if 32 < z < 52:
            for t in np.linspace(0, 1, 9):
                r, c = px(-16.0 + t * (a_in * 0.14 + 16.0), -b_in * 0.25 + t * (sy - 18.0 + b_in * 0.25))
                fill_ellipse(img, r, c, ax / spacing, ax / spacing, 40.0)  # arch
        r, c = px(4.0, sy - 28.0)
        fill_ellipse(img, r, c, 7 / spacing, 8 / spacing, 30.0)  # oesophagus
        if z > 20:
            r, c = px(0.0, sy - 45.0)
            fill_ellipse(img, r, c, 10 / spacing, 10 / spacing, 45.0)
            fill_ellipse(img, r, c, 8.5 / spacing, 8.5 / spacing, -1000.0)  # trachea
        elif z > -15:
            t = (20 - z) / 35
            for sgn, spread in ((-1, 30.0), (1, 38.0)):
                r, c = px(sgn * spread * t, sy - 45.0 + 8 * t)
                fill_ellipse(img, r, c, 7 / spacing, 7 / spacing, 45.0)
                fill_ellipse(img, r, c, 5.5 / spacing, 5.5 / spacing, -1000.0)  # main bronchi
        # spine and sternum
        disc = (z % 30.0) < 5.0 and thickness < 5.0
        r, c = px(0.0, sy)
        fill_ellipse(img, r, c, 16 / spacing, 19 / spacing, 650.0)
        fill_ellipse(img, r, c, 13.5 / spacing, 16.5 / spacing, 90.0 if disc else 230.0)
        fill_ellipse(img, *px(0.0, sy + 38.0), 8 / spacing, 26 / spacing, 600.0)  # laminae
        fill_ellipse(img, *px(0.0, sy + 55.0), 14 / spacing, 5 / spacing, 550.0)  # spinous process
        fill_ellipse(img, *px(0.0, sy + 25.0), 8 / spacing, 8 / spacing, 20.0)  # canal
        if -70 < z < 95:
            fill_ellipse(img, *px(0.0, -b_in + 4.0), 6 / spacing, 16 / spacing, 380.0)
        _stamp_cloud(img, anat.ribs.points, anat.ribs.radius, z, half, spacing, (700.0, 220.0))
        _stamp_cloud(img, anat.clavicles.points, anat.clavicles.radius, z, half, spacing, (750.0, 260.0))
        for p in anat.aortic_calcium:
            if abs(p[2] - z) < half:
                r, c = px(float(p[0]), float(p[1]))
                fill_ellipse(img, r, c, 1.6 / spacing, 1.6 / spacing, 700.0)
        # lung parenchyma: gravity gradient, then the vessels (partial volume in the slab)
        lung = img == lung_marker
        sel = np.abs(vx[:, 2] - z) < half
        vessel_img.fill(-2000.0)
        if sel.any():
            rows = h / 2 + vx[sel, 1] / spacing
            cols = w / 2 + vx[sel, 0] / spacing
            rad_mm = vr[sel]
            order = np.argsort(rad_mm)
            rows, cols, rad_mm = rows[order], cols[order], rad_mm[order]
            for rad in np.unique(np.rint(rad_mm / spacing).astype(int)):
                k = np.rint(rad_mm / spacing).astype(int) == rad
                frac = min(1.0, 2.2 * float(rad * spacing) / thickness + 0.25)
                stamp_disks(vessel_img, rows[k], cols[k], max(int(rad), 1), -860.0 + 900.0 * frac)
        np.copyto(img, np.maximum(grad, vessel_img), where=lung)
    return vol


def _chord_into(acc: F32, e: Ellipsoid, axis: str, grid: tuple[float, float, float], weight: float) -> None:
    """Add ``weight * chord`` of an ellipsoid projected along ``axis`` ("y" for PA/AP, "x" for lateral)."""
    u0, z0, p = grid  # image column 0 at u0 mm, row 0 at z0 mm (rows go down in z), pixel p mm
    h, w = acc.shape
    cu, depth, au = (e.cx, e.ay, e.ax) if axis == "y" else (e.cy, e.ax, e.ay)
    res = ellipsoid_chord((h, w), (z0 - e.cz) / p, (cu - u0) / p, e.az / p, au / p, depth)
    if res is not None:
        sy, sx, chord = res
        acc[sy, sx] += np.float32(weight) * chord


def dx_line_integrals(
    anat: ChestAnatomy, view: str, fov_mm: float, shape: tuple[int, int] = (512, 512)
) -> tuple[F32, F32]:
    """Line integrals of attenuation for a PA/AP/LL radiograph, and the lung chord (mm) per pixel."""
    h, w = shape
    p = fov_mm / w
    z_top = 165.0
    lateral = view == "LL"
    u0 = -fov_mm / 2
    grid = (u0, z_top, p)
    u = (u0 + (np.arange(w, dtype=np.float32) + 0.5) * p)[None, :]
    z = (z_top - (np.arange(h, dtype=np.float32) + 0.5) * p)[:, None]
    a, b, fat = anat.half_width, anat.half_depth, anat.fat
    if lateral:
        a, b = b, a  # across the image runs y, the beam runs along x
    neck = z > anat.neck_z
    cap = np.sqrt(np.clip(1.0 - ((z - anat.neck_z) / 45.0) ** 2, 0.0, 1.0))  # rounded shoulders
    a_eff = np.where(neck, 55.0 + (a - 55.0) * cap, a)
    b_eff = np.where(neck, 60.0 + (b - 60.0) * cap, b)
    outer = 2 * b_eff * np.sqrt(np.clip(1 - (u / a_eff) ** 2, 0, 1))
    inner = 2 * (b_eff - fat) * np.sqrt(np.clip(1 - (u / (a_eff - fat)) ** 2, 0, 1))
    L = (MU["fat"] * outer + (MU["tissue"] - MU["fat"]) * inner).astype(np.float32)
    axis = "x" if lateral else "y"

    heart = anat.heart
    if view == "AP":  # divergent beam from 1 m: the anterior heart is magnified more
        heart = Ellipsoid(heart.cx, heart.cy, heart.cz, heart.ax * 1.12, heart.ay, heart.az * 1.08)
    lung_chord = np.zeros((h, w), np.float32)
    cavity_only = np.zeros((h, w), np.float32)
    for side in ("right", "left"):
        part = np.zeros((h, w), np.float32)
        _chord_into(part, anat.collapsed[side], axis, grid, 1.0)
        _chord_into(part, anat.domes[side], axis, grid, -1.0)
        _chord_into(part, heart, axis, grid, -0.9 if not lateral else -0.5)
        if side == "left":
            _chord_into(part, anat.aortic_knob, axis, grid, -1.0)
        lung_chord += np.maximum(part, 0.0)
        if anat.collapsed[side] is not anat.lungs[side]:
            cav = np.zeros((h, w), np.float32)
            _chord_into(cav, anat.lungs[side], axis, grid, 1.0)
            _chord_into(cav, anat.collapsed[side], axis, grid, -1.0)
            _chord_into(cav, anat.domes[side], axis, grid, -1.0)
            cavity_only += np.maximum(cav, 0.0)
            shell = anat.collapsed[side]
            grown = Ellipsoid(shell.cx, shell.cy, shell.cz, shell.ax + 1.0, shell.ay + 1.0, shell.az + 1.0)
            _chord_into(L, grown, axis, grid, 0.02)
            _chord_into(L, shell, axis, grid, -0.02)  # the visceral pleural line, seen tangentially
    L -= np.float32(MU["tissue"] - MU["lung"]) * lung_chord
    L -= np.float32(MU["tissue"]) * cavity_only
    _chord_into(L, anat.stomach, axis, grid, -MU["tissue"])
    for br in anat.breasts:
        _chord_into(L, br, axis, grid, MU["tissue"] * 0.9)

    # trachea (air column) and spine
    sy = anat.spine_y
    if lateral:
        tr_c, sp_c, sp_r, sp_depth = sy - 45.0, sy, 17.0, 38.0
    else:
        tr_c, sp_c, sp_r, sp_depth = 0.0, 0.0, 19.0, 34.0
    trachea = np.clip(1 - ((u - tr_c) / 9.0) ** 2, 0, 1)
    tr_len = ((z > 20.0) & (z < anat.neck_z + 40)).astype(np.float32)
    L -= np.float32(MU["tissue"]) * (18.0 * np.sqrt(trachea)) * tr_len
    spine = 2 * sp_depth * np.sqrt(np.clip(1 - ((u - sp_c) / sp_r) ** 2, 0, 1))
    disc = ((z % 30.0) < 5.0).astype(np.float32)
    L += np.float32(0.010) * spine * (1.0 - 0.6 * disc)
    if not lateral:  # pedicles: paired ovals on each vertebra
        for zc in np.arange(-285.0, 165.0, 30.0):
            for sgn in (-1, 1):
                _chord_into(L, Ellipsoid(sgn * 14.0, sy, zc + 16.0, 5.0, 10.0, 8.0), "y", grid, 0.02)
    else:  # sternum
        _chord_into(
            L, Ellipsoid(0.0, -anat.half_depth + anat.fat + 8.0, 10.0, 20.0, 7.0, 85.0), "x", grid, 0.01
        )

    # ribs and clavicles: disks along the projected curves, cortex brighter than the core
    for cloud, r_scale in ((anat.ribs, 1.0), (anat.clavicles, 1.0)):
        pts, rad = cloud.points, cloud.radius
        rows = (z_top - pts[:, 2]) / p
        cols = ((pts[:, 1] if lateral else pts[:, 0]) - u0) / p
        if lateral:
            back = pts[:, 1] > -10  # the lateral view mostly shows the posterior arcs
            rows, cols, rad = rows[back], cols[back], rad[back]
            pts = pts[back]
        for half_sel in (pts[:, 1] >= 0, pts[:, 1] < 0):
            buf = np.zeros((h, w), np.float32)
            rr = np.rint(rad[half_sel] * r_scale / p).astype(int)
            for rv in np.unique(rr):
                k = rr == rv
                stamp_disks(buf, rows[half_sel][k], cols[half_sel][k], int(rv), 0.30)
            for rv in np.unique(np.rint(rr * 0.6).astype(int)):
                k = np.rint(rr * 0.6).astype(int) == rv
                stamp_disks(buf, rows[half_sel][k], cols[half_sel][k], int(rv), 0.16)
            L += buf

    # lung markings: the vessel trees, splatted and widened per calibre class
    vx, vr = anat.vessels, anat.vessel_radius
    rows = (z_top - vx[:, 2]) / p
    cols = ((vx[:, 1] if lateral else vx[:, 0]) - u0) / p
    step = 3.0
    for lo, hi, sigma in ((0.0, 1.6, 0.8), (1.6, 3.0, 1.6), (3.0, 99.0, 2.6)):
        k = (vr >= lo) & (vr < hi)
        if not k.any():
            continue
        mass = (MU["tissue"] - MU["lung"]) * math.pi * vr[k] ** 2 * step / (p * p)
        img = splat((h, w), rows[k], cols[k], mass.astype(np.float32))
        L += ndimage.gaussian_filter(img, sigma / p * 0.84, truncate=3.0)
    return L.astype(np.float32), lung_chord
