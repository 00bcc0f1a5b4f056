"""Pitch and prosody targets: PASE's prosody (log-F0, voicing, zero-crossing rate,
energy) with a YIN-class tracker, and the slower, optional pYIN and Melodia trackers.

essentia's ``PitchYinProbabilistic`` (2.1b6.dev1389) reports 61.7 Hz, its lowest bin, for
a 440 Hz tone, so the pYIN target uses librosa's implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from featurestore.targets import register
from featurestore.targets.base import DecodedClip, Target, essentia_standard, fit_frames


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
    library = "essentia"
    @dataclass(frozen=True)
    class Params:
        n_fft: int = 1024
        fmin: float = 40.0  # Hz
        fmax: float = 2000.0  # Hz
        voicing_threshold: float = 0.5  # YIN confidence
        min_rms_db: float = -60.0  # dBFS
        f0_method: Literal["PitchYinFFT"] = "PitchYinFFT"  # the essentia tracker

    params = Params()
    deltas = 2
    default = True
    description = (
        "log-F0 (YIN-FFT, interpolated through unvoiced frames), voiced flag (YIN confidence "
        "and a -60 dBFS level gate), zero-crossing rate, log RMS energy; with deltas"
    )

    def compute(self, clip: DecodedClip) -> np.ndarray:
        es = essentia_standard()
        import librosa

        p = self.params
        mag = clip.magnitude(p.n_fft)
        tracker = getattr(es, p.f0_method)(
            frameSize=p.n_fft, sampleRate=clip.sample_rate, minFrequency=p.fmin,
            maxFrequency=p.fmax,
        )
        columns = np.ascontiguousarray(mag.T)
        pitch = np.empty(clip.n_frames, dtype=np.float32)
        confidence = np.empty(clip.n_frames, dtype=np.float32)
        for t in range(clip.n_frames):
            pitch[t], confidence[t] = tracker(columns[t])
        rms = librosa.feature.rms(S=mag, frame_length=p.n_fft)[0]
        # YIN is confident on the faint release tails of notes; a level gate keeps them
        # unvoiced (voicing false alarms 57% -> 6% on soundfont notes, benchmarks/RESULTS.md).
        loud = 20.0 * np.log10(rms + 1e-12) >= p.min_rms_db
        voiced = (confidence >= p.voicing_threshold) & (pitch > 0) & loud
        zcr = librosa.feature.zero_crossing_rate(
            clip.y, frame_length=p.n_fft, hop_length=clip.hop, center=True
        )[0]
        return np.stack([
            interpolate_log_f0(pitch, voiced),
            voiced.astype(np.float32),
            fit_frames(zcr, clip.n_frames),
            np.log(rms + 1e-5),
        ], axis=1)


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
