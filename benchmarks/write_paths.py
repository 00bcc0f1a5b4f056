"""What writing a store's arrays costs through the page cache and around it (``O_DIRECT``).

A build writes every array byte twice, into its shard and then into the store, and syncs
both files. This times featurestore's own writer (``featurestore.store._ArrayWriter``,
the one shards and stores are written with) on a new file of ``--mb`` megabytes, fed in
pieces of 64 K rows of a 513-dimension float16 array (the assembly's piece of ``lps``),
then ``fsync``: once through the page cache only, once with direct writes. Wall seconds,
and the process's user and kernel CPU seconds. Between runs it waits ``--pause`` seconds,
so that each run meets memory the kernel has had time to hand back (on a VM the host
takes freed pages away, and the next new page costs a fault there).

    python benchmarks/write_paths.py                      # 1600 MB, 3 rounds
    python benchmarks/write_paths.py --mb 400 --rounds 5 --dir /mnt/disk

The file goes into ``.benchmarks/`` (or ``--dir``) and is removed after each run.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import benchlib  # first: pins numeric libraries to one thread
import numpy as np
from benchlib import table

from featurestore.store import _ArrayWriter, _Direct

ROW_BYTES = 513 * 2  # a float16 row of lps
PIECE_ROWS = 1 << 16  # the rows assemble() copies at a time from a shard's lps


def write_once(path: Path, source: np.ndarray, total: int, direct: bool) -> dict[str, float]:
    """Write ``total`` bytes of ``source`` (repeated) into a new file and fsync it."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, total)
    d = _Direct.open(path) if direct else None
    if direct and d is None:
        raise SystemExit(f"{path.parent}: this file system takes no direct writes")
    writer = _ArrayWriter(fd, d, 0, total)
    done = 0
    while done < total:
        piece = source[: min(len(source), total - done)]
        writer.write(piece)
        done += len(piece)
    writer.close()
    written = time.perf_counter() - t0
    os.fsync(fd)
    if d is not None:
        d.close()
    os.close(fd)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    path.unlink()
    if d is not None and not d.usable:
        raise SystemExit(f"{path.parent}: this file system refused a direct write")
    return {"written": written, "wall": wall, "user": r1.ru_utime - r0.ru_utime,
            "sys": r1.ru_stime - r0.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1600, help="megabytes per file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pause", type=float, default=6.0,
                        help="seconds between runs (see the description)")
    parser.add_argument("--dir", type=Path, default=benchlib.CACHE, help="where to write")
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "write_paths.md",
                        help="report file")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    total = args.mb * 2**20
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, PIECE_ROWS * ROW_BYTES, dtype=np.uint8)
    path = args.dir / "write_paths.tmp"
    runs: dict[str, list[dict[str, float]]] = {"page cache": [], "direct": []}
    for _ in range(args.rounds):
        for name in runs:
            time.sleep(args.pause)
            run = write_once(path, source, total, direct=name == "direct")
            runs[name].append(run)
            print(f"  {name}: {run}", flush=True)
    rows = []
    for name, done in runs.items():
        med = {k: benchlib.median([r[k] for r in done]) for k in ("written", "wall", "user",
                                                                 "sys")}
        rows.append([name, " ".join(f"{r['wall']:.2f}" for r in done), f"{med['written']:.2f}",
                     f"{med['wall']:.2f}", f"{med['user']:.2f}", f"{med['sys']:.2f}",
                     f"{med['sys'] / (total / 1e9):.2f}"])
    text = "\n".join([
        f"Machine: {benchlib.machine_line()}",
        f"{args.mb} MB written into {args.dir} in pieces of {PIECE_ROWS} rows x "
        f"{ROW_BYTES} bytes, then fsync; {args.rounds} rounds, medians:", "",
        table(["writes", "wall s with fsync, each run", "write s", "wall s", "user s",
               "kernel s", "kernel s per GB"], rows), ""])
    print(text)
    benchlib.write_report(text, args.out)


if __name__ == "__main__":
    main()
