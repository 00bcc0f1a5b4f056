"""numba's on-disk cache shared by concurrent processes (featurestore.jitcache).

Two races (see featurestore/jitcache.py): processes that save different signatures of one
``cache=True`` function at once can leave its index naming another signature's machine
code; processes that compile the same gufunc at once can leave one's kernel next to the
other's loop wrapper. The next process that loads such an entry computes garbage or
segfaults (the ``librosa.pyin`` -> ``localmin`` crash of a fresh ``make test``). Every test
here works on its own empty ``NUMBA_CACHE_DIR`` and runs the compiling and loading
processes as subprocesses, so a crash is a return code.

The tests that show the unfixed numba failing run only with
``FEATURESTORE_TEST_UNFIXED=1`` (they assert a bug of numba 0.57-0.68, not ours).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from featurestore import jitcache

TYPES = ["float64", "int64", "float32", "int32", "complex128", "int16", "uint8", "int8"]
ROUNDS = 16  # functions raced for, one barrier each
RACERS = 4   # processes (more than 2 cores: preemption widens the race window)

unfixed_only = pytest.mark.skipif(
    os.environ.get("FEATURESTORE_TEST_UNFIXED") != "1",
    reason="shows numba's unfixed race; set FEATURESTORE_TEST_UNFIXED=1 to run",
)

# A module of cache=True functions: f<k> an njit function, g<k> a gufunc kernel (built by
# gufunc(k, types) with the signatures a process asks for, as librosa's guvectorize does).
MODULE = f"""import numba

TYPES = {TYPES!r}


def gufunc(k, types):
    sigs = [f"void({{t}}[:], {{t}}[:])" for t in types]
    return numba.guvectorize(sigs, "(n)->(n)", cache=True)(globals()[f"g{{k}}"])
""" + "".join(f"""

@numba.njit(cache=True)
def f{k}(x):
    return x * {k + 2} + 1


def g{k}(x, out):
    for i in range(x.shape[0]):
        out[i] = x[i] * {k + 2} + 1
""" for k in range(ROUNDS))

RACER = """
import sys, time
from pathlib import Path
root, p, n, fixed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
rounds, same = int(sys.argv[5]), sys.argv[6] == "1"
if fixed:
    import featurestore.jitcache
sys.path.insert(0, str(root))
import numba, numpy as np
import racemod
if same:  # one signature for all, but kernels numbered differently in each process
    t = racemod.TYPES[0]
    for _ in range(p):
        numba.njit(lambda x: x + 1)(1.0)
else:
    t = racemod.TYPES[p]
for k in range(rounds):
    (root / f"barrier-{k}-{p}").touch()
    deadline = time.monotonic() + 120
    while len(list(root.glob(f"barrier-{k}-*"))) < n:
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.0005)
    getattr(racemod, f"f{k}")(getattr(np, t)(3))
    racemod.gufunc(k, [t])
"""

CHECKER = """
import json, sys
from pathlib import Path
root, n, fixed = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if fixed:
    import featurestore.jitcache as jitcache
sys.path.insert(0, str(root))
import numba, numpy as np
import racemod
bad, hits = [], 0
for k in range(int(sys.argv[4])):
    f = getattr(racemod, f"f{k}")
    try:
        g = racemod.gufunc(k, racemod.TYPES[:n])
    except Exception as e:
        bad.append(f"g{k}: {type(e).__name__}: {e}")
        g = None
    for t in racemod.TYPES[:n]:
        x = getattr(np, t)(3)
        if f(x) != x * (k + 2) + 1 or (numba.typeof(x),) not in f.signatures:
            bad.append(f"f{k}[{t}]: {f(x)!r}, signatures {f.signatures}")
        xs = np.arange(5).astype(t)
        try:
            out = g(xs) if g is not None else None
        except Exception as e:
            bad.append(f"g{k}[{t}]: {type(e).__name__}: {e}")
            continue
        if out is not None and (out.dtype != xs.dtype or not np.array_equal(out, xs * (k + 2) + 1)):
            bad.append(f"g{k}[{t}]: {out!r}")
    hits += sum(f.stats.cache_hits.values())
rejected = jitcache.rejected_count() if fixed else None
print(json.dumps({"bad": bad, "hits": hits, "rejected": rejected}))
"""


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != jitcache.ENV}
    env["NUMBA_CACHE_DIR"] = str(cache)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _setup(root: Path) -> Path:
    (root / "racemod.py").write_text(MODULE)
    (root / "racer.py").write_text(RACER)
    (root / "checker.py").write_text(CHECKER)
    return root / "cache"


def _check(root: Path, n: int, fixed: bool, rounds: int = ROUNDS) -> tuple[int, dict[str, Any]]:
    """Run the checker in a fresh process: (return code, its report or {})."""
    proc = subprocess.run(
        [sys.executable, str(root / "checker.py"), str(root), str(n), "1" if fixed else "0",
         str(rounds)], env=_env(root / "cache"), capture_output=True, text=True, timeout=300,
    )
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if proc.returncode == 0 and lines else {})


def race(root: Path, *, fixed: bool, same: bool = False, racers: int = RACERS,
         rounds: int = ROUNDS) -> tuple[list[int], list[str]]:
    """Racers compile every function in lockstep (a barrier per function) on one empty
    cache, each its own signature (or, with ``same``, all the same one).

    Returns
    -------
    tuple
        (racer return codes, :func:`featurestore.jitcache.scan` of the cache they left).
    """
    _setup(root)
    procs = [
        subprocess.Popen(
            [sys.executable, str(root / "racer.py"), str(root), str(p), str(racers),
             "1" if fixed else "0", str(rounds), "1" if same else "0"],
            env=_env(root / "cache"))
        for p in range(racers)
    ]
    rcs = [p.wait(timeout=300) for p in procs]
    return rcs, scan(root)


@contextlib.contextmanager
def _importable(root: Path) -> Iterator[None]:
    """``racemod`` of ``root`` importable here (the cache's entries unpickle only then)."""
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("racemod", None)


def scan(root: Path) -> list[str]:
    """:func:`featurestore.jitcache.scan` of ``root/cache``."""
    with _importable(root):
        return jitcache.scan([root / "cache"])


# --------------------------------------------------------------------------- the race


def test_concurrent_compiles_of_different_signatures_leave_a_consistent_cache(
    tmp_path: Path,
) -> None:
    rcs, bad = race(tmp_path, fixed=True)
    assert rcs == [0] * RACERS
    assert bad == []
    rc, report = _check(tmp_path, RACERS, fixed=True)
    assert rc == 0, "the process loading the cache crashed"
    assert report["bad"] == []
    assert report["hits"] == ROUNDS * RACERS  # no racer's entry was lost
    assert report["rejected"] == 0
    assert list((tmp_path / "cache").rglob(jitcache.LOCK_NAME))


def test_concurrent_compiles_of_one_signature_leave_consistent_gufuncs(
    tmp_path: Path,
) -> None:
    rcs, bad = race(tmp_path, fixed=True, same=True)
    assert rcs == [0] * RACERS  # no racer ran another racer's wrapper
    assert bad == []  # no kernel was left next to another process's wrapper
    rc, report = _check(tmp_path, 1, fixed=False)  # so even unpatched numba runs it
    assert rc == 0, "the process loading the cache crashed"
    assert report["bad"] == []


@unfixed_only
@pytest.mark.parametrize("same", [False, True], ids=["different", "same"])
def test_unfixed_numba_corrupts_a_shared_cache(tmp_path: Path, same: bool) -> None:
    rcs, bad = race(tmp_path, fixed=False, same=same)
    rc, report = _check(tmp_path, 1 if same else RACERS, fixed=False)
    print(f"racers {rcs}, scan {len(bad)} bad entries, checker rc {rc}, report {report}")
    assert rcs != [0] * RACERS or bad or rc != 0 or report["bad"]


# --------------------------------------------------------------------------- poisoned caches


def _fill(root: Path, cache: Path, types: int, shift: int = 0) -> None:
    """Compile f0 and g0 for the first ``types`` TYPES into ``cache``, after ``shift``
    throwaway functions (which renumber the kernels)."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import numba, numpy as np; "
              "import racemod; n, shift = int(sys.argv[2]), int(sys.argv[3]); "
              "[numba.njit(lambda x: x + 1)(1.0) for _ in range(shift)]; "
              "[racemod.f0(getattr(np, t)(3)) for t in racemod.TYPES[:n]]; "
              "racemod.gufunc(0, racemod.TYPES[:n])")
    subprocess.run([sys.executable, "-c", script, str(root), str(types), str(shift)],
                   env=_env(cache), check=True, timeout=120)


def _poison_swapped(root: Path) -> int:
    """Mechanism 1: f0 and g0 cached for float64 and int64, then the two data files of
    every index swapped. Returns the bad entries made."""
    _fill(root, root / "cache", 2)
    swapped = 0
    for index in (root / "cache").rglob("*.nbi"):
        with open(index, "rb") as f:
            version = pickle.load(f)
            stamp, overloads = pickle.loads(f.read())
        keys = list(overloads)
        assert len(keys) == 2, index
        overloads[keys[0]], overloads[keys[1]] = overloads[keys[1]], overloads[keys[0]]
        index.write_bytes(pickle.dumps(version) + pickle.dumps((stamp, overloads)))
        swapped += 2
    return swapped  # f0, g0's kernel, g0's wrapper: two signatures each


def _poison_mixed(root: Path) -> int:
    """Mechanism 2: g0's kernel from one process and its wrapper from another, whose
    kernel was numbered differently. Returns the bad entries made."""
    _fill(root, root / "cache", 1)
    _fill(root, root / "other", 1, shift=3)
    kernels = list((root / "other").rglob("racemod.g0-*.nbc"))
    assert len(kernels) == 1
    kernels[0].replace(root / "cache" / kernels[0].relative_to(root / "other"))
    return 1  # the wrapper


POISONS = {"swapped": (_poison_swapped, 2), "mixed": (_poison_mixed, 1)}


@pytest.mark.parametrize("kind", list(POISONS))
def test_poisoned_cache_is_detected_and_rewritten_on_load(tmp_path: Path, kind: str) -> None:
    poison, n = POISONS[kind]
    _setup(tmp_path)
    bad = poison(tmp_path)
    assert len(scan(tmp_path)) == bad

    rc, report = _check(tmp_path, n, fixed=True, rounds=1)
    assert rc == 0
    assert report["bad"] == []
    assert report["rejected"] == bad
    assert scan(tmp_path) == []  # rewritten in place
    rc, report = _check(tmp_path, n, fixed=False, rounds=1)  # even unpatched numba is fine now
    assert (rc, report.get("bad")) == (0, [])


@unfixed_only
@pytest.mark.parametrize("kind", list(POISONS))
def test_unfixed_numba_fails_on_a_poisoned_cache(tmp_path: Path, kind: str) -> None:
    poison, n = POISONS[kind]
    _setup(tmp_path)
    poison(tmp_path)
    rc, report = _check(tmp_path, n, fixed=False, rounds=1)
    print(f"checker rc {rc}, report {report}")
    assert rc != 0 or report["bad"]


@pytest.mark.parametrize("kind, files", [("swapped", 9), ("mixed", 4)])
def test_repair_deletes_the_poisoned_functions(tmp_path: Path, kind: str, files: int) -> None:
    poison, n = POISONS[kind]
    _setup(tmp_path)
    poison(tmp_path)
    with _importable(tmp_path):
        deleted = jitcache.repair([tmp_path / "cache"])
    assert len(deleted) == files  # indexes and data files, a gufunc's kernel and wrapper
    assert not list((tmp_path / "cache").rglob("*.g0-*.nb[ic]"))
    rc, report = _check(tmp_path, n, fixed=False, rounds=1)
    assert (rc, report.get("bad")) == (0, [])


# --------------------------------------------------------------------------- where it applies


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != jitcache.ENV} | env
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=120)


def test_importing_featurestore_patches_numba_when_it_is_imported() -> None:
    proc = _python("""
        import sys
        import featurestore.targets
        from featurestore import jitcache
        assert "numba" not in sys.modules  # featurestore does not import numba itself
        from numba.core.caching import IndexDataCacheFile
        from numba.np.ufunc.wrappers import _GufuncWrapper
        print(jitcache.mode(), IndexDataCacheFile.__dict__.get("_featurestore_jitcache"),
              _GufuncWrapper.__dict__.get("_featurestore_jitcache"))
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["lock", "True", "True"]


def test_the_pytest_process_is_patched() -> None:
    from numba.core.caching import IndexDataCacheFile
    from numba.np.ufunc.wrappers import _GufuncWrapper

    assert jitcache.mode() == "lock"
    assert IndexDataCacheFile.__dict__.get("_featurestore_jitcache")
    assert _GufuncWrapper.__dict__.get("_featurestore_jitcache")


def test_unexpected_numba_falls_back_to_a_private_cache(tmp_path: Path) -> None:
    proc = _python("""
        import os, warnings
        from numba.core import caching
        caching.IndexDataCacheFile.save = lambda self, key, data, extra=None: None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from featurestore import jitcache
        print(jitcache.mode(), os.environ["NUMBA_CACHE_DIR"] != os.environ["SHARED"])
        print(caching.IndexDataCacheFile.__dict__.get("_featurestore_jitcache", False))
        print([str(w.message) for w in caught if "cannot make numba" in str(w.message)])
        """, NUMBA_CACHE_DIR=str(tmp_path), SHARED=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    mode, patched, warned = proc.stdout.splitlines()
    assert mode == "private True"  # and NUMBA_CACHE_DIR moved off the shared directory
    assert patched == "False"
    assert "IndexDataCacheFile.save is not save(self, key, data)" in warned


def test_the_mode_can_be_chosen_by_environment(tmp_path: Path) -> None:
    code = """
        import os
        from featurestore import jitcache
        from numba.core.caching import IndexDataCacheFile
        patched = IndexDataCacheFile.__dict__.get("_featurestore_jitcache", False)
        print(jitcache.mode(), patched, os.environ["NUMBA_CACHE_DIR"] == os.environ["SHARED"])
        """
    shared = {"NUMBA_CACHE_DIR": str(tmp_path), "SHARED": str(tmp_path)}
    assert _python(code, FEATURESTORE_NUMBA_CACHE="off", **shared).stdout.split() == [
        "off", "False", "True"]
    assert _python(code, FEATURESTORE_NUMBA_CACHE="private", **shared).stdout.split() == [
        "private", "False", "False"]


def test_dask_workers_run_extraction_with_the_patch(dask_cluster: Any) -> None:
    import distributed

    from featurestore.extract import ExtractConfig, PartitionResult, extract_partition

    probe = ("__import__('numba.core.caching').core.caching.IndexDataCacheFile"
             ".__dict__.get('_featurestore_jitcache', False)")
    with distributed.Client(dask_cluster.address, timeout="30s") as client:
        for worker in client.scheduler_info()["workers"]:
            result = client.submit(extract_partition, [], ExtractConfig(("mfcc",)),
                                   workers=[worker], pure=False).result(timeout=60)
            assert isinstance(result, PartitionResult)
            assert client.submit(eval, probe, workers=[worker], pure=False).result(timeout=60)


# --------------------------------------------------------------------------- librosa itself

PYIN = """
import sys, time
from pathlib import Path
import numpy as np
from featurestore.targets import REGISTRY, DecodedClip
from featurestore import jitcache
root, how, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sr, hop = 16000, 160
y = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(sr // 2) / sr)
(root / f"go-{how}").touch()
while len(list(root.glob("go-*"))) < n:
    time.sleep(0.001)
found = []
if how in ("target", "both"):  # the project's target, float32
    out = REGISTRY["pyin"]()(DecodedClip(y.astype(np.float32), sr, hop))
    found.append(float(np.median(np.exp(out[10:-10, 0]))))
if how in ("librosa", "both"):  # librosa.pyin itself, float64
    import librosa
    f0, _, _ = librosa.pyin(y, fmin=40.0, fmax=2000.0, sr=sr, frame_length=2048,
                            hop_length=hop, center=True)
    found.append(float(np.nanmedian(f0)))
if how == "both":  # every other loop librosa.util builds (eagerly, from the cache) at import
    import librosa
    x = np.array([3, 1, 2, 0, 4, 4, 1, 5, 2])
    picks = set()
    for dt in (np.int16, np.int32, np.int64, np.float32, np.float64):
        xs = x.astype(dt)
        lmin, lmax = librosa.util.localmin(xs)[1:-1], librosa.util.localmax(xs)[1:-1]
        assert (lmin == (x[1:-1] < x[:-2]) & (x[1:-1] <= x[2:])).all(), dt
        assert (lmax == (x[1:-1] > x[:-2]) & (x[1:-1] >= x[2:])).all(), dt
        if dt in (np.float32, np.float64):  # its integer loops reject a float delta
            picks.add(tuple(librosa.util.peak_pick(xs, pre_max=1, post_max=1, pre_avg=1,
                                                   post_avg=1, delta=0.5, wait=1)))
    assert len(picks) == 1, picks
print(*found, jitcache.rejected_count())
"""


def pyin_race(root: Path, *, fixed: bool) -> tuple[list[int], list[str], Any, float]:
    """Two processes compile librosa's pYIN kernels at once on an empty cache, one through
    the project's target (float32) and one through ``librosa.pyin`` (float64); then a
    third runs both on that cache.

    Returns
    -------
    tuple
        (racer return codes, racer outputs, the third's CompletedProcess, its seconds).
    """
    script = root / "pyin.py"
    script.write_text(PYIN)
    env = _env(root / "cache")
    if not fixed:
        env[jitcache.ENV] = "off"
    procs = [subprocess.Popen([sys.executable, str(script), str(root), how, "2"], env=env,
                              stdout=subprocess.PIPE, text=True)
             for how in ("target", "librosa")]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for path in root.glob("go-*"):
        path.unlink()
    start = time.perf_counter()
    last = subprocess.run([sys.executable, str(script), str(root), "both", "1"], env=env,
                          capture_output=True, text=True, timeout=300)
    return [p.returncode for p in procs], outs, last, time.perf_counter() - start


def _pitches(out: str) -> list[float]:
    return [float(x) for x in out.split()[:-1]]


def test_librosa_pyin_on_a_fresh_cache_shared_by_processes(tmp_path: Path) -> None:
    rcs, outs, last, seconds = pyin_race(tmp_path, fixed=True)
    assert rcs == [0, 0], outs
    assert last.returncode == 0, last.stderr[-3000:]
    for out in [*outs, last.stdout]:
        assert _pitches(out) == pytest.approx([440.0] * len(_pitches(out)), rel=0.01)
    assert len(_pitches(last.stdout)) == 2
    assert seconds < 30  # it loaded the kernels, it did not compile them
    assert jitcache.scan([tmp_path / "cache"]) == []


@unfixed_only
def test_unfixed_librosa_pyin_on_a_fresh_cache(tmp_path: Path) -> None:
    rcs, outs, last, _ = pyin_race(tmp_path, fixed=False)
    bad = jitcache.scan([tmp_path / "cache"])
    print(f"racers {rcs} {outs}, last {last.returncode} {last.stdout!r}, scan {bad}")
    assert rcs != [0, 0] or last.returncode != 0 or bad
