"""Tests of the GAN generators (`fusion.generators.gan`, `fusion.generators.train_gan`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusion.cohort.scenario import StudyKind
from fusion.errors import ModelBundleError, TrainingDataError
from fusion.generators.gan import ConvDiscriminator, ConvGenerator, GanConfig, GanGenerator
from fusion.generators.train_gan import (
    discriminator_loss,
    gan_weights_paths,
    generator_loss,
    load_gan,
    save_gan,
    train_gan,
)
from fusion.generators.train_vae import collect_frames
from fusion.generators.vae import GeneratorWeightsMissing, estimate_noise_std

TINY = GanConfig(image_size=16, latent_dim=8, base_channels=4, max_channels=8, depth=2, disc_channels=4)
KINDS = list(StudyKind)


@pytest.fixture(scope="module")
def phantom() -> dict[StudyKind, np.ndarray]:
    """One rendered, un-manipulated frame per kind, cropped to a non-square shape, physical units."""
    return {kind: collect_frames(kind, 1, slices_per_study=1, seed=3)[0][:, 20:-36] for kind in KINDS}


@pytest.fixture(scope="module")
def tiny_frames() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0 * 2.0 - 1.0
    disc = (xx**2 + yy**2 < 0.6).astype(np.float32)
    return np.stack([1000.0 * disc * rng.uniform(0.5, 1.5) + rng.normal(0, 20, (32, 32)) for _ in range(6)])


@pytest.fixture(scope="module")
def tiny_gan(tiny_frames: np.ndarray) -> GanGenerator:
    torch.set_num_threads(1)
    return train_gan("brain-mr", tiny_frames, config=TINY, steps=5, batch_size=4, seed=0)


# --- the modules ----------------------------------------------------------------------------------------


def test_networks_have_the_configured_shapes() -> None:
    torch.manual_seed(0)
    model, critic = ConvGenerator(TINY), ConvDiscriminator(TINY)
    with torch.no_grad():
        images = model(torch.randn(3, 8))
        scores = critic(images)
    assert images.shape == (3, 1, 16, 16)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert scores.shape == (3,)
    assert TINY.generator_channels == (8, 4) and TINY.start_size == 4
    n_transposed = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in model.net)
    assert n_transposed == TINY.depth + 1


def test_networks_reject_wrong_input_shapes() -> None:
    with pytest.raises(ValueError, match="expects"):
        ConvGenerator(TINY)(torch.randn(2, 9))
    with pytest.raises(ValueError, match="expects"):
        ConvDiscriminator(TINY)(torch.rand(2, 1, 32, 32))


@pytest.mark.parametrize(
    "kwargs", [{"image_size": 100}, {"depth": 0}, {"latent_dim": 0}, {"max_channels": 0}, {"image_size": 16}]
)
def test_gan_config_rejects_bad_values(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        GanConfig(**kwargs)


def test_gan_config_round_trips_through_dict() -> None:
    assert GanConfig.from_dict(TINY.to_dict()) == TINY
    assert GanConfig.from_dict(json.loads(json.dumps(GanConfig().to_dict()))) == GanConfig()


def test_hinge_losses() -> None:
    sure = torch.tensor([2.0, 3.0])
    assert float(discriminator_loss(sure, -sure)) == 0.0
    assert float(discriminator_loss(-sure, sure)) == pytest.approx(7.0)
    assert float(generator_loss(sure)) == pytest.approx(-2.5)


# --- the shipped weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_weights_load_and_are_small(kind: StudyKind) -> None:
    weights, meta = gan_weights_paths(kind)
    assert weights.stat().st_size <= 600_000
    gen = load_gan(kind)
    assert gen is load_gan(kind.value)
    assert gen.kind is kind and gen.norm.mode == ("window" if kind is StudyKind.CHEST_CT else "percentile")
    stored = json.loads(meta.read_text(encoding="utf-8"))
    assert stored["training"]["command"].startswith(f"python -m fusion.generators.train_gan --kind {kind}")
    assert stored["training"]["steps"] >= 1000 and {"seed", "seconds", "frames"} <= stored["training"].keys()


@pytest.mark.parametrize("kind", KINDS)
def test_generate_makes_a_new_frame_in_the_inputs_units(
    kind: StudyKind, phantom: dict[StudyKind, np.ndarray]
) -> None:
    gen = load_gan(kind)
    frame = phantom[kind]
    out = gen.generate(frame.astype(np.float64), np.random.default_rng(0))
    assert out.shape == frame.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    lo, hi = float(frame.min()), float(frame.max())
    margin = 0.25 * (hi - lo)
    assert lo - margin <= float(out.min()) and float(out.max()) <= hi + margin
    assert abs(float(np.median(out)) - float(np.median(frame))) < 0.25 * (hi - lo)
    assert float(np.mean(np.abs(out - frame))) > 0.02 * (hi - lo)  # not the input back
    assert estimate_noise_std(out) == pytest.approx(estimate_noise_std(frame), rel=0.3)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_is_deterministic_given_the_rng(
    kind: StudyKind, phantom: dict[StudyKind, np.ndarray]
) -> None:
    gen = load_gan(kind)
    frame = phantom[kind]
    a = gen.generate(frame, np.random.default_rng(42))
    b = gen.generate(frame, np.random.default_rng(42))
    c = gen.generate(frame, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c, atol=1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_shapes(kind: StudyKind) -> None:
    gen = load_gan(kind)
    out = gen.sample(3, np.random.default_rng(0), shape=(40, 48))
    assert out.shape == (3, 40, 48) and out.dtype == np.float32
    assert not np.allclose(out[0], out[1])
    assert gen.sample(2, np.random.default_rng(0)).shape == (2, gen.config.image_size, gen.config.image_size)
    lo, hi = gen.norm.reference
    assert lo - 1e-3 <= float(out.min()) and float(out.max()) <= hi + 1e-3
    with pytest.raises(ValueError):
        gen.sample(0, np.random.default_rng(0))


def test_generate_rejects_bad_frames() -> None:
    gen = load_gan("chest-ct")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="one"):
        gen.generate(np.zeros((2, 32, 32), np.float32), rng)
    with pytest.raises(ValueError, match="8x8"):
        gen.generate(np.zeros((4, 64), np.float32), rng)
    bad = np.zeros((32, 32), np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        gen.generate(bad, rng)


def test_missing_weights_name_the_training_command(tmp_path: Path) -> None:
    with pytest.raises(
        GeneratorWeightsMissing, match=r"python -m fusion\.generators\.train_gan --kind brain-mr"
    ):
        load_gan("brain-mr", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        load_gan(StudyKind.BRAIN_MR, weights_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError):
        load_gan("knee-mr", weights_dir=tmp_path)


# --- training, saving, loading ------------------------------------------------------------------------


def test_tiny_training_saves_and_loads_back(tiny_gan: GanGenerator, tmp_path: Path) -> None:
    assert tiny_gan.training["steps"] == 5 and tiny_gan.training["frames"] == 6
    assert np.isfinite(tiny_gan.training["final_discriminator_loss"])
    weights, meta = save_gan(tiny_gan, tmp_path / "gan-brain-mr")
    assert (weights, meta) == gan_weights_paths("brain-mr", tmp_path)
    assert set(load_file(str(weights))) == set(tiny_gan.model.state_dict())  # the generator only
    loaded = load_gan("brain-mr", weights_dir=tmp_path)
    assert loaded is load_gan(StudyKind.BRAIN_MR, weights_dir=str(tmp_path))
    assert loaded.config == TINY and loaded.norm == tiny_gan.norm and loaded.training == tiny_gan.training
    frame = np.random.default_rng(5).normal(500.0, 100.0, (40, 36)).astype(np.float32)
    np.testing.assert_array_equal(
        loaded.generate(frame, np.random.default_rng(1)), tiny_gan.generate(frame, np.random.default_rng(1))
    )
    np.testing.assert_array_equal(
        loaded.sample(2, np.random.default_rng(2), shape=(20, 24)),
        tiny_gan.sample(2, np.random.default_rng(2), shape=(20, 24)),
    )


def test_training_is_deterministic_given_seed(tiny_frames: np.ndarray, tiny_gan: GanGenerator) -> None:
    again = train_gan("brain-mr", tiny_frames, config=TINY, steps=5, batch_size=4, seed=0)
    other = train_gan("brain-mr", tiny_frames, config=TINY, steps=5, batch_size=4, seed=1)
    for (name, pa), pb in zip(
        tiny_gan.model.state_dict().items(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
    assert not torch.equal(
        tiny_gan.model.state_dict()["net.0.weight"], other.model.state_dict()["net.0.weight"]
    )


def test_training_rejects_bad_frames() -> None:
    with pytest.raises(TrainingDataError):
        train_gan("chest-ct", np.zeros((0, 32, 32), np.float32), config=TINY, steps=1)
    with pytest.raises(TrainingDataError):
        train_gan("chest-ct", np.full((2, 32, 32), np.inf, np.float32), config=TINY, steps=1)
    with pytest.raises(ValueError):
        train_gan("chest-ct", np.zeros((2, 32, 32), np.float32), config=TINY, steps=0)


def test_corrupt_weights_raise_model_bundle_error(tiny_gan: GanGenerator, tmp_path: Path) -> None:
    weights, _ = save_gan(tiny_gan, tmp_path / "gan-brain-mr")
    weights.write_bytes(b"not safetensors")
    with pytest.raises(ModelBundleError, match="unreadable"):
        load_gan("brain-mr", weights_dir=tmp_path)
