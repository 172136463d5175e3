"""Copy-move and the nuisances (re-encoding, resizing): deterministic, same shape, bounded change."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.generators.classical import copy_move_fill, reencode, resize_roundtrip


@pytest.fixture
def frame() -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :256]
    body = np.where((yy - 128) ** 2 / 110**2 + (xx - 128) ** 2 / 90**2 < 1, 40.0, -1000.0)
    return (body + rng.normal(0, 12, body.shape)).astype(np.float32)


def _lesion_mask(shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - 120) ** 2 + (xx - 110) ** 2 < 12**2


def test_copy_move_covers_the_mask_with_pixels_from_the_same_frame(frame):
    lesioned = frame.copy()
    mask = _lesion_mask(frame.shape)
    lesioned[mask] += 300.0
    out = copy_move_fill(lesioned, mask, np.random.default_rng(0))
    assert out.shape == frame.shape and out.dtype == np.float32
    assert abs(float(out[mask].mean()) - float(frame[mask].mean())) < 40  # the lesion is gone
    far = np.ones_like(mask)
    far[90:150, 80:140] = False
    np.testing.assert_array_equal(out[far], lesioned[far])  # nothing changes away from it
    np.testing.assert_array_equal(out, copy_move_fill(lesioned, mask, np.random.default_rng(0)))


def test_copy_move_refuses_bad_masks(frame):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="empty"):
        copy_move_fill(frame, np.zeros(frame.shape, bool), rng)
    with pytest.raises(ValueError, match="shape"):
        copy_move_fill(frame, np.ones((10, 10), bool), rng)
    with pytest.raises(ValueError, match="too large"):
        copy_move_fill(frame, np.ones(frame.shape, bool), rng)


@pytest.mark.parametrize("nuisance", [reencode, resize_roundtrip])
def test_nuisances_keep_shape_and_scale_and_change_little(frame, nuisance):
    out = nuisance(frame, np.random.default_rng(1))
    assert out.shape == frame.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert 0 < float(np.abs(out - frame).mean()) < 30  # changed, but no more than the noise level or so
    assert abs(float(out.mean()) - float(frame.mean())) < 5
    np.testing.assert_array_equal(out, nuisance(frame, np.random.default_rng(1)))


def test_reencode_loses_more_at_higher_ratios(frame):
    rng = np.random.default_rng(0)
    low = np.abs(reencode(frame, rng, ratio=4) - frame).mean()
    high = np.abs(reencode(frame, rng, ratio=60) - frame).mean()
    assert high > low


@pytest.mark.parametrize(("fn", "kwargs"), [(reencode, {"ratio": 1.0}), (resize_roundtrip, {"factor": 1.2})])
def test_nuisance_parameters_are_checked(frame, fn, kwargs):
    with pytest.raises(ValueError):
        fn(frame, np.random.default_rng(0), **kwargs)


@pytest.mark.parametrize("fn", [reencode, resize_roundtrip])
def test_bad_frames_are_refused(fn):
    with pytest.raises(ValueError):
        fn(np.zeros((4, 4), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError):
        fn(np.full((16, 16), np.nan, np.float32), np.random.default_rng(0))
