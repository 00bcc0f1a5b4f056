"""Decoding: any file libsndfile reads (wav, flac, ogg, mp3, ...) to mono float32 at the
store's sample rate, in bounded memory.

The file is read in blocks, each block is downmixed and fed to a streaming soxr resampler,
and the output is cut into segments of at most ``max_seconds``: a one-hour file never
holds more than one segment of audio (plus one block) in memory.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator

import numpy as np

from featurestore.errors import FeatureStoreError

RESAMPLE_QUALITY = "HQ"


class AudioError(FeatureStoreError):
    """An input file that cannot be used; the message is the reason stored in the error
    table."""


def decode(
    path: str | os.PathLike[str],
    sample_rate: int,
    *,
    max_seconds: float = 600.0,
    block_seconds: float = 10.0,
) -> Iterator[np.ndarray]:
    """Decode ``path`` to mono float32 at ``sample_rate``, in segments.

    Parameters
    ----------
    path : path-like
        An audio file in a format libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3, ...).
    sample_rate : int
        Output sample rate in Hz. Other rates are resampled with soxr (high quality).
    max_seconds : float
        Longest segment yielded, in seconds. A longer file yields consecutive segments.
    block_seconds : float
        Decoding block length, in seconds of the source: bounds memory.

    Yields
    ------
    np.ndarray, shape (n,), float32
        Consecutive segments covering the file, each of at most
        ``round(max_seconds * sample_rate)`` samples.

    Raises
    ------
    AudioError
        The file cannot be opened or decoded, or it holds no samples, or it ends before
        the length its header declares.
    """
    import soundfile as sf
    import soxr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError("file not found")
    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - libsndfile's message is the reason
        # (without the "Error opening '<path>': " prefix: the error row names the file)
        raise AudioError(f"cannot decode: {getattr(e, 'error_string', None) or e}") from None
    if info.frames == 0:
        raise AudioError("no audio samples (zero-length file)")
    # libsndfile shortens a WAV/AIFF whose data ends early to what is there, silently:
    # the header's own count is what tells a truncated file from a short one.
    declared = max(info.frames, declared_frames(path, info.subtype) or 0)
    if info.samplerate <= 0:
        raise AudioError(f"invalid sample rate {info.samplerate}")
    seg_len = max(1, round(max_seconds * sample_rate))
    block = max(1, round(block_seconds * info.samplerate))
    stream = (
        None if info.samplerate == sample_rate
        else soxr.ResampleStream(info.samplerate, sample_rate, 1, dtype="float32",
                                 quality=RESAMPLE_QUALITY)
    )
    pending: list[np.ndarray] = []
    n_pending = 0
    n_read = 0
    try:
        with sf.SoundFile(path) as f:
            while True:
                x = f.read(block, dtype="float32", always_2d=True)
                last = len(x) < block
                n_read += len(x)
                mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
                out = mono if stream is None else stream.resample_chunk(mono, last=last)
                if len(out):
                    pending.append(np.ascontiguousarray(out, dtype=np.float32))
                    n_pending += len(out)
                while n_pending >= seg_len:
                    joined = np.concatenate(pending)
                    yield joined[:seg_len]
                    rest = joined[seg_len:]
                    pending, n_pending = ([rest], len(rest)) if len(rest) else ([], 0)
                if last:
                    break
    except AudioError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's reason
        raise AudioError(f"cannot decode after {n_read} samples: {e}") from None
    if n_read == 0:
        raise AudioError("no audio samples")
    # mp3 headers only estimate the length; for exact formats a short read is truncation.
    if info.format != "MP3" and n_read < declared:
        raise AudioError(f"truncated: header declares {declared} samples, decoded {n_read}")
    if n_pending:
        yield np.concatenate(pending)


_PCM_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4,
              "DOUBLE": 8, "ULAW": 1, "ALAW": 1}


def declared_frames(path: str | os.PathLike[str], subtype: str) -> int | None:
    """The number of sample frames a WAV (RIFF/RIFX) or AIFF header declares, or None
    when the file is of another container, uses a compressed encoding, or leaves the size
    open (streaming writers put 0 or 0xFFFFFFFF there)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12:
                return None
            if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
                endian, wav = ("<" if head[:4] == b"RIFF" else ">"), True
            elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                endian, wav = ">", False
            else:
                return None
            block_align = 0
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk_id, n = struct.unpack(f"{endian}4sI", f.read(8))
                if wav and chunk_id == b"fmt ":
                    fmt = f.read(16)
                    if len(fmt) < 16:
                        return None
                    block_align = struct.unpack(f"{endian}H", fmt[12:14])[0]
                elif wav and chunk_id == b"data":
                    if n in (0, 0xFFFFFFFF) or subtype not in _PCM_BYTES or not block_align:
                        return None
                    return n // block_align
                elif not wav and chunk_id == b"COMM":
                    comm = f.read(6)
                    if len(comm) < 6 or subtype not in _PCM_BYTES:
                        return None
                    return int(struct.unpack(">hI", comm)[1])
                pos += 8 + n + (n & 1)
    except (OSError, struct.error):
        return None
    return None


def sha1_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-1 hex digest of the file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()
