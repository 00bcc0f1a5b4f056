"""Does the length of the pieces a build cuts long files into change its CPU cost?

One process, one thread, the workers' allocator settings (re-executed with
``featurestore.build.WORKER_ENVIRON`` when they are missing): every selected file is
planned with ``ExtractConfig(max_seconds=L)`` for each ``L`` given and extracted
partition by partition (at most 600 s of audio each, as a build groups pieces), in
rounds that alternate the lengths so that drift on a shared machine hits each alike. It
prints the CPU seconds of ``extract_partition`` per audio-hour, per round: decoding,
targets, cast and moments; no shard and no store.

    python benchmarks/piece_length.py --hours 0.5 --max-seconds 600 60 120 --rounds 2

The first round pays each process's one-off costs (imports, numba cache loads): read the
later rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import benchlib  # first: pins numeric libraries to one thread
from benchlib import table
from build_profile import select_files

from featurestore.build import WORKER_ENVIRON


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=0.5, help="audio to extract")
    parser.add_argument("--source", help="a folder of audio instead of the game packages")
    parser.add_argument("--max-seconds", type=float, nargs="+", default=[600.0, 60.0],
                        help="piece lengths to compare")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if any(os.environ.get(k) != v for k, v in WORKER_ENVIRON.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, **WORKER_ENVIRON})

    from featurestore.audio import content_hash, probe
    from featurestore.extract import ExtractConfig, extract_partition, plan_file
    from featurestore.store import Clip

    files, seconds = select_files(args.source, args.hours)
    print(f"{benchlib.machine_line()}\n{len(files)} files, {seconds / 3600:.2f} h",
          flush=True)
    headers = [(probe(path), content_hash(path)) for path in files]  # read once
    rows = []
    for r in range(args.rounds):
        row = [str(r + 1)]
        for max_seconds in args.max_seconds:
            config = ExtractConfig(targets=("default",), max_seconds=max_seconds)
            per_partition = max(1, int(600 // max_seconds))
            cpu, samples = 0.0, 0
            for k, (path, (info, content)) in enumerate(zip(files, headers, strict=True)):
                pieces = plan_file(Clip(id=f"clip-{k:04d}", path=path), info, config, content)
                for start in range(0, len(pieces), per_partition):
                    t = time.process_time()
                    result = extract_partition(pieces[start:start + per_partition], config)
                    cpu += time.process_time() - t
                    samples += sum(c.n_samples for c in result.clips)
                    if result.errors:
                        sys.exit(f"{result.errors[0][0]}: {result.errors[0][1]}")
            row.append(f"{cpu / (samples / config.sample_rate / 3600):.1f}")
        rows.append(row)
        print(f"round {r + 1}: " + ", ".join(
            f"{m:g} s: {v}" for m, v in zip(args.max_seconds, row[1:], strict=True)),
            flush=True)
    print(table(["round", *(f"CPU s / audio-h, max_seconds {m:g}" for m in args.max_seconds)],
                rows))


if __name__ == "__main__":
    main()
