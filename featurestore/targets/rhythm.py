"""Rhythm targets: onset strength, tempogram, and the clip-level tempo."""

from __future__ import annotations

import numpy as np

from featurestore.targets import register
from featurestore.targets.base import Frames, Target


def onset_envelope(frames: Frames, n_fft: int, n_mels: int) -> np.ndarray:
    """Spectral-flux onset strength from the shared log-mel, shape (n_frames,)."""
    import librosa

    def make() -> np.ndarray:
        mel_db = librosa.power_to_db(frames.mel_power(n_fft, n_mels, 0.0, None))
        # A centred window starts to see an onset half a window before its centre reaches
        # it, so the raw flux peaks n_fft / 2 samples early. center=True delays the flux by
        # n_fft // (2 * hop) frames (plus the one frame the difference needs), so that the
        # peak lands on the frame centred on the onset; the first frames are 0.
        env = librosa.onset.onset_strength(
            S=mel_db, sr=frames.sample_rate, hop_length=frames.hop, n_fft=n_fft, center=True
        )
        return env.astype(np.float32)[: frames.n_frames]

    return frames.memo(("onset", n_fft, n_mels), make)


@register
class OnsetStrength(Target):
    name = "onset"
    dim = 1
    library = "librosa"
    params = {"n_fft": 1024, "n_mels": 80}
    default = True
    description = "onset strength (mean positive log-mel flux)"

    def compute(self, frames: Frames) -> np.ndarray:
        return onset_envelope(frames, self.params["n_fft"], self.params["n_mels"])[:, None]


@register
class Tempogram(Target):
    name = "tempogram"
    dim = 192
    library = "librosa"
    params = {"n_fft": 1024, "n_mels": 80, "win_length": 192}
    default = True
    description = (
        "autocorrelation tempogram of the onset strength over 1.92 s windows: row k is "
        "lag k frames (k = 50 at 100 frames/s is 120 BPM)"
    )

    def compute(self, frames: Frames) -> np.ndarray:
        import librosa

        p = self.params
        env = onset_envelope(frames, p["n_fft"], p["n_mels"])
        return librosa.feature.tempogram(
            onset_envelope=env, sr=frames.sample_rate, hop_length=frames.hop,
            win_length=p["win_length"],
        ).T


@register
class Tempo(Target):
    name = "tempo"
    dim = 1
    rate = "clip"
    library = "librosa"
    loss = "mse"
    params = {"n_fft": 1024, "n_mels": 80, "start_bpm": 120.0}
    description = "global tempo of the clip in BPM (one row per clip)"

    def compute(self, frames: Frames) -> np.ndarray:
        import librosa

        p = self.params
        env = onset_envelope(frames, p["n_fft"], p["n_mels"])
        if not env.any():
            return np.array([p["start_bpm"]])
        return librosa.feature.tempo(
            onset_envelope=env, sr=frames.sample_rate, hop_length=frames.hop,
            start_bpm=p["start_bpm"],
        )
