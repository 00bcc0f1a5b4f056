"""A PASE-style data loader, for comparison with the store: targets computed on the fly.

A ``torch.utils.data.DataLoader`` over the same music files as ``data_path.py``'s store.
Each ``__getitem__`` picks a file and a random 2 s crop, decodes it with soundfile, and
computes the default targets (``featurestore.targets.resolve("default")`` on
``DecodedClip(crop, 16000, 160)``), as PASE's loader does; batches of 128 are collated by the
DataLoader. Sources:

- ``wav``: 16 kHz mono PCM16 WAV copies of the files (PASE's input format; made once in
  ``.benchmarks/data_path/``), the crop read by seeking: the cheapest decode possible.
- ``ogg``: the original Ogg Vorbis files (44.1/48 kHz stereo), the crop read by seeking,
  downmixed and resampled to 16 kHz with soxr, as ``featurestore.audio`` does.

``--whole-file`` decodes the whole file and then crops, which is what PASE's loader
literally does (``soundfile.read(path)``), at a higher cost per crop.

The figure is audio-seconds delivered per CPU-second (all processes: the loader's
workers, from ``RUSAGE_CHILDREN`` once they are joined, plus the main process), i.e. per core; wall
rates are given too. Workers are forked after a warm-up in the main process, so numba's
JIT is not in the timed window. With ``--compare`` (default) the same run also times
the store's gather and ``batch()`` for the ratio store / on the fly.

    python benchmarks/onthefly_baseline.py                    # workers 0 and 2
    python benchmarks/onthefly_baseline.py --workers 0 2 --batches 4 --sources wav ogg
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import benchlib  # before numpy: pins numeric libraries to one thread
import data_path
import numpy as np
from benchlib import HOP, SAMPLE_RATE, table

CROP_SECONDS = 2.0


def wav_copies(files: list[str], minutes: float) -> list[str]:
    """16 kHz mono PCM16 WAV copies of ``files`` (decoded with ``featurestore.audio``)."""
    import soundfile as sf

    from featurestore.audio import decode

    folder = data_path.WORK / f"wav16k-{minutes:g}min"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, path in enumerate(files):
        dest = folder / f"{k:03d}-{Path(path).stem}.wav"
        if not dest.exists():
            y = np.concatenate(list(decode(path, SAMPLE_RATE)))
            tmp = dest.with_suffix(".tmp.wav")
            sf.write(tmp, y, SAMPLE_RATE, subtype="PCM_16")
            tmp.rename(dest)
        out.append(str(dest))
    return out


class OnTheFly:
    """The map-style dataset: item ``i`` is a random crop (a pure function of seed, i)
    with its waveform and every default target, as float32 tensors."""

    def __init__(self, files: list[str], n_items: int, seed: int = 0,
                 whole_file: bool = False) -> None:
        import soundfile as sf

        from featurestore.targets import resolve

        self.files = files
        info = [sf.info(f) for f in files]
        self.rates = [i.samplerate for i in info]
        self.lengths = [i.frames for i in info]
        self.n_items, self.seed, self.whole_file = n_items, seed, whole_file
        self.targets = resolve("default")
        self.decode_cpu = 0.0  # seconds, in this process only (workers keep their own)
        self.target_cpu = 0.0

    def __len__(self) -> int:
        return self.n_items

    def crop(self, i: int) -> np.ndarray:
        import soundfile as sf
        import soxr

        from featurestore.audio import RESAMPLE_QUALITY

        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(self.files)))
        rate = self.rates[k]
        need = round(CROP_SECONDS * rate)
        start = int(rng.integers(0, self.lengths[k] - need))
        if self.whole_file:
            y, _ = sf.read(self.files[k], dtype="float32", always_2d=True)
            y = y[start:start + need]
        else:
            y, _ = sf.read(self.files[k], start=start, frames=need, dtype="float32",
                           always_2d=True)
        y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
        if rate != SAMPLE_RATE:
            y = soxr.resample(y, rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)
        n = round(CROP_SECONDS * SAMPLE_RATE)
        return np.ascontiguousarray(np.pad(y, (0, max(0, n - len(y))))[:n], dtype=np.float32)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        from featurestore.targets import DecodedClip

        c0 = time.process_time()
        y = self.crop(i)
        c1 = time.process_time()
        frames = DecodedClip(y, SAMPLE_RATE, HOP)
        out = {t.name: torch.from_numpy(t(frames)) for t in self.targets}
        out["waveform"] = torch.from_numpy(y)
        self.decode_cpu += c1 - c0
        self.target_cpu += time.process_time() - c1
        return out


def run_loader(ds: OnTheFly, batch: int, workers: int) -> dict[str, float]:
    """Iterate a DataLoader over ``ds`` once; wall and CPU seconds of every process (the
    workers' CPU is counted once they have exited and been joined: RUSAGE_CHILDREN)."""
    import torch

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    load = os.getloadavg()[0]
    k0 = children_cpu()
    w0, c0 = time.perf_counter(), time.process_time()
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers)
    n = 0
    for b in loader:  # the workers are shut down and joined when the loop ends
        n += b["waveform"].shape[0]
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    del loader
    children = children_cpu() - k0
    return {"items": n, "wall": wall, "cpu": cpu + children, "main_cpu": cpu,
            "load": load}


def store_rates(minutes: float, batches: int, repeat: int) -> dict[str, list[float]]:
    """CPU ms per batch of the store's gather and batch() (128 x 200 frames), measured
    now, for the ratio under the same load."""
    import torch

    from featurestore.targets import resolve
    from trainer.data import CropDataset

    torch.set_num_threads(1)
    store = data_path.WORK / f"store-{minutes:g}min.h5"
    if not store.exists():
        return {}
    data = CropDataset(store, [t.name for t in resolve("default")], data_path.CROP_FRAMES)
    data_path.touch_pages(data._arrays[0])
    out: dict[str, list[float]] = {"gather": [], "batch()": []}
    for r in range(repeat):
        pre = [data.draw(np.random.default_rng([1, r, k]), data_path.BATCH)
               for k in range(batches)]
        data.gather(*pre[0])
        c0 = time.process_time()
        for p in pre:
            data.gather(*p)
        out["gather"].append(1000 * (time.process_time() - c0) / batches)
        data.batch(1, 10_000 * r, data_path.BATCH)
        c0 = time.process_time()
        for k in range(batches):
            data.batch(1, 10_000 * r + k + 1, data_path.BATCH)
        out["batch()"].append(1000 * (time.process_time() - c0) / batches)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="the same corpus as data_path.py (default 60 min)")
    parser.add_argument("--files", nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=data_path.BATCH)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--sources", nargs="+", default=["wav", "ogg"],
                        choices=["wav", "ogg"])
    parser.add_argument("--whole-file", action="store_true",
                        help="decode whole files, then crop (PASE's loader)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per configuration")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip timing the store for the ratio")
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "onthefly_baseline.md")
    args = parser.parse_args()

    import essentia

    essentia.log.warningActive = False  # PitchYinFFT warns on every silent frame
    _, files = data_path.corpus(args.minutes, args.files)
    sources = {"ogg": files}
    if "wav" in args.sources:
        sources["wav"] = wav_copies(files, args.minutes)
    lines = [f"Machine: {benchlib.machine_line()}",
             f"Corpus: {len(files)} files, {args.minutes:g} min (data_path.py's); crops of "
             f"{CROP_SECONDS:g} s, batches of {args.batch}, default targets + waveform"
             + ("; whole files decoded, then cropped" if args.whole_file else
                "; crops read by seeking")]
    rows = []
    per_core: dict[tuple[str, int], list[float]] = {}
    for source in args.sources:
        ds = OnTheFly(sources[source], args.batch * args.batches, whole_file=args.whole_file)
        for i in range(3):  # warm-up before any fork: imports, numba JIT, first calls
            ds[10_000 + i]
        for workers in args.workers:
            for r in range(args.repeat):
                ds.decode_cpu = ds.target_cpu = 0.0
                ds.seed = 100 * r + workers + 1
                res = run_loader(ds, args.batch, workers)
                audio = res["items"] * CROP_SECONDS
                rate = audio / res["cpu"]
                per_core.setdefault((source, workers), []).append(rate)
                split = (f"{1000 * ds.decode_cpu / res['items']:.1f} / "
                         f"{1000 * ds.target_cpu / res['items']:.1f}" if workers == 0 else
                         "(in workers)")
                rows.append([source, workers, r + 1, res["items"], f"{res['wall']:.1f}",
                             f"{res['cpu']:.1f}", f"{1000 * res['cpu'] / res['items']:.1f}",
                             split, f"{audio / res['wall']:.0f}", f"{rate:.0f}",
                             f"{res['load']:.1f}"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    lines += ["", table(["source", "workers", "run", "crops", "wall s", "CPU s (all procs)",
                         "CPU ms/crop", "decode / targets ms/crop", "audio-s/s (wall)",
                         "audio-s/s per core", "load"], rows)]
    if not args.no_compare:
        store = store_rates(args.minutes, 20, 3)
        if store:
            audio = data_path.BATCH * data_path.CROP_FRAMES * HOP / SAMPLE_RATE
            ratio_rows = []
            for what, ms in store.items():
                store_rate = audio * 1000 / statistics.median(ms)
                for (source, workers), rates in per_core.items():
                    fly = statistics.median(rates)
                    ratio_rows.append([f"store {what}", f"{statistics.median(ms):.1f}",
                                       f"{store_rate:,.0f}", f"{source}, {workers} workers",
                                       f"{fly:.0f}", f"{store_rate / fly:,.0f}x"])
            lines += ["", table(["store path", "CPU ms/batch", "audio-s/s per core",
                                 "on the fly", "audio-s/s per core", "store / on the fly"],
                                ratio_rows)]
    lines.append(f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    benchlib.write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
