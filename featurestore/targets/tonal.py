"""Tonal targets: chroma, tonnetz (librosa) and HPCP (essentia)."""

from __future__ import annotations

import numpy as np

from featurestore.targets import register
from featurestore.targets.base import Frames, Target, essentia_standard


def chroma(frames: Frames, n_fft: int) -> np.ndarray:
    """STFT chroma with no tuning estimation, shape (12, n_frames); bin 0 is C."""
    import librosa

    return frames.memo(
        ("chroma", n_fft),
        lambda: librosa.feature.chroma_stft(
            S=frames.power(n_fft), sr=frames.sample_rate, tuning=0.0, n_chroma=12
        ),
    )


@register
class Chroma(Target):
    name = "chroma"
    dim = 12
    library = "librosa"
    params = {"n_fft": 1024, "tuning": 0.0}
    default = True
    description = "chroma from the STFT power, max-normalised per frame; bin 0 is C, bin 9 is A"

    def compute(self, frames: Frames) -> np.ndarray:
        return chroma(frames, self.params["n_fft"]).T


@register
class Tonnetz(Target):
    name = "tonnetz"
    dim = 6
    library = "librosa"
    params = {"n_fft": 1024}
    description = "tonal centroid (fifths, minor and major thirds) of the chroma"

    def compute(self, frames: Frames) -> np.ndarray:
        import librosa

        return librosa.feature.tonnetz(chroma=chroma(frames, self.params["n_fft"])).T


@register
class HPCP(Target):
    name = "hpcp"
    dim = 12
    library = "essentia"
    params = {
        "n_fft": 1024, "max_peaks": 60, "min_frequency": 40.0, "max_frequency": 5000.0,
        "band_preset": False,
    }
    description = (
        "harmonic pitch class profile (essentia SpectralPeaks + HPCP), rolled so bin 0 is C"
    )

    def compute(self, frames: Frames) -> np.ndarray:
        es = essentia_standard()

        p = self.params
        peaks = es.SpectralPeaks(
            sampleRate=frames.sample_rate, maxPeaks=p["max_peaks"], orderBy="magnitude",
            minFrequency=p["min_frequency"], maxFrequency=p["max_frequency"],
        )
        hpcp = es.HPCP(
            size=12, referenceFrequency=440.0, sampleRate=frames.sample_rate,
            minFrequency=p["min_frequency"], maxFrequency=p["max_frequency"],
            bandPreset=p["band_preset"],
        )
        columns = np.ascontiguousarray(frames.magnitude(p["n_fft"]).T)
        out = np.zeros((frames.n_frames, 12), dtype=np.float32)
        for t in range(frames.n_frames):
            freqs, mags = peaks(columns[t])
            if len(freqs):
                out[t] = hpcp(freqs, mags)
        # essentia's bin 0 is the reference (A); bin 9 is A in the C-based convention.
        return np.roll(out, 9, axis=1)
