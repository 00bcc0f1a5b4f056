"""Small stores for the tests, built through the real featurestore build, and a built
store's clips as an extraction result (:func:`partition_of`)."""

from __future__ import annotations

import concurrent.futures as cf
import csv
from pathlib import Path

import numpy as np
import soundfile as sf

import featurestore
from featurestore.store import ClipArrays, PartitionResult, Stats, Store, TargetSpec

NOTE_NAMES = ("C", "D", "E", "F", "G", "A")

# A PASE+ of about 0.1 M parameters for tests that train or run an encoder.
TINY_PASE = {"channels": (16, 16, 32, 32, 32, 32, 32), "dim": 32, "rnn_hidden": 16,
             "sinc_filters": 16}


def tone_corpus(folder: Path, n_clips: int = 24, seconds: float = 3.0, seed: int = 0,
                sample_rate: int = 16000) -> Path:
    """Harmonic tones with a little noise, labeled by pitch class (C..A in octave 4),
    as a CSV source with train/valid/test splits; returns the CSV path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    semitones = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9}
    rows = []
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    for i in range(n_clips):
        label = NOTE_NAMES[i % len(NOTE_NAMES)]
        f0 = 261.63 * 2 ** (semitones[label] / 12)
        y = sum((0.4 / k) * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28))
                for k in range(1, 5))
        y = y * (0.3 + 0.7 * (np.sin(2 * np.pi * rng.uniform(0.5, 3) * t) > 0))  # accents
        y = y + 0.002 * rng.standard_normal(n)
        name = f"clip{i:03d}.wav"
        sf.write(folder / name, (0.8 * y / np.abs(y).max()).astype(np.float32), sample_rate)
        # Every round of the six pitch classes goes to one split: each class is in each.
        split = ("train", "train", "valid", "test")[(i // len(NOTE_NAMES)) % 4]
        rows.append({"path": name, "label": label, "split": split, "group": f"g{i // 2}"})
    path = folder / "tones.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        w.writerows(rows)
    return path


def build_store(source: Path, output: Path, targets: str) -> Path:
    """Build with two threads in this process (no Dask start-up for small tests)."""
    with cf.ThreadPoolExecutor(2) as pool:
        featurestore.build(source, output, targets=targets, executor=pool, partition_size=4,
                           progress=False)
    return output


def partition_of(store: Store, rows: list[int],
                 errors: list[tuple[str, str]]) -> tuple[PartitionResult, list[TargetSpec]]:
    """Clips of a built store as an extraction result, and the target specs."""
    clips = [ClipArrays(store.clip(i), int(store.clips["n_samples"][i]),
                        store.clips["sha1"][i], np.array(store.waveform_of(i)),
                        {n: np.array(store.frames_of(n, i)) for n in store.targets},
                        {n: Stats.of(store.frames_of(n, i)) for n in store.targets})
             for i in rows]
    return PartitionResult(clips, errors), list(store.specs.values())
