"""Where generator weights live and how they are written and read, for every family.

A family's weights for one study kind are two files in ``fusion/generators/weights/``
(or a folder the caller gives): ``<family>-<kind>.safetensors`` (the state dict)
and ``<family>-<kind>.json`` (config, normalisation, training summary). The
loaders of `fusion.generators` (VAE), `train_gan` and `train_diffusion` read them
through a `CachedLoader` (`read_weights` once per kind and folder), which names the
command that trains missing weights and turns unreadable ones into ``ModelBundleError``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fusion.cohort.scenario import StudyKind
from fusion.errors import ModelBundleError
from fusion.generators.vae import GeneratorWeightsMissing

__all__ = ["SHIPPED_DIR", "CachedLoader", "family_weights_paths", "read_weights", "write_weights"]

logger = logging.getLogger(__name__)

SHIPPED_DIR = "fusion/generators/weights"  # as the training commands write it, from the repository root

T = TypeVar("T")


def family_weights_paths(
    family: str, kind: StudyKind | str, weights_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """``(safetensors, json)`` of ``family`` for ``kind``: the shipped folder unless ``weights_dir``."""
    kind = StudyKind(kind)
    root = (
        Path(str(resources.files("fusion.generators") / "weights"))
        if weights_dir is None
        else Path(weights_dir)
    )
    stem = root / f"{family}-{kind.value}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def write_weights(
    stem: str | Path,
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    *,
    kind: StudyKind,
    family: str,
) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.with_name(stem.name + ".safetensors")
    meta = stem.with_name(stem.name + ".json")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(weights), metadata={"kind": kind.value, "family": family, "format": "pt"})
    meta.write_text(json.dumps(dict(metadata), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    weights.chmod(meta.stat().st_mode & 0o777)  # safetensors writes 0600; follow the umask like the JSON
    return weights, meta


def read_weights(
    family: str,
    label: str,
    kind: StudyKind,
    weights_dir: str | None,
    train_command: str,
    build: Callable[[dict[str, Any], dict[str, torch.Tensor]], T],
) -> T:
    """``build(metadata, state_dict)`` for ``family``'s weights of ``kind``.

    ``label`` names the family in messages ("VAE", "GAN" ...); ``train_command``
    (with ``{kind}``) is what the `GeneratorWeightsMissing` error tells to run.
    """
    weights, meta_path = family_weights_paths(family, kind, weights_dir)
    missing = [p for p in (weights, meta_path) if not p.is_file()]
    if missing:
        command = train_command.format(kind=kind.value)
        if weights_dir is not None:
            command = command.replace(SHIPPED_DIR, weights_dir)
        raise GeneratorWeightsMissing(
            f"No trained {label} for {kind.value}: missing {', '.join(str(p) for p in missing)}. "
            f"Train it with `{command}`."
        )
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        built = build(meta, load_file(str(weights), device="cpu"))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise ModelBundleError(
            f"{label} weights for {kind.value} in {weights.parent} are unreadable: {exc}"
        ) from exc
    if meta.get("kind", kind.value) != kind.value:
        raise ModelBundleError(f"{meta_path} holds a {label} for {meta.get('kind')!r}, not {kind.value!r}")
    logger.info("loaded %s generator for %s", label, kind.value)
    return built


class CachedLoader(Generic[T]):
    """One family's loader: ``loader(kind, weights_dir=None)`` gives ``build(kind, metadata, state_dict)``
    of its weights for ``kind``, read once per process and folder (see `read_weights` for the
    errors). The generator it returns is shared: treat it as read-only."""

    def __init__(
        self,
        family: str,
        label: str,
        train_command: str,
        build: Callable[[StudyKind, dict[str, Any], dict[str, torch.Tensor]], T],
    ) -> None:
        self.family, self.label, self.train_command, self.build = family, label, train_command, build
        self._cached = functools.lru_cache(maxsize=16)(self._read)

    def __call__(self, kind: StudyKind | str, weights_dir: str | Path | None = None) -> T:
        folder = None if weights_dir is None else str(Path(weights_dir).resolve())
        return self._cached(StudyKind(kind), folder)

    def _read(self, kind: StudyKind, weights_dir: str | None) -> T:
        build = functools.partial(self.build, kind)
        return read_weights(self.family, self.label, kind, weights_dir, self.train_command, build)
