"""Shared fixtures: audio made in the test, small corpora, a real Dask cluster (a
``dask scheduler`` and ``dask worker`` processes started from the command line), stores
built once per session, and store comparison helpers.

Helpers are plain functions importable as ``from conftest import ...``.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

SR = 16000
HOP = 160

# --------------------------------------------------------------------------- signals


def tone(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    """A sine of ``freq`` Hz, ``round(seconds * sr)`` samples, float32."""
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, sr: int = SR, amp: float = 0.2, seed: int = 0) -> np.ndarray:
    """Uniform white noise in [-amp, amp], float32."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-amp, amp, round(seconds * sr)).astype(np.float32)


def chord(freqs: list[float], seconds: float, sr: int = SR) -> np.ndarray:
    return sum(tone(f, seconds, sr, amp=0.6 / len(freqs)) for f in freqs).astype(np.float32)


def write_wav(path: Path, y: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr, subtype=subtype)
    return path


def quantise(y: np.ndarray) -> np.ndarray:
    """float audio -> the store's int16 PCM (the rule in featurestore.extract)."""
    return np.round(np.clip(y, -1.0, 1.0) * 32767.0).astype(np.int16)


# --------------------------------------------------------------------------- corpora


@dataclass
class Corpus:
    root: Path
    csv: Path
    rows: list[dict[str, str]] = field(default_factory=list)  # id, path, label, split, group


# Lengths in samples, none a multiple of the hop except one: n_frames = n // 160 is tested.
_MAIN = [
    # id, signal, sample rate, label, split, group
    ("tone_a4", lambda: tone(440.0, 1.0), SR, "tone", "train", "g1"),
    ("tone_c5", lambda: tone(523.25, 1.2371), SR, "tone", "train", "g1"),
    ("noise_1", lambda: noise(1.5037, seed=1), SR, "noise;loud", "train", "g2"),
    ("chord_cmaj", lambda: chord([261.63, 329.63, 392.0], 2.0131), SR, "chord", "valid", "g2"),
    ("noise_2", lambda: noise(1.1113, amp=0.05, seed=2), SR, "noise", "valid", "g3"),
    ("tone_22k", lambda: tone(330.0, 1.3, sr=22050), 22050, "tone", "test", "g3"),
    ("chord_amin", lambda: chord([220.0, 261.63, 329.63], 1.7777), SR, "chord", "test", "g4"),
    ("clicks", lambda: _clicks(1.4567), SR, "", "", ""),
]


def _clicks(seconds: float) -> np.ndarray:
    y = np.zeros(round(seconds * SR), dtype=np.float32)
    y[:: SR // 4] = 0.9  # 4 clicks per second
    return y


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Eight short clips (tones, chords, noise, clicks; one at 22.05 kHz) and a CSV with
    labels (one multi-label), splits, groups and an extra column."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for clip_id, make, sr, label, split, group in _MAIN:
        path = write_wav(root / "audio" / f"{clip_id}.wav", make(), sr)
        rows.append({"id": clip_id, "path": str(path), "label": label, "split": split,
                     "group": group})
    csv_path = root / "labels.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "label", "split", "group", "take"])
        for k, r in enumerate(rows):
            w.writerow([r["id"], f"audio/{r['id']}.wav", r["label"], r["split"], r["group"],
                        str(k)])
    return Corpus(root, csv_path, rows)


KILL_TARGETS = "mfcc,pyin"  # pyin: about half a second per 1 s clip, so builds take a while
KILL_CLIPS = 12


@pytest.fixture(scope="session")
def slow_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve 1 s clips in a folder: with pyin a build takes seconds, long enough to kill
    it half-way."""
    root = tmp_path_factory.mktemp("slow_corpus")
    for k in range(KILL_CLIPS):
        y = tone(110.0 * (1 + k % 6), 1.0) if k % 3 else noise(1.0, seed=100 + k)
        write_wav(root / f"clip{k:02d}.wav", y)
    return root


# --------------------------------------------------------------------------- disks


@contextlib.contextmanager
def tmpfs(folder: Path, size: int) -> Iterator[Path]:
    """A real file system of ``size`` bytes mounted at ``folder`` (needs root)."""
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                            str(folder)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mount.stderr.strip() or 'mount failed'}): "
                    "the disk-full tests need root")
    try:
        yield folder
    finally:
        gc.collect()  # memory maps of files on it
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)


# --------------------------------------------------------------------------- processes


def group_gone(proc: subprocess.Popen[Any], timeout: float) -> bool:
    """Wait until no process of the group ``proc`` leads is left (the leader reaped: a
    zombie still counts as a member)."""
    deadline = time.monotonic() + timeout
    while True:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL,
               wait: float = 30.0) -> None:
    """Send ``sig`` to the process group ``proc`` leads (started with
    ``start_new_session=True``) and wait until the whole group is gone (SIGKILL for what
    is left after ``wait`` seconds)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    if not group_gone(proc, wait if sig != signal.SIGKILL else 10.0):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        group_gone(proc, 10.0)


class DaskCluster:
    """``dask scheduler`` plus ``dask worker`` processes, each its own process group."""

    def __init__(self, workdir: Path, n_workers: int = 2) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.scheduler_file = workdir / "scheduler.json"
        self.scheduler: subprocess.Popen[Any] | None = None
        self.workers: list[subprocess.Popen[Any]] = []
        self.logs: list[Any] = []
        try:
            self._start(n_workers)
        except BaseException:
            self.stop()
            raise

    def _popen(self, args: list[str], name: str) -> subprocess.Popen[Any]:
        log = open(self.workdir / f"{name}.log", "wb")  # closed in stop()
        self.logs.append(log)
        # The workers get featurestore's allocator settings, as its own local cluster's do
        # (the nanny's default MALLOC_TRIM_THRESHOLD_ doubles the CPU per clip).
        from featurestore.build import WORKER_ENVIRON

        config = self.workdir / "dask-config"
        config.mkdir(exist_ok=True)
        (config / "nanny.yaml").write_text(
            "distributed:\n  nanny:\n    pre-spawn-environ:\n"
            + "".join(f"      {k}: '{v}'\n" for k, v in WORKER_ENVIRON.items()))
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
        env["DASK_CONFIG"] = str(config)
        return subprocess.Popen(args, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)

    def _start(self, n_workers: int) -> None:
        self.scheduler = self._popen(
            ["dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(self.scheduler_file)], "scheduler")
        deadline = time.monotonic() + 60
        while not self.scheduler_file.exists():
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dask scheduler did not start:\n" + self.log("scheduler"))
            time.sleep(0.05)
        time.sleep(0.1)  # the file is written in one go, but let the writer finish
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        for k in range(n_workers):
            self.add_worker(f"w{k}")
        self.wait_for_workers(n_workers)

    def add_worker(self, name: str) -> subprocess.Popen[Any]:
        proc = self._popen(
            ["dask", "worker", "--scheduler-file", str(self.scheduler_file), "--nthreads", "1",
             "--nworkers", "1", "--no-dashboard", "--name", name, "--local-directory",
             str(self.workdir / "space")], name)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int, timeout: float = 90.0) -> None:
        import distributed

        with distributed.Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=timeout)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        # Workers first, all at once (they shut down in parallel), then the scheduler.
        for procs in (self.workers, [self.scheduler] if self.scheduler else []):
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                if not group_gone(proc, 10.0):
                    kill_group(proc, signal.SIGKILL)
        for log in self.logs:
            log.close()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real cluster on 127.0.0.1: one scheduler and two single-threaded workers, started
    with the ``dask`` command line; shared by the tests that build stores."""
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"), n_workers=2)
    try:
        yield cluster
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- stores

MAIN_TARGETS = "mfcc,chroma,onset,tempo"


@pytest.fixture(scope="session")
def built_store(corpus: Corpus, dask_cluster: DaskCluster,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The main corpus built from its CSV on the real cluster, 3 clips per shard."""
    from featurestore import build

    out = tmp_path_factory.mktemp("built") / "main.h5"
    report = build(str(corpus.csv), out, targets=MAIN_TARGETS, scheduler=dask_cluster.address,
                   partition_size=3, progress=False)
    assert report.partitions_total == 3 and report.partitions_computed == 3
    assert report.errors == []
    return out


@dataclass
class BadInputs:
    root: Path
    store: Path
    output: str  # the build command's printed output
    files: dict[str, Path]


BAD_TARGETS = "mfcc,chroma,onset"


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory, dask_cluster: DaskCluster) -> BadInputs:
    """A folder of good, odd and broken files, built once with the command line on the
    real cluster (``--max-seconds 2``, ``--min-seconds 0.5``)."""
    from click.testing import CliRunner

    from featurestore.cli import main

    root = tmp_path_factory.mktemp("bad_inputs") / "audio"
    files: dict[str, Path] = {}
    files["good"] = write_wav(root / "good.wav", tone(440.0, 1.0))
    files["corrupt"] = root / "corrupt.wav"
    files["corrupt"].write_bytes(np.random.default_rng(7).bytes(4000))
    valid = write_wav(root.parent / "whole.wav", tone(300.0, 1.5)).read_bytes()
    files["truncated"] = root / "truncated.wav"
    files["truncated"].write_bytes(valid[: len(valid) // 2])
    files["empty"] = root / "empty.wav"
    files["empty"].write_bytes(b"")
    files["zero_length"] = write_wav(root / "zero_length.wav", np.zeros(0, dtype=np.float32))
    files["silent"] = write_wav(root / "silent.wav", np.zeros(SR, dtype=np.float32))
    files["too_short"] = write_wav(root / "too_short.wav", tone(440.0, 0.2))
    stereo = np.stack([tone(440.0, 1.1), noise(1.1, seed=3)], axis=1)
    files["stereo"] = write_wav(root / "stereo.wav", stereo)
    three = np.stack([tone(200.0, 1.0), tone(300.0, 1.0), noise(1.0, seed=4)], axis=1)
    files["three_channels"] = write_wav(root / "three_channels.wav", three)
    for sr in (8000, 22050, 44100, 48000):
        files[f"rate_{sr}"] = write_wav(root / f"rate_{sr}.wav", tone(440.0, 1.3, sr=sr), sr)
    files["long"] = write_wav(root / "long.wav", chord([220.0, 330.0], 5.2))
    store = root.parent / "bad.h5"
    result = CliRunner().invoke(main, [
        "build", str(root), "-o", str(store), "--targets", BAD_TARGETS, "--scheduler",
        dask_cluster.address, "--partition-size", "4", "--max-seconds", "2",
        "--min-seconds", "0.5", "--quiet"])
    assert result.exit_code == 0, result.output
    return BadInputs(root, store, result.output, files)


# --------------------------------------------------------------------------- comparing


def h5_contents(path: Path, ignore_attrs: tuple[str, ...] = ("created",)) -> dict[str, Any]:
    """Every dataset (as an array) and every attribute of an HDF5 file, by path."""
    import h5py

    out: dict[str, Any] = {}

    def attrs_of(name: str, obj: Any) -> None:
        for k, v in obj.attrs.items():
            if name == "/" and k in ignore_attrs:
                continue
            out[f"{name}@{k}"] = v

    with h5py.File(path, "r") as f:
        attrs_of("/", f)

        def visit(name: str, obj: Any) -> None:
            attrs_of(name, obj)
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[...]

        f.visititems(visit)
    return out


def assert_same_store(a: Path, b: Path, ignore_attrs: tuple[str, ...] = ("created",)) -> None:
    """Two store files hold the same datasets, values, dtypes and attributes (bit for bit;
    ``created`` aside)."""
    x, y = h5_contents(a, ignore_attrs), h5_contents(b, ignore_attrs)
    assert sorted(x) == sorted(y)
    for key in x:
        u, v = np.asarray(x[key]), np.asarray(y[key])
        assert u.dtype == v.dtype, key
        assert u.shape == v.shape, key
        assert np.array_equal(u, v), key


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a small, often busy machine: one intra-op thread is both faster and
    steadier than several competing for the cores. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
