"""Training, saving and loading of the GAN generators, and the command that makes the shipped weights.

Usage (from the repository root, CPU, one thread: about 6-7 minutes per kind)::

    python -m fusion.generators.train_gan --kind chest-dx --out fusion/generators/weights
    python -m fusion.generators.train_gan --kind chest-ct --out fusion/generators/weights
    python -m fusion.generators.train_gan --kind brain-mr --out fusion/generators/weights

Options: ``--steps N`` optimiser steps (default per kind, see
``_DEFAULT_STEPS``), ``--frames-from-studies N`` studies of the kind to render
(default per kind, see ``_DEFAULT_STUDIES``), ``--slices K`` slices kept per
CT/MR study, ``--seed S`` (default 0), ``--threads T`` (torch threads, default
1: the machine is shared), ``--batch-size``, ``-q`` / ``--quiet`` (no
progress bar).

The training frames are the un-manipulated phantom renders of
`fusion.generators.train_vae.collect_frames`, brought to the model's
resolution by area averaging. It writes ``<out>/gan-<kind>.safetensors`` (the
generator's state dict; the discriminator is not kept) and
``<out>/gan-<kind>.json`` (config, normalisation, training summary with the
command), and is deterministic given ``--seed`` and ``--threads`` on CPU.

Training: hinge loss against a spectrally normalised discriminator with a
minibatch standard-deviation channel (against mode collapse), Adam (lr 2e-4,
betas (0.5, 0.999)) for both, one discriminator step per generator step,
random translations by a few pixels of both real and generated images in
front of the discriminator (differentiable, so the generator is not pushed to
draw them; a DiffAugment-style guard against a critic that memorises a few
hundred frames), and an exponential moving average of the generator's
weights, which is what ships, its BatchNorm statistics recomputed at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusion.cohort.scenario import StudyKind
from fusion.errors import TrainingDataError
from fusion.generators.gan import ConvDiscriminator, ConvGenerator, GanConfig, GanGenerator
from fusion.generators.store import CachedLoader, family_weights_paths, write_weights
from fusion.generators.train_vae import collect_frames, unit_batch
from fusion.generators.vae import IntensityNorm

__all__ = [
    "TRAIN_COMMAND",
    "discriminator_loss",
    "gan_weights_paths",
    "generator_loss",
    "load_gan",
    "main",
    "save_gan",
    "train_gan",
]

logger = logging.getLogger(__name__)

TRAIN_COMMAND = "python -m fusion.generators.train_gan --kind {kind} --out fusion/generators/weights"

_DEFAULT_STUDIES = {StudyKind.CHEST_DX: 300, StudyKind.CHEST_CT: 80, StudyKind.BRAIN_MR: 80}
_DEFAULT_STEPS = {StudyKind.CHEST_DX: 2000, StudyKind.CHEST_CT: 2000, StudyKind.BRAIN_MR: 2000}
_LOSS_WINDOW = 100  # steps averaged into the reported final losses


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the generator: -mean D(fake)."""
    return -fake_scores.mean()


def _translate(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by whole pixels in [-max_shift, max_shift], edges replicated; differentiable."""
    if max_shift < 1:
        return x
    n, _, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen, device=x.device)
    theta = torch.zeros((n, 2, 3), device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shifts[:, 0].to(x.dtype) * 2.0 / w
    theta[:, 1, 2] = shifts[:, 1].to(x.dtype) * 2.0 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


@torch.no_grad()
def _ema_update(ema: ConvGenerator, model: ConvGenerator, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)


@torch.no_grad()
def _recalibrate_batchnorm(model: ConvGenerator, gen: torch.Generator, device: torch.device) -> None:
    """Recompute the BatchNorm running statistics of ``model`` (the EMA weights) from fresh latents."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    model.train()
    for _ in range(16):
        model(torch.randn((64, model.config.latent_dim), generator=gen, device=device))
    model.eval()


def train_gan(
    kind: StudyKind | str,
    frames: np.ndarray,
    *,
    config: GanConfig | None = None,
    steps: int = 2000,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    ema_decay: float = 0.999,
    max_shift: int | None = None,
) -> GanGenerator:
    """Train a ``ConvGenerator`` against a ``ConvDiscriminator`` on ``frames`` (N, H, W), physical units.

    Returns the exponential moving average of the generator (``ema_decay``)
    wrapped with the kind's normalisation; ``generator.training`` holds the
    summary (final losses are means over the last steps). ``max_shift`` is
    the translation augmentation in pixels at the model's resolution
    (default ``image_size // 16``; 0 turns it off). Deterministic given
    ``seed`` (and the torch thread count) on CPU.
    """
    kind = StudyKind(kind)
    config = config or GanConfig()
    frames = np.asarray(frames)
    if frames.ndim != 3 or len(frames) == 0:
        raise TrainingDataError(f"train_gan needs frames of shape (N, H, W) with N >= 1, got {frames.shape}")
    if not np.all(np.isfinite(frames)):
        raise TrainingDataError("train_gan got frames with NaN or inf values")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    shift = config.image_size // 16 if max_shift is None else max_shift
    dev = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    noise_gen = torch.Generator(device=dev).manual_seed(seed)

    data, norm = unit_batch(frames, StudyKind(kind), config.image_size)
    data = data.to(dev)

    model = ConvGenerator(config).to(dev)
    critic = ConvDiscriminator(config).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt_g = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"gan {kind.value}", unit="step")
    history = np.zeros((steps, 4))  # d_loss, g_loss, mean D(real), mean D(fake)
    started = time.perf_counter()
    model.train()
    critic.train()
    for step in range(steps):
        real = data[torch.from_numpy(rng.integers(0, len(data), batch_size)).to(dev)]
        z = torch.randn((batch_size, config.latent_dim), generator=noise_gen, device=dev)
        fake = model(z)
        real_scores = critic(_translate(real, shift, noise_gen))  # separate calls: see _minibatch_std
        fake_scores = critic(_translate(fake.detach(), shift, noise_gen))
        d_loss = discriminator_loss(real_scores, fake_scores)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()  # type: ignore[no-untyped-call]
        opt_d.step()

        critic.requires_grad_(False)  # the generator step needs gradients through D, not of D
        g_loss = generator_loss(critic(_translate(fake, shift, noise_gen)))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()  # type: ignore[no-untyped-call]
        opt_g.step()
        critic.requires_grad_(True)
        _ema_update(ema, model, ema_decay if step >= 100 else 0.0)  # follow closely at first

        history[step] = [float(t.detach().mean()) for t in (d_loss, g_loss, real_scores, fake_scores)]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(d=f"{history[step, 0]:.3f}", g=f"{history[step, 1]:.3f}")
    if bar is not None:
        bar.close()
    _recalibrate_batchnorm(ema, noise_gen, dev)
    last = history[-_LOSS_WINDOW:].mean(axis=0)
    summary = {
        "frames": len(data),
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "lr": lr,
        "ema_decay": ema_decay,
        "max_shift": shift,
        "seconds": round(time.perf_counter() - started, 1),
        "final_discriminator_loss": round(float(last[0]), 4),
        "final_generator_loss": round(float(last[1]), 4),
        "final_real_score": round(float(last[2]), 4),
        "final_fake_score": round(float(last[3]), 4),
        "loss": (
            f"hinge, spectral-norm discriminator; final values are means over the last {_LOSS_WINDOW} steps"
        ),
    }
    logger.info("trained GAN for %s: %s", kind.value, summary)
    ema = ema.cpu().eval().requires_grad_(False)
    return GanGenerator(ema, kind, norm, training=summary)


def gan_weights_paths(kind: StudyKind | str, weights_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``(safetensors, json)`` paths of the GAN for ``kind`` (shipped dir unless ``weights_dir``)."""
    return family_weights_paths("gan", kind, weights_dir)


def save_gan(gen: GanGenerator, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` (generator state dict) and ``<stem>.json``; returns both paths."""
    return write_weights(path_stem, gen.model.state_dict(), gen.metadata(), kind=gen.kind, family="gan")


def _build(kind: StudyKind, meta: dict[str, Any], state: dict[str, Any]) -> GanGenerator:
    model = ConvGenerator(GanConfig.from_dict(meta["config"]))
    model.load_state_dict(state)
    model.requires_grad_(False)
    return GanGenerator(
        model, kind, IntensityNorm.from_dict(meta["normalisation"]), training=meta.get("training")
    )


_LOADER = CachedLoader("gan", "GAN", TRAIN_COMMAND, _build)


def load_gan(kind: StudyKind | str, weights_dir: str | Path | None = None) -> GanGenerator:
    """The trained GAN generator for ``kind``, cached per process.

    Raises ``GeneratorWeightsMissing`` (a ``FileNotFoundError``) when the
    weights are absent, naming the command that trains them, and
    ``ModelBundleError`` when they are present but unreadable. The returned
    generator is shared: treat it as read-only.
    """
    return _LOADER(kind, weights_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusion.generators.train_gan", description="Train the GAN generator of one study kind."
    )
    parser.add_argument("--kind", required=True, choices=[k.value for k in StudyKind])
    parser.add_argument("--out", default="fusion/generators/weights", help="weights folder")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default per kind)")
    parser.add_argument(
        "--frames-from-studies",
        type=int,
        default=None,
        help="studies of the kind to render (default per kind)",
    )
    parser.add_argument("--slices", type=int, default=6, help="slices kept per CT/MR study")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machine)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    kind = StudyKind(args.kind)
    studies = args.frames_from_studies if args.frames_from_studies is not None else _DEFAULT_STUDIES[kind]
    steps = args.steps if args.steps is not None else _DEFAULT_STEPS[kind]
    started = time.perf_counter()
    frames = collect_frames(kind, studies, args.slices, args.seed)
    logger.info("rendering took %.0f s", time.perf_counter() - started)
    gen = train_gan(
        kind,
        frames,
        steps=steps,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.quiet,
    )
    gen.training["studies"] = studies
    gen.training["threads"] = args.threads
    gen.training["command"] = shlex.join(["python", "-m", "fusion.generators.train_gan", *argv])
    weights, meta = save_gan(gen, Path(args.out) / f"gan-{kind.value}")
    print(f"wrote {weights} ({weights.stat().st_size / 1e3:.0f} kB) and {meta}: {json.dumps(gen.training)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
