"""Training of the diffusion generators, their weights on disk, and the command that makes them.

Usage (from the repository root, CPU, one torch thread, about 6-7 minutes per kind)::

    python -m fusion.generators.train_diffusion --kind chest-dx --out fusion/generators/weights
    python -m fusion.generators.train_diffusion --kind chest-ct --out fusion/generators/weights
    python -m fusion.generators.train_diffusion --kind brain-mr --out fusion/generators/weights

Options: ``--steps N`` optimiser steps (default per kind, see
``_DEFAULT_STEPS``), ``--frames-from-studies N`` studies of the kind to render
(default per kind, see ``_DEFAULT_STUDIES``), ``--slices K`` slices kept per
CT/MR study (default 8), ``--batch-size``, ``--lr``, ``--seed S`` (default 0),
``--threads T`` (torch threads, default 1: the machine is shared), ``-q``
(no progress bar).

The training frames are the simulated cohort's un-manipulated studies, rendered
by `fusion.generators.train_vae.collect_frames` exactly as for the VAE. The
command writes ``<out>/diffusion-<kind>.safetensors`` (the UNet's state dict,
stored as float16 to keep the file small; the trained model is rounded to the
same values, so a saved and reloaded generator gives identical outputs) and
``<out>/diffusion-<kind>.json`` (config, normalisation, training summary with
the command). It is deterministic given ``--seed`` and ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusion.cohort.scenario import StudyKind
from fusion.errors import TrainingDataError
from fusion.generators.diffusion import DiffusionConfig, DiffusionGenerator, DiffusionUNet, NoiseSchedule
from fusion.generators.store import CachedLoader, family_weights_paths, write_weights
from fusion.generators.train_vae import collect_frames, unit_batch
from fusion.generators.vae import IntensityNorm

__all__ = [
    "TRAIN_COMMAND",
    "diffusion_weights_paths",
    "load_diffusion",
    "main",
    "save_diffusion",
    "train_diffusion",
]

logger = logging.getLogger(__name__)

TRAIN_COMMAND = "python -m fusion.generators.train_diffusion --kind {kind} --out fusion/generators/weights"

_DEFAULT_STUDIES = {StudyKind.CHEST_DX: 300, StudyKind.CHEST_CT: 80, StudyKind.BRAIN_MR: 80}
_DEFAULT_STEPS = {StudyKind.CHEST_DX: 1000, StudyKind.CHEST_CT: 1000, StudyKind.BRAIN_MR: 1000}
_EVAL_STEPS = (50, 200, 400, 600, 800, 950)  # fixed noise levels of the validation loss (of 1000)


@torch.no_grad()
def _evaluate(
    model: DiffusionUNet, schedule: NoiseSchedule, data: torch.Tensor, device: torch.device, seed: int
) -> float:
    """Mean noise-prediction MSE over ``data`` at the fixed steps ``_EVAL_STEPS`` (fixed noise)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    total, count = 0.0, 0
    for frac in _EVAL_STEPS:
        step = min(round(frac / 1000 * schedule.timesteps), schedule.timesteps - 1)
        for i in range(0, len(data), 64):
            x0 = data[i : i + 64]
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.full((len(x0),), step, dtype=torch.long)
            xt = schedule.add_noise(x0, t, noise)
            total += float(F.mse_loss(model(xt.to(device), t.to(device)), noise.to(device))) * len(x0)
            count += len(x0)
    return total / max(count, 1)


def train_diffusion(
    kind: StudyKind | str,
    frames: np.ndarray,
    *,
    config: DiffusionConfig | None = None,
    steps: int = 1000,
    batch_size: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    lr: float = 2e-3,
    ema_decay: float = 0.995,
    val_fraction: float = 0.1,
) -> DiffusionGenerator:
    """Train a ``DiffusionUNet`` on ``frames`` (N, H, W) in physical units; return the generator.

    Noise prediction (MSE between the added and the predicted noise) at steps
    drawn uniformly; AdamW with a linear warm-up and a cosine decay; the
    returned model holds an exponential moving average of the weights
    (``ema_decay``) and the mean training image (where trajectories from
    noise start), rounded to float16 values as `save_diffusion` stores
    them. Deterministic given ``seed`` (and the torch thread count). A
    ``val_fraction`` of the frames (when there are at least 10) is held out;
    the final training loss (mean of the last 50 steps) and the held-out loss
    at fixed noise levels are in ``generator.training``.
    """
    kind = StudyKind(kind)
    config = config or DiffusionConfig()
    frames = np.asarray(frames)
    if frames.ndim != 3 or len(frames) == 0:
        raise TrainingDataError(
            f"train_diffusion needs frames of shape (N, H, W) with N >= 1, got {frames.shape}"
        )
    if not np.all(np.isfinite(frames)):
        raise TrainingDataError("train_diffusion got frames with NaN or inf values")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    dev = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    noise_gen = torch.Generator(device=dev).manual_seed(seed)

    unit, norm = unit_batch(frames, StudyKind(kind), config.image_size)
    data = unit * 2.0 - 1.0  # the UNet works in [-1, 1]
    order = rng.permutation(len(data))
    n_val = round(len(data) * val_fraction) if len(data) >= 10 else 0
    val, train = data[order[:n_val]], data[order[n_val:]]

    schedule = NoiseSchedule.for_config(config)
    model = DiffusionUNet(config).to(dev)
    ema = DiffusionUNet(config).to(dev)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(100, max(steps // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: min((i + 1) / warmup, 0.55 + 0.45 * float(np.cos(np.pi * min(i / steps, 1.0)))),
    )
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"diffusion {kind.value}", unit="step")
    recent: deque[float] = deque(maxlen=50)
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = rng.integers(0, len(train), size=min(batch_size, len(train)))
        x0 = train[idx].to(dev)
        t = torch.randint(0, config.timesteps, (len(x0),), generator=noise_gen, device=dev)
        noise = torch.randn(x0.shape, generator=noise_gen, device=dev)
        loss = F.mse_loss(model(schedule.add_noise(x0, t, noise), t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1.0 - decay)
        recent.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(recent):.4f}")
    if bar is not None:
        bar.close()
    with torch.no_grad():
        ema.mean_image.copy_(train.mean(0).to(dev))
        for v in ema.state_dict().values():  # as stored: float16 values
            v.copy_(v.half().float())
    summary: dict[str, Any] = {
        "frames": len(data),
        "train_frames": len(train),
        "val_frames": len(val),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "ema_decay": ema_decay,
        "seed": seed,
        "parameters": sum(p.numel() for p in ema.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(float(np.mean(recent)), 5),
        "val_loss": round(_evaluate(ema, schedule, val, dev, seed), 5) if n_val else None,
        "loss": "mse of the predicted noise; val: EMA weights at fixed steps and noise",
        "command": None,
    }
    logger.info("trained diffusion model for %s: %s", kind.value, summary)
    ema = ema.cpu().eval()
    return DiffusionGenerator(ema, kind, norm, training=summary)


def diffusion_weights_paths(
    kind: StudyKind | str, weights_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """``(safetensors, json)`` paths of the diffusion model of ``kind`` (shipped unless ``weights_dir``)."""
    return family_weights_paths("diffusion", kind, weights_dir)


def save_diffusion(gen: DiffusionGenerator, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` (float16 state dict) and ``<stem>.json``; returns both paths."""
    state = {k: v.half() for k, v in gen.model.state_dict().items()}
    return write_weights(path_stem, state, gen.metadata(), kind=gen.kind, family="diffusion")


def _build(kind: StudyKind, meta: dict[str, Any], state: dict[str, Any]) -> DiffusionGenerator:
    model = DiffusionUNet(DiffusionConfig.from_dict(meta["config"]))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.requires_grad_(False)
    norm = IntensityNorm.from_dict(meta["normalisation"])
    return DiffusionGenerator(model, kind, norm, training=meta.get("training"))


_LOADER = CachedLoader("diffusion", "diffusion model", TRAIN_COMMAND, _build)


def load_diffusion(kind: StudyKind | str, weights_dir: str | Path | None = None) -> DiffusionGenerator:
    """The trained diffusion generator for ``kind``, cached per process.

    Raises ``GeneratorWeightsMissing`` (a ``FileNotFoundError``) when the
    weights are absent, naming the command that trains them, and
    ``ModelBundleError`` when they are present but unreadable. The returned
    generator is shared: treat it as read-only.
    """
    return _LOADER(kind, weights_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusion.generators.train_diffusion",
        description="Train the diffusion generator of one study kind.",
    )
    parser.add_argument("--kind", required=True, choices=[k.value for k in StudyKind])
    parser.add_argument("--out", default="fusion/generators/weights", help="weights folder")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps")
    parser.add_argument("--frames-from-studies", type=int, default=None, help="studies of the kind to render")
    parser.add_argument("--slices", type=int, default=8, help="slices kept per CT/MR study")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machine)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    kind = StudyKind(args.kind)
    studies = args.frames_from_studies if args.frames_from_studies is not None else _DEFAULT_STUDIES[kind]
    steps = args.steps if args.steps is not None else _DEFAULT_STEPS[kind]
    started = time.perf_counter()
    frames = collect_frames(kind, studies, args.slices, args.seed)
    logger.info("rendering took %.0f s", time.perf_counter() - started)
    gen = train_diffusion(
        kind,
        frames,
        config=DiffusionConfig(),
        steps=steps,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.quiet,
        lr=args.lr,
    )
    used = sys.argv[1:] if argv is None else argv
    gen.training["command"] = shlex.join(["python", "-m", "fusion.generators.train_diffusion", *used])
    weights, meta = save_diffusion(gen, Path(args.out) / f"diffusion-{kind.value}")
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and {meta}: {json.dumps(gen.training)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
