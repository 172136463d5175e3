"""``create_model``: a model together with the preprocessing it was built for.

Serving and training both get their ``Preprocess`` from here, so the features a
model sees in production are made by the same code and config as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from connectors.domain import Case
from fusion.features import CaseFeatures, FeatureConfig, extract_features
from fusion.model.config import FusionConfig, named_config
from fusion.model.fusion import BATCH_KEYS, CrossCheckModel

__all__ = ["Preprocess", "create_model", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else CUDA when present, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Preprocess:
    """Case -> ``CaseFeatures`` -> batch dict of tensors (``collate``)."""

    config: FeatureConfig

    def __call__(self, case: Case) -> CaseFeatures:
        return extract_features(case, self.config)

    def collate(
        self, features: Sequence[CaseFeatures], device: str | torch.device | None = None
    ) -> dict[str, Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        batch: dict[str, Tensor] = {}
        for key in BATCH_KEYS:
            arr = np.stack([getattr(f, key) for f in features])
            batch[key] = torch.from_numpy(arr).to(dev, non_blocking=True)
        return batch

    def batch(self, cases: Sequence[Case], device: str | torch.device | None = None) -> dict[str, Tensor]:
        return self.collate([self(c) for c in cases], device)


def create_model(config: FusionConfig | str = "small") -> tuple[CrossCheckModel, Preprocess]:
    """A randomly initialised model for ``config`` (or a named config) and its preprocessing."""
    cfg = named_config(config) if isinstance(config, str) else config
    return CrossCheckModel(cfg), Preprocess(cfg.features)
