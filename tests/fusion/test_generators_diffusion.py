"""Tests of the diffusion generators (`fusion.generators.diffusion`, `.train_diffusion`).

The shipped weights are used with few DDIM steps; the training test uses a tiny config.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from fusion.cohort.scenario import StudyKind
from fusion.errors import ModelBundleError, TrainingDataError
from fusion.generators.diffusion import (
    DiffusionConfig,
    DiffusionGenerator,
    DiffusionUNet,
    NoiseSchedule,
    timestep_embedding,
)
from fusion.generators.train_diffusion import (
    diffusion_weights_paths,
    load_diffusion,
    save_diffusion,
    train_diffusion,
)
from fusion.generators.vae import GeneratorWeightsMissing, estimate_noise_std

TINY = DiffusionConfig(image_size=16, channels=(4, 8), time_channels=8, timesteps=50, sample_steps=4)
STEPS = 3  # DDIM steps in the tests of the shipped models
RANGES = {
    StudyKind.CHEST_DX: (200.0, 3500.0),
    StudyKind.CHEST_CT: (-1000.0, 800.0),
    StudyKind.BRAIN_MR: (0.0, 900.0),
}


def phantom(
    size: int, rng: np.random.Generator, *, low: float, high: float, noise: float = 0.02
) -> np.ndarray:
    """A body ellipse with a few inner ellipses, in physical units, with white noise."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2.0 - 1.0
    img = 0.5 * ((xx / 0.8) ** 2 + (yy / 0.7) ** 2 < 1.0)
    for _ in range(3):
        ex, ey = rng.uniform(-0.4, 0.4, 2)
        rx, ry = rng.uniform(0.1, 0.3, 2)
        img += rng.uniform(-0.3, 0.4) * (((xx - ex) / rx) ** 2 + ((yy - ey) / ry) ** 2 < 1.0)
    img = ndimage.gaussian_filter(np.clip(img, 0.0, 1.0), 1.0) + rng.normal(0.0, noise, img.shape)
    return (low + (high - low) * img).astype(np.float32)


def disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.asarray((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module", params=list(StudyKind), ids=lambda k: k.value)
def shipped(request: pytest.FixtureRequest) -> tuple[DiffusionGenerator, np.ndarray]:
    kind: StudyKind = request.param
    low, high = RANGES[kind]
    return load_diffusion(kind), phantom(128, np.random.default_rng(7), low=low, high=high)


@pytest.fixture(scope="module")
def tiny_gen() -> DiffusionGenerator:
    frames = phantom(32, np.random.default_rng(1), low=-1000.0, high=800.0)
    frames = np.stack([frames, frames[::-1], frames[:, ::-1], frames.T])
    return train_diffusion("chest-ct", frames, config=TINY, steps=5, batch_size=4, seed=0)


# --- the module and the schedule ---------------------------------------------------------------------


def test_unet_predicts_noise_of_the_input_shape() -> None:
    torch.manual_seed(0)
    model = DiffusionUNet(TINY)
    out = model(torch.randn(3, 1, 16, 16), torch.tensor([0, 10, 49]))
    assert out.shape == (3, 1, 16, 16)
    assert model.mean_image.shape == (1, 16, 16) and not model.mean_image.any()
    assert timestep_embedding(torch.tensor([0, 5]), 8).shape == (2, 8)


def test_unet_rejects_wrong_input() -> None:
    model = DiffusionUNet(TINY)
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(1, 1, 24, 24), torch.tensor([0]))
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(1, 2, 16, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match="one step per image"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([0]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 60},
        {"channels": ()},
        {"channels": (8, 0)},
        {"time_channels": 7},
        {"schedule": "sigmoid"},
        {"strength": 0.0},
        {"inject_strength": 1.5},
        {"eta": -0.1},
        {"sample_eta": 1.5},
        {"sample_strength": 0.0},
        {"sample_steps": 0},
        {"resample": 0},
        {"feather": -1.0},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DiffusionConfig(**kwargs)  # type: ignore[arg-type]


def test_config_round_trips_through_json() -> None:
    assert DiffusionConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    assert DiffusionConfig.from_dict(DiffusionConfig().to_dict()) == DiffusionConfig()


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_runs_from_signal_to_noise(kind: str) -> None:
    schedule = NoiseSchedule(1000, kind)
    ab = schedule.alpha_bar
    assert ab.shape == (1000,) and bool(torch.all(ab[1:] < ab[:-1]))
    assert float(ab[0]) > 0.99 and float(ab[-1]) < 0.01
    steps = schedule.ddim_steps(0.5, 20)
    assert steps[0] == 500 and steps[-1] == 0 and len(steps) == 10 and steps == sorted(steps, reverse=True)
    assert schedule.ddim_steps(1.0, 1) == [999]
    with pytest.raises(ValueError):
        schedule.ddim_steps(0.0, 10)
    with pytest.raises(ValueError):
        NoiseSchedule(1000, "sigmoid")


# --- the shipped models -------------------------------------------------------------------------------


def test_shipped_weights_are_small_and_describe_their_training() -> None:
    for kind in StudyKind:
        weights, meta_path = diffusion_weights_paths(kind)
        assert weights.stat().st_size <= 1_500_000
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        assert meta["kind"] == kind.value
        training = meta["training"]
        assert training["steps"] > 0 and training["frames"] > 0 and training["seed"] == 0
        assert f"--kind {kind.value}" in training["command"]
        gen = load_diffusion(kind)
        assert gen.kind is kind and gen is load_diffusion(kind.value)


def test_generate_keeps_shape_dtype_and_is_a_new_image(
    shipped: tuple[DiffusionGenerator, np.ndarray],
) -> None:
    gen, frame = shipped
    out = gen.generate(frame[:, 3:-5].astype(np.float64), np.random.default_rng(0), steps=STEPS)
    assert out.shape == (128, 120) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert not np.allclose(out, frame[:, 3:-5], atol=1e-3 * float(np.ptp(frame)))
    assert np.corrcoef(out.ravel(), frame[:, 3:-5].ravel())[0, 1] > 0.3


def test_generate_is_deterministic_given_the_rng(shipped: tuple[DiffusionGenerator, np.ndarray]) -> None:
    gen, frame = shipped
    a = gen.generate(frame, np.random.default_rng(42), steps=STEPS)
    b = gen.generate(frame, np.random.default_rng(42), steps=STEPS)
    c = gen.generate(frame, np.random.default_rng(43), steps=STEPS)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generate_matches_the_input_noise_level() -> None:
    gen = load_diffusion("chest-ct")
    frame = phantom(128, np.random.default_rng(3), low=-1000.0, high=800.0, noise=0.0)
    noisy = frame + np.random.default_rng(4).normal(0.0, 40.0, frame.shape).astype(np.float32)
    out = gen.generate(noisy, np.random.default_rng(0), steps=STEPS)
    assert estimate_noise_std(out) == pytest.approx(40.0, rel=0.25)


def test_inpaint_changes_only_the_mask_and_its_feather(
    shipped: tuple[DiffusionGenerator, np.ndarray],
) -> None:
    gen, frame = shipped
    mask = disk(frame.shape, 60, 70, 9)
    out = gen.inpaint(frame, mask, np.random.default_rng(0), steps=STEPS)
    assert out.shape == frame.shape and out.dtype == np.float32 and np.all(np.isfinite(out))
    far = ndimage.distance_transform_edt(~mask) >= gen.config.feather + 1.0
    np.testing.assert_array_equal(out[far], frame[far])
    assert np.mean(out[mask] != frame[mask]) > 0.99
    np.testing.assert_array_equal(out, gen.inpaint(frame, mask, np.random.default_rng(0), steps=STEPS))


def test_inpaint_removes_a_bright_lesion() -> None:
    gen = load_diffusion("chest-ct")
    frame = phantom(128, np.random.default_rng(5), low=-1000.0, high=800.0)
    lesion = disk(frame.shape, 64, 64, 6)
    with_lesion = np.where(lesion, np.float32(1400.0), frame)
    out = gen.inpaint(with_lesion, ndimage.binary_dilation(lesion, iterations=2), np.random.default_rng(0))
    assert float(out[lesion].mean()) < 1400.0 - 300.0


def test_inject_moves_the_mask_towards_the_lesion_value(
    shipped: tuple[DiffusionGenerator, np.ndarray],
) -> None:
    gen, frame = shipped
    mask = disk(frame.shape, 70, 50, 10)
    span = float(np.ptp(frame))
    for value in (float(frame[mask].mean()) - 0.4 * span, float(frame[mask].mean()) + 0.4 * span):
        out = gen.inject(frame, mask, np.random.default_rng(1), value, steps=10)
        before, after = abs(float(frame[mask].mean()) - value), abs(float(out[mask].mean()) - value)
        assert after < 0.6 * before
        far = ndimage.distance_transform_edt(~mask) >= gen.config.feather + 1.0
        np.testing.assert_array_equal(out[far], frame[far])


def test_sample_draws_new_frames() -> None:
    gen = load_diffusion("brain-mr")
    out = gen.sample(2, np.random.default_rng(0), shape=(40, 48), steps=STEPS)
    assert out.shape == (2, 40, 48) and out.dtype == np.float32
    assert not np.allclose(out[0], out[1])
    with pytest.raises(ValueError):
        gen.sample(0, np.random.default_rng(0))


def test_bad_inputs_raise_value_error() -> None:
    gen = load_diffusion("chest-ct")
    rng = np.random.default_rng(0)
    frame = phantom(32, rng, low=-1000.0, high=800.0)
    mask = disk(frame.shape, 16, 16, 4)
    with pytest.raises(ValueError, match="one"):
        gen.generate(np.stack([frame, frame]), rng)
    with pytest.raises(ValueError, match="at least"):
        gen.generate(frame[:4, :4], rng)
    with pytest.raises(ValueError, match="finite"):
        gen.inpaint(np.where(mask, np.nan, frame), mask, rng)
    with pytest.raises(ValueError, match="mask shape"):
        gen.inpaint(frame, mask[:-1], rng)
    with pytest.raises(ValueError, match="empty"):
        gen.inject(frame, np.zeros_like(mask), rng, 40.0)
    with pytest.raises(ValueError, match="lesion_value"):
        gen.inject(frame, mask, rng, float("inf"))
    with pytest.raises(ValueError, match="steps"):
        gen.generate(frame, rng, steps=0)


# --- training and weights -------------------------------------------------------------------------------


def test_missing_weights_name_the_training_command(tmp_path: Path) -> None:
    with pytest.raises(
        GeneratorWeightsMissing, match=r"python -m fusion\.generators\.train_diffusion --kind brain-mr"
    ):
        load_diffusion("brain-mr", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        load_diffusion(StudyKind.BRAIN_MR, weights_dir=tmp_path)
    with pytest.raises(ValueError):
        load_diffusion("knee-mr", weights_dir=tmp_path)


def test_training_rejects_bad_frames() -> None:
    with pytest.raises(TrainingDataError):
        train_diffusion("chest-ct", np.zeros((0, 32, 32), np.float32), config=TINY, steps=1)
    with pytest.raises(TrainingDataError):
        train_diffusion("chest-ct", np.full((2, 32, 32), np.nan, np.float32), config=TINY, steps=1)


def test_tiny_training_round_trips_through_save_and_load(
    tiny_gen: DiffusionGenerator, tmp_path: Path
) -> None:
    assert tiny_gen.training["steps"] == 5 and tiny_gen.training["frames"] == 4
    assert np.isfinite(tiny_gen.training["final_loss"])
    assert float(tiny_gen.model.mean_image.mean()) < -0.1  # mostly air: below the middle of [-1, 1]
    weights, meta = save_diffusion(tiny_gen, tmp_path / "diffusion-chest-ct")
    assert (weights, meta) == diffusion_weights_paths("chest-ct", tmp_path)
    loaded = load_diffusion("chest-ct", weights_dir=tmp_path)
    assert loaded is load_diffusion(StudyKind.CHEST_CT, weights_dir=str(tmp_path))
    assert loaded.config == TINY and loaded.norm == tiny_gen.norm and loaded.training == tiny_gen.training
    frame = phantom(48, np.random.default_rng(2), low=-1000.0, high=800.0)
    mask = disk(frame.shape, 20, 24, 5)
    for fn in (
        lambda g: g.generate(frame, np.random.default_rng(1)),
        lambda g: g.inpaint(frame, mask, np.random.default_rng(1)),
        lambda g: g.inject(frame, mask, np.random.default_rng(1), 40.0),
        lambda g: g.sample(2, np.random.default_rng(1)),
    ):
        np.testing.assert_array_equal(fn(loaded), fn(tiny_gen))


def test_training_is_deterministic_given_seed() -> None:
    frames = phantom(32, np.random.default_rng(1), low=-1000.0, high=800.0)[None].repeat(3, axis=0)
    a = train_diffusion("chest-ct", frames, config=TINY, steps=2, batch_size=2, seed=3)
    b = train_diffusion("chest-ct", frames, config=TINY, steps=2, batch_size=2, seed=3)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_corrupt_weights_raise_model_bundle_error(tiny_gen: DiffusionGenerator, tmp_path: Path) -> None:
    weights, _ = save_diffusion(tiny_gen, tmp_path / "diffusion-chest-dx")
    weights.write_bytes(b"not safetensors")
    with pytest.raises(ModelBundleError, match="unreadable"):
        load_diffusion("chest-dx", weights_dir=tmp_path)
