"""The three encoders: ``ImageTower``, ``ForensicTower``, ``RecordTower``.

Constructors build layers from configs only (random init, no file or network
access); weights are loaded in one place, `fusion.model.bundle.load_bundle`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion.features import FeatureConfig
from fusion.model.config import ForensicTowerConfig, ImageTowerConfig, RecordTowerConfig

__all__ = ["ForensicTower", "ImageTower", "RecordTower", "srm_residuals"]


class ImageTower(nn.Module):
    """A tiny ConvNeXt from ``transformers`` producing a grid of ``d_model`` tokens.

    ``forward(image (B, C, S, S), modality (B, M)) -> (tokens (B, N, D), pooled (B, D))``.
    """

    def __init__(self, config: ImageTowerConfig, image_size: int, d_model: int, n_modalities: int) -> None:
        super().__init__()
        from transformers import ConvNextConfig, ConvNextModel

        self.config = config
        self.image_size = image_size
        backbone_config = ConvNextConfig(
            num_channels=config.in_channels,
            hidden_sizes=list(config.hidden_sizes),
            depths=list(config.depths),
            num_stages=len(config.depths),
            patch_size=config.patch_size,
            image_size=image_size,
            drop_path_rate=config.drop_path_rate,
        )
        self.backbone = ConvNextModel(backbone_config)  # constructed from the config: random init, no I/O
        self.grid = image_size // config.patch_size // 2 ** (len(config.depths) - 1)
        self.proj = nn.Linear(config.hidden_sizes[-1], d_model)
        self.position = nn.Parameter(torch.randn(1, self.grid * self.grid, d_model) * 0.02)
        self.modality = nn.Linear(n_modalities, d_model, bias=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, image: Tensor, modality: Tensor) -> tuple[Tensor, Tensor]:
        s = self.image_size
        if image.ndim != 4 or image.shape[1] != self.config.in_channels or image.shape[2:] != (s, s):
            raise ValueError(
                f"image must be (batch, {self.config.in_channels}, {s}, {s}); got {tuple(image.shape)}"
            )
        if (
            modality.ndim != 2
            or modality.shape[0] != image.shape[0]
            or modality.shape[1] != self.modality.in_features
        ):
            raise ValueError(
                f"modality must be (batch, {self.modality.in_features}); got {tuple(modality.shape)}"
            )
        grid = self.backbone(pixel_values=image).last_hidden_state  # (B, C, g, g)
        tokens = self.proj(grid.flatten(2).transpose(1, 2))
        tokens = self.norm(tokens + self.position + self.modality(modality)[:, None, :])
        return tokens, tokens.mean(dim=1)


def srm_residuals(x: Tensor) -> Tensor:
    """Fixed SRM-style high-pass filters of (B, 1, H, W) -> (B, 4, H, W), zero at the border.

    First-order differences (horizontal, vertical), the second-order horizontal
    difference, and the 3x3 "edge" kernel ``[[-1,2,-1],[2,-4,2],[-1,2,-1]] / 4``
    (Fridrich & Kodovsky's rich-model family). Written as shifted differences,
    not a convolution: on a CPU that is several times faster and needs no backward.
    """
    out = torch.zeros(x.shape[0], 4, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
    out[:, 0, :, :-1] = x[:, 0, :, 1:] - x[:, 0, :, :-1]
    out[:, 1, :-1, :] = x[:, 0, 1:, :] - x[:, 0, :-1, :]
    d2 = x[:, 0, :, 2:] - 2 * x[:, 0, :, 1:-1] + x[:, 0, :, :-2]  # (B, H, W-2)
    out[:, 2, :, 1:-1] = d2 / 2
    out[:, 3, 1:-1, 1:-1] = -(d2[:, 2:, :] - 2 * d2[:, 1:-1, :] + d2[:, :-2, :]) / 4
    return out


class ForensicTower(nn.Module):
    """Full-resolution residual crop -> embedding (B, D) and tamper heatmap logits (B, h, h).

    Fixed SRM filters (``srm_residuals``) feed learnt strided convolutions (global mean/std pooling);
    alongside, the log-energy of each filtered channel and the radial profile of
    the log-magnitude spectrum (``torch.fft.rfft2``) -- where generators' upsampling
    and over-smoothing show -- are computed explicitly.
    """

    spectral_bin: Tensor
    spectral_count: Tensor

    def __init__(self, config: ForensicTowerConfig, crop: int, d_model: int) -> None:
        super().__init__()
        self.config = config
        self.crop = crop
        n_in = 1 + 4  # the residual and its four SRM-filtered versions
        convs: list[nn.Module] = []
        for k, ch in enumerate(config.channels):
            # the first conv patchifies (4x4, stride 4: it still sees every residual pixel), then 3x3 / 2
            conv = nn.Conv2d(n_in, ch, 4, stride=4) if k == 0 else nn.Conv2d(n_in, ch, 3, stride=2, padding=1)
            convs += [conv, nn.GELU()]
            n_in = ch
        self.convs = nn.Sequential(*convs)
        self.heatmap_head = nn.Conv2d(n_in, 1, 1)
        fy = torch.fft.fftfreq(crop)[:, None]
        fx = torch.fft.rfftfreq(crop)[None, :]
        radius = torch.sqrt(fx**2 + fy**2) / math.sqrt(0.5)  # 0 .. 1
        bins = torch.clamp((radius * config.spectral_bins).long(), max=config.spectral_bins - 1)
        self.register_buffer("spectral_bin", bins.flatten(), persistent=False)
        self.register_buffer(
            "spectral_count",
            torch.bincount(bins.flatten(), minlength=config.spectral_bins).float().clamp(min=1),
            persistent=False,
        )
        n_stats = 1 + 4 + 2 * n_in + config.spectral_bins
        self.mlp = nn.Sequential(nn.Linear(n_stats, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, forensic: Tensor) -> tuple[Tensor, Tensor]:
        c = self.crop
        if forensic.ndim != 4 or forensic.shape[1] != 1 or forensic.shape[2:] != (c, c):
            raise ValueError(f"forensic crop must be (batch, 1, {c}, {c}); got {tuple(forensic.shape)}")
        x = forensic.float()
        with torch.no_grad():  # fixed filters on the input: nothing to learn, nothing to back-propagate
            stack = torch.cat([x, srm_residuals(x)], dim=1)
            energy = torch.log((stack * stack).mean(dim=(2, 3)) + 1e-6)
            stack = stack.clamp_(-4.0, 4.0)  # edges saturate; the noise floor is what matters
        feats = self.convs(stack)
        pooled = torch.cat([feats.mean(dim=(2, 3)), feats.std(dim=(2, 3))], dim=1)
        spectrum = torch.log(torch.fft.rfft2(x[:, 0]).abs() + 1e-3).flatten(1)  # (B, c * (c//2+1))
        profile = torch.zeros(x.shape[0], self.config.spectral_bins, device=x.device, dtype=spectrum.dtype)
        profile = profile.index_add(1, self.spectral_bin, spectrum) / self.spectral_count
        profile = profile - profile.mean(dim=1, keepdim=True)
        stats = torch.cat([energy, pooled, profile], dim=1)
        embedding = self.norm(self.mlp(stats))
        h = self.config.heatmap_size
        heatmap = F.adaptive_avg_pool2d(self.heatmap_head(feats), (h, h))[:, 0]
        return embedding, heatmap


class RecordTower(nn.Module):
    """Record tokens -> contextual token embeddings (B, T, D) with a transformer encoder.

    Each token is the sum of a kind embedding, a code-bucket embedding, small
    MLPs of its value and its (log-scaled) time from the study, and a present
    embedding. There is no position embedding: a record is a set, ordered only
    by time, which the tokens carry.
    """

    def __init__(self, config: RecordTowerConfig, features: FeatureConfig, d_model: int) -> None:
        super().__init__()
        self.config = config
        self.max_tokens = features.max_tokens
        self.code_buckets = features.code_buckets
        self.kind = nn.Embedding(config.num_kinds, d_model, padding_idx=0)
        self.code = nn.Embedding(features.code_buckets, d_model, padding_idx=0)
        self.value = nn.Sequential(nn.Linear(1, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.time = nn.Sequential(nn.Linear(1, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.present = nn.Embedding(2, d_model)
        self.norm = nn.LayerNorm(d_model)
        layer = nn.TransformerEncoderLayer(
            d_model,
            config.heads,
            dim_feedforward=config.ff_dim,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)

    def check(self, kind: Tensor, code: Tensor, mask: Tensor) -> None:
        if kind.ndim != 2 or code.shape != kind.shape or mask.shape != kind.shape:
            raise ValueError("record tokens must all be (batch, tokens) with the same shape")
        if kind.shape[1] > self.max_tokens:
            raise ValueError(f"{kind.shape[1]} record tokens, more than max_tokens={self.max_tokens}")
        if kind.numel() and (int(kind.min()) < 0 or int(kind.max()) >= self.config.num_kinds):
            raise ValueError(f"token kind outside 0..{self.config.num_kinds - 1}")
        if code.numel() and (int(code.min()) < 0 or int(code.max()) >= self.code_buckets):
            raise ValueError(f"token code outside 0..{self.code_buckets - 1}")

    def forward(
        self, kind: Tensor, code: Tensor, value: Tensor, time: Tensor, present: Tensor, mask: Tensor
    ) -> Tensor:
        self.check(kind, code, mask)
        x = (
            self.kind(kind)
            + self.code(code)
            + self.value(value.float()[..., None])
            + self.time(time.float()[..., None])
            + self.present((present > 0.5).long())
        )
        x = self.norm(x)
        out: Tensor = self.encoder(x, src_key_padding_mask=~mask.bool())
        return out
