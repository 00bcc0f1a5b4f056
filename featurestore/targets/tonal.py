"""Tonal targets: chroma, tonnetz (librosa) and HPCP (essentia)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurestore.targets import register
from featurestore.targets.base import DecodedClip, Target, essentia_standard


def chroma(clip: DecodedClip, n_fft: int, tuning: float = 0.0) -> np.ndarray:
    """STFT chroma, shape (12, n_frames); bin 0 is C.

    Parameters
    ----------
    clip : DecodedClip
    n_fft : int
    tuning : float
        Deviation of the pitch-class bins from A440 equal temperament, in fractions of a
        bin; 0.0 (the default) assumes standard tuning instead of estimating it.
    """
    import librosa

    return clip.memo(
        ("chroma", n_fft, tuning),
        lambda: librosa.feature.chroma_stft(
            S=clip.power(n_fft), sr=clip.sample_rate, tuning=tuning, n_chroma=12
        ),
    )


@register
class Chroma(Target):
    name = "chroma"
    dim = 12
    library = "librosa"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024
        tuning: float = 0.0  # fractions of a chroma bin; 0.0: standard tuning, not estimated

    params = Params()
    default = True
    description = "chroma from the STFT power, max-normalised per frame; bin 0 is C, bin 9 is A"

    def compute(self, clip: DecodedClip) -> np.ndarray:
        return chroma(clip, self.params.n_fft, self.params.tuning).T


@register
class Tonnetz(Target):
    name = "tonnetz"
    dim = 6
    library = "librosa"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024

    params = Params()
    description = "tonal centroid (fifths, minor and major thirds) of the chroma"

    def compute(self, clip: DecodedClip) -> np.ndarray:
        import librosa

        return librosa.feature.tonnetz(chroma=chroma(clip, self.params.n_fft)).T


@register
class HPCP(Target):
    name = "hpcp"
    dim = 12
    library = "essentia"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024
        max_peaks: int = 60
        min_frequency: float = 40.0  # Hz
        max_frequency: float = 5000.0  # Hz
        band_preset: bool = False

    params = Params()
    description = (
        "harmonic pitch class profile (essentia SpectralPeaks + HPCP), rolled so bin 0 is C"
    )

    def compute(self, clip: DecodedClip) -> np.ndarray:
        es = essentia_standard()

        p = self.params
        peaks = es.SpectralPeaks(
            sampleRate=clip.sample_rate, maxPeaks=p.max_peaks, orderBy="magnitude",
            minFrequency=p.min_frequency, maxFrequency=p.max_frequency,
        )
        hpcp = es.HPCP(
            size=12, referenceFrequency=440.0, sampleRate=clip.sample_rate,
            minFrequency=p.min_frequency, maxFrequency=p.max_frequency,
            bandPreset=p.band_preset,
        )
        columns = np.ascontiguousarray(clip.magnitude(p.n_fft).T)
        out = np.zeros((clip.n_frames, 12), dtype=np.float32)
        for t in range(clip.n_frames):
            freqs, mags = peaks(columns[t])
            if len(freqs):
                out[t] = hpcp(freqs, mags)
        # essentia's bin 0 is the reference (A); bin 9 is A in the C-based convention.
        return np.roll(out, 9, axis=1)
