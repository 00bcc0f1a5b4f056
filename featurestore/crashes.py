"""When a worker process dies: find the input and the target that kill it.

A Python exception inside a target is caught per clip and becomes an error row. A crash
of native code (a segmentation fault in a JIT-compiled function, an abort in a decoder)
or the kernel's out-of-memory killer ends the whole worker process instead, and all the
executor can say is that the process is gone (Dask's ``KilledWorker`` after its retries,
``BrokenProcessPool`` for a process pool). Resuming would run the same code on the same
input and die again, so the build stops and says which file, which target and which
signal, found by running that partition again in a separate local process, one input
and one target at a time, reporting each step before taking it.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import signal
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from featurestore.extract import ExtractConfig, extract_partition
from featurestore.manifest import Piece
from featurestore.targets import Target, resolve

DECODING = "(decoding)"
"""The step name reported while a clip is only decoded, before any target."""


def is_worker_death(error: BaseException) -> bool:
    """Whether an executor's error means that the process running the task died."""
    if isinstance(error, cf.BrokenExecutor):
        return True
    return any(cls.__name__ == "KilledWorker" for cls in type(error).__mro__)


def _trace(pieces: Sequence[Piece], config: ExtractConfig,
           target_classes: Sequence[type[Target]], conn: Any) -> None:
    """Child process: run each piece, decoding alone first and then one target at a time,
    sending ``(path, step)`` before each step and ``None`` when all went through.
    ``target_classes`` are passed so that unpickling them imports (and registers) every
    target, including ones declared outside featurestore."""
    del target_classes
    for piece in pieces:
        for step in (DECODING, *config.targets):
            conn.send((piece.path, step))
            one = replace(config, targets=() if step == DECODING else (step,),
                          with_waveform=False)
            extract_partition([piece], one)
    conn.send(None)
    conn.close()


def find_crash(pieces: Sequence[Piece], config: ExtractConfig, *,
               timeout: float = 600.0) -> tuple[str, str, int] | None:
    """Rerun ``pieces`` in a fresh local process and return ``(path, step, exitcode)`` of
    the step during which it died (``step`` is a target name or :data:`DECODING`; the
    exit code is ``-signal`` when a signal killed it), or None when it ran through (or
    did not finish within ``timeout`` seconds)."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    classes = [type(t) for t in resolve(list(config.targets))]
    child = ctx.Process(target=_trace, args=(pieces, config, classes, send), daemon=True)
    child.start()
    send.close()
    last: tuple[str, str] | None = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if receive.poll(0.2):
                try:
                    message = receive.recv()
                except EOFError:  # the child is gone
                    break
                if message is None:
                    return None
                last = message
            elif not child.is_alive():
                break
        else:
            return None
        child.join(10)
        if last is None or child.exitcode in (None, 0):
            return None
        return (*last, child.exitcode)
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()


def explain_worker_death(partitions: Sequence[tuple[int, Sequence[Piece]]],
                         config: ExtractConfig) -> str:
    """The one-line explanation of worker processes that died running ``partitions``
    (``(index, pieces)`` pairs: a process pool fails every task in flight when one of its
    processes dies, so any of them may hold the culprit), after looking for the culprit
    with :func:`find_crash` in each, in turn."""
    for _, pieces in partitions:
        found = find_crash(pieces, config)
        if found is not None:
            break
    else:
        index, pieces = partitions[0]
        files = pieces[0].path + (f" ... {pieces[-1].path}" if len(pieces) > 1 else "")
        return (
            f"partition {index} ({files}): its worker process died, but the partition runs "
            "to the end in a process of its own: the worker was probably killed from outside "
            "or ran out of memory; finished shards are kept, run the same command to resume"
        )
    path, step, exitcode = found
    try:
        how = f"killed by {signal.Signals(-exitcode).name}" if exitcode < 0 else (
            f"exit status {exitcode}")
    except ValueError:
        how = f"killed by signal {-exitcode}"
    doing = "decoding it" if step == DECODING else f"computing target {step!r}"
    leave_out = ("move the file out of the source" if step == DECODING else
                 f"move the file out of the source or leave {step!r} out of --targets")
    return (
        f"{path}: the worker process died ({how}) {doing}, and dies the same way when run "
        f"alone, so running the same command again will not help: {leave_out}; finished "
        "shards are kept"
    )
