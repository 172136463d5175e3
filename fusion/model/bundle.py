"""Model bundles: the one place weights are written and read.

A bundle is a folder::

    model.safetensors   the weights (safetensors; its sha256 identifies the model)
    config.json         {"name", "version", "format", "model": FusionConfig JSON, ...}
    calibration.json    temperatures per head and the threshold on overall (`fusion.calibrate`)
    MODEL_CARD.md       what it was trained on and how it scored (`fusion.evaluate`)

``default_bundle_path()`` is ``fusion/bundles/default/`` inside the installed package.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from fusion.calibrate import Calibration
from fusion.errors import ModelBundleError
from fusion.model.config import FusionConfig
from fusion.model.factory import Preprocess, resolve_device
from fusion.model.fusion import CrossCheckModel
from fusion.result import ModelInfo

__all__ = [
    "BUNDLE_FILES",
    "LoadedModel",
    "default_bundle_path",
    "load_bundle",
    "save_bundle",
    "sha256_file",
    "write_model_card",
]

BUNDLE_FILES: tuple[str, ...] = ("model.safetensors", "config.json", "calibration.json", "MODEL_CARD.md")
BUNDLE_FORMAT = 1


@dataclass(frozen=True)
class LoadedModel:
    """A bundle in memory: the model (in eval mode, on ``device``) and everything around it."""

    model: CrossCheckModel
    preprocess: Preprocess
    config: FusionConfig
    calibration: Calibration
    name: str
    version: str
    sha256: str
    device: torch.device
    path: Path | None = None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name=self.name, version=self.version, sha256=self.sha256)


def default_bundle_path() -> Path:
    """``fusion/bundles/default/`` inside the installed package (it may not exist yet)."""
    return Path(str(resources.files("fusion").joinpath("bundles", "default")))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(
    path: Path,
    model: CrossCheckModel,
    calibration: Calibration,
    *,
    name: str = "crosscheck-fusion",
    version: str = "0.1.0",
    model_card: str = "",
    metadata: dict[str, Any] | None = None,
) -> str:
    """Write the bundle folder; returns the sha256 of ``model.safetensors``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"name": name, "version": version})
    config = {
        "name": name,
        "version": version,
        "format": BUNDLE_FORMAT,
        "model": model.config.to_json(),
        **(metadata or {}),
    }
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    (path / "calibration.json").write_text(calibration.dumps() + "\n", "utf-8")
    write_model_card(path, model_card or f"# {name} {version}\n\nNo evaluation recorded.\n")
    return sha256_file(path / "model.safetensors")


def write_model_card(path: Path, text: str) -> None:
    (Path(path) / "MODEL_CARD.md").write_text(text if text.endswith("\n") else text + "\n", "utf-8")


def load_bundle(path: Path | str | None = None, device: str | torch.device | None = None) -> LoadedModel:
    """Load a bundle (default: ``default_bundle_path()``); ``ModelBundleError`` says what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else default_bundle_path()
    if not folder.is_dir():
        raise ModelBundleError(f"no model bundle at {folder}: run `crosscheck train` to make one")
    missing = [f for f in BUNDLE_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelBundleError(
            f"model bundle {folder} is incomplete: missing {', '.join(missing)}; "
            "re-run `crosscheck train` or copy the whole bundle folder"
        )
    try:
        meta = json.loads((folder / "config.json").read_text("utf-8"))
        config = FusionConfig.from_json(meta["model"])
        calibration = Calibration.from_json(json.loads((folder / "calibration.json").read_text("utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelBundleError(
            f"model bundle {folder} has an unreadable config or calibration: {exc}"
        ) from exc
    weights = folder / "model.safetensors"
    digest = sha256_file(weights)
    dev = resolve_device(device)
    model = CrossCheckModel(config)
    try:
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ModelBundleError(
            f"weights in {weights} do not load into the {config.name!r} model (sha256 {digest[:12]}): {exc}"
        ) from exc
    model.to(dev).eval()
    return LoadedModel(
        model=model,
        preprocess=Preprocess(config.features),
        config=config,
        calibration=calibration,
        name=str(meta.get("name", config.name)),
        version=str(meta.get("version", "0")),
        sha256=digest,
        device=dev,
        path=folder,
    )
