"""The chest phantom's 3-D anatomy, built once per study from the patient.

Phantom coordinates are millimetres in the patient's frame (DICOM LPS, centred
on the thorax): ``x`` towards the patient's left (so the patient's right is
negative, on the image's left), ``y`` towards the back (anterior negative),
``z`` towards the head (0 near the carina). Organs are ellipsoids; ribs,
clavicles and lung vessels are point clouds sampled along 3-D curves, which
both the CT slicer (disks where a curve crosses a slab) and the radiograph
projector (splats of the projected points) read.

What the patient changes: body width and subcutaneous fat (BMI, sex), breasts
(female), heart size (cardiothoracic ratio, higher with heart failure), aortic
calibre and calcification (age), emphysematous holes (smoker), and from the
study's findings the collapse of a lung (pneumothorax) and a broken rib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fusion.cohort.scenario import ClinicalCondition, ImageFinding, PatientScenario

__all__ = ["BoneCloud", "ChestAnatomy", "Ellipsoid", "build_chest", "cardiothoracic_ratio"]

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid: centre and semi-axes in mm."""

    cx: float
    cy: float
    cz: float
    ax: float
    ay: float
    az: float

    def section(self, z: float) -> tuple[float, float, float, float] | None:
        """The axial cross-section at ``z``: (cx, cy, rx, ry), or None if the plane misses it."""
        q = 1.0 - ((z - self.cz) / self.az) ** 2
        if q <= 0.0:
            return None
        s = math.sqrt(q)
        return self.cx, self.cy, self.ax * s, self.ay * s

    def scaled_towards(self, px: float, py: float, pz: float, f: float) -> Ellipsoid:
        """The ellipsoid shrunk by ``f`` towards the point (px, py, pz)."""
        return Ellipsoid(
            px + (self.cx - px) * f,
            py + (self.cy - py) * f,
            pz + (self.cz - pz) * f,
            self.ax * f,
            self.ay * f,
            self.az * f,
        )


@dataclass(frozen=True)
class BoneCloud:
    """Points along bone curves (ribs, clavicles) with their outer radius in mm."""

    points: F32  # (n, 3) x, y, z
    radius: F32  # (n,)


@dataclass(frozen=True)
class ChestAnatomy:
    """Everything the CT slicer and the radiograph projector need for one patient."""

    half_width: float  # body, lateral semi-axis (mm)
    half_depth: float  # body, antero-posterior semi-axis (mm)
    fat: float  # subcutaneous fat thickness (mm)
    female: bool
    ctr: float  # cardiothoracic ratio
    lungs: dict[str, Ellipsoid]  # "right" / "left": the pleural cavity
    collapsed: dict[str, Ellipsoid]  # the aerated lung (same as lungs unless pneumothorax)
    domes: dict[str, Ellipsoid]  # diaphragm domes (liver on the right, spleen on the left)
    heart: Ellipsoid
    aortic_knob: Ellipsoid
    stomach: Ellipsoid
    breasts: tuple[Ellipsoid, ...]
    aorta_radius: float
    spine_y: float  # centre of the vertebral bodies (mm, posterior)
    vessels: F32  # (n, 3) points of the pulmonary vessel trees
    vessel_radius: F32  # (n,)
    vessel_side: NDArray[np.int8]  # -1 right, +1 left
    ribs: BoneCloud
    clavicles: BoneCloud
    emphysema: F32  # (k, 3) centres of emphysematous holes
    aortic_calcium: F32  # (k, 3) calcified plaques on the aortic wall
    neck_z: float = 125.0


def cardiothoracic_ratio(findings: tuple[ImageFinding, ...], rng: np.random.Generator) -> float:
    """A normal CTR about 0.45; heart failure raises it with severity (up to ~0.65)."""
    base = float(np.clip(rng.normal(0.45, 0.02), 0.40, 0.49))
    for f in findings:
        if f.condition is ClinicalCondition.HEART_FAILURE:
            base = max(base, 0.50 + 0.16 * float(np.clip(f.severity, 0.0, 1.0)))
    return base


def _vessel_tree(
    rng: np.random.Generator, hilum: tuple[float, float, float], lung: Ellipsoid, congested: bool
) -> tuple[F32, F32]:
    """Sample points along a random branching tree from the hilum into the lung."""
    pts: list[F32] = []
    rad: list[F32] = []
    step = 3.0
    stack: list[tuple[np.ndarray, np.ndarray, float, int]] = []
    for _ in range(8):  # lobar / segmental roots
        target = np.array(
            [
                lung.cx + rng.uniform(-0.8, 0.8) * lung.ax,
                lung.cy + rng.uniform(-0.8, 0.8) * lung.ay,
                lung.cz + rng.uniform(-0.85, 0.85) * lung.az,
            ]
        )
        start = np.asarray(hilum, dtype=float)
        d = target - start
        stack.append((start, d / (np.linalg.norm(d) + 1e-6), 4.5 if congested else 3.8, 0))
    centre = np.array([lung.cx, lung.cy, lung.cz])
    axes = np.array([lung.ax, lung.ay, lung.az])
    while stack:
        start, direction, r, depth = stack.pop()
        length = rng.uniform(35.0, 60.0) * (0.8**depth)
        n = max(int(length / step), 2)
        t = np.linspace(0.0, length, n)[:, None]
        seg = start[None, :] + t * direction[None, :]
        inside = (((seg - centre) / axes) ** 2).sum(axis=1) < 0.92
        seg = seg[inside]
        if len(seg) == 0:
            continue
        pts.append(seg.astype(np.float32))
        rad.append(np.full(len(seg), r, np.float32))
        if depth < 4:
            end = seg[-1]
            for _ in range(2):
                nd = direction + rng.normal(0.0, 0.45, 3)
                nd /= np.linalg.norm(nd) + 1e-6
                stack.append((end, nd, max(r * 0.72, 0.6), depth + 1))
    return np.concatenate(pts), np.concatenate(rad)


def _ribs(rng: np.random.Generator, a: float, b: float, fracture: ImageFinding | None) -> BoneCloud:
    """Twelve rib pairs along the inner chest wall, descending anteriorly; maybe one broken."""
    pts: list[F32] = []
    rad: list[F32] = []
    broken: tuple[int, int, float] | None = None  # (side sign, rib index, angle)
    if fracture is not None:
        sign = -1 if fracture.side == "right" else 1
        rib = int(np.clip(round(2 + fracture.center[1] * 8), 2, 10))
        broken = (sign, rib, 0.35 * math.pi + 0.25 * math.pi * float(rng.uniform()))
    for k in range(1, 13):
        z0 = 100.0 - 21.0 * k
        theta_end = math.pi * (0.80 - 0.025 * k) if k <= 10 else math.pi * 0.45
        n = int(theta_end * 0.5 * (a + b) / 2.0)
        theta = np.linspace(0.03, theta_end, n)
        shrink = 0.72 + 0.28 * math.sin(math.pi * min(k, 11) / 12.0)  # the upper ribs are short
        for sign in (-1, 1):
            x = sign * (a - 6.0) * shrink * np.sin(theta)
            y = (b - 4.0) * np.cos(theta)
            z = z0 + 8.0 * np.sin(theta * 1.6) - 75.0 * (theta / math.pi) ** 1.7
            if broken is not None and broken[0] == sign and broken[1] == k:
                off = theta - broken[2]
                keep = np.abs(off) > 0.035
                z = np.where(off > 0, z - 3.5, z)  # the step
                x, y, z = x[keep], y[keep], z[keep]
            pts.append(np.stack([x, y, z], axis=1).astype(np.float32))
            rad.append(np.full(len(x), 4.5 if k > 1 else 5.5, np.float32))
    return BoneCloud(np.concatenate(pts), np.concatenate(rad))


def _clavicles(a: float, b: float) -> BoneCloud:
    t = np.linspace(0.0, 1.0, 60)
    pts = []
    for sign in (-1, 1):
        x = sign * (18.0 + t * (a * 0.95 - 18.0))
        y = -b * 0.85 + t * b * 0.7 + 8.0 * np.sin(t * math.pi)
        z = 100.0 + 18.0 * t + 6.0 * np.sin(t * 2 * math.pi)
        pts.append(np.stack([x, y, z], axis=1))
    p = np.concatenate(pts).astype(np.float32)
    return BoneCloud(p, np.full(len(p), 6.0, np.float32))


def build_chest(
    scenario: PatientScenario, findings: tuple[ImageFinding, ...], age: float, rng: np.random.Generator
) -> ChestAnatomy:
    """The patient's chest: sizes from sex/BMI/age, structures changed by the findings."""
    female = scenario.gender == "female"
    bmi = float(np.clip(scenario.bmi, 15.0, 50.0))
    scale = (bmi / 24.0) ** 0.35
    half_width = (150.0 if not female else 138.0) * scale * float(rng.uniform(0.96, 1.04))
    half_depth = (105.0 if not female else 98.0) * scale * float(rng.uniform(0.95, 1.05))
    fat = float(np.clip(6.0 + (bmi - 20.0) * 1.6, 4.0, 45.0))
    a_in, b_in = half_width - fat - 12.0, half_depth - fat - 10.0
    spine_y = b_in * 0.62
    ctr = cardiothoracic_ratio(findings, rng)

    lungs = {
        side: Ellipsoid(sign * a_in * 0.48, 5.0, -15.0, a_in * 0.46, b_in * 0.80, 125.0)
        for side, sign in (("right", -1), ("left", 1))
    }
    domes = {
        "right": Ellipsoid(-a_in * 0.42, 8.0, -105.0 - 70.0, a_in * 0.52, b_in * 0.95, 70.0),
        "left": Ellipsoid(a_in * 0.42, 8.0, -118.0 - 70.0, a_in * 0.50, b_in * 0.95, 70.0),
    }
    hila = {side: (sign * a_in * 0.28, 5.0, 0.0) for side, sign in (("right", -1), ("left", 1))}
    collapsed = dict(lungs)
    congested = False
    fracture = None
    for f in findings:
        if f.condition is ClinicalCondition.PNEUMOTHORAX and f.side in lungs:
            frac = 1.0 - 0.6 * float(np.clip(f.severity, 0.05, 1.0))
            collapsed[f.side] = lungs[f.side].scaled_towards(*hila[f.side], frac)
        elif f.condition is ClinicalCondition.HEART_FAILURE:
            congested = f.severity > 0.3
        elif f.condition is ClinicalCondition.RIB_FRACTURE:
            fracture = f

    heart_half = ctr * a_in
    heart = Ellipsoid(a_in * 0.12, -b_in * 0.18, -72.0, heart_half * 0.92, b_in * 0.52, 62.0)
    aortic_knob = Ellipsoid(a_in * 0.16, 5.0, 42.0, 18.0, 22.0, 16.0)
    stomach = Ellipsoid(a_in * 0.45, -5.0, -150.0, 32.0, 30.0, 20.0)
    breasts = (
        tuple(
            Ellipsoid(sign * a_in * 0.45, -half_depth + 8.0, -70.0, 55.0 * scale, 26.0 * scale, 50.0)
            for sign in (-1, 1)
        )
        if female
        else ()
    )

    v_pts, v_rad, v_side = [], [], []
    for side, sign in (("right", -1), ("left", 1)):
        p, r = _vessel_tree(rng, hila[side], lungs[side], congested)
        col = collapsed[side]
        if col is not lungs[side]:
            shrink = col.ax / lungs[side].ax
            h = np.asarray(hila[side], np.float32)
            p = (h + (p - h) * shrink).astype(np.float32)
            r = r * np.float32(max(shrink, 0.6))
        v_pts.append(p)
        v_rad.append(r)
        v_side.append(np.full(len(p), sign, np.int8))

    emph = np.zeros((0, 3), np.float32)
    if scenario.smoker and age > 40:
        k = int(rng.integers(6, 25))
        emph_side = rng.choice([-1.0, 1.0], size=k)
        emph = np.stack(
            [
                emph_side * a_in * 0.48 + rng.uniform(-0.6, 0.6, k) * a_in * 0.4,
                rng.uniform(-0.6, 0.6, k) * b_in * 0.7,
                rng.uniform(10.0, 90.0, k),
            ],
            axis=1,
        ).astype(np.float32)
    aorta_radius = float(np.clip(11.0 + 0.07 * age, 11.0, 19.0))
    calc = np.zeros((0, 3), np.float32)
    if age > 60:
        k = int(rng.integers(1, 2 + int((age - 60) / 6)))
        ang = rng.uniform(0, 2 * math.pi, k)
        calc = np.stack(
            [
                a_in * 0.14 + aorta_radius * np.cos(ang),
                spine_y - 18.0 + aorta_radius * np.sin(ang),
                rng.uniform(-120.0, 30.0, k),
            ],
            axis=1,
        ).astype(np.float32)

    return ChestAnatomy(
        half_width=half_width,
        half_depth=half_depth,
        fat=fat,
        female=female,
        ctr=ctr,
        lungs=lungs,
        collapsed=collapsed,
        domes=domes,
        heart=heart,
        aortic_knob=aortic_knob,
        stomach=stomach,
        breasts=breasts,
        aorta_radius=aorta_radius,
        spine_y=spine_y,
        vessels=np.concatenate(v_pts),
        vessel_radius=np.concatenate(v_rad),
        vessel_side=np.concatenate(v_side),
        ribs=_ribs(rng, a_in + 6.0, b_in + 6.0, fracture),
        clavicles=_clavicles(half_width, b_in),
        emphysema=emph,
        aortic_calcium=calc,
    )
