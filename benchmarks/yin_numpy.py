"""A vectorised YIN on the shared STFT power: the prototype behind a recommendation in
RESULTS.md (replacing the per-frame essentia ``PitchYinFFT`` loop of the ``prosody``
target). Benchmark code only; the targets do not use it.

The autocorrelation of every (Hann-windowed) frame is one batched inverse FFT of the
power spectrum; the YIN difference ``d(tau) = 2 (r(0) - r(tau))``, its cumulative-mean
normalisation, the absolute threshold (first local minimum under it, else the global
minimum) and parabolic interpolation are numpy operations over all frames at once.
"""

from __future__ import annotations

import numpy as np


def yin_from_power(
    power: np.ndarray, sample_rate: int, fmin: float, fmax: float, threshold: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """F0 and confidence per frame from an STFT power spectrogram.

    Parameters
    ----------
    power : np.ndarray, shape (1 + n_fft // 2, n_frames)
        ``|STFT|**2`` of Hann-windowed frames.
    sample_rate : int
    fmin, fmax : float
        Search range in Hz; lags beyond ``n_fft // 2`` are not searched.
    threshold : float
        YIN's absolute threshold on the normalised difference.

    Returns
    -------
    f0 : np.ndarray, shape (n_frames,)
        Hz (0 where the frame is silent).
    confidence : np.ndarray, shape (n_frames,)
        ``1 - d'(tau)`` at the chosen lag, clipped to [0, 1].
    """
    n_fft = 2 * (power.shape[0] - 1)
    r = np.fft.irfft(power, n=n_fft, axis=0)
    max_lag = min(int(np.ceil(sample_rate / fmin)) + 1, n_fft // 2 - 1)
    min_lag = max(2, int(sample_rate / fmax))
    d = 2.0 * (r[:1] - r[1 : max_lag + 2])  # lags 1 .. max_lag + 1
    lags = np.arange(1, max_lag + 2, dtype=np.float64)[:, None]
    dn = d * lags / np.maximum(np.cumsum(d, axis=0), 1e-20)
    seg = dn[min_lag - 1 :]  # lags min_lag .. max_lag + 1
    inner = seg[1:-1]
    is_min = (inner < seg[:-2]) & (inner <= seg[2:]) & (inner < threshold)
    first = np.where(is_min.any(axis=0), is_min.argmax(axis=0) + 1, seg[1:-1].argmin(axis=0) + 1)
    cols = np.arange(seg.shape[1])
    a, b, c = seg[first - 1, cols], seg[first, cols], seg[first + 1, cols]
    denom = a - 2.0 * b + c
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    tau = first + min_lag + np.clip(shift, -1.0, 1.0)
    silent = r[0] <= 1e-12
    f0 = np.where(silent, 0.0, sample_rate / tau)
    conf = np.where(silent, 0.0, np.clip(1.0 - b, 0.0, 1.0))
    return f0, conf
