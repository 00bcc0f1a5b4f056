"""One writer per output: an exclusive, self-releasing lock next to the store.

A build (and every pass that adds targets or assembles files) holds
``<output>.lock`` for its whole run. The lock is an ``fcntl.flock`` on that file, so the
kernel drops it the moment its holder dies, however it dies (SIGKILL included): a lock
left by a killed process is simply taken over by the next build, and nothing has to
guess whether a recorded pid is still alive. The file also records its holder (pid,
host, start time, command line) so that a second writer can be told who is busy.

On a shared filesystem ``flock`` works where the filesystem supports it (local disks,
NFSv4, Lustre with ``flock`` mounts); two builds on different hosts writing one output
over a filesystem without it are not detected.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from featurestore.errors import FeatureStoreError


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The lock file of an output: ``stores/x.h5`` -> ``stores/x.h5.lock`` (one lock for
    a corpus written as ``x-000.h5``, ``x-001.h5``, ... too)."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


def holder(output: str | os.PathLike[str]) -> dict[str, object] | None:
    """Who holds the lock of ``output`` (pid, host, since, command), or None when the
    lock file does not exist or records nobody readable."""
    try:
        return json.loads(lock_path(output).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive write lock of ``output`` for the ``with`` block.

    Parameters
    ----------
    output : path-like
        The store file that is about to be written (its folder must exist).

    Yields
    ------
    Path
        The lock file.

    Raises
    ------
    FeatureStoreError
        Another live process holds the lock; the message names it (pid, host, since).
    """
    path = lock_path(output)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = holder(output) or {}
            raise FeatureStoreError(
                f"{output}: another build is writing it (pid {who.get('pid', '?')} on "
                f"{who.get('host', '?')}, since {who.get('since', '?')}); wait for it to "
                f"finish or stop it — nothing was changed"
            ) from None
        # The holder before us may have removed the file between our open and our flock:
        # then we hold a lock on an unlinked inode, and must lock the new file instead.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        record = {
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        yield path
    finally:
        # Unlink while still holding the lock (see the inode check above), then release.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
