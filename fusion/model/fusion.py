"""``CrossCheckModel``: image x record fusion with a forensic branch.

Record tokens attend to image tokens (``nn.MultiheadAttention``); each fused
record token gets a scalar *contradiction* (``token_contributions``: positive
contradicts the image, negative supports it), and the consistency logit is a
pooled term minus their sum, so the per-item explanation is exactly additive
in the logit. The synthetic logit reads the forensic embedding and the pooled
image; the tamper heatmap comes from the forensic branch's conv map.

The encoders and heads are separately callable; ``forward`` chains them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fusion.features import MODALITIES
from fusion.model.config import FusionConfig
from fusion.model.towers import ForensicTower, ImageTower, RecordTower

__all__ = ["BATCH_KEYS", "CrossCheckModel", "ModelOutput"]

BATCH_KEYS: tuple[str, ...] = (
    "image",
    "modality",
    "forensic",
    "token_kind",
    "token_code",
    "token_value",
    "token_time",
    "token_present",
    "token_mask",
)


@dataclass(frozen=True)
class ModelOutput:
    """Raw (uncalibrated) outputs for a batch of B cases with T record tokens."""

    consistency_logit: Tensor  # (B,) high = image and record agree
    synthetic_logit: Tensor  # (B,) high = synthetic / tampered pixels
    contributions: Tensor  # (B, T) per record token, positive = contradicts the image; 0 on padding
    tamper_heatmap: Tensor  # (B, h, h) logits
    attention: Tensor  # (B, T, N) record-token -> image-token attention


class CrossCheckModel(nn.Module):
    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        f = config.features
        self.image_tower = ImageTower(config.image, f.image_size, d, len(MODALITIES))
        self.forensic_tower = ForensicTower(config.forensic, f.forensic_crop, d)
        self.record_tower = RecordTower(config.record, f, d)
        self.cross_attention = nn.MultiheadAttention(d, config.fusion_heads, batch_first=True)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.token_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.pool_head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))
        self.synthetic_head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))
        with torch.no_grad():
            last = self.token_head[-1]
            assert isinstance(last, nn.Linear)
            last.weight.mul_(0.1)

    # ---------------------------------------------------------------- encoders
    def encode_image(self, image: Tensor, modality: Tensor) -> tuple[Tensor, Tensor]:
        """``(tokens (B, N, D), pooled (B, D))``."""
        return self.image_tower(image, modality)  # type: ignore[no-any-return]

    def encode_forensic(self, forensic: Tensor) -> tuple[Tensor, Tensor]:
        """``(embedding (B, D), heatmap logits (B, h, h))``."""
        return self.forensic_tower(forensic)  # type: ignore[no-any-return]

    def encode_record(
        self, kind: Tensor, code: Tensor, value: Tensor, time: Tensor, present: Tensor, mask: Tensor
    ) -> Tensor:
        """Contextual record-token embeddings ``(B, T, D)``."""
        return self.record_tower(kind, code, value, time, present, _non_empty(mask))  # type: ignore[no-any-return]

    def fuse(self, record_tokens: Tensor, mask: Tensor, image_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Record tokens attend to image tokens: ``(fused (B, T, D), attention (B, T, N))``."""
        attended, attention = self.cross_attention(
            record_tokens, image_tokens, image_tokens, need_weights=True
        )
        fused = self.cross_norm(record_tokens + attended)
        fused = fused + self.cross_ff(fused)
        return fused, attention

    # ---------------------------------------------------------------- heads
    def token_contributions(self, fused: Tensor, mask: Tensor) -> Tensor:
        """Per record token, how much it contradicts the image (B, T); 0 on padding."""
        return self.token_head(fused)[..., 0] * mask.to(fused.dtype)  # type: ignore[no-any-return]

    def consistency_logit(self, fused: Tensor, mask: Tensor, image_pooled: Tensor) -> tuple[Tensor, Tensor]:
        """``(logit (B,), contributions (B, T))``: logit = pooled term - sum of contributions."""
        m = _non_empty(mask).to(fused.dtype)
        pooled = (fused * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        contributions = self.token_contributions(fused, m)
        logit = self.pool_head(torch.cat([pooled, image_pooled], dim=1))[:, 0] - contributions.sum(1)
        return logit, contributions

    def synthetic_logit(self, forensic_embedding: Tensor, image_pooled: Tensor) -> Tensor:
        """Logit (B,) that the pixels are synthetic or tampered."""
        return self.synthetic_head(torch.cat([forensic_embedding, image_pooled], dim=1))[:, 0]  # type: ignore[no-any-return]

    def tamper_heatmap(self, forensic: Tensor) -> Tensor:
        """Coarse tamper logits (B, h, h) over the forensic crop."""
        return self.encode_forensic(forensic)[1]

    # ---------------------------------------------------------------- forward
    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"batch is missing {', '.join(missing)}")
        image_tokens, image_pooled = self.encode_image(batch["image"], batch["modality"])
        forensic_embedding, heatmap = self.encode_forensic(batch["forensic"])
        mask = batch["token_mask"].bool()
        record = self.encode_record(
            batch["token_kind"],
            batch["token_code"],
            batch["token_value"],
            batch["token_time"],
            batch["token_present"],
            mask,
        )
        fused, attention = self.fuse(record, mask, image_tokens)
        consistency, contributions = self.consistency_logit(fused, mask, image_pooled)
        synthetic = self.synthetic_logit(forensic_embedding, image_pooled)
        return ModelOutput(consistency, synthetic, contributions, heatmap, attention)


def _non_empty(mask: Tensor) -> Tensor:
    """The padding mask with the first token kept in rows that have none (attention needs one)."""
    mask = mask.bool()
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        mask = mask.clone()
        mask[empty, 0] = True
    return mask
