"""Training of the VAE generators, and the command that makes the shipped weights.

Usage (from the repository root, CPU, about 3-4 minutes per kind on one core)::

    python -m fusion.generators.train_vae --kind chest-dx --out fusion/generators/weights
    python -m fusion.generators.train_vae --kind chest-ct --out fusion/generators/weights
    python -m fusion.generators.train_vae --kind brain-mr --out fusion/generators/weights

Options: ``--images N`` studies of the kind to render (default per kind, see
``_DEFAULT_STUDIES``), ``--slices K`` slices kept per CT/MR study (evenly
spaced, default 6), ``--epochs E``, ``--seed S`` (default 0), ``--threads T``
(torch threads, default 1: the machine is shared), ``--batch-size``,
``--lr``, ``--beta`` (KL weight), ``--base-channels``, ``--latent-channels``,
``--depth``, ``--quiet``.

The training frames come from the phantom renderer: scenarios are drawn with
`fusion.cohort.draw.draw_scenario(rng, site, index)` for the site
`fusion.cohort.site.default_site(seed)` until ``N`` un-manipulated studies of
the kind are found, and each is rendered with
`fusion.cohort.images.render_study(scenario, plan, seed)`. It writes
``<out>/vae-<kind>.safetensors`` and ``<out>/vae-<kind>.json``, and is
deterministic given ``--seed`` and ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusion.cohort.scenario import StudyKind
from fusion.errors import TrainingDataError
from fusion.generators.store import write_weights
from fusion.generators.vae import ConvVae, IntensityNorm, VaeConfig, VaeGenerator

__all__ = ["collect_frames", "main", "reconstruction_loss", "save_generator", "train_vae", "unit_batch"]

logger = logging.getLogger(__name__)

_DEFAULT_STUDIES = {StudyKind.CHEST_DX: 300, StudyKind.CHEST_CT: 80, StudyKind.BRAIN_MR: 80}
_DEFAULT_EPOCHS = {StudyKind.CHEST_DX: 10, StudyKind.CHEST_CT: 12, StudyKind.BRAIN_MR: 12}


def unit_batch(frames: np.ndarray, kind: StudyKind, size: int) -> tuple[torch.Tensor, IntensityNorm]:
    """Training frames (N, H, W) in physical units -> (N, 1, size, size) in [0, 1] (area resize
    down, bilinear up) and the kind's normalisation, its reference scale fitted to these frames."""
    norm = IntensityNorm.for_kind(kind)
    out = torch.empty((len(frames), 1, size, size), dtype=torch.float32)
    scales = np.empty((len(frames), 2), dtype=np.float64)
    for i, frame in enumerate(frames):
        scale = norm.scale_of(frame)
        scales[i] = scale
        x = torch.from_numpy(norm.to_unit(frame, scale))[None, None]
        if tuple(x.shape[-2:]) != (size, size):
            shrink = x.shape[-2] >= size and x.shape[-1] >= size
            x = F.interpolate(x, size=(size, size), mode="area" if shrink else "bilinear")
        out[i] = x[0]
    if norm.mode == "percentile":
        norm = norm.with_reference((float(np.median(scales[:, 0])), float(np.median(scales[:, 1]))))
    return out, norm


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + MSE, both per-pixel means, on [0, 1] images."""
    return F.l1_loss(recon, target) + F.mse_loss(recon, target)


def _kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q || N(0, I)), mean per latent element."""
    return 0.5 * torch.mean(mean.pow(2) + logvar.exp() - 1.0 - logvar)


@torch.no_grad()
def _evaluate(model: ConvVae, data: torch.Tensor, device: torch.device, batch: int) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(data), batch):
        x = data[i : i + batch].to(device)
        recon, _, _ = model(x)
        total += float(reconstruction_loss(recon, x)) * len(x)
    return total / max(len(data), 1)


@torch.no_grad()
def _fit_prior(model: ConvVae, data: torch.Tensor, device: torch.device, batch: int) -> None:
    """Per-position mean / std of the posterior means: the prior ``VaeGenerator.sample`` draws from."""
    model.eval()
    means = torch.cat(
        [model.encode(data[i : i + batch].to(device))[0].cpu() for i in range(0, len(data), batch)]
    )
    model.prior_mean.copy_(means.mean(0))
    model.prior_std.copy_(
        means.std(0, unbiased=False).clamp_min(1e-3) if len(means) > 1 else torch.ones_like(means[0])
    )


def train_vae(
    frames: np.ndarray,
    kind: StudyKind | str,
    config: VaeConfig | None = None,
    epochs: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    *,
    batch_size: int = 8,
    lr: float = 3e-3,
    beta: float = 3e-3,
    val_fraction: float = 0.1,
) -> VaeGenerator:
    """Train a ``ConvVae`` on ``frames`` (N, H, W) in physical units; return the generator.

    Loss: L1 + MSE reconstruction plus ``beta`` x KL (both per-element means);
    Adam with a cosine learning-rate decay. Deterministic given ``seed`` (and
    the torch thread count). A ``val_fraction`` of the frames (when there are
    at least 10) is held out; the final train / validation reconstruction
    losses are in ``generator.training``.
    """
    kind = StudyKind(kind)
    config = config or VaeConfig()
    frames = np.asarray(frames)
    if frames.ndim != 3 or len(frames) == 0:
        raise TrainingDataError(f"train_vae needs frames of shape (N, H, W) with N >= 1, got {frames.shape}")
    if not np.all(np.isfinite(frames)):
        raise TrainingDataError("train_vae got frames with NaN or inf values")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    dev = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    noise_gen = torch.Generator(device=dev).manual_seed(seed)

    data, norm = unit_batch(frames, StudyKind(kind), config.image_size)
    order = rng.permutation(len(data))
    n_val = round(len(data) * val_fraction) if len(data) >= 10 else 0
    val, train = data[order[:n_val]], data[order[n_val:]]

    model = ConvVae(config).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(train) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch, eta_min=lr * 0.05)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc=f"vae {kind.value}", unit="step")
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in _batches(rng.permutation(len(train)), batch_size):
            x = train[idx].to(dev)
            eps = torch.randn(
                (len(x), config.latent_channels, config.latent_size, config.latent_size),
                generator=noise_gen,
                device=dev,
            )
            recon, mean, logvar = model(x, eps)
            rec = reconstruction_loss(recon, x)
            loss = rec + beta * _kl(mean, logvar)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rec=f"{float(rec):.4f}")
    if bar is not None:
        bar.close()
    _fit_prior(model, train, dev, 64)
    summary = {
        "frames": len(data),
        "train_frames": len(train),
        "val_frames": len(val),
        "epochs": epochs,
        "seed": seed,
        "beta": beta,
        "lr": lr,
        "batch_size": batch_size,
        "seconds": round(time.perf_counter() - started, 1),
        "train_reconstruction_loss": round(_evaluate(model, train, dev, 64), 5),
        "val_reconstruction_loss": round(_evaluate(model, val, dev, 64), 5) if n_val else None,
        "loss": "l1+mse on [0,1] at the posterior mean",
    }
    logger.info("trained VAE for %s: %s", kind.value, summary)
    model = model.cpu().eval().requires_grad_(False)
    return VaeGenerator(model, kind, norm, training=summary)


def _batches(order: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(order), size):
        yield order[i : i + size]


def save_generator(gen: VaeGenerator, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; returns both paths."""
    return write_weights(path_stem, gen.model.state_dict(), gen.metadata(), kind=gen.kind, family="vae")


def collect_frames(
    kind: StudyKind | str, studies: int, slices_per_study: int = 6, seed: int = 0
) -> np.ndarray:
    """Training frames (N, 512, 512) of ``kind`` rendered from simulated scenarios.

    Draws scenarios until ``studies`` un-manipulated studies of ``kind`` are
    found, renders each, and keeps every DX view and, for CT / MR, up to
    ``slices_per_study`` evenly spaced slices (the end slices skipped).
    """
    from fusion.cohort.draw import draw_scenario
    from fusion.cohort.images import render_study
    from fusion.cohort.site import default_site

    kind = StudyKind(kind)
    rng = np.random.default_rng(seed)
    site = default_site(seed)
    frames: list[np.ndarray] = []
    found = 0
    index = 0
    max_draws = 50 * studies + 100
    while found < studies:
        if index >= max_draws:
            raise TrainingDataError(f"found only {found} {kind.value} studies in {index} scenarios")
        scenario = draw_scenario(rng, site, index)
        for plan in scenario.studies:
            if found >= studies or StudyKind(plan.kind) is not kind or plan.manipulation is not None:
                continue
            rendered = render_study(scenario, plan, seed * 1_000_003 + index)
            for series in rendered.series:
                stack = np.asarray(series.frames, dtype=np.float32)
                if stack.ndim == 2:
                    stack = stack[None]
                if kind is not StudyKind.CHEST_DX and len(stack) > slices_per_study:
                    picks = np.linspace(0, len(stack) - 1, slices_per_study + 2)[1:-1].round().astype(int)
                    stack = stack[picks]
                frames.extend(stack)
            found += 1
        index += 1
    logger.info(
        "collected %d frames from %d %s studies (%d scenarios)", len(frames), found, kind.value, index
    )
    return np.stack(frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusion.generators.train_vae", description="Train the VAE generator of one study kind."
    )
    parser.add_argument("--kind", required=True, choices=[k.value for k in StudyKind])
    parser.add_argument("--out", default="fusion/generators/weights", help="weights folder")
    parser.add_argument("--images", type=int, default=None, help="studies of the kind to render")
    parser.add_argument("--slices", type=int, default=6, help="slices kept per CT/MR study")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machine)")
    parser.add_argument("--base-channels", type=int, default=VaeConfig.base_channels)
    parser.add_argument("--latent-channels", type=int, default=VaeConfig.latent_channels)
    parser.add_argument("--depth", type=int, default=VaeConfig.depth)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--beta", type=float, default=3e-3, help="KL weight")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    kind = StudyKind(args.kind)
    studies = args.images if args.images is not None else _DEFAULT_STUDIES[kind]
    epochs = args.epochs if args.epochs is not None else _DEFAULT_EPOCHS[kind]
    config = VaeConfig(
        base_channels=args.base_channels, latent_channels=args.latent_channels, depth=args.depth
    )
    started = time.perf_counter()
    frames = collect_frames(kind, studies, args.slices, args.seed)
    logger.info("rendering took %.0f s", time.perf_counter() - started)
    gen = train_vae(
        frames,
        kind,
        config,
        epochs=epochs,
        seed=args.seed,
        progress=not args.quiet,
        batch_size=args.batch_size,
        lr=args.lr,
        beta=args.beta,
    )
    weights, meta = save_generator(gen, Path(args.out) / f"vae-{kind.value}")
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and {meta}: {json.dumps(gen.training)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
