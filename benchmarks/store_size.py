"""Store size per audio-hour, float16 against 8-bit codes (``featurestore build
--quantize``), and what the codes cost each target's values.

Builds the same real music (whole game-music tracks, as ``build_profile.py`` selects
them) twice with the default targets: as declared (float16) and quantised. For each
target: bytes per audio-hour in both stores, and the error of the decoded codes against
the float16 values: R^2 (1 - MSE / variance of the float16 values, per dimension, the
worst dimension and the mean over dimensions) and the largest error in units of the
dimension's standard deviation.

    python benchmarks/store_size.py                  # 1 h of game music
    python benchmarks/store_size.py --hours 0.5 --keep .benchmarks/store_size
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import benchlib  # first: pins numeric libraries to one thread
from benchlib import table
from build_profile import link_folder, select_files


def compare(plain_path: Path, coded_path: Path) -> tuple[list[list[str]], float, float, float]:
    """Table rows per target, the audio-hours and both files' bytes per audio-hour."""
    import numpy as np

    from featurestore import open_store

    plain, coded = open_store(plain_path), open_store(coded_path)
    hours = plain.seconds / 3600
    rows = [["waveform", "int16", f"{plain.waveform.nbytes / hours / 1e6:.0f}",
             f"{coded.waveform.nbytes / hours / 1e6:.0f}", "1 (same)", "", ""]]
    p_sum, c_sum = plain.summary()["targets"], coded.summary()["targets"]
    for name in plain.targets:
        sse = np.zeros(plain.specs[name].dim)
        worst = np.zeros(plain.specs[name].dim)
        for i in range(plain.n_clips):
            want = np.asarray(plain.frames_of(name, i), dtype=np.float64)
            got = np.asarray(coded.frames_of(name, i), dtype=np.float64)
            err = got - want
            sse += (err**2).sum(axis=0)
            worst = np.maximum(worst, np.abs(err).max(axis=0))
        st = plain.stats[name]
        var = np.where(st.std > 1e-6, st.std**2, np.nan)
        r2 = 1.0 - sse / st.count / var
        rows.append([name, f"{p_sum[name]['dtype']} -> {c_sum[name]['dtype']}",
                     f"{p_sum[name]['bytes'] / hours / 1e6:.1f}",
                     f"{c_sum[name]['bytes'] / hours / 1e6:.1f}",
                     f"{np.nanmean(r2):.6f}", f"{np.nanmin(r2):.6f}",
                     f"{np.nanmax(worst / np.sqrt(var)):.3f}"])
    return rows, hours, plain_path.stat().st_size / hours, coded_path.stat().st_size / hours


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="audio to build")
    parser.add_argument("--source", help="a folder of audio instead of the game packages")
    parser.add_argument("--processes", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--keep", type=Path,
                        help="build (once) and keep the two stores in this folder")
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "store_size.md",
                        help="report file")
    args = parser.parse_args(argv)
    from featurestore import build

    files, _ = select_files(args.source, args.hours)
    work = args.keep or Path(tempfile.mkdtemp(prefix="store_size-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        folder = link_folder(files, work / "audio")
        stores = {}
        for quantize in (False, True):
            out = work / ("coded.h5" if quantize else "plain.h5")
            build(str(folder), out, workers=args.processes, quantize=quantize, progress=False)
            stores[quantize] = out
        rows, hours, plain_bytes, coded_bytes = compare(stores[False], stores[True])
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    rows.append(["**whole file**", "", f"{plain_bytes / 1e6:.0f}", f"{coded_bytes / 1e6:.0f}",
                 "", "", ""])
    text = "\n".join([
        f"Machine: {benchlib.machine_line()}",
        f"Audio: {len(files)} files, {hours:.2f} h "
        f"({'--source ' + args.source if args.source else 'Debian game-music packages'}), "
        "default targets", "",
        table(["target", "dtype", "MB / audio-h, float16", "MB / audio-h, codes",
               "R^2 of codes, mean over dims", "R^2, worst dim", "max error / std"], rows),
    ])
    benchlib.write_report(text, args.out)


if __name__ == "__main__":
    main()
