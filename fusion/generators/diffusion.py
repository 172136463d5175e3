"""A small denoising diffusion model: the second family of synthetic-image generators.

One model per study kind, trained at a low resolution (64 x 64 by default) to
predict the noise added to a normalised frame (DDPM, Ho et al. 2020) under a
cosine or linear schedule, and sampled with DDIM (Song et al. 2021) in a few
tens of steps. The simulator uses it three ways:

- ``DiffusionGenerator.generate``: SDEdit (Meng et al. 2022). The frame is
  noised to an intermediate step (``strength``) and denoised, so the output
  keeps the input's layout but every pixel was drawn by the model;
- ``DiffusionGenerator.inpaint``: RePaint (Lugmayr et al. 2022). Inside a
  mask the model generates tissue, outside it the input is re-noised at every
  step and kept, so a lesion under the mask is *removed*;
- ``DiffusionGenerator.inject``: a lesion-like blob of a given physical
  intensity is blended into the mask and the model harmonises a thin ring
  around its edge, so it is *added* without the edge of a pasted disk;
- ``DiffusionGenerator.sample``: frames from noise alone.

``inpaint`` and ``inject`` leave every pixel ``feather + 1`` pixels or more
from the mask exactly as it was; ``generate`` changes every pixel. Outputs are
float32 frames of the input's shape in its physical units, with white noise
matched to the input's estimated noise level (the model works at low
resolution, where that noise has averaged away), deterministic given ``rng``.

What the model draws is low-resolution: at 64 x 64 a 512-pixel frame loses
everything finer than about 8 pixels (thin ribs, small vessels), and a lesion
a few pixels across is a pixel or two to the model. The outputs are
bilinearly upsampled, so they are smooth under their added noise.

Pieces:

- ``DiffusionConfig``: the architecture and the sampler (JSON-serialisable,
  stored next to the weights);
- ``NoiseSchedule``: the cumulative signal fractions ``alpha_bar`` and the
  DDIM step sequence;
- ``DiffusionUNet``: the ``nn.Module`` (noise prediction ``forward(x, t)``);
- ``DiffusionGenerator``: model + schedule + normalisation, numpy in, numpy out.

Constructors do no I/O; weights are loaded by
`fusion.generators.train_diffusion.load_diffusion`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy import ndimage
from torch import nn

from fusion.cohort.scenario import StudyKind
from fusion.generators.vae import IntensityNorm, check_frame, estimate_noise_std, resize

__all__ = [
    "DiffusionConfig",
    "DiffusionGenerator",
    "DiffusionUNet",
    "NoiseSchedule",
    "timestep_embedding",
]

logger = logging.getLogger(__name__)

F32 = NDArray[np.float32]

_SCHEDULES = ("cosine", "linear")


@dataclass(frozen=True)
class DiffusionConfig:
    """Architecture of ``DiffusionUNet`` and the settings of its sampler.

    The UNet has one residual block per level at ``image_size / 2**i`` for the
    ``channels[i]`` of each level, self-attention at the lowest level when
    ``attention``, and skip connections between the matching levels. The
    timestep enters every block through a ``time_channels`` embedding.

    ``timesteps`` and ``schedule`` define the forward process; ``sample_steps``
    is the number of DDIM steps of a full trajectory (a partial one takes its
    share), ``eta`` the DDIM stochasticity of ``generate``, ``inpaint`` and
    ``inject`` (0: deterministic given the start), ``sample_eta`` that of
    ``sample``. ``strength`` is the fraction of the trajectory SDEdit re-noises
    to in ``generate``, ``inject_strength`` the (lower) one ``inject`` uses to
    harmonise. A trajectory from noise (``sample``, ``inpaint``) starts at
    ``sample_strength``, from the training frames' mean noised to there: the
    last steps of the cosine schedule, where the signal is a few thousandths of
    the noise, amplify a small model's errors into noise it does not recover
    from. ``resample`` is RePaint's number of passes per step; ``feather`` the
    width in full-resolution pixels of the blend at a mask's edge.
    """

    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 48, 64)
    time_channels: int = 64
    attention: bool = True
    timesteps: int = 1000
    schedule: str = "cosine"
    sample_steps: int = 30
    eta: float = 0.0
    sample_eta: float = 1.0
    strength: float = 0.6
    inject_strength: float = 0.35
    sample_strength: float = 0.95
    resample: int = 2
    feather: float = 3.0

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1 or self.time_channels < 2:
            raise ValueError(f"DiffusionConfig needs channels >= 1 and time_channels >= 2: {self}")
        if self.time_channels % 2:
            raise ValueError(f"time_channels must be even, got {self.time_channels}")
        levels = len(self.channels) - 1
        if self.image_size < 2**levels or self.image_size % (2**levels):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**(len(channels) - 1) = {2**levels}"
            )
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, not {self.schedule!r}")
        if self.timesteps < 2 or self.sample_steps < 1 or self.resample < 1:
            raise ValueError(
                f"DiffusionConfig needs timesteps >= 2, sample_steps >= 1, resample >= 1: {self}"
            )
        for name in ("strength", "inject_strength", "sample_strength"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("eta", "sample_eta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.feather >= 0.0:
            raise ValueError(f"feather must be >= 0, got {self.feather}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        return cls(
            image_size=int(data["image_size"]),
            channels=tuple(int(c) for c in data["channels"]),
            time_channels=int(data["time_channels"]),
            attention=bool(data["attention"]),
            timesteps=int(data["timesteps"]),
            schedule=str(data["schedule"]),
            sample_steps=int(data["sample_steps"]),
            eta=float(data["eta"]),
            sample_eta=float(data["sample_eta"]),
            strength=float(data["strength"]),
            inject_strength=float(data["inject_strength"]),
            sample_strength=float(data["sample_strength"]),
            resample=int(data["resample"]),
            feather=float(data["feather"]),
        )


class NoiseSchedule:
    """The forward process: ``x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) eps``.

    ``cosine`` is Nichol & Dhariwal's (offset 0.008, betas clipped at 0.999);
    ``linear`` is Ho et al.'s betas from 1e-4 to 0.02 (scaled to ``timesteps``).
    """

    def __init__(self, timesteps: int, kind: str = "cosine") -> None:
        if timesteps < 2:
            raise ValueError(f"a noise schedule needs timesteps >= 2, got {timesteps}")
        if kind == "cosine":
            s = 0.008
            f = np.cos((np.arange(timesteps + 1) / timesteps + s) / (1 + s) * math.pi / 2) ** 2
            betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
        elif kind == "linear":
            scale = 1000.0 / timesteps
            betas = np.linspace(scale * 1e-4, scale * 0.02, timesteps)
        else:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, not {kind!r}")
        self.timesteps = timesteps
        self.kind = kind
        self.alpha_bar = torch.from_numpy(np.cumprod(1.0 - betas)).float()

    @classmethod
    def for_config(cls, config: DiffusionConfig) -> NoiseSchedule:
        return cls(config.timesteps, config.schedule)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t`` for clean ``x0`` (B, ...) at integer steps ``t`` (B,) with ``noise`` like ``x0``."""
        ab = self.alpha_bar.to(x0.device)[t].view(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def ddim_steps(self, strength: float, steps: int) -> list[int]:
        """The descending steps a DDIM pass from ``strength`` of the way to pure noise visits.

        ``steps`` is the count for a full pass; a partial one takes
        ``round(strength * steps)`` (at least one), evenly spaced from
        ``strength * (timesteps - 1)`` down to 0 (a single step: from the
        first straight to the clean image).
        """
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        start = round(strength * (self.timesteps - 1))
        n = max(1, round(strength * steps))
        ts = np.unique(np.linspace(start, 0, n).round().astype(int))[::-1]
        return [int(t) for t in ts]


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of integer steps ``t`` (B,), as in the Transformer."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


def _zero_init(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with zero weights and bias: a residual branch that starts as the identity."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the timestep embedding added in between, and a skip."""

    def __init__(self, c_in: int, c_out: int, time_channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_channels, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = _zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip: nn.Module = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        out: torch.Tensor = self.skip(x) + h
        return out


class _SelfAttention(nn.Module):
    """Single-head self-attention over the positions of a feature map, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)
        out: torch.Tensor = x + self.proj(a.transpose(1, 2).reshape(b, c, h, w))
        return out


class DiffusionUNet(nn.Module):
    """Noise-predicting UNet on single-channel ``image_size`` squared images in [-1, 1].

    ``mean_image`` (1, S, S) is the mean of the training images, where a
    trajectory from noise starts (zeros until training sets it).
    """

    mean_image: torch.Tensor

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        tc = config.time_channels
        chans = config.channels
        self.time_mlp = nn.Sequential(nn.Linear(tc, tc), nn.SiLU(), nn.Linear(tc, tc))
        self.stem = nn.Conv2d(1, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        c = chans[0]
        for ch in chans:
            self.down.append(_ResBlock(c, ch, tc))
            c = ch
        self.downsample = nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1) for ch in chans[:-1]])
        self.mid = _ResBlock(c, c, tc)
        self.attention: nn.Module = _SelfAttention(c) if config.attention else nn.Identity()
        self.up = nn.ModuleList()
        for ch in reversed(chans):
            self.up.append(_ResBlock(c + ch, ch, tc))
            c = ch
        self.head = nn.Sequential(
            nn.GroupNorm(_groups(c), c), nn.SiLU(), _zero_init(nn.Conv2d(c, 1, 3, padding=1))
        )
        self.register_buffer("mean_image", torch.zeros(1, config.image_size, config.image_size))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The predicted noise (B, 1, S, S) in ``x`` (B, 1, S, S) at integer steps ``t`` (B,)."""
        s = self.config.image_size
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"DiffusionUNet expects (B, 1, {s}, {s}) input, got {tuple(x.shape)}")
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"DiffusionUNet expects one step per image, got t of shape {tuple(t.shape)}")
        temb = self.time_mlp(timestep_embedding(t, self.config.time_channels))
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, temb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.attention(self.mid(h, temb))
        for i, block in enumerate(self.up):
            level = len(skips) - 1 - i
            h = block(torch.cat([h, skips[level]], dim=1), temb)
            if level > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        out: torch.Tensor = self.head(h)
        return out


def _check_mask(mask: np.ndarray, frame: F32, what: str) -> NDArray[np.bool_]:
    mask = np.asarray(mask)
    if mask.shape != frame.shape:
        raise ValueError(f"{what}: mask shape {mask.shape} differs from the frame's {frame.shape}")
    hard: NDArray[np.bool_] = mask.astype(bool) if mask.dtype == np.bool_ else np.asarray(mask > 0.05)
    if not hard.any():
        raise ValueError(f"{what}: the mask is empty, nothing to change")
    return hard


class DiffusionGenerator:
    """A trained ``DiffusionUNet`` with its noise schedule and per-kind intensity normalisation.

    The model works on ``config.image_size`` squared images with values in
    [-1, 1] (``2 * unit - 1``, ``unit`` as in ``IntensityNorm``). ``steps``
    arguments override ``config.sample_steps`` (the tests use few).
    """

    def __init__(
        self,
        model: DiffusionUNet,
        kind: StudyKind | str,
        norm: IntensityNorm | None = None,
        *,
        training: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.kind = StudyKind(kind)
        self.norm = norm if norm is not None else IntensityNorm.for_kind(self.kind)
        self.schedule = NoiseSchedule.for_config(model.config)
        self.training = dict(training) if training else {}

    @property
    def config(self) -> DiffusionConfig:
        return self.model.config

    # --- the sampler, in model space ----------------------------------------------------------------

    def _noise(self, rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))

    def _ab(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.schedule.alpha_bar[t])

    def _ddim_step(
        self, x: torch.Tensor, t: int, t_prev: int, eta: float, rng: np.random.Generator
    ) -> torch.Tensor:
        """One DDIM update from step ``t`` to ``t_prev`` (-1: the clean image), x0 clipped to [-1, 1]."""
        ab, ab_prev = self._ab(t), self._ab(t_prev)
        eps: torch.Tensor = self.model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        x0 = ((x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)).clamp(-1.0, 1.0)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        out = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0.0:
            out = out + sigma * self._noise(rng, tuple(x.shape))
        return out

    def _denoise(
        self,
        x0: torch.Tensor,
        rng: np.random.Generator,
        *,
        strength: float,
        steps: int,
        eta: float,
        known: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A DDIM pass from ``strength`` of the way to noise; images in [-1, 1], (B, 1, S, S).

        ``x0`` is the start, noised to the first step. With ``known`` and
        ``keep`` (1 where ``known`` holds), RePaint: after every step the kept
        pixels are replaced by ``known`` noised to that step, and each step is
        run ``config.resample`` times, re-noising the result back to the step
        before each repeat.
        """
        shape = tuple(x0.shape)
        ts = self.schedule.ddim_steps(strength, steps)
        x = self.schedule.add_noise(
            x0, torch.full((shape[0],), ts[0], dtype=torch.long), self._noise(rng, shape)
        )
        passes = self.config.resample if keep is not None else 1
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            for u in range(passes):
                x_prev = self._ddim_step(x, t, t_prev, eta, rng)
                if known is not None and keep is not None:
                    ab_prev = self._ab(t_prev)
                    noised = math.sqrt(ab_prev) * known
                    if t_prev >= 0:
                        noised = noised + math.sqrt(1.0 - ab_prev) * self._noise(rng, shape)
                    x_prev = keep * noised + (1.0 - keep) * x_prev
                if u + 1 < passes:  # back to step t: q(x_t | x_t_prev)
                    ratio = self._ab(t) / self._ab(t_prev)
                    x = math.sqrt(ratio) * x_prev + math.sqrt(1.0 - ratio) * self._noise(rng, shape)
                else:
                    x = x_prev
        return x

    # --- frames in, frames out ------------------------------------------------------------------------

    def _steps(self, steps: int | None) -> int:
        n = self.config.sample_steps if steps is None else int(steps)
        if n < 1:
            raise ValueError(f"steps must be >= 1, got {n}")
        return n

    def _to_model(self, frame: F32, scale: tuple[float, float]) -> torch.Tensor:
        s = self.config.image_size
        unit = torch.from_numpy(self.norm.to_unit(frame, scale))[None, None]
        return resize(unit, (s, s)) * 2.0 - 1.0

    def _from_model(self, x: torch.Tensor, shape: tuple[int, int], scale: tuple[float, float]) -> F32:
        """Model-space images (B, 1, S, S) -> physical frames (B, H, W), resized bilinearly."""
        unit = ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).float()
        up = F.interpolate(unit, size=shape, mode="bilinear", align_corners=False)
        return self.norm.from_unit(up[:, 0].numpy(), scale)

    def _mask_to_model(self, hard: NDArray[np.bool_], *, ring: bool = False) -> torch.Tensor:
        """1 on every model pixel the mask touches and on their neighbours (1, 1, S, S).

        With ``ring``, 0 again on the mask's interior: the model pixels the
        mask covers whole, less their neighbours.
        """
        s = self.config.image_size
        cover = resize(torch.from_numpy(hard.astype(np.float32))[None, None], (s, s))
        grown = F.max_pool2d((cover > 0.0).float(), 3, stride=1, padding=1)
        if not ring:
            return grown
        interior = -F.max_pool2d(-(cover >= 1.0).float(), 3, stride=1, padding=1)
        return grown - interior

    def _white_noise(self, shape: tuple[int, int], std: float, rng: np.random.Generator) -> F32:
        noise: F32 = np.float32(std) * rng.standard_normal(shape, dtype=np.float32)
        return noise

    def _distances(self, hard: NDArray[np.bool_]) -> tuple[F32, F32]:
        """``(outside, inside)``: each pixel's distance to the mask, and to the pixels off it."""
        outside = ndimage.distance_transform_edt(~hard).astype(np.float32)
        inside = ndimage.distance_transform_edt(hard).astype(np.float32)
        return outside, inside

    def generate(
        self,
        frame: np.ndarray,
        rng: np.random.Generator,
        *,
        strength: float | None = None,
        steps: int | None = None,
    ) -> np.ndarray:
        """A regenerated version of ``frame`` (SDEdit): same shape, dtype float32, physical units.

        Normalise, resize to ``image_size`` (area), noise to ``strength``
        (default ``config.strength``) of the trajectory, denoise with DDIM,
        resize back (bilinear), map back to physical units, then add noise
        matched to the input's estimated noise std. Deterministic given the
        state of ``rng``.
        """
        frame = check_frame(frame, "generate")
        strength = self.config.strength if strength is None else float(strength)
        scale = self.norm.scale_of(frame)
        with torch.inference_mode():
            y = self._denoise(
                self._to_model(frame, scale),
                rng,
                strength=strength,
                steps=self._steps(steps),
                eta=self.config.eta,
            )
        out: F32 = self._from_model(y, (frame.shape[0], frame.shape[1]), scale)[0]
        have, target = estimate_noise_std(out), estimate_noise_std(frame)
        extra = float(np.sqrt(max(target**2 - have**2, 0.0)))
        if extra > 0.0:
            out = out + self._white_noise(out.shape, extra, rng)
        return out.astype(np.float32, copy=False)

    def inpaint(
        self, frame: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, steps: int | None = None
    ) -> np.ndarray:
        """``frame`` with the region under ``mask`` replaced by generated tissue (RePaint).

        ``mask`` (bool, or 0..1 where > 0.05 counts) has the frame's shape.
        At the model's resolution the mask's footprint, grown by one pixel, is
        generated by a trajectory from noise (``config.sample_strength``),
        while the rest is held to the input. The result is resized back, given
        white noise of the input's estimated std, and composed with a
        feathered edge, ``w * generated + (1 - w) * frame`` with ``w`` 1 on the
        mask, falling linearly to 0 at ``config.feather + 1`` pixels from it:
        pixels that far or farther are returned exactly as they were.
        """
        frame = check_frame(frame, "inpaint")
        hard = _check_mask(mask, frame, "inpaint")
        scale = self.norm.scale_of(frame)
        known = self._to_model(frame, scale)
        keep = 1.0 - self._mask_to_model(hard)
        start = keep * known + (1.0 - keep) * self.model.mean_image
        with torch.inference_mode():
            y = self._denoise(
                start,
                rng,
                strength=self.config.sample_strength,
                steps=self._steps(steps),
                eta=self.config.eta,
                known=known,
                keep=keep,
            )
        shape = (frame.shape[0], frame.shape[1])
        generated = self._from_model(y, shape, scale)[0] + self._white_noise(
            shape, estimate_noise_std(frame), rng
        )
        outside, _ = self._distances(hard)
        reach = self.config.feather + 1.0
        w = np.clip(1.0 - outside / np.float32(reach), 0.0, 1.0)
        out = np.where(outside < reach, w * generated + (1.0 - w) * frame, frame)
        return out.astype(np.float32, copy=False)

    def inject(
        self,
        frame: np.ndarray,
        mask: np.ndarray,
        rng: np.random.Generator,
        lesion_value: float,
        *,
        strength: float | None = None,
        steps: int | None = None,
    ) -> np.ndarray:
        """``frame`` with a lesion of physical intensity ``lesion_value`` added under ``mask``.

        The lesion is a blend towards ``lesion_value`` whose weight rises from
        0 at the mask's edge to 1 within ``config.feather`` pixels (or half the
        mask's inner radius), modulated by a smooth random texture (0.8 to 1),
        with white noise restoring the input's noise level where the blend
        flattened it. The model then harmonises the blend: an SDEdit pass from
        ``strength`` (default ``config.inject_strength``) over the ring of
        model pixels along the mask's edge, the rest (the lesion's interior
        too) held to the blend as in ``inpaint``. Its output
        (with matched noise) replaces the blend in a ring ``config.feather + 1``
        pixels wide either side of the mask's edge, with a weight falling
        linearly from the edge, so the lesion's core stays as blended and its
        border is the model's. Pixels ``config.feather + 1`` or more from the
        mask are returned exactly as they were.
        """
        frame = check_frame(frame, "inject")
        hard = _check_mask(mask, frame, "inject")
        if not math.isfinite(lesion_value):
            raise ValueError(f"inject expects a finite lesion_value, got {lesion_value}")
        strength = self.config.inject_strength if strength is None else float(strength)
        shape = (frame.shape[0], frame.shape[1])
        outside, inside = self._distances(hard)
        ramp = max(min(self.config.feather, 0.5 * float(inside.max())), 1.0)
        coarse = torch.from_numpy(rng.uniform(0.8, 1.0, size=(1, 1, 6, 6)).astype(np.float32))
        texture = F.interpolate(coarse, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        alpha = np.clip(inside / np.float32(ramp), 0.0, 1.0) * texture
        sigma = estimate_noise_std(frame)
        blended = frame + alpha * (np.float32(lesion_value) - frame)
        restore = np.sqrt(np.clip(1.0 - (1.0 - alpha) ** 2, 0.0, 1.0))
        blended = blended + restore * self._white_noise(shape, sigma, rng)
        scale = self.norm.scale_of(frame)
        start = self._to_model(blended, scale)
        keep = 1.0 - self._mask_to_model(hard, ring=True)
        with torch.inference_mode():
            y = self._denoise(
                start,
                rng,
                strength=strength,
                steps=self._steps(steps),
                eta=self.config.eta,
                known=start,
                keep=keep,
            )
        generated = self._from_model(y, shape, scale)[0] + self._white_noise(shape, sigma, rng)
        reach = self.config.feather + 1.0
        band = np.clip(1.0 - np.where(hard, inside - 1.0, outside) / np.float32(reach), 0.0, 1.0)
        out = np.where(outside < reach, band * generated + (1.0 - band) * blended, frame)
        return out.astype(np.float32, copy=False)

    def sample(
        self,
        n: int,
        rng: np.random.Generator,
        *,
        shape: tuple[int, int] | None = None,
        noise_std: float = 0.0,
        steps: int | None = None,
    ) -> np.ndarray:
        """``n`` frames drawn by DDIM from noise, (n, H, W) float32 in physical units.

        The trajectory starts at ``config.sample_strength`` from the training
        mean and uses ``config.sample_eta``. The physical scale is
        ``norm.reference``; ``shape`` defaults to ``(image_size, image_size)``
        (bilinear otherwise); ``noise_std`` (in physical units) adds white
        acquisition noise.
        """
        if n < 1:
            raise ValueError(f"sample needs n >= 1, got {n}")
        s = self.config.image_size
        out_shape: tuple[int, int] = (int(shape[0]), int(shape[1])) if shape is not None else (s, s)
        start = self.model.mean_image.expand(n, 1, s, s).contiguous()
        with torch.inference_mode():
            y = self._denoise(
                start,
                rng,
                strength=self.config.sample_strength,
                steps=self._steps(steps),
                eta=self.config.sample_eta,
            )
        out = self._from_model(y, out_shape, self.norm.reference)
        if noise_std > 0.0:
            out = out + np.float32(noise_std) * rng.standard_normal(out.shape, dtype=np.float32)
        return out.astype(np.float32, copy=False)

    def metadata(self) -> dict[str, Any]:
        """What is stored next to the weights (``diffusion-<kind>.json``)."""
        return {
            "kind": self.kind.value,
            "family": "diffusion",
            "config": self.config.to_dict(),
            "normalisation": self.norm.to_dict(),
            "training": self.training,
        }
