"""Throughput of ``trainer.embed.clip_embeddings``: audio-seconds embedded per second.

Builds (once, cached in ``.benchmarks/embed_speed/``) a store of about two minutes of
harmonic tones with ``tests/stores.py``'s ``tone_corpus`` (the encoder's cost does not
depend on what the audio holds), then times ``clip_embeddings`` of a randomly initialised
encoder (default: PASE+ in its paper configuration) with the sidecar cache off, for
several intra-op thread counts, crop lengths and batch sizes. Each setting runs once to
warm up (allocator, oneDNN kernels for each shape), then ``--repeat`` timed runs; the best
is reported (the run least disturbed by other load), with the best CPU time of the
process (all its threads): on a busy machine audio-seconds per CPU-second is the steadier
figure.

    python benchmarks/embed_speed.py [--clips 12] [--seconds 10] [--repeat 3] \\
        [--threads 1 2] [--encoders pase+] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import benchlib  # first of the third-party imports: it pins numpy's threads


def make_store(folder: Path, n_clips: int, seconds: float) -> Path:
    """The tone store, built once and reused."""
    sys.path.insert(0, str(benchlib.REPO / "tests"))
    from stores import build_store, tone_corpus

    store = folder / f"tones-{n_clips}x{seconds:g}s.h5"
    if not store.exists():
        source = tone_corpus(folder / f"audio-{n_clips}x{seconds:g}s", n_clips=n_clips,
                             seconds=seconds, seed=0)
        build_store(source, store, "mfcc")
    return store


def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best wall time and best CPU time (this process, all threads) of ``repeat`` calls
    of ``fn`` after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per clip")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+",
                        default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--encoders", nargs="+", default=["pase+"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "embed_speed.md")
    args = parser.parse_args(argv)

    import numpy as np  # noqa: F401 - imported after benchlib's thread pinning
    import torch

    import featurestore
    from trainer.embed import Embedder, clip_embeddings, load_embedder

    folder = benchlib.CACHE / "embed_speed"
    folder.mkdir(parents=True, exist_ok=True)
    store = make_store(folder, args.clips, args.seconds)
    audio = featurestore.open_store(store).seconds
    settings = [(10.0, 16), (10.0, 4), (10.0, 1), (2.0, 16), (2.0, 4)]  # (crop s, batch)

    rows = []
    for name in args.encoders:
        embedder = load_embedder(f"random:{name}", device=args.device)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for crop, batch in settings:
                def run(crop: float = crop, batch: int = batch,
                        embedder: Embedder = embedder) -> None:
                    clip_embeddings(embedder, store, pooling="mean+std", device=args.device,
                                    batch_size=batch, crop_seconds=crop, cache=False)

                wall, cpu = best_time(run, args.repeat)
                rows.append([f"random:{name}", args.device, threads, f"{crop:g}", batch,
                             f"{wall:.2f}", f"{audio / wall:,.1f}", f"{cpu:.2f}",
                             f"{audio / cpu:,.1f}"])
                print(rows[-1], file=sys.stderr)
    torch.set_num_threads(max(args.threads))
    wall, cpu = best_time(lambda: clip_embeddings("mfcc-stats", store, cache=False),
                          args.repeat)
    rows.append(["mfcc-stats", "cpu", "-", "-", "-", f"{wall:.3f}", f"{audio / wall:,.0f}",
                 f"{cpu:.3f}", f"{audio / max(cpu, 1e-9):,.0f}"])
    report = "\n".join([
        f"Store: {args.clips} clips x {args.seconds:g} s = {audio:.0f} s of audio "
        f"(16 kHz, hop 160); pooling mean+std; cache off; best of {args.repeat} after "
        f"a warm-up run; torch {torch.__version__}.",
        f"Machine: {benchlib.machine_line()}",
        "",
        benchlib.table(["embedder", "device", "threads", "crop s", "batch", "wall s",
                        "audio-s / wall-s", "CPU s", "audio-s / CPU-s"], rows),
    ])
    benchlib.write_report(report, args.out)


if __name__ == "__main__":
    main()
