"""Generator families: the ways the simulator makes its synthetic and tampered images.

Each pixel manipulation is made by one family, recorded in the manifest, so a
detector can be trained without a family and tested on it (leave-one-family-out):

- synthetic: ``vae``, ``gan``, ``diffusion`` (learnt generators, `fusion.generators`);
- finding-injected: ``blend`` (the lesion blended in, CT-GAN-like), ``diffusion``
  (blended, then the region made anew by the diffusion model, so it is not a paste);
- finding-removed: ``membrane`` (smooth fill from the surroundings), ``copy-move``
  (a window copied from elsewhere in the frame), ``diffusion`` (inpainted by the
  diffusion model).

*Nuisances* (``reencode``: lossy JPEG 2000; ``resize``: down and up again;
``downsample``: a smaller matrix kept, as an export or a low-resolution
reconstruction gives) are applied to clean and manipulated studies alike, so
that "was re-compressed" or "is small" is not what a detector learns.

A learnt family is available for a study kind when its weights ship in
``fusion/generators/weights/<family>-<kind>.safetensors``; `available` looks for
the file without importing torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fusion.cohort.images.series import RenderedStudy
from fusion.cohort.scenario import Manipulation, StudyKind

__all__ = [
    "FAMILIES",
    "LEARNT_FAMILIES",
    "NUISANCES",
    "FrameFill",
    "FrameGenerator",
    "apply_nuisance",
    "available",
    "families_for",
    "regenerate_injection",
    "removal_fill",
    "synthetic_generator",
]

FrameGenerator = Callable[[np.ndarray, str, np.random.Generator], np.ndarray]
FrameFill = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]

FAMILIES: dict[Manipulation, tuple[str, ...]] = {
    Manipulation.SYNTHETIC: ("vae", "gan", "diffusion"),
    Manipulation.FINDING_INJECTED: ("blend", "diffusion"),
    Manipulation.FINDING_REMOVED: ("membrane", "copy-move", "diffusion"),
}
LEARNT_FAMILIES = frozenset({"vae", "gan", "diffusion"})
NUISANCES = ("reencode", "resize", "downsample")


def families_for(manipulation: Manipulation) -> tuple[str, ...]:
    """The families that can make ``manipulation`` (empty for non-pixel manipulations)."""
    return FAMILIES.get(manipulation, ())


def available(family: str, kind: StudyKind) -> bool:
    """Whether ``family`` can run for ``kind`` here: classical ones always, learnt ones with weights."""
    if family not in LEARNT_FAMILIES:
        return True
    spec = importlib.util.find_spec("fusion.generators")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        (Path(location) / "weights" / f"{family}-{kind.value}.safetensors").is_file()
        for location in spec.submodule_search_locations
    )


class _OneThread:
    """Run a model on one torch thread: the cohort already runs a process per core, and one thread
    whatever the number of workers keeps the pixels the same."""

    def __enter__(self) -> None:
        import torch

        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.saved)


def _learnt(family: str, kind: StudyKind) -> Any:
    if family == "vae":
        from fusion.generators import load_generator

        return load_generator(kind)
    if family == "gan":
        from fusion.generators.train_gan import load_gan

        return load_gan(kind)
    if family == "diffusion":
        from fusion.generators.train_diffusion import load_diffusion

        return load_diffusion(kind)
    raise ValueError(f"{family!r} is not a learnt generator family ({', '.join(sorted(LEARNT_FAMILIES))})")


def synthetic_generator(family: str, kind: StudyKind) -> FrameGenerator:
    """``generator(frame, kind, rng)`` for `fusion.cohort.images.synthesize`."""
    model = _learnt(family, kind)

    def generate(frame: np.ndarray, _kind: str, rng: np.random.Generator) -> np.ndarray:
        with _OneThread():
            return np.asarray(model.generate(frame, rng), dtype=np.float32)

    return generate


def removal_fill(family: str, kind: StudyKind) -> FrameFill | None:
    """``fill(frame, mask, rng)`` hiding what ``mask`` (0..1) covers; None for ``membrane`` (the default)."""
    if family == "membrane":
        return None
    if family == "copy-move":
        from fusion.generators.classical import copy_move_fill

        return lambda frame, mask, rng: copy_move_fill(frame, mask > 0.05, rng)
    if family == "diffusion":
        model = _learnt("diffusion", kind)

        def inpaint(frame: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            with _OneThread():
                return np.asarray(model.inpaint(frame, mask > 0.05, rng), dtype=np.float32)

        return inpaint
    raise ValueError(
        f"{family!r} does not remove findings ({', '.join(families_for(Manipulation.FINDING_REMOVED))})"
    )


def regenerate_injection(
    family: str, original: RenderedStudy, blended: RenderedStudy, seed: int
) -> RenderedStudy:
    """An injection made by ``family`` from the plain blend: ``blend`` returns it as it is; ``diffusion``
    lets the diffusion model make the lesion region anew (``inject``) from the original pixels, with the
    blended lesion's footprint as the mask and its median as the lesion's intensity."""
    if family == "blend":
        return blended
    if family != "diffusion":
        raise ValueError(
            f"{family!r} does not inject findings ({', '.join(families_for(Manipulation.FINDING_INJECTED))})"
        )
    model = _learnt("diffusion", StudyKind(original.plan.kind))
    rng = np.random.default_rng(seed)
    series = []
    for before, after in zip(original.series, blended.series, strict=True):
        frames = after.frames.copy()
        for i, (f0, f1) in enumerate(zip(before.frames, after.frames, strict=True)):
            change = np.abs(f1 - f0)
            span = float(np.ptp(f0)) or 1.0
            mask = change > 0.02 * span
            if mask.sum() < 16:
                continue
            value = float(np.median(f1[mask]))
            with _OneThread():
                frames[i] = np.asarray(model.inject(f0, mask, rng, value), dtype=np.float32)
        series.append(replace(after, frames=frames))
    return RenderedStudy(blended.plan, tuple(series))


def apply_nuisance(study: RenderedStudy, nuisance: str, seed: int) -> RenderedStudy:
    """Every frame of the study re-encoded, resized, or down-sampled to a smaller matrix."""
    from fusion.generators.classical import reencode, resize_roundtrip

    if nuisance not in NUISANCES:
        raise ValueError(f"unknown nuisance {nuisance!r}; one of {', '.join(NUISANCES)}")
    rng = np.random.default_rng(seed)
    if nuisance == "downsample":
        factor = float(rng.uniform(0.25, 0.75))
        out = []
        for s in study.series:
            h, w = s.frames.shape[1:]
            size = (max(round(w * factor), 16), max(round(h * factor), 16))
            frames = np.stack(
                [
                    np.asarray(Image.fromarray(f, mode="F").resize(size, Image.Resampling.BOX))
                    for f in s.frames
                ]
            ).astype(np.float32)
            spacing = (s.pixel_spacing[0] * h / size[1], s.pixel_spacing[1] * w / size[0])
            out.append(replace(s, frames=frames, pixel_spacing=spacing))
        return RenderedStudy(study.plan, tuple(out))
    if nuisance == "reencode":
        ratio = float(rng.uniform(8.0, 40.0))
        fn: Callable[[np.ndarray], np.ndarray] = lambda f: reencode(f, rng, ratio=ratio)  # noqa: E731
    else:
        factor = float(rng.uniform(0.5, 0.85))
        fn = lambda f: resize_roundtrip(f, rng, factor=factor)  # noqa: E731
    series = tuple(
        replace(s, frames=np.stack([fn(f) for f in s.frames]).astype(np.float32)) for s in study.series
    )
    return RenderedStudy(study.plan, series)
