"""What the store's block checksums cost: hash speeds, then assembling and verifying a store.

1. Throughput of candidate hashes over an in-memory buffer (one core): xxh3_64 and
   xxh3_128 (xxhash), blake2b and sha1 (hashlib), crc32 (zlib), each one-shot over the
   buffer and in the store's 1 MiB blocks.
2. A store of realistic size (default: 20 minutes of audio with the dims of the default
   target set, random values, 4 shards: about 270 MB), assembled by
   ``featurestore.store.assemble`` with checksums, with hashing stubbed out (the same code
   path without its cost), and by the previous assemble (HEAD's store.py: h5py writes, no
   checksums); then ``verify`` full and quick (the same reads and statistics, without the
   checksums).

Run from the repository root: ``python benchmarks/checksum_speed.py [--minutes 20]
[--repeat 3] [--out .benchmarks/checksum_speed.md]``. Timings are wall and CPU seconds of
this process, best of ``--repeat`` rounds that run each variant once in turn (so that
other load falls on all alike), with the shards and the store in the page cache
(assembly ends with an fsync, which is part of its time). Nothing is downloaded; the
shards are written to ``.benchmarks/checksum_speed/`` and removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata as md
import importlib.util
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import benchlib  # before numpy: pins numeric libraries to one thread
import numpy as np
import xxhash

import featurestore.store as fs
from featurestore.store import Clip, ClipArrays, PartitionResult, Stats, TargetSpec

# The default target set's dims (featurestore targets): lps, fbank, mfcc, contrast, cqt,
# prosody, chroma, onset, tempogram.
DEFAULT_DIMS = {"lps": 513, "fbank": 80, "mfcc": 60, "contrast": 7, "cqt": 84, "prosody": 12,
                "chroma": 12, "onset": 1, "tempogram": 192}
SR, HOP = 16000, 160


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall seconds of ``repeat`` runs."""
    return best_wall_cpu(fn, repeat)[0]


def best_wall_cpu(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Best wall seconds and best CPU seconds (this process) of ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def hash_speeds(size: int, repeat: int) -> list[list[str]]:
    buf = np.random.default_rng(0).bytes(size)
    view = memoryview(buf)
    block = fs.CHECKSUM_BLOCK_BYTES
    candidates: dict[str, Callable[[Any], Any]] = {
        "xxh3_64 (xxhash)": xxhash.xxh3_64_intdigest,
        "xxh3_128 (xxhash)": xxhash.xxh3_128_intdigest,
        "crc32 (zlib)": zlib.crc32,
        "blake2b (hashlib)": lambda b: hashlib.blake2b(b).digest(),
        "sha1 (hashlib)": lambda b: hashlib.sha1(b).digest(),
    }
    rows = []
    for name, fn in candidates.items():
        whole = best(lambda fn=fn: fn(view), repeat)
        blocks = best(lambda fn=fn: [fn(view[a : a + block]) for a in range(0, size, block)],
                      repeat)
        rows.append([name, f"{size / whole / 1e9:.2f}", f"{size / blocks / 1e9:.2f}",
                     f"{1e3 * blocks / (size / 1e9):.0f}"])
    return rows


def make_shards(folder: Path, minutes: float, n_shards: int) -> list[Path]:
    """Shards of random values with the default targets' dims, clips of 30 s."""
    rng = np.random.default_rng(0)
    specs = [TargetSpec(name=n, dim=d, rate="frame", library="bench", loss="l1",
                        dtype="float16", params={}, deltas=0, default=True)
             for n, d in DEFAULT_DIMS.items()]
    n_clips = max(n_shards, round(minutes * 2))
    per = -(-n_clips // n_shards)
    paths = []
    for s in range(n_shards):
        result = PartitionResult()
        for c in range(s * per, min(n_clips, (s + 1) * per)):
            n = 30 * SR
            targets = {sp.name: rng.standard_normal((n // HOP, sp.dim), dtype=np.float32
                                                    ).astype(np.float16) for sp in specs}
            result.clips.append(ClipArrays(
                Clip(f"clip{c:05d}", f"/music/clip{c:05d}.wav", "x", "train", "g"), n,
                "0" * 40, rng.integers(-20000, 20000, n, dtype=np.int16), targets,
                {k: Stats.of(v) for k, v in targets.items()}))
        path = folder / f"part-{s:05d}.h5"
        fs.write_shard(path, result, specs, sample_rate=SR, hop=HOP, attrs={})
        paths.append(path)
    return paths


class _NoHash:
    """Stands in for fs._BlockHasher: counts blocks, computes nothing."""

    def __init__(self, block_bytes: int) -> None:
        self.block_bytes, self.n = block_bytes, 0

    def update(self, data: np.ndarray) -> None:
        self.n += len(data)

    def finish(self) -> np.ndarray:
        return np.zeros(max(1, -(-self.n // self.block_bytes)), dtype=np.uint64)


@contextlib.contextmanager
def no_hashing() -> Iterator[None]:
    """Assemble's code path without hashing: shards read as if they had no checksums (not
    checked), no digests computed for the output."""
    names = ("_BlockHasher", "_read_checksums", "_column_digests")
    saved = {name: getattr(fs, name) for name in names}
    fs._BlockHasher = _NoHash  # type: ignore[assignment,misc]
    fs._read_checksums = lambda dset: None  # type: ignore[assignment]
    fs._column_digests = lambda values, block_rows: np.zeros(  # type: ignore[assignment]
        max(1, -(-len(values) // block_rows)), dtype=np.uint64)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(fs, name, value)


def previous_store_module(folder: Path) -> ModuleType | None:
    """featurestore/store.py as committed at HEAD (before checksums), as a module."""
    try:
        text = subprocess.run(["git", "show", "HEAD:featurestore/store.py"], check=True,
                              capture_output=True, text=True, cwd=benchlib.REPO).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    if "xxh3" in text:  # HEAD already has checksums: nothing to compare with
        return None
    path = folder / "store_before_checksums.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("store_before_checksums", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="audio in the store")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hash-mib", type=int, default=256, help="buffer for hash speeds")
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "checksum_speed.md")
    args = parser.parse_args()

    work = benchlib.CACHE / "checksum_speed"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lines = ["## Checksums (`checksum_speed.py`)", "",
             f"Machine: {benchlib.machine_line()}, xxhash {md.version('xxhash')}.", "",
             f"Command: `python benchmarks/checksum_speed.py --minutes {args.minutes:g} "
             f"--shards {args.shards} --repeat {args.repeat} --hash-mib {args.hash_mib}`", "",
             f"Hash throughput over {args.hash_mib} MiB of random bytes in memory, one core, "
             f"best of {args.repeat}:", ""]
    lines.append(benchlib.table(["hash", "GB/s one-shot", "GB/s in 1 MiB blocks",
                                 "ms per GB in blocks"],
                                hash_speeds(args.hash_mib << 20, args.repeat)))

    shards = make_shards(work, args.minutes, args.shards)
    out = work / "store.h5"
    attrs = {"sample_rate": SR, "hop": HOP, "source": "bench"}

    def run_assemble(module: Any = fs) -> None:
        module.assemble(out, shards, attrs=attrs)

    run_assemble()
    size = out.stat().st_size
    variants: dict[str, Callable[[], Any]] = {
        "assemble, with checksums (written, and the shards' checked)": run_assemble,
        "assemble, hashing stubbed out": lambda: _stubbed(run_assemble),
    }
    old = previous_store_module(work)
    if old is not None:
        variants["assemble before checksums (HEAD's store.py: h5py writes)"] = (
            lambda: run_assemble(old))
    variants["verify, full (every checksum; statistics)"] = lambda: fs.verify(out)
    variants["verify --quick (statistics; no checksum)"] = lambda: fs.verify(out, quick=True)
    # Interleaved (one run of each variant per round), so that load from other processes
    # falls on all of them alike; the best of the rounds is kept.
    walls: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    busy0, t0 = benchlib.busy_cpu_seconds(), time.perf_counter()
    for _ in range(args.repeat):
        for label, fn in variants.items():
            if label.startswith("verify"):
                run_assemble()  # the store verified is the current one
            wall, cpu = best_wall_cpu(fn, 1)
            walls[label].append(wall)
            cpus[label].append(cpu)
    load = (benchlib.busy_cpu_seconds() - busy0) / (time.perf_counter() - t0)
    assert fs.verify(out) == []
    timings = [[label, f"{min(walls[label]):.3f}", f"{min(cpus[label]):.3f}",
                f"{size / min(walls[label]) / 1e9:.2f}"] for label in variants]
    hashed = np.random.default_rng(1).bytes(size)
    _, hash_cpu = best_wall_cpu(lambda: fs._BlockHasher(fs.CHECKSUM_BLOCK_BYTES).update(
        np.frombuffer(hashed, dtype=np.uint8)), args.repeat)
    s = fs.open_store(out)
    lines += ["", f"Store: {s.n_clips} clips, {s.seconds / 60:.1f} min of audio, "
              f"{fs.format_bytes(size)} ({len(s.targets)} targets with the default set's "
              f"dims, random values), from {len(shards)} shards in the page cache; best of "
              f"{args.repeat} interleaved rounds; the machine's cores were {load:.1f} busy on "
              "average during them (this process included):", ""]
    lines.append(benchlib.table(["operation", "wall s", "CPU s", "GB/s of store (wall)"],
                                timings))
    lines += ["", f"Hashing the store's {fs.format_bytes(size)} once with xxh3_64 in 1 MiB "
              f"blocks (`_BlockHasher`): {hash_cpu:.3f} CPU s. Assembling hashes every byte "
              "twice (the shards' checksums checked, the output's computed), a full verify "
              "once."]
    benchlib.write_report("\n".join(lines) + "\n", args.out)
    shutil.rmtree(work, ignore_errors=True)


def _stubbed(fn: Callable[[], Any]) -> Any:
    with no_hashing():
        return fn()


if __name__ == "__main__":
    sys.exit(main())
