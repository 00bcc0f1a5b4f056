"""Shared helpers for the benchmark scripts: single-thread pinning, real-music clips, timing.

Importing this module pins every numeric library to one thread, so it must be imported
before numpy (the scripts import it first). Nothing here downloads anything: the music
comes from Debian game packages already installed, or from files named on the command line.
"""

from __future__ import annotations

import os
import sys

THREAD_VARS = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS",
)
for _var in THREAD_VARS:
    os.environ[_var] = "1"
if "numpy" in sys.modules:  # pragma: no cover - a mistake in a script's import order
    print("warning: numpy was imported before benchlib; thread pinning may not apply",
          file=sys.stderr)

import argparse  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

SAMPLE_RATE = 16000
HOP = 160
CLIP_SECONDS = 30.0
REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".benchmarks"  # git-ignored

MUSIC_PACKAGES = {
    "supertux-data": "/usr/share/games/supertux2/music",
    "hedgewars-data": "/usr/share/games/hedgewars/Data/Music",
}
MUSIC_SUFFIXES = (".ogg", ".mod", ".s3m", ".xm", ".it", ".flac", ".wav")
INSTALL_HINT = (
    "no music found. Install the Debian game-music packages:\n"
    "    apt-get update && apt-get install -y supertux-data hedgewars-data\n"
    "or name audio files (30 s or longer) with --files."
)


def add_clip_args(parser: argparse.ArgumentParser, n_clips: int) -> None:
    """The options every script shares: how many clips, and which files."""
    parser.add_argument("--clips", type=int, default=n_clips,
                        help=f"timed clips, after one warm-up clip (default {n_clips})")
    parser.add_argument("--files", nargs="+", default=None,
                        help="audio files to cut clips from instead of the game-music packages")


def music_files() -> list[str]:
    """Music files of the installed game packages, interleaved so both packages appear
    early in the list; sorted, so the selection is the same on every machine."""
    per_package = []
    for package, folder in MUSIC_PACKAGES.items():
        files: list[str] = []
        if shutil.which("dpkg"):
            try:
                listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                                        check=False).stdout.split()
            except OSError:
                listed = []
            files = [f for f in listed if f.startswith(folder) and f.endswith(MUSIC_SUFFIXES)]
        if not files:
            files = [f for f in glob.glob(f"{folder}/**/*", recursive=True)
                     if f.endswith(MUSIC_SUFFIXES)]
        per_package.append(sorted(f for f in files if os.path.isfile(f)))
    out: list[str] = []
    for k in range(max((len(p) for p in per_package), default=0)):
        out += [p[k] for p in per_package if k < len(p)]
    return out


def clip_of(path: str, sample_rate: int = SAMPLE_RATE, seconds: float = CLIP_SECONDS):
    """One full ``seconds`` clip of ``path`` decoded with ``featurestore.audio.decode``:
    the second segment when the file has one (past intros), else the first; None when
    the file is shorter than ``seconds`` or cannot be decoded."""
    from featurestore.audio import AudioError, decode

    n = round(seconds * sample_rate)
    try:
        segments = decode(path, sample_rate, max_seconds=seconds)
        first = next(segments, None)
        second = next(segments, None)
    except AudioError:
        return None
    for seg in (second, first):
        if seg is not None and len(seg) == n and np.abs(seg).max() > 1e-3:
            return seg
    return None


def load_clips(n: int, files: Sequence[str] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """``n`` clips of 30 s at 16 kHz and the files they came from, cached in
    ``.benchmarks/`` (decoding is not what these scripts measure)."""
    candidates = list(files) if files else music_files()
    if not candidates:
        sys.exit(INSTALL_HINT)
    digest = hashlib.sha1("\n".join(candidates).encode()).hexdigest()[:10]
    key = f"{n}-{digest}" if files else f"{n}-packages"
    cache = CACHE / f"clips-{SAMPLE_RATE}-{int(CLIP_SECONDS)}s-{key}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        return list(data["clips"]), [str(s) for s in data["paths"]]
    clips, paths = [], []
    for path in candidates:
        y = clip_of(path)
        if y is not None:
            clips.append(y)
            paths.append(path)
        if len(clips) == n:
            break
    if len(clips) < n:
        sys.exit(f"only {len(clips)} usable 30 s clips found, {n} wanted. {INSTALL_HINT}")
    CACHE.mkdir(exist_ok=True)
    np.savez(cache, clips=np.stack(clips), paths=np.array(paths))
    return clips, paths


def cpu_time(fn: Callable[[], Any]) -> tuple[float, Any]:
    """CPU seconds of this process spent in ``fn()`` (one thread: equals core-seconds)."""
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def xrt(ms_per_clip: float, seconds: float = CLIP_SECONDS) -> str:
    """Audio-seconds per CPU-second, formatted."""
    if ms_per_clip <= 0:
        return "inf"
    x = seconds * 1000.0 / ms_per_clip
    return f"{x:,.0f}x" if x >= 10 else f"{x:.1f}x"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    def numeric(cell: Any) -> bool:
        text = str(cell).replace(",", "").rstrip("x%").strip()
        try:
            float(text.split("-")[0] if text and text[0] != "-" else text)
        except ValueError:
            return text in ("", "inf", "n/a")
        return True

    right = [all(numeric(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def busy_cpu_seconds() -> float:
    """Core-seconds all processes on this machine have spent busy since boot
    (``/proc/stat``); 0.0 where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(max_wait: float, threshold: float = 0.3, window: float = 2.0) -> float:
    """Wait (at most ``max_wait`` seconds) until the machine's other processes keep fewer
    than ``threshold`` cores busy over ``window`` seconds; return the last such load."""
    deadline = time.perf_counter() + max_wait
    while True:
        b0 = busy_cpu_seconds()
        time.sleep(window)
        load = (busy_cpu_seconds() - b0) / window
        if load < threshold or time.perf_counter() >= deadline:
            return load


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    """CPU, cores, load and library versions, for the head of each report."""
    import importlib.metadata as md

    versions = []
    for name in ("numpy", "scipy", "librosa", "essentia", "numba", "dask", "distributed",
                 "h5py", "soxr", "tinysoundfont", "gammatone"):
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M')}; CPU {cpu_model()}, {os.cpu_count()} cores; "
            f"load average {load}; Python {platform.python_version()}; " + ", ".join(versions))


def write_report(text: str, out: Path) -> None:
    """Print a finished report and write it to ``out`` (its folder made if needed)."""
    print()
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.rstrip("\n") + "\n")
