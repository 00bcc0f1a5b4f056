"""A process-safe numba on-disk cache: the fix for the ``librosa.pyin`` segfaults.

librosa compiles its kernels with numba and keeps the machine code on disk
(``@jit(cache=True)``, ``@guvectorize(..., cache=True)``, ...), by default in
``site-packages/librosa/**/__pycache__`` or, when ``NUMBA_CACHE_DIR`` is set, under that
directory. Importing this module (``featurestore.targets`` does, so every extraction, every
Dask worker that unpickles a task and every test does) makes that cache safe to share
between processes.

The cause
---------
numba (checked: 0.57.0 to 0.68.1; the code below is the same text in all of them) keeps,
per compiled function, one index ``<func>-<line>.pyXY.nbi`` mapping each key (signature,
CPU, bytecode hash) to a data file ``<func>-<line>.pyXY.<n>.nbc``; a ``@guvectorize``
function has two: its kernel (``<func>...``) and its ufunc loop wrapper
(``guf-<func>...``). Two things go wrong when processes compile at the same time:

1. ``numba.core.caching.IndexDataCacheFile.save(key, data)`` is an unlocked
   read-modify-write: ``_load_index()``, pick the first ``.<n>.nbc`` not in it,
   ``_save_index()``, ``_save_data()``. Each write is atomic (temporary file, then
   ``os.replace``) but nothing orders two processes: two that save signatures A and B at
   once both pick ``.1.nbc``, and if A's index write lands first and B's data write last,
   the index maps A to B's machine code (other entries get lost). ``load`` checks nothing,
   so ``Dispatcher.compile`` hands out code compiled for other argument types (wrong
   results, or a crash).
2. Even for one signature, a kernel's symbol carries a per-process counter (the ``v1`` in
   ``_ZN7racemod2g0B2v1...``), which differs between processes with different compile
   histories (pytest next to Dask workers). Two processes that compile the same gufunc at
   once each save their kernel and then their wrapper, overwriting each other's entries
   one file at a time, so the cache can end with process P's kernel and process Q's
   wrapper. The next process loads both, asks the wrapper library for
   ``__gufunc__.<P's kernel symbol>`` (``_GufuncWrapper._compile_wrapper`` -> ``build``),
   ``CPUCodeLibrary.get_pointer_to_function`` returns 0 because the library defines Q's,
   and the ufunc calls address 0: signal 11 inside ``librosa.pyin`` -> ``localmin``, in
   that process and every later one, as reported.

``tests/test_jit_cache.py`` reproduces both within seconds (a segfault or wrong results in
nearly every run without this module) and builds both poisoned states deterministically.

The fix
-------
:func:`install` patches numba, only where its code is the known text (or, where the
source cannot be read, numba is 0.57 to 0.68 and has the expected members):

* ``IndexDataCacheFile.save`` holds an exclusive ``fcntl.flock`` on
  ``featurestore-numba.lock`` in the cache directory from reading the index to writing it,
  and writes the data file *before* the index entry naming it (a reader never meets an
  entry whose file is not written yet). Where the lock file cannot be opened it skips the
  save (the process keeps its compiled code; the cache is just not extended). ``flush``
  takes the same lock.
* a gufunc wrapper is saved only if, under that lock, the cached kernel is the one it
  wraps (the kernel index holds an entry with its kernel's symbol): the last process to
  overwrite a kernel is then the last to save its wrapper, and patched processes leave
  consistent pairs;
* ``IndexDataCacheFile.load`` reads the index and the data under a shared lock, then
  checks that the data belongs to the request: a ``CompileResult``'s signature must have
  the key's argument types; a gufunc wrapper library must define exactly the
  ``__gufunc__.`` symbol the caller will look up (``_GufuncWrapper._compile_wrapper`` is
  wrapped to announce it). An entry that fails is a miss (logged as a warning): numba
  compiles again and ``save`` overwrites the bad data file in place. So a poisoned cache,
  including one from before the fix, repairs itself entry by entry in patched processes,
  and a patched process never runs a mismatched entry.

The lock removes mechanism 1. Mechanism 2 needs no lock to occur (each save is
consistent, the pair is not): the kernel check on saving keeps patched processes from
leaving mixed pairs, and the check on loading keeps them from running one while another
process is between its kernel and wrapper saves, or one left by an unpatched process.

The cache stays shared. On an empty cache the first ``librosa.pyin`` of a process costs
about 20 s on an idle 2-core machine (12 s compiling the loops ``librosa.util`` builds at
import, 8 s in the call; 48 s with other work running) against 2 s warm, which a private
cache per process would cost every Dask worker of every run; the lock and the check add
nothing measurable to a warm start (2.0-2.3 s against 1.9-2.1 s unpatched).

If numba's code is not what the patch expects (or ``fcntl`` is missing), :func:`install`
warns and falls back to a private cache directory for this process (set in
``numba.config.CACHE_DIR`` and ``NUMBA_CACHE_DIR``, removed at exit): safe, but every
process compiles from scratch. ``FEATURESTORE_NUMBA_CACHE=private`` asks for that mode,
``FEATURESTORE_NUMBA_CACHE=off`` leaves numba untouched.

Limits: a process that never imports featurestore (a plain ``python -c "import librosa"``)
neither locks nor checks: it can still mis-map entries, and it still crashes on a poisoned
or mixed entry that no patched process has met yet. In the private fallback, caches of
functions created before :func:`install` keep their shared location.

Repairing a poisoned environment
--------------------------------
Patched processes rewrite bad entries as they meet them. To check or clean explicitly::

    python -c "from featurestore.jitcache import scan; print(scan())"      # list bad entries
    python -c "from featurestore.jitcache import repair; print(repair())"  # delete them

or delete the cache by hand; it is rebuilt on the next run (about a minute of compiling)::

    find "$(python -c 'import librosa, os; print(os.path.dirname(librosa.__file__))')" \\
        -path '*__pycache__*' \\( -name '*.nbi' -o -name '*.nbc' \\) -delete

plus ``$NUMBA_CACHE_DIR`` when it is set (``rm -rf "$NUMBA_CACHE_DIR"``) and numba's
user-wide cache (``~/.cache/numba``) if it exists. ``featurestore-numba.lock`` files may
stay.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import copy
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import itertools
import logging
import os
import pickle
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ENV = "FEATURESTORE_NUMBA_CACHE"
"""Environment variable choosing the mode: ``lock`` (default), ``private`` or ``off``."""

LOCK_NAME = "featurestore-numba.lock"
"""The lock file, one per cache directory."""

KNOWN_SOURCE_SHA256 = {
    # numba 0.57.0 ... 0.68.1: the texts did not change in between.
    "IndexDataCacheFile": frozenset({
        "953c3b4c113b8f4d7c4b666725787d7b430e3dd3c87ca07e4e042502a7ed78e8",
    }),
    "_GufuncWrapper._compile_wrapper": frozenset({
        "87843fa45568dcc19283d94dd47fd21ea9d76ab1542fc2d25988b96ab5ef6148",
    }),
}
"""SHA-256 of ``inspect.getsource`` of what the patch replaces or wraps, for the numba
versions whose behaviour it was written against."""

TESTED_VERSIONS = ((0, 57), (0, 68))
"""Inclusive (major, minor) range accepted when numba's source cannot be read."""

_CACHING = "numba.core.caching"
_WRAPPERS = "numba.np.ufunc.wrappers"
_MARK = "_featurestore_jitcache"  # set on what is patched: patch once per process
_INDEX_PARAMS = {
    "save": ["self", "key", "data"],
    "load": ["self", "key"],
    "flush": ["self"],
    "_load_index": ["self"],
    "_save_index": ["self", "overloads"],
    "_load_data": ["self", "name"],
    "_save_data": ["self", "name", "data"],
    "_data_name": ["self", "number"],
}
_GUFUNC_PREFIX = b"__gufunc__."
_WRAPPER_INDEX_PREFIX = "guf-"

_expected_gufunc: contextvars.ContextVar[bytes | None] = contextvars.ContextVar(
    "featurestore_expected_gufunc", default=None)
_mode: str | None = None
_rejected = 0


# --------------------------------------------------------------------------- install


def install() -> str:
    """Make numba's on-disk cache safe for concurrent processes (idempotent).

    Returns
    -------
    str
        ``"lock"`` (numba patched, or patched as soon as it is imported), ``"private"`` (a
        private cache directory for this process) or ``"off"``
        (``FEATURESTORE_NUMBA_CACHE=off``).
    """
    global _mode
    if _mode is not None:
        return _mode
    requested = os.environ.get(ENV, "lock").strip().lower() or "lock"
    if requested in ("off", "0", "none", "no"):
        _mode = "off"
        return _mode
    if requested == "private":
        _mode = _use_private_dir(None)
        return _mode
    if requested != "lock":
        warnings.warn(f"{ENV}={requested!r} is not lock, private or off; using lock",
                      RuntimeWarning, stacklevel=2)
    _mode = "lock"
    waiting = [name for name in _PATCHES if name not in sys.modules]
    for name in _PATCHES:
        if name in sys.modules:
            _apply(name, sys.modules[name])
    if waiting and _mode == "lock":
        sys.meta_path.insert(0, _PatchOnImport(waiting))
    return _mode


def mode() -> str | None:
    """The mode :func:`install` chose, None before it ran."""
    return _mode


def rejected_count() -> int:
    """How many cache entries this process refused because they did not belong to the
    request (another signature's code, or a wrapper of another process's kernel)."""
    return _rejected


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches numba's modules right after they are first imported, so that importing
    featurestore does not import numba (about 0.3 s) before anything needs it."""

    def __init__(self, names: list[str]) -> None:
        self._waiting = set(names)
        self._busy = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._waiting or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        loader = getattr(spec, "loader", None)
        if spec is None or not hasattr(loader, "exec_module"):
            return spec
        original: Callable[[ModuleType], None] = loader.exec_module  # type: ignore[union-attr]

        def exec_module(module: ModuleType) -> None:
            original(module)
            self._waiting.discard(fullname)
            if not self._waiting:
                with contextlib.suppress(ValueError):
                    sys.meta_path.remove(self)
            _apply(fullname, module)

        loader.exec_module = exec_module  # type: ignore[union-attr]
        return spec


def _apply(name: str, module: ModuleType) -> None:
    """Patch one numba module or, if it is not what we expect, warn and switch to a
    private cache directory. Never raises."""
    global _mode
    if _mode != "lock":
        return
    try:
        problem = _PATCHES[name](module)
    except Exception as e:  # noqa: BLE001 - whatever goes wrong, fall back safely
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        _mode = _use_private_dir(problem)


def _source_problem(what: str, obj: Any) -> str | None:
    """None when ``obj``'s source is a known text (or unreadable on a tested numba)."""
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        version = _numba_version()
        if version is None or not TESTED_VERSIONS[0] <= version <= TESTED_VERSIONS[1]:
            return f"numba {version} is outside the tested range and its source is unreadable"
        return None
    digest = hashlib.sha256(source.encode()).hexdigest()
    if digest not in KNOWN_SOURCE_SHA256[what]:
        return f"numba's {what} differs from the known text (sha256 {digest[:12]})"
    return None


def _numba_version() -> tuple[int, int] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = version("numba").split(".")[:2]
        return int(major), int(minor)
    except (PackageNotFoundError, ValueError):
        return None


def _params(fn: Any) -> list[str] | None:
    return list(inspect.signature(fn).parameters) if callable(fn) else None


def _patch_caching(caching: ModuleType) -> str | None:
    """Lock ``IndexDataCacheFile``'s save/load/flush and check what ``load`` returns."""
    if fcntl is None:
        return "fcntl.flock is not available on this platform"
    cls = getattr(caching, "IndexDataCacheFile", None)
    if cls is None:
        return "numba.core.caching.IndexDataCacheFile does not exist"
    if cls.__dict__.get(_MARK):
        return None
    for name, params in _INDEX_PARAMS.items():
        if _params(getattr(cls, name, None)) != params:
            return f"IndexDataCacheFile.{name} is not {name}({', '.join(params)})"
    if not {"_cache_path", "_index_path"} <= set(cls.__init__.__code__.co_names):
        return "IndexDataCacheFile has no _cache_path/_index_path"
    problem = _source_problem("IndexDataCacheFile", cls)
    if problem is None:
        _patch_index_file(cls)
    return problem


def _patch_wrappers(wrappers: ModuleType) -> str | None:
    """Make ``_GufuncWrapper._compile_wrapper`` announce the symbol it will look up."""
    cls = getattr(wrappers, "_GufuncWrapper", None)
    original = getattr(cls, "_compile_wrapper", None)
    if cls is None or _params(original) != ["self", "wrapper_name"]:
        return "numba.np.ufunc.wrappers._GufuncWrapper._compile_wrapper(self, wrapper_name) " \
            "does not exist"
    if cls.__dict__.get(_MARK):
        return None
    problem = _source_problem("_GufuncWrapper._compile_wrapper", original)
    if problem is not None:
        return problem

    def _compile_wrapper(self: Any, wrapper_name: str) -> Any:
        token = _expected_gufunc.set(wrapper_name.encode())
        try:
            return original(self, wrapper_name)
        finally:
            _expected_gufunc.reset(token)

    _compile_wrapper.__qualname__ = original.__qualname__
    _compile_wrapper.__doc__ = original.__doc__
    cls._compile_wrapper = _compile_wrapper
    setattr(cls, _MARK, True)
    return None


_PATCHES: dict[str, Callable[[ModuleType], str | None]] = {
    _CACHING: _patch_caching,
    _WRAPPERS: _patch_wrappers,
}


def _use_private_dir(problem: str | None) -> str:
    """Point numba at a fresh cache directory of this process, removed at exit."""
    path = tempfile.mkdtemp(prefix=f"numba-cache-{os.getpid()}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ["NUMBA_CACHE_DIR"] = path  # survives numba's config.reload_config()
    config = sys.modules.get("numba.core.config")
    if config is not None:
        config.CACHE_DIR = path
    if problem is not None:
        warnings.warn(
            f"featurestore cannot make numba's shared on-disk cache safe ({problem}); "
            f"this process compiles into its own cache {path} instead (first librosa calls "
            "are slower)", RuntimeWarning, stacklevel=3,
        )
    return "private"


# --------------------------------------------------------------------------- the patch


@contextlib.contextmanager
def _dir_lock(directory: str | os.PathLike[str], exclusive: bool) -> Iterator[bool]:
    """Hold ``flock`` on ``<directory>/featurestore-numba.lock``; yields False (holding
    nothing) when the lock file cannot be opened or locked."""
    path = os.path.join(directory, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        try:  # a read-only cache: readers can still lock an existing file
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            yield False
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)  # releases the lock


def _patch_index_file(cls: type) -> None:
    """Replace ``save``, ``load`` and ``flush`` of numba's ``IndexDataCacheFile``."""
    original_load = cls.load
    original_flush = cls.flush

    def save(self: Any, key: Any, data: Any) -> None:
        with _dir_lock(self._cache_path, exclusive=True) as held:
            if not held:
                return
            wrapper_symbol = _expected_gufunc.get()
            if wrapper_symbol is not None and not _kernel_is_cached(self, wrapper_symbol):
                return  # our wrapper next to another process's kernel: a mixed pair
            overloads = self._load_index()
            data_name = overloads.get(key)
            if data_name is not None:
                self._save_data(data_name, data)
                return
            existing = set(overloads.values())
            data_name = next(
                name for name in map(self._data_name, itertools.count(1))
                if name not in existing
            )
            self._save_data(data_name, data)  # the data first: no entry names a missing file
            overloads[key] = data_name
            self._save_index(overloads)

    def load(self: Any, key: Any) -> Any:
        with _dir_lock(self._cache_path, exclusive=False):
            data = original_load(self, key)
        if data is not None and not payload_matches(key, data, _expected_gufunc.get()):
            global _rejected
            _rejected += 1
            log.warning(
                "numba cache %s: the entry for %s does not belong to it (left by processes "
                "compiling at once); compiling again and rewriting it",
                self._index_path, _describe(key),
            )
            return None
        return data

    def flush(self: Any) -> None:
        with _dir_lock(self._cache_path, exclusive=True):
            original_flush(self)

    for name, fn in (("save", save), ("load", load), ("flush", flush)):
        fn.__qualname__ = f"{cls.__qualname__}.{name}"
        fn.__doc__ = f"{getattr(cls, name).__doc__ or ''}\n(locked by featurestore.jitcache)"
        setattr(cls, name, fn)
    setattr(cls, _MARK, True)


def _kernel_is_cached(wrapper_file: Any, wrapper_symbol: bytes) -> bool:
    """Whether the gufunc kernel that ``__gufunc__.<kernel symbol>`` wraps is the one in
    the cache (called under the directory's exclusive lock, before saving that wrapper).

    The kernel index is the wrapper's without the ``guf-`` prefix. False when it is
    another process's kernel (saving would leave a mixed pair), when there is none, and
    on any surprise: skipping a save is always safe.
    """
    try:
        name = os.path.basename(wrapper_file._index_path)
        if not name.startswith(_WRAPPER_INDEX_PREFIX):
            return True  # not a gufunc wrapper save
        kernels = copy.copy(wrapper_file)
        kernels._index_path = os.path.join(
            os.path.dirname(wrapper_file._index_path),
            name.removeprefix(_WRAPPER_INDEX_PREFIX))
        wanted = wrapper_symbol.removeprefix(_GUFUNC_PREFIX).decode()
        for data_name in kernels._load_index().values():
            with contextlib.suppress(OSError):
                if kernels._load_data(data_name)[1].mangled_name == wanted:
                    return True
    except Exception:  # noqa: BLE001 - fail safe: do not cache this wrapper
        return False
    return False


def _describe(key: Any) -> str:
    try:
        return str(key[0])
    except Exception:  # noqa: BLE001 - only for a message
        return repr(key)


# --------------------------------------------------------------------------- validation


def payload_matches(key: Any, payload: Any, gufunc_symbol: bytes | None = None) -> bool:
    """Whether a cache entry's data belongs to its index key (and to the caller).

    Parameters
    ----------
    key : tuple
        numba's index key ``(signature, codegen magic tuple, bytecode hashes)``.
    payload : tuple
        The unpickled data file: a reduced ``CompileResult`` (9 items, the signature 4th)
        or a reduced code library ``(name, "object", (object_code, bitcode))``.
    gufunc_symbol : bytes, optional
        For a gufunc wrapper library, the ``__gufunc__.<kernel symbol>`` the caller will
        look up; without it the symbol need only be mangled for the key's argument types.

    Returns
    -------
    bool
        False only when the data provably belongs to something else; True when it
        matches or when the entry has a shape this check does not know.
    """
    try:
        from numba.core import sigutils
        from numba.core.itanium_mangler import mangle_args
        from numba.core.typing.templates import Signature

        args = tuple(sigutils.normalize_signature(key[0])[0])
        if isinstance(payload, tuple) and len(payload) == 9 and isinstance(payload[3], Signature):
            return tuple(payload[3].args) == args
        if isinstance(payload, tuple) and len(payload) == 3 and payload[1] == "object":
            names = _gufunc_symbols(payload[2][0])
            if gufunc_symbol is not None:
                return gufunc_symbol in names
            if names:
                suffix = mangle_args(args).encode()
                return any(name.endswith(suffix) for name in names)
    except Exception:  # noqa: BLE001 - an unknown entry shape is numba's business
        return True
    return True


def _gufunc_symbols(object_code: bytes) -> list[bytes]:
    """The NUL-terminated ``__gufunc__.<mangled name>`` strings of an object file."""
    names = []
    start = 0
    while (i := object_code.find(_GUFUNC_PREFIX, start)) >= 0:
        end = object_code.find(b"\0", i)
        if end < 0:
            break
        names.append(object_code[i:end])
        start = end
    return names


# --------------------------------------------------------------------------- scan / repair


def cache_dirs() -> list[Path]:
    """Where numba keeps librosa's cache: ``NUMBA_CACHE_DIR`` when it is set, else the
    librosa package (its ``__pycache__`` folders) and numba's user-wide cache."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return [Path(configured)]
    dirs = []
    spec = importlib.util.find_spec("librosa")
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(Path(p) for p in spec.submodule_search_locations)
    from numba.misc.appdirs import AppDirs

    user = Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)
    if user.is_dir():
        dirs.append(user)
    return dirs


def scan(directories: Sequence[str | os.PathLike[str]] | None = None) -> list[str]:
    """Find index entries whose data does not belong to them: another signature's code,
    or a gufunc wrapper built for another process's kernel than the cached one.

    Parameters
    ----------
    directories : sequence of path-like, optional
        Searched recursively for ``*.nbi``; default :func:`cache_dirs`.

    Returns
    -------
    list of str
        One line per bad entry: ``<index path>: <signature> -> <data file>``. Indexes of
        another numba version (which numba ignores) and entries whose data cannot be
        unpickled here (a missing file, or the function's module not importable) are
        skipped. Unpickling imports the modules of the cached functions, as numba does.
    """
    return [f"{index}: {_describe(key)} -> {name}"
            for index, key, name in _bad_entries(directories)]


def repair(directories: Sequence[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Delete every function with a bad entry (see :func:`scan`): its index and data
    files, for a gufunc both kernel and wrapper; numba compiles it again on next use.

    Returns
    -------
    list of Path
        The files deleted.
    """
    deleted: list[Path] = []
    for index in sorted({index for index, _, _ in _bad_entries(directories)}):
        stem = index.name[: -len(".nbi")].removeprefix(_WRAPPER_INDEX_PREFIX)
        with _dir_lock(index.parent, exclusive=True):
            for prefix in ("", _WRAPPER_INDEX_PREFIX):
                name = _glob_escape(prefix + stem)
                for path in [*index.parent.glob(f"{name}.nbi"),
                             *index.parent.glob(f"{name}.*.nbc")]:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        deleted.append(path)
    return deleted


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _read_index(index: Path) -> dict[Any, str] | None:
    """An index's ``{key: data file name}``, None if unreadable or of another numba."""
    import numba

    try:
        with open(index, "rb") as f:
            if pickle.load(f) != numba.__version__:
                return None
            return pickle.loads(f.read())[1]
    except Exception:  # noqa: BLE001 - not an index numba would use
        return None


def _read_data(path: Path) -> Any:
    try:
        return pickle.loads(path.read_bytes())
    except Exception:  # noqa: BLE001 - missing (numba's miss) or its module not importable
        return None


def _kernel_symbols(index: Path) -> dict[tuple[Any, Any], bytes]:
    """For a gufunc wrapper index ``guf-X.nbi``: the wrapper symbol each cached kernel of
    ``X.nbi`` needs, by (argument types, codegen magic tuple)."""
    from numba.core import sigutils

    kernels = _read_index(index.with_name(index.name.removeprefix(_WRAPPER_INDEX_PREFIX)))
    symbols = {}
    for key, name in (kernels or {}).items():
        payload = _read_data(index.parent / name)
        if payload is None or not payload_matches(key, payload):
            continue  # a bad kernel entry is reported by itself
        try:
            args = tuple(sigutils.normalize_signature(key[0])[0])
            symbols[args, key[1]] = _GUFUNC_PREFIX + payload[1].mangled_name.encode()
        except Exception:  # noqa: BLE001 - nothing to compare with
            continue
    return symbols


def _bad_entries(
    directories: Sequence[str | os.PathLike[str]] | None,
) -> Iterator[tuple[Path, Any, str]]:
    from numba.core import sigutils

    roots = [Path(d) for d in directories] if directories is not None else cache_dirs()
    for root in roots:
        for index in sorted(root.rglob("*.nbi")):
            with _dir_lock(index.parent, exclusive=False):
                overloads = _read_index(index)
                if not overloads:
                    continue
                is_wrapper = index.name.startswith(_WRAPPER_INDEX_PREFIX)
                kernels = _kernel_symbols(index) if is_wrapper else {}
                bad = []
                for key, name in overloads.items():
                    payload = _read_data(index.parent / name)
                    if payload is None:
                        continue
                    symbol = None
                    if is_wrapper:
                        with contextlib.suppress(Exception):
                            args = tuple(sigutils.normalize_signature(key[0])[0])
                            symbol = kernels.get((args, key[1]))
                    if not payload_matches(key, payload, symbol):
                        bad.append((index, key, name))
            yield from bad


install()
