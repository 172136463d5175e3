"""Generators of synthetic images: the negatives of the synthetic-image head.

Three learnt families, each trained per study kind on the phantom renders and
shipped in ``fusion/generators/weights/`` as ``<family>-<kind>.safetensors`` +
``.json`` (read and written by `fusion.generators.store`):

- VAE (`vae`, trained by `train_vae`; loaded here with `load_generator`);
- GAN (`gan`, `train_gan.load_gan`);
- diffusion (`diffusion`, `train_diffusion.load_diffusion`), which also inpaints
  and injects lesions;

and the classical ones in `classical` (copy-move, re-encoding, resizing). The
simulator chooses among them through `fusion.cohort.images.families`.

    >>> gen = load_generator("chest-ct")            # doctest: +SKIP
    >>> fake = gen.generate(slice_hu, np.random.default_rng(0))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fusion.cohort.scenario import StudyKind
from fusion.generators.store import CachedLoader, family_weights_paths
from fusion.generators.vae import (
    ConvVae,
    GeneratorWeightsMissing,
    IntensityNorm,
    VaeConfig,
    VaeGenerator,
)

__all__ = [
    "GeneratorWeightsMissing",
    "VaeConfig",
    "VaeGenerator",
    "load_generator",
    "sample",
    "weights_paths",
]

logger = logging.getLogger(__name__)

TRAIN_COMMAND = "python -m fusion.generators.train_vae --kind {kind} --out fusion/generators/weights"


def weights_paths(kind: StudyKind | str, weights_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``(safetensors, json)`` paths of the VAE for ``kind`` (shipped dir unless ``weights_dir``)."""
    return family_weights_paths("vae", kind, weights_dir)


def _build(kind: StudyKind, meta: dict[str, Any], state: dict[str, Any]) -> VaeGenerator:
    model = ConvVae(VaeConfig.from_dict(meta["config"]))
    model.load_state_dict(state)
    model.requires_grad_(False)
    norm = IntensityNorm.from_dict(meta["normalisation"])
    temperature = float(meta.get("temperature", 0.7))
    return VaeGenerator(model, kind, norm, temperature=temperature, training=meta.get("training"))


_LOADER = CachedLoader("vae", "VAE", TRAIN_COMMAND, _build)


def load_generator(kind: StudyKind | str, weights_dir: str | Path | None = None) -> VaeGenerator:
    """The trained VAE generator for ``kind``, cached per process.

    Raises ``GeneratorWeightsMissing`` (a ``FileNotFoundError``) when the
    weights are absent, naming the command that trains them, and
    ``ModelBundleError`` when they are present but unreadable. The returned
    generator is shared: treat it as read-only.
    """
    return _LOADER(kind, weights_dir)


def sample(
    n: int, kind: StudyKind | str, rng: np.random.Generator, weights_dir: str | Path | None = None
) -> np.ndarray:
    """``n`` frames of ``kind`` drawn from the shipped VAE's prior, (n, 256, 256) physical units."""
    return load_generator(kind, weights_dir).sample(n, rng)
