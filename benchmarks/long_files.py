"""Peak memory of a build against the length of its files, before and after pieces; and
what hashing the corpus costs a resumed build.

One long file per build (generated: noise, a slow chord and a pitch sweep): 1, 10, 20 and
60 minutes at 16 kHz mono, and 20 minutes at 44.1 kHz stereo. Each build runs in a fresh
process on a fresh local Dask cluster of one single-threaded worker (``dask_executor``),
with the default targets; after it, the peak resident set size (``ru_maxrss``, the
kernel's VmHWM) of the worker process and of the client process (which also runs the
scheduler) is read. The same builds run with the featurestore of another git revision
(``--before REV``: its ``featurestore/`` extracted with ``git archive`` into
``.benchmarks/``, put first on the ``PYTHONPATH`` of the build and of its workers).

Then the cost of planning a build (every file's header read and its bytes hashed: what a
resumed build repeats to recognise finished shards) on the same corpus plus 300 files of
30 s: file page cache warm, and cold (``posix_fadvise(DONTNEED)`` on each file first),
against ``os.stat`` alone (the old identity) and SHA-1.

    python benchmarks/long_files.py --before HEAD              # default targets, 600 s
    python benchmarks/long_files.py --max-seconds 60 --skip-before --skip-plan
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib  # first: pins numeric libraries to one thread
from benchlib import table

FOLDER = benchlib.CACHE / "long_files"
FILES = [  # name, minutes, sample rate, channels
    ("1 min, 16 kHz mono", 1, 16000, 1),
    ("10 min, 16 kHz mono", 10, 16000, 1),
    ("20 min, 16 kHz mono", 20, 16000, 1),
    ("60 min, 16 kHz mono", 60, 16000, 1),
    ("20 min, 44.1 kHz stereo", 20, 44100, 2),
]
SMALL_FILES = 300


def make_file(minutes: float, rate: int, channels: int) -> Path:
    """A 16-bit WAV of ``minutes``, written 10 s at a time (cached in ``.benchmarks/``)."""
    import numpy as np
    import soundfile as sf

    path = FOLDER / f"{minutes:g}min-{rate}-{channels}ch" / "long.wav"
    n = round(minutes * 60 * rate)
    if path.exists() and sf.info(path).frames == n:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(minutes * 1000 + rate + channels)
    block = 10 * rate
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16") as f:
        for start in range(0, n, block):
            t = np.arange(start, min(n, start + block)) / rate
            sweep = 0.2 * np.sin(2 * np.pi * (110 + 20 * (t % 30)) * t)
            chord = sum(0.1 * np.sin(2 * np.pi * f0 * t) for f0 in (220.0, 277.2, 329.6))
            y = sweep + chord + rng.uniform(-0.05, 0.05, len(t))
            f.write(np.stack([y] * channels, axis=1).astype(np.float32))
    return path


def small_files() -> Path:
    """``SMALL_FILES`` files of 30 s at 16 kHz (a corpus of many ordinary clips)."""
    import numpy as np
    import soundfile as sf

    folder = FOLDER / "small"
    if len(list(folder.glob("*.wav"))) == SMALL_FILES:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(SMALL_FILES):
        sf.write(folder / f"{k:04d}.wav", rng.uniform(-0.3, 0.3, 30 * 16000), 16000,
                 subtype="PCM_16")
    return folder


def revision_code(rev: str) -> Path:
    """The ``featurestore`` package of git revision ``rev``, extracted (not checked out:
    the working tree and the index are left alone) under ``.benchmarks/``."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=benchlib.REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = benchlib.CACHE / f"code-{sha}"
    if not (dest / "featurestore" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "featurestore"], cwd=benchlib.REPO,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


# --- child: one build in a fresh process, printing one JSON line ---

def _peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_build(folder: str, max_seconds: float, targets: str) -> dict[str, Any]:
    import featurestore
    from featurestore.build import build, dask_executor

    module = sys.modules["featurestore.build"]  # (featurestore.build is the function)
    out: dict[str, Any] = {"code": str(Path(featurestore.__file__).parent)}
    assemble = module._assemble

    def peak_then_assemble(*args: Any, **kwargs: Any) -> Any:
        # The client's peak while extracting (results, shard writes), before assembly
        # maps every shard (file-backed pages count in the resident set too).
        out["client_extract_kb"] = _peak_kb()
        return assemble(*args, **kwargs)

    module._assemble = peak_then_assemble
    with dask_executor(workers=1) as executor, tempfile.TemporaryDirectory() as tmp:
        client = executor._client
        out["client_idle_kb"] = _peak_kb()
        out["worker_idle_kb"] = max(client.run(_peak_kb).values())
        t0 = time.perf_counter()
        report = build(folder, Path(tmp) / "s.h5", targets=targets, executor=executor,
                       max_seconds=max_seconds, progress=False)
        out["wall"] = time.perf_counter() - t0
        out["worker_kb"] = max(client.run(_peak_kb).values())
        out["clips"] = report.n_clips
        out["partitions"] = report.partitions_total
        out["seconds"] = report.seconds
        out["errors"] = report.errors
    out["client_kb"] = _peak_kb()
    return out


def run_child(code: Path | None, folder: Path, max_seconds: float,
              targets: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    if code is not None:
        env["PYTHONPATH"] = str(code) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--child",
           json.dumps([str(folder), max_seconds, targets])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- planning cost: headers and hashes, as a resumed build repeats them ---

def _drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plan_costs(paths: list[Path]) -> list[list[Any]]:
    """Seconds to stat, probe, hash (xxh3-128, SHA-1) and plan ``paths``, warm and cold."""
    from featurestore.audio import content_hash, probe, sha1_file
    from featurestore.extract import ExtractConfig, plan_pieces
    from featurestore.manifest import Clip

    config = ExtractConfig(targets=())
    clips = [Clip(str(k), str(p)) for k, p in enumerate(paths)]
    size = sum(p.stat().st_size for p in paths)
    steps = {
        "`os.stat` (the old identity: size, mtime)": lambda: [os.stat(p) for p in paths],
        "`probe` (headers; end check)": lambda: [probe(p) for p in paths],
        "`content_hash` (xxh3-128)": lambda: [content_hash(p) for p in paths],
        "`sha1_file` (SHA-1)": lambda: [sha1_file(p) for p in paths],
        "`plan_pieces` (probe + xxh3-128: what a build does)": lambda: plan_pieces(clips,
                                                                                   config),
    }
    rows = []
    for name, step in steps.items():
        step()  # warm the cache
        t0 = time.perf_counter()
        step()
        warm = time.perf_counter() - t0
        _drop_cache(paths)
        t0 = time.perf_counter()
        step()
        cold = time.perf_counter() - t0
        rows.append([name, f"{warm:.3f}", f"{size / 1e6 / warm:,.0f}" if warm else "",
                     f"{cold:.3f}", f"{size / 1e6 / cold:,.0f}" if cold else ""])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=None,
                        help="git revision whose featurestore is measured as 'before'")
    parser.add_argument("--skip-before", action="store_true")
    parser.add_argument("--after", type=Path, default=None,
                        help="a folder holding the featurestore package to measure as 'after' "
                             "(default: the working tree)")
    parser.add_argument("--skip-plan", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--targets", default="default")
    parser.add_argument("--minutes", type=float, nargs="*", default=None,
                        help="only the files of these lengths")
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "long_files.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_build(*json.loads(args.child))))
        return

    files = [f for f in FILES if args.minutes is None or f[1] in args.minutes]
    paths = {name: make_file(m, r, c) for name, m, r, c in files}
    codes: list[tuple[str, Path | None]] = []
    if args.before and not args.skip_before:
        codes.append((f"before ({args.before})", revision_code(args.before)))
    codes.append((f"after ({args.after or 'working tree'})", args.after))
    rows = []
    build_seconds = 0.0
    for name, path in paths.items():
        size = path.stat().st_size
        for label, code in codes:
            print(f"{name}: {label} ...", file=sys.stderr, flush=True)
            r = run_child(code, path.parent, args.max_seconds, args.targets)
            if code is args.after:
                build_seconds += r["wall"]
            rows.append([name, f"{size / 1e6:.0f}", label, r["clips"], r["partitions"],
                         f"{r['worker_kb'] / 1e6:.2f}", f"{r['client_extract_kb'] / 1e6:.2f}",
                         f"{r['client_kb'] / 1e6:.2f}",
                         f"{r['worker_idle_kb'] / 1e6:.2f} / {r['client_idle_kb'] / 1e6:.2f}",
                         f"{r['wall']:.0f}", len(r["errors"])])
    lines = [
        "# Long files: peak memory of a build (`long_files.py`)\n",
        f"{benchlib.machine_line()}\n",
        f"Command: `python benchmarks/long_files.py {' '.join(argv or sys.argv[1:])}`; "
        f"targets `{args.targets}`, max_seconds {args.max_seconds:g}; one file per build, "
        "a fresh local Dask cluster of 1 single-threaded worker each time.\n",
        table(["file", "MB", "code", "clips", "partitions", "worker peak GB",
               "client peak before assembly GB", "client peak GB", "idle worker / client GB",
               "wall s", "errors"], rows),
    ]
    if not args.skip_plan:
        corpus = list(paths.values()) + sorted(small_files().glob("*.wav"))
        size = sum(p.stat().st_size for p in corpus)
        lines += [
            f"\n## Planning a build: headers and content hashes of {len(corpus)} files, "
            f"{size / 1e9:.2f} GB\n",
            table(["step", "warm s", "warm MB/s", "cold s", "cold MB/s"], plan_costs(corpus)),
            f"\nThe long files' builds above (after) took {build_seconds:.0f} s of wall time "
            "in all.",
        ]
    benchlib.write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
