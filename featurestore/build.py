"""Building a store: partitions, an executor (Dask by default), shards, resume, assembly.

::

    manifest ──partitions──► executor tasks (extract_partition) ──► shards
             <store>.parts/part-00042.h5 (temp name, then rename) ──► Assembly ──► <store>.h5

Workers that see the output's folder (every worker of a local cluster or process pool, or
a cluster on a shared filesystem) write their shards themselves and send the client only
counts; others send the arrays, and the client writes the shards.

A fresh store of one file is assembled while the build runs: the plan fixes its layout,
and each shard goes in as soon as it and the shards before it are written
(:class:`_InOrderAssembly`). Otherwise (several files, targets added to a store, a shard
holding other clips than planned) the shards are assembled after the last partition.

A shard is complete iff its file exists under its final name and its recorded partition
hash (clip rows and their pieces, file contents, target specs, sample rate, hop) matches: an
interrupted build recomputes only the missing shards. Building a store again with more
targets computes only the new targets, partition for partition, and merges them in.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurestore.audio import MIN_SAMPLE_RATE
from featurestore.crashes import explain_worker_death, is_worker_death
from featurestore.errors import FeatureStoreError
from featurestore.extract import ExtractConfig, extract_partition, plan_pieces, stored_spec
from featurestore.lock import output_lock
from featurestore.manifest import Piece, manifest_hash
from featurestore.sources import load_manifest
from featurestore.store import (
    CODE_DTYPE,
    SCHEMA_VERSION,
    Assembly,
    PartitionResult,
    Store,
    assemble,
    format_bytes,
    format_hours,
    open_store,
    printable,
    set_id_for,
    set_problems,
    write_shard,
)
from featurestore.targets import REGISTRY, resolve


@dataclass(frozen=True)
class ShardWritten:
    """What a task that wrote its own shard sends back to the client: counts, no arrays."""

    n_clips: int
    n_samples: int
    errors: list[tuple[str, str]]


def extract_to_shard(part: Sequence[Piece], config: ExtractConfig, path: str,
                     partition_hash: str, strict: bool) -> ShardWritten:
    """Extract a partition and write its shard at ``path`` (a worker's task when the
    workers see the output's folder). Under ``strict`` a partition with an unusable input
    writes nothing: the client stops the build on its errors."""
    result = extract_partition(part, config)
    if not (strict and result.errors):
        write_shard(path, result, config.specs(), sample_rate=config.sample_rate,
                    hop=config.hop, attrs={"partition_hash": partition_hash})
    return ShardWritten(len(result.clips), sum(c.n_samples for c in result.clips),
                        result.errors)


@dataclass
class BuildReport:
    """What a build did (also printed as its summary)."""

    outputs: list[Path]
    n_clips: int
    seconds: float
    errors: list[tuple[str, str]]
    targets_added: list[str]
    partitions_total: int
    partitions_computed: int
    wall_seconds: float
    bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        hours = self.seconds / 3600
        lines = [
            f"{', '.join(map(str, self.outputs))}: {self.n_clips} clips, "
            f"{format_hours(self.seconds)} of audio, {format_bytes(self.bytes)}"
            + (f" ({format_bytes(self.bytes / hours)} per audio-hour)" if hours else ""),
            f"targets added: {', '.join(self.targets_added) or 'none (up to date)'}; "
            f"{self.partitions_computed} of {self.partitions_total} partitions computed "
            f"in {self.wall_seconds:.1f} s",
        ]
        lines += self.notes
        if self.errors:
            lines.append(f"{len(self.errors)} input(s) skipped (see 'featurestore info'):")
            lines += [printable(f"  {path}: {reason}") for path, reason in self.errors[:10]]
            if len(self.errors) > 10:
                lines.append(f"  ... and {len(self.errors) - 10} more")
        return "\n".join(lines)


def output_files(output: Path, hours_per_file: float | None) -> list[Path]:
    """The store files an output name stands for: itself, or ``<stem>-NNN.h5`` when the
    corpus is split into several files."""
    if hours_per_file is None:
        return [output] if output.exists() else []
    return sorted(output.parent.glob(f"{output.stem}-[0-9][0-9][0-9]{output.suffix}"))


WORKER_ENVIRON = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
                  "MALLOC_ARENA_MAX": "1"}
"""glibc's allocator settings of extraction workers (the nanny sets them before a worker
starts; docker/dask.yaml sets the same for clusters users start). Large numpy temporaries
(a 10-minute clip's STFT is 250 MB) come from the heap and are reused from clip to clip
instead of being mapped afresh and faulted in page by page: at most 1 GiB of freed memory
is kept for reuse, and every thread allocates from that one heap (Dask runs a task on a
thread of the worker, and glibc gives threads arenas of their own whose heaps hold at most
64 MB, so that a larger array was mapped afresh whatever ``MALLOC_MMAP_MAX_`` said). Each
setting measured (benchmarks/RESULTS.md): about 25 % less CPU per audio-hour for the first
two in one thread, and half the kernel time of a 2-worker build for the third; Dask's own
default, ``MALLOC_TRIM_THRESHOLD_=65536``, had the opposite effect: twice the CPU."""


@contextlib.contextmanager
def dask_executor(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``concurrent.futures`` executor backed by Dask.

    Parameters
    ----------
    workers : int, optional
        Size of a local cluster of single-threaded worker processes (default: all cores).
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``); its workers run the
        tasks and must be able to read the source files and import featurestore.
    """
    import dask.config
    import distributed

    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_ENVIRON}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        if scheduler is not None:
            try:
                client = distributed.Client(scheduler, timeout="30s")
            except OSError as e:
                raise FeatureStoreError(f"cannot reach Dask scheduler {scheduler}: {e}") from None
            cluster = None
        else:
            import logging

            # Ctrl-C goes to the whole process group: the worker processes inherit an
            # ignored SIGINT, so that only this process handles it (closing the cluster
            # cleanly) instead of every worker printing a KeyboardInterrupt traceback.
            with _sigint_ignored():
                # Logs of the cluster's own processes: CRITICAL only. What a user needs
                # reaches the client as a task's exception (a failing clip, a worker
                # killed by the nanny); at ERROR, a worker whose heartbeat races the
                # scheduler's shutdown on a loaded machine printed a traceback after a
                # build that had succeeded.
                cluster = distributed.LocalCluster(
                    n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                    processes=True, dashboard_address=None, silence_logs=logging.CRITICAL,
                    # No dashboard; its HTTP server (health checks) on any free local port
                    # rather than 8787, which another cluster may hold (a warning then).
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                )
            client = distributed.Client(cluster)
        try:
            yield client.get_executor(pure=False)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


@contextlib.contextmanager
def _interrupts_at_safe_points() -> Iterator[Callable[[], None]]:
    """Defer Ctrl-C (SIGINT) to the points where the build checks for it.

    Python discards an exception raised while it runs a weakref callback or ``__del__``
    ("Exception ignored in ..."), so the default handler's KeyboardInterrupt, raised at
    whatever bytecode runs when the signal lands, could be lost and the build would run to
    its end. Here the first SIGINT only records itself and the function yielded raises
    KeyboardInterrupt where it is called (the build's wait loop polls it); a second one
    raises at once. A no-op outside the main thread, where handlers cannot be changed.
    """
    import signal
    import threading

    pending = False

    def check() -> None:
        if pending:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check
        return

    def record(signum: int, frame: Any) -> None:
        nonlocal pending
        if pending:
            raise KeyboardInterrupt
        pending = True

    previous = signal.signal(signal.SIGINT, record)
    try:
        yield check
        check()  # a Ctrl-C during the last steps still ends the command as interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT in this block (processes spawned in it keep ignoring it); a no-op
    outside the main thread, where signal handlers cannot be changed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


PARTITION_SECONDS = 600.0
"""Audio one partition holds at most, in seconds (``max_seconds`` when that is longer):
with the clip count, what bounds a task's memory and the result it sends to the client,
however long the files are."""


def default_partition_size(n_pieces: int) -> int:
    """Pieces (clips, or segments of long files) per partition when none is given: at
    least 8 tasks for small corpora (so that every worker of a small cluster stays busy to
    the end), at most 16 pieces per task. A function of the plan alone, so that a rerun
    finds the same shards."""
    return max(1, min(16, math.ceil(n_pieces / 8)))


def partitions(pieces: Sequence[Piece], size: int,
               max_samples: int | None = None) -> list[list[Piece]]:
    """Consecutive groups of at most ``size`` pieces holding at most ``max_samples``
    planned samples (:attr:`Piece.samples`; a piece alone may hold more), in order.
    A function of the plan alone, so that a rerun finds the same shards."""
    parts: list[list[Piece]] = []
    current: list[Piece] = []
    samples = 0
    for piece in pieces:
        full = len(current) == size or (
            max_samples is not None and samples + piece.samples > max_samples)
        if current and full:
            parts.append(current)
            current, samples = [], 0
        current.append(piece)
        samples += piece.samples
    if current:
        parts.append(current)
    return parts


def partition_hash(part: Sequence[Piece], config: ExtractConfig) -> str:
    """Identity of a shard: its rows, their pieces, their files' content hashes
    (:func:`featurestore.audio.content_hash`, taken when the pieces were planned), and
    the config with the targets' specs (hence their parameters). A file rewritten with the
    same size and modification time changes it, and so does any target parameter."""
    pieces = [[p.segment, p.n_segments, p.last, p.samples, p.content] for p in part]
    extra = {"schema": SCHEMA_VERSION, "config": config.__dict__,
             "specs": [spec.to_dict() for spec in config.specs()], "pieces": pieces}
    return manifest_hash([p.clip for p in part], extra)


def _shard_is_complete(path: Path, expected: str) -> bool:
    import h5py

    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("partition_hash") == expected
    except OSError:
        return False


def _stored_targets(files: Sequence[Path], sample_rate: int, hop: int) -> dict[str, Store]:
    """Targets already in every file of an existing output, after checking it is
    compatible. A target in only some files (an add pass interrupted between files) counts
    as missing: adding it again leaves the files that have it as they are."""
    found: dict[str, Store] = {}
    for k, path in enumerate(files):
        store = open_store(path)
        if (store.sample_rate, store.hop) != (sample_rate, hop):
            raise FeatureStoreError(
                f"{path}: exists with sample rate {store.sample_rate} and hop {store.hop}, not "
                f"{sample_rate} and {hop}; choose another output or remove it"
            )
        if k == 0:
            found = {name: store for name in store.targets}
        else:
            found = {name: s for name, s in found.items() if name in store.targets}
    return found


def _complete_file_set(files: list[Path]) -> bool:
    """Whether ``<stem>-NNN.h5`` files are one whole corpus: each records its place
    ``[k, K]`` in one set and all K are there (a fresh build killed while writing them,
    or a file of another build, is not)."""
    import h5py

    members = []
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        except OSError:
            return False
        if "files" not in attrs:
            return False
        members.append((path, attrs))
    return not set_problems(members)


def build(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    layout: str = "auto",
    targets: str | Sequence[str] = "default",
    sample_rate: int = 16000,
    hop: int = 160,
    workers: int | None = None,
    scheduler: str | None = None,
    worker_timeout: float = 120.0,
    executor: cf.Executor | None = None,
    partition_size: int | None = None,
    max_seconds: float = 600.0,
    min_seconds: float = 0.5,
    hours_per_file: float | None = None,
    strict: bool = False,
    progress: bool = True,
    shared_filesystem: bool | None = None,
    quantize: bool | None = None,
) -> BuildReport:
    """Build (or extend, or resume) a feature store.

    Parameters
    ----------
    source : path-like
        A folder, a CSV manifest, or a data set root in a known layout.
    output : path-like
        The store file (``stores/gtzan.h5``). With ``hours_per_file`` the corpus is written
        as ``<stem>-000.h5``, ``<stem>-001.h5``, ... next to it.
    layout : str
        ``auto``, ``folder``, ``csv``, ``gtzan``, ``nsynth``, ``mtat`` or ``fma``.
    targets : str or sequence of str
        ``default``, ``all``, or target names. Targets already in the store are kept and
        not recomputed; new ones are added.
    sample_rate, hop : int
        The store's sample rate (Hz) and frame hop (samples).
    workers : int, optional
        Processes of the local Dask cluster (default: every core).
    scheduler : str, optional
        Address of an existing Dask scheduler to run on instead.
    worker_timeout : float
        Seconds the build waits while no Dask worker is connected (all lost, or a cluster
        that never gets any) before it stops with an error; finished shards are kept.
    executor : concurrent.futures.Executor, optional
        Any executor to run the partitions on (a Dask ``client.get_executor()``, a process
        pool, ...); overrides ``workers`` and ``scheduler``.
    partition_size : int, optional
        Clips per task and per shard file (default :func:`default_partition_size`).
    max_seconds, min_seconds : float
        Longer files become several clips; shorter ones are skipped as errors.
    hours_per_file : float, optional
        Split the store into files of about this many audio-hours.
    strict : bool
        Stop at the first unusable input instead of recording it.
    progress : bool
        Show a progress bar on stderr.
    shared_filesystem : bool, optional
        Whether the workers can write into the output's folder, under the same path: they
        then write their shards themselves and send the client only counts; otherwise they
        send the arrays and the client writes the shards. Default: when every worker runs
        on this machine (a local cluster, a process pool). Set it for a cluster whose
        workers mount the output's folder at the same path.
    quantize : bool, optional
        Store the frame-rate targets as 8-bit codes with a per-clip offset and scale per
        dimension instead of float16: about 45 % of the default store's bytes per
        audio-hour (benchmarks/RESULTS.md measures what it costs the targets and
        pre-training). Default: as the existing store is (a new store: float16).

    Returns
    -------
    BuildReport

    Raises
    ------
    FeatureStoreError
        Invalid options (before any work is done), another build writing the same output
        (nothing is changed), no readable clip, a worker crash (naming the file and the
        target), or a full disk (the previous store stays as it was).
    """
    output = Path(output)
    check_options(output, sample_rate=sample_rate, hop=hop, workers=workers,
                  partition_size=partition_size, max_seconds=max_seconds,
                  min_seconds=min_seconds, hours_per_file=hours_per_file,
                  worker_timeout=worker_timeout)
    requested = [t.name for t in resolve(targets)]  # unknown names fail before any write
    output.parent.mkdir(parents=True, exist_ok=True)
    with _sole_writer(output) as interrupted:
        t0 = time.perf_counter()
        clips = load_manifest(source, layout)
        existing_files = output_files(output, hours_per_file)
        notes = []
        if hours_per_file is not None and existing_files and not _complete_file_set(existing_files):
            # A fresh multi-file build stopped while writing its files: its shards are kept,
            # so writing the files again is cheap.
            notes.append(f"incomplete set of {len(existing_files)} store file(s) rewritten")
            existing_files = []
        stored = _stored_targets(existing_files, sample_rate, hop)
        if quantize is None:  # as the store already is
            quantize = any(s.specs[n].dtype == CODE_DTYPE for n, s in stored.items())
        for name, store in stored.items():
            if name not in requested:
                continue
            old, now = store.specs[name], stored_spec(REGISTRY[name], quantize)
            if old.same_values(now) and old.dtype != now.dtype:
                raise FeatureStoreError(
                    f"{store.path}: target {name!r} is stored as {old.dtype}, this build "
                    f"would store {now.dtype} ({'with' if quantize else 'without'} "
                    "--quantize); build as the store was, or rebuild it")
            if not old.same_values(now):
                raise FeatureStoreError(
                    f"{store.path}: target {name!r} was computed with other parameters (stored "
                    f"{json.dumps(old.params, sort_keys=True)}, deltas {old.deltas}, dtype "
                    f"{old.dtype}; declared now {json.dumps(now.params, sort_keys=True)}, deltas "
                    f"{now.deltas}, dtype {now.dtype}); rebuild the store to change them"
                )
        new = [n for n in requested if n not in stored]
        if existing_files and not new:
            _remove_assembled_shards(output.with_name(output.name + ".parts"), set(stored))
            report = _report(existing_files, [], 0, 0, t0)
            report.notes.append("up to date: every requested target is in the store")
            return report
        if existing_files and hours_per_file is not None:
            # The files record partition ranges: add targets with the partitions they hold.
            recorded = open_store(existing_files[0]).attrs.get("partition_size")
            if recorded is not None and int(recorded) != partition_size:
                if partition_size is not None:
                    notes.append(f"partition size {int(recorded)} of the existing files used")
                partition_size = int(recorded)
        config = ExtractConfig(
            targets=tuple(new), sample_rate=sample_rate, hop=hop, max_seconds=max_seconds,
            min_seconds=min_seconds, with_waveform=not existing_files, quantize=quantize,
        )
        pieces = plan_pieces(clips, config)  # reads every file's header and hashes its bytes
        if partition_size is None:
            partition_size = default_partition_size(len(pieces))
        parts = partitions(pieces, partition_size,
                           round(max(PARTITION_SECONDS, max_seconds) * sample_rate))
        parts_dir = output.with_name(output.name + ".parts")
        parts_dir.mkdir(parents=True, exist_ok=True)
        shard_paths = [parts_dir / f"part-{i:05d}.h5" for i in range(len(parts))]
        hashes = [partition_hash(p, config) for p in parts]
        todo = [i for i, (path, h) in enumerate(zip(shard_paths, hashes, strict=True))
                if not _shard_is_complete(path, h)]
        attrs = {"sample_rate": sample_rate, "hop": hop, "source": str(source),
                 "partition_size": partition_size}
        with contextlib.ExitStack() as stack:
            in_order = None
            planned = [p.samples for p in pieces if p.samples]
            if not existing_files and hours_per_file is None and planned:
                # A fresh store is assembled while the build runs (the plan fixes its
                # layout), with the assembly at the end as the fallback.
                in_order = stack.enter_context(_InOrderAssembly(
                    Assembly(output, n_samples=planned,
                             specs=config.specs(), hop=hop,
                             attrs={**attrs, "partitions": json.dumps([0, len(parts)])}),
                    shard_paths, done=set(range(len(parts))) - set(todo)))
            if todo and executor is None:
                executor = stack.enter_context(dask_executor(workers, scheduler))
            if todo and shared_filesystem is None:
                shared_filesystem = _workers_are_local(executor)
            _run_partitions(parts, todo, [p.resolve() for p in shard_paths], hashes, config,
                            executor, strict, progress, worker_timeout, interrupted,
                            bool(shared_filesystem), in_order)
            interrupted()  # before the store is written
            outputs = [output] if in_order is not None and in_order.finish() else None
        if outputs is None and not existing_files:
            shards = [open_store(p) for p in shard_paths]
            if not any(s.n_clips for s in shards):
                # Nothing to store: no output file (a later run would take it as up to date).
                errors = [e for s in shards for e in s.errors]
                _remove_shards(parts_dir)
                first = f"; first: {errors[0][0]}: {errors[0][1]}" if errors else ""
                raise FeatureStoreError(
                    f"{source}: no clip could be read ({len(errors)} errors{first})")
        if outputs is None:
            outputs = _assemble(output, shard_paths, existing_files, hours_per_file, attrs)
        _remove_shards(parts_dir)
        report = _report(outputs, new, len(parts), len(todo), t0)
        report.notes[:0] = notes
        return report


def check_options(
    output: Path, *, sample_rate: int, hop: int, workers: int | None,
    partition_size: int | None, max_seconds: float, min_seconds: float,
    hours_per_file: float | None, worker_timeout: float,
) -> None:
    """Refuse options that cannot work, before any file is read or written.

    Raises
    ------
    FeatureStoreError
        Naming the option, the value given and what is expected.
    """
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise FeatureStoreError(what)

    need(output.suffix == ".h5", f"{output}: the store name must end in .h5")
    need(isinstance(sample_rate, int) and sample_rate >= MIN_SAMPLE_RATE,
         f"sample rate must be an integer of at least {MIN_SAMPLE_RATE} Hz, got {sample_rate}")
    need(isinstance(hop, int) and 1 <= hop <= sample_rate,
         f"hop must be an integer from 1 to the sample rate ({sample_rate}), got {hop}")
    need(workers is None or workers >= 1, f"workers must be at least 1, got {workers}")
    need(partition_size is None or partition_size >= 1,
         f"partition size must be at least 1, got {partition_size}")
    need(math.isfinite(max_seconds) and max_seconds > 0,
         f"max seconds must be positive, got {max_seconds}")
    need(math.isfinite(min_seconds) and 0 <= min_seconds <= max_seconds,
         f"min seconds must be from 0 to max seconds ({max_seconds:g}), got {min_seconds}")
    need(max_seconds * sample_rate >= hop,
         f"max seconds ({max_seconds:g}) must hold at least one hop ({hop} samples)")
    need(hours_per_file is None or (math.isfinite(hours_per_file) and hours_per_file > 0),
         f"hours per file must be positive, got {hours_per_file}")
    need(worker_timeout > 0, f"worker timeout must be positive, got {worker_timeout}")


@contextlib.contextmanager
def _sole_writer(output: Path) -> Iterator[Callable[[], None]]:
    """Write ``output`` as its only writer: hold its lock, defer Ctrl-C to the yielded
    check (:func:`_interrupts_at_safe_points`), and remove temporary files before (a
    killed build's) and after (this one's, whether it succeeds or fails; finished shards
    are kept: they resume)."""
    with output_lock(output), _interrupts_at_safe_points() as interrupted:
        _remove_temporaries(output)
        try:
            yield interrupted
        finally:
            _remove_temporaries(output)


def _remove_temporaries(output: Path) -> None:
    """Remove the temporary files of builds of ``output`` (this one, or killed ones; the
    caller holds the output's lock, so no live writer owns them), and the shard folder
    when it holds no shard."""
    parts_dir = output.with_name(output.name + ".parts")
    patterns = (f"{output.name}.tmp-*", f"{output.stem}-[0-9][0-9][0-9]{output.suffix}.tmp-*")
    for pattern in patterns:
        for stale in output.parent.glob(pattern):
            stale.unlink(missing_ok=True)
    if parts_dir.is_dir():
        for stale in parts_dir.glob("*.tmp-*"):
            stale.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            parts_dir.rmdir()  # only when empty


def _remove_shards(parts_dir: Path) -> None:
    """Remove the shard folder once its shards are assembled, with any shard of an earlier
    attempt with another partition size."""
    for path in parts_dir.glob("part-*.h5"):
        path.unlink()
    with contextlib.suppress(OSError):
        parts_dir.rmdir()


def _remove_assembled_shards(parts_dir: Path, stored: set[str]) -> None:
    """Remove shards whose every target is already in the store (left by a build killed
    between writing the store and removing its shards); shards of an unfinished pass that
    adds other targets are kept for its resume."""
    for path in parts_dir.glob("part-*.h5"):
        try:
            redundant = set(open_store(path).specs) <= stored
        except FeatureStoreError:
            redundant = True  # unreadable: a resume would recompute it anyway
        if redundant:
            path.unlink()
    with contextlib.suppress(OSError):
        parts_dir.rmdir()


def _run_partitions(
    parts: list[list[Piece]], todo: list[int], shard_paths: list[Path], hashes: list[str],
    config: ExtractConfig, executor: cf.Executor | None, strict: bool, progress: bool,
    worker_timeout: float, interrupted: Callable[[], None], workers_write: bool,
    in_order: _InOrderAssembly | None = None,
) -> None:
    """Run the missing partitions with a bounded number in flight; each task writes its
    shard (``workers_write``), or the client writes it as the task's result arrives; each
    shard written goes to ``in_order``."""
    from tqdm import tqdm

    if not todo:
        return
    assert executor is not None
    specs = config.specs()
    todo_set = set(todo)
    done_clips = sum(len(p) for i, p in enumerate(parts) if i not in todo_set)
    bar = tqdm(total=sum(len(p) for p in parts), initial=done_clips, unit="file",
               disable=not progress, file=sys.stderr, smoothing=0.1, dynamic_ncols=True)
    window = 2 * _parallelism(executor)
    queue = list(todo)
    running: dict[cf.Future[PartitionResult | ShardWritten], int] = {}
    audio_seconds = 0.0
    n_errors = 0
    started = time.perf_counter()
    try:
        while queue or running:
            while queue and len(running) < window:
                i = queue.pop(0)
                if workers_write:
                    future = executor.submit(extract_to_shard, parts[i], config,
                                             str(shard_paths[i]), hashes[i], strict)
                else:
                    future = executor.submit(extract_partition, parts[i], config)
                running[future] = i
            finished = _wait_for_any(running, executor, worker_timeout, interrupted)
            for future in finished:
                i = running.pop(future)
                try:
                    result = future.result()
                except Exception as e:  # noqa: BLE001 - a lost worker, not one bad input
                    if is_worker_death(e):
                        died = [i] + [running[f] for f in finished if f in running
                                      and is_worker_death(f.exception())]
                        raise FeatureStoreError(explain_worker_death(
                            [(k, parts[k]) for k in died], config)) from None
                    files = parts[i][0].path + (
                        f" ... {parts[i][-1].path}" if len(parts[i]) > 1 else "")
                    raise FeatureStoreError(
                        f"partition {i} ({files}) failed: {type(e).__name__}: {e}; finished "
                        "shards are kept, run the same command to resume") from None
                if strict and result.errors:
                    path, reason = result.errors[0]
                    raise FeatureStoreError(f"{path}: {reason} (--strict)")
                if isinstance(result, PartitionResult):
                    write_shard(shard_paths[i], result, specs, sample_rate=config.sample_rate,
                                hop=config.hop, attrs={"partition_hash": hashes[i]})
                    n_samples = sum(c.n_samples for c in result.clips)
                else:
                    n_samples = result.n_samples
                if in_order is not None:
                    in_order.written(i)
                audio_seconds += n_samples / config.sample_rate
                n_errors += len(result.errors)
                speed = audio_seconds / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(f"{speed / 3600:.4f} audio-h/s ({speed:.0f}x real time), "
                                    f"{n_errors} skipped", refresh=False)
                bar.update(len(parts[i]))
    finally:
        # A Dask executor's futures are not cancelled here: distributed's bridge to
        # concurrent futures may already be setting a result, which then fails on the
        # cancelled future with a logged InvalidStateError. Closing the client (done by
        # dask_executor) releases the tasks instead; a caller's own Dask executor lets
        # them finish and their results are dropped.
        if getattr(executor, "_client", None) is None:
            for future in running:
                future.cancel()
        bar.close()


class _InOrderAssembly:
    """Adds a build's shards to an :class:`Assembly` while the build runs: each shard as
    soon as it and every shard before it are written.

    The assembly's layout is the plan's (every piece's planned sample count). A shard
    that holds other clips (an input that turned out unusable, an MP3 longer than its
    header said) ends it: the unfinished file is removed, and the build assembles the
    store from its shards at the end, as it does a store of several files. A context
    manager: leaving it removes the file unless :meth:`finish` renamed it.
    """

    def __init__(self, assembly: Assembly, shard_paths: Sequence[Path], done: set[int]) -> None:
        self.assembly: Assembly | None = assembly
        self.shard_paths = shard_paths
        self.done = set(done)
        self.next = 0

    def written(self, i: int) -> None:
        """Shard ``i`` is written: add it, and the written shards after it, if it is next."""
        self.done.add(i)
        self._add_ready()

    def _add_ready(self) -> None:
        while self.assembly is not None and self.next in self.done:
            if not self.assembly.add(open_store(self.shard_paths[self.next])):
                self.assembly.discard()
                self.assembly = None
            self.next += 1

    def finish(self) -> bool:
        """Add the shards still waiting (a resumed build's) and write the store; False
        when the shards did not hold the clips planned."""
        self._add_ready()
        if self.assembly is None or not self.assembly.complete:
            return False
        self.assembly.finish()
        return True

    def __enter__(self) -> _InOrderAssembly:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.assembly is not None:
            self.assembly.discard()


def _wait_for_any(running: dict[cf.Future[Any], int], executor: cf.Executor,
                  worker_timeout: float, interrupted: Callable[[], None]
                  ) -> set[cf.Future[Any]]:
    """Wait until a task finishes, checking for Ctrl-C twice a second; stop with an error
    once a Dask executor has had no worker connected for ``worker_timeout`` seconds (Dask
    would wait for one forever)."""
    client = getattr(executor, "_client", None)
    every = min(5.0, worker_timeout / 4)  # seconds between asking the scheduler
    asked = time.monotonic()
    alone_since: float | None = None
    while True:
        interrupted()
        finished, _ = cf.wait(running, timeout=0.5, return_when=cf.FIRST_COMPLETED)
        if finished:
            return finished
        now = time.monotonic()
        if client is None or now - asked < every:
            continue
        asked = now
        try:
            n_workers = len(client.nthreads())
        except Exception:  # noqa: BLE001 - the scheduler itself is gone: as good as none
            n_workers = 0
        if n_workers:
            alone_since = None
        elif alone_since is None:
            alone_since = now
        elif now - alone_since >= worker_timeout:
            raise FeatureStoreError(
                f"no Dask worker has been connected to the scheduler for {worker_timeout:g} s "
                "(all lost?); finished shards are kept: start workers and run the same "
                "command to resume (--worker-timeout sets this wait)")


def _workers_are_local(executor: cf.Executor) -> bool:
    """Whether every worker of the executor runs on this machine (a process or thread pool
    does; a Dask cluster when each worker's address is a local one)."""
    import socket
    from urllib.parse import urlparse

    client = getattr(executor, "_client", None)
    if client is None:
        return True
    addresses = list(client.scheduler_info(n_workers=-1)["workers"])
    local = {"localhost", "127.0.0.1", "::1", socket.gethostname()}
    with contextlib.suppress(OSError):
        local |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    parsed = [urlparse(a) for a in addresses]
    return bool(parsed) and all(u.scheme == "inproc" or u.hostname in local for u in parsed)


def _parallelism(executor: cf.Executor) -> int:
    """How many tasks the executor runs at once (Dask: its workers' threads)."""
    client = getattr(executor, "_client", None)
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return max(1, getattr(executor, "_max_workers", 0) or os.cpu_count() or 1)


def _assemble(output: Path, shard_paths: list[Path], existing: list[Path],
              hours_per_file: float | None, attrs: dict[str, Any]) -> list[Path]:
    """Write the final file(s): one store, or several of about ``hours_per_file`` each.
    Each file records the partition range it holds, so that a later pass adding targets
    merges the same partitions into the same file."""
    if hours_per_file is None:
        assemble(output, shard_paths, base=existing[0] if existing else None,
                 attrs={**attrs, "partitions": json.dumps([0, len(shard_paths)])})
        return [output]
    if existing:
        outputs = []
        for path in existing:
            old = open_store(path).attrs
            first, stop = json.loads(str(old["partitions"]))
            assemble(path, shard_paths[first:stop], base=path,
                     attrs={**attrs, "partitions": old["partitions"], "files": old["files"]})
            outputs.append(path)
        return outputs
    groups: list[tuple[int, int]] = []
    first, seconds = 0, 0.0
    rows: list[list[str]] = []  # what the set holds: its identity, whatever the targets
    for i, path in enumerate(shard_paths):
        shard = open_store(path)
        seconds += shard.seconds
        rows += [[*row] for row in zip(shard.clips["id"], shard.clips["sha1"], strict=True)]
        if seconds >= hours_per_file * 3600 or i == len(shard_paths) - 1:
            if seconds == 0 and groups:  # a tail of unreadable inputs: no empty file
                groups[-1] = (groups[-1][0], i + 1)
            else:
                groups.append((first, i + 1))
            first, seconds = i + 1, 0.0
    set_id = set_id_for({"clips": rows, "files": groups})
    outputs = []
    for k, (first, stop) in enumerate(groups):
        path = output.with_name(f"{output.stem}-{k:03d}{output.suffix}")
        assemble(path, shard_paths[first:stop],
                 attrs={**attrs, "partitions": json.dumps([first, stop]),
                        "files": json.dumps([k, len(groups)]), "set_id": set_id})
        outputs.append(path)
    # Files of an earlier, larger split of this output would be taken for part of it.
    for stale in output_files(output, hours_per_file):
        if stale not in outputs:
            stale.unlink()
    return outputs


def _report(outputs: list[Path], added: list[str], total: int, computed: int,
            t0: float) -> BuildReport:
    stores = [open_store(p) for p in outputs]
    return BuildReport(
        outputs=list(outputs), n_clips=sum(s.n_clips for s in stores),
        seconds=sum(s.seconds for s in stores), errors=[e for s in stores for e in s.errors],
        targets_added=added, partitions_total=total, partitions_computed=computed,
        wall_seconds=time.perf_counter() - t0, bytes=sum(p.stat().st_size for p in outputs),
    )
