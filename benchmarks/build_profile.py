"""Where ``featurestore build`` spends its time, stage by stage, on hours of real music.

Two measurements over the same files (whole game-music tracks from the Debian packages,
as a user's corpus would be: compressed, of many lengths, cut into clips of
``max_seconds``):

1. **Stages, one process, one thread** (what a sequential build does, timed piece by
   piece, with the allocator settings of featurestore's workers unless
   ``--glibc-defaults``): planning (content hash and header of each file, on the client), decoding
   (libsndfile + soxr to 16 kHz), each default target in registry order (the first target
   that needs the shared STFT pays for it), the cast to the storage dtype with the
   moments, what crossing from a Dask worker to the client costs a partition's result
   (pickle protocol 5 with out-of-band buffers, as distributed serialises a task's result,
   both ways; the socket copy is not included), the shard writes, and the assembly of the
   shards into the store. CPU and wall seconds per audio-hour, and x real time per core.
2. **End to end**: ``featurestore build`` in a fresh process, with ``--processes 1`` and
   ``--processes N``: wall seconds, CPU seconds of the whole process tree (the CLI, the
   scheduler and the worker processes), x real time; the speed-up of N workers over the
   sequential loop of 1.

    python benchmarks/build_profile.py                     # 2 h of game music
    python benchmarks/build_profile.py --hours 1 --processes 2 --repeat 2
    python benchmarks/build_profile.py --source path/to/music/ --hours 3
    python benchmarks/build_profile.py --skip-stages --max-seconds 60   # clips of 1 minute
    python benchmarks/build_profile.py --skip-stages --repeat 3 --baseline ../main-before

``--baseline`` names a checkout of another commit: every end-to-end build is run there
too (``python -m featurestore`` from that folder imports its code), interleaved with this
checkout's, so that before and after meet the same state of the machine.

The selection is the same on every machine (sorted, interleaved across packages). The
end-to-end builds write to a temporary folder and are discarded.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import benchlib  # first: pins numeric libraries to one thread
from benchlib import table

from featurestore.build import WORKER_ENVIRON
from featurestore.extract import ExtractConfig

DEFAULT_MAX_SECONDS = ExtractConfig(targets=("default",)).max_seconds

MUSIC_PACKAGES = {
    **benchlib.MUSIC_PACKAGES,
    "supertuxkart-data": "/usr/share/games/supertuxkart/data/music",
    "widelands-data": "/usr/share/games/widelands/data/music",
}


def select_files(source: str | None, hours: float) -> tuple[list[str], float]:
    """The first files (sorted, interleaved across packages) holding ``hours`` of audio,
    and their total seconds."""
    from featurestore.audio import AudioError, probe

    if source is not None:
        root = Path(source)
        candidates = sorted(str(p) for p in root.rglob("*")
                            if p.suffix.lower() in (*benchlib.MUSIC_SUFFIXES, ".mp3"))
    else:
        per_package = []
        for folder in MUSIC_PACKAGES.values():
            found = sorted(str(p) for p in Path(folder).rglob("*")
                           if p.suffix.lower() in (".ogg", ".flac", ".wav"))
            per_package.append(found)
        candidates = [p[k] for k in range(max(map(len, per_package), default=0))
                      for p in per_package if k < len(p)]
    if not candidates:
        sys.exit(benchlib.INSTALL_HINT)
    files, seconds = [], 0.0
    for path in candidates:
        try:
            info = probe(path)
        except AudioError:
            continue
        files.append(path)
        seconds += info.frames / info.samplerate
        if seconds >= hours * 3600:
            break
    return files, seconds


def link_folder(files: list[str], folder: Path) -> Path:
    """A folder of symbolic links to ``files`` (a build's source), names kept unique."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for k, path in enumerate(files):
        (folder / f"{k:04d}-{Path(path).name}").symlink_to(path)
    return folder


class Stopwatch:
    """CPU and wall seconds accumulated per stage name."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu[stage] += time.process_time() - c0
            self.wall[stage] += time.perf_counter() - w0


def profile_stages(files: list[str], partition_size: int, workdir: Path,
                   max_seconds: float) -> tuple[Stopwatch, float, int]:
    """Run a sequential build of ``files`` stage by stage; return the stopwatch, the audio
    seconds and the number of clips."""
    import numpy as np

    from featurestore.audio import content_hash, decode, probe
    from featurestore.build import partition_hash
    from featurestore.extract import plan_file, to_storage
    from featurestore.manifest import Piece
    from featurestore.store import (
        Clip,
        ClipArrays,
        PartitionResult,
        Stats,
        assemble,
        write_shard,
    )
    from featurestore.targets import DecodedClip, resolve

    config = ExtractConfig(targets=("default",), max_seconds=max_seconds)
    targets = resolve(["default"])
    specs = config.specs()
    watch = Stopwatch()
    audio_seconds = 0.0
    n_clips = 0
    shard_paths: list[Path] = []
    pending: list[ClipArrays] = []
    pieces_of_pending: list[Piece] = []

    def flush() -> None:
        result = PartitionResult(clips=list(pending))
        with watch("6. transfer to the client (serialise + deserialise)"):
            buffers: list[pickle.PickleBuffer] = []
            blob = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
            result = pickle.loads(blob, buffers=[b.raw() for b in buffers])
        path = workdir / f"part-{len(shard_paths):05d}.h5"
        with watch("7. shard write"):
            write_shard(path, result, specs, sample_rate=config.sample_rate, hop=config.hop,
                        attrs={"partition_hash": partition_hash(pieces_of_pending, config)})
        shard_paths.append(path)
        pending.clear()
        pieces_of_pending.clear()

    for k, path in enumerate(files):
        clip = Clip(id=f"clip-{k:04d}", path=path)
        with watch("1. plan (content hash + header, client)"):
            content = content_hash(path)
            info = probe(path)
            pieces = plan_file(clip, info, config, content)
        with watch("2. decode (to 16 kHz mono)"):
            segments = list(decode(path, config.sample_rate, max_seconds=config.max_seconds,
                                   info=info))
        for piece, y in zip(pieces, segments, strict=False):
            if len(y) < config.min_samples:
                continue
            decoded = DecodedClip(y, config.sample_rate, config.hop)
            stored: dict[str, np.ndarray] = {}
            stats: dict[str, Stats] = {}
            for target in targets:
                with watch(f"3. target {target.name}"):
                    x = target(decoded)
                with watch("4. cast to storage dtype + moments"):
                    stored[target.name] = to_storage(x, target.dtype)
                    stats[target.name] = Stats.of(stored[target.name])
            with watch("4. cast to storage dtype + moments"):
                waveform = to_storage(y, "int16")
            pending.append(ClipArrays(piece.clip, len(y), "", waveform, stored, stats))
            pieces_of_pending.append(piece)
            audio_seconds += len(y) / config.sample_rate
            n_clips += 1
            if len(pending) == partition_size:
                flush()
    if pending:
        flush()
    with watch("8. assembly (shards -> store)"):
        assemble(workdir / "store.h5", shard_paths,
                 attrs={"sample_rate": config.sample_rate, "hop": config.hop,
                        "source": "build_profile", "partition_size": partition_size})
    return watch, audio_seconds, n_clips


@contextmanager
def children_cpu() -> Iterator[dict[str, float]]:
    """CPU seconds of the child processes waited for inside the block (grandchildren
    included once their parents have waited for them): ``cpu`` in all, ``sys`` of it in
    the kernel."""
    out: dict[str, float] = {}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield out
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["sys"] = after.ru_stime - before.ru_stime
    out["cpu"] = (after.ru_utime - before.ru_utime) + out["sys"]


def end_to_end(folder: Path, processes: int, workdir: Path, extra: list[str],
               checkout: Path | None = None) -> dict[str, float]:
    """One ``featurestore build`` in a fresh process, with the code of ``checkout`` (a
    folder holding another commit's ``featurestore/``) when given: wall, whole-tree CPU
    and kernel CPU seconds."""
    out = workdir / f"e2e-{processes}.h5"
    for stale in workdir.glob(f"e2e-{processes}.h5*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    cmd = [sys.executable, "-m", "featurestore", "build", str(folder), "-o", str(out),
           "--processes", str(processes), "--quiet", *extra]
    # as a user runs it: the allocator settings are the workers' own, not the client's
    env = {k: v for k, v in os.environ.items() if k not in WORKER_ENVIRON}
    with children_cpu() as cpu:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, cwd=checkout)
        wall = time.perf_counter() - t0
    size = out.stat().st_size
    out.unlink()
    return {"wall": wall, "cpu": cpu["cpu"], "sys": cpu["sys"], "bytes": size}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=2.0, help="audio to build")
    parser.add_argument("--source", help="a folder of audio instead of the game packages")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="Dask worker processes of the parallel end-to-end build")
    parser.add_argument("--partition-size", type=int, default=16,
                        help="clips per shard in the stage profile (the build's maximum)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="end-to-end builds of each kind (the fastest is reported)")
    parser.add_argument("--skip-stages", action="store_true", help="end to end only")
    parser.add_argument("--quantize", action="store_true",
                        help="end-to-end builds with --quantize (8-bit codes)")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help="longer files become several clips (the build's option)")
    parser.add_argument("--skip-e2e", action="store_true", help="stages only")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="stages with glibc's allocator defaults instead of the settings "
                             "featurestore gives its workers (WORKER_ENVIRON)")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="seconds to wait for other processes to go quiet before each run")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of another commit whose end-to-end builds run "
                             "interleaved with this one's (before and after a change)")
    parser.add_argument("--out", type=Path,
                        default=benchlib.CACHE / "build_profile.md", help="report file")
    args = parser.parse_args(argv)
    if not args.glibc_defaults and any(os.environ.get(k) != v for k, v in WORKER_ENVIRON.items()):
        # glibc reads these at start-up: run again as a worker process would be started
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **WORKER_ENVIRON})

    files, seconds = select_files(args.source, args.hours)
    hours = seconds / 3600
    lines = [f"Machine: {benchlib.machine_line()}",
             f"Audio: {len(files)} files, {hours:.2f} h "
             f"({'--source ' + args.source if args.source else 'Debian game-music packages'})",
             ""]
    print("\n".join(lines), file=sys.stderr, flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="build_profile-", dir=benchlib.CACHE
                                    if benchlib.CACHE.exists() else None))
    try:
        if not args.skip_stages:
            benchlib.wait_until_quiet(args.quiet_wait)
            # Warm-up: imports and numba's JIT, which each worker process pays once.
            (workdir / "warm").mkdir()
            (workdir / "stages").mkdir()
            profile_stages(files[:1], args.partition_size, workdir / "warm",
                           args.max_seconds)
            watch, audio, n_clips = profile_stages(files, args.partition_size,
                                                   workdir / "stages", args.max_seconds)
            audio_h = audio / 3600
            rows = []
            total_cpu = total_wall = 0.0
            for stage in sorted(watch.cpu):
                cpu, wall = watch.cpu[stage], watch.wall[stage]
                total_cpu += cpu
                total_wall += wall
                rows.append([stage, f"{cpu / audio_h:.1f}", f"{wall / audio_h:.1f}",
                             f"{audio / cpu:,.0f}x" if cpu else "inf"])
            rows.append(["**all stages (the sequential loop)**", f"{total_cpu / audio_h:.1f}",
                         f"{total_wall / audio_h:.1f}", f"{audio / total_cpu:,.0f}x"])
            lines += [f"Stages, one process, one thread ({n_clips} clips, {audio_h:.2f} h; "
                      "seconds per audio-hour; x real time per core):", "",
                      table(["stage", "CPU s / audio-h", "wall s / audio-h", "x real time"],
                            rows), ""]
            print("\n".join(lines[-5:]), file=sys.stderr, flush=True)
        if not args.skip_e2e:
            folder = link_folder(files, workdir / "audio")
            rows = []
            extra = ["--max-seconds", str(args.max_seconds)]
            extra += ["--quantize"] if args.quantize else []
            checkouts: dict[str, Path | None] = {"this checkout": None}
            if args.baseline is not None:
                checkouts[f"baseline {args.baseline}"] = args.baseline.resolve()
            runs: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
            for _ in range(args.repeat):  # the checkouts and process counts interleaved
                for processes in (1, args.processes):
                    for name, checkout in checkouts.items():
                        benchlib.wait_until_quiet(args.quiet_wait)
                        run = end_to_end(folder, processes, workdir, extra, checkout)
                        print(f"  {name}, --processes {processes}: {run}", file=sys.stderr,
                              flush=True)
                        runs[name, processes].append(run)
            flag = " --quantize" if args.quantize else ""
            if args.max_seconds != DEFAULT_MAX_SECONDS:
                flag += f" --max-seconds {args.max_seconds:g}"
            for (name, processes), done in runs.items():
                best = min(done, key=lambda r: r["wall"])
                one = min(r["wall"] for r in runs[name, 1])
                rows.append([name, f"`--processes {processes}{flag}`",
                             " ".join(f"{r['wall']:.1f}" for r in done),
                             f"{benchlib.median([r['wall'] for r in done]):.1f}",
                             f"{seconds / best['wall']:,.0f}x",
                             f"{best['cpu']:.1f} ({best['sys']:.1f})",
                             f"{best['cpu'] / hours:.0f}", f"{one / best['wall']:.2f}x",
                             f"{best['bytes'] / 1e6 / hours:.0f}"])
            lines += [f"End to end, `featurestore build` in a fresh process, {args.repeat} "
                      f"run(s) each ({hours:.2f} h; figures of the fastest run unless "
                      "named):", "",
                      table(["code", "command", "wall s, each run", "median wall s",
                             "x real time", "CPU s, all processes (kernel)",
                             "CPU s / audio-h", "speed-up over 1 process", "MB / audio-h"],
                            rows), ""]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    benchlib.write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
