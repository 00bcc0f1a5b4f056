"""Pitch and prosody targets: PASE's prosody (log-F0, voicing, zero-crossing rate,
energy) with a YIN-class tracker, and the slower, optional pYIN and Melodia trackers.

essentia's ``PitchYinProbabilistic`` (2.1b6.dev1389) reports 61.7 Hz, its lowest bin, for
a 440 Hz tone, so the pYIN target uses librosa's implementation.
"""

from __future__ import annotations

import numpy as np

from featurestore.targets import register
from featurestore.targets.base import Frames, Target, essentia_standard, fit_frames


def interpolate_log_f0(f0: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """Natural log of F0, linearly interpolated through unvoiced frames.

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
    params = {
        "n_fft": 1024, "fmin": 40.0, "fmax": 2000.0, "voicing_threshold": 0.5,
        "min_rms_db": -60.0, "f0_method": "PitchYinFFT",
    }
    deltas = 2
    default = True
    description = (
        "log-F0 (YIN-FFT, interpolated through unvoiced frames), voiced flag (YIN confidence "
        "and a -60 dBFS level gate), zero-crossing rate, log RMS energy; with deltas"
    )

    def compute(self, frames: Frames) -> np.ndarray:
        es = essentia_standard()
        import librosa

        p = self.params
        mag = frames.magnitude(p["n_fft"])
        tracker = es.PitchYinFFT(
            frameSize=p["n_fft"], sampleRate=frames.sample_rate, minFrequency=p["fmin"],
            maxFrequency=p["fmax"],
        )
        columns = np.ascontiguousarray(mag.T)
        pitch = np.empty(frames.n_frames, dtype=np.float32)
        confidence = np.empty(frames.n_frames, dtype=np.float32)
        for t in range(frames.n_frames):
            pitch[t], confidence[t] = tracker(columns[t])
        rms = librosa.feature.rms(S=mag, frame_length=p["n_fft"])[0]
        # YIN is confident on the faint release tails of notes; a level gate keeps them
        # unvoiced (voicing false alarms 57% -> 6% on soundfont notes, benchmarks/RESULTS.md).
        loud = 20.0 * np.log10(rms + 1e-12) >= p["min_rms_db"]
        voiced = (confidence >= p["voicing_threshold"]) & (pitch > 0) & loud
        zcr = librosa.feature.zero_crossing_rate(
            frames.y, frame_length=p["n_fft"], hop_length=frames.hop, center=True
        )[0]
        return np.stack([
            interpolate_log_f0(pitch, voiced),
            voiced.astype(np.float32),
            fit_frames(zcr, frames.n_frames),
            np.log(rms + 1e-5),
        ], axis=1)


@register
class ProbabilisticYin(Target):
    name = "pyin"
    dim = 2
    library = "librosa"
    params = {"frame_length": 2048, "fmin": 40.0, "fmax": 2000.0}
    description = (
        "pYIN (librosa.pyin): interpolated log-F0 and voicing probability; about 100x the "
        "cost of the default set, never in it"
    )

    def compute(self, frames: Frames) -> np.ndarray:
        import librosa

        p = self.params
        f0, _, prob = librosa.pyin(
            frames.y, fmin=p["fmin"], fmax=p["fmax"], sr=frames.sample_rate,
            frame_length=p["frame_length"], hop_length=frames.hop, center=True,
        )
        f0 = fit_frames(np.nan_to_num(f0, nan=0.0).astype(np.float32), frames.n_frames)
        prob = fit_frames(np.nan_to_num(prob, nan=0.0).astype(np.float32), frames.n_frames)
        return np.stack([interpolate_log_f0(f0, f0 > 0), prob], axis=1)


@register
class Melody(Target):
    name = "melody"
    dim = 2
    library = "essentia"
    params = {"frame_size": 2048, "min_frequency": 80.0, "max_frequency": 2000.0}
    description = (
        "predominant melody (essentia PredominantPitchMelodia): interpolated log-F0 and "
        "voiced flag"
    )

    def compute(self, frames: Frames) -> np.ndarray:
        es = essentia_standard()

        p = self.params
        y = es.EqualLoudness(sampleRate=frames.sample_rate)(frames.y)
        pitch, _ = es.PredominantPitchMelodia(
            frameSize=p["frame_size"], hopSize=frames.hop, sampleRate=frames.sample_rate,
            minFrequency=p["min_frequency"], maxFrequency=p["max_frequency"],
        )(y)
        pitch = fit_frames(np.asarray(pitch, dtype=np.float32), frames.n_frames)
        voiced = pitch > 0
        return np.stack([interpolate_log_f0(pitch, voiced), voiced.astype(np.float32)], axis=1)
