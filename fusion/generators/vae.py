"""A small convolutional VAE: the first family of synthetic-image generators.

The simulator uses it to make ``Manipulation.SYNTHETIC`` negatives: a phantom
frame goes in, a frame of the same shape and physical units comes out that was
decoded by a generative model (``VaeGenerator.generate``), or a frame is drawn
from the model's prior alone (``VaeGenerator.sample``).

The decoder upsamples with strided transposed convolutions on purpose: they
leave the periodic checkerboard / upsampling traces that real generators leave
and that the forensic branch is meant to find. The generator then adds
acquisition-like noise matched to the input's own noise level, so that a
detector cannot win on noise level alone.

Pieces:

- ``VaeConfig``: the architecture (JSON-serialisable, stored next to weights);
- ``IntensityNorm``: per-kind mapping between physical units and [0, 1]
  (CT: fixed HU window; DX and MR: per-frame percentiles);
- ``ConvVae``: the ``nn.Module`` (``encode`` / ``decode`` / ``forward``);
- ``VaeGenerator``: model + normalisation, numpy in, numpy out.

Constructors do no I/O; weights are loaded by `fusion.generators.load_generator`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from fusion.cohort.scenario import StudyKind
from fusion.errors import ModelBundleError

__all__ = [
    "ConvVae",
    "GeneratorWeightsMissing",
    "IntensityNorm",
    "VaeConfig",
    "VaeGenerator",
    "add_matched_noise",
    "check_frame",
    "estimate_noise_std",
    "resize",
]

logger = logging.getLogger(__name__)

# 5-point Laplacian; for white noise of std s its response has std s * sqrt(20).
_LAPLACIAN_GAIN = float(np.sqrt(20.0))
_MAD_TO_STD = 1.4826


class GeneratorWeightsMissing(ModelBundleError, FileNotFoundError, RuntimeError):
    """The weights of a generator are not where they should be.

    A ``FileNotFoundError`` (and a ``RuntimeError``) so callers that guard on
    either catch it; the message names the command that trains the weights.
    """


@dataclass(frozen=True)
class VaeConfig:
    """Architecture of ``ConvVae``.

    The encoder halves the resolution ``depth`` times with strided 4x4
    convolutions (channels ``base_channels * 2**i``), the latent map is
    ``latent_channels`` x ``image_size / 2**depth`` squared; the decoder
    mirrors it with 4x4 stride-2 transposed convolutions and a sigmoid.
    """

    image_size: int = 256
    base_channels: int = 16
    latent_channels: int = 4
    depth: int = 3

    def __post_init__(self) -> None:
        if self.depth < 1 or self.base_channels < 1 or self.latent_channels < 1:
            raise ValueError(f"VaeConfig needs depth, base_channels, latent_channels >= 1: {self}")
        if self.image_size % (2**self.depth):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**depth = {2**self.depth}")

    @property
    def latent_size(self) -> int:
        return self.image_size >> self.depth

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VaeConfig:
        return cls(**{k: int(data[k]) for k in ("image_size", "base_channels", "latent_channels", "depth")})


@dataclass(frozen=True)
class IntensityNorm:
    """Mapping between physical units and the model's [0, 1].

    ``mode="window"``: fixed window ``[low, high]`` (CT, in HU).
    ``mode="percentile"``: per frame, the ``low``/``high`` percentiles map to
    0 and 1 and are remembered to map back (DX, MR). ``reference`` is the
    typical (median over the training frames) physical ``(low, high)`` used
    when sampling from the prior, where no input frame gives the scale.
    """

    mode: str
    low: float
    high: float
    reference: tuple[float, float] = field(default=(0.0, 1.0))

    def __post_init__(self) -> None:
        if self.mode not in ("window", "percentile"):
            raise ValueError(f"IntensityNorm mode must be 'window' or 'percentile', not {self.mode!r}")
        if not self.high > self.low:
            raise ValueError(f"IntensityNorm needs high > low, got {self.low}, {self.high}")

    @classmethod
    def for_kind(cls, kind: StudyKind | str) -> IntensityNorm:
        kind = StudyKind(kind)
        if kind is StudyKind.CHEST_CT:
            return cls(mode="window", low=-1024.0, high=1500.0, reference=(-1024.0, 1500.0))
        return cls(mode="percentile", low=0.5, high=99.5)

    def scale_of(self, frame: np.ndarray) -> tuple[float, float]:
        """Physical ``(lo, hi)`` that map to 0 and 1 for this frame."""
        if self.mode == "window":
            return self.low, self.high
        lo, hi = np.percentile(frame, [self.low, self.high])
        if not hi > lo:  # a flat frame: any positive span keeps it flat
            hi = lo + 1.0
        return float(lo), float(hi)

    def to_unit(self, frame: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
        lo, hi = scale
        unit: np.ndarray = np.clip((frame.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
        return unit

    def from_unit(self, unit: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
        lo, hi = scale
        return (unit * (hi - lo) + lo).astype(np.float32)

    def with_reference(self, reference: tuple[float, float]) -> IntensityNorm:
        return IntensityNorm(self.mode, self.low, self.high, (float(reference[0]), float(reference[1])))

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "low": self.low, "high": self.high, "reference": list(self.reference)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntensityNorm:
        ref = data.get("reference", (0.0, 1.0))
        return cls(str(data["mode"]), float(data["low"]), float(data["high"]), (float(ref[0]), float(ref[1])))


def estimate_noise_std(frame: np.ndarray, *, max_pixels: int = 65536) -> float:
    """Std of the white noise in ``frame``: MAD of its Laplacian residual.

    Robust to edges and smooth anatomy (they occupy few pixels of the
    residual); biased upwards on heavily textured images. The median is taken
    over a regular subgrid of at most about ``max_pixels`` residual values.
    """
    f = np.asarray(frame, dtype=np.float32)
    if f.ndim != 2 or min(f.shape) < 3:
        raise ValueError(f"estimate_noise_std expects an (H, W) frame of at least 3x3, got {f.shape}")
    step = max(1, int(np.sqrt(f.size / max_pixels)))
    c = f[1:-1:step, 1:-1:step]
    resid = (
        f[:-2:step, 1:-1:step]
        + f[2::step, 1:-1:step]
        + f[1:-1:step, :-2:step]
        + f[1:-1:step, 2::step]
        - 4.0 * c
    )
    mad = float(np.median(np.abs(resid - np.median(resid))))
    return _MAD_TO_STD * mad / _LAPLACIAN_GAIN


def check_frame(frame: np.ndarray, what: str, min_size: int = 8) -> NDArray[np.float32]:
    """``frame`` as float32 if it is one finite (H, W) frame of at least ``min_size`` squared; else
    ValueError naming ``what`` (the function that was given it)."""
    frame = np.asarray(frame)
    if frame.ndim != 2 or min(frame.shape) < min_size:
        raise ValueError(
            f"{what} expects one (H, W) frame of at least {min_size}x{min_size}, got shape {frame.shape}"
        )
    if not np.all(np.isfinite(frame)):
        raise ValueError(f"{what} expects a finite frame (NaN or inf found)")
    return frame.astype(np.float32, copy=False)


def add_matched_noise(out: np.ndarray, target_std: float, rng: np.random.Generator) -> np.ndarray:
    """``out`` plus white noise bringing its estimated noise std up to ``target_std`` (never down)."""
    extra = float(np.sqrt(max(target_std**2 - estimate_noise_std(out) ** 2, 0.0)))
    if extra > 0.0:
        out = out + np.float32(extra) * rng.standard_normal(out.shape, dtype=np.float32)
    return out


class ConvVae(nn.Module):
    """Convolutional VAE on single-channel ``image_size`` squared images in [0, 1]."""

    prior_mean: torch.Tensor
    prior_std: torch.Tensor

    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        self.config = config
        chans = [config.base_channels * 2**i for i in range(config.depth)]
        enc: list[nn.Module] = []
        c_in = 1
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.SiLU()]
            c_in = c
        self.encoder = nn.Sequential(*enc)
        self.to_latent = nn.Conv2d(c_in, 2 * config.latent_channels, 3, padding=1)
        dec: list[nn.Module] = [nn.Conv2d(config.latent_channels, c_in, 3, padding=1), nn.SiLU()]
        for c in reversed(chans[:-1]):
            dec += [nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1), nn.SiLU()]
            c_in = c
        dec += [nn.ConvTranspose2d(c_in, 1, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec)
        # Per-position statistics of the posterior means over the training set;
        # the prior ``sample`` draws from (a small-beta VAE's posterior is far from N(0, I)).
        shape = (config.latent_channels, config.latent_size, config.latent_size)
        self.register_buffer("prior_mean", torch.zeros(shape))
        self.register_buffer("prior_std", torch.ones(shape))

    def _check(self, x: torch.Tensor) -> None:
        s = self.config.image_size
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"ConvVae expects (B, 1, {s}, {s}) input, got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, logvar)``, each (B, latent_channels, latent_size, latent_size)."""
        self._check(x)
        h = self.to_latent(self.encoder(x))
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1], (B, 1, image_size, image_size)."""
        return torch.sigmoid(self.decoder(z))

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction, mean, logvar)``; ``noise`` is the reparameterisation eps (zeros if None)."""
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + noise * torch.exp(0.5 * logvar)
        return self.decode(z), mean, logvar


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area averaging when shrinking both axes (no aliasing), bilinear otherwise."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if size[0] <= h and size[1] <= w:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class VaeGenerator:
    """A trained ``ConvVae`` with its per-kind intensity normalisation.

    ``temperature`` scales the posterior noise in ``generate`` (0: the
    posterior mean, a plain reconstruction). ``match_noise`` adds Gaussian
    noise so the output's noise std matches the input's.
    """

    def __init__(
        self,
        model: ConvVae,
        kind: StudyKind | str,
        norm: IntensityNorm | None = None,
        *,
        temperature: float = 0.7,
        match_noise: bool = True,
        training: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.kind = StudyKind(kind)
        self.norm = norm if norm is not None else IntensityNorm.for_kind(self.kind)
        self.temperature = float(temperature)
        self.match_noise = match_noise
        self.training = dict(training) if training else {}

    @property
    def config(self) -> VaeConfig:
        return self.model.config

    def _latent_noise(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        c = self.config
        eps = rng.standard_normal((n, c.latent_channels, c.latent_size, c.latent_size), dtype=np.float32)
        return torch.from_numpy(eps)

    def generate(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A generated version of ``frame``: same shape, dtype float32, physical units.

        Normalise, resize to ``image_size`` (area), encode, draw the latent at
        ``temperature``, decode, resize back (bilinear), map back to physical
        units, then add noise matched to the input's estimated noise std.
        Deterministic given the state of ``rng``.
        """
        frame = check_frame(frame, "generate")
        scale = self.norm.scale_of(frame)
        s = self.config.image_size
        x = torch.from_numpy(self.norm.to_unit(frame, scale))[None, None]
        eps = self._latent_noise(rng, 1)
        with torch.inference_mode():
            mean, logvar = self.model.encode(resize(x, (s, s)))
            z = mean + self.temperature * eps * torch.exp(0.5 * logvar)
            y = resize(self.model.decode(z), (frame.shape[0], frame.shape[1]))
        out = self.norm.from_unit(y[0, 0].numpy(), scale)
        if self.match_noise:
            out = add_matched_noise(out, estimate_noise_std(frame), rng)
        return out.astype(np.float32, copy=False)

    def sample(
        self,
        n: int,
        rng: np.random.Generator,
        *,
        shape: tuple[int, int] | None = None,
        noise_std: float = 0.0,
    ) -> np.ndarray:
        """``n`` frames drawn from the prior, (n, H, W) float32 in physical units.

        The latent is drawn from the per-position Gaussian fitted to the
        training posteriors; the physical scale is ``norm.reference``.
        ``shape`` defaults to ``(image_size, image_size)``; ``noise_std`` (in
        physical units) adds white acquisition noise.
        """
        if n < 1:
            raise ValueError(f"sample needs n >= 1, got {n}")
        s = self.config.image_size
        out_shape: tuple[int, int] = (int(shape[0]), int(shape[1])) if shape is not None else (s, s)
        eps = self._latent_noise(rng, n)
        with torch.inference_mode():
            z = self.model.prior_mean + eps * self.model.prior_std
            y = resize(self.model.decode(z), out_shape)
        out = self.norm.from_unit(y[:, 0].numpy(), self.norm.reference)
        if noise_std > 0.0:
            out = out + np.float32(noise_std) * rng.standard_normal(out.shape, dtype=np.float32)
        return out.astype(np.float32, copy=False)

    def metadata(self) -> dict[str, Any]:
        """What is stored next to the weights (``vae-<kind>.json``)."""
        return {
            "kind": self.kind.value,
            "config": self.config.to_dict(),
            "normalisation": self.norm.to_dict(),
            "temperature": self.temperature,
            "training": self.training,
        }
