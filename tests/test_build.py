"""Building: resume after real kills, a real multi-process Dask cluster (also losing a
worker mid-build), adding targets to a store, splitting a corpus into several files."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    KILL_CLIPS,
    KILL_TARGETS,
    MAIN_TARGETS,
    Corpus,
    DaskCluster,
    assert_same_store,
    group_gone,
    kill_group,
    tone,
    write_wav,
)

from featurestore import FeatureStoreError, build, open_store, open_stores, verify
from featurestore.store import Assembly, combined_stats
from featurestore.targets import REGISTRY


@pytest.fixture(scope="module")
def local_slow_store(slow_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The slow corpus built in one go on a local Dask cluster (the reference)."""
    out = tmp_path_factory.mktemp("local") / "slow.h5"
    report = build(str(slow_corpus), out, targets=KILL_TARGETS, workers=2, partition_size=1,
                   progress=False)
    assert (report.partitions_total, report.partitions_computed) == (KILL_CLIPS, KILL_CLIPS)
    assert report.n_clips == KILL_CLIPS and report.errors == []
    assert verify(out) == []
    return out


def wait_for_first_shard(parts_dir: Path, still_running: Any, timeout: float = 180.0) -> None:
    """Poll until a finished shard (final name) exists in ``parts_dir``."""
    deadline = time.monotonic() + timeout
    while not any(parts_dir.glob("part-*.h5")):
        assert still_running(), "the build ended before its first shard was seen"
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.01)


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_resume_after_a_real_kill(sig: int, slow_corpus: Path, local_slow_store: Path,
                                  tmp_path: Path) -> None:
    out = tmp_path / "slow.h5"
    parts_dir = tmp_path / "slow.h5.parts"
    cmd = ["featurestore", "build", str(slow_corpus), "-o", str(out), "--targets",
           KILL_TARGETS, "--processes", "1", "--partition-size", "1", "--quiet"]
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_first_shard(parts_dir, lambda: proc.poll() is None)
            os.killpg(proc.pid, sig)  # the CLI, its Dask nanny and worker processes
            rc = proc.wait(timeout=60)
            assert group_gone(proc, 30), "a process of the build outlived the kill"
        finally:
            kill_group(proc)
    first_output = log_path.read_text(errors="replace")
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        assert rc == 130, first_output
        assert "interrupted: finished shards are kept" in first_output
        assert "Traceback" not in first_output
    assert not out.exists()
    kept = sorted(parts_dir.glob("part-*.h5"))
    assert 1 <= len(kept) < KILL_CLIPS

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stdout + second.stderr
    m = re.search(r"(\d+) of (\d+) partitions computed", second.stdout)
    assert m is not None, second.stdout
    assert int(m[2]) == KILL_CLIPS
    assert int(m[1]) == KILL_CLIPS - len(kept)  # only the missing partitions
    assert not parts_dir.exists()
    assert_same_store(out, local_slow_store)


# --------------------------------------------------------------------------- cluster


def test_real_cluster_equals_local_build(dask_cluster: DaskCluster, slow_corpus: Path,
                                         local_slow_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "slow.h5"
    report = build(str(slow_corpus), out, targets=KILL_TARGETS,
                   scheduler=dask_cluster.address, partition_size=1, progress=False)
    assert (report.partitions_total, report.partitions_computed) == (KILL_CLIPS, KILL_CLIPS)
    assert_same_store(out, local_slow_store)


@pytest.mark.parametrize(("shared", "client_writes"), [(None, 0), (True, 0), (False, KILL_CLIPS)],
                         ids=["auto", "workers-write", "client-writes"])
def test_workers_on_this_machine_write_their_own_shards(
        shared: bool | None, client_writes: int, dask_cluster: DaskCluster, slow_corpus: Path,
        local_slow_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("featurestore.build")
    written: list[str] = []
    real_write = module.write_shard

    def client_write(path: Any, *args: Any, **kwargs: Any) -> None:
        written.append(str(path))
        real_write(path, *args, **kwargs)

    monkeypatch.setattr(module, "write_shard", client_write)  # the client's, not the workers'
    out = tmp_path / "slow.h5"
    report = build(str(slow_corpus), out, targets=KILL_TARGETS, scheduler=dask_cluster.address,
                   partition_size=1, progress=False, shared_filesystem=shared)
    assert report.partitions_computed == KILL_CLIPS
    assert len(written) == client_writes
    assert_same_store(out, local_slow_store)


def test_workers_are_local_for_pools_and_a_cluster_on_this_machine(
        dask_cluster: DaskCluster) -> None:
    import distributed

    module = importlib.import_module("featurestore.build")
    with ThreadPoolExecutor(1) as pool:
        assert module._workers_are_local(pool)
    with distributed.Client(dask_cluster.address) as client:
        assert module._workers_are_local(client.get_executor())


def test_local_workers_get_the_allocator_settings() -> None:
    module = importlib.import_module("featurestore.build")
    with module.dask_executor(workers=1) as executor:
        seen = executor._client.run(lambda: {k: os.environ.get(k)
                                             for k in module.WORKER_ENVIRON})
    assert list(seen.values()) == [module.WORKER_ENVIRON]


def _faults_of_reused_arrays() -> tuple[int, int]:
    """Page faults of a first 250 MB array (a 10-minute clip's STFT), and of ten more
    allocated and freed after it."""
    import resource

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    start = faults()
    np.ones(250 << 17)
    first = faults() - start
    start = faults()
    for _ in range(10):
        np.ones(250 << 17)
    return first, faults() - start


def test_a_task_reuses_its_workers_heap() -> None:
    """Dask runs a task on a thread of the worker. With WORKER_ENVIRON, that thread's large
    temporaries come from the worker's one heap and are reused: ten more arrays of a
    clip's size, allocated and freed, fault in fewer pages than the first one did (glibc's
    own arena for a thread maps each of them afresh: ten times as many)."""
    module = importlib.import_module("featurestore.build")
    with module.dask_executor(workers=1) as executor:
        first, again = executor.submit(_faults_of_reused_arrays).result()
    assert first > 0 and again < first


def test_build_survives_losing_a_worker(slow_corpus: Path, local_slow_store: Path,
                                        tmp_path: Path) -> None:
    cluster = DaskCluster(tmp_path / "dask", n_workers=2)
    out = tmp_path / "slow.h5"
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(build, str(slow_corpus), out, targets=KILL_TARGETS,
                                 scheduler=cluster.address, partition_size=1, progress=False)
            wait_for_first_shard(tmp_path / "slow.h5.parts", lambda: not future.done())
            victim = cluster.workers[0]
            kill_group(victim)  # SIGKILL to the worker and its nanny
            report = future.result(timeout=300)
        assert victim.returncode == -signal.SIGKILL
        assert cluster.workers[1].poll() is None
    finally:
        cluster.stop()
    assert (report.partitions_total, report.partitions_computed) == (KILL_CLIPS, KILL_CLIPS)
    assert_same_store(out, local_slow_store)


# --------------------------------------------------------------------------- assembly


class _RecordedAssembly(Assembly):
    """An Assembly that records what each :meth:`add` returned."""

    results: list[bool] = []

    def add(self, shard: Any) -> bool:
        ok = super().add(shard)
        self.results.append(ok)
        return ok


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    results: list[bool] = []
    monkeypatch.setattr(_RecordedAssembly, "results", results)
    monkeypatch.setattr(importlib.import_module("featurestore.build"), "Assembly",
                        _RecordedAssembly)
    return results


def test_a_fresh_store_is_assembled_while_partitions_run(
        tmp_path: Path, recorded: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each shard goes into the store as soon as the shards before it are in: when the
    last of four partitions starts on a one-thread pool (two tasks in flight), at least
    two shards are in the store's temporary file already."""
    module = importlib.import_module("featurestore.build")
    root = tmp_path / "audio"
    for k in range(4):
        write_wav(root / f"{k}.wav", tone(220.0 * (k + 1), 1.0))
    out = tmp_path / "s.h5"
    seen: list[tuple[int, list[str]]] = []
    real = module.extract_to_shard

    def extract(part: Any, *args: Any) -> Any:
        seen.append((len(recorded), [p.name for p in tmp_path.glob("s.h5.tmp-*")]))
        return real(part, *args)

    monkeypatch.setattr(module, "extract_to_shard", extract)
    with ThreadPoolExecutor(1) as pool:
        report = build(str(root), out, targets="onset,chroma", executor=pool,
                       partition_size=1, progress=False)
    assert report.n_clips == 4 and report.errors == []
    assert recorded == [True] * 4
    assert [names for _, names in seen] == [[f"s.h5.tmp-{os.getpid()}"]] * 4
    assert seen[-1][0] >= 2
    assert verify(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "s.h5"]


@pytest.mark.parametrize(("seconds", "results"), [
    ((1.0, 1.5, 2.0), [True, True, False]),  # the last shard's clip is not the one planned
    ((1.0, 1.0, 1.0), [True, True, True]),  # it is as long: one clip short at the end
], ids=["seen-at-the-next-shard", "seen-at-the-end"])
def test_shards_unlike_the_plan_are_assembled_at_the_end(
        seconds: tuple[float, ...], results: list[bool], tmp_path: Path,
        recorded: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    """A file rewritten after the build planned it is refused by its piece, so that the
    shards hold one clip fewer than planned: the store being written while the build runs
    is dropped, and the store is assembled from the shards at the end."""
    module = importlib.import_module("featurestore.build")
    root = tmp_path / "audio"
    for k, length in enumerate(seconds):
        write_wav(root / f"{k}.wav", tone(220.0 * (k + 1), length))
    real_plan = module.plan_pieces

    def plan_then_rewrite(*args: Any) -> Any:
        pieces = real_plan(*args)
        write_wav(root / "1.wav", tone(990.0, seconds[1]))
        return pieces

    monkeypatch.setattr(module, "plan_pieces", plan_then_rewrite)
    out = tmp_path / "s.h5"
    with ThreadPoolExecutor(1) as pool:
        report = build(str(root), out, targets="onset", executor=pool, partition_size=1,
                       progress=False)
    assert recorded == results
    store = open_store(out)
    assert store.clips["id"].tolist() == ["0", "2"]
    assert store.errors == [(str(root / "1.wav"), "changed while the build ran (its content "
                             "differs from when the build was planned); run the build again")]
    assert report.errors == store.errors
    assert verify(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "s.h5"]


# --------------------------------------------------------------------------- add targets


def test_adding_targets_computes_only_the_new_ones(corpus: Corpus, dask_cluster: DaskCluster,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    kw: dict[str, Any] = {"scheduler": dask_cluster.address, "partition_size": 3,
                          "progress": False}
    out = tmp_path / "grow.h5"
    first = build(str(corpus.csv), out, targets="mfcc", **kw)
    assert first.targets_added == ["mfcc"]
    old = open_store(out)
    old_mfcc = np.array(old.targets["mfcc"])

    second = build(str(corpus.csv), out, targets="mfcc,chroma", **kw)
    assert second.targets_added == ["chroma"]
    assert (second.partitions_total, second.partitions_computed) == (3, 3)
    assert "targets added: chroma; 3 of 3 partitions computed" in second.summary()
    assert sorted(open_store(out).targets) == ["chroma", "mfcc"]
    # A reader holding the old file keeps valid maps after the atomic replacement.
    assert np.array_equal(old.targets["mfcc"], old_mfcc)
    assert not (tmp_path / "grow.h5.parts").exists()

    fresh = tmp_path / "fresh.h5"
    build(str(corpus.csv), fresh, targets="mfcc,chroma", **kw)
    assert_same_store(out, fresh)
    assert verify(out) == []

    third = build(str(corpus.csv), out, targets="chroma,mfcc", **kw)
    assert third.targets_added == [] and third.partitions_computed == 0
    assert "up to date: every requested target is in the store" in third.notes
    assert "targets added: none (up to date)" in third.summary()

    mfcc = REGISTRY["mfcc"]
    monkeypatch.setattr(mfcc, "params", dataclasses.replace(mfcc.params, n_mfcc=13))
    with pytest.raises(FeatureStoreError) as err:
        build(str(corpus.csv), out, targets="mfcc,onset", **kw)
    message = str(err.value)
    assert "target 'mfcc' was computed with other parameters" in message
    assert '"n_mfcc": 20' in message and '"n_mfcc": 13' in message
    assert "rebuild the store" in message and "\n" not in message
    assert_same_store(out, fresh)  # untouched


# --------------------------------------------------------------------------- several files


def test_hours_per_file_splits_the_corpus(corpus: Corpus, dask_cluster: DaskCluster,
                                          built_store: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"scheduler": dask_cluster.address, "progress": False}
    stem = tmp_path / "split.h5"
    # Partitions of 2 clips hold 2.2 to 3.6 s: with 2 s per file, one file per partition.
    report = build(str(corpus.csv), stem, targets=MAIN_TARGETS, partition_size=2,
                   hours_per_file=2.0 / 3600, **kw)
    files = [tmp_path / f"split-{k:03d}.h5" for k in range(4)]
    assert report.outputs == files
    assert sorted(tmp_path.glob("*.h5")) == files  # no split.h5 itself
    stores = open_stores(str(tmp_path / "split-*.h5"))
    assert [s.path for s in stores] == files
    assert [s.n_clips for s in stores] == [2, 2, 2, 2]
    single = open_store(built_store)
    assert report.n_clips == single.n_clips
    assert np.isclose(report.seconds, single.seconds)
    for col in ("id", "label", "split", "group", "n_samples", "n_frames", "sha1"):
        assert np.concatenate([s.clips[col] for s in stores]).tolist() == \
            single.clips[col].tolist()
    assert all(s.clips["sample_offset"][0] == 0 for s in stores)
    assert np.array_equal(np.concatenate([s.waveform for s in stores]), single.waveform)
    for name in MAIN_TARGETS.split(","):
        assert np.array_equal(np.concatenate([s.targets[name] for s in stores]),
                              single.targets[name])
        c = combined_stats(stores, name)
        assert c.count == single.stats[name].count
        np.testing.assert_allclose(c.mean, single.stats[name].mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(c.std, single.stats[name].std, rtol=1e-12, atol=1e-12)
    assert all(verify(f) == [] for f in files)

    # Adding a target goes file by file over the same partitions, whatever the new
    # partition size.
    added = build(str(corpus.csv), stem, targets=MAIN_TARGETS + ",contrast", partition_size=3,
                  hours_per_file=2.0 / 3600, **kw)
    assert added.targets_added == ["contrast"]
    assert added.outputs == files
    assert "partition size 2 of the existing files used" in added.notes
    stores = open_stores(files)
    assert all("contrast" in s.targets and verify(s.path) == [] for s in stores)
    assert [s.n_clips for s in stores] == [2, 2, 2, 2]

    # A set missing a file (a build stopped while writing them) is written again whole.
    saved = tmp_path / "saved"
    saved.mkdir()
    for f in files:
        shutil.copyfile(f, saved / f.name)
    files[2].unlink()
    again = build(str(corpus.csv), stem, targets=MAIN_TARGETS + ",contrast", partition_size=2,
                  hours_per_file=2.0 / 3600, **kw)
    assert "incomplete set of 3 store file(s) rewritten" in again.notes
    assert again.outputs == files
    for f in files:
        assert_same_store(f, saved / f.name)


def test_no_readable_clip_writes_no_store(tmp_path: Path, dask_cluster: DaskCluster) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    (root / "a.wav").write_bytes(b"junk" * 100)
    write_wav(root / "b.wav", np.zeros(100, dtype=np.float32))  # too short
    out = tmp_path / "none.h5"
    with pytest.raises(FeatureStoreError, match="no clip could be read \\(2 errors; first: "):
        build(str(root), out, targets="mfcc", scheduler=dask_cluster.address, progress=False)
    assert not out.exists()
    assert not (tmp_path / "none.h5.parts").exists()


def test_build_argument_errors(corpus: Corpus, tmp_path: Path) -> None:
    with pytest.raises(FeatureStoreError, match=r"must end in \.h5"):
        build(str(corpus.csv), tmp_path / "x.hdf", targets="mfcc")
    with pytest.raises(FeatureStoreError, match="partition size must be at least 1"):
        build(str(corpus.csv), tmp_path / "x.h5", targets="mfcc", partition_size=0)
    with pytest.raises(FeatureStoreError, match="hours per file must be positive"):
        build(str(corpus.csv), tmp_path / "x.h5", targets="mfcc", hours_per_file=0)
    with pytest.raises(FeatureStoreError, match="unknown target 'nope'"):
        build(str(corpus.csv), tmp_path / "x.h5", targets="mfcc,nope")
    assert not list(tmp_path.iterdir())


def test_leftovers_of_a_killed_build_are_cleaned(corpus: Corpus, dask_cluster: DaskCluster,
                                                 built_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "main.h5"
    parts_dir = tmp_path / "main.h5.parts"
    parts_dir.mkdir()
    (tmp_path / "main.h5.tmp-4242").write_bytes(b"half an assembled store")
    (parts_dir / "part-00001.h5.tmp-4242").write_bytes(b"half a shard")
    (parts_dir / "part-00000.h5").write_bytes(b"not a shard")  # unreadable: recomputed
    (parts_dir / "part-00042.h5").write_bytes(b"from a run with smaller partitions")
    report = build(str(corpus.csv), out, targets=MAIN_TARGETS, scheduler=dask_cluster.address,
                   partition_size=3, progress=False)
    assert report.partitions_computed == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.h5"]
    assert_same_store(out, built_store)


# --------------------------------------------------------------------------- identity


def test_partition_hash_follows_the_target_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    from featurestore.build import partition_hash
    from featurestore.extract import ExtractConfig
    from featurestore.manifest import Clip, Piece

    part = [Piece(Clip("a", "/x/a.wav"), samples=16000, content="c0")]
    config = ExtractConfig(targets=("mfcc", "chroma"))
    before = partition_hash(part, config)
    chroma = REGISTRY["chroma"]
    assert partition_hash(part, ExtractConfig(targets=("mfcc", "chroma"))) == before
    monkeypatch.setattr(chroma, "params", dataclasses.replace(chroma.params))  # equal values
    assert partition_hash(part, config) == before
    monkeypatch.setattr(chroma, "params", dataclasses.replace(chroma.params, n_fft=2048))
    assert partition_hash(part, config) != before
    monkeypatch.undo()
    assert partition_hash(part, config) == before


def test_build_option_processes_and_its_deprecated_alias(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import importlib

    from click.testing import CliRunner

    from featurestore.cli import main

    seen: list[int | None] = []

    class Report:
        def summary(self) -> str:
            return "built"

    def fake_build(*args: Any, workers: int | None = None, **kwargs: Any) -> Report:
        seen.append(workers)
        return Report()

    monkeypatch.setattr(importlib.import_module("featurestore.build"), "build", fake_build)
    runner = CliRunner()
    new = runner.invoke(main, ["build", "src", "-o", "out.h5", "--processes", "3"])
    assert (new.exit_code, new.stdout, new.stderr) == (0, "built\n", "")
    old = runner.invoke(main, ["build", "src", "-o", "out.h5", "--workers", "2"])
    assert (old.exit_code, old.stdout) == (0, "built\n")
    assert old.stderr == ("warning: --workers is deprecated; use --processes (Dask worker "
                          "processes)\n")
    assert seen == [3, 2]
    both = runner.invoke(main, ["build", "src", "-o", "o.h5", "--processes", "3", "--workers", "2"])
    assert both.exit_code == 2 and seen == [3, 2]
    shown = runner.invoke(main, ["build", "-h"]).output
    assert "--processes" in shown and "--workers" not in shown
    text = " ".join(shown.split())  # the help wraps lines
    assert "[default: (all cores); x>=1]" in text
    assert ("'default', 'all' or comma-separated names: " + ", ".join(REGISTRY)) in text
