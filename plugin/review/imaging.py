"""The review page's images: DICOM frames rendered as PNG at a window, and the heatmap overlay.

Frames come from the study the service keeps (``data_dir/images/<StudyInstanceUID>/``), decoded
with the connectors (physical units: Hounsfield units for CT, MONOCHROME1 inverted) and mapped
to 8-bit grey through a window (centre, width), as a DICOM viewer's VOI LUT does. CT has the
usual presets; MR and radiographs a window from the frame's 1st to 99th percentiles ("auto").
A frame's position is its index in the series' stack (instances in order, each frame of a
multi-frame instance in turn).

The overlay is the model's tamper heatmap (`fusion.explain.heatmap_placement`) drawn as a
transparent PNG the size of the frame it lies on: colour and opacity grow with p(tampered),
nothing outside the window the model examined.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from connectors.dicom import read_dicom
from connectors.domain import Instance, Series, Study
from connectors.strictness import Strictness

__all__ = [
    "WINDOW_PRESETS",
    "FrameRef",
    "StudyImages",
    "Window",
    "auto_window",
    "frame_pixels",
    "overlay_png",
    "render_png",
    "series_frames",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """A display window: ``center`` and ``width`` in the frame's units (HU for CT)."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.center) and np.isfinite(self.width) and self.width > 0):
            raise ValueError(f"a window needs a finite centre and a positive width, not {self}")


#: Window presets by modality: name -> (centre, width).
WINDOW_PRESETS: dict[str, dict[str, Window]] = {
    "CT": {
        "lung": Window(-600, 1500),
        "mediastinum": Window(40, 400),
        "bone": Window(480, 2500),
        "brain": Window(40, 80),
        "abdomen": Window(60, 360),
    },
    "MR": {},
}


@dataclass(frozen=True)
class FrameRef:
    """A frame of a series: the instance and its 0-based frame index within it."""

    instance: Instance
    frame: int


def series_frames(series: Series) -> list[FrameRef]:
    """The series' frames in stack order (the order `fusion.features` reads them in)."""
    return [
        FrameRef(inst, k)
        for inst in series.instances
        if inst.has_pixels
        for k in range(max(1, inst.number_of_frames))
    ]


def frame_pixels(ref: FrameRef) -> NDArray[np.float32]:
    """One frame, grey, in physical units."""
    arr = np.asarray(ref.instance.pixels(), dtype=np.float32)
    spp = ref.instance.samples_per_pixel
    if spp > 1 and arr.ndim >= 3 and arr.shape[-1] == spp:
        arr = arr.mean(axis=-1)
    if arr.ndim == 3:
        arr = arr[min(ref.frame, arr.shape[0] - 1)]
    return arr


def auto_window(pixels: NDArray[np.float32]) -> Window:
    """A window from the frame's 1st to 99th percentiles."""
    lo, hi = (float(v) for v in np.percentile(pixels, (1, 99)))
    return Window((lo + hi) / 2, max(hi - lo, 1.0))


def render_png(pixels: NDArray[np.float32], window: Window) -> bytes:
    """The frame as an 8-bit grey PNG through ``window`` (linear, as DICOM's VOI LUT function)."""
    low = window.center - window.width / 2
    scaled = np.clip((pixels - low) / window.width, 0.0, 1.0) * 255.0
    image = Image.fromarray(np.nan_to_num(scaled).round().astype(np.uint8), mode="L")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _heat_colour(p: NDArray[np.float64]) -> NDArray[np.uint8]:
    """Dark red through orange to yellow as p goes 0 -> 1 (an inferno-like ramp, no matplotlib)."""
    r = np.clip(0.35 + 1.3 * p, 0, 1)
    g = np.clip(1.6 * p - 0.4, 0, 1)
    b = np.clip(0.25 - 0.25 * p, 0, 1)
    rgb: NDArray[np.uint8] = (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)
    return rgb


def overlay_png(placement: dict[str, Any]) -> bytes:
    """The heatmap as a transparent RGBA PNG the size of its frame (see the module docstring)."""
    rows, columns = int(placement["rows"]), int(placement["columns"])
    top, left, size = int(placement["top"]), int(placement["left"]), int(placement["size"])
    prob = np.asarray(placement["probability"], dtype=np.float64)
    if prob.ndim != 2 or rows < 1 or columns < 1 or size < 1:
        raise ValueError("the heatmap data is not a grid over a frame")
    grid = Image.fromarray((prob * 255).round().astype(np.uint8), mode="L")
    up = np.asarray(grid.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    rgba = np.zeros((rows, columns, 4), np.uint8)
    bottom, right = min(rows, top + size), min(columns, left + size)
    part = up[: bottom - top, : right - left]
    rgba[top:bottom, left:right, :3] = _heat_colour(part)
    rgba[top:bottom, left:right, 3] = (40 + 170 * part).round().astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(out, format="PNG", compress_level=1)
    return out.getvalue()


class StudyImages:
    """The studies kept under ``images_dir`` (one folder per StudyInstanceUID), read on demand and
    the last ``capacity`` of them kept in memory; safe to share between threads."""

    def __init__(self, images_dir: Path, *, capacity: int = 8) -> None:
        self._dir = Path(images_dir)
        self._capacity = capacity
        self._studies: OrderedDict[str, Study | None] = OrderedDict()
        self._lock = threading.Lock()

    def study(self, study_instance_uid: str) -> Study | None:
        """The kept study, or None when its images are not kept here."""
        with self._lock:
            if study_instance_uid in self._studies:
                self._studies.move_to_end(study_instance_uid)
                return self._studies[study_instance_uid]
        folder = self._dir / study_instance_uid
        found: Study | None = None
        if folder.is_dir() and folder.parent == self._dir:
            try:
                studies = read_dicom(folder, strictness=Strictness.WARN)
            except Exception as exc:  # unreadable files: the page says the images are missing
                logger.warning("kept images unreadable (%s)", type(exc).__name__)
                studies = []
            found = next((s for s in studies if s.study_instance_uid == study_instance_uid), None)
        with self._lock:
            self._studies[study_instance_uid] = found
            while len(self._studies) > self._capacity:
                self._studies.popitem(last=False)
        return found

    @staticmethod
    def image_series(study: Study) -> list[Series]:
        """The series with pixels, the primary one first."""
        with_pixels = [s for s in study.series if series_frames(s)]
        if not with_pixels:
            return []
        primary = study.primary_series()
        return sorted(with_pixels, key=lambda s: (s is not primary, s.series_number or 0))
