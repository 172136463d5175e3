"""Tests of the VAE generators (`fusion.generators`), on small ellipse phantoms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.cohort.scenario import StudyKind
from fusion.errors import ModelBundleError, TrainingDataError
from fusion.generators import GeneratorWeightsMissing, load_generator, sample, weights_paths
from fusion.generators.train_vae import reconstruction_loss, save_generator, train_vae
from fusion.generators.vae import ConvVae, IntensityNorm, VaeConfig, VaeGenerator, estimate_noise_std

TINY = VaeConfig(image_size=32, base_channels=8, latent_channels=4, depth=2)


def ellipse_phantoms(n: int, size: int, rng: np.random.Generator, *, low: float, high: float) -> np.ndarray:
    """Smooth random phantoms: a body ellipse with 2-4 inner ellipses, in physical units."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2.0 - 1.0
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        img = np.zeros((size, size))
        cx, cy = rng.uniform(-0.1, 0.1, 2)
        ax, ay = rng.uniform(0.6, 0.9, 2)
        img += 0.5 * (((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1.0)
        for _ in range(rng.integers(2, 5)):
            ex, ey = rng.uniform(-0.4, 0.4, 2)
            rx, ry = rng.uniform(0.1, 0.35, 2)
            img += rng.uniform(-0.3, 0.4) * (((xx - ex) / rx) ** 2 + ((yy - ey) / ry) ** 2 < 1.0)
        # smooth the edges a little (3x3 box, twice)
        for _ in range(2):
            img = sum(np.roll(np.roll(img, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
        out[i] = low + (high - low) * np.clip(img, 0.0, 1.0)
    return out


@pytest.fixture(scope="module")
def ct_frames() -> np.ndarray:
    return ellipse_phantoms(160, 64, np.random.default_rng(1), low=-1000.0, high=1000.0)


@pytest.fixture(scope="module")
def trained_ct(ct_frames: np.ndarray) -> VaeGenerator:
    torch.set_num_threads(1)
    return train_vae(ct_frames, "chest-ct", TINY, epochs=25, seed=0, batch_size=16, lr=5e-3)


# --- the module ---------------------------------------------------------------------------------------


def test_conv_vae_shapes() -> None:
    torch.manual_seed(0)
    model = ConvVae(TINY)
    x = torch.rand(3, 1, 32, 32)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (3, 4, 8, 8)
    with torch.no_grad():
        recon, _, _ = model(x, torch.randn(3, 4, 8, 8))
    assert recon.shape == (3, 1, 32, 32)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    assert model.prior_mean.shape == (4, 8, 8)


def test_conv_vae_decoder_upsamples_with_transposed_convolutions() -> None:
    model = ConvVae(VaeConfig(image_size=64, base_channels=4, latent_channels=2, depth=3))
    n_transposed = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in model.decoder)
    assert n_transposed == 3


def test_conv_vae_rejects_wrong_input_shape() -> None:
    model = ConvVae(TINY)
    with pytest.raises(ValueError, match="expects"):
        model.encode(torch.rand(1, 1, 48, 48))
    with pytest.raises(ValueError, match="expects"):
        model.encode(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize(
    "kwargs", [{"image_size": 100, "depth": 3}, {"depth": 0}, {"base_channels": 0}, {"latent_channels": 0}]
)
def test_vae_config_rejects_bad_values(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        VaeConfig(**kwargs)


def test_vae_config_round_trips_through_dict() -> None:
    assert VaeConfig.from_dict(TINY.to_dict()) == TINY
    assert TINY.latent_size == 8


# --- normalisation and noise ----------------------------------------------------------------------------


def test_intensity_norm_per_kind() -> None:
    ct = IntensityNorm.for_kind(StudyKind.CHEST_CT)
    assert ct.scale_of(np.zeros((4, 4))) == (-1024.0, 1500.0)
    mr = IntensityNorm.for_kind("brain-mr")
    frame = np.arange(1000, dtype=np.float32).reshape(25, 40)
    lo, hi = mr.scale_of(frame)
    assert lo == pytest.approx(np.percentile(frame, 0.5)) and hi == pytest.approx(np.percentile(frame, 99.5))
    unit = mr.to_unit(frame, (lo, hi))
    assert unit.min() == 0.0 and unit.max() == 1.0
    np.testing.assert_allclose(mr.from_unit(unit, (lo, hi))[2:-2], frame[2:-2], atol=1e-3)
    with pytest.raises(ValueError):
        IntensityNorm("zscore", 0.0, 1.0)


@pytest.mark.parametrize("sigma", [5.0, 25.0])
def test_estimate_noise_std_ignores_smooth_anatomy(sigma: float) -> None:
    rng = np.random.default_rng(3)
    smooth = ellipse_phantoms(1, 256, rng, low=0.0, high=500.0)[0]
    noisy = smooth + rng.normal(0.0, sigma, smooth.shape).astype(np.float32)
    assert estimate_noise_std(noisy) == pytest.approx(sigma, rel=0.2)


# --- training -------------------------------------------------------------------------------------------


def test_training_lowers_reconstruction_loss(ct_frames: np.ndarray, trained_ct: VaeGenerator) -> None:
    torch.manual_seed(0)
    untrained = ConvVae(TINY).eval()
    norm = IntensityNorm.for_kind("chest-ct")
    x = torch.from_numpy(norm.to_unit(ct_frames, norm.scale_of(ct_frames)))[:, None]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="area")
    with torch.no_grad():
        before = float(reconstruction_loss(untrained(x)[0], x))
        after = float(reconstruction_loss(trained_ct.model(x)[0], x))
    assert after < 0.5 * before
    assert trained_ct.training["train_reconstruction_loss"] == pytest.approx(after, rel=0.2)
    assert trained_ct.training["val_frames"] == 16


def test_training_is_deterministic_given_seed(ct_frames: np.ndarray) -> None:
    a = train_vae(ct_frames[:32], "chest-ct", TINY, epochs=1, seed=5)
    b = train_vae(ct_frames[:32], "chest-ct", TINY, epochs=1, seed=5)
    c = train_vae(ct_frames[:32], "chest-ct", TINY, epochs=1, seed=6)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.decoder[0].weight, c.model.decoder[0].weight)


def test_training_rejects_bad_frames() -> None:
    with pytest.raises(TrainingDataError):
        train_vae(np.zeros((0, 32, 32), np.float32), "chest-ct", TINY, epochs=1)
    with pytest.raises(TrainingDataError):
        train_vae(np.full((2, 32, 32), np.nan, np.float32), "chest-ct", TINY, epochs=1)


# --- generation -----------------------------------------------------------------------------------------


def test_generate_keeps_shape_dtype_and_units(trained_ct: VaeGenerator) -> None:
    frame = ellipse_phantoms(1, 72, np.random.default_rng(11), low=-1000.0, high=1000.0)[0][:, 4:-6]
    out = trained_ct.generate(frame.astype(np.float64), np.random.default_rng(0))
    assert out.shape == frame.shape == (72, 62)
    assert out.dtype == np.float32
    # in HU: same mean and spread as the input, to within a tenth of its range
    assert abs(float(out.mean()) - float(frame.mean())) < 200.0
    assert abs(float(out.std()) - float(frame.std())) < 200.0


def test_generate_is_a_new_image_correlated_with_the_input(trained_ct: VaeGenerator) -> None:
    frame = ellipse_phantoms(1, 64, np.random.default_rng(12), low=-1000.0, high=1000.0)[0]
    out = trained_ct.generate(frame, np.random.default_rng(0))
    assert not np.allclose(out, frame, atol=1.0)
    assert np.corrcoef(out.ravel(), frame.ravel())[0, 1] > 0.5


def test_generate_is_deterministic_given_the_rng(trained_ct: VaeGenerator) -> None:
    frame = ellipse_phantoms(1, 64, np.random.default_rng(13), low=-1000.0, high=1000.0)[0]
    a = trained_ct.generate(frame, np.random.default_rng(42))
    b = trained_ct.generate(frame, np.random.default_rng(42))
    c = trained_ct.generate(frame, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generate_matches_the_input_noise_level(trained_ct: VaeGenerator) -> None:
    rng = np.random.default_rng(14)
    frame = ellipse_phantoms(1, 128, rng, low=-1000.0, high=1000.0)[0]
    noisy = frame + rng.normal(0.0, 40.0, frame.shape).astype(np.float32)
    out = trained_ct.generate(noisy, np.random.default_rng(0))
    assert estimate_noise_std(out) == pytest.approx(40.0, rel=0.25)
    trained_ct.match_noise = False
    try:
        quiet = trained_ct.generate(noisy, np.random.default_rng(0))
    finally:
        trained_ct.match_noise = True
    assert estimate_noise_std(quiet) < 20.0


def test_generate_maps_percentile_kinds_back_to_their_scale(ct_frames: np.ndarray) -> None:
    dx_frames = 2000.0 + ct_frames[:48] * 1.5  # 500..3500, "detector units"
    gen = train_vae(dx_frames, "chest-dx", TINY, epochs=6, seed=0, lr=5e-3)
    assert gen.norm.mode == "percentile"
    frame = dx_frames[0]
    out = gen.generate(frame, np.random.default_rng(0))
    span = float(np.percentile(frame, 99.5) - np.percentile(frame, 0.5))
    assert abs(float(out.mean()) - float(frame.mean())) < 0.15 * span
    assert gen.norm.reference[1] > gen.norm.reference[0] > 0.0


def test_generate_rejects_bad_frames(trained_ct: VaeGenerator) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="one"):
        trained_ct.generate(np.zeros((2, 32, 32), np.float32), rng)
    with pytest.raises(ValueError, match="finite"):
        trained_ct.generate(np.full((32, 32), np.inf, np.float32), rng)


def test_sample_draws_from_the_prior(trained_ct: VaeGenerator) -> None:
    out = trained_ct.sample(3, np.random.default_rng(0), shape=(40, 48))
    assert out.shape == (3, 40, 48) and out.dtype == np.float32
    assert not np.allclose(out[0], out[1])
    assert -1024.0 <= float(out.min()) and float(out.max()) <= 1500.0
    with pytest.raises(ValueError):
        trained_ct.sample(0, np.random.default_rng(0))


# --- weights --------------------------------------------------------------------------------------------


def test_load_generator_without_weights_names_the_training_command(tmp_path: Path) -> None:
    with pytest.raises(
        GeneratorWeightsMissing, match=r"python -m fusion\.generators\.train_vae --kind brain-mr"
    ):
        load_generator("brain-mr", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        load_generator(StudyKind.BRAIN_MR, weights_dir=tmp_path)
    with pytest.raises(ValueError):
        load_generator("knee-mr", weights_dir=tmp_path)


def test_saved_generator_loads_back_and_is_cached(trained_ct: VaeGenerator, tmp_path: Path) -> None:
    weights, meta = save_generator(trained_ct, tmp_path / "vae-chest-ct")
    assert (weights, meta) == weights_paths("chest-ct", tmp_path)
    loaded = load_generator("chest-ct", weights_dir=tmp_path)
    assert loaded is load_generator(StudyKind.CHEST_CT, weights_dir=str(tmp_path))
    assert loaded.config == TINY and loaded.norm == trained_ct.norm
    assert loaded.training == trained_ct.training
    frame = ellipse_phantoms(1, 64, np.random.default_rng(15), low=-1000.0, high=1000.0)[0]
    np.testing.assert_array_equal(
        loaded.generate(frame, np.random.default_rng(1)), trained_ct.generate(frame, np.random.default_rng(1))
    )
    np.testing.assert_array_equal(
        sample(2, "chest-ct", np.random.default_rng(2), weights_dir=tmp_path),
        trained_ct.sample(2, np.random.default_rng(2)),
    )


def test_corrupt_weights_raise_model_bundle_error(trained_ct: VaeGenerator, tmp_path: Path) -> None:
    weights, _ = save_generator(trained_ct, tmp_path / "vae-chest-ct")
    weights.write_bytes(b"not safetensors")
    with pytest.raises(ModelBundleError, match="unreadable"):
        load_generator("chest-ct", weights_dir=tmp_path)


def test_shipped_weights_when_present_are_small_and_load() -> None:
    for kind in StudyKind:
        weights, meta = weights_paths(kind)
        if not weights.is_file():
            continue
        assert weights.stat().st_size < 2_000_000
        gen = load_generator(kind)
        assert gen.kind is kind and meta.is_file()
