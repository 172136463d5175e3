"""The rendered images as value objects: ``RenderedSeries`` and ``RenderedStudy``.

Pixels are held in physical units, not as stored DICOM values (see
`fusion.cohort.images.dicomwrite` for the storage): Hounsfield units for CT;
for DX the log-transformed detector signal, higher meaning more attenuation
(bone bright); for MR an arbitrary signal >= 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.cohort.scenario import StudyPlan

__all__ = ["RenderedSeries", "RenderedStudy"]


@dataclass(frozen=True)
class RenderedSeries:
    """One series: its frames (n_frames, rows, cols) float32 and their geometry."""

    series_instance_uid: str
    modality: str  # "DX" | "CT" | "MR"
    view: str | None  # DX: "PA" | "AP" | "LL"; None for CT/MR
    frames: np.ndarray
    pixel_spacing: tuple[float, float]  # mm (row, col)
    slice_thickness: float | None
    slice_positions: tuple[float, ...]  # z in mm per frame (CT/MR); () for DX

    def __post_init__(self) -> None:
        if self.frames.ndim != 3:
            raise ValueError(f"frames must be (n_frames, rows, cols), got shape {self.frames.shape}")
        if self.frames.dtype != np.float32:
            raise ValueError(f"frames must be float32, got {self.frames.dtype}")
        if self.modality not in {"DX", "CT", "MR"}:
            raise ValueError(f"modality must be DX, CT or MR, got {self.modality!r}")
        if self.slice_positions and len(self.slice_positions) != self.frames.shape[0]:
            raise ValueError(f"{len(self.slice_positions)} slice positions for {self.frames.shape[0]} frames")


@dataclass(frozen=True)
class RenderedStudy:
    """A study's plan and its rendered series (DX: one series per view)."""

    plan: StudyPlan
    series: tuple[RenderedSeries, ...]
