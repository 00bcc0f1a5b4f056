"""Build speed-up: a plain sequential loop vs ``featurestore.build`` on a local Dask
cluster, the cluster's start-up cost, and the effect of Dask's MALLOC_TRIM_THRESHOLD_.

The same 30 s clips (16 kHz WAV files cut from the game-music packages, so decoding is
cheap and equal for every run) get the default targets:

- loop: ``extract_partition`` over all clips in one fresh process (the first clip pays
  numba's JIT, as each Dask worker's first clip does); then a second, warm pass.
- build, inline: ``featurestore.build(executor=<runs each task at once>)`` in one process:
  the loop plus the build's own work (hashing, shard files, assembly).
- build, Dask: ``featurestore.build(..., workers=N)`` in a fresh process: cluster start,
  worker imports and JIT, the work, shards, assembly; once with the default partition
  size (16 clips) and once with smaller partitions.
- warm cluster: the same build on an already started, warmed-up cluster (``executor=``),
  which isolates the start-up cost.
- MALLOC_TRIM_THRESHOLD_: CPU per clip measured inside the Dask workers, with the nanny's
  default environment (65536) and with featurestore's (unset), and in a plain process with
  and without the variable.

    python benchmarks/build_speedup.py                 # 24 clips, 2 workers
    python benchmarks/build_speedup.py --clips 24 --workers 2 --repeat 3

Wall times are the minimum over ``--repeat`` runs (the machine may be shared; the
minimum is the least disturbed run); CPU per clip is the median over clips.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib  # first: pins numeric libraries to one thread
from benchlib import SAMPLE_RATE, median, table

CLIP_DIR = benchlib.CACHE / "build_clips"
QUIET_WAIT = 0.0  # seconds to wait for other processes to go quiet before each run


class InlineExecutor(cf.Executor):
    """Runs each task at once in the calling thread (a sequential build)."""

    _max_workers = 1

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(e)
        return future


def timed_clip(clip: Any, config: Any) -> tuple[float, float]:
    """Extract one clip; return (CPU seconds, wall seconds) spent in this process."""
    from featurestore.extract import extract_partition

    c0, w0 = time.process_time(), time.perf_counter()
    result = extract_partition([clip], config)
    if result.errors:
        raise RuntimeError(result.errors)
    return time.process_time() - c0, time.perf_counter() - w0


def write_clips(n: int, files: list[str] | None) -> Path:
    """The benchmark's input: ``n`` 30 s clips as 16 kHz float WAV files."""
    import soundfile as sf

    clips, paths = benchlib.load_clips(n, files)
    folder = CLIP_DIR / f"{n}"
    if folder.exists() and len(list(folder.glob("*.wav"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for k, (y, path) in enumerate(zip(clips, paths, strict=True)):
        sf.write(folder / f"{k:02d}-{Path(path).stem}.wav", y, SAMPLE_RATE, subtype="FLOAT")
    return folder


def config_for(targets: str = "default") -> Any:
    from featurestore.extract import ExtractConfig
    from featurestore.targets import resolve

    return ExtractConfig(targets=tuple(t.name for t in resolve(targets)))


# --- children: each measurement runs in a fresh process and prints one JSON line ---

def child_loop(folder: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    from featurestore.build import build
    from featurestore.extract import extract_partition
    from featurestore.sources import load_manifest

    clips = load_manifest(folder, "folder")
    config = config_for()
    imports = time.perf_counter() - t0
    t1 = time.perf_counter()
    extract_partition(clips, config)
    cold = time.perf_counter() - t1
    c1 = time.process_time()
    per_clip = [timed_clip(c, config) for c in clips]
    warm = sum(w for _, w in per_clip)
    warm_cpu = time.process_time() - c1
    with tempfile.TemporaryDirectory() as tmp:
        t2 = time.perf_counter()
        build(folder, Path(tmp) / "s.h5", executor=InlineExecutor(), progress=False)
        inline = time.perf_counter() - t2
    return {"imports": imports, "cold": cold, "warm": warm, "warm_cpu": warm_cpu,
            "inline_build": inline,
            "cpu_per_clip": [c for c, _ in per_clip]}


def child_build(folder: str, workers: int, partition_size: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    from featurestore.build import build

    imports = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        build(folder, Path(tmp) / "s.h5", workers=workers, partition_size=partition_size,
              progress=False)
        wall = time.perf_counter() - t1
    return {"imports": imports, "wall": wall}


def _warm_worker() -> float:
    t0 = time.perf_counter()
    import featurestore.extract
    import featurestore.targets  # noqa: F401
    return time.perf_counter() - t0


def child_cluster(folder: str, workers: int, partition_sizes: list[int],
                  dask_default_env: bool) -> dict[str, Any]:
    """Start-up costs, builds on the warm cluster, and CPU per clip inside the workers."""
    import dask.config
    import distributed

    from featurestore.build import build, dask_executor
    from featurestore.sources import load_manifest

    clips = load_manifest(folder, "folder")
    config = config_for()
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    if dask_default_env:
        import logging

        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
        executor = client.get_executor(pure=False)
        ctx = None
    else:
        ctx = dask_executor(workers)
        executor = ctx.__enter__()
        client = executor._client
    out["cluster_start"] = time.perf_counter() - t0
    env = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset"))
    out["worker_malloc_env"] = sorted(set(env.values()))
    out["pre_spawn_environ"] = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    t1 = time.perf_counter()
    client.run(_warm_worker)
    out["worker_imports"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    # One clip per worker pays the JIT (sent to each worker explicitly).
    addrs = list(client.scheduler_info()["workers"])
    futs = [client.submit(timed_clip, clips[k % len(clips)], config, workers=[a], pure=False)
            for k, a in enumerate(addrs)]
    out["first_clip_cpu"] = [f.result()[0] for f in futs]
    out["warmup"] = time.perf_counter() - t2
    # CPU per clip inside the workers (all clips, spread over the workers).
    futs = [client.submit(timed_clip, c, config, pure=False) for c in clips]
    res = [f.result() for f in futs]
    out["worker_cpu_per_clip"] = [c for c, _ in res]
    out["worker_wall_per_clip"] = [w for _, w in res]
    # Builds on the warm cluster.
    for p in partition_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            w0 = client.run(time.process_time)
            c0, t3 = time.process_time(), time.perf_counter()
            build(folder, Path(tmp) / "s.h5", executor=executor, partition_size=p,
                  progress=False)
            wall = time.perf_counter() - t3
            w1 = client.run(time.process_time)
            out[f"warm_build_p{p}"] = wall
            out[f"warm_build_p{p}_worker_cpu"] = sum(w1[a] - w0[a] for a in w0)
            out[f"warm_build_p{p}_worker_cpu_max"] = max(w1[a] - w0[a] for a in w0)
            out[f"warm_build_p{p}_client_cpu"] = time.process_time() - c0
    t4 = time.perf_counter()
    if ctx is not None:
        ctx.__exit__(None, None, None)
    else:
        client.close()
        cluster.close()
    out["close"] = time.perf_counter() - t4
    return out


def child_malloc_loop(folder: str) -> dict[str, Any]:
    from featurestore.sources import load_manifest

    clips = load_manifest(folder, "folder")
    config = config_for()
    timed_clip(clips[0], config)
    return {"cpu_per_clip": [timed_clip(c, config)[0] for c in clips],
            "env": os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset")}


CHILDREN = {"loop": child_loop, "build": child_build, "cluster": child_cluster,
            "malloc_loop": child_malloc_loop}


def run_child(mode: str, *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a measurement in a fresh process; add how busy the machine was meanwhile:
    ``own_cores`` (the child and its descendants' CPU per wall second) and
    ``other_cores`` (everything else's)."""
    load = benchlib.wait_until_quiet(QUIET_WAIT)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, t0 = benchlib.busy_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, json.dumps(args)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        sys.exit(f"child {mode} failed:\n{proc.stderr[-4000:]}")
    wall = time.perf_counter() - t0
    busy = benchlib.busy_cpu_seconds() - busy0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load_before"] = load
    out["own_cores"] = own / wall
    out["other_cores"] = max(0.0, busy - own) / wall
    print(f"  {mode} {args[1:]}: " + ", ".join(
        f"{k}={v:.2f}" for k, v in out.items() if isinstance(v, float)), file=sys.stderr,
        flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_clip_args(parser, 24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each wall-time figure")
    parser.add_argument("--small-partition", type=int, default=2,
                        help="the smaller partition size tried besides the default 16")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="before each run, wait up to this many seconds for the machine's "
                             "other processes to drop below 0.3 busy cores")
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "build_speedup.md")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, payload = args.child
        print(json.dumps(CHILDREN[mode](*json.loads(payload))))
        return

    global QUIET_WAIT
    QUIET_WAIT = args.quiet_wait
    folder = str(write_clips(args.clips, args.files))
    n, w, ps = args.clips, args.workers, [16, args.small_partition]
    env_unset = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    os.environ.clear()
    os.environ.update(env_unset)
    print(f"{n} clips in {folder}; {w} workers; {args.repeat} repeats", file=sys.stderr)
    loops, builds, clusters = [], {p: [] for p in ps}, []
    for _ in range(args.repeat):
        loops.append(run_child("loop", folder))
        for p in ps:
            builds[p].append(run_child("build", folder, w, p))
        clusters.append(run_child("cluster", folder, w, ps, False))
    dask_default = run_child("cluster", folder, w, ps, True)
    malloc_plain = {
        "unset": run_child("malloc_loop", folder),
        "65536": run_child("malloc_loop", folder, env={"MALLOC_TRIM_THRESHOLD_": "65536"}),
    }

    def best(runs: list[dict[str, Any]], key: str) -> float:
        return min(r[key] for r in runs)

    def best_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
        return min(runs, key=lambda r: r[key])

    audio = n * 30.0
    lc, lw = best_run(loops, "cold"), best_run(loops, "warm")
    li = best_run(loops, "inline_build")
    loop_cold, loop_warm, inline = lc["cold"], lw["warm"], li["inline_build"]
    header = ["run", "processes", "wall s", "speed-up", "x real time (wall)",
              "other processes' load (cores)"]
    rows = [
        ["plain loop, `extract_partition`, 1 process (first clip pays JIT)", 1,
         f"{loop_cold:.2f}", "1.00x", f"{audio / loop_cold:.0f}x", f"{lc['other_cores']:.2f}"],
        ["plain loop, second (warm) pass", 1, f"{loop_warm:.2f}", "(warm baseline)",
         f"{audio / loop_warm:.0f}x", f"{lw['other_cores']:.2f}"],
        ["`build(executor=inline)` after the loop, 1 process, partition 16", 1,
         f"{inline:.2f}", f"{loop_warm / inline:.2f}x vs warm loop", f"{audio / inline:.0f}x",
         f"{li['other_cores']:.2f}"],
    ]
    for p in ps:
        r = best_run(builds[p], "wall")
        rows.append([f"`build(workers={w}, partition_size={p})`, cold: cluster start and JIT "
                     "included", w, f"{r['wall']:.2f}", f"{loop_cold / r['wall']:.2f}x",
                     f"{audio / r['wall']:.0f}x", f"{r['other_cores']:.2f}"])
    share_rows = []
    for p in ps:
        key = f"warm_build_p{p}"
        r = best_run(clusters, key)
        rows.append([f"`build(executor=<warm Dask cluster>, partition_size={p})`", w,
                     f"{r[key]:.2f}", f"{loop_warm / r[key]:.2f}x vs warm loop",
                     f"{audio / r[key]:.0f}x", f"{r['other_cores']:.2f}"])
        # On an idle machine the build takes as long as its busiest worker, or as the
        # whole CPU work (workers + client) spread over the cores, whichever is longer.
        projected = max(r[key + "_worker_cpu_max"],
                        (r[key + "_worker_cpu"] + r[key + "_client_cpu"]) / w)
        share_rows.append([f"partition_size={p}", f"{r[key + '_worker_cpu'] / r[key]:.2f}",
                           f"{r[key + '_client_cpu'] / r[key]:.2f}",
                           f"{r[key + '_worker_cpu'] / n * 1000:.0f}",
                           f"{r[key + '_worker_cpu_max']:.2f}", f"{projected:.2f}",
                           f"{lw['warm_cpu'] / projected:.2f}x"])
    c = best_run(clusters, "cluster_start")
    startup_rows = [
        ["`LocalCluster` + `Client` start (2 worker processes up)",
         f"{best(clusters, 'cluster_start'):.2f}"],
        ["first task's imports in the workers (featurestore, targets)",
         f"{best(clusters, 'worker_imports'):.2f}"],
        ["first clip per worker (librosa/essentia imports, numba JIT), wall",
         f"{best(clusters, 'warmup'):.2f}"],
        ["cluster close", f"{best(clusters, 'close'):.2f}"],
        ["cold build minus warm build (partition_size=2): the whole start-up",
         f"{best_run(builds[ps[-1]], 'wall')['wall'] - best(clusters, f'warm_build_p{ps[-1]}'):.2f}"],  # noqa: E501
    ]
    loop_cpu = median(loops[0]["cpu_per_clip"]) * 1000
    worker_cpu = median(c["worker_cpu_per_clip"]) * 1000
    malloc_rows = [
        ["plain process, MALLOC_TRIM_THRESHOLD_ unset",
         f"{median(malloc_plain['unset']['cpu_per_clip']) * 1000:.0f}", "1.00x"],
        ["plain process, MALLOC_TRIM_THRESHOLD_=65536",
         f"{median(malloc_plain['65536']['cpu_per_clip']) * 1000:.0f}",
         f"{median(malloc_plain['65536']['cpu_per_clip']) / median(malloc_plain['unset']['cpu_per_clip']):.2f}x"],  # noqa: E501
        [f"Dask worker, featurestore's environment (worker sees "
         f"{'/'.join(c['worker_malloc_env'])})", f"{worker_cpu:.0f}",
         f"{worker_cpu / (median(malloc_plain['unset']['cpu_per_clip']) * 1000):.2f}x"],
        [f"Dask worker, Dask's default environment (worker sees "
         f"{'/'.join(dask_default['worker_malloc_env'])})",
         f"{median(dask_default['worker_cpu_per_clip']) * 1000:.0f}",
         f"{median(dask_default['worker_cpu_per_clip']) * 1000 / (median(malloc_plain['unset']['cpu_per_clip']) * 1000):.2f}x"],  # noqa: E501
    ]
    dd_rows = [[f"Dask default environment, warm build, partition_size={p}",
                f"{dask_default[f'warm_build_p{p}']:.1f}"] for p in ps]
    loads = [r["load_before"] for r in [*loops, *clusters, *builds[ps[0]], *builds[ps[-1]]]]
    text = "\n".join([
        "# build_speedup", "", benchlib.machine_line(), "",
        f"{n} clips of 30 s (16 kHz float WAV), default targets, {w} single-threaded workers; "
        f"wall = best of {args.repeat}. Busy cores before the runs (after waiting up to "
        f"{args.quiet_wait:.0f} s for quiet): {min(loads):.2f}-{max(loads):.2f}.", "",
        table(header, rows), "",
        "Other processes' load: busy core-seconds of the whole machine (/proc/stat) minus "
        "the run's own (its process tree's rusage), per wall second, over the run's process.",
        "",
        "Warm-cluster builds from CPU accounting: cores kept busy (CPU seconds per wall "
        "second), and the wall time and speed-up they imply on an idle machine: the larger "
        "of the busiest worker's CPU and all CPU (workers + client) over the cores, against "
        f"the warm loop's CPU ({lw['warm_cpu']:.2f} s).", "",
        table(["warm build", "workers' cores", "client + scheduler cores",
               "worker CPU ms per clip", "busiest worker CPU s", "projected wall s",
               "projected speed-up"], share_rows), "",
        f"Imports in the client process: {best(loops, 'imports'):.2f} s (loop), "
        f"{best(builds[ps[0]], 'imports'):.2f} s (build).", "",
        "## Dask start-up", "", table(["step", "wall s"], startup_rows), "",
        "First clip's CPU in each worker (JIT): "
        + ", ".join(f"{x:.2f} s" for x in c["first_clip_cpu"])
        + f"; CPU per warm clip: loop {loop_cpu:.0f} ms, worker {worker_cpu:.0f} ms.", "",
        "## MALLOC_TRIM_THRESHOLD_ (CPU ms per clip, median)", "",
        table(["where", "CPU ms per clip", "vs plain unset"], malloc_rows), "",
        table(["run", "wall s"], dd_rows), "",
    ])
    benchlib.write_report(text, args.out)
    print(f"(written to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
