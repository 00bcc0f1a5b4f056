"""Pitch and prosody targets: PASE's prosody (log-F0, voicing, zero-crossing rate,
energy) with a YIN tracker, and the slower, optional pYIN and Melodia trackers.

The prosody target's F0 is :func:`yin_from_power`, a YIN vectorised over all frames of
the shared STFT power spectrum (one batched inverse FFT); essentia's per-frame
``PitchYinFFT`` stays selectable (``f0_method``). essentia's ``PitchYinProbabilistic``
(2.1b6.dev1389) reports 61.7 Hz, its lowest bin, for a 440 Hz tone, so the pYIN target
uses librosa's implementation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from featurestore.targets import register
from featurestore.targets.base import DecodedClip, Target, essentia_standard, fit_frames


@functools.lru_cache(maxsize=8)
def _window_autocorrelation(window: str, n_fft: int) -> np.ndarray:
    """Circular autocorrelation of the periodic ``window`` of ``n_fft`` samples,
    normalised to 1 at lag 0, float64, shape (n_fft,)."""
    import scipy.signal

    w = scipy.signal.get_window(window, n_fft, fftbins=True)
    rw = np.fft.irfft(np.abs(np.fft.rfft(w)) ** 2, n=n_fft)
    return rw / rw[0]


def yin_from_power(
    power: np.ndarray,
    sample_rate: float,
    fmin: float,
    fmax: float,
    threshold: float = 0.15,
    window: str = "hann",
) -> tuple[np.ndarray, np.ndarray]:
    """YIN fundamental frequency and confidence of every frame of a power spectrogram.

    YIN (de Cheveigné & Kawahara, 2002) vectorised over frames. The autocorrelation
    ``r(tau)`` of every windowed frame is one batched inverse FFT of its power spectrum
    (a DCT-I, the spectrum being real and even); dividing it by the analysis window's
    own autocorrelation (Boersma, 1993) removes the window's taper, which would
    otherwise make the difference function grow with the lag and read low notes sharp.
    Then, per frame and all frames at once:

    - difference function ``d(tau) = 2 (r(0) - r(tau))``, clipped at 0;
    - cumulative-mean-normalised difference ``d'(tau) = d(tau) tau / sum(d(1..tau))``;
    - the period is the first lag in ``[sample_rate // fmax, ceil(sample_rate / fmin)]``
      where ``d'`` has a local minimum below ``threshold``, else the lag of the smallest
      ``d'`` in that range;
    - refined by a parabola through ``d`` at that lag and its two neighbours.

    Because ``r`` comes from an ``n_fft``-point spectrum it is the *circular*
    autocorrelation of the frame: with a 1024-sample Hann frame at 16 kHz pitches stay
    within 1% down to about 50 Hz (55 Hz reads 55.4 Hz) and read sharp below
    (40 Hz reads 42 Hz).

    Parameters
    ----------
    power : np.ndarray, shape (1 + n_fft // 2, n_frames), float32 or float64
        Power spectrogram ``|STFT|**2`` of frames of ``n_fft`` samples weighted by
        ``window`` (librosa's ``stft`` with its defaults, squared). float32 input is
        computed in float32 (2.5x faster than float64; on music F0 and confidence agree
        with float64 to within 3e-6 and 1e-6), anything else in float64.
    sample_rate : float
        Samples per second of the signal, Hz.
    fmin, fmax : float
        Lowest and highest F0 searched, Hz: ``0 < fmin < fmax <= sample_rate / 2``, and
        the longest period, ``ceil(sample_rate / fmin) + 1`` samples, must fit in half a
        frame (``n_fft // 2``).
    threshold : float
        YIN's absolute threshold on ``d'``, in (0, 1]: lower prefers the global minimum
        (fewer octave-up errors on single notes), higher the first dip (the shorter
        period: the upper note, over an accompanying one); the YIN paper uses 0.1.
    window : str
        The analysis window's name for ``scipy.signal.get_window`` (periodic, ``n_fft``
        samples), as passed to the STFT.

    Returns
    -------
    f0 : np.ndarray, shape (n_frames,)
        Fundamental frequency in Hz, in ``[~fmin, ~fmax]`` (the parabola can move it up
        to one lag beyond the range); 0 for frames without energy
        (``r(0) <= 1e-12``). Every frame with energy gets an estimate: voicing is the
        caller's decision, from ``confidence`` (and level).
    confidence : np.ndarray, shape (n_frames,)
        ``1 - d'(tau)`` at the chosen lag, clipped to [0, 1]: 1 for a strictly periodic
        frame, about 0.1-0.2 for white noise; 0 for frames without energy.
        Same dtype as ``f0`` (float32 for float32 ``power``, else float64).

    Raises
    ------
    ValueError
        If ``power`` is not a real 2-d array with at least 3 rows, or the frequency range,
        sample rate or threshold is out of bounds.

    Examples
    --------
    >>> import librosa
    >>> sr = 16000
    >>> y = np.sin(2 * np.pi * 220.0 * np.arange(sr) / sr).astype(np.float32)
    >>> power = np.abs(librosa.stft(y, n_fft=1024, hop_length=160)) ** 2
    >>> f0, confidence = yin_from_power(power, sr, fmin=40.0, fmax=2000.0)
    >>> round(float(np.median(f0)), 1), bool(np.median(confidence) > 0.9)
    (220.0, True)
    """
    import scipy.fft

    power = np.asarray(power)
    if power.ndim != 2 or power.shape[0] < 3:
        raise ValueError(f"power must have shape (1 + n_fft // 2, n_frames), got {power.shape}")
    if not np.issubdtype(power.dtype, np.floating):
        raise ValueError(f"power must be a real floating-point array, got {power.dtype}")
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not 0 < fmin < fmax:
        raise ValueError(f"need 0 < fmin < fmax, got fmin={fmin}, fmax={fmax}")
    if fmax > sample_rate / 2:
        raise ValueError(f"fmax={fmax} Hz is above the Nyquist frequency {sample_rate / 2} Hz")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    n_fft = 2 * (power.shape[0] - 1)
    lo = max(2, int(sample_rate // fmax))  # shortest period searched, samples
    hi = int(np.ceil(sample_rate / fmin))  # longest
    if hi + 1 > n_fft // 2:
        raise ValueError(
            f"fmin={fmin} Hz needs periods of {hi} samples: n_fft={n_fft} holds at most "
            f"{n_fft // 2 - 1}; raise fmin above {sample_rate / (n_fft // 2 - 1):.1f} Hz or "
            "n_fft"
        )
    dtype = np.float32 if power.dtype == np.float32 else np.float64
    n_frames = power.shape[1]
    cols = np.arange(n_frames)

    # r[tau, frame] = n_fft x the autocorrelation at lags 0 .. hi + 1. The power spectrum
    # is real and even, so its inverse FFT is a DCT-I (~40% cheaper than irfft here).
    r = scipy.fft.dct(power.astype(dtype, copy=False), type=1, axis=0)[: hi + 2]
    r0 = r[0].copy()
    rw = _window_autocorrelation(window, n_fft)[1 : hi + 2].astype(dtype)
    d = r[1:]  # d(1 .. hi + 1), computed in place in r's memory
    d /= rw[:, None]  # the window's taper divided out
    np.subtract(r0, d, out=d)
    d *= 2
    np.maximum(d, 0, out=d)
    # d' = d tau / cumsum(d): the running sum row by row, as numpy's cumsum along axis 0
    # of a C-ordered array is ~6x slower
    dn = np.empty_like(d)
    dn[0] = d[0]
    for i in range(1, len(d)):
        np.add(dn[i - 1], d[i], out=dn[i])
    np.maximum(dn, 1e-20, out=dn)
    np.divide(d, dn, out=dn)
    dn *= np.arange(1, hi + 2, dtype=dtype)[:, None]
    # candidates: lags lo .. hi, with neighbours lo - 1 and hi + 1 (rows tau - 1 of d, dn)
    seg = dn[lo - 2 :]  # lags lo - 1 .. hi + 1
    inner = seg[1:-1]
    is_min = inner < threshold
    is_min &= inner < seg[:-2]
    is_min &= inner <= seg[2:]
    k = np.where(is_min.any(axis=0), is_min.argmax(axis=0), inner.argmin(axis=0)) + lo
    a, b, c = d[k - 2, cols], d[k - 1, cols], d[k, cols]
    curvature = a - 2 * b + c
    safe = np.where(curvature > 0, curvature, 1)
    shift = np.where(curvature > 0, np.clip(0.5 * (a - c) / safe, -1, 1), 0)
    silent = r0 <= 1e-12 * n_fft
    f0 = np.where(silent, 0, sample_rate / (k + shift)).astype(dtype, copy=False)
    confidence = np.where(silent, 0, np.clip(1 - dn[k - 1, cols], 0, 1)).astype(dtype, copy=False)
    return f0, confidence


def zero_crossing_rate(y: np.ndarray, frame_length: int, hop_length: int,
                       threshold: float = 1e-10) -> np.ndarray:
    """Fraction of sign changes between consecutive samples in centred frames.

    The same values as librosa's ``feature.zero_crossing_rate`` with its defaults (edge
    padding of ``frame_length // 2`` on both sides; magnitudes at or below ``threshold``
    count as zero, and zero as positive), from one running count of the changes instead
    of counting every frame's samples again: a frame of 1024 samples every 160 looked at
    each sample 6.4 times, 5 % of an extraction worker's time.

    Parameters
    ----------
    y : np.ndarray, shape (n,)
        Audio, n >= 1.
    frame_length, hop_length : int
        In samples.
    threshold : float
        Amplitude at or below which a sample counts as zero.

    Returns
    -------
    np.ndarray, shape (1 + (n + 2 * (frame_length // 2) - frame_length) // hop_length,), float64
        Sign changes within each frame divided by ``frame_length``.
    """
    padded = np.pad(y, frame_length // 2, mode="edge")
    negative = padded < -threshold
    # changes[k]: sign changes between consecutive samples up to sample k
    count = np.int32 if len(padded) < 2**31 else np.int64
    changes = np.zeros(len(padded), dtype=count)
    np.cumsum(negative[1:] != negative[:-1], out=changes[1:], dtype=count)
    starts = np.arange(0, len(padded) - frame_length + 1, hop_length)
    return (changes[starts + frame_length - 1] - changes[starts]) / frame_length


def interpolate_log_f0(f0: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """Natural log of F0, linearly interpolated through unvoiced clip.

    Parameters
    ----------
    f0 : np.ndarray, shape (n,)
        Frequency in Hz per frame (any value where unvoiced).
    voiced : np.ndarray of bool, shape (n,)

    Returns
    -------
    np.ndarray, shape (n,)
        ``log(f0)`` where voiced; held constant before the first and after the last
        voiced frame; 0 everywhere when no frame is voiced.
    """
    out = np.zeros(len(f0), dtype=np.float32)
    idx = np.flatnonzero(voiced & (f0 > 0))
    if len(idx):
        out[:] = np.interp(np.arange(len(f0)), idx, np.log(f0[idx]))
    return out


@register
class Prosody(Target):
    name = "prosody"
    dim = 12
    library = "numpy"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024
        fmin: float = 40.0  # Hz
        fmax: float = 2000.0  # Hz
        voicing_threshold: float = 0.5  # YIN confidence, 1 - d'(period)
        min_rms_db: float = -60.0  # dBFS
        f0_method: Literal["yin", "PitchYinFFT"] = "yin"  # numpy YIN, or essentia's
        # YIN's absolute threshold on d' (f0_method "yin"): 0.25 rather than YIN's 0.1-0.15
        # keeps the melody over an accompanying note (soundfont GPE 21% vs 34% at 0.15)
        # for 0.9% vs 0.3% on single notes (benchmarks/RESULTS.md, issue 12)
        yin_threshold: float = 0.25

    params = Params()
    deltas = 2
    default = True
    description = (
        "log-F0 (YIN on the shared STFT power, interpolated through unvoiced frames), voiced "
        "flag (YIN confidence and a -60 dBFS level gate), zero-crossing rate, log RMS "
        "energy; with deltas"
    )

    def compute(self, clip: DecodedClip) -> np.ndarray:
        import librosa

        p = self.params
        mag = clip.magnitude(p.n_fft)
        if p.f0_method == "yin":
            # The 1024-sample frame holds periods up to 510 samples: at sample rates above
            # ~20 kHz the lowest F0 searched is raised to what the frame can hold.
            fmin = max(p.fmin, clip.sample_rate / (p.n_fft // 2 - 2))
            pitch, confidence = yin_from_power(
                clip.power(p.n_fft), clip.sample_rate, fmin, p.fmax, threshold=p.yin_threshold
            )
        elif p.f0_method == "PitchYinFFT":
            pitch, confidence = self._pitch_yin_fft(mag, clip.sample_rate)
        else:
            raise ValueError(f"prosody: unknown f0_method {p.f0_method!r}")
        rms = librosa.feature.rms(S=mag, frame_length=p.n_fft)[0]
        # YIN is confident on the faint release tails of notes; a level gate keeps them
        # unvoiced (voicing false alarms 57% -> 6% on soundfont notes, benchmarks/RESULTS.md).
        loud = 20.0 * np.log10(rms + 1e-12) >= p.min_rms_db
        voiced = (confidence >= p.voicing_threshold) & (pitch > 0) & loud
        zcr = zero_crossing_rate(clip.y, p.n_fft, clip.hop)
        return np.stack([
            interpolate_log_f0(pitch, voiced),
            voiced.astype(np.float32),
            fit_frames(zcr, clip.n_frames),
            np.log(rms + 1e-5),
        ], axis=1)

    def _pitch_yin_fft(self, mag: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """essentia ``PitchYinFFT``, one call per frame of the magnitude spectrogram."""
        es = essentia_standard()
        p = self.params
        tracker = es.PitchYinFFT(
            frameSize=p.n_fft, sampleRate=sample_rate, minFrequency=p.fmin,
            maxFrequency=p.fmax,
        )
        columns = np.ascontiguousarray(mag.T)
        pitch = np.empty(len(columns), dtype=np.float32)
        confidence = np.empty(len(columns), dtype=np.float32)
        for t in range(len(columns)):
            pitch[t], confidence[t] = tracker(columns[t])
        return pitch, confidence


@register
class ProbabilisticYin(Target):
    name = "pyin"
    dim = 2
    library = "librosa"
    @dataclass(frozen=True)
    class Params:
        frame_length: int = 2048
        fmin: float = 40.0  # Hz
        fmax: float = 2000.0  # Hz

    params = Params()
    description = (
        "pYIN (librosa.pyin): interpolated log-F0 and voicing probability; about 100x the "
        "cost of the default set, never in it"
    )

    def compute(self, clip: DecodedClip) -> np.ndarray:
        import librosa

        p = self.params
        f0, _, prob = librosa.pyin(
            clip.y, fmin=p.fmin, fmax=p.fmax, sr=clip.sample_rate,
            frame_length=p.frame_length, hop_length=clip.hop, center=True,
        )
        f0 = fit_frames(np.nan_to_num(f0, nan=0.0).astype(np.float32), clip.n_frames)
        prob = fit_frames(np.nan_to_num(prob, nan=0.0).astype(np.float32), clip.n_frames)
        return np.stack([interpolate_log_f0(f0, f0 > 0), prob], axis=1)


@register
class Melody(Target):
    name = "melody"
    dim = 2
    library = "essentia"
    @dataclass(frozen=True)
    class Params:
        frame_size: int = 2048
        min_frequency: float = 80.0  # Hz
        max_frequency: float = 2000.0  # Hz

    params = Params()
    description = (
        "predominant melody (essentia PredominantPitchMelodia): interpolated log-F0 and "
        "voiced flag"
    )

    def compute(self, clip: DecodedClip) -> np.ndarray:
        es = essentia_standard()

        p = self.params
        y = es.EqualLoudness(sampleRate=clip.sample_rate)(clip.y)
        pitch, _ = es.PredominantPitchMelodia(
            frameSize=p.frame_size, hopSize=clip.hop, sampleRate=clip.sample_rate,
            minFrequency=p.min_frequency, maxFrequency=p.max_frequency,
        )(y)
        pitch = fit_frames(np.asarray(pitch, dtype=np.float32), clip.n_frames)
        voiced = pitch > 0
        return np.stack([interpolate_log_f0(pitch, voiced), voiced.astype(np.float32)], axis=1)
