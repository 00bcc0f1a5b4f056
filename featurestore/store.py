"""The store format: schema, writers, memory-mapped reader, integrity check.

One HDF5 file per data set (or per slice of a large corpus), readable with plain h5py::

    /                  attrs: schema_version, sample_rate, hop, created, source, versions (JSON);
                       build bookkeeping: partition_size, partitions ([first, stop) of the
                       build's partitions held here), files ([k, K], only for a corpus
                       written as K files ``<stem>-NNN.h5``)
    /clips/<column>    one 1-D dataset per column, row i = clip i:
                       id, path, label, split, group, sha1, meta (JSON) (UTF-8 strings);
                       n_samples, n_frames, sample_offset, frame_offset (int64)
    /waveform          [total_samples] int16, contiguous, uncompressed
    /targets/<name>    [total_frames, dim] (frame rate) or [n_clips, dim] (clip rate),
                       float16 by default, contiguous, uncompressed;
                       attrs: spec (JSON declaration), count, mean[dim], std[dim], m2[dim]
                       (float64, exact over every stored value)
    /errors/path, /errors/reason   one row per skipped input

Contiguous and uncompressed on purpose: :func:`open_store` maps each array with
``numpy.memmap`` at the offset HDF5 reports, so the training hot path makes no HDF5 call
and any number of processes share the page cache. Shard files of a build use the same
schema, so a shard is a small store.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.errors import FeatureStoreError
from featurestore.extract import Moments, PartitionResult
from featurestore.manifest import Clip
from featurestore.targets.base import TargetSpec

SCHEMA_VERSION = 1
STRING_COLUMNS = ("id", "path", "label", "split", "group", "sha1", "meta")
INT_COLUMNS = ("n_samples", "n_frames", "sample_offset", "frame_offset")


def _h5py() -> Any:
    import h5py

    return h5py


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produce the values, recorded in every store."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("featurestore", "librosa", "essentia", "numpy", "scipy", "soxr", "soundfile",
                 "h5py"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def format_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_hours(seconds: float) -> str:
    """Audio duration in hours, with seconds for short corpora: ``"0.004 h (14.2 s)"``."""
    hours = seconds / 3600
    return f"{hours:.3f} h" + (f" ({seconds:.1f} s)" if hours < 1 else "")


@dataclass
class Stats:
    """Normalisation statistics of one target over a store (float64)."""

    count: int
    mean: np.ndarray
    std: np.ndarray
    m2: np.ndarray | None = None  # sum of squared deviations, as stored (exact combining)

    def moments(self) -> Moments:
        m2 = self.m2 if self.m2 is not None else self.std**2 * self.count
        return Moments(self.count, self.mean, m2)


@dataclass
class Store:
    """An opened store: plain numpy data and read-only memory maps; no open HDF5 handle.

    Attributes
    ----------
    path : Path
    sample_rate, hop : int
    clips : dict of str to np.ndarray
        One array per clip column (strings as ``str`` objects), row i = clip i.
    waveform : np.memmap, shape (total_samples,), int16
    targets : dict of str to np.memmap
        ``[total_frames, dim]`` or ``[n_clips, dim]`` per target.
    specs : dict of str to TargetSpec
    stats : dict of str to Stats
    errors : list of (path, reason)
    attrs : dict
        Root attributes (schema_version, created, source, versions, ...).
    """

    path: Path
    sample_rate: int
    hop: int
    clips: dict[str, np.ndarray]
    waveform: np.ndarray
    targets: dict[str, np.ndarray]
    specs: dict[str, TargetSpec]
    stats: dict[str, Stats]
    errors: list[tuple[str, str]] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_clips(self) -> int:
        return len(self.clips["id"])

    @property
    def n_frames(self) -> int:
        return int(self.clips["n_frames"].sum())

    @property
    def seconds(self) -> float:
        return float(self.clips["n_samples"].sum()) / self.sample_rate

    def clip(self, i: int) -> Clip:
        """Row ``i`` as a manifest row (the id as stored, segment suffix included)."""
        c = self.clips
        return Clip(
            id=c["id"][i], path=c["path"][i], label=c["label"][i], split=c["split"][i],
            group=c["group"][i], meta=json.loads(c["meta"][i]),
        )

    def frames_of(self, name: str, i: int) -> np.ndarray:
        """The rows of target ``name`` that belong to clip ``i`` (a memmap view)."""
        if self.specs[name].rate == "clip":
            return self.targets[name][i : i + 1]
        start = int(self.clips["frame_offset"][i])
        return self.targets[name][start : start + int(self.clips["n_frames"][i])]

    def waveform_of(self, i: int) -> np.ndarray:
        start = int(self.clips["sample_offset"][i])
        return self.waveform[start : start + int(self.clips["n_samples"][i])]


def _memmap(path: Path, dset: Any) -> np.ndarray:
    shape = tuple(dset.shape)
    if 0 in shape:
        return np.empty(shape, dtype=dset.dtype)
    if dset.chunks is not None or dset.compression is not None:
        raise FeatureStoreError(
            f"{path}: dataset {dset.name} is chunked or compressed; training stores must be "
            "contiguous (rebuild, or copy it with 'featurestore build')"
        )
    offset = dset.id.get_offset()
    if offset is None:
        raise FeatureStoreError(f"{path}: dataset {dset.name} has no data written")
    return np.memmap(path, mode="r", dtype=dset.dtype, shape=shape, offset=offset)


def open_store(path: str | os.PathLike[str]) -> Store:
    """Open a store read-only, with every array memory-mapped.

    Parameters
    ----------
    path : path-like
        A ``.h5`` store (or a build's shard) of this schema version.

    Returns
    -------
    Store

    Raises
    ------
    FeatureStoreError
        Missing file, not a store, or written by another schema version.
    """
    h5py = _h5py()
    path = Path(path)
    if not path.exists():
        raise FeatureStoreError(f"{path}: no such store")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FeatureStoreError(f"{path}: not an HDF5 store ({e})") from None
    with f:
        version = f.attrs.get("schema_version")
        if version is None or "clips" not in f:
            raise FeatureStoreError(f"{path}: not a featurestore store (no schema_version)")
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise FeatureStoreError(f"{path}: unreadable schema_version {version!r}") from None
        if version != SCHEMA_VERSION:
            raise FeatureStoreError(
                f"{path}: written with store schema version {version}; this featurestore "
                f"reads version {SCHEMA_VERSION} (rebuild the store)"
            )
        try:
            return _read_store(path, f)
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise FeatureStoreError(f"{path}: damaged store ({type(e).__name__}: {e})") from None


def _read_store(path: Path, f: Any) -> Store:
    clips = {}
    for col in STRING_COLUMNS:
        clips[col] = np.array(f["clips"][col].asstr()[...], dtype=object)
    for col in INT_COLUMNS:
        clips[col] = f["clips"][col][...].astype(np.int64)
    targets, specs, stats = {}, {}, {}
    for name, dset in f.get("targets", {}).items():
        targets[name] = _memmap(path, dset)
        specs[name] = TargetSpec.from_json(dset.attrs["spec"])
        m2 = dset.attrs.get("m2")
        stats[name] = Stats(int(dset.attrs["count"]), np.asarray(dset.attrs["mean"]),
                            np.asarray(dset.attrs["std"]),
                            None if m2 is None else np.asarray(m2))
    errors = []
    if "errors" in f:
        errors = list(zip(f["errors"]["path"].asstr()[...],
                          f["errors"]["reason"].asstr()[...], strict=True))
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    return Store(
        path=path, sample_rate=int(attrs["sample_rate"]), hop=int(attrs["hop"]),
        clips=clips, waveform=_memmap(path, f["waveform"]), targets=targets, specs=specs,
        stats=stats, errors=errors, attrs=attrs,
    )


def open_stores(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Store]:
    """Open several store files of one corpus (a list, or a glob pattern such as
    ``stores/fma-*.h5``); they must agree on sample rate, hop and target specs."""
    import glob

    if isinstance(paths, (str, os.PathLike)):
        pattern = os.fspath(paths)
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise FeatureStoreError(f"{pattern}: no store matches")
        paths = found
    stores = [open_store(p) for p in paths]
    first = stores[0]
    for s in stores[1:]:
        if (s.sample_rate, s.hop) != (first.sample_rate, first.hop):
            raise FeatureStoreError(
                f"{s.path}: sample rate/hop {s.sample_rate}/{s.hop} differ from "
                f"{first.path}: {first.sample_rate}/{first.hop}"
            )
        for name in set(s.specs) & set(first.specs):
            if s.specs[name] != first.specs[name]:
                raise FeatureStoreError(f"{s.path}: target {name!r} declared differently from "
                                        f"{first.path}")
    return stores


def combined_stats(stores: Sequence[Store], name: str) -> Stats:
    """Exact statistics of target ``name`` over several store files."""
    total = Moments(0, np.zeros(stores[0].specs[name].dim), np.zeros(stores[0].specs[name].dim))
    for s in stores:
        total = total + s.stats[name].moments()
    return Stats(total.count, total.mean, total.std, total.m2)


# ---------------------------------------------------------------------------- writing


def _root_attrs(f: Any, attrs: dict[str, Any]) -> None:
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    f.attrs["versions"] = json.dumps(library_versions(), sort_keys=True)
    for k, v in attrs.items():
        f.attrs[k] = v


def _write_columns(f: Any, columns: dict[str, Sequence[Any]]) -> None:
    h5py = _h5py()
    g = f.create_group("clips")
    for col in STRING_COLUMNS:
        g.create_dataset(col, data=np.array(list(columns[col]), dtype=object),
                         dtype=h5py.string_dtype())
    for col in INT_COLUMNS:
        g.create_dataset(col, data=np.asarray(columns[col], dtype=np.int64))


def _write_errors(f: Any, errors: Sequence[tuple[str, str]]) -> None:
    h5py = _h5py()
    g = f.create_group("errors")
    g.create_dataset("path", data=np.array([e[0] for e in errors], dtype=object),
                     dtype=h5py.string_dtype())
    g.create_dataset("reason", data=np.array([e[1] for e in errors], dtype=object),
                     dtype=h5py.string_dtype())


def _target_attrs(dset: Any, spec_json: str, m: Moments) -> None:
    dset.attrs["spec"] = spec_json
    dset.attrs["count"] = m.count
    dset.attrs["mean"] = m.mean
    dset.attrs["std"] = m.std
    dset.attrs["m2"] = m.m2


def _replace_atomically(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def _columns_of(clips: Sequence[Clip], n_samples: Sequence[int], sha1: Sequence[str],
                hop: int) -> dict[str, list[Any]]:
    n_samples = [int(n) for n in n_samples]
    n_frames = [n // hop for n in n_samples]
    return {
        "id": [c.id for c in clips], "path": [c.path for c in clips],
        "label": [c.label for c in clips], "split": [c.split for c in clips],
        "group": [c.group for c in clips], "sha1": list(sha1),
        "meta": [json.dumps(c.meta, sort_keys=True) for c in clips],
        "n_samples": n_samples, "n_frames": n_frames,
        "sample_offset": np.concatenate([[0], np.cumsum(n_samples)[:-1]]).astype(np.int64)
        if n_samples else [],
        "frame_offset": np.concatenate([[0], np.cumsum(n_frames)[:-1]]).astype(np.int64)
        if n_frames else [],
    }


def write_shard(path: str | os.PathLike[str], result: PartitionResult,
                specs: Sequence[dict[str, Any]], *, sample_rate: int, hop: int,
                attrs: dict[str, Any]) -> None:
    """Write one partition's result as a small store, atomically (temp name, then rename).

    ``attrs`` (for example the partition hash) are stored as root attributes.
    """
    h5py = _h5py()
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    rows = result.clips
    with h5py.File(tmp, "w") as f:
        _root_attrs(f, {"sample_rate": sample_rate, "hop": hop, **attrs})
        _write_columns(f, _columns_of([r.clip for r in rows], [r.n_samples for r in rows],
                                      [r.sha1 for r in rows], hop))
        wave = [r.waveform for r in rows if r.waveform is not None]
        f.create_dataset("waveform", data=np.concatenate(wave) if wave
                         else np.zeros(0, dtype=np.int16))
        g = f.create_group("targets")
        for spec in specs:
            name = spec["name"]
            arrays = [r.targets[name] for r in rows]
            data = (np.concatenate(arrays) if arrays
                    else np.zeros((0, spec["dim"]), dtype=spec["dtype"]))
            total = Moments(0, np.zeros(spec["dim"]), np.zeros(spec["dim"]))
            for r in rows:
                total = total + r.moments[name]
            _target_attrs(g.create_dataset(name, data=data), json.dumps(spec, sort_keys=True),
                          total)
        _write_errors(f, result.errors)
    _replace_atomically(tmp, path)


def assemble(output: str | os.PathLike[str], shards: Sequence[str | os.PathLike[str]], *,
             base: str | os.PathLike[str] | None = None, attrs: dict[str, Any]) -> None:
    """Concatenate shard files into one contiguous store, written under a temporary name
    and renamed over ``output`` (readers holding the old file keep valid memory maps).

    Parameters
    ----------
    output : path-like
    shards : sequence of path-like
        Shard stores, in clip order.
    base : path-like, optional
        An existing store whose clips, waveform and targets are kept; the shards then add
        targets for exactly the same clips, in the same order.
    attrs : dict
        Root attributes for the output (sample_rate, hop, source, ...).
    """
    h5py = _h5py()
    output = Path(output)
    parts = [open_store(s) for s in shards]
    base_store = open_store(base) if base is not None else None
    rows_from = [base_store] if base_store is not None else parts
    columns: dict[str, list[Any]] = {c: [] for c in STRING_COLUMNS + INT_COLUMNS}
    for s in rows_from:
        for c in (*STRING_COLUMNS, "n_samples"):
            columns[c].extend(s.clips[c].tolist())
    clips = [Clip(i, p, la, sp, g) for i, p, la, sp, g in zip(
        columns["id"], columns["path"], columns["label"], columns["split"], columns["group"],
        strict=True)]
    cols = _columns_of(clips, columns["n_samples"], columns["sha1"], attrs["hop"])
    cols["meta"] = columns["meta"]
    if base_store is not None:
        new_ids = [i for p in parts for i in p.clips["id"].tolist()]
        if new_ids != columns["id"]:
            raise FeatureStoreError(
                f"{base}: the source's clips no longer match the store's "
                f"({len(new_ids)} extracted vs {len(columns['id'])} stored); rebuild the store"
            )
    errors = [e for s in rows_from for e in s.errors]
    total_samples = int(np.sum(cols["n_samples"])) if cols["n_samples"] else 0
    total_frames = int(np.sum(cols["n_frames"])) if cols["n_frames"] else 0
    n_clips = len(clips)
    # Each target comes from the base store when it has it, else from the shards.
    specs: dict[str, TargetSpec] = {}
    sources: dict[str, list[Store]] = {}
    if base_store is not None:
        specs.update(base_store.specs)
        sources.update({name: [base_store] for name in base_store.specs})
    for name, spec in (parts[0].specs.items() if parts else ()):
        if name not in specs:
            specs[name], sources[name] = spec, list(parts)
    tmp = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        _root_attrs(f, attrs)
        _write_columns(f, cols)
        wave = f.create_dataset("waveform", shape=(total_samples,), dtype=np.int16)
        at = 0
        for s in rows_from:
            n = len(s.waveform)
            for start in range(0, n, 1 << 22):  # bounded memory for long corpora
                chunk = s.waveform[start : start + (1 << 22)]
                wave[at + start : at + start + len(chunk)] = chunk
            at += n
        if at != total_samples:
            raise FeatureStoreError(
                f"{output}: waveform has {at} samples, the clips declare {total_samples}")
        g = f.create_group("targets")
        for name, spec in specs.items():
            rows = n_clips if spec.rate == "clip" else total_frames
            dset = g.create_dataset(name, shape=(rows, spec.dim), dtype=spec.dtype)
            total = Moments(0, np.zeros(spec.dim), np.zeros(spec.dim))
            at = 0
            for s in sources[name]:
                x = s.targets[name]
                for start in range(0, len(x), 1 << 16):
                    chunk = x[start : start + (1 << 16)]
                    dset[at + start : at + start + len(chunk)] = chunk
                at += len(x)
                total = total + s.stats[name].moments()
            if at != rows:
                raise FeatureStoreError(f"{output}: target {name} has {at} rows, expected {rows}")
            spec_dict = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
            _target_attrs(dset, json.dumps(spec_dict, sort_keys=True), total)
        _write_errors(f, errors)
    _replace_atomically(tmp, output)


# ---------------------------------------------------------------------------- checking


def verify(path: str | os.PathLike[str], *, block_rows: int = 1 << 16) -> list[str]:
    """Check a store end to end; return the problems found (empty when sound).

    Checks the schema, clip table (unique ids, known splits, offsets and frame counts
    consistent with the hop), array sizes, that no target holds NaN or Inf, and that the
    stored statistics equal a recomputation over every stored value.
    """
    try:
        s = open_store(path)
    except FeatureStoreError as e:
        return [str(e)]
    problems = []
    c = s.clips
    lengths = {col: len(v) for col, v in c.items()}
    if len(set(lengths.values())) > 1:
        return [f"clip columns differ in length: {lengths}"]
    if len(set(c["id"].tolist())) != s.n_clips:
        problems.append("clip ids are not unique")
    bad_splits = set(c["split"].tolist()) - {"train", "valid", "test", ""}
    if bad_splits:
        problems.append(f"unknown split values {sorted(bad_splits)}")
    if (c["n_frames"] != c["n_samples"] // s.hop).any():
        problems.append("n_frames differs from n_samples // hop")
    for col, size in (("sample_offset", "n_samples"), ("frame_offset", "n_frames")):
        expect = np.concatenate([[0], np.cumsum(c[size])[:-1]]) if s.n_clips else c[size]
        if (c[col] != expect).any():
            problems.append(f"{col} is not the running sum of {size}")
    if s.waveform.dtype != np.int16:
        problems.append(f"waveform has dtype {s.waveform.dtype}, expected int16")
    if len(s.waveform) != int(c["n_samples"].sum()):
        problems.append(f"waveform has {len(s.waveform)} samples, clips sum to "
                        f"{int(c['n_samples'].sum())}")
    for name, x in s.targets.items():
        spec = s.specs[name]
        rows = s.n_clips if spec.rate == "clip" else s.n_frames
        if x.shape != (rows, spec.dim):
            problems.append(f"target {name}: shape {x.shape}, expected {(rows, spec.dim)}")
            continue
        if x.dtype != np.dtype(spec.dtype):
            problems.append(f"target {name}: dtype {x.dtype}, declared {spec.dtype}")
        total = Moments(0, np.zeros(spec.dim), np.zeros(spec.dim))
        finite = True
        for start in range(0, rows, block_rows):
            block = np.asarray(x[start : start + block_rows])
            finite &= bool(np.isfinite(block).all())
            total = total + Moments.of(block)
        if not finite:
            problems.append(f"target {name}: contains NaN or Inf")
        st = s.stats[name]
        if st.count != total.count or not (
            np.allclose(st.mean, total.mean, rtol=1e-6, atol=1e-6)
            and np.allclose(st.std, total.std, rtol=1e-5, atol=1e-6)
        ):
            problems.append(f"target {name}: stored statistics differ from the values")
    return problems
