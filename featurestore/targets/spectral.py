"""Spectral targets: waveform, log power spectrum, log-mel, MFCC, gammatone, contrast, CQT.

All share the clip's STFT through :class:`~featurestore.targets.base.DecodedClip`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurestore.targets import register
from featurestore.targets.base import DecodedClip, Target

EPS = 1e-10


@register
class Waveform(Target):
    name = "waveform"
    dim = 1
    rate = "sample"
    library = "numpy"
    dtype = "int16"
    default = True
    description = "the clip itself (encoder input and waveform-decoder target), int16 PCM"

    def compute(self, clip: DecodedClip) -> np.ndarray:
        return clip.y


@register
class LogPowerSpectrum(Target):
    name = "lps"
    dim = 513
    library = "librosa"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024

    params = Params()
    default = True
    description = "log power spectrum, natural log of |STFT|^2 + 1e-10, Hann window n_fft"

    def compute(self, clip: DecodedClip) -> np.ndarray:
        return np.log(clip.power(self.params.n_fft) + EPS).T


@register
class LogMel(Target):
    name = "fbank"
    dim = 80
    library = "librosa"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024
        n_mels: int = 80
        fmin: float = 0.0  # Hz
        fmax: float | None = None  # Hz; None: the Nyquist frequency

    params = Params()
    default = True
    description = "log mel filterbank energies (Slaney mel scale), natural log + 1e-10"

    def compute(self, clip: DecodedClip) -> np.ndarray:
        p = self.params
        return np.log(clip.mel_power(p.n_fft, p.n_mels, p.fmin, p.fmax) + EPS).T


@register
class MFCC(Target):
    name = "mfcc"
    dim = 60
    library = "librosa"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024
        n_mels: int = 80
        n_mfcc: int = 20

    params = Params()
    deltas = 2
    default = True
    description = "MFCC (DCT-II of the dB log-mel) with first and second deltas"

    def compute(self, clip: DecodedClip) -> np.ndarray:
        import librosa

        p = self.params
        mel_db = librosa.power_to_db(clip.mel_power(p.n_fft, p.n_mels, 0.0, None))
        return librosa.feature.mfcc(S=mel_db, n_mfcc=p.n_mfcc).T


def erb_space(fmin: float, fmax: float, n: int) -> np.ndarray:
    """``n`` centre frequencies (Hz) equally spaced on the ERB-rate scale (Glasberg & Moore)."""
    def to_erb(f: np.ndarray | float) -> np.ndarray:
        return 21.4 * np.log10(1.0 + 0.00437 * np.asarray(f))

    erbs = np.linspace(to_erb(fmin), to_erb(fmax), n)
    return (10.0 ** (erbs / 21.4) - 1.0) / 0.00437


def gammatone_weights(sample_rate: int, n_fft: int, n_bands: int, fmin: float) -> np.ndarray:
    """Magnitude responses of 4th-order gammatone filters on the STFT bins.

    Returns
    -------
    np.ndarray, shape (n_bands, 1 + n_fft // 2)
        Row ``k`` is ``|H_k(f)| = (1 + ((f - fc_k) / (1.019 ERB(fc_k)))**2) ** -2``,
        normalised to unit sum, for centre frequencies ``fc_k`` ERB-spaced from ``fmin`` to
        0.9 x Nyquist.
    """
    freqs = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    centres = erb_space(fmin, 0.9 * sample_rate / 2.0, n_bands)
    erb = 24.7 + centres / 9.265
    resp = (1.0 + ((freqs[None, :] - centres[:, None]) / (1.019 * erb[:, None])) ** 2) ** -2
    return (resp / resp.sum(axis=1, keepdims=True)).astype(np.float32)


@register
class GammatoneLong(Target):
    name = "gtn_long"
    dim = 40
    library = "numpy"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 2048
        n_bands: int = 40
        fmin: float = 100.0  # Hz

    params = Params()
    description = (
        "long-context gammatone filterbank: 40 ERB-spaced 4th-order gammatone responses "
        "applied to a 2048-sample STFT magnitude, log"
    )

    def compute(self, clip: DecodedClip) -> np.ndarray:
        p = self.params
        w = clip.memo(
            ("gammatone", clip.sample_rate, p.n_fft, p.n_bands, p.fmin),
            lambda: gammatone_weights(clip.sample_rate, p.n_fft, p.n_bands, p.fmin),
        )
        return np.log(w @ clip.magnitude(p.n_fft) + 1e-6).T


@register
class SpectralContrast(Target):
    name = "contrast"
    dim = 7
    library = "librosa"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024
        n_bands: int = 6
        fmin: float = 100.0  # Hz

    params = Params()
    default = True
    description = "spectral contrast (peak-valley in dB) in 6 octave bands from 100 Hz + one"

    def compute(self, clip: DecodedClip) -> np.ndarray:
        import librosa

        p = self.params
        return librosa.feature.spectral_contrast(
            S=clip.magnitude(p.n_fft), sr=clip.sample_rate, n_bands=p.n_bands, fmin=p.fmin,
        ).T


@register
class ConstantQ(Target):
    name = "cqt"
    dim = 84
    library = "librosa"
    @dataclass(frozen=True)
    class Params:
        n_bins: int = 84
        bins_per_octave: int = 12
        fmin: float = 32.703195662574764  # Hz (C1)

    params = Params()
    default = True
    description = "log constant-Q magnitude, 7 octaves from C1 (32.7 Hz), 12 bins per octave"

    def compute(self, clip: DecodedClip) -> np.ndarray:
        p = self.params
        # librosa.cqt's values (tuning 0, its defaults otherwise) to float32 rounding, from its
        # filter bank built once per process and applied as time-domain kernels (issue 12).
        return np.log(clip.cqt(p.n_bins, p.bins_per_octave, p.fmin) + 1e-6).T
