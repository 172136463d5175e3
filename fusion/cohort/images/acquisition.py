"""Acquisition physics: how each modality turns an ideal phantom into a noisy, blurred image.

- DX: the phantom gives line integrals of attenuation ``L`` (dimensionless);
  the detector counts ``N = N0 exp(-L)`` quanta with Poisson noise (Gaussian
  with variance ``N``), blurs them with its point-spread function, and the
  image is the log-transformed signal ``gain * -log(N / N0)``: noise is
  larger where fewer quanta arrive (mediastinum, spine).
- CT: white noise added to the ideal slice and filtered together with it by
  the reconstruction kernel (a small Gaussian), which gives anatomy its
  partial-volume edges and the noise its correlation; ``noise_hu`` is the
  standard deviation after filtering.
- MR: blurred signal times a smooth coil bias field, with complex Gaussian
  noise whose magnitude is Rician (biased upwards in the dark background).

All randomness comes from the ``np.random.Generator`` passed in.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import NDArray

__all__ = ["ct_acquire", "dx_acquire", "mr_acquire", "smooth_bias_field"]

logger = logging.getLogger(__name__)

F32 = NDArray[np.float32]


def _kernel(sigma: float) -> list[float]:
    """3-tap passes [a, 1 - 2a, a] whose variances add up to sigma^2 (a <= 1/4 each)."""
    passes = max(int(np.ceil(sigma * sigma / 0.5)), 1)
    return [sigma * sigma / passes / 2.0] * passes


def _blur_inplane(vol: F32, sigma: float) -> F32:
    """Gaussian-like in-plane blur of (n, rows, cols) by repeated 3-tap passes (edges replicated).

    Works slice by slice in reused buffers (a slice stays in cache through all
    passes); returns a new array (``vol`` itself when there is nothing to do).
    """
    taps = _kernel(sigma) if sigma > 0 else []
    if not taps:
        return vol
    out: F32 = np.empty(vol.shape, np.float32)
    cur = np.empty(out.shape[1:], np.float32)
    nxt = np.empty_like(cur)
    tmp = np.empty_like(cur)
    for k in range(out.shape[0]):
        cur[...] = vol[k]
        for a in taps:
            for axis in (0, 1):
                _pass3(cur, nxt, tmp, a, axis)
                cur, nxt = nxt, cur
        out[k] = cur
    return out


def _pass3(x: F32, res: F32, tmp: F32, a: float, axis: int) -> None:
    """res = (1 - 2a) x + a (left + right neighbours) along ``axis`` of a 2-D slice, edges replicated."""
    if axis == 1:
        np.add(x[:, :-2], x[:, 2:], out=res[:, 1:-1])
        np.add(x[:, 0], x[:, 1], out=res[:, 0])
        np.add(x[:, -2], x[:, -1], out=res[:, -1])
    else:
        np.add(x[:-2], x[2:], out=res[1:-1])
        np.add(x[0], x[1], out=res[0])
        np.add(x[-2], x[-1], out=res[-1])
    res *= np.float32(a)
    np.multiply(x, np.float32(1.0 - 2.0 * a), out=tmp)
    res += tmp


def _noise_gain(sigma: float) -> float:
    """How much the blur shrinks white noise: sqrt(sum w^2) per axis, squared for two axes."""
    if sigma <= 0:
        return 1.0
    k = np.array([1.0])
    for a in _kernel(sigma):
        k = np.convolve(k, [a, 1.0 - 2.0 * a, a])
    return float((k**2).sum())


def ct_acquire(volume_hu: F32, rng: np.random.Generator, *, noise_hu: float, kernel_sigma: float) -> F32:
    """Noisy reconstructed slices in HU from ideal ones (n, rows, cols)."""
    gain = 1.0 / _noise_gain(kernel_sigma)
    noise = rng.standard_normal(volume_hu.shape, dtype=np.float32)
    noise *= np.float32(noise_hu * gain)
    noise += volume_hu
    out = _blur_inplane(noise, kernel_sigma)
    np.clip(out, -1024.0, 3071.0, out=out)
    return out.astype(np.float32, copy=False)


def dx_acquire(
    line_integrals: F32, rng: np.random.Generator, *, n0: float, psf_sigma: float, gain: float
) -> F32:
    """Detector signal (higher = more attenuation) from line integrals (n_views, rows, cols)."""
    counts = np.exp(-line_integrals, dtype=np.float32)
    counts *= np.float32(n0)
    noise = rng.standard_normal(counts.shape, dtype=np.float32)
    noise *= np.sqrt(counts)
    counts += noise
    counts = _blur_inplane(counts, psf_sigma)
    np.maximum(counts, np.float32(0.5), out=counts)
    signal = np.log(counts, dtype=np.float32)
    signal = np.float32(math.log(n0)) - signal
    signal *= np.float32(gain)
    np.maximum(signal, np.float32(0.0), out=signal)
    return signal.astype(np.float32, copy=False)


def smooth_bias_field(shape: tuple[int, int, int], rng: np.random.Generator, strength: float) -> F32:
    """A smooth multiplicative field around 1 (low-order polynomial in x, y, z)."""
    n, h, w = shape
    z = np.linspace(-1.0, 1.0, n, dtype=np.float32)[:, None, None]
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[None, :, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, None, :]
    c = rng.normal(0.0, strength, size=6).astype(np.float32)
    row = c[0] * y + c[3] * y * y  # (1, h, 1)
    col = c[1] * x + c[4] * x * x  # (1, 1, w)
    sl = c[2] * z + c[5] * z * z  # (n, 1, 1)
    field = np.float32(1.0) + row + col + sl
    clipped: F32 = np.clip(field, 0.5, 1.5).astype(np.float32)
    return clipped


def mr_acquire(
    signal: F32, rng: np.random.Generator, *, noise_sigma: float, bias_strength: float, psf_sigma: float
) -> F32:
    """Magnitude MR slices with Rician noise and a smooth bias field."""
    blurred = _blur_inplane(signal, psf_sigma)
    blurred *= smooth_bias_field(signal.shape, rng, bias_strength)
    re = rng.standard_normal(signal.shape, dtype=np.float32)
    re *= np.float32(noise_sigma)
    re += blurred
    im = rng.standard_normal(signal.shape, dtype=np.float32)
    im *= np.float32(noise_sigma)
    np.multiply(re, re, out=re)
    np.multiply(im, im, out=im)
    re += im
    return np.sqrt(re, out=re)
