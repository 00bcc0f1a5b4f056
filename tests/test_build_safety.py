"""A build that cannot hurt a store: one writer per output, options checked before any
work, a worker that dies named with its file and target, lost clusters and leftovers."""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import json
import multiprocessing
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    KILL_TARGETS,
    MAIN_TARGETS,
    Corpus,
    DaskCluster,
    assert_same_store,
    kill_group,
    tone,
    write_wav,
)

from featurestore import FeatureStoreError, build, open_store, verify
from featurestore.lock import holder, lock_path, output_lock

# --------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_and_changes_nothing(slow_corpus: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "slow.h5"
    cmd = ["featurestore", "build", str(slow_corpus), "-o", str(out), "--targets",
           KILL_TARGETS, "--processes", "1", "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while holder(out) is None:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first build never took its lock"
            time.sleep(0.01)
        second = subprocess.run([*cmd[:6], "mfcc,chroma", *cmd[7:]], capture_output=True,
                                text=True, timeout=120)
        assert first.poll() is None, "the first build ended before the second one was tried"
        assert second.returncode == 1
        assert second.stdout == ""
        assert second.stderr == (
            f"error: {out}: another build is writing it (pid {first.pid} on "
            f"{socket.gethostname()}, since {holder(out)['since']}); wait for it to finish "
            "or stop it — nothing was changed\n")
        stdout, stderr = first.communicate(timeout=300)
    finally:
        kill_group(first)
    assert first.returncode == 0, stderr
    assert "targets added: mfcc, pyin" in stdout.decode()
    assert sorted(open_store(out).targets) == ["mfcc", "pyin"]
    assert verify(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow.h5"]  # lock and shards gone


def _hold_lock_then_wait(output: str, ready: multiprocessing.synchronize.Event) -> None:
    with output_lock(output):
        ready.set()
        time.sleep(600)


@pytest.mark.parametrize("death", [signal.SIGKILL, signal.SIGTERM])
def test_a_lock_left_by_a_killed_process_is_taken_over(death: int, corpus: Corpus,
                                                       built_store: Path, dask_cluster: DaskCluster,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "main.h5"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder_process = ctx.Process(target=_hold_lock_then_wait, args=(str(out), ready))
    holder_process.start()
    assert ready.wait(60)
    with pytest.raises(FeatureStoreError, match=f"pid {holder_process.pid} on "):
        build(str(corpus.csv), out, targets=MAIN_TARGETS, scheduler=dask_cluster.address,
              partition_size=3, progress=False)
    os.kill(holder_process.pid, death)
    holder_process.join(30)
    assert lock_path(out).exists()  # the dead holder's record stays behind ...
    assert holder(out)["pid"] == holder_process.pid
    build(str(corpus.csv), out, targets=MAIN_TARGETS, scheduler=dask_cluster.address,
          partition_size=3, progress=False)  # ... and is taken over
    assert_same_store(out, built_store)
    assert not lock_path(out).exists()


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(("option", "value", "message"), [
    ("sample_rate", 0, "sample rate must be an integer of at least 1000 Hz, got 0"),
    ("sample_rate", -16000, "sample rate must be an integer of at least 1000 Hz, got -16000"),
    ("hop", 0, r"hop must be an integer from 1 to the sample rate \(16000\), got 0"),
    ("hop", 16001, r"hop must be an integer from 1 to the sample rate \(16000\), got 16001"),
    ("workers", 0, "workers must be at least 1, got 0"),
    ("max_seconds", 0.0, "max seconds must be positive, got 0.0"),
    ("max_seconds", float("nan"), "max seconds must be positive, got nan"),
    ("min_seconds", -1.0, r"min seconds must be from 0 to max seconds \(600\), got -1.0"),
    ("min_seconds", 700.0, r"min seconds must be from 0 to max seconds \(600\), got 700.0"),
    ("worker_timeout", 0.0, "worker timeout must be positive, got 0.0"),
    ("targets", "mfcc,nope", "unknown target 'nope'"),
])
def test_options_are_checked_before_any_work(option: str, value: object, message: str,
                                             corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "new" / "x.h5"
    started = time.perf_counter()
    with pytest.raises(FeatureStoreError, match=message):
        build(str(corpus.csv), out, **{option: value})  # type: ignore[arg-type]
    assert time.perf_counter() - started < 5  # no cluster was started
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--sample-rate", "0"], "Invalid value for '--sample-rate': 0 is not in the range x>=1000."),
    (["--hop", "0"], "Invalid value for '--hop': 0 is not in the range x>=1."),
    (["--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1."),
    (["--max-seconds", "0"], "Invalid value for '--max-seconds': 0.0 is not in the range x>0."),
    (["--worker-timeout", "-1"],
     "Invalid value for '--worker-timeout': -1.0 is not in the range x>0."),
])
def test_cli_options_are_checked_before_any_work(args: list[str], message: str, corpus: Corpus,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "new" / "x.h5"
    run = subprocess.run(["featurestore", "build", str(corpus.csv), "-o", str(out), *args],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().endswith(message)
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "new").exists()


def test_info_into_a_closed_pipe_is_quiet(built_store: Path) -> None:
    run = subprocess.run(f"featurestore info '{built_store}' | head -n 1", shell=True,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    assert run.stdout.startswith(str(built_store))
    assert run.stderr == ""


# --------------------------------------------------------------------------- workers


@pytest.fixture
def crash_target() -> Iterator[str]:
    """The ``crash`` target of tests/crashing_target.py, registered for one test."""
    from featurestore.targets import REGISTRY

    module = importlib.import_module("crashing_target")
    module.ensure_registered()
    yield "crash"
    REGISTRY.pop("crash", None)


def test_a_worker_killed_by_a_signal_names_the_file_and_the_target(
        crash_target: str, tmp_path: Path) -> None:
    source = tmp_path / "audio"
    for k in range(3):
        write_wav(source / f"quiet{k}.wav", tone(220.0 * (k + 1), 1.0, amp=0.5))
    loud = write_wav(source / "loud.wav", tone(440.0, 1.0, amp=0.95))
    out = tmp_path / "crash.h5"
    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=importlib.import_module,
                                  initargs=("crashing_target",))
    with pool, pytest.raises(FeatureStoreError) as error:
        build(str(source), out, targets=f"mfcc,{crash_target}", executor=pool,
              partition_size=2, progress=False)
    assert str(error.value) == (
        f"{loud}: the worker process died (killed by SIGSEGV) computing target 'crash', and "
        "dies the same way when run alone, so running the same command again will not help: "
        "move the file out of the source or leave 'crash' out of --targets; finished shards "
        "are kept")
    assert not out.exists()
    assert not list(tmp_path.glob("**/*.tmp-*"))
    assert not lock_path(out).exists()


def test_a_build_whose_workers_are_all_gone_stops(slow_corpus: Path,
                                                  tmp_path: Path) -> None:
    cluster = DaskCluster(tmp_path / "cluster", n_workers=1)
    try:
        out = tmp_path / "slow.h5"
        with cf.ThreadPoolExecutor(1) as thread:
            running = thread.submit(build, str(slow_corpus), out, targets=KILL_TARGETS,
                                    scheduler=cluster.address, partition_size=1,
                                    worker_timeout=3.0, progress=False)
            deadline = time.monotonic() + 120
            while not list((tmp_path / "slow.h5.parts").glob("part-*.h5")):
                assert not running.done(), running.exception()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            lost_at = time.monotonic()
            for worker in cluster.workers:
                kill_group(worker)
            with pytest.raises(FeatureStoreError) as error:
                running.result(timeout=60)
            waited = time.monotonic() - lost_at
    finally:
        cluster.stop()
    assert str(error.value) == (
        "no Dask worker has been connected to the scheduler for 3 s (all lost?); finished "
        "shards are kept: start workers and run the same command to resume (--worker-timeout "
        "sets this wait)")
    assert 3.0 <= waited < 30.0
    assert list((tmp_path / "slow.h5.parts").glob("part-*.h5"))  # kept for the resume
    assert not lock_path(out).exists()


def test_ctrl_c_inside_a_weakref_callback_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default handler raises KeyboardInterrupt wherever the signal lands; inside a
    weakref callback Python discards it and the build ran to its end (rc 0 after Ctrl-C).
    The build's handler records it, and its wait loop raises it."""
    interrupts = importlib.import_module("featurestore.build")._interrupts_at_safe_points

    class Thing:
        pass

    def collect_while_interrupted() -> None:
        thing = Thing()
        # raise_signal delivers to this thread; os.kill may land on another thread of the
        # process (a Dask or tqdm thread of an earlier test), and then later, not inside
        weakref.finalize(thing, signal.raise_signal, signal.SIGINT)
        del thing  # the callback runs, and the signal lands, inside the collection

    discarded: list[type[BaseException]] = []
    earlier = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own
    try:
        with monkeypatch.context() as patch:
            patch.setattr(sys, "unraisablehook", lambda u: discarded.append(u.exc_type))
            collect_while_interrupted()  # with Python's own handler ...
    finally:
        signal.signal(signal.SIGINT, earlier)
    assert discarded == [KeyboardInterrupt]  # ... the interrupt is discarded: lost
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt), interrupts() as interrupted:
        collect_while_interrupted()
        interrupted()  # the next check point
    with pytest.raises(KeyboardInterrupt), interrupts():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # a second Ctrl-C stops at once
        time.sleep(5)
        pytest.fail("the second Ctrl-C did not interrupt")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------- leftovers


def test_shards_left_by_a_kill_after_the_rename_are_removed(
        corpus: Corpus, dask_cluster: DaskCluster, built_store: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "main.h5"
    with monkeypatch.context() as patch:  # the build dies right after renaming the store
        patch.setattr(importlib.import_module("featurestore.build"), "_remove_shards",
                      lambda parts_dir: None)
        build(str(corpus.csv), out, targets=MAIN_TARGETS, scheduler=dask_cluster.address,
              partition_size=3, progress=False)
    assert list((tmp_path / "main.h5.parts").glob("part-*.h5"))
    report = build(str(corpus.csv), out, targets=MAIN_TARGETS,
                   scheduler=dask_cluster.address, partition_size=3, progress=False)
    assert report.notes == ["up to date: every requested target is in the store"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.h5"]
    assert_same_store(out, built_store)


def test_a_failed_build_leaves_no_temporary_files(corpus: Corpus, dask_cluster: DaskCluster,
                                                  tmp_path: Path) -> None:
    source = tmp_path / "src"
    write_wav(source / "a.wav", tone(440.0, 1.0))
    (source / "b.wav").write_bytes(b"RIFF junk")
    out = tmp_path / "out" / "s.h5"
    with pytest.raises(FeatureStoreError, match=r"b\.wav: cannot decode"):
        build(str(source), out, targets="mfcc", scheduler=dask_cluster.address, strict=True,
              partition_size=1, progress=False)
    left = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert not [name for name in left if ".tmp-" in name or name.endswith(".lock")]


def test_adding_a_target_keeps_the_store_file_mode(corpus: Corpus, dask_cluster: DaskCluster,
                                                   built_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "main.h5"
    out.write_bytes(built_store.read_bytes())
    out.chmod(0o600)
    report = build(str(corpus.csv), out, targets=f"{MAIN_TARGETS},contrast",
                   scheduler=dask_cluster.address, partition_size=3, progress=False)
    assert report.targets_added == ["contrast"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_the_lock_records_its_holder(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    with output_lock(out) as path:
        record = json.loads(path.read_text())
        assert (record["pid"], record["host"]) == (os.getpid(), socket.gethostname())
        assert record["command"] == " ".join(sys.argv)
        with pytest.raises(FeatureStoreError, match=f"pid {os.getpid()} on "):
            with output_lock(out):
                pass  # a second writer in the same process is refused too
    assert not path.exists()
