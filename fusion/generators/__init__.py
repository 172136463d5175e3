"""Generators of synthetic images: the negatives of the synthetic-image head.

The first family is a small convolutional VAE (`fusion.generators.vae`),
trained per study kind on phantom renders by `fusion.generators.train_vae`.
Shipped weights live in ``fusion/generators/weights/`` as
``vae-<kind>.safetensors`` (the state dict) and ``vae-<kind>.json`` (config,
normalisation, training summary); this module is the one place they load.

    >>> gen = load_generator("chest-ct")            # doctest: +SKIP
    >>> fake = gen.generate(slice_hu, np.random.default_rng(0))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file

from fusion.cohort.scenario import StudyKind
from fusion.errors import ModelBundleError
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
    kind = StudyKind(kind)
    if weights_dir is None:
        root = Path(str(resources.files("fusion.generators") / "weights"))
    else:
        root = Path(weights_dir)
    stem = root / f"vae-{kind.value}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def load_generator(kind: StudyKind | str, weights_dir: str | Path | None = None) -> VaeGenerator:
    """The trained VAE generator for ``kind``, cached per process.

    Raises ``GeneratorWeightsMissing`` (a ``FileNotFoundError``) when the
    weights are absent, naming the command that trains them, and
    ``ModelBundleError`` when they are present but unreadable. The returned
    generator is shared: treat it as read-only.
    """
    kind = StudyKind(kind)
    return _load_cached(kind, None if weights_dir is None else str(Path(weights_dir).resolve()))


@functools.lru_cache(maxsize=16)
def _load_cached(kind: StudyKind, weights_dir: str | None) -> VaeGenerator:
    weights, meta_path = weights_paths(kind, weights_dir)
    missing = [p for p in (weights, meta_path) if not p.is_file()]
    if missing:
        command = TRAIN_COMMAND.format(kind=kind.value)
        if weights_dir is not None:
            command = command.replace("fusion/generators/weights", weights_dir)
        raise GeneratorWeightsMissing(
            f"No trained VAE for {kind.value}: missing {', '.join(str(p) for p in missing)}. "
            f"Train it with `{command}`."
        )
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        config = VaeConfig.from_dict(meta["config"])
        norm = IntensityNorm.from_dict(meta["normalisation"])
        model = ConvVae(config)
        model.load_state_dict(load_file(str(weights), device="cpu"))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise ModelBundleError(
            f"VAE weights for {kind.value} in {weights.parent} are unreadable: {exc}"
        ) from exc
    if meta.get("kind", kind.value) != kind.value:
        raise ModelBundleError(f"{meta_path} holds a VAE for {meta.get('kind')!r}, not {kind.value!r}")
    model.requires_grad_(False)
    logger.info(
        "loaded VAE generator for %s (%d parameters)", kind.value, sum(p.numel() for p in model.parameters())
    )
    return VaeGenerator(
        model, kind, norm, temperature=float(meta.get("temperature", 0.7)), training=meta.get("training")
    )


def sample(
    n: int, kind: StudyKind | str, rng: np.random.Generator, weights_dir: str | Path | None = None
) -> np.ndarray:
    """``n`` frames of ``kind`` drawn from the shipped VAE's prior, (n, 256, 256) physical units."""
    return load_generator(kind, weights_dir).sample(n, rng)
