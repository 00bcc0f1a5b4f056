"""The store format: schema, writers, memory-mapped reader, integrity check.

A leaf: it imports no other module of featurestore but :mod:`featurestore.errors`
(an import contract, see pyproject.toml), so that a reader of stores (the trainer) loads
nothing of the build side. Its types are the format's: :class:`Clip` (a row of the clip
table), :class:`TargetSpec` (a target's stored declaration), :class:`Stats` (a target's
exact, combinable statistics), :class:`ClipArrays` and :class:`PartitionResult` (a
shard's content), :class:`Store` (an opened store).

One HDF5 file per data set (or per slice of a large corpus), readable with plain h5py::

    /                  attrs: schema_version, sample_rate, hop, created, source, versions (JSON);
                       build bookkeeping: partition_size, partitions ([first, stop) of the
                       build's partitions held here), files ([k, K], only for a corpus
                       written as K files ``<stem>-NNN.h5``) and set_id (the same on the
                       K files of one set)
    /clips/<column>    one 1-D dataset per column, row i = clip i:
                       id, path, label, split, group, sha1, meta (JSON) (UTF-8 strings);
                       n_samples, n_frames, sample_offset, frame_offset (int64)
    /waveform          [total_samples] int16, contiguous, uncompressed
    /targets/<name>    [total_frames, dim] (frame rate) or [n_clips, dim] (clip rate),
                       float16 by default, contiguous, uncompressed;
                       attrs: spec (JSON declaration), count, mean[dim], std[dim], m2[dim]
                       (float64, exact over every stored value)
    /affine/<name>     only for a target stored as 8-bit codes (spec dtype ``uint8``, a
                       build with ``quantize``): [n_clips, 2, dim] float32, row i = the
                       offset and the scale of clip i; a value is ``offset + scale * code``
                       (:func:`decode_codes`), and the target's statistics are of those
                       values
    /errors/path, /errors/reason   one row per skipped input

Every dataset above carries block checksums, computed from the bytes as they are written:
attrs ``checksum_algorithm`` (``"xxh3_64"``), ``checksum_block_rows`` (B) and
``checksums`` (uint64, one digest per block of B rows; the last block may be shorter; one
digest of no bytes for an empty dataset). For ``/waveform`` and ``/targets/*`` a block's
digest is over the rows' raw little-endian bytes as stored; for the clip and error
columns it is over the rows' values, each an 8-byte little-endian length and the bytes
of the value (strings) or the 8-byte little-endian integer (int64 columns).

Strings are stored as UTF-8; a file name that is not valid UTF-8 (read by Python as a
``str`` with surrogate escapes, ``'bad\\udcff.wav'``) is stored as its original bytes and
read back as the same ``str`` (``bytes.decode("utf-8", "surrogateescape")``).

Contiguous and uncompressed on purpose: :func:`open_store` maps each array with
``numpy.memmap`` at the offset HDF5 reports, so the training hot path makes no HDF5 call
and any number of processes share the page cache. Shard files of a build use the same
schema, so a shard is a small store.

Writing: HDF5 lays every file out in memory (:class:`_FileImage`), where a write cannot
fail; featurestore then writes those bytes and the large arrays into a temporary file
with plain ``os.pwrite`` calls and renames it into place. The large arrays are laid out
first and the rest of the file (clip table, errors, statistics, checksums) described
last (:class:`_StoreFile`), so that a store can be filled shard by shard while a build
still runs (:class:`Assembly`). The large arrays start at
multiples of 4 KiB and their bytes go to the disk directly (``O_DIRECT``) where the file
system allows it, not through the page cache (:class:`_ArrayWriter` says why). A full
disk is therefore an ordinary ``OSError`` in featurestore's own code (turned into one
:class:`FeatureStoreError` line, the temporary file removed), never a failed write inside
HDF5, which leaves the library in a state where closing the file, or the interpreter's
exit, crashes the process with a segmentation fault.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import io
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xxhash

from featurestore.errors import FeatureStoreError

SCHEMA_VERSION = 1
STRING_COLUMNS = ("id", "path", "label", "split", "group", "sha1", "meta")
INT_COLUMNS = ("n_samples", "n_frames", "sample_offset", "frame_offset")
ERROR_COLUMNS = ("path", "reason")

CHECKSUM_ALGORITHM = "xxh3_64"
CHECKSUM_BLOCK_BYTES = 1 << 20
"""Bytes a checksum block of a large array aims at (a whole number of rows, a power of
two; more when the array would otherwise have more than CHECKSUM_MAX_BLOCKS blocks)."""
CHECKSUM_MAX_BLOCKS = 4096
"""Digests per dataset at most: 32 KiB, within HDF5's 64 KiB limit for one attribute."""
COLUMN_BLOCK_ROWS = 4096
"""Rows per checksum block of the clip and error columns (at least)."""
DIRECT_ALIGNMENT = 4096
"""Bytes that direct (``O_DIRECT``) writes align their file offsets, lengths and buffer
to: a multiple of any common disk's logical block size. HDF5 starts every array of at
least DIRECT_MIN_BYTES at a multiple of it."""
DIRECT_MIN_BYTES = 1 << 16
"""Smaller arrays are neither aligned nor written directly: their padding would cost more
than the page cache saves."""
_STAGING_BYTES = 8 << 20
"""Size of the aligned buffer that direct writes go through."""

_WRITE_ERRORS = {errno.ENOSPC: "disk full", errno.EFBIG: "file size limit reached"}
if hasattr(errno, "EDQUOT"):
    _WRITE_ERRORS[errno.EDQUOT] = "disk quota exceeded"


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


# ---------------------------------------------------------------------------- the format

Rate = Literal["frame", "clip", "sample"]
Loss = Literal["l1", "mse"]


TAG_SEPARATOR = ";"
"""What joins the labels (tags) of a multi-label clip in the ``label`` column."""


CODE_DTYPE = "uint8"
"""Storage dtype of a target quantised to 8-bit codes (see :func:`encode_codes`)."""
_CODE_LEVELS = 255


def encode_codes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise rows to 8-bit codes with a per-dimension offset and scale.

    Parameters
    ----------
    x : np.ndarray, shape (n, dim), float
        One clip's rows of a target.

    Returns
    -------
    codes : np.ndarray, shape (n, dim), uint8
        ``round((x - offset) / scale)``: 0 at each dimension's minimum, 255 at its maximum.
    affine : np.ndarray, shape (2, dim), float32
        ``offset`` (the minimum) and ``scale`` (the range / 255; 1 for a constant
        dimension) per dimension. :func:`decode_codes` gives values within ``scale / 2``
        (plus float32 rounding) of ``x``.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"encode_codes: rows of shape (n, dim) expected, got {x.shape}")
    if len(x) == 0:
        return np.zeros(x.shape, np.uint8), np.stack([np.zeros(x.shape[1], np.float32),
                                                      np.ones(x.shape[1], np.float32)])
    lo = x.min(axis=0)
    span = x.max(axis=0) - lo
    scale = np.where(span > 0, span / _CODE_LEVELS, 1.0).astype(np.float32)
    codes = np.rint((x - lo) / scale)
    np.clip(codes, 0, _CODE_LEVELS, out=codes)
    return codes.astype(np.uint8), np.stack([lo, scale])


def decode_codes(codes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Values of 8-bit codes: ``offset + scale * code``, float32.

    Parameters
    ----------
    codes : np.ndarray, shape (n, dim), uint8
    affine : np.ndarray, shape (2, dim) (one clip) or (n, 2, dim) (a clip per row)
        Offsets and scales, as :func:`encode_codes` returns them.

    Returns
    -------
    np.ndarray, shape (n, dim), float32
    """
    affine = np.asarray(affine, dtype=np.float32)
    return affine[..., 0, :] + affine[..., 1, :] * np.asarray(codes, dtype=np.float32)


def split_tags(label: str) -> list[str]:
    """The tags (or the single class) of one label string, in order.

    Parameters
    ----------
    label : str
        Tags joined by ``";"``; blanks around tags and empty parts are ignored, so ``""``
        means no tag.

    Returns
    -------
    list of str

    Examples
    --------
    >>> split_tags(" rock; guitar;;")
    ['rock', 'guitar']
    """
    return [t.strip() for t in str(label).split(TAG_SEPARATOR) if t.strip()]


@dataclass(frozen=True)
class Clip:
    """One clip: a manifest row, and a row of a store's clip table.

    Parameters
    ----------
    id : str
        Unique within a manifest; stable across builds (the store's clip key).
    path : str
        Absolute path of the audio file.
    label : str
        Label(s); several labels are joined by ``";"``. Empty when unlabeled.
    split : str
        ``"train"``, ``"valid"``, ``"test"``, or empty when the source has no split.
    group : str
        Clips sharing a group (artist, album, instrument) never straddle train and test
        in grouped k-fold evaluation. Empty when unknown.
    meta : dict of str to str
        Any further columns of the source, kept verbatim.
    """

    id: str
    path: str
    label: str = ""
    split: str = ""
    group: str = ""
    meta: dict[str, str] = field(default_factory=dict, compare=True, hash=False)

    @property
    def labels(self) -> list[str]:
        """The labels as a list (empty when unlabeled)."""
        return split_tags(self.label)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TargetSpec:
    """A target's declaration as stored with its values (attribute ``spec`` of
    ``/targets/<name>``, JSON): what a reader needs, with no compute code.

    Attributes
    ----------
    name : str
        Key in the store (``/targets/<name>``).
    dim : int
        Values per row, deltas included.
    rate : {"frame", "clip", "sample"}
        One row per frame, per clip, or per sample.
    library : str
        The library that computes it.
    loss : {"l1", "mse"}
        The regression loss a worker head uses on it.
    dtype : str
        Storage dtype.
    params : dict
        Parameters of the computation (plain JSON data).
    deltas : int
        Orders of time differences appended (0, 1 or 2).
    description : str
    default : bool
        Whether the target belongs to the default set.
    """

    name: str
    dim: int
    rate: Rate
    library: str
    loss: Loss
    dtype: str
    params: dict[str, Any]
    deltas: int
    description: str = ""
    default: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The declaration as plain data (what :meth:`to_json` writes)."""
        return asdict(self)

    def same_values(self, other: TargetSpec) -> bool:
        """Whether two declarations describe the same values: name, dim, rate, library,
        parameters and deltas agree (the storage dtype, the wording of the description and
        the membership of the default set do not change what is computed)."""
        keys = ("name", "dim", "rate", "library", "params", "deltas")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def to_json(self) -> str:
        """The one serialisation of a spec: JSON with sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TargetSpec:
        """Inverse of :meth:`to_json` (also reads every store written so far)."""
        return cls(**json.loads(text))


@dataclass(frozen=True, eq=False)
class Stats:
    """Count, mean and sum of squared deviations per dimension (float64) of a target's
    values, combinable exactly (Chan et al.) across clips, shards and store files with
    ``+``.

    Attributes
    ----------
    count : int
        Rows.
    mean : np.ndarray, shape (dim,), float64
    m2 : np.ndarray, shape (dim,), float64
        Sum of squared deviations from the mean.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, block: int = 2048) -> Stats:
        """Statistics of rows ``x``, shape (n, dim), over the rows: two passes in float64,
        ``block`` rows at a time (no float64 copy of the whole array)."""
        n, dim = len(x), x.shape[1]
        if n == 0:
            return cls(0, np.zeros(dim), np.zeros(dim))
        total = np.zeros(dim)
        for start in range(0, n, block):
            total += x[start : start + block].sum(axis=0, dtype=np.float64)
        mean = total / n
        m2 = np.zeros(dim)
        for start in range(0, n, block):
            d = x[start : start + block].astype(np.float64)
            d -= mean
            m2 += np.einsum("ij,ij->j", d, d)
        return cls(n, mean, m2)

    @classmethod
    def combine(cls, parts: Iterable[Stats], dim: int) -> Stats:
        """The statistics of the union of ``parts`` (none: zero rows of ``dim`` values)."""
        total = cls(0, np.zeros(dim), np.zeros(dim))
        for part in parts:
            total = total + part
        return total

    def __add__(self, other: Stats) -> Stats:
        n = self.count + other.count
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Stats(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per dimension, shape (dim,)."""
        return np.sqrt(self.m2 / max(self.count, 1))


@dataclass
class ClipArrays:
    """One clip of a shard: its row, its arrays in storage dtype, and their statistics.

    Attributes
    ----------
    clip : Clip
    n_samples : int
        Samples at the store's rate.
    sha1 : str
        SHA-1 of the clip's file.
    waveform : np.ndarray or None, shape (n_samples,), int16
        None when only targets are added to a built store.
    targets : dict of str to np.ndarray
        ``(n_samples // hop, dim)`` (frame rate) or ``(1, dim)`` (clip rate) per target.
    stats : dict of str to Stats
        Of the stored values, per target (of the decoded values for 8-bit codes).
    affine : dict of str to np.ndarray
        ``(2, dim)`` offset and scale of each target stored as 8-bit codes.
    """

    clip: Clip
    n_samples: int
    sha1: str
    waveform: np.ndarray | None
    targets: dict[str, np.ndarray]
    stats: dict[str, Stats]
    affine: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PartitionResult:
    """A shard's content: what a worker sends back for one partition of a build and the
    client writes with :func:`write_shard`."""

    clips: list[ClipArrays] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def n_samples(self) -> int:
        """Samples over every clip (at the store's sample rate)."""
        return sum(c.n_samples for c in self.clips)


@dataclass(frozen=True)
class Checksums:
    """The block checksums of one dataset, as recorded when it was written.

    Attributes
    ----------
    algorithm : str
        ``"xxh3_64"``.
    block_rows : int
        Rows per block; the last block may be shorter.
    digests : np.ndarray, shape (n_blocks,), uint64
    """

    algorithm: str
    block_rows: int
    digests: np.ndarray

    def n_blocks(self, rows: int) -> int:
        """Blocks a dataset of ``rows`` rows has (one, of no rows, when it is empty)."""
        return max(1, -(-rows // self.block_rows))


@dataclass(repr=False)
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
    checksums : dict of str to Checksums
        By dataset path without the leading slash (``"waveform"``, ``"targets/mfcc"``,
        ``"clips/id"``, ``"errors/path"``); datasets written without checksums are absent.
    affine : dict of str to np.memmap
        ``[n_clips, 2, dim]`` offsets and scales of each target stored as 8-bit codes
        (:func:`decode_codes`); :meth:`frames_of` decodes them.
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
    checksums: dict[str, Checksums] = field(default_factory=dict)
    affine: dict[str, np.ndarray] = field(default_factory=dict)

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
        """The rows of target ``name`` that belong to clip ``i``: a memmap view in the
        storage dtype, or float32 values decoded from 8-bit codes."""
        if self.specs[name].rate == "clip":
            return self.targets[name][i : i + 1]
        start = int(self.clips["frame_offset"][i])
        rows = self.targets[name][start : start + int(self.clips["n_frames"][i])]
        if name in self.affine:
            return decode_codes(rows, self.affine[name][i])
        return rows

    def waveform_of(self, i: int) -> np.ndarray:
        start = int(self.clips["sample_offset"][i])
        return self.waveform[start : start + int(self.clips["n_samples"][i])]

    def __repr__(self) -> str:
        return (f"Store({str(self.path)!r}, clips={self.n_clips}, "
                f"hours={self.seconds / 3600:.3f}, targets={sorted(self.targets)})")

    def summary(self) -> dict[str, Any]:
        """What ``featurestore info --json`` prints: plain JSON data.

        Returns
        -------
        dict
            ``path``, ``clips``, ``hours``, ``sample_rate`` (Hz), ``hop`` (samples),
            ``bytes`` (the file's size), ``bytes_per_audio_hour`` (None without audio),
            ``waveform_bytes``, ``labels`` (clips per label, most frequent first),
            ``splits`` (clips per split), ``targets`` (per target: ``dim``, ``rate``,
            ``dtype``, ``bytes`` (with the offsets and scales of 8-bit codes),
            ``library``), ``n_errors``, ``errors`` (``path``,
            ``reason``), ``schema_version``, ``created``, ``source``.
        """
        hours = self.seconds / 3600
        labels = Counter(lab for row in self.clips["label"] for lab in split_tags(row))
        targets = {name: {"dim": self.specs[name].dim, "rate": self.specs[name].rate,
                          "dtype": str(x.dtype),
                          "bytes": int(x.nbytes) + (int(self.affine[name].nbytes)
                                                    if name in self.affine else 0),
                          "library": self.specs[name].library}
                   for name, x in self.targets.items()}
        file_bytes = self.path.stat().st_size
        return {
            "path": str(self.path), "clips": self.n_clips, "hours": hours,
            "sample_rate": self.sample_rate, "hop": self.hop, "bytes": file_bytes,
            "bytes_per_audio_hour": file_bytes / hours if hours else None,
            "waveform_bytes": int(self.waveform.nbytes), "labels": dict(labels.most_common()),
            "splits": dict(Counter(self.clips["split"].tolist())), "targets": targets,
            "n_errors": len(self.errors),
            "errors": [{"path": p, "reason": r} for p, r in self.errors],
            "schema_version": self.attrs.get("schema_version"),
            "created": self.attrs.get("created"), "source": self.attrs.get("source"),
        }

    def describe(self) -> str:
        """:meth:`summary` as the text ``featurestore info`` prints (several lines)."""
        s = self.summary()
        hours = s["hours"]
        lines = [f"{self.path}  (schema {s['schema_version']}, created {s['created']})",
                 f"source: {s['source']}",
                 f"{self.n_clips} clips, {format_hours(self.seconds)} of audio at "
                 f"{self.sample_rate} Hz, hop {self.hop} ({self.sample_rate / self.hop:g} "
                 "frames/s)"]
        per_hour = f", {format_bytes(s['bytes'] / hours)} per audio-hour" if hours else ""
        lines.append(f"size {format_bytes(s['bytes'])}{per_hour}")
        lines.append("splits: " + ", ".join(f"{k or '(none)'} {v}"
                                            for k, v in sorted(s["splits"].items())))
        labels = list(s["labels"].items())
        if labels:
            more = f", ... ({len(labels)} labels)" if len(labels) > 12 else ""
            lines.append("labels: " + ", ".join(f"{k} {v}" for k, v in labels[:12]) + more)
        else:
            lines.append("labels: none (unlabeled)")
        lines.append(f"{'target':<12} {'dim':>5} {'rate':>6} {'dtype':>8} {'size':>10} "
                     f"{'per hour':>10}  library")
        rows = [("waveform", 1, "sample", str(self.waveform.dtype), s["waveform_bytes"],
                 "numpy")]
        rows += [(n, t["dim"], t["rate"], t["dtype"], t["bytes"], t["library"])
                 for n, t in s["targets"].items()]
        for name, dim, rate, dtype, nbytes, lib in rows:
            ph = format_bytes(nbytes / hours) if hours else "-"
            lines.append(f"{name:<12} {dim:>5} {rate:>6} {dtype:>8} {format_bytes(nbytes):>10} "
                         f"{ph:>10}  {lib}")
        lines.append(f"errors: {len(self.errors)}")
        lines += [printable(f"  {path}: {reason}") for path, reason in self.errors[:20]]
        if len(self.errors) > 20:
            lines.append(f"  ... and {len(self.errors) - 20} more")
        return "\n".join(lines)


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


def _read_text(dset: Any) -> np.ndarray:
    """A string column as ``str`` objects; bytes that are not UTF-8 come back as the
    surrogate escapes they were written from."""
    return np.array(dset.asstr(errors="surrogateescape")[...].tolist(), dtype=object)


def _read_checksums(dset: Any) -> Checksums | None:
    if "checksums" not in dset.attrs:
        return None
    return Checksums(str(dset.attrs.get("checksum_algorithm", "")),
                     int(dset.attrs.get("checksum_block_rows", 0)),
                     np.asarray(dset.attrs["checksums"], dtype=np.uint64).reshape(-1))


def _read_store(path: Path, f: Any) -> Store:
    clips = {}
    checked: dict[str, Any] = {}  # the datasets that carry checksums, by name
    for col in STRING_COLUMNS:
        clips[col] = _read_text(f["clips"][col])
    for col in INT_COLUMNS:
        clips[col] = f["clips"][col][...].astype(np.int64)
    checked.update({f"clips/{col}": f["clips"][col] for col in (*STRING_COLUMNS, *INT_COLUMNS)})
    targets, specs, stats, affine = {}, {}, {}, {}
    for name, dset in f.get("targets", {}).items():
        targets[name] = _memmap(path, dset)
        specs[name] = TargetSpec.from_json(dset.attrs["spec"])
        count = int(dset.attrs["count"])
        m2 = dset.attrs.get("m2")  # absent in stores written before it was recorded
        stats[name] = Stats(count, np.asarray(dset.attrs["mean"], dtype=np.float64),
                            np.asarray(dset.attrs["std"], dtype=np.float64) ** 2 * count
                            if m2 is None else np.asarray(m2, dtype=np.float64))
        checked[f"targets/{name}"] = dset
    for name, dset in f.get("affine", {}).items():
        affine[name] = _memmap(path, dset)
        checked[f"affine/{name}"] = dset
    errors = []
    if "errors" in f:
        errors = list(zip(_read_text(f["errors"]["path"]).tolist(),
                          _read_text(f["errors"]["reason"]).tolist(), strict=True))
        checked.update({f"errors/{col}": f["errors"][col] for col in ERROR_COLUMNS})
    checked["waveform"] = f["waveform"]
    checksums = {name: cs for name, dset in checked.items()
                 if (cs := _read_checksums(dset)) is not None}
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    return Store(
        path=path, sample_rate=int(attrs["sample_rate"]), hop=int(attrs["hop"]),
        clips=clips, waveform=_memmap(path, f["waveform"]), targets=targets, specs=specs,
        stats=stats, errors=errors, attrs=attrs, checksums=checksums, affine=affine,
    )


def open_stores(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Store]:
    """Open several store files of one corpus (a list, or a glob pattern such as
    ``stores/fma-*.h5``); they must agree on sample rate, hop and target specs.

    Files of a corpus written as K files (root attribute ``files`` = ``[k, K]``) are
    opened only as a whole set: all K of them, each once, all of one set (``set_id``).
    Files without a ``files`` attribute (single-file stores) are not constrained.

    Raises
    ------
    FeatureStoreError
        A file cannot be opened (see :func:`open_store`); a set is incomplete, holds a
        file twice or a file of another set (one line naming that file); the files
        disagree on sample rate, hop or a target's declaration.
    """
    import glob

    if isinstance(paths, (str, os.PathLike)):
        pattern = os.fspath(paths)
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise FeatureStoreError(f"{pattern}: no store matches")
        paths = found
    stores = [open_store(p) for p in paths]
    problems = set_problems([(s.path, s.attrs) for s in stores])
    if problems:
        more = f" (and {len(problems) - 1} more problem(s) with these files)" \
            if len(problems) > 1 else ""
        raise FeatureStoreError(problems[0] + more)
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


_MEMBER_NAME = re.compile(r"(.+)-(\d{3,})")


@dataclass(frozen=True)
class _Member:
    path: Path
    k: int
    n_files: int
    set_id: str | None
    order: int  # position in the caller's list


def _family(path: Path) -> tuple[str, str] | None:
    """``(folder, stem)`` of a file named ``<stem>-NNN.h5``, else None."""
    m = _MEMBER_NAME.fullmatch(path.stem)
    if m is None or path.suffix != ".h5":
        return None
    return os.path.abspath(path.parent), m.group(1)


def _member_path(like: Path, k: int) -> Path | None:
    """The name file ``k`` of the set that ``like`` belongs to has, by the naming rule."""
    m = _MEMBER_NAME.fullmatch(like.stem)
    return like.with_name(f"{m.group(1)}-{k:03d}{like.suffix}") if m else None


def _place(value: Any) -> tuple[int, int] | None:
    """``(k, K)`` from a ``files`` attribute (JSON ``[k, K]``), None when malformed."""
    try:
        k, n = (int(v) for v in json.loads(str(value)))
    except (TypeError, ValueError):
        return None
    return (k, n) if 0 <= k < n else None


def set_id_for(identity: Any) -> str:
    """A ``set_id`` for the files of one multi-file store, derived from ``identity`` (any
    JSON-serialisable description of the corpus and of its split into files), so that
    writing the same set again gives the same id and another corpus or split another.

    Returns
    -------
    str
        32 hexadecimal digits.
    """
    import hashlib

    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def set_problems(files: Sequence[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Whether store files make whole sets: problems, one line each, naming a file.

    Parameters
    ----------
    files : sequence of (path, root attributes)
        Files without a ``files`` attribute are ignored. The others are grouped by
        ``set_id`` (files written without one: by their name ``<stem>-NNN.h5``); each
        group must hold each of its K files exactly once, and files named as one set
        must all carry its id.

    Returns
    -------
    list of str
        Empty when every set is whole.
    """
    problems: list[str] = []
    members: list[_Member] = []
    without_place: set[str] = set()
    for order, (path, attrs) in enumerate(files):
        path = Path(path)
        if "files" not in attrs:
            without_place.add(os.path.abspath(path))
            continue
        place = _place(attrs["files"])
        if place is None:
            problems.append(f"{path}: unreadable 'files' attribute {attrs['files']!r}")
            continue
        k, n = place
        sid = attrs.get("set_id")
        members.append(_Member(path, k, n, None if sid is None else str(sid), order))

    def key(m: _Member) -> tuple[str, Any]:
        return ("id", m.set_id) if m.set_id is not None else ("name", _family(m.path) or
                                                            os.path.abspath(m.path))

    def describe(m: _Member) -> str:
        return f"set id {m.set_id}" if m.set_id is not None else "no set id"

    # A file named as part of a set but written by another build.
    foreign: set[int] = set()
    families: dict[Any, list[_Member]] = {}
    for m in members:
        if _family(m.path) is not None:
            families.setdefault(_family(m.path), []).append(m)
    for fam in families.values():
        ref = min(fam, key=lambda m: (m.k, m.order))
        for m in sorted(fam, key=lambda m: (m.k, m.order)):
            if key(m) != key(ref):
                foreign.add(m.order)
                problems.append(f"{m.path}: belongs to another set of store files than "
                                f"{ref.path} ({describe(m)}, not {describe(ref)}); rebuild "
                                "the set or remove the stale file")
    groups: dict[Any, list[_Member]] = {}
    for m in members:
        if m.order not in foreign:
            groups.setdefault(key(m), []).append(m)
    foreign_paths = {os.path.abspath(m.path) for m in members if m.order in foreign}
    for group in groups.values():
        group.sort(key=lambda m: (m.k, m.order))
        ref = group[0]
        seen: dict[int, _Member] = {}
        for m in group:
            if m.n_files != ref.n_files:
                problems.append(f"{m.path}: records a set of {m.n_files} files, {ref.path} "
                                f"one of {ref.n_files}; rebuild the set")
            elif m.k in seen:
                other = seen[m.k]
                problems.append(
                    f"{m.path}: given twice" if os.path.abspath(m.path) ==
                    os.path.abspath(other.path) else
                    f"{m.path}: duplicates {other.path} (both are file {m.k + 1} of "
                    f"{m.n_files} of one set); use one of them")
            else:
                seen[m.k] = m
        for k in range(ref.n_files):
            if k in seen:
                continue
            expected = _member_path(ref.path, k)
            where = os.path.abspath(expected) if expected is not None else None
            if where in foreign_paths:
                continue  # reported above
            if expected is None:
                problems.append(f"file {k + 1} of {ref.n_files} of the set of {ref.path} is "
                                "missing; the set is incomplete (run its build again)")
            elif where in without_place:
                problems.append(f"{expected}: is not file {k + 1} of {ref.n_files} of the set "
                                f"of {ref.path} (it records no place in a set)")
            else:
                problems.append(f"{expected}: missing: file {k + 1} of {ref.n_files} of the "
                                f"set of {ref.path}; the set is incomplete (a build stopped "
                                "while writing it? run it again)")
    return problems


def _sibling_problems(store: Store) -> list[str]:
    """:func:`set_problems` of the set ``store`` belongs to, from the files named
    ``<stem>-NNN.h5`` next to it (their root attributes only)."""
    if "files" not in store.attrs:
        return []
    files: list[tuple[Path, dict[str, Any]]] = [(store.path, store.attrs)]
    m = _MEMBER_NAME.fullmatch(store.path.stem)
    problems = []
    if m is not None and store.path.suffix == ".h5":
        pattern = re.compile(re.escape(m.group(1)) + r"-\d{3,}\.h5")
        h5py = _h5py()
        for sibling in sorted(store.path.parent.iterdir()):
            if not pattern.fullmatch(sibling.name) or sibling.name == store.path.name:
                continue
            try:
                with h5py.File(sibling, "r") as f:
                    files.append((sibling, dict(f.attrs)))
            except OSError as e:
                problems.append(f"{sibling}: unreadable, so its set cannot be checked ({e})")
    return problems + set_problems(files)


def combined_stats(stores: Sequence[Store], name: str) -> Stats:
    """Exact statistics of target ``name`` over several store files."""
    return Stats.combine((s.stats[name] for s in stores), stores[0].specs[name].dim)


# ---------------------------------------------------------------------------- writing


def _root_attrs(f: Any, attrs: dict[str, Any]) -> None:
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    f.attrs["versions"] = json.dumps(library_versions(), sort_keys=True)
    for k, v in attrs.items():
        f.attrs[k] = v


def _encode_text(text: str) -> bytes:
    """The bytes a string is stored as: UTF-8, with the surrogate escapes of a file name
    that is not valid UTF-8 turned back into its original bytes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no file name produces: kept visible
        return text.encode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """``text`` safe to print on any terminal: undecodable file-name bytes as ``\\xff``."""
    return _encode_text(text).decode("utf-8", "backslashreplace")


def _block_rows(rows: int, row_bytes: int) -> int:
    """Rows per checksum block of a large array: about CHECKSUM_BLOCK_BYTES, a power of
    two, and at most CHECKSUM_MAX_BLOCKS blocks."""
    want = max(1, -(-CHECKSUM_BLOCK_BYTES // max(row_bytes, 1)), -(-rows // CHECKSUM_MAX_BLOCKS))
    return 1 << (want - 1).bit_length()


def _column_block_rows(rows: int) -> int:
    want = max(COLUMN_BLOCK_ROWS, -(-rows // CHECKSUM_MAX_BLOCKS))
    return 1 << (want - 1).bit_length()


def _digest(data: Any) -> int:
    """xxh3_64 of a buffer (bytes, or a C-contiguous array's raw bytes)."""
    return xxhash.xxh3_64_intdigest(data)


def _column_digests(values: np.ndarray, block_rows: int) -> np.ndarray:
    """Digests of a clip or error column by blocks of rows: int64 values as 8 little-endian
    bytes each; strings (as stored, see :func:`_encode_text`) each as an 8-byte
    little-endian length and its bytes."""
    out = []
    for start in range(0, max(len(values), 1), block_rows):
        block = values[start : start + block_rows]
        if block.dtype == object:
            data = b"".join(len(b).to_bytes(8, "little") + b
                            for b in (v if isinstance(v, bytes) else _encode_text(v)
                                      for v in block))
        else:
            data = np.ascontiguousarray(block, dtype="<i8").tobytes()
        out.append(_digest(data))
    return np.array(out, dtype=np.uint64)


class _BlockHasher:
    """Digests of consecutive blocks of ``block_bytes`` bytes of a stream of buffers."""

    def __init__(self, block_bytes: int) -> None:
        self.block_bytes = block_bytes
        self.digests: list[int] = []
        self._hash = xxhash.xxh3_64()
        self._filled = 0

    def update(self, data: np.ndarray) -> None:
        """Feed the next bytes (a 1-D uint8 array)."""
        at = 0
        while at < len(data):
            take = min(len(data) - at, self.block_bytes - self._filled)
            self._hash.update(data[at : at + take])
            self._filled += take
            at += take
            if self._filled == self.block_bytes:
                self.digests.append(self._hash.intdigest())
                self._hash.reset()
                self._filled = 0

    def finish(self) -> np.ndarray:
        if self._filled or not self.digests:
            self.digests.append(self._hash.intdigest())
        return np.array(self.digests, dtype=np.uint64)


def _set_checksums(dset: Any, block_rows: int, digests: np.ndarray) -> None:
    dset.attrs["checksum_algorithm"] = CHECKSUM_ALGORITHM
    dset.attrs["checksum_block_rows"] = np.int64(block_rows)
    dset.attrs["checksums"] = np.asarray(digests, dtype=np.uint64)


def _text_dataset(g: Any, name: str, values: Sequence[str]) -> None:
    data = np.array([_encode_text(v) for v in values], dtype=object)
    dset = g.create_dataset(name, data=data, dtype=_h5py().string_dtype(), shape=(len(data),))
    block = _column_block_rows(len(data))
    _set_checksums(dset, block, _column_digests(data, block))


def _write_columns(f: Any, columns: dict[str, Sequence[Any]]) -> None:
    g = f.create_group("clips")
    for col in STRING_COLUMNS:
        _text_dataset(g, col, list(columns[col]))
    for col in INT_COLUMNS:
        data = np.asarray(columns[col], dtype=np.int64)
        dset = g.create_dataset(col, data=data)
        block = _column_block_rows(len(data))
        _set_checksums(dset, block, _column_digests(data, block))


def _write_errors(f: Any, errors: Sequence[tuple[str, str]]) -> None:
    g = f.create_group("errors")
    _text_dataset(g, "path", [e[0] for e in errors])
    _text_dataset(g, "reason", [e[1] for e in errors])


def _is_coded(spec: TargetSpec) -> bool:
    """Whether a target is stored as 8-bit codes with per-clip offsets and scales."""
    return spec.dtype == CODE_DTYPE and spec.rate == "frame"


def _target_attrs(spec: TargetSpec, st: Stats) -> dict[str, Any]:
    return {"spec": spec.to_json(), "count": st.count, "mean": st.mean, "std": st.std,
            "m2": st.m2}


class _FileImage(io.RawIOBase):
    """A sparse in-memory file that HDF5 (through h5py's file-object driver) lays a store
    out in.

    HDF5 writes the file's structure into it: superblock, object headers, attributes,
    the clip and error columns. The large arrays are allocated early and never filled,
    so the image holds only those few pages, while its size is the whole file's. The
    byte ranges HDF5 wrote are then copied into the real file (:meth:`take_written`).
    """

    PAGE = 1 << 16

    def __init__(self) -> None:
        super().__init__()
        self._pages: dict[int, bytearray] = {}
        self._pos = 0
        self.size = 0
        self._written: list[tuple[int, int]] = []

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), self.size - self._pos))
        out[:n] = self.read_range(self._pos, self._pos + n)
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        src = memoryview(data).cast("B")
        start, done = self._pos, 0
        while done < len(src):
            page, at = divmod(start + done, self.PAGE)
            take = min(len(src) - done, self.PAGE - at)
            buf = self._pages.setdefault(page, bytearray(self.PAGE))
            buf[at : at + take] = src[done : done + take]
            done += take
        if done:
            self._written.append((start, start + done))
        self._pos = start + done
        self.size = max(self.size, self._pos)
        return done

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        for page in [p for p in self._pages if p * self.PAGE >= size]:
            del self._pages[page]
        page, at = divmod(size, self.PAGE)
        if page in self._pages:
            self._pages[page][at:] = bytes(self.PAGE - at)
        self.size = size
        return size

    def flush(self) -> None:
        pass

    def read_range(self, start: int, stop: int) -> bytes:
        out = bytearray(stop - start)
        at = start
        while at < stop:
            page, offset = divmod(at, self.PAGE)
            take = min(stop - at, self.PAGE - offset)
            buf = self._pages.get(page)
            if buf is not None:
                out[at - start : at - start + take] = buf[offset : offset + take]
            at += take
        return bytes(out)

    def take_written(self) -> list[tuple[int, int]]:
        """The byte ranges written since the last call, merged, within the file's size."""
        ranges = sorted(self._written)
        self._written = []
        merged: list[list[int]] = []
        for start, stop in ranges:
            stop = min(stop, self.size)
            if start >= stop:
                continue
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        return [(a, b) for a, b in merged]


@dataclass(frozen=True)
class _Array:
    """A large array of a store file: laid out by HDF5, its bytes written by featurestore."""

    name: str  # "waveform", "targets/<name>", "affine/<name>"
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))


def _free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use in ``folder``'s file system (None when
    the file system does not say)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize if st.f_blocks else None


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[n:], offset + n


class _Direct:
    """A second descriptor of a file being written, opened with ``O_DIRECT``, and the
    page-aligned staging buffers its writes go through (one per array being written at
    the time, reused). ``usable`` turns False for good when the file system refuses a
    direct write (then everything goes through the page cache)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.usable = True
        self._stages: list[np.ndarray] = []

    @classmethod
    def open(cls, path: Path) -> _Direct | None:
        """The file at ``path`` (already created) opened for direct writes, or None where
        the platform or the file system has none."""
        flag = getattr(os, "O_DIRECT", None)
        if flag is None:
            return None
        try:
            return cls(os.open(path, os.O_WRONLY | flag))
        except OSError:  # EINVAL: a file system without direct I/O (tmpfs on old kernels)
            return None

    def take_stage(self) -> np.ndarray:
        """A staging buffer of _STAGING_BYTES, aligned to DIRECT_ALIGNMENT."""
        if self._stages:
            return self._stages.pop()
        raw = np.empty(_STAGING_BYTES + DIRECT_ALIGNMENT, dtype=np.uint8)
        skip = -raw.ctypes.data % DIRECT_ALIGNMENT
        return raw[skip : skip + _STAGING_BYTES]

    def give_back(self, stage: np.ndarray) -> None:
        self._stages.append(stage)

    def close(self) -> None:
        os.close(self.fd)


class _ArrayWriter:
    """Writes one large array's bytes, in order, from file offset ``at``.

    With a usable :class:`_Direct` and an aligned start, the bytes are gathered in a
    staging buffer and written with ``O_DIRECT`` in aligned pieces, and only an array's
    last partial block goes through the page cache; otherwise every write is a plain
    ``pwrite``. Direct writes keep the page cache out of a build, which writes every byte
    twice and syncs both files anyway: on the reference VM, writing new file data through
    the page cache cost 1.9 s of kernel CPU per GB, and 0.04 s directly; the 2-worker
    build became 15 % faster (benchmarks/RESULTS.md, "Writing around the page cache").
    A file system that refuses a direct write (EINVAL) gets the staged bytes again
    through the page cache, and the rest of the file too. Writers of several arrays of
    one file may take turns.
    """

    def __init__(self, fd: int, direct: _Direct | None, at: int, nbytes: int) -> None:
        self.fd = fd
        self.at = at
        self.filled = 0
        aligned = at % DIRECT_ALIGNMENT == 0 and nbytes >= DIRECT_MIN_BYTES
        self.direct = direct if aligned else None
        self.stage: np.ndarray | None = None

    def write(self, data: np.ndarray) -> None:
        """Write the next bytes (a 1-D uint8 array)."""
        if self.direct is None or not self.direct.usable:
            if self.filled:  # staged before another array's direct write was refused
                self._flush()
            _pwrite_all(self.fd, data, self.at)
            self.at += len(data)
            return
        if self.stage is None:
            self.stage = self.direct.take_stage()
        stage = self.stage
        done = 0
        while done < len(data):
            take = min(len(data) - done, len(stage) - self.filled)
            stage[self.filled : self.filled + take] = data[done : done + take]
            self.filled += take
            done += take
            if self.filled == len(stage):
                self._flush()

    def close(self) -> None:
        """Write what is still staged."""
        if self.filled:
            self._flush()
        if self.stage is not None:
            assert self.direct is not None
            self.direct.give_back(self.stage)
            self.stage = None

    def _flush(self) -> None:
        assert self.direct is not None and self.stage is not None
        staged = self.stage[: self.filled]
        body = self.filled - self.filled % DIRECT_ALIGNMENT if self.direct.usable else 0
        if body:
            try:
                _pwrite_all(self.direct.fd, staged[:body], self.at)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.direct.usable = False
                body = 0
        if body < self.filled:  # the last partial block, or everything after a refusal
            _pwrite_all(self.fd, staged[body:], self.at + body)
        self.at += self.filled
        self.filled = 0


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _StoreFile:
    """A store file being written: its large arrays laid out first, their rows appended
    in order (one array after another, or a few rows of each in turn), then the rest of
    the file described and the file renamed into place.

    HDF5 lays the file out in memory (:class:`_FileImage`); its bytes and the arrays'
    go into ``<path>.tmp-<pid>`` with plain writes (the arrays hashed as they are
    written), and :meth:`finish` renames the file over ``path``.

    Parameters
    ----------
    path : Path
    arrays : sequence of _Array
        The large arrays and their shapes: the file's layout.
    what, kept : str
        For the error message: what is being written, and what is left as it was.

    Raises
    ------
    FeatureStoreError
        From any method: the disk is full (or the quota or file-size limit is reached);
        the temporary file is removed and ``path`` is unchanged. Any other failure,
        including an interrupt, also removes the temporary file before it propagates.
    """

    def __init__(self, path: Path, arrays: Sequence[_Array], *, what: str,
                 kept: str) -> None:
        h5py = _h5py()
        self.path, self.what, self.kept = path, what, kept
        self.arrays = {a.name: a for a in arrays}
        self.rows = dict.fromkeys(self.arrays, 0)
        self.image = _FileImage()
        self.tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self.fd: int | None = None
        self.direct: _Direct | None = None
        self.open = True
        offsets: dict[str, int | None] = {}
        self.hashers: dict[str, _BlockHasher] = {}
        with h5py.File(self.image, "w", alignment_threshold=DIRECT_MIN_BYTES,
                       alignment_interval=DIRECT_ALIGNMENT) as f:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # an offset now, for our writes
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # and no bytes written by HDF5
            for a in arrays:
                dset = f.create_dataset(a.name, shape=a.shape, dtype=a.dtype, dcpl=dcpl)
                block = _block_rows(a.shape[0], a.row_bytes)
                # Placeholders of the digests' final size, rewritten in place by finish.
                _set_checksums(dset, block, np.zeros(max(1, -(-a.shape[0] // block)),
                                                     dtype=np.uint64))
                self.hashers[a.name] = _BlockHasher(block * a.row_bytes)
                offsets[a.name] = dset.id.get_offset()
        with self._failing():
            free = _free_bytes(path.parent)
            if free is not None and free < self.image.size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            with contextlib.suppress(FileNotFoundError):  # a rewrite keeps the file's mode
                os.fchmod(self.fd, stat.S_IMODE(os.stat(path).st_mode))
            self._write_image()
            self.direct = _Direct.open(self.tmp)
        self.writers = {a.name: _ArrayWriter(self.fd, self.direct, offsets[a.name] or 0,
                                             a.shape[0] * a.row_bytes) for a in arrays}

    def append(self, name: str, rows: np.ndarray) -> None:
        """Write the next rows of array ``name`` (cast to its dtype)."""
        with self._failing():
            a = self.arrays[name]
            x = np.ascontiguousarray(rows, dtype=a.dtype)
            if x.shape[1:] != a.shape[1:] or self.rows[name] + len(x) > a.shape[0]:
                raise FeatureStoreError(
                    f"{self.path}: /{name} gets more rows than the {a.shape[0]} expected, "
                    f"or rows of shape {x.shape[1:]}")
            data = x.reshape(-1).view(np.uint8)
            if len(data):
                self.hashers[name].update(data)
                self.writers[name].write(data)
            self.rows[name] += len(x)

    def finish(self, describe: Callable[[Any], None],
               attrs: dict[str, dict[str, Any]]) -> None:
        """Describe the rest of the file, make it durable and rename it over ``path``.

        Parameters
        ----------
        describe : callable
            Writes the root attributes and the small datasets into the open h5py file.
        attrs : dict
            Attributes of the large arrays (besides their checksums), by array name.
        """
        with self._failing():
            for name, a in self.arrays.items():
                if self.rows[name] != a.shape[0]:
                    raise FeatureStoreError(f"{self.path}: /{name} has {self.rows[name]} rows, "
                                            f"{a.shape[0]} expected")
            for writer in self.writers.values():
                writer.close()
            with _h5py().File(self.image, "r+") as f:
                describe(f)
                for name, hasher in self.hashers.items():
                    f[name].attrs.modify("checksums", hasher.finish())
                    for k, v in attrs.get(name, {}).items():
                        f[name].attrs[k] = v
            self._write_image()
            assert self.fd is not None
            os.fsync(self.fd)
            self._close()
            os.replace(self.tmp, self.path)
            self.open = False
        _fsync_folder(self.path.parent)

    def discard(self) -> None:
        """Remove the temporary file (a no-op once finished or discarded)."""
        self._close()
        if self.open:
            self.tmp.unlink(missing_ok=True)
            self.open = False

    def _write_image(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, self.image.size)
        for start, stop in self.image.take_written():
            _pwrite_all(self.fd, self.image.read_range(start, stop), start)

    def _close(self) -> None:
        if self.direct is not None:
            self.direct.close()
            self.direct = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """Remove the temporary file on any failure; a write error becomes one line."""
        if not self.open:
            raise FeatureStoreError(f"{self.path}: written or discarded already")
        try:
            yield
        except BaseException as e:
            self.discard()
            if isinstance(e, OSError) and e.errno in _WRITE_ERRORS:
                free = _free_bytes(self.path.parent)
                room = f"{format_bytes(self.image.size)} needed" + (
                    f", {format_bytes(free)} free in {self.path.parent}"
                    if free is not None and e.errno == errno.ENOSPC else "")
                raise FeatureStoreError(
                    f"{self.path}: {_WRITE_ERRORS[e.errno]} while writing {self.what} "
                    f"({room}); {self.kept}") from None
            raise


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


def _layout(specs: Iterable[TargetSpec], *, n_clips: int, n_frames: int,
            n_samples: int) -> list[_Array]:
    """The large arrays of a store or shard of ``n_clips`` clips, in file order: the
    waveform (``n_samples`` samples), each target (a row per frame, or per clip), and the
    offsets and scales of each target stored as 8-bit codes."""
    arrays = [_Array("waveform", (n_samples,), np.dtype(np.int16))]
    for spec in specs:
        rows = n_clips if spec.rate == "clip" else n_frames
        arrays.append(_Array(f"targets/{spec.name}", (rows, spec.dim), np.dtype(spec.dtype)))
        if _is_coded(spec):
            arrays.append(_Array(f"affine/{spec.name}", (n_clips, 2, spec.dim),
                                 np.dtype(np.float32)))
    return arrays


def write_shard(path: str | os.PathLike[str], result: PartitionResult,
                specs: Sequence[TargetSpec], *, sample_rate: int, hop: int,
                attrs: dict[str, Any]) -> None:
    """Write one partition's result as a small store, atomically (temp name, then rename),
    with block checksums of every array.

    ``attrs`` (for example the partition hash) are stored as root attributes.

    Raises
    ------
    FeatureStoreError
        The disk is full (or a quota or file-size limit is reached): no file is left
        behind, finished shards and the store are as they were.
    """
    path = Path(path)
    rows = result.clips
    cols = _columns_of([r.clip for r in rows], [r.n_samples for r in rows],
                       [r.sha1 for r in rows], hop)
    waves = [r.waveform for r in rows if r.waveform is not None]
    pieces: dict[str, list[np.ndarray]] = {"waveform": waves}
    array_attrs = {}
    for spec in specs:
        pieces[f"targets/{spec.name}"] = [r.targets[spec.name] for r in rows]
        array_attrs[f"targets/{spec.name}"] = _target_attrs(
            spec, Stats.combine((r.stats[spec.name] for r in rows), spec.dim))
        if _is_coded(spec):
            pieces[f"affine/{spec.name}"] = [r.affine[spec.name][None] for r in rows]
    layout = _layout(specs, n_clips=len(rows), n_frames=int(sum(cols["n_frames"])),
                     n_samples=sum(len(w) for w in waves))

    def describe(f: Any) -> None:
        _root_attrs(f, {"sample_rate": sample_rate, "hop": hop, **attrs})
        _write_columns(f, cols)
        f.require_group("targets")
        _write_errors(f, result.errors)

    out = _StoreFile(path, layout, what="a shard",
                     kept="the store is unchanged and finished shards are kept: free some "
                          "space and run the same command to resume")
    try:
        for a in layout:
            for piece in pieces[a.name]:
                out.append(a.name, piece)
        out.finish(describe, array_attrs)
    finally:
        out.discard()  # after a failure (finished: a no-op)


def _checked_rows(store: Store, name: str, x: np.ndarray, rows_per_piece: int
                  ) -> Iterator[np.ndarray]:
    """The rows of array ``name`` of a store being copied, in pieces, each block checked
    against the store's checksums (when it has them) on the way."""
    cs = store.checksums.get(name)
    if cs is not None and _table_problem(cs, len(x)) is not None:
        raise FeatureStoreError(f"{store.path}: /{name}: {_table_problem(cs, len(x))}; the "
                                "file is damaged (remove it and run the build again)")
    step = rows_per_piece if cs is None else cs.block_rows * max(1, rows_per_piece //
                                                                 cs.block_rows)
    for start in range(0, len(x), step):
        piece = x[start : start + step]
        if cs is not None:
            for at in range(0, len(piece), cs.block_rows):
                block = piece[at : at + cs.block_rows]
                if _digest(block) != int(cs.digests[(start + at) // cs.block_rows]):
                    first = start + at
                    raise FeatureStoreError(
                        f"{store.path}: /{name} rows {first}-{first + len(block) - 1} differ "
                        "from their checksum: the file is damaged (remove it and run the "
                        "build again)")
        yield piece


def _check_columns(store: Store) -> None:
    """Refuse a store to copy whose clip or error columns differ from their checksums."""
    for name, values in _store_columns(store).items():
        cs = store.checksums.get(name)
        if cs is None:
            continue
        bad = _table_problem(cs, len(values))
        if bad is None:
            mismatches = _column_mismatches(values, cs)
            if mismatches:
                first, last = mismatches[0]
                bad = f"rows {first}-{last} differ from their checksum"
        if bad is not None:
            raise FeatureStoreError(f"{store.path}: /{name}: {bad}: the file is damaged "
                                    "(remove it and run the build again)")


class Assembly:
    """A store written from shards added one after another, in clip order: the layout is
    fixed from the clips' sample counts before the first shard is added, so that a build
    can add each shard as soon as it and the shards before it are written, while later
    partitions are still being extracted, and finish the store moments after the last.

    Every block read from a shard or the base store is checked against their checksums;
    the output gets checksums of the bytes it is written with. The file is written under
    a temporary name and renamed over ``output`` by :meth:`finish` (readers holding the
    old file keep valid memory maps); :meth:`discard` removes it.

    Parameters
    ----------
    output : path-like
    n_samples : sequence of int
        Samples of each clip the store will hold, in order (the shards' clips, or the
        base's). A shard whose clips have other counts is refused by :meth:`add`.
    specs : sequence of TargetSpec
        The targets to take from the shards.
    hop : int
    attrs : dict
        Root attributes for the output (sample_rate, hop, source, ...).
    base : Store, optional
        An existing store whose clips, waveform and targets are kept; the shards then add
        targets for exactly its clips, in the same order.

    Raises
    ------
    FeatureStoreError
        From any method: a shard or the base store is damaged (a checksum differs), or
        the disk is full (or a quota or file-size limit is reached): then no file is left
        behind and the previous ``output`` is as it was.
    """

    def __init__(self, output: str | os.PathLike[str], *, n_samples: Sequence[int],
                 specs: Sequence[TargetSpec], hop: int, attrs: dict[str, Any],
                 base: Store | None = None) -> None:
        self.output = Path(output)
        self.n_samples = [int(n) for n in n_samples]
        self.hop = hop
        self.attrs = attrs
        self.base = base
        self.specs = [s for s in specs if base is None or s.name not in base.specs]
        self.added = 0  # clips
        self.columns: dict[str, list[Any]] = {c: [] for c in (*STRING_COLUMNS, "n_samples")}
        self.errors: list[tuple[str, str]] = []
        self.stats = {s.name: Stats.combine((), s.dim) for s in self.specs}
        every = [*(base.specs.values() if base is not None else ()), *self.specs]
        arrays = _layout(every, n_clips=len(self.n_samples),
                         n_frames=sum(n // hop for n in self.n_samples),
                         n_samples=sum(self.n_samples))
        kept = ("the previous store is unchanged" if self.output.exists()
                else "no store was written")
        self.file = _StoreFile(self.output, arrays, what="the store", kept=kept)

    @property
    def complete(self) -> bool:
        """Whether the shards added hold every clip of the layout."""
        return self.added == len(self.n_samples)

    def add(self, shard: Store) -> bool:
        """Copy the next shard's rows; False (nothing copied) when its clips are not the
        next ones of the layout: other sample counts, or other ids than the base's. (A
        shard holding fewer clips than its partition planned is seen at the next shard
        that no longer fits, or at the end, when the assembly is not :attr:`complete`.)"""
        n = shard.n_clips
        if self.base is not None:
            fits = shard.clips["id"].tolist() == self.base.clips["id"][
                self.added : self.added + n].tolist()
        else:
            fits = shard.clips["n_samples"].tolist() == self.n_samples[
                self.added : self.added + n]
        if not fits:
            return False
        try:
            if self.base is None:
                _check_columns(shard)
                for c in self.columns:
                    self.columns[c].extend(shard.clips[c].tolist())
                self.errors += shard.errors
                self._copy(shard, "waveform", shard.waveform, 1 << 22)
            for spec in self.specs:
                self.stats[spec.name] += shard.stats[spec.name]
                self._copy(shard, f"targets/{spec.name}", shard.targets[spec.name], 1 << 16)
                if _is_coded(spec):
                    self._copy(shard, f"affine/{spec.name}", shard.affine[spec.name], 1 << 12)
        except BaseException:
            self.discard()
            raise
        self.added += n
        return True

    def finish(self) -> None:
        """Copy the base's arrays (if any), describe the store and rename it into place."""
        try:
            if not self.complete:
                raise FeatureStoreError(f"{self.output}: {self.added} of "
                                        f"{len(self.n_samples)} clips added")
            base = self.base
            if base is not None:
                _check_columns(base)
                columns = {c: base.clips[c].tolist() for c in self.columns}
                errors = base.errors
                self._copy(base, "waveform", base.waveform, 1 << 22)
                for name in base.specs:
                    self._copy(base, f"targets/{name}", base.targets[name], 1 << 16)
                    if _is_coded(base.specs[name]):
                        self._copy(base, f"affine/{name}", base.affine[name], 1 << 12)
            else:
                columns, errors = self.columns, self.errors
            clips = [Clip(i, p, la, sp, g) for i, p, la, sp, g in zip(
                columns["id"], columns["path"], columns["label"], columns["split"],
                columns["group"], strict=True)]
            cols = _columns_of(clips, columns["n_samples"], columns["sha1"], self.hop)
            cols["meta"] = columns["meta"]
            specs = {**(base.specs if base is not None else {}),
                     **{s.name: s for s in self.specs}}
            stats = {**(base.stats if base is not None else {}), **self.stats}

            def describe(f: Any) -> None:
                _root_attrs(f, self.attrs)
                _write_columns(f, cols)
                f.require_group("targets")
                _write_errors(f, errors)

            self.file.finish(describe, {f"targets/{name}": _target_attrs(spec, stats[name])
                                        for name, spec in specs.items()})
        finally:
            self.file.discard()  # after a failure (finished: a no-op)

    def discard(self) -> None:
        """Remove the unfinished file; ``output`` stays as it was."""
        self.file.discard()

    def _copy(self, store: Store, name: str, x: np.ndarray, rows_per_piece: int) -> None:
        for piece in _checked_rows(store, name, x, rows_per_piece):
            self.file.append(name, piece)


def assemble(output: str | os.PathLike[str], shards: Sequence[str | os.PathLike[str]], *,
             base: str | os.PathLike[str] | None = None, attrs: dict[str, Any]) -> None:
    """Concatenate shard files into one contiguous store (an :class:`Assembly` of every
    shard at once).

    Parameters
    ----------
    output : path-like
    shards : sequence of path-like
        Shard stores, in clip order.
    base : path-like, optional
        An existing store whose clips, waveform and targets are kept; the shards then add
        targets for exactly the same clips, in the same order.
    attrs : dict
        Root attributes for the output (sample_rate, hop, source, ...). A file of a
        corpus written as K files gets ``files`` (JSON ``[k, K]``) and ``set_id`` (one
        string for its K files, for example from :func:`set_id_for`); with ``base`` the
        base's ``set_id`` is kept when ``attrs`` has none.

    Raises
    ------
    FeatureStoreError
        A shard or the base store is damaged (a checksum differs); the shards' clips are
        not the base's; the disk is full (or a quota or file-size limit is reached):
        then no file is left behind and the previous ``output`` is as it was.
    """
    output = Path(output)
    parts = [open_store(s) for s in shards]
    base_store = open_store(base) if base is not None else None
    attrs = dict(attrs)
    if base_store is not None and "set_id" not in attrs and "set_id" in base_store.attrs:
        attrs["set_id"] = base_store.attrs["set_id"]
    if "files" in attrs and _place(attrs["files"]) is None:
        raise FeatureStoreError(f"{output}: attribute 'files' must be JSON [k, K] with "
                                f"0 <= k < K, got {attrs['files']!r}")
    if base_store is not None:
        new_ids = [i for p in parts for i in p.clips["id"].tolist()]
        stored = base_store.clips["id"].tolist()
        if new_ids != stored:
            raise FeatureStoreError(
                f"{base}: the source's clips no longer match the store's "
                f"({len(new_ids)} extracted vs {len(stored)} stored); rebuild the store")
        n_samples = base_store.clips["n_samples"].tolist()
    else:
        n_samples = [n for p in parts for n in p.clips["n_samples"].tolist()]
    assembly = Assembly(output, n_samples=n_samples,
                        specs=list(parts[0].specs.values()) if parts else [],
                        hop=attrs["hop"], attrs=attrs, base=base_store)
    for part in parts:
        assembly.add(part)
    assembly.finish()


# ---------------------------------------------------------------------------- checking


def _table_problem(cs: Checksums, rows: int) -> str | None:
    """What is wrong with a dataset's checksum attributes themselves, if anything."""
    if cs.algorithm != CHECKSUM_ALGORITHM:
        return f"unknown checksum algorithm {cs.algorithm!r}"
    if cs.block_rows < 1:
        return f"checksum blocks of {cs.block_rows} rows"
    if len(cs.digests) != cs.n_blocks(rows):
        return (f"{len(cs.digests)} checksums, expected {cs.n_blocks(rows)} (blocks of "
                f"{cs.block_rows} rows)")
    return None


def _store_columns(store: Store) -> dict[str, np.ndarray]:
    """The clip and error columns of a store, by dataset name."""
    out = {f"clips/{col}": store.clips[col] for col in (*STRING_COLUMNS, *INT_COLUMNS)}
    for k, col in enumerate(ERROR_COLUMNS):
        out[f"errors/{col}"] = np.array([e[k] for e in store.errors], dtype=object)
    return out


def _column_mismatches(values: np.ndarray, cs: Checksums) -> list[tuple[int, int]]:
    """First and last row of each block of a column that differs from its checksum."""
    got = _column_digests(values, cs.block_rows)
    return [(int(b) * cs.block_rows, min((int(b) + 1) * cs.block_rows, len(values)) - 1)
            for b in np.flatnonzero(got != cs.digests)]


def _clips_at(store: Store, name: str, first: int, last: int) -> str:
    """`` (clips a to b)``: the clips rows ``first``..``last`` of dataset ``name`` hold."""
    c = store.clips
    if name.startswith("errors/") or store.n_clips == 0 or last < first:
        return ""
    offsets = None
    if name == "waveform":
        offsets = c["sample_offset"]
    elif name.startswith("targets/") and store.specs[name[len("targets/"):]].rate != "clip":
        offsets = c["frame_offset"]
    if offsets is not None:
        first, last = (int(np.searchsorted(offsets, r, side="right")) - 1 for r in (first, last))
    i, j = (min(max(r, 0), store.n_clips - 1) for r in (first, last))
    ids = c["id"]
    return f" (clip {ids[i]})" if i == j else f" (clips {ids[i]} to {ids[j]})"


def _mismatch_lines(store: Store, name: str, blocks: list[tuple[int, int]],
                    shown: int = 5) -> list[str]:
    lines = [f"/{name}: rows {a}-{b} differ from their checksum{_clips_at(store, name, a, b)}"
             if b >= a else f"/{name}: its checksum differs (the dataset is empty)"
             for a, b in blocks[:shown]]
    if len(blocks) > shown:
        lines.append(f"/{name}: and {len(blocks) - shown} more blocks differ from their "
                     "checksums")
    return lines


def _without_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _block_mismatches(x: np.ndarray, cs: Checksums) -> list[tuple[int, int]]:
    """First and last row of each block of array ``x`` whose bytes differ from its
    checksum."""
    step = cs.block_rows
    return [(a, min(a + step, len(x)) - 1) for k, a in enumerate(range(0, len(x), step))
            if _digest(x[a : a + step]) != int(cs.digests[k])]


def _verified_affine(s: Store, name: str, usable: Callable[[str, int], Checksums | None],
                     problems: list[str]) -> np.ndarray | None:
    """The offsets and scales of a target stored as codes, once checked (shape, dtype,
    finite positive scales, checksums); None, with the problem recorded, when unusable."""
    a = s.affine.get(name)
    dim = s.specs[name].dim
    if a is None:
        problems.append(f"target {name}: stored as 8-bit codes but /affine/{name} is missing")
        return None
    if a.shape != (s.n_clips, 2, dim) or a.dtype != np.float32:
        problems.append(f"/affine/{name}: shape {a.shape} {a.dtype}, expected "
                        f"{(s.n_clips, 2, dim)} float32")
        return None
    if (cs := usable(f"affine/{name}", len(a))) is not None:
        problems += _mismatch_lines(s, f"affine/{name}", _block_mismatches(a, cs))
    values = np.asarray(a)
    if not (np.isfinite(values).all() and (values[:, 1] > 0).all()):
        problems.append(f"/affine/{name}: offsets and scales must be finite, scales positive")
        return None
    return values


def verify(path: str | os.PathLike[str], *, quick: bool = False,
           block_rows: int | None = None) -> list[str]:
    """Check a store end to end; return the problems found (empty when sound).

    Both modes check the schema, the clip table (unique ids, known splits, offsets and
    frame counts consistent with the hop), array sizes and dtypes, that no target holds
    NaN or Inf, that the stored statistics equal a recomputation over every stored value
    and, for a file of a multi-file set, that the set is whole (from the files
    ``<stem>-NNN.h5`` next to it). The full check also compares every block of every
    dataset (waveform, targets, clip and error columns) with its checksum, so that any
    flipped bit, overwritten byte range or permutation of rows is found and named by
    dataset and rows; a store written without checksums is reported as such.

    Parameters
    ----------
    path : path-like
    quick : bool
        Skip the checksums: no block is hashed or compared with them.
    block_rows : int, optional
        Rows per read of a target that is not checked against checksums (default:
        about CHECKSUM_BLOCK_BYTES per read).

    Returns
    -------
    list of str
        One line per problem, without the store's path.
    """
    try:
        s = open_store(path)
    except FeatureStoreError as e:
        return [_without_path(str(e), Path(path))]
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
    unchecked: list[str] = []  # datasets without checksums

    def usable(name: str, rows: int) -> Checksums | None:
        """The checksums to compare ``name`` with (None: quick, absent or unusable)."""
        cs = None if quick else s.checksums.get(name)
        if not quick and cs is None:
            unchecked.append(name)
        elif cs is not None and _table_problem(cs, rows) is not None:
            problems.append(f"/{name}: {_table_problem(cs, rows)}")
            cs = None
        return cs

    for name, values in _store_columns(s).items():
        if (cs := usable(name, len(values))) is not None:
            problems += _mismatch_lines(s, name, _column_mismatches(values, cs))
    if s.waveform.dtype != np.int16:
        problems.append(f"waveform has dtype {s.waveform.dtype}, expected int16")
    if len(s.waveform) != int(c["n_samples"].sum()):
        problems.append(f"waveform has {len(s.waveform)} samples, clips sum to "
                        f"{int(c['n_samples'].sum())}")
    if (cs := usable("waveform", len(s.waveform))) is not None:
        problems += _mismatch_lines(s, "waveform", _block_mismatches(s.waveform, cs))
    for name, x in s.targets.items():
        spec = s.specs[name]
        rows = s.n_clips if spec.rate == "clip" else s.n_frames
        sized = x.shape == (rows, spec.dim)
        if not sized:
            problems.append(f"target {name}: shape {x.shape}, expected {(rows, spec.dim)}")
        elif x.dtype != np.dtype(spec.dtype):
            problems.append(f"target {name}: dtype {x.dtype}, declared {spec.dtype}")
        cs = usable(f"targets/{name}", len(x))
        step = cs.block_rows if cs is not None else (
            block_rows or _block_rows(len(x), x.dtype.itemsize * spec.dim))
        total = Stats.combine((), spec.dim)
        finite = True
        bad = []
        affine = _verified_affine(s, name, usable, problems) if _is_coded(spec) else None
        if affine is not None:
            row_clip = np.repeat(np.arange(s.n_clips), c["n_frames"])
        elif _is_coded(spec):
            sized = False  # its values cannot be decoded
        for start in range(0, len(x), step):  # one pass: checksums and statistics
            block = x[start : start + step]
            if cs is not None and _digest(block) != int(cs.digests[start // step]):
                bad.append((start, start + len(block) - 1))
            if sized:
                values = np.asarray(block) if affine is None else decode_codes(
                    block, affine[row_clip[start : start + len(block)]])
                finite &= bool(np.isfinite(values).all())
                total = total + Stats.of(values)
        problems += _mismatch_lines(s, f"targets/{name}", bad)
        if not sized:
            continue
        if not finite:
            problems.append(f"target {name}: contains NaN or Inf")
        st = s.stats[name]
        if st.count != total.count or not (
            np.allclose(st.mean, total.mean, rtol=1e-6, atol=1e-6)
            and np.allclose(st.std, total.std, rtol=1e-5, atol=1e-6)
        ):
            problems.append(f"target {name}: stored statistics differ from the values")
    problems += _sibling_problems(s)
    if unchecked and len(unchecked) == (len(_store_columns(s)) + 1 + len(s.targets)
                                        + len(s.affine)):
        problems.append("no checksums: the store was written without them (by an older "
                        "featurestore), so only the quick checks were made; rebuild it to "
                        "check every byte")
    else:
        problems += [f"/{name}: no checksums" for name in unchecked]
    return problems
