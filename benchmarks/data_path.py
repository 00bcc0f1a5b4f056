"""The training data path alone: random aligned crops from a memory-mapped store.

A store of real music (the game-music packages, ``--minutes`` of audio, built once with
``featurestore build`` and kept in ``.benchmarks/data_path/``) with the default targets
plus the waveform is read by ``trainer.data.CropDataset`` at the training shape (batch
128 x 2 s crops = 200 frames), one thread, page cache warm:

- (a) ``gather``: ``CropDataset.gather`` alone (indices drawn beforehand): the numpy
  memory-map fancy indexing, in storage dtypes (int16 waveform, float16 targets); split
  into waveform and targets, and compared with a windowed gather (one 1-D fancy index on
  a strided window view per array: no per-sample index array) that returns the same bytes.
- (b) ``batch``: ``CropDataset.batch`` (draw + gather + ``to_batch``: float32 conversion
  and normalisation on the CPU); ``to_batch`` alone, and an in-place variant of it.
- (c) ``cache="ram"``: (a) and (b) as ``CropDataset(cache="ram")`` holds the arrays
  (the script reports whether they are private copies or still the memory maps), and
  from a real RAM copy (``np.array`` of every map, swapped into the data set).
- (d) ``Prefetcher``: its background thread feeds a consumer that does nothing;
  delivered batches per second (CPU of both threads).
- (e) what a CUDA run pays on the CPU: the gather plus the copy into host staging
  buffers that the former ``to_batch(pin=True)``'s ``pin_memory()`` made, against
  ``gather(out=)`` straight into a ``trainer.data.StagingRing``'s buffers, which a CUDA
  run now uses (ordinary memory here without a GPU: pinning changes the copy to the
  device, not this CPU work).

Every figure is given per wall second and per CPU second (``time.process_time`` of this
process; one thread, so CPU seconds are core-seconds): on a shared machine the CPU
figure is the stable one. Each measurement runs ``--repeat`` times; the table gives the
median and the range.

    python benchmarks/data_path.py                      # 60 min store, 5 repeats
    python benchmarks/data_path.py --minutes 30 --batches 30 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib  # before numpy: pins numeric libraries to one thread
import numpy as np
from benchlib import HOP, SAMPLE_RATE, table

WORK = benchlib.CACHE / "data_path"
BATCH = 128
CROP_FRAMES = 200
GPU_AUDIO_SECONDS = 7000.0  # planning notes: one H100, PASE+-like encoder, 9 workers, bf16
GPU_GBPS = 2.5


# --------------------------------------------------------------------------- the corpus

def corpus(minutes: float, files: list[str] | None = None) -> tuple[Path, list[str]]:
    """A folder of links to the first music files (game-music packages, interleaved)
    that together hold at least ``minutes`` of audio; the same folder on every run."""
    import soundfile as sf

    candidates = list(files) if files else benchlib.music_files()
    if not candidates:
        sys.exit(benchlib.INSTALL_HINT)
    chosen, total = [], 0.0
    for path in candidates:
        try:
            total += sf.info(path).duration
        except Exception:  # noqa: BLE001 - an unreadable file is skipped
            continue
        chosen.append(path)
        if total >= minutes * 60:
            break
    if total < minutes * 60:
        sys.exit(f"only {total / 60:.1f} min of music found, {minutes} wanted. "
                 f"{benchlib.INSTALL_HINT}")
    folder = WORK / f"music-{minutes:g}min"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f"{k:03d}-{Path(p).name}": p for k, p in enumerate(chosen)}
    for name in os.listdir(folder):
        if name not in wanted:
            (folder / name).unlink()
    for name, target in wanted.items():
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(target)
    return folder, chosen


def ensure_store(minutes: float, files: list[str] | None, rebuild: bool) -> Path:
    """The benchmark store (built with the ``featurestore build`` command when missing)."""
    folder, _ = corpus(minutes, files)
    store = WORK / f"store-{minutes:g}min.h5"
    if store.exists() and not rebuild:
        return store
    if store.exists():
        store.unlink()
    print(f"building {store} from {folder} (default targets, 2 workers) ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run(["featurestore", "build", str(folder), "-o", str(store), "--layout",
                    "folder", "--processes", "2", "--quiet"], check=True)
    print(f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    return store


def page_cache_line(path: Path) -> str:
    """How much of the file is in the page cache (util-linux ``fincore``), if available."""
    try:
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES,SIZE", str(path)],
                             capture_output=True, text=True, check=True).stdout.split()
        res, size = int(out[0]), int(out[1])
        return f"{res / 1e6:,.0f} of {size / 1e6:,.0f} MB resident ({100 * res / size:.0f}%)"
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return "page-cache residency unknown (no fincore)"


def touch_pages(arrays: dict[str, Any]) -> None:
    """Read one byte of every page of each memory map: page cache warm and every page
    mapped in this process (the first touch of a page costs a minor fault)."""
    for x in arrays.values():
        flat = np.asarray(x).reshape(-1).view(np.uint8)
        int(flat[::4096].sum())


# --------------------------------------------------------------------------- measuring

class Runs:
    """Wall and CPU seconds of repeated timed runs of ``n`` batches each."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.load: list[float] = []
        self.faults: list[int] = []

    def time(self, fn: Callable[[int], Any], first_step: int) -> None:
        self.load.append(os.getloadavg()[0])
        f0 = minor_faults()
        w0, c0 = time.perf_counter(), time.process_time()
        for k in range(self.n):
            fn(first_step + k)
        self.wall.append(time.perf_counter() - w0)
        self.cpu.append(time.process_time() - c0)
        self.faults.append(minor_faults() - f0)

    def per_batch_ms(self, which: str) -> list[float]:
        return [1000 * s / self.n for s in getattr(self, which)]


def _maps_file(x: np.ndarray) -> bool:
    """Whether ``x`` is (a view of) a memory map of a file."""
    import mmap

    while x is not None:
        if isinstance(x, np.memmap | mmap.mmap):
            return True
        x = getattr(x, "base", None)
    return False


def minor_faults() -> int:
    """Minor page faults of this process so far (first touches of mapped or new pages)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def spread(xs: list[float], fmt: str) -> str:
    """Median, with the range over runs."""
    med = statistics.median(xs)
    return f"{med:{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"


def rate_row(name: str, runs: Runs, raw_bytes: int, audio_seconds: float) -> list[str]:
    wall_ms, cpu_ms = runs.per_batch_ms("wall"), runs.per_batch_ms("cpu")
    per_s = [1000 / m for m in wall_ms]
    per_cpu = [1000 / m for m in cpu_ms]
    return [
        name,
        spread(wall_ms, ".1f"), spread(cpu_ms, ".1f"),
        spread(per_s, ".1f"), spread(per_cpu, ".1f"),
        f"{statistics.median(per_cpu) * audio_seconds:,.0f}",
        f"{statistics.median(per_cpu) * raw_bytes / 1e9:.2f}",
        f"{statistics.median(per_s) * raw_bytes / 1e9:.2f}",
        f"{statistics.median(runs.faults) / runs.n:,.0f}",
        f"{statistics.median(runs.load):.1f}",
    ]


HEADER = ["measurement", "wall ms/batch", "CPU ms/batch", "batches/s (wall)",
          "batches/s per core (CPU)", "audio-s/s per core", "GB/s per core", "GB/s (wall)",
          "page faults/batch", "load"]


# --------------------------------------------------------------------------- candidates

def gather_subset(data: Any, clips: np.ndarray, starts: np.ndarray,
                  keep: list[str]) -> dict[str, np.ndarray]:
    """``CropDataset.gather``'s code (numpy arrays) for the arrays in ``keep`` only: how
    the batch's cost splits between the waveform and the targets."""
    T, hop = data.crop_frames, data.hop
    out: dict[str, list[np.ndarray]] = {name: [] for name in keep}
    for k, s in enumerate(data.stores):
        rows = data.clip_store[clips] == k
        local = data.clip_local[clips[rows]]
        frame0 = s.clips["frame_offset"][local] + starts[rows]
        sample0 = s.clips["sample_offset"][local] + starts[rows] * hop
        for name in keep:
            x = data._arrays[k][name]
            if name == "waveform":
                out[name].append(x[sample0[:, None] + np.arange(T * hop)])
            else:
                out[name].append(x[frame0[:, None] + np.arange(T)])
    return {n: p[0] if len(p) == 1 else np.concatenate(p) for n, p in out.items()}


def windowed_gather(data: Any, clips: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
    """The same bytes as ``CropDataset.gather`` (numpy arrays, one store file), read with
    one 1-D fancy index per array on a strided window view, so no ``(B, T)`` or
    ``(B, T * hop)`` index array is built and every crop is copied as one block."""
    T, hop = data.crop_frames, data.hop
    out = {}
    for k, s in enumerate(data.stores):
        rows = data.clip_store[clips] == k
        local = data.clip_local[clips[rows]]
        frame0 = s.clips["frame_offset"][local] + starts[rows]
        sample0 = s.clips["sample_offset"][local] + starts[rows] * hop
        for name, x in data._arrays[k].items():
            if name == "waveform":
                view = np.lib.stride_tricks.as_strided(
                    x, shape=(len(x) - T * hop + 1, T * hop), strides=(x.strides[0],) * 2,
                    writeable=False)
                out[name] = view[sample0]
            elif data.specs[name].rate == "frame":
                view = np.lib.stride_tricks.as_strided(
                    x, shape=(x.shape[0] - T + 1, T, x.shape[1]),
                    strides=(x.strides[0], *x.strides), writeable=False)
                out[name] = view[frame0]
            else:
                out[name] = x[local]
    return out


def to_batch_inplace(data: Any, raw: dict[str, Any], clips: np.ndarray) -> Any:
    """``CropDataset.to_batch`` on the CPU with one float32 buffer per array: the
    conversion writes it, then subtract and divide happen in place (no temporaries)."""
    import torch

    from trainer.data import Batch

    wave = torch.from_numpy(raw["waveform"]).float().mul_(1.0 / 32768.0)
    targets = {}
    for name in data.target_names:
        mean, std = data._norm[name]
        targets[name] = torch.from_numpy(raw[name]).float().sub_(mean).div_(std)
    return Batch(wave, targets, torch.from_numpy(clips))


# --------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="audio in the store, in minutes (default 60)")
    parser.add_argument("--files", nargs="+", default=None,
                        help="audio files instead of the game-music packages")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--crop-frames", type=int, default=CROP_FRAMES)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement")
    parser.add_argument("--no-ram", action="store_true", help="skip the cache='ram' runs")
    parser.add_argument("--rebuild", action="store_true", help="build the store again")
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "data_path.md")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from featurestore.targets import resolve
    from trainer.data import CropDataset, Prefetcher, StagingRing

    store = ensure_store(args.minutes, args.files, args.rebuild)
    names = [t.name for t in resolve("default")]
    B, T = args.batch, args.crop_frames
    audio_seconds = B * T * HOP / SAMPLE_RATE
    lines = [f"Machine: {benchlib.machine_line()}; torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread"]

    data = CropDataset(store, names, T)
    s0 = data.stores[0]
    store_bytes = s0.waveform.nbytes + sum(s0.targets[n].nbytes for n in names)
    lines.append(
        f"Store: {store.name}, {s0.seconds / 60:.1f} min of audio in {data.n_clips} clips, "
        f"{store_bytes / 1e9:.2f} GB of arrays (waveform int16 + {len(names)} float16 "
        f"targets, {sum(data.specs[n].dim for n in names)} dims: {', '.join(names)})")
    touch_pages(data._arrays[0])
    lines.append(f"Page cache after warming: {page_cache_line(store)}")

    def draws(first: int, n: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return {s: data.draw(np.random.default_rng([0, s, 0]), B) for s in range(first, first + n)}

    raw = data.gather(*draws(0, 1)[0])
    raw_bytes = sum(v.nbytes for v in raw.values())
    wave_bytes = raw["waveform"].nbytes
    out_bytes = sum(v.numel() * 4 for v in data.to_batch(raw, draws(0, 1)[0][0])
                    .targets.values()) + raw["waveform"].size * 4
    lines.append(
        f"Batch: {B} crops x {T} frames ({audio_seconds:g} audio-seconds): "
        f"{raw_bytes / 1e6:.1f} MB in storage dtypes ({wave_bytes / 1e6:.1f} MB waveform), "
        f"{out_bytes / 1e6:.1f} MB as float32")
    win = windowed_gather(data, *draws(0, 1)[0])
    same = all(np.array_equal(win[k], raw[k]) for k in raw)
    ring = StagingRing(data.raw_layout(B), data.device, slots=1)
    staged = ring.take()
    arrays = {k: v.numpy() for k, v in staged.items()}
    data.gather(*draws(0, 1)[0], out=arrays)
    same_into = all(np.array_equal(arrays[k], raw[k]) for k in raw)
    lines.append(f"Windowed gather returns the same arrays as CropDataset.gather: {same}; "
                 f"gather(out=) into a StagingRing's buffers: {same_into}")

    def copy_in(got: dict[str, np.ndarray]) -> None:
        for k, v in got.items():
            staged[k].copy_(torch.from_numpy(v))

    n, reps = args.batches, args.repeat
    results: dict[str, Runs] = {}
    bytes_of: dict[str, int] = {}

    def measure(name: str, make: Callable[[int], Callable[[int], Any]], nbytes: int) -> None:
        """One timed run of ``n`` batches (steps ``first ...``) after one warm-up batch."""
        runs = results.setdefault(name, Runs(n))
        bytes_of[name] = nbytes
        first = 1000 * (len(runs.wall) + 1)
        fn = make(first)
        fn(first - 1)
        runs.time(fn, first)

    def pre_drawn(fn: Callable[..., Any]) -> Callable[[int], Callable[[int], Any]]:
        """``fn(clips, starts)`` on indices drawn before the clock starts."""
        def make(first: int) -> Callable[[int], Any]:
            pre = draws(first - 1, n + 1)
            return lambda s: fn(*pre[s])
        return make

    def to_batch_of(d: CropDataset, inplace: bool) -> Callable[[int], Callable[[int], Any]]:
        def make(first: int) -> Callable[[int], Any]:
            clips, starts = draws(first, 1)[first]
            r = d.gather(clips, starts)
            if inplace:
                return lambda s: to_batch_inplace(d, r, clips)
            return lambda s: d.to_batch(r, clips)
        return make

    def prefetch(name: str, d: CropDataset, depth: int) -> None:
        """Delivered batches: a consumer that only calls ``get``."""
        runs = results.setdefault(name, Runs(n))
        bytes_of[name] = raw_bytes
        first = 1000 * (len(runs.wall) + 1)
        feeder = Prefetcher(d, seed=0, start_step=first, batch_size=B, depth=depth)
        try:
            feeder.get(first)  # thread start and the first batch
            runs.time(lambda s: feeder.get(s), first + 1)
        finally:
            feeder.close()

    def plan_of(d: CropDataset, where: str, a: str = "(a)", b: str = "(b)"
                ) -> list[tuple[str, Callable[[str], None]]]:
        return [
            (f"{a} gather [{where}]",
             lambda name: measure(name, pre_drawn(d.gather), raw_bytes)),
            (f"{a} gather, waveform only [{where}]",
             lambda name: measure(name, pre_drawn(lambda c, s: gather_subset(
                 d, c, s, ["waveform"])), wave_bytes)),
            (f"{a} gather, targets only [{where}]",
             lambda name: measure(name, pre_drawn(lambda c, s: gather_subset(
                 d, c, s, names)), raw_bytes - wave_bytes)),
            (f"{a[:2]}') windowed gather [{where}]",
             lambda name: measure(name, pre_drawn(lambda c, s: windowed_gather(d, c, s)),
                                  raw_bytes)),
            (f"{b} batch() [{where}]",
             lambda name: measure(name, lambda first: (lambda s: d.batch(0, s, B)),
                                  raw_bytes)),
        ]

    plan = [
        *plan_of(data, "memmap"),
        ("(b) to_batch alone", lambda name: measure(name, to_batch_of(data, False), raw_bytes)),
        ("(b') to_batch, in place",
         lambda name: measure(name, to_batch_of(data, True), raw_bytes)),
        ("(d) Prefetcher [memmap], delivered", lambda name: prefetch(name, data, 4)),
        ("(e) gather + copy into staging (the former to_batch(pin=True): pin_memory's "
         "CPU work)",
         lambda name: measure(name, pre_drawn(lambda c, s: copy_in(data.gather(c, s))),
                              raw_bytes)),
        ("(e') gather(out=) into a StagingRing's buffers (what a CUDA run does now)",
         lambda name: measure(name, pre_drawn(lambda c, s: data.gather(c, s, out=arrays)),
                              raw_bytes)),
    ]
    if not args.no_ram:
        t0 = time.perf_counter()
        ram = CropDataset(store, names, T, cache="ram")
        held = ("still memory maps of the file: no copy was made"
                if _maps_file(ram._arrays[0]["waveform"]) else "private copies")
        lines.append(f"cache='ram': {time.perf_counter() - t0:.1f} s to open; its arrays are "
                     f"{held}")
        plan += [p for p in plan_of(ram, "cache='ram'", "(c)", "(c)")
                 if "only" not in p[0] and "windowed" not in p[0]]
        # A real RAM copy (what cache="ram" is meant to hold): the arrays copied into
        # process memory, swapped into a memmap-backed data set.
        t0 = time.perf_counter()
        copy = CropDataset(store, names, T)
        copy._arrays = [{k: np.array(v) for k, v in a.items()} for a in copy._arrays]
        lines.append(f"RAM copy made with np.array: {time.perf_counter() - t0:.1f} s")
        plan += plan_of(copy, "RAM copy", "(c)", "(c)")
        plan.append(("(d) Prefetcher [RAM copy], delivered",
                     lambda name: prefetch(name, copy, 4)))
    for r in range(reps):  # interleaved, so a slow phase of the machine hits every row
        for name, run in plan:
            run(name)
            print(f"run {r + 1}/{reps}: {name}: {1000 * results[name].wall[-1] / n:.1f} ms "
                  f"wall, {1000 * results[name].cpu[-1] / n:.1f} ms CPU per batch", flush=True)

    rows = [rate_row(name, runs, bytes_of[name], audio_seconds)
            for name, runs in results.items()]
    lines.append("")
    lines.append(table(HEADER, rows))
    gather_cpu = statistics.median(results["(a) gather [memmap]"].per_batch_ms("cpu"))
    need = GPU_AUDIO_SECONDS / audio_seconds
    lines.append("")
    lines.append(
        f"GPU target (planning notes, H100): {GPU_AUDIO_SECONDS:,.0f} audio-s/s = {need:.1f} "
        f"batches/s = {1000 / need:.1f} ms per batch, {need * raw_bytes / 1e9:.2f} GB/s of "
        f"this store's batches ({GPU_GBPS} GB/s at the planning notes' 1,600 dims). One core's "
        f"memmap gather: {gather_cpu:.1f} ms CPU per batch = "
        f"{100 * gather_cpu * need / 1000:.0f}% of one core at that rate.")
    lines.append(f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    benchlib.write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
