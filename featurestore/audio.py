"""Decoding: any file libsndfile reads (wav, flac, ogg, mp3, ...) to mono float32 at the
store's sample rate, in bounded memory, from any segment on.

:func:`probe` reads a file's header and refuses what cannot be real audio before anything
is decoded. :func:`decode` reads the file in blocks, downmixes each block and feeds it to a
streaming soxr resampler, and cuts the output into segments of at most ``max_seconds``: a
one-hour file never holds more than one segment of audio (plus one block) in memory.
Decoding can start at any segment: the source is entered by a seek, a little before the
segment (the pre-roll, decoded and dropped), so that a segment decoded alone is the same
samples as that segment of the whole file decoded in one stream: bit for bit for WAV,
FLAC and Vorbis at the file's own rate; to float rounding (below 1e-6) when resampled,
and for MP3 (whose decoder, entered by a seek, rounds a little differently).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from featurestore.errors import FeatureStoreError

RESAMPLE_QUALITY = "HQ"

MIN_SAMPLE_RATE = 1000
"""Lowest sample rate (Hz) of a source file and of a store: a header declaring less (a few
hertz and hours of "audio" in a few kilobytes) is not real audio and is refused before
decoding, and a store at such a rate holds no music to learn from."""

MAX_SAMPLE_RATE = 1_000_000
"""Highest sample rate (Hz) of a source file accepted (768 kHz is the highest audio rate
in use); a header declaring more is refused before decoding."""

RESAMPLER_PREROLL = 2048
"""Pre-roll before a segment decoded alone, in samples at the lower of the file's and the
store's rates: soxr's high-quality filter settles within about 128 of them (measured from
1 kHz to 384 kHz sources), so what is kept does not depend on where decoding started."""

CODEC_PREROLL = 16384
"""Further pre-roll in source frames: a Vorbis decoder gets the first block after a seek
wrong (measured: up to 1022 frames; Vorbis blocks are at most 8192 frames long)."""

MAX_BLOCK_SAMPLES = 1 << 21
"""At most this many samples (frames times channels) are read at once, whatever the
header declares (8 MB as float32)."""


class AudioError(FeatureStoreError):
    """An input file that cannot be used; the message is the reason stored in the error
    table."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, checked by :func:`probe`.

    Parameters
    ----------
    frames : int
        Sample frames (per channel) the decoder delivers; for MP3 an estimate.
    samplerate : int
        Hz, from :data:`MIN_SAMPLE_RATE` to :data:`MAX_SAMPLE_RATE`.
    channels : int
    format, subtype : str
        libsndfile's names (``"WAV"``, ``"PCM_16"``, ...).
    """

    frames: int
    samplerate: int
    channels: int
    format: str
    subtype: str

    @property
    def exact(self) -> bool:
        """Whether ``frames`` is exact (every format but MP3, whose headers estimate)."""
        return self.format != "MP3"


def probe(path: str | os.PathLike[str]) -> AudioInfo:
    """Read and check a file's header without decoding its audio.

    Parameters
    ----------
    path : path-like
        An audio file in a format libsndfile reads.

    Returns
    -------
    AudioInfo

    Raises
    ------
    AudioError
        The file is missing or unreadable; its header declares a sample rate outside
        [:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`] or no samples; or it holds less
        data than its header declares (a WAV/AIFF whose data chunk is larger than what the
        file holds, or a file whose last declared frame cannot be read).
    """
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError("file not found")
    try:
        sfi = sf.info(path)
    except Exception as e:  # noqa: BLE001 - libsndfile's message is the reason
        # (without the "Error opening '<path>': " prefix: the error row names the file)
        raise AudioError(f"cannot decode: {getattr(e, 'error_string', None) or e}") from None
    info = AudioInfo(int(sfi.frames), int(sfi.samplerate), int(sfi.channels), sfi.format,
                     sfi.subtype)
    if info.samplerate < MIN_SAMPLE_RATE:
        raise AudioError(f"unusable header: sample rate {info.samplerate} Hz is below the "
                         f"{MIN_SAMPLE_RATE} Hz minimum")
    if info.samplerate > MAX_SAMPLE_RATE:
        raise AudioError(f"unusable header: sample rate {info.samplerate} Hz is above the "
                         f"{MAX_SAMPLE_RATE} Hz maximum")
    if info.frames <= 0:
        raise AudioError("no audio samples (zero-length file)")
    # libsndfile shortens a WAV/AIFF whose data ends early to what is there, silently:
    # the header's own count is what tells a truncated file from a short one.
    declared = declared_frames(path, info.subtype) or 0
    if declared > info.frames:
        raise AudioError(f"truncated: header declares {declared} samples, "
                         f"decoded {info.frames}")
    if info.exact:
        # Other formats (FLAC: the stream header's count) fail to seek to a declared end
        # that is not there; one frame read there costs a seek, not a decode.
        try:
            with sf.SoundFile(path) as f:
                f.seek(info.frames - 1)
                ok = len(f.read(1, dtype="float32")) == 1
            reason = "" if ok else "nothing there"
        except Exception as e:  # noqa: BLE001 - any failure there means the end is missing
            ok, reason = False, str(getattr(e, "error_string", None) or e)
        if not ok:
            raise AudioError(f"truncated: header declares {info.frames} samples, the last "
                             f"one cannot be read ({reason})")
    return info


def output_length(frames: int, file_rate: int, sample_rate: int) -> int:
    """Samples at ``sample_rate`` that decoding ``frames`` source frames at ``file_rate``
    yields: ``frames * sample_rate / file_rate`` rounded half up (soxr's rule)."""
    if file_rate == sample_rate:
        return frames
    return (2 * frames * sample_rate + file_rate) // (2 * file_rate)


def segment_length(max_seconds: float, sample_rate: int) -> int:
    """Samples in a full segment of ``max_seconds`` at ``sample_rate`` (at least 1)."""
    return max(1, round(max_seconds * sample_rate))


def downmix(x: np.ndarray) -> np.ndarray:
    """The mean of the channels, frame by frame.

    Parameters
    ----------
    x : np.ndarray, shape (n_frames, n_channels), float32

    Returns
    -------
    np.ndarray, shape (n_frames,), float32
        Equal, bit for bit, to ``x.mean(axis=1)``, which numpy computes about 10x slower
        on this layout (a reduction along the short, contiguous axis): channels are added
        one after the other, then divided by their count.
    """
    if x.shape[1] == 1:
        return x[:, 0]
    y = x[:, 0].copy()
    for c in range(1, x.shape[1]):
        y += x[:, c]
    y /= np.float32(x.shape[1])
    return y


def decode(
    path: str | os.PathLike[str],
    sample_rate: int,
    *,
    max_seconds: float = 600.0,
    block_seconds: float = 10.0,
    first: int = 0,
    count: int | None = None,
    info: AudioInfo | None = None,
) -> Iterator[np.ndarray]:
    """Decode ``path`` to mono float32 at ``sample_rate``, in segments.

    Parameters
    ----------
    path : path-like
        An audio file in a format libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3, ...).
    sample_rate : int
        Output sample rate in Hz. Other rates are resampled with soxr (high quality).
    max_seconds : float
        Segment length, in seconds: segment ``k`` is output samples
        ``[k * L, (k + 1) * L)`` of the whole file, ``L = round(max_seconds * sample_rate)``;
        the last one may be shorter.
    block_seconds : float
        Decoding block length, in seconds of the source: bounds memory.
    first : int
        The first segment to yield. Decoding starts a little before it (a seek), not at
        the start of the file: it costs the same whatever ``first`` is.
    count : int, optional
        Yield at most this many segments (default: all, to the end of the file; only
        then are the end-of-file checks made).
    info : AudioInfo, optional
        The file's :func:`probe`, when the caller has it (default: probed here).

    Yields
    ------
    np.ndarray, shape (n,), float32
        Consecutive segments from segment ``first``, each of at most ``L`` samples; none
        when the file ends before segment ``first``.

    Raises
    ------
    AudioError
        As :func:`probe`; or decoding fails, or the file holds no samples, or it ends
        before the length its header declares.
    """
    import soundfile as sf
    import soxr

    path = os.fspath(path)
    if info is None:
        info = probe(path)
    if count is not None and count < 1:
        return
    file_rate = info.samplerate
    seg_len = segment_length(max_seconds, sample_rate)
    start = first * seg_len  # first output sample wanted
    resampled = file_rate != sample_rate
    # Decoding starts at source frame s0 <= the segment's start, on the grid where source
    # and output samples coincide (multiples of `step` source frames, `per_step` output
    # samples), so that the resampler's output is on the same grid as the whole file's.
    g = math.gcd(file_rate, sample_rate)
    step, per_step = file_rate // g, sample_rate // g
    m0 = 0
    if start > 0:
        preroll = math.ceil(CODEC_PREROLL * sample_rate / file_rate)
        if resampled:
            preroll += math.ceil(RESAMPLER_PREROLL * sample_rate / min(file_rate, sample_rate))
        m0 = max(0, start - preroll) // per_step * per_step
    s0 = m0 // per_step * step
    drop = start - m0  # output samples of the pre-roll, decoded and dropped
    if info.exact and s0 >= info.frames:
        return
    block = max(1, min(round(block_seconds * file_rate), MAX_BLOCK_SAMPLES // info.channels))
    stream = (
        soxr.ResampleStream(file_rate, sample_rate, 1, dtype="float32",
                            quality=RESAMPLE_QUALITY) if resampled else None
    )
    out = np.empty(seg_len, dtype=np.float32)  # pages are touched only as it fills
    filled = 0
    n_yielded = 0
    pos = s0  # source frames read, from the start of the file
    try:
        with sf.SoundFile(path) as f:
            if s0:
                f.seek(s0)
            while True:
                x = f.read(block, dtype="float32", always_2d=True)
                last = len(x) < block
                pos += len(x)
                mono = downmix(x)
                y = mono if stream is None else stream.resample_chunk(mono, last=last)
                del x, mono
                if drop:
                    cut = min(drop, len(y))
                    y, drop = y[cut:], drop - cut
                while len(y):
                    take = min(seg_len - filled, len(y))
                    out[filled : filled + take] = y[:take]
                    filled += take
                    y = y[take:]
                    if filled == seg_len:
                        yield out
                        n_yielded += 1
                        if n_yielded == count:
                            return
                        out = np.empty(seg_len, dtype=np.float32)
                        filled = 0
                if last:
                    break
    except AudioError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's reason
        raise AudioError(f"cannot decode after {pos} samples: {e}") from None
    if pos == 0:
        raise AudioError("no audio samples")
    # mp3 headers only estimate the length; for exact formats a short read is truncation.
    if info.exact and pos < info.frames:
        raise AudioError(f"truncated: header declares {info.frames} samples, decoded {pos}")
    if filled:
        yield out[:filled]


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


def content_hash(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """xxh3-128 hex digest of the file's bytes: what a shard's identity keys a file on.

    A non-cryptographic hash about ten times faster than SHA-1 (see benchmarks/RESULTS.md),
    so that a resumed build can re-hash the whole corpus to find what changed.

    Raises
    ------
    OSError
        The file cannot be read.
    """
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()


def file_digests(path: str | os.PathLike[str], chunk: int = 1 << 20) -> tuple[str, str]:
    """``(sha1, xxh3_128)`` hex digests of the file's bytes, read once: the store's
    ``sha1`` column and :func:`content_hash`.

    Raises
    ------
    OSError
        The file cannot be read.
    """
    import xxhash

    sha1, xxh = hashlib.sha1(), xxhash.xxh3_128()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            sha1.update(data)
            xxh.update(data)
    return sha1.hexdigest(), xxh.hexdigest()
