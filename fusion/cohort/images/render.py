"""Rendering a study plan into pixels, and the manipulations that replace pixels wholesale.

``render_study`` builds the patient's phantom (the chest's anatomy is seeded
by the patient id, so one patient's studies show the same body and vessel
trees), paints the plan's findings into the ideal image, and runs the
acquisition physics with the study's protocol. ``transplant`` (wrong patient)
and ``synthesize`` (a generative model's output) produce studies whose pixels
did not come from the plan's own patient or phantom.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from fusion.cohort.images.acquisition import ct_acquire, dx_acquire, mr_acquire
from fusion.cohort.images.anatomy import build_chest
from fusion.cohort.images.blend import apply_patches, ct_lung_mask
from fusion.cohort.images.brain import T2, brain_volume
from fusion.cohort.images.chest import ct_volume, dx_line_integrals
from fusion.cohort.images.lesions import DX_GAIN, FrameGeometry, finding_patches
from fusion.cohort.images.protocol import protocol_for
from fusion.cohort.images.series import RenderedSeries, RenderedStudy
from fusion.cohort.scenario import PatientScenario, StudyKind, StudyPlan

__all__ = ["render_study", "synthesize", "transplant"]

logger = logging.getLogger(__name__)

Generator = Callable[[np.ndarray, str, np.random.Generator], np.ndarray]

_SIZE = 512


def _series_uids(plan: StudyPlan, needed: int) -> tuple[str, ...]:
    if len(plan.series_instance_uids) < needed:
        raise ValueError(
            f"study {plan.study_instance_uid} needs {needed} series UIDs (one per DX view, one for CT/MR), "
            f"its plan has {len(plan.series_instance_uids)}"
        )
    return plan.series_instance_uids[:needed]


def _render_chest_ct(scenario: PatientScenario, plan: StudyPlan, rng: np.random.Generator) -> RenderedStudy:
    age = scenario.age_at(plan.study_datetime.date())
    anat = build_chest(
        scenario, plan.image_findings, age, np.random.default_rng(zlib.crc32(scenario.patient_id.encode()))
    )
    proto = protocol_for(plan, anat.half_width)
    n = plan.slices if plan.slices > 0 else 24
    spacing = proto.fov_mm / _SIZE
    t = proto.slice_thickness
    z_phantom = -20.0 + (np.arange(n) - (n - 1) / 2.0) * t
    table = -float(np.round(rng.uniform(150.0, 400.0), 1))
    positions = tuple(float(round(z + table, 2)) for z in z_phantom)
    ideal = ct_volume(anat, z_phantom, t, spacing)
    geom = FrameGeometry("CT", None, ideal.shape, (spacing, spacing), positions, t)
    patches = [p for f in plan.image_findings for p in finding_patches(geom, f, rng, structural=False)]
    if patches:
        ideal = apply_patches(ideal, "CT", patches, masks=ct_lung_mask(ideal))
    frames = ct_acquire(ideal, rng, noise_hu=proto.noise, kernel_sigma=proto.kernel_sigma_px)
    (uid,) = _series_uids(plan, 1)
    return RenderedStudy(plan, (RenderedSeries(uid, "CT", None, frames, (spacing, spacing), t, positions),))


def _render_chest_dx(scenario: PatientScenario, plan: StudyPlan, rng: np.random.Generator) -> RenderedStudy:
    age = scenario.age_at(plan.study_datetime.date())
    anat = build_chest(
        scenario, plan.image_findings, age, np.random.default_rng(zlib.crc32(scenario.patient_id.encode()))
    )
    proto = protocol_for(plan, anat.half_width)
    views = plan.views or ("PA",)
    uids = _series_uids(plan, len(views))
    spacing = proto.fov_mm / _SIZE
    out = []
    for view, uid in zip(views, uids, strict=True):
        L, lung = dx_line_integrals(anat, view, proto.fov_mm, (_SIZE, _SIZE))
        geom = FrameGeometry("DX", view, (1, _SIZE, _SIZE), (spacing, spacing), (), None)
        patches = [p for f in plan.image_findings for p in finding_patches(geom, f, rng, structural=False)]
        ideal = L[None]
        if patches:
            ideal = apply_patches(ideal, "DX", patches, lung_chord=lung[None])
        photons = proto.photons * (1.6 if view == "LL" else 1.0)
        frames = dx_acquire(ideal, rng, n0=photons, psf_sigma=proto.psf_sigma_px, gain=DX_GAIN)
        out.append(RenderedSeries(uid, "DX", view, frames, (spacing, spacing), None, ()))
    return RenderedStudy(plan, tuple(out))


def _render_brain_mr(scenario: PatientScenario, plan: StudyPlan, rng: np.random.Generator) -> RenderedStudy:
    age = scenario.age_at(plan.study_datetime.date())
    proto = protocol_for(plan)
    n = plan.slices if plan.slices > 0 else 20
    spacing = proto.fov_mm / _SIZE
    z_phantom = -40.0 + np.arange(n) * proto.slice_spacing
    anat_rng = np.random.default_rng(zlib.crc32(scenario.patient_id.encode()))
    ideal = brain_volume(z_phantom, spacing, age, scenario.gender == "female", anat_rng)
    offset = float(np.round(rng.uniform(-20.0, 20.0), 1))
    positions = tuple(float(round(z + offset, 2)) for z in z_phantom)
    geom = FrameGeometry("MR", None, ideal.shape, (spacing, spacing), positions, proto.slice_thickness)
    patches = [p for f in plan.image_findings for p in finding_patches(geom, f, rng, structural=False)]
    if patches:
        tissue = (ideal >= T2["wm"] - 1) & (ideal <= T2["gm"] + 1)
        ideal = apply_patches(ideal, "MR", patches, masks=tissue)
    frames = mr_acquire(
        ideal, rng, noise_sigma=proto.noise, bias_strength=proto.bias_strength, psf_sigma=proto.psf_sigma_px
    )
    (uid,) = _series_uids(plan, 1)
    series = RenderedSeries(uid, "MR", None, frames, (spacing, spacing), proto.slice_thickness, positions)
    return RenderedStudy(plan, (series,))


def render_study(scenario: PatientScenario, plan: StudyPlan, seed: int) -> RenderedStudy:
    """Render the plan's images for this patient: same (scenario, plan, seed), same pixels."""
    rng = np.random.default_rng(seed)
    kind = StudyKind(plan.kind)
    if kind is StudyKind.CHEST_CT:
        return _render_chest_ct(scenario, plan, rng)
    if kind is StudyKind.CHEST_DX:
        return _render_chest_dx(scenario, plan, rng)
    return _render_brain_mr(scenario, plan, rng)


def transplant(target_plan: StudyPlan, donor: RenderedStudy) -> RenderedStudy:
    """Wrong patient: the donor's pixels under the target plan's series UIDs (in order)."""
    uids = _series_uids(target_plan, len(donor.series))
    series = tuple(replace(s, series_instance_uid=u) for s, u in zip(donor.series, uids, strict=True))
    return RenderedStudy(target_plan, series)


def synthesize(study: RenderedStudy, seed: int, generator: Generator | None = None) -> RenderedStudy:
    """Replace every frame by a generative model's output ``generator(frame, kind, rng)``.

    Without ``generator``, ``fusion.generators.load_generator(kind).generate`` is
    used; a RuntimeError says so when that package or its weights are missing.
    """
    kind = StudyKind(study.plan.kind)
    torch_threads = None
    if generator is None:
        try:
            from fusion.generators import load_generator

            model = load_generator(kind)
        except Exception as exc:  # ImportError, missing weights, ...
            raise RuntimeError(
                f"no generative model available for {kind.value}: fusion.generators.load_generator failed "
                f"({type(exc).__name__}: {exc}); train or install the generator weights, or pass generator="
            ) from exc

        def generator(frame: np.ndarray, _kind: str, rng: np.random.Generator) -> np.ndarray:
            return np.asarray(model.generate(frame, rng))

        # One intra-op thread: the cohort already runs a process per core (more threads
        # oversubscribe the CPU, several times slower), and the same thread count
        # whatever the number of workers keeps the pixels the same.
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)

    rng = np.random.default_rng(seed)
    out = []
    try:
        for s in study.series:
            frames = np.empty_like(s.frames)
            for i, f in enumerate(s.frames):
                g = np.asarray(generator(f, kind.value, rng), dtype=np.float32)
                if g.shape != f.shape:
                    raise ValueError(f"generator returned shape {g.shape} for a frame of shape {f.shape}")
                frames[i] = g
            out.append(replace(s, frames=frames))
    finally:
        if torch_threads is not None and torch_threads != 1:
            import torch

            torch.set_num_threads(torch_threads)
    return RenderedStudy(study.plan, tuple(out))
