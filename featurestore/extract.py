"""Planning and extraction: files in, pieces planned, each piece's arrays out.

:func:`plan_pieces` runs on the client: from each file's header it plans the file's
segments as :class:`~featurestore.manifest.Piece` objects (one for a file up to
``max_seconds``), and it hashes each file's content (the shards' identity).
:func:`extract_partition` is what a Dask worker runs: it decodes each piece's segment
alone and computes every target. A partition's result holds everything a shard holds: the
stored (already cast or coded) arrays, per-clip statistics and the error rows, so that
whoever writes the shard (the worker itself, or the client when the workers cannot see
the output's folder; see :mod:`featurestore.build`) does no numeric work. Pure: reads the
audio files and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from featurestore.audio import (
    AudioError,
    AudioInfo,
    content_hash,
    decode,
    file_digests,
    output_length,
    probe,
    segment_length,
)
from featurestore.manifest import Piece, invalid_utf8
from featurestore.store import (
    CODE_DTYPE,
    Clip,
    ClipArrays,
    PartitionResult,
    Stats,
    TargetSpec,
    decode_codes,
    encode_codes,
)
from featurestore.targets import DecodedClip, Target, resolve

_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ExtractConfig:
    """How clips are turned into arrays; part of every shard's identity.

    Parameters
    ----------
    targets : tuple of str
        Target names (the waveform is always stored).
    sample_rate : int
        Store sample rate in Hz.
    hop : int
        Samples per frame.
    max_seconds : float
        Longer files are cut into clips of this length, ids suffixed ``@0000``, ``@0001``...
    min_seconds : float
        Shorter files are skipped and recorded as too short; a long file's final segment
        shorter than this is dropped (the file's other segments are kept).
    with_waveform : bool
        Whether to return the waveform (False when adding targets to a built store).
    quantize : bool
        Store frame-rate targets as 8-bit codes with a per-clip offset and scale per
        dimension (:func:`~featurestore.store.encode_codes`) instead of their declared
        dtype: about half the bytes of float16.
    """

    targets: tuple[str, ...]
    sample_rate: int = 16000
    hop: int = 160
    max_seconds: float = 600.0
    min_seconds: float = 0.5
    with_waveform: bool = True
    quantize: bool = False

    def specs(self) -> list[TargetSpec]:
        """The declarations of ``targets`` as stored, in registry order."""
        return [stored_spec(t, self.quantize) for t in resolve(list(self.targets))]

    @property
    def segment_samples(self) -> int:
        """Samples in a full segment (``max_seconds`` at the store's rate)."""
        return segment_length(self.max_seconds, self.sample_rate)

    @property
    def min_samples(self) -> int:
        """Samples in the shortest clip kept (``min_seconds`` at the store's rate)."""
        return round(self.min_seconds * self.sample_rate)


def stored_spec(target: Target | type[Target], quantize: bool) -> TargetSpec:
    """A target's declaration as a store holds it: its storage dtype becomes 8-bit
    codes for a frame-rate target of a quantised build."""
    spec = target.spec()
    return replace(spec, dtype=CODE_DTYPE) if quantize and spec.rate == "frame" else spec


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float32 values to the storage dtype, saturating rather than overflowing."""
    if dtype == "float16":
        return np.clip(x, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)
    if dtype == "int16":
        return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    return x.astype(dtype)


def plan_file(clip: Clip, info: AudioInfo | None, config: ExtractConfig,
              content: str | None = None) -> list[Piece]:
    """The pieces of one file: one per segment it keeps.

    Parameters
    ----------
    clip : Clip
    info : AudioInfo or None
        The file's header (:func:`~featurestore.audio.probe`); None when it cannot be used
        (one piece then, whose extraction records the reason).
    config : ExtractConfig
    content : str, optional
        The file's content hash, recorded in every piece.

    Returns
    -------
    list of Piece
        Segment ``k`` of the file's ``n = ceil(N / L)`` segments (``N`` its length and
        ``L`` the segment length, in samples at the store's rate) is kept unless it is the
        last and shorter than ``min_seconds``; a file keeping none (too short) is one
        piece, whose extraction records it. The last piece decodes on to the end of the
        file. For MP3 ``N`` follows the header's estimate.
    """
    if info is None:
        return [Piece(clip, content=content)]
    n = output_length(info.frames, info.samplerate, config.sample_rate)
    seg = config.segment_samples
    n_segments = max(1, -(-n // seg))
    tail = n - (n_segments - 1) * seg
    kept = n_segments - (tail < config.min_samples)
    if kept <= 1:
        return [Piece(clip, 0, 1, True, min(n, seg) if kept else 0, content)]
    return [
        Piece(clip, k, kept, k == kept - 1, min(seg, n - k * seg), content)
        for k in range(kept)
    ]


def plan_pieces(clips: Sequence[Clip], config: ExtractConfig) -> list[Piece]:
    """The pieces of a manifest, in its order: each file's header read and its content
    hashed, here (on the client, which lists the files), once.

    A file whose header cannot be used, or whose name is not UTF-8, is one piece (its
    extraction records why). A function of the manifest, the files and ``config`` only,
    so that a rerun plans the same pieces.
    """
    pieces: list[Piece] = []
    done: dict[str, list[Piece]] = {}  # by path: a manifest may list a file twice
    for clip in clips:
        if invalid_utf8(clip) is not None:
            pieces.append(Piece(clip))
            continue
        if clip.path not in done:
            try:
                content: str | None = content_hash(clip.path)
            except OSError:
                content = None
            try:
                info: AudioInfo | None = probe(clip.path)
            except AudioError:
                info = None
            done[clip.path] = plan_file(clip, info, config, content)
        pieces += [replace(p, clip=clip) for p in done[clip.path]]
    return pieces


def extract_clip(clip: Clip, config: ExtractConfig) -> list[ClipArrays]:
    """Decode one clip and compute every target: the pieces of its file, one after the
    other (:func:`extract_piece`).

    Returns
    -------
    list of ClipArrays
        One entry per segment kept (one for any file up to ``config.max_seconds``).

    Raises
    ------
    AudioError
        The file is unusable (the message is the reason for the error table).
    """
    reason = invalid_utf8(clip)
    if reason is not None:
        raise AudioError(reason)
    try:
        info: AudioInfo | None = probe(clip.path)
    except AudioError:
        info = None
    out = []
    for piece in plan_file(clip, info, config, content=None):
        out += extract_piece(piece, config, check_content=False)
    return out


def extract_piece(piece: Piece, config: ExtractConfig, *,
                  check_content: bool = True) -> list[ClipArrays]:
    """Decode one piece (its segment alone, or on to the end of the file for the last
    piece) and compute every target.

    Parameters
    ----------
    piece : Piece
    config : ExtractConfig
    check_content : bool
        Refuse the file when its content no longer has the piece's planned hash (it
        changed after planning; the shard would be stamped with the wrong identity).

    Returns
    -------
    list of ClipArrays
        One entry per segment kept: usually one; none when the file ends before the
        piece's segment, or when its final segment is shorter than ``min_seconds``; more
        when an MP3's header underestimated its length. Targets are in their storage dtype
        with shape ``(n_samples // hop, dim)`` (frame rate) or ``(1, dim)`` (clip rate);
        statistics are of the stored values. Ids carry the segment suffix ``@NNNN`` when the
        file keeps more than one segment.

    Raises
    ------
    AudioError
        The file is unusable (the message is the reason for the error table). A reason
        about the whole file (its name, or its header) is raised by the file's piece 0
        only, and the file's other pieces return no clips: the file has one error row and
        no clips. (They see the same reason: the file's bytes are those planned, checked
        first.) A file whose content is not the planned one is refused by each of its
        pieces; a failure decoding a piece's own segment is raised by that piece.
    """
    clip = piece.clip
    reason = invalid_utf8(clip)
    if reason is not None:
        if piece.segment > 0:
            return []
        raise AudioError(reason)
    try:
        sha1, content = file_digests(clip.path)
    except OSError:
        sha1, content = "", None  # probe says why (not found, ...)
    if check_content and content != piece.content:
        raise AudioError("changed while the build ran (its content differs from when the "
                         "build was planned); run the build again")
    try:
        info = probe(clip.path)
    except AudioError:
        if piece.segment > 0:
            return []
        raise
    targets = list(zip(resolve(list(config.targets)), config.specs(), strict=True))
    rows: list[tuple[int, ClipArrays]] = []
    segments = decode(clip.path, config.sample_rate, max_seconds=config.max_seconds,
                      first=piece.segment, count=None if piece.last else 1, info=info)
    for k, y in enumerate(segments, start=piece.segment):
        if len(y) < config.min_samples:
            if k == 0:
                raise AudioError(
                    f"too short: {len(y) / config.sample_rate:.3f} s "
                    f"< {config.min_seconds} s minimum"
                )
            break  # the final segment, too short: dropped (the file's others are kept)
        rows.append((k, _arrays(clip, y, sha1, targets, config)))
        del y
    if piece.n_segments > 1 or len(rows) > 1 or (rows and rows[0][0] > 0):
        for k, row in rows:
            meta = {**clip.meta, "segment": str(k),
                    "segment_start_seconds": f"{k * config.max_seconds:g}"}
            row.clip = replace(clip, id=f"{clip.id}@{k:04d}", meta=meta)
    return [row for _, row in rows]


def _arrays(
    clip: Clip, y: np.ndarray, sha1: str, targets: list[tuple[Target, TargetSpec]],
    config: ExtractConfig,
) -> ClipArrays:
    """Every target of one clip in the dtype its stored spec declares (8-bit codes with
    their offsets and scales for ``CODE_DTYPE``), with the statistics of the values a reader
    gets back."""
    decoded = DecodedClip(y, config.sample_rate, config.hop)
    stored: dict[str, np.ndarray] = {}
    stats: dict[str, Stats] = {}
    affine: dict[str, np.ndarray] = {}
    for target, spec in targets:
        if spec.dtype == CODE_DTYPE:
            stored[spec.name], affine[spec.name] = encode_codes(target(decoded))
            stats[spec.name] = Stats.of(decode_codes(stored[spec.name], affine[spec.name]))
        else:
            stored[spec.name] = to_storage(target(decoded), spec.dtype)
            stats[spec.name] = Stats.of(stored[spec.name])
    waveform = to_storage(y, "int16") if config.with_waveform else None
    return ClipArrays(clip, len(y), sha1, waveform, stored, stats, affine)


def extract_partition(items: Sequence[Piece | Clip], config: ExtractConfig) -> PartitionResult:
    """Extract every piece (or whole clip) of a partition; a failing one becomes an error
    row ``(path, reason)`` (one for the pieces of a clip refused for the same reason), and
    a clip that cannot be stored as UTF-8 (a file name that is not) is always one.

    The single-threaded numeric libraries are what makes one task per core the right
    granularity, so BLAS and numba threads are pinned to one per process.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = PartitionResult()
    seen: set[tuple[str, str, str]] = set()
    for item in items:
        try:
            if isinstance(item, Piece):
                result.clips.extend(extract_piece(item, config))
            else:
                result.clips.extend(extract_clip(item, config))
        except AudioError as e:
            error = (item.path, str(e))
        except Exception as e:  # noqa: BLE001 - a library failing on odd input ends one clip
            error = (item.path, f"{type(e).__name__}: {e}")
        else:
            continue
        clip = item.clip if isinstance(item, Piece) else item
        if (clip.id, *error) not in seen:  # a file's pieces refusing it for the same reason
            seen.add((clip.id, *error))
            result.errors.append(error)
    return result
