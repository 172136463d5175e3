"""A small DCGAN: the adversarial family of synthetic-image generators.

Where the VAE (`fusion.generators.vae`) re-decodes the frame it is given, the
GAN draws a whole new frame from noise: ``GanGenerator.generate`` keeps only
the input's shape, intensity scale and noise level, and ``GanGenerator.sample``
draws frames at the training set's typical scale. The images come from a
generator network trained against a discriminator on phantom renders, so they
carry the traces adversarial training leaves (transposed-convolution
checkerboards, the low native resolution brought up by bilinear resizing)
rather than the VAE's blur.

Pieces:

- ``GanConfig``: the architecture of both networks (JSON-serialisable,
  stored next to the weights);
- ``ConvGenerator``: the DCGAN generator ``nn.Module``, latent vector in,
  image in [0, 1] out (the only network shipped);
- ``ConvDiscriminator``: the spectrally normalised critic used in training;
- ``GanGenerator``: generator network + normalisation, numpy in, numpy out.

Constructors do no I/O; weights are loaded by `fusion.generators.train_gan.load_gan`
and written by `fusion.generators.train_gan.save_gan`.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from fusion.cohort.scenario import StudyKind
from fusion.generators.vae import IntensityNorm, add_matched_noise, check_frame, estimate_noise_std, resize

__all__ = ["ConvDiscriminator", "ConvGenerator", "GanConfig", "GanGenerator"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GanConfig:
    """Architecture of ``ConvGenerator`` and ``ConvDiscriminator``.

    The generator maps a ``latent_dim`` Gaussian vector to a ``start_size``
    squared map (one transposed convolution), then doubles the resolution
    ``depth`` times with 4x4 stride-2 transposed convolutions (BatchNorm +
    ReLU between; one channel and a sigmoid at the end). Its channels halve
    at each doubling down to ``base_channels`` at half the output resolution,
    capped at ``max_channels``: the cap keeps the shipped weights small (the
    parameters sit in the first, low-resolution layers) while leaving width
    where the detail is drawn. The discriminator mirrors it with strided 4x4
    convolutions of ``disc_channels * 2**i`` channels, then a minibatch
    standard-deviation channel and a ``start_size`` convolution to one score;
    every convolution is spectrally normalised.
    """

    image_size: int = 64
    latent_dim: int = 32
    base_channels: int = 16
    max_channels: int = 64
    depth: int = 4
    disc_channels: int = 24

    def __post_init__(self) -> None:
        sizes = (self.depth, self.latent_dim, self.base_channels, self.max_channels, self.disc_channels)
        if min(sizes) < 1:
            raise ValueError(f"GanConfig needs every size >= 1: {self}")
        if self.image_size % (2**self.depth) or self.image_size >> self.depth < 2:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 2**depth = {2**self.depth} "
                "leaving a start map of at least 2x2"
            )

    @property
    def start_size(self) -> int:
        return self.image_size >> self.depth

    @property
    def generator_channels(self) -> tuple[int, ...]:
        """Channels of the generator's maps, from ``start_size`` up to half of ``image_size``."""
        return tuple(
            min(self.base_channels * 2 ** (self.depth - 1 - i), self.max_channels) for i in range(self.depth)
        )

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GanConfig:
        keys = ("image_size", "latent_dim", "base_channels", "max_channels", "depth", "disc_channels")
        return cls(**{k: int(data[k]) for k in keys})


class ConvGenerator(nn.Module):
    """DCGAN generator: (B, latent_dim) Gaussian vectors -> (B, 1, image_size, image_size) in [0, 1]."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        chans = config.generator_channels
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.latent_dim, chans[0], config.start_size, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(),
        ]
        for c_in, c_out in itertools.pairwise(chans):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
        layers.append(nn.ConvTranspose2d(chans[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(
                f"ConvGenerator expects (B, {self.config.latent_dim}) latents, got {tuple(z.shape)}"
            )
        return torch.sigmoid(self.net(z[:, :, None, None]))


class ConvDiscriminator(nn.Module):
    """Spectrally normalised DCGAN critic: (B, 1, image_size, image_size) in [0, 1] -> (B,) scores."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 1
        for i in range(config.depth):
            c_out = config.disc_channels * 2**i
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Conv2d(c_in + 1, 1, config.start_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of a batch of images that are all real or all generated (see ``_minibatch_std``)."""
        s = self.config.image_size
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"ConvDiscriminator expects (B, 1, {s}, {s}) input, got {tuple(x.shape)}")
        h = self.net(2.0 * x - 1.0)
        score: torch.Tensor = self.head(torch.cat([h, _minibatch_std(h)], dim=1)).flatten()
        return score


def _minibatch_std(h: torch.Tensor, group: int = 4) -> torch.Tensor:
    """ProGAN's minibatch standard deviation, one (B, 1, H, W) channel.

    The mean over features of the std across groups of ``group`` samples
    (fewer when the batch does not divide): a critic that sees it can tell a
    batch of near-identical images, which discourages mode collapse. It
    mixes the samples of a group, so real and generated images go through
    the critic in separate calls.
    """
    n, c, hh, ww = h.shape
    g = min(group, n)
    while n % g:
        g -= 1
    y = h.reshape(g, n // g, c, hh, ww)
    std = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # (n // g,)
    return std.repeat(g)[:, None, None, None].expand(n, 1, hh, ww)


class GanGenerator:
    """A trained ``ConvGenerator`` with its per-kind intensity normalisation.

    ``match_noise`` adds Gaussian noise to ``generate``'s output so that its
    noise std matches the input's. ``training`` is the training summary stored
    next to the weights.
    """

    def __init__(
        self,
        model: ConvGenerator,
        kind: StudyKind | str,
        norm: IntensityNorm | None = None,
        *,
        match_noise: bool = True,
        training: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.kind = StudyKind(kind)
        self.norm = norm if norm is not None else IntensityNorm.for_kind(self.kind)
        self.match_noise = match_noise
        self.training = dict(training) if training else {}

    @property
    def config(self) -> GanConfig:
        return self.model.config

    def _draw(self, rng: np.random.Generator, n: int, shape: tuple[int, int]) -> torch.Tensor:
        """``n`` images in [0, 1] at ``shape``, latents drawn from ``rng``; (n, 1, H, W)."""
        z = torch.from_numpy(rng.standard_normal((n, self.config.latent_dim), dtype=np.float32))
        with torch.inference_mode():
            return resize(self.model(z), shape)

    def generate(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A new frame in the place of ``frame``: same shape, dtype float32, physical units.

        Draws a latent from ``rng``, runs the generator, resizes the image to
        the frame's shape (bilinear), maps it to the frame's intensity scale
        (``norm.scale_of(frame)``) and adds white noise so that the noise
        std matches the input's. Nothing of the input's content is kept.
        Deterministic given the state of ``rng``.
        """
        frame = check_frame(frame, "generate")
        scale = self.norm.scale_of(frame)
        y = self._draw(rng, 1, (frame.shape[0], frame.shape[1]))
        out = self.norm.from_unit(y[0, 0].numpy(), scale)
        if self.match_noise:
            out = add_matched_noise(out, estimate_noise_std(frame), rng)
        return out.astype(np.float32, copy=False)

    def sample(
        self,
        n: int,
        rng: np.random.Generator,
        shape: tuple[int, int] | None = None,
        noise_std: float = 0.0,
    ) -> np.ndarray:
        """``n`` frames, (n, H, W) float32 in physical units at the scale ``norm.reference``.

        ``shape`` defaults to ``(image_size, image_size)``; ``noise_std`` (in
        physical units) adds white acquisition noise.
        """
        if n < 1:
            raise ValueError(f"sample needs n >= 1, got {n}")
        s = self.config.image_size
        out_shape: tuple[int, int] = (int(shape[0]), int(shape[1])) if shape is not None else (s, s)
        if min(out_shape) < 1:
            raise ValueError(f"sample needs a positive shape, got {out_shape}")
        y = self._draw(rng, n, out_shape)
        out = self.norm.from_unit(y[:, 0].numpy(), self.norm.reference)
        if noise_std > 0.0:
            out = out + np.float32(noise_std) * rng.standard_normal(out.shape, dtype=np.float32)
        return out.astype(np.float32, copy=False)

    def metadata(self) -> dict[str, Any]:
        """What is stored next to the weights (``gan-<kind>.json``)."""
        return {
            "family": "gan",
            "kind": self.kind.value,
            "config": self.config.to_dict(),
            "normalisation": self.norm.to_dict(),
            "training": self.training,
        }
