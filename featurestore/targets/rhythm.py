"""Rhythm targets: onset strength, tempogram, and the clip-level tempo."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurestore.targets import register
from featurestore.targets.base import DecodedClip, Target


def onset_envelope(clip: DecodedClip, n_fft: int, n_mels: int) -> np.ndarray:
    """Spectral-flux onset strength from the shared log-mel, shape (n_frames,)."""
    import librosa

    def make() -> np.ndarray:
        mel_db = librosa.power_to_db(clip.mel_power(n_fft, n_mels, 0.0, None))
        # A centred window starts to see an onset half a window before its centre reaches
        # it, so the raw flux peaks n_fft / 2 samples early. center=True delays the flux by
        # n_fft // (2 * hop) frames (plus the one frame the difference needs), so that the
        # peak lands on the frame centred on the onset; the first frames are 0.
        env = librosa.onset.onset_strength(
            S=mel_db, sr=clip.sample_rate, hop_length=clip.hop, n_fft=n_fft, center=True
        )
        return env.astype(np.float32)[: clip.n_frames]

    return clip.memo(("onset", n_fft, n_mels), make)


@register
class OnsetStrength(Target):
    name = "onset"
    dim = 1
    library = "librosa"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024
        n_mels: int = 80

    params = Params()
    default = True
    description = "onset strength (mean positive log-mel flux)"

    def compute(self, clip: DecodedClip) -> np.ndarray:
        return onset_envelope(clip, self.params.n_fft, self.params.n_mels)[:, None]


@register
class Tempogram(Target):
    name = "tempogram"
    dim = 192
    library = "librosa"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024
        n_mels: int = 80
        win_length: int = 192  # frames

    params = Params()
    default = True
    description = (
        "autocorrelation tempogram of the onset strength over 1.92 s windows: row k is "
        "lag k frames (k = 50 at 100 frames/s is 120 BPM)"
    )

    def compute(self, clip: DecodedClip) -> np.ndarray:
        import librosa

        p = self.params
        env = onset_envelope(clip, p.n_fft, p.n_mels)
        return librosa.feature.tempogram(
            onset_envelope=env, sr=clip.sample_rate, hop_length=clip.hop,
            win_length=p.win_length,
        ).T


@register
class Tempo(Target):
    name = "tempo"
    dim = 1
    rate = "clip"
    library = "librosa"
    loss = "mse"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024
        n_mels: int = 80
        start_bpm: float = 120.0  # also the tempo of a clip without onsets

    params = Params()
    description = "global tempo of the clip in BPM (one row per clip)"

    def compute(self, clip: DecodedClip) -> np.ndarray:
        import librosa

        p = self.params
        env = onset_envelope(clip, p.n_fft, p.n_mels)
        if not env.any():
            return np.array([p.start_bpm])
        return librosa.feature.tempo(
            onset_envelope=env, sr=clip.sample_rate, hop_length=clip.hop,
            start_bpm=p.start_bpm,
        )
