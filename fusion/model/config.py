"""Configs of the fusion model: one dataclass per tower, and named configs as JSON.

``FusionConfig`` holds the ``FeatureConfig`` too, so the preprocessing a model
was trained with travels with it (in the bundle's ``config.json``).
Named configs: ``"tiny"`` (tests, trains in seconds) and ``"small"`` (the
default: < 5 MB of weights, trains on ~600 cases in minutes on two CPU cores).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from fusion.features import NUM_TOKEN_KINDS, FeatureConfig

__all__ = [
    "ForensicTowerConfig",
    "FusionConfig",
    "ImageTowerConfig",
    "RecordTowerConfig",
    "named_config",
    "named_configs",
]


def _plain(obj: Any) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(obj, f.name), tuple) else v) for f in fields(obj)}


@dataclass(frozen=True)
class ImageTowerConfig:
    """A small ConvNeXt (``transformers.ConvNextModel``, random init) over the (3, S, S) image view.

    Its last stage is a token grid of ``(S / patch_size / 2**(stages-1))**2`` tokens.
    """

    in_channels: int = 3
    hidden_sizes: tuple[int, ...] = (32, 64)
    depths: tuple[int, ...] = (1, 2)
    patch_size: int = 8
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        object.__setattr__(self, "depths", tuple(self.depths))
        if len(self.hidden_sizes) != len(self.depths) or not self.depths:
            raise ValueError("hidden_sizes and depths must have the same, non-zero length")


@dataclass(frozen=True)
class ForensicTowerConfig:
    """Fixed SRM high-pass filters + learnt strided convs + FFT spectral statistics."""

    channels: tuple[int, ...] = (12, 24, 48)  # 256 crop -> 64 -> 32 -> 16 (= heatmap_size)
    spectral_bins: int = 16
    heatmap_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if not self.channels:
            raise ValueError("the forensic tower needs at least one conv stage")


@dataclass(frozen=True)
class RecordTowerConfig:
    """Token embeddings (kind, code bucket, value, time, present) + a transformer encoder."""

    layers: int = 2
    heads: int = 4
    ff_dim: int = 128
    dropout: float = 0.1
    num_kinds: int = NUM_TOKEN_KINDS


@dataclass(frozen=True)
class FusionConfig:
    """The whole model: features, three towers, and the width ``d_model`` they meet in."""

    name: str = "small"
    d_model: int = 64
    fusion_heads: int = 4
    features: FeatureConfig = field(default_factory=FeatureConfig)
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    forensic: ForensicTowerConfig = field(default_factory=ForensicTowerConfig)
    record: RecordTowerConfig = field(default_factory=RecordTowerConfig)

    def __post_init__(self) -> None:
        if self.d_model % self.fusion_heads or self.d_model % self.record.heads:
            raise ValueError("d_model must be divisible by fusion_heads and record.heads")
        grid = self.features.image_size // self.image.patch_size // 2 ** (len(self.image.depths) - 1)
        if grid < 1:
            raise ValueError("image_size is too small for the image tower's patch size and stages")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "d_model": self.d_model,
            "fusion_heads": self.fusion_heads,
            "features": self.features.to_json(),
            "image": _plain(self.image),
            "forensic": _plain(self.forensic),
            "record": _plain(self.record),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FusionConfig:
        try:
            return cls(
                name=str(data.get("name", "custom")),
                d_model=int(data["d_model"]),
                fusion_heads=int(data["fusion_heads"]),
                features=FeatureConfig.from_json(data["features"]),
                image=ImageTowerConfig(**data["image"]),
                forensic=ForensicTowerConfig(**data["forensic"]),
                record=RecordTowerConfig(**data["record"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a FusionConfig JSON document: {exc}") from exc


_NAMED: dict[str, dict[str, Any]] = {
    "tiny": FusionConfig(
        name="tiny",
        d_model=16,
        fusion_heads=2,
        features=FeatureConfig(image_size=32, forensic_crop=32, max_tokens=24, code_buckets=256),
        image=ImageTowerConfig(hidden_sizes=(8, 16), depths=(1, 1), patch_size=4),
        forensic=ForensicTowerConfig(channels=(8, 16), spectral_bins=8, heatmap_size=4),
        record=RecordTowerConfig(layers=1, heads=2, ff_dim=32, dropout=0.0),
    ).to_json(),
    "small": FusionConfig().to_json(),
}


def named_configs() -> tuple[str, ...]:
    return tuple(sorted(_NAMED))


def named_config(name: str, **overrides: Any) -> FusionConfig:
    """A named config (``"tiny"``, ``"small"``), optionally with top-level fields replaced."""
    if name not in _NAMED:
        raise ValueError(f"unknown model config {name!r}; choose one of {', '.join(named_configs())}")
    config = FusionConfig.from_json(_NAMED[name])
    return replace(config, **overrides) if overrides else config
