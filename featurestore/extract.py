"""Extraction: one clip in, its arrays out. Pure; reads the audio file and nothing else.

These functions are what a Dask worker runs. A partition's result holds everything the
client writes into a shard: the stored (already cast) arrays, per-clip statistics and
the error rows, so the client does no numeric work and needs no shared filesystem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from featurestore.audio import AudioError, decode, sha1_file
from featurestore.manifest import Clip
from featurestore.targets import Frames, Target, resolve

_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ExtractConfig:
    """How clips are turned into arrays; part of every shard's identity.

    Parameters
    ----------
    targets : tuple of str
        Target names (the waveform is always stored).
    sample_rate : int
        Store sample rate in Hz.
    hop : int
        Samples per frame.
    max_seconds : float
        Longer files are cut into clips of this length, ids suffixed ``@0000``, ``@0001``...
    min_seconds : float
        Shorter files are skipped and recorded as too short; a long file's final segment
        shorter than this is dropped (the file's other segments are kept).
    with_waveform : bool
        Whether to return the waveform (False when adding targets to a built store).
    """

    targets: tuple[str, ...]
    sample_rate: int = 16000
    hop: int = 160
    max_seconds: float = 600.0
    min_seconds: float = 0.5
    with_waveform: bool = True

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in resolve(list(self.targets))]


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per dimension (float64), combinable
    exactly (Chan et al.) across clips, shards and store files."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        return cls(len(x), mean, ((x - mean) ** 2).sum(axis=0))

    def __add__(self, other: Moments) -> Moments:
        n = self.count + other.count
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))


@dataclass
class ClipArrays:
    """One stored clip: its row, its arrays in storage dtype, and their moments."""

    clip: Clip
    n_samples: int
    sha1: str
    waveform: np.ndarray | None
    targets: dict[str, np.ndarray]
    moments: dict[str, Moments]


@dataclass
class PartitionResult:
    """What a worker sends back for one partition."""

    clips: list[ClipArrays] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def n_samples(self) -> int:
        """Samples over every clip (at the store's sample rate)."""
        return sum(c.n_samples for c in self.clips)


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float32 values to the storage dtype, saturating rather than overflowing."""
    if dtype == "float16":
        return np.clip(x, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)
    if dtype == "int16":
        return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    return x.astype(dtype)


def extract_clip(clip: Clip, config: ExtractConfig) -> list[ClipArrays]:
    """Decode one clip and compute every target.

    Returns
    -------
    list of ClipArrays
        One entry per segment (one for any file up to ``config.max_seconds``). Targets are
        in their storage dtype with shape ``(n_samples // hop, dim)`` (frame rate) or
        ``(1, dim)`` (clip rate); moments are of the stored values.

    Raises
    ------
    AudioError
        The file is unusable (the message is the reason for the error table).
    """
    targets = resolve(list(config.targets))
    segments = list(decode(clip.path, config.sample_rate, max_seconds=config.max_seconds))
    min_samples = round(config.min_seconds * config.sample_rate)
    if len(segments[-1]) < min_samples:
        if len(segments) == 1:
            raise AudioError(
                f"too short: {len(segments[0]) / config.sample_rate:.3f} s "
                f"< {config.min_seconds} s minimum"
            )
        segments = segments[:-1]
    sha1 = sha1_file(clip.path)
    out = []
    for k, y in enumerate(segments):
        row = clip
        if len(segments) > 1:
            meta = {**clip.meta, "segment": str(k),
                    "segment_start_seconds": f"{k * config.max_seconds:g}"}
            row = replace(clip, id=f"{clip.id}@{k:04d}", meta=meta)
        out.append(_arrays(row, y, sha1, targets, config))
    return out


def _arrays(
    clip: Clip, y: np.ndarray, sha1: str, targets: list[Target], config: ExtractConfig
) -> ClipArrays:
    frames = Frames(y, config.sample_rate, config.hop)
    stored: dict[str, np.ndarray] = {}
    moments: dict[str, Moments] = {}
    for target in targets:
        x = to_storage(target(frames), target.dtype)
        stored[target.name] = x
        moments[target.name] = Moments.of(x)
    waveform = to_storage(y, "int16") if config.with_waveform else None
    return ClipArrays(clip, len(y), sha1, waveform, stored, moments)


def extract_partition(clips: list[Clip], config: ExtractConfig) -> PartitionResult:
    """Extract every clip of a partition; a failing clip becomes an error row.

    The single-threaded numeric libraries are what makes one task per core the right
    granularity, so BLAS and numba threads are pinned to one per process.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = PartitionResult()
    for clip in clips:
        try:
            result.clips.extend(extract_clip(clip, config))
        except AudioError as e:
            result.errors.append((clip.path, str(e)))
        except Exception as e:  # noqa: BLE001 - a library failing on odd input ends one clip
            result.errors.append((clip.path, f"{type(e).__name__}: {e}"))
    return result
