"""Acquisition protocols: the technique a device used for a study, drawn once per study.

Drawn from the StudyInstanceUID, so the renderer (noise, blur, geometry) and the
DICOM writer (KVP, XRayTubeCurrent, ConvolutionKernel, EchoTime ...) agree
without passing anything between them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fusion.cohort.scenario import StudyKind, StudyPlan

__all__ = ["Protocol", "protocol_for"]


@dataclass(frozen=True)
class Protocol:
    """What the device did: tube and detector settings (DX/CT) or sequence (MR)."""

    kvp: float = 0.0
    tube_current_ma: float = 0.0
    exposure_time_ms: float = 0.0
    psf_sigma_px: float = 0.8
    noise: float = 0.0  # CT: HU after the kernel; MR: noise sigma; DX: unused (quantum noise)
    photons: float = 0.0  # DX: quanta per pixel behind no patient
    kernel: str = ""
    kernel_sigma_px: float = 0.0
    fov_mm: float = 0.0
    slice_thickness: float = 0.0
    slice_spacing: float = 0.0
    sid_mm: float = 0.0
    field_strength: float = 0.0
    echo_time: float = 0.0
    repetition_time: float = 0.0
    bias_strength: float = 0.0


def protocol_for(plan: StudyPlan, body_half_width: float = 150.0) -> Protocol:
    """The protocol of ``plan`` (deterministic in its StudyInstanceUID and device)."""
    rng = np.random.default_rng(zlib.crc32(f"{plan.study_instance_uid}|{plan.device.serial_number}".encode()))
    if plan.kind is StudyKind.CHEST_CT:
        kvp = float(rng.choice([100.0, 120.0, 120.0, 140.0]))
        ma = float(rng.uniform(80.0, 300.0))
        noise = float(np.clip(14.0 * (200.0 / ma) ** 0.5 * (120.0 / kvp) ** 1.2, 9.0, 26.0))
        sharp = bool(rng.uniform() < 0.35)
        slices = max(plan.slices, 1)
        thickness = float(
            min((t for t in (1.25, 2.5, 5.0, 8.0, 10.0) if t >= min(300.0 / slices, 10.0)), default=10.0)
        )
        fov = float(np.clip(round((2 * body_half_width + 50.0) / 10.0) * 10.0, 320.0, 500.0))
        return Protocol(
            kvp=kvp,
            tube_current_ma=round(ma),
            exposure_time_ms=float(rng.choice([500.0, 750.0, 1000.0])),
            noise=noise * (1.3 if sharp else 1.0),
            kernel="B70f" if sharp else "B31f",
            kernel_sigma_px=0.5 if sharp else 0.7,
            fov_mm=fov,
            slice_thickness=thickness,
            slice_spacing=thickness,
        )
    if plan.kind is StudyKind.BRAIN_MR:
        tesla = float(rng.choice([1.5, 3.0]))
        thickness = float(rng.choice([4.0, 5.0, 5.0, 6.0]))
        slices = max(plan.slices, 2)
        spacing = float(min(thickness + rng.choice([0.5, 1.0, 1.5]), 115.0 / (slices - 1)))
        return Protocol(
            field_strength=tesla,
            echo_time=float(rng.uniform(85.0, 110.0)),
            repetition_time=float(rng.uniform(3500.0, 6000.0)),
            noise=float(rng.uniform(12.0, 22.0)),
            bias_strength=float(rng.uniform(0.04, 0.12)) * (1.5 if tesla > 2 else 1.0),
            psf_sigma_px=float(rng.uniform(0.5, 0.8)),
            fov_mm=float(rng.choice([220.0, 230.0, 240.0])),
            slice_thickness=thickness,
            slice_spacing=spacing,
        )
    portable = "AP" in plan.views
    return Protocol(
        kvp=float(rng.choice([85.0, 90.0]) if portable else rng.choice([110.0, 120.0, 125.0])),
        tube_current_ma=float(rng.choice([200.0, 250.0, 320.0])),
        exposure_time_ms=float(rng.uniform(6.0, 12.0) if portable else rng.uniform(3.0, 8.0)),
        psf_sigma_px=float(rng.uniform(0.7, 1.1)),
        photons=float(rng.uniform(2.0e4, 3.0e4) if portable else rng.uniform(3.5e4, 5.0e4)),
        fov_mm=430.0,
        sid_mm=1000.0 if portable else 1800.0,
    )
