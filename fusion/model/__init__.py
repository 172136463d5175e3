"""The fusion model: configs, towers, ``CrossCheckModel``, its factory and bundles."""

from fusion.model.bundle import (
    LoadedModel,
    default_bundle_path,
    load_bundle,
    save_bundle,
)
from fusion.model.config import (
    ForensicTowerConfig,
    FusionConfig,
    ImageTowerConfig,
    RecordTowerConfig,
    named_config,
    named_configs,
)
from fusion.model.factory import Preprocess, create_model, resolve_device
from fusion.model.fusion import CrossCheckModel, ModelOutput
from fusion.model.towers import ForensicTower, ImageTower, RecordTower

__all__ = [
    "CrossCheckModel",
    "ForensicTower",
    "ForensicTowerConfig",
    "FusionConfig",
    "ImageTower",
    "ImageTowerConfig",
    "LoadedModel",
    "ModelOutput",
    "Preprocess",
    "RecordTower",
    "RecordTowerConfig",
    "create_model",
    "default_bundle_path",
    "load_bundle",
    "named_config",
    "named_configs",
    "resolve_device",
    "save_bundle",
]
