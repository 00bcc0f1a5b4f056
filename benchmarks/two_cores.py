"""What two single-threaded processes get from this machine's cores, by kind of work.

The 2-worker build (``featurestore build --processes 2``) has a goal of 1.8x the speed of
one worker. This measures the ceiling the machine itself puts on that: each workload is a
fixed amount of work, timed in one process alone, then in two processes started together.
The speed-up of two is ``2 x alone / together``; 2.0x means the cores do not slow each
other down.

- ``alu``: a pure Python integer loop (registers and the L1 cache);
- ``l2``: float32 matrix products of 128 x 128 (64 KB each, inside a core's L2);
- ``stream``: adding two 64 MB float32 arrays into a third (memory bandwidth, far beyond
  the 32 MB L3);
- ``targets``: the default worker targets of 60 s of real game music (what a build worker
  computes; decoding not included);
- ``decode``: decoding a game-music track (3.4 minutes of Vorbis at 44.1 kHz) to 16 kHz
  mono six times (libsndfile, the downmix and soxr, as a build worker decodes);
- ``write``: writing 512 MB into a file in ``.benchmarks/`` in 8 MB pieces, then
  truncating it, ten times (new page cache each time, no ``fsync``), as a worker writes
  its shards.

    python benchmarks/two_cores.py                  # every workload, 3 rounds
    python benchmarks/two_cores.py --work stream --rounds 5

Run it on an idle machine: another busy process makes "together" slower for reasons that
are not the workload's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import benchlib  # first: pins numeric libraries to one thread
from benchlib import table

WORKLOADS = ("alu", "l2", "stream", "targets", "decode", "write")


def run_work(name: str) -> None:
    """Do workload ``name`` once after a warm-up and print its wall seconds."""
    import numpy as np

    if name == "alu":
        def work() -> None:
            total = 0
            for k in range(30_000_000):
                total += k * k & 0xFF
    elif name == "l2":
        rng = np.random.default_rng(0)
        a = rng.standard_normal((128, 128), dtype=np.float32)
        b = rng.standard_normal((128, 128), dtype=np.float32)

        def work() -> None:
            for _ in range(40_000):
                np.matmul(a, b)
    elif name == "stream":
        x = np.ones(16 * 2**20, np.float32)
        y = np.ones(16 * 2**20, np.float32)
        out = np.empty_like(x)

        def work() -> None:
            for _ in range(250):
                np.add(x, y, out=out)
    elif name == "targets":
        from featurestore.targets import DecodedClip, resolve

        targets = resolve(["default"])
        clips, _ = benchlib.load_clips(2)
        y = np.concatenate(clips).astype(np.float32)

        def work() -> None:
            for _ in range(8):
                decoded = DecodedClip(y, benchlib.SAMPLE_RATE, benchlib.HOP)
                for target in targets:
                    target(decoded)
    elif name == "decode":
        from featurestore.audio import decode

        path = benchlib.music_files()[0]

        def work() -> None:
            for _ in range(6):
                for _segment in decode(path, benchlib.SAMPLE_RATE):
                    pass
    elif name == "write":
        import os
        import tempfile

        piece = np.ones(8 * 2**20, np.uint8)
        benchlib.CACHE.mkdir(exist_ok=True)

        def work() -> None:
            with tempfile.TemporaryFile(dir=benchlib.CACHE) as f:
                for _ in range(10):
                    for k in range(64):
                        os.pwrite(f.fileno(), piece, k * piece.nbytes)
                    f.truncate(0)
    else:
        raise SystemExit(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    work()  # warm-up: imports, JIT, first-touch page faults
    t0 = time.perf_counter()
    work()
    print(f"{time.perf_counter() - t0:.6f}", flush=True)


def timed(name: str, copies: int) -> list[float]:
    """Wall seconds of the timed pass of ``copies`` processes started together."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    walls = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"workload {name} failed (exit {p.returncode})")
        walls.append(float(out.strip().splitlines()[-1]))
    return walls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=3, help="alone/together pairs per workload")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "two_cores.md",
                        help="report file")
    args = parser.parse_args(argv)
    if args.worker:
        run_work(args.worker)
        return
    lines = [f"Machine: {benchlib.machine_line()}", ""]
    rows = []
    for name in args.work:
        alone, together = [], []
        for _ in range(args.rounds):
            alone += timed(name, 1)
            together += timed(name, 2)
        a, t = benchlib.median(alone), benchlib.median(together)
        spread = (f"{min(alone):.2f}-{max(alone):.2f} / "
                  f"{min(together):.2f}-{max(together):.2f}")
        rows.append([f"`{name}`", f"{a:.2f}", f"{t:.2f}", f"{t / a:.2f}x", f"{2 * a / t:.2f}x",
                     spread])
        print(f"  {name}: alone {alone}, together {together}", file=sys.stderr, flush=True)
    lines += [f"Median wall seconds of one process's timed pass, {args.rounds} rounds:", "",
              table(["workload", "alone s", "two together s", "slowdown of each",
                     "speed-up of two", "range alone / together"], rows), ""]
    benchlib.write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
