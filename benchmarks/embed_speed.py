"""Throughput of ``trainer.embed.clip_embeddings``: audio-seconds embedded per second.

Builds (once, cached in ``.benchmarks/embed_speed/``) a store of about two minutes of
harmonic tones with ``tests/stores.py``'s ``tone_corpus`` (the encoder's cost does not
depend on what the audio holds), then times ``clip_embeddings`` of a randomly initialised
encoder with the sidecar cache off, for several intra-op thread counts, crop lengths and
batch sizes. Each setting runs once to warm up (allocator, oneDNN kernels for each shape),
then ``--repeat`` timed runs; the best is reported (the run least disturbed by other
load), with the best CPU time of the process (all its threads): on a busy machine
audio-seconds per CPU-second is the steadier figure.

Encoders are named as ``random:`` specs take them (``pase+``: the paper configuration),
or with ``@cpu`` for the CPU sizes below (``pase+@cpu``: the CPU-sized PASE+ of
experiments/RESULTS.md, 1.7 M parameters; ``melcnn@cpu``: the cpu-small preset's log-mel
CNN; ``samplecnn@cpu``: a half-width SampleCNN, never pre-trained). Variants (PASE+):
``pase+@cpu-k101``, ``-nornn`` and ``-narrow`` are cheaper
architectures of it (:data:`PASE_OPTIONS`; speed only, never pre-trained). ``ref`` runs
the reference layers with the GRU on every thread (the code before issue
12), ``layers`` the reference layers with the GRU on one thread, ``fast`` the eval-mode
fast path (the default), ``bf16`` the fast path under CPU bf16
autocast (``EncoderEmbedder.cpu_bf16``).

Two more reports (issue 12):

* ``--profile``: the share of each module of one encoder forward (wall time between
  forward hooks, best of ``--repeat``) at 10 s and 2 s crops, per thread count;
* ``--cold``: the first ``clip_embeddings`` call of a fresh process (every crop shape new)
  against the best later call, on a store of clips of varied lengths, with and without
  crop buckets; each measurement in its own process.

    python benchmarks/embed_speed.py [--clips 12] [--seconds 10] [--repeat 3] \\
        [--threads 1 2] [--encoders pase+@cpu melcnn@cpu samplecnn@cpu] \\
        [--variants ref fast bf16] [--settings 10:16 2:16] [--profile] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib  # first of the third-party imports: it pins numpy's threads

CPU_SIZES: dict[str, dict[str, Any]] = {
    # experiments/dev-cpu.toml, study "encoder" (experiments/RESULTS.md: 1.7 M parameters)
    "pase+": {"channels": [32, 64, 64, 128, 128, 256, 256], "dim": 128, "rnn_hidden": 64,
              "sinc_filters": 32},
    # trainer/presets/cpu-small.toml
    "melcnn": {"n_mels": 80, "channels": [16, 32, 64, 128], "freq_pools": [2, 2, 4, 5],
               "dim": 128},
    # chosen here (not a preset): SampleCNN at half width, 0.43 M parameters
    "samplecnn": {"stem_channels": 64, "channels": [64, 64, 128, 128, 256, 256], "dim": 128},
}
# Cheaper architectures of the CPU-sized PASE+, through existing constructor arguments
# (speed only: none of them has been pre-trained, their quality is unmeasured).
PASE_OPTIONS: dict[str, dict[str, Any]] = {
    "k101": {"sinc_kernel": 101},  # fewer sinc taps (6.3 ms instead of 15.7 ms)
    "nornn": {"rnn": False},  # conv-only context
    "narrow": {"channels": [32, 64, 64, 128, 128, 128, 128]},  # narrower last blocks
}
VARIANTS = ("ref", "layers", "fast", "bf16")


def parse_encoder(spec: str) -> tuple[str, dict[str, Any]]:
    """``name``, ``name@cpu`` or ``pase+@cpu-OPTION`` (:data:`PASE_OPTIONS`) → (registry
    name, constructor arguments)."""
    name, _, size = spec.partition("@")
    size, _, option = size.partition("-")
    if size not in ("", "cpu") or (option and (name != "pase+" or option not in PASE_OPTIONS)):
        raise SystemExit(f"unknown size {spec!r} (expected NAME, NAME@cpu or "
                         f"pase+@cpu-{{{','.join(PASE_OPTIONS)}}})")
    kwargs = dict(CPU_SIZES[name]) if size else {}
    return name, {**kwargs, **PASE_OPTIONS.get(option, {})}


def make_embedder(spec: str, variant: str, buckets: int | None = None) -> Any:
    """A seeded random encoder embedder of ``spec`` in ``variant`` (see the module
    docstring)."""
    from trainer.embed import DEFAULT_BUCKETS, load_embedder

    name, kwargs = parse_encoder(spec)
    embedder = load_embedder(f"random:{name}", encoder_kwargs=kwargs, device="cpu",
                             buckets=DEFAULT_BUCKETS if buckets is None else buckets,
                             cpu_bf16=variant == "bf16")
    encoder = embedder.encoder
    if variant in ("ref", "layers"):
        for attr in ("fast_eval", "rnn_one_thread")[: 2 if variant == "ref" else 1]:
            if hasattr(encoder, attr):
                setattr(encoder, attr, False)
    return embedder


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


def make_varied_store(folder: Path, n_clips: int = 20) -> Path:
    """``n_clips`` tones of 3-25 s (seeded; every clip's last crop has its own length),
    built once and reused."""
    import numpy as np
    import soundfile as sf

    sys.path.insert(0, str(benchlib.REPO / "tests"))
    from stores import build_store, tone_corpus

    store = folder / f"tones-varied-{n_clips}.h5"
    if not store.exists():
        audio = folder / f"audio-varied-{n_clips}"
        source = tone_corpus(audio, n_clips=n_clips, seconds=25.0, seed=1)
        lengths = np.random.default_rng(1).uniform(3.0, 25.0, n_clips)
        for i, seconds in enumerate(lengths):
            path = audio / f"clip{i:03d}.wav"
            y, sr = sf.read(path, dtype="float32")
            sf.write(path, y[: int(seconds * sr)], sr)
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


def throughput(args: argparse.Namespace, store: Path) -> str:
    """The audio-s/s table: encoders x variants x threads x (crop, batch)."""
    import torch

    import featurestore
    from trainer.embed import clip_embeddings

    audio = featurestore.open_store(store).seconds
    settings = [tuple(float(v) for v in s.split(":")) for s in args.settings]
    rows = []
    for spec in args.encoders:
        variants = args.variants if spec.startswith("pase+") else [
            v for v in args.variants if v != "ref"]
        for variant in variants:
            embedder = make_embedder(spec, variant)
            for threads in args.threads:
                torch.set_num_threads(threads)
                for crop, batch in settings:
                    def run(crop: float = crop, batch: int = int(batch),
                            embedder: Any = embedder) -> None:
                        clip_embeddings(embedder, store, pooling="mean+std", device="cpu",
                                        batch_size=batch, crop_seconds=crop, cache=False)

                    wall, cpu = best_time(run, args.repeat)
                    rows.append([f"random:{spec}", variant, threads, f"{crop:g}", int(batch),
                                 f"{wall:.2f}", f"{audio / wall:,.1f}", f"{cpu:.2f}",
                                 f"{audio / cpu:,.1f}"])
                    print(rows[-1], file=sys.stderr)
    torch.set_num_threads(max(args.threads))
    wall, cpu = best_time(lambda: clip_embeddings("mfcc-stats", store, cache=False),
                          args.repeat)
    rows.append(["mfcc-stats", "-", "-", "-", "-", f"{wall:.3f}", f"{audio / wall:,.0f}",
                 f"{cpu:.3f}", f"{audio / max(cpu, 1e-9):,.0f}"])
    return "\n".join([
        f"Store: {args.clips} clips x {args.seconds:g} s = {audio:.0f} s of audio "
        f"(16 kHz, hop 160); pooling mean+std; cache off; best of {args.repeat} after "
        f"a warm-up run; torch {torch.__version__}.",
        "",
        benchlib.table(["embedder", "variant", "threads", "crop s", "batch", "wall s",
                        "audio-s / wall-s", "CPU s", "audio-s / CPU-s"], rows),
    ])


def module_times(encoder: Any, wave: Any, repeat: int) -> tuple[float, dict[str, float]]:
    """Best total forward time and, from the same run, each top-level stage's time.

    Stages are the encoder's direct children and the items of its ``ModuleList`` /
    ``Sequential`` children (``blocks.0``, ``skips.3``, ...), timed between forward
    hooks; what no hook covers (PASE+'s fast front end, the log-mel STFT, pooling and
    sums in ``encode``) is reported as the time before the first hooked stage starts
    ("front, unhooked") and the rest ("other").
    """
    import torch
    from torch import nn

    stamps: list[tuple[str, str, float]] = []
    handles = []
    for name, child in encoder.named_children():
        parts = (list(child.named_children())
                 if isinstance(child, nn.ModuleList | nn.Sequential) else [("", child)])
        for sub, module in parts:
            label = f"{name}.{sub}" if sub else name
            handles.append(module.register_forward_pre_hook(
                lambda m, a, label=label: stamps.append((label, "in", time.perf_counter()))))
            handles.append(module.register_forward_hook(
                lambda m, a, o, label=label: stamps.append((label, "out",
                                                            time.perf_counter()))))
    best: tuple[float, dict[str, float]] | None = None
    try:
        with torch.inference_mode():
            encoder(wave)
            for _ in range(repeat):
                stamps.clear()
                t0 = time.perf_counter()
                encoder(wave)
                total = time.perf_counter() - t0
                times: dict[str, float] = {}
                opened: dict[str, float] = {}
                first = min((t for _, kind, t in stamps if kind == "in"), default=t0)
                for label, kind, t in stamps:
                    if kind == "in":
                        opened[label] = t
                    else:
                        times[label] = times.get(label, 0.0) + t - opened.pop(label)
                times = {"front, unhooked": first - t0, **times}
                if best is None or total < best[0]:
                    best = (total, times)
    finally:
        for h in handles:
            h.remove()
    assert best is not None
    return best


def profile(args: argparse.Namespace) -> str:
    """Per-module shares of one forward, per encoder, variant, thread count and crop."""
    import torch

    out = [f"Forward of one batch (random weights, eval, inference mode), best of "
           f"{args.repeat} after a warm-up; share of the forward's wall time; "
           f"torch {torch.__version__}.", ""]
    for spec in args.encoders:
        variants = [v for v in args.variants if v != "bf16"]
        if not spec.startswith("pase+"):
            variants = ["fast"]
        for variant in variants:
            encoder = make_embedder(spec, variant).encoder
            for crop, batch in ((10.0, 4), (2.0, 16)):
                wave = 0.1 * torch.randn(batch, int(crop * 100) * 160,
                                         generator=torch.Generator().manual_seed(0))
                rows: dict[str, list[str]] = {}
                totals = []
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    total, times = module_times(encoder, wave, args.repeat)
                    totals.append(f"{total * 1e3:.0f} ms = {batch * crop / total:.1f} audio-s/s")
                    other = total - sum(times.values())
                    for label, t in [*times.items(), ("other", other)]:
                        rows.setdefault(label, []).append(
                            f"{100 * t / total:.1f} % ({t * 1e3:.0f} ms)")
                header = ["stage"] + [f"{t} thread{'s' * (t > 1)}" for t in args.threads]
                out += [f"**{spec}**, {variant}, {batch} x {crop:g} s crops: "
                        + "; ".join(f"{t} thr: {s}" for t, s in zip(args.threads, totals,
                                                                    strict=True)), "",
                        benchlib.table(header, [[k, *v] for k, v in rows.items()
                                                if any(not c.startswith("0.0 %") for c in v)]),
                        ""]
                print("\n".join(out[-4:]), file=sys.stderr)
    return "\n".join(out)


def cold_child(spec: str, variant: str, buckets: int, threads: int, store: str,
               repeat: int) -> dict[str, Any]:
    """In a fresh process: the first and the best later ``clip_embeddings`` call, and
    the distinct input shapes the encoder saw."""
    import torch

    from trainer.embed import clip_embeddings

    torch.set_num_threads(threads)
    embedder = make_embedder(spec, variant, buckets)
    shapes: set[tuple[int, ...]] = set()
    embedder.encoder.register_forward_pre_hook(lambda m, a: shapes.add(tuple(a[0].shape)))

    def run() -> None:
        clip_embeddings(embedder, store, device="cpu", cache=False)

    t0, c0 = time.perf_counter(), time.process_time()
    run()
    cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    warm, warm_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        warm = min(warm, time.perf_counter() - t0)
        warm_cpu = min(warm_cpu, time.process_time() - c0)
    return {"cold": cold, "cold_cpu": cold_cpu, "warm": warm, "warm_cpu": warm_cpu,
            "shapes": len(shapes), "lengths": len({s[-1] for s in shapes})}


def cold(args: argparse.Namespace) -> str:
    """Cold (first call of a fresh process) against warm, each case in its own process."""
    import featurestore

    folder = benchlib.CACHE / "embed_speed"
    store = make_varied_store(folder)
    s = featurestore.open_store(store)
    audio = s.seconds
    cases = [(spec, variant, buckets, threads) for spec in args.encoders
             for variant, buckets in ([(v, 0) for v in args.variants if v != "bf16"]
                                      + [("fast", 8)]
                                      if spec.startswith("pase+") else [("fast", 0), ("fast", 8)])
             for threads in args.threads]
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for _ in range(args.rounds):  # interleaved: each round runs every case once
        for case in cases:
            cmd = [sys.executable, __file__, "--cold-child",
                   json.dumps([*case, str(store), args.repeat])]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                            text=True).stdout.strip().splitlines()[-1])
            print(case, res, file=sys.stderr)
            old = best.setdefault(case, res)
            for k in ("cold", "cold_cpu", "warm", "warm_cpu"):
                old[k] = min(old[k], res[k])
    rows = []
    for (spec, variant, buckets, threads), res in best.items():
        rows.append([f"random:{spec}", variant, buckets or "none", threads, res["lengths"],
                     res["shapes"], f"{res['cold']:.2f}", f"{res['warm']:.2f}",
                     f"{res['cold_cpu']:.2f}", f"{res['warm_cpu']:.2f}",
                     f"{res['cold_cpu'] / res['warm_cpu']:.2f}",
                     f"{audio / res['warm']:.1f}", f"{audio / res['warm_cpu']:.1f}"])
    return "\n".join([
        f"Store: {s.n_clips} tones of 3-25 s ({audio:.0f} s of audio, every clip a "
        f"different length), crops of 10 s, batches of 16, mean+std, cache off. Cold: the "
        f"first call in a fresh process (encoder built before the clock starts); warm: "
        f"best of {args.repeat} later calls in that process. Each figure is the best over "
        f"{args.rounds} rounds that run every case once, in a fresh process each.",
        "",
        benchlib.table(["embedder", "variant", "buckets", "threads", "crop lengths seen",
                        "input shapes seen", "cold wall s", "warm wall s", "cold CPU s",
                        "warm CPU s", "cold / warm (CPU)", "warm audio-s / wall-s",
                        "warm audio-s / CPU-s"], rows),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per clip")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+",
                        default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--encoders", nargs="+", default=["pase+"])
    parser.add_argument("--variants", nargs="+", default=["fast"], choices=VARIANTS)
    parser.add_argument("--settings", nargs="+", default=["10:16", "10:4", "10:1", "2:16",
                                                         "2:4"],
                        help="crop seconds:batch size pairs")
    parser.add_argument("--profile", action="store_true", help="per-module time shares")
    parser.add_argument("--cold", action="store_true", help="first call against later calls")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the --cold cases")
    parser.add_argument("--cold-child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "embed_speed.md")
    args = parser.parse_args(argv)

    import numpy as np  # noqa: F401 - imported after benchlib's thread pinning

    if args.cold_child:
        print(json.dumps(cold_child(*json.loads(args.cold_child))))
        return
    folder = benchlib.CACHE / "embed_speed"
    folder.mkdir(parents=True, exist_ok=True)
    parts = [f"Machine: {benchlib.machine_line()}", ""]
    if args.profile:
        parts += [profile(args), ""]
    if args.cold:
        parts += [cold(args), ""]
    if not (args.profile or args.cold):
        parts += [throughput(args, make_store(folder, args.clips, args.seconds))]
    parts.append(f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    benchlib.write_report("\n".join(parts), args.out)


if __name__ == "__main__":
    main()
