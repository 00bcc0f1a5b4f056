"""Frozen-encoder clip embeddings, cached in a sidecar file beside the store.

An :class:`Embedder` turns a store's clips into frame embeddings ``[T, D]``; three kinds
come from :func:`load_embedder`:

* a pre-trained encoder (``runs/x/encoder.pt``, read with :func:`trainer.load_encoder`);
* an untrained encoder (``random:pase+``: the architecture with its seeded random
  initialisation, the baseline that shows what pre-training adds);
* ``mfcc-stats``, the classical baseline: the store's own ``mfcc`` rows (20 MFCC with
  deltas and delta-deltas) as frame features, so that pooling gives their mean and
  standard deviation over the clip;
* ``targets-stats``, what the pre-training workers teach without any network: every
  *default* frame-rate target of the store (its spec says ``default=True``) as frame
  features, pooled like ``mfcc-stats``, with the default clip-rate targets appended as
  they are.

:func:`clip_embeddings` pools the frames of every clip into one vector ("mean" or
"mean+std") and caches the result in ``<store>.embeddings/<key>-<pooling>-<crop>.h5``
(DESIGN.md, "Store schema": derived data never goes into the store itself). The cache
records the store's identity (its ``created`` attribute, clip count and a digest of the
clip ids and checksums), so a rebuilt store is embedded again.

Encoders run in eval mode under ``torch.inference_mode`` (bf16 autocast on CUDA, and on
the CPU where an embedder asks for it with ``cpu_bf16``). A clip is cut into crops of at
most ``crop_seconds`` (whole frames; the last, shorter crop is kept), crops of equal length
from many clips are batched together, and the frames of a clip's crops are concatenated in
order before pooling. A frame-local encoder therefore gives exactly the whole-clip result;
a recurrent one (PASE+'s GRU) sees each crop on its own.

Shapes are bounded, because every new input shape costs a CPU encoder a set-up of its
kernels: a shorter last crop is zero-padded at its end to the next of ``buckets`` lengths
(multiples of ``ceil(crop / buckets)`` frames, :func:`bucket_frames`) and the frames that
the padding adds are dropped before pooling; a batch smaller than ``batch_size`` runs as
power-of-two pieces (:func:`batch_pieces`). A crop that is already a bucket length is
encoded exactly as without buckets; otherwise only frames within the encoder's receptive
field of the padding change (for PASE+'s GRU, the backward direction starts on the padding).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featurestore.store import Store, open_store
from trainer.data import clip_wave, crop_bounds
from trainer.device import resolve_device
from trainer.encoder_file import architecture_of, load_encoder, read_encoder_file
from trainer.specs import MFCC_STATS, TARGETS_STATS, parse_spec

POOLINGS = ("mean", "mean+std")
DEFAULT_BUCKETS = 8
"""Crop lengths per crop size that an encoder embedder pads last crops to (0: none)."""
MFCC_STATS_KEY = "mfcc-stats-v1"  # bump when what mfcc-stats computes changes
TARGETS_STATS_KEY = "targets-stats-v1"  # bump when what targets-stats computes changes
CACHE_FORMAT = "trainer-embeddings/1"


def pool(frames: np.ndarray, pooling: str) -> np.ndarray:
    """Pool frame embeddings ``[T, D]`` into one vector (computed in float64).

    Parameters
    ----------
    frames : np.ndarray
        ``[T, D]``; ``T = 0`` pools to zeros.
    pooling : {"mean", "mean+std"}
        ``mean`` gives ``[D]``; ``mean+std`` gives ``[2D]``: the mean, then the population
        standard deviation (``ddof=0``) of every dimension.

    Returns
    -------
    np.ndarray
        float32.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
    x = np.asarray(frames, dtype=np.float64)
    if len(x) == 0:
        x = np.zeros((1, x.shape[1]))
    parts = [x.mean(axis=0)] + ([x.std(axis=0)] if pooling == "mean+std" else [])
    return np.concatenate(parts).astype(np.float32)


def bucket_frames(n_frames: int, crop_frames: int, buckets: int) -> int:
    """The length a crop of ``n_frames`` is padded to before it is encoded.

    Parameters
    ----------
    n_frames : int
        Frames of the crop, ``1 <= n_frames <= crop_frames``.
    crop_frames : int
        The longest crop.
    buckets : int
        Number of lengths: the next multiple of ``ceil(crop_frames / buckets)``, at most
        ``crop_frames``; 0 (or 1 with ``n_frames == crop_frames``) keeps ``n_frames``.

    Returns
    -------
    int
        At least ``n_frames``; one of at most ``buckets`` values for a given
        ``crop_frames``.
    """
    if buckets <= 0 or n_frames >= crop_frames:
        return n_frames
    step = -(-crop_frames // buckets)
    return min(crop_frames, -(-n_frames // step) * step)


def batch_pieces(n: int, batch_size: int) -> list[int]:
    """Sizes of the encoder calls for ``n`` crops of one length: full batches of
    ``batch_size``, then the rest as decreasing powers of two (13 → 8, 4, 1), so that a
    run sees at most ``1 + log2(batch_size)`` batch sizes."""
    sizes = [batch_size] * (n // batch_size)
    rest = n % batch_size
    while rest:
        p = 1 << (rest.bit_length() - 1)
        sizes.append(p)
        rest -= p
    return sizes


def _sha1_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- embedders


class Embedder:
    """What turns a store's clips into frame embeddings.

    Attributes
    ----------
    name : str
        What it is, as given: ``runs/x/encoder.pt``, ``random:pase+``, ``mfcc-stats``.
    key : str
        A content hash that names its cache files: the same key means the same
        embeddings.
    """

    name: str
    key: str

    def check(self, store: Store) -> None:
        """Raise ``ValueError`` when this embedder cannot embed ``store``."""

    def frames(self, store: Store, i: int, device: str | torch.device = "cpu") -> np.ndarray:
        """Frame embeddings ``[T, D]`` (float32) of clip ``i`` of ``store``."""
        raise NotImplementedError

    def pooled(self, store: Store, i: int, pooling: str,
               device: str | torch.device = "cpu") -> np.ndarray:
        """The pooled embedding of clip ``i``: :func:`pool` of :meth:`frames`."""
        return pool(self.frames(store, i, device), pooling)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, key={self.key[:12]!r})"


class MfccStatsEmbedder(Embedder):
    """The classical baseline: the store's ``mfcc`` rows of a clip as its frame features."""

    def __init__(self) -> None:
        self.name = MFCC_STATS
        self.key = MFCC_STATS_KEY

    def check(self, store: Store) -> None:
        if "mfcc" not in store.targets:
            raise ValueError(
                f"{store.path}: the store has no 'mfcc' target, which mfcc-stats embeds "
                f"(it has {', '.join(store.targets) or 'none'}); add it with "
                f"'featurestore build SOURCE -o {store.path} --targets mfcc'"
            )

    def frames(self, store: Store, i: int, device: str | torch.device = "cpu") -> np.ndarray:
        self.check(store)
        return np.asarray(store.frames_of("mfcc", i), dtype=np.float32)


class TargetsStatsEmbedder(Embedder):
    """What pre-training teaches, without a network: the store's default targets.

    The frame features of a clip are its rows of every frame-rate target whose spec says
    ``default=True``, concatenated in sorted target-name order, so that ``mean+std``
    pooling gives the mean and then the standard deviation of every such target (the
    same pooling, and the same absence of any scaling, as ``mfcc-stats``: the probe
    z-scores the features with the training clips' statistics). Default clip-rate
    targets are appended to the pooled vector as they are (one row per clip). Sample-rate
    data (the waveform) is the encoder's input and is not a feature here.
    """

    def __init__(self) -> None:
        self.name = TARGETS_STATS
        self.key = TARGETS_STATS_KEY

    @staticmethod
    def targets_of(store: Store) -> tuple[list[str], list[str]]:
        """The store's default frame-rate and clip-rate target names, each sorted."""
        specs = store.specs
        default = sorted(n for n in store.targets if specs[n].default)
        return ([n for n in default if specs[n].rate == "frame"],
                [n for n in default if specs[n].rate == "clip"])

    def dim(self, store: Store, pooling: str = "mean+std") -> int:
        """Dimensions of a pooled embedding of ``store``: ``(1 or 2) x`` the frame-rate
        dims plus the clip-rate dims."""
        frame, clip = self.targets_of(store)
        per = 2 if pooling == "mean+std" else 1
        return (per * sum(store.specs[n].dim for n in frame)
                + sum(store.specs[n].dim for n in clip))

    def check(self, store: Store) -> None:
        frame, clip = self.targets_of(store)
        if not frame and not clip:
            raise ValueError(
                f"{store.path}: the store has no default target, which targets-stats "
                f"embeds (it has {', '.join(sorted(store.targets)) or 'none'}); build it "
                "with the default targets ('featurestore build SOURCE -o STORE')"
            )

    def frames(self, store: Store, i: int, device: str | torch.device = "cpu") -> np.ndarray:
        self.check(store)
        frame, _ = self.targets_of(store)
        n = int(store.clips["n_frames"][i])
        if not frame:
            return np.zeros((n, 0), dtype=np.float32)
        return np.concatenate([np.asarray(store.frames_of(name, i), dtype=np.float32)
                               for name in frame], axis=1)

    def pooled(self, store: Store, i: int, pooling: str,
               device: str | torch.device = "cpu") -> np.ndarray:
        _, clip = self.targets_of(store)
        parts = [pool(self.frames(store, i, device), pooling)]
        parts += [np.asarray(store.frames_of(name, i), dtype=np.float32).reshape(-1)
                  for name in clip]
        return np.concatenate(parts).astype(np.float32)


class EncoderEmbedder(Embedder):
    """Frame embeddings of a frozen waveform encoder (``wave [B, T*hop] → [B, dim, T]``).

    Parameters
    ----------
    name, key : str
        See :class:`Embedder`.
    build : callable
        Returns the encoder (an ``nn.Module`` with ``hop`` and ``dim``); called once, on
        first use, so that a cached result never builds or loads the model.
    sample_rate : int
        The sample rate the encoder expects, unless the encoder says otherwise (a
        ``sample_rate`` attribute, as :func:`trainer.load_encoder` sets, or in its
        ``config()``).
    crop_seconds : float
        Longest crop that :meth:`frames` feeds the encoder at once.
    batch_size : int
        Crops per encoder call in :meth:`frames`.
    buckets : int
        Lengths that a shorter last crop is padded to (:func:`bucket_frames`; 0: none).
        Recorded in the embeddings cache.
    cpu_bf16 : bool
        Run the encoder under bf16 autocast on the CPU too (about 1.5x faster where the
        CPU has bf16 instructions; pooled embeddings change by about 0.3 %, see
        benchmarks/RESULTS.md). Recorded in the embeddings cache.
    """

    def __init__(self, name: str, key: str, build: Callable[[], nn.Module], *,
                 sample_rate: int = 16000, crop_seconds: float = 10.0,
                 batch_size: int = 16, buckets: int = DEFAULT_BUCKETS,
                 cpu_bf16: bool = False) -> None:
        self.name, self.key = name, key
        self._build = build
        self._sample_rate = int(sample_rate)
        self.crop_seconds = float(crop_seconds)
        self.batch_size = max(1, int(batch_size))
        self.buckets = max(0, int(buckets))
        self.cpu_bf16 = bool(cpu_bf16)

    @cached_property
    def encoder(self) -> nn.Module:
        """The encoder, in eval mode with gradients off."""
        enc = self._build().eval()
        for p in enc.parameters():
            p.requires_grad_(False)
        return enc

    @property
    def sample_rate(self) -> int:
        enc = self.encoder
        rate = getattr(enc, "sample_rate", None)
        if rate is None and hasattr(enc, "config"):
            rate = enc.config().get("sample_rate")
        return int(rate) if rate is not None else self._sample_rate

    @property
    def hop(self) -> int:
        return int(self.encoder.hop)

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def check(self, store: Store) -> None:
        ours = self.sample_rate / self.hop
        theirs = store.sample_rate / store.hop
        if ours != theirs:
            raise ValueError(
                f"{self.name}: encoder frame rate {ours:g} Hz does not match the store's "
                f"{theirs:g} Hz ({store.path}: sample rate {store.sample_rate}, hop "
                f"{store.hop}; encoder: sample rate {self.sample_rate}, hop {self.hop})"
            )
        if self.sample_rate != store.sample_rate:
            raise ValueError(
                f"{self.name}: the encoder expects {self.sample_rate} Hz audio, the store "
                f"{store.path} holds {store.sample_rate} Hz (rebuild it with "
                f"--sample-rate {self.sample_rate})"
            )

    def encode(self, waves: torch.Tensor) -> torch.Tensor:
        """Encode equal-length crops ``[B, t * hop]`` (on the encoder's device) into
        frames ``[B, t, dim]`` (float32), in eval mode without gradients."""
        enc = self.encoder
        bf16 = waves.device.type == "cuda" or (self.cpu_bf16 and waves.device.type == "cpu")
        with torch.inference_mode(), torch.autocast(waves.device.type, dtype=torch.bfloat16,
                                                    enabled=bf16):
            out = enc(waves)
            return out.float().transpose(1, 2)

    def encode_crops(self, crops: list[np.ndarray], crop_frames: int, device: torch.device,
                     batch_size: int | None = None) -> list[np.ndarray]:
        """Frames ``[t_i, dim]`` (float32) of crops ``[t_i * hop]`` of one bucket
        (:func:`bucket_frames`) of ``crop_frames``: each is zero-padded at its end to the
        bucket length, encoded in :func:`batch_pieces` of ``batch_size`` (default: the
        embedder's), and cut back to its own ``t_i`` frames."""
        hop = self.hop
        batch_size = self.batch_size if batch_size is None else max(1, int(batch_size))
        lengths = [len(c) // hop for c in crops]
        padded = max(bucket_frames(t, crop_frames, self.buckets) for t in lengths)
        out: list[np.ndarray] = []
        k = 0
        for size in batch_pieces(len(crops), batch_size):
            batch = np.zeros((size, padded * hop), dtype=np.float32)
            for row, crop in enumerate(crops[k : k + size]):
                batch[row, : len(crop)] = crop
            frames = self.encode(torch.from_numpy(batch).to(device)).cpu().numpy()
            out.extend(f[:t] for f, t in zip(frames, lengths[k : k + size], strict=True))
            k += size
        return out

    def to(self, device: torch.device) -> EncoderEmbedder:
        """Move the encoder to ``device``; returns self."""
        self.encoder.to(device)
        return self

    def frames(self, store: Store, i: int, device: str | torch.device = "cpu") -> np.ndarray:
        self.check(store)
        device = resolve_device(device)
        self.to(device)
        hop = self.hop
        wave = clip_wave(store, i)
        crop_frames = max(1, int(self.crop_seconds * self.sample_rate) // hop)
        bounds = crop_bounds(len(wave) // hop, crop_frames)
        crops = [wave[a * hop : b * hop] for a, b in bounds]
        full = [c for c in crops if len(c) == crop_frames * hop]
        out = self.encode_crops(full, crop_frames, device) if full else []
        if len(full) < len(crops):
            out += self.encode_crops(crops[-1:], crop_frames, device)
        return np.concatenate(out).astype(np.float32)


STORE_EMBEDDERS: dict[str, type[Embedder]] = {
    MFCC_STATS: MfccStatsEmbedder, TARGETS_STATS: TargetsStatsEmbedder}
"""Encoder specs that read a feature store instead of audio (no network), by name."""


def load_embedder(spec: str, *, seed: int = 0, device: str | torch.device = "cpu",
                  encoder_kwargs: dict[str, Any] | None = None,
                  buckets: int = DEFAULT_BUCKETS, cpu_bf16: bool = False) -> Embedder:
    """The embedder named by ``spec``.

    Parameters
    ----------
    spec : str
        One of

        * a path to an ``encoder.pt`` (:func:`trainer.load_encoder`); key: sha1 of the
          file's bytes;
        * ``random:<encoder name>``: :func:`trainer.encoders.build_encoder` with
          ``encoder_kwargs`` (default: the encoder's defaults), initialised after
          ``torch.manual_seed(seed)`` (in a forked RNG: the caller's random state is left
          alone), eval mode; key: sha1 of (``random:<name>``, keyword arguments, seed);
        * ``random:<path to encoder.pt>``: the same for the architecture recorded in that
          file (its encoder name and keyword arguments; its weights are not used), so its
          key equals that of ``random:<name>`` with those arguments;
        * ``mfcc-stats``: the store's ``mfcc`` rows (key ``mfcc-stats-v1``);
        * ``targets-stats``: the store's default targets (key ``targets-stats-v1``; see
          :class:`TargetsStatsEmbedder`).
    seed : int
        Initialisation seed of ``random:`` encoders.
    device : str or torch.device
        Where the encoder is put when it is first used (``auto``: CUDA if available).
    encoder_kwargs : dict, optional
        Constructor arguments of a ``random:<encoder name>`` encoder (a smaller
        configuration).
    buckets, cpu_bf16
        Of an encoder's :class:`EncoderEmbedder`.

    Returns
    -------
    Embedder
        Encoders are built or loaded lazily, on first use.

    Raises
    ------
    ValueError
        An unknown encoder name after ``random:`` or encoder argument, a file that is not
        an encoder file, ``encoder_kwargs`` with ``random:<path>``, or a device this
        machine lacks (:class:`trainer.device.DeviceError`).
    FileNotFoundError
        A path that does not exist.
    """
    from trainer.encoders import ENCODERS, build_encoder

    dev = resolve_device(device)
    parsed = parse_spec(spec)
    if parsed.kind == "store":
        return STORE_EMBEDDERS[spec]()
    if parsed.kind == "supervised":
        raise ValueError(f"{spec}: a supervised baseline is trained on a store's labels "
                         "(trainer probe), it does not embed")
    if parsed.kind == "random":
        target = parsed.target
        sample_rate = 16000
        if target in ENCODERS:
            name, kwargs = target, dict(encoder_kwargs or {})
        elif os.path.exists(target):
            if encoder_kwargs:
                raise ValueError(f"{spec}: the architecture comes from the encoder file; "
                                 "encoder_kwargs cannot change it")
            name, kwargs, sample_rate = architecture_of(target)
        else:
            raise ValueError(f"{spec!r}: {target!r} is neither a known encoder "
                             f"({', '.join(sorted(ENCODERS))}) nor an encoder file")
        key = hashlib.sha1(json.dumps([f"random:{name}", _full_config(name, kwargs),
                                       int(seed)], sort_keys=True).encode()).hexdigest()

        def build() -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                enc = build_encoder(name, **kwargs)
            return enc.to(dev)

        return EncoderEmbedder(spec, key, build, sample_rate=sample_rate, buckets=buckets,
                               cpu_bf16=cpu_bf16)
    if not os.path.exists(spec):
        raise FileNotFoundError(
            f"{spec}: no such encoder file (expected an encoder.pt, 'random:<encoder>', "
            f"{', '.join(repr(name) for name in STORE_EMBEDDERS)})")
    read_encoder_file(spec, mmap=True)  # an encoder file? (its weights are not read)

    def load() -> nn.Module:
        return load_encoder(spec, device=dev)

    return EncoderEmbedder(spec, _sha1_file(spec), load, buckets=buckets, cpu_bf16=cpu_bf16)


def _full_config(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every constructor argument of encoder ``name`` built with ``kwargs`` (defaults
    filled in, tuples as lists), so that equal architectures get equal keys. Built on the
    meta device: no memory, no random draws."""
    from trainer.encoders import build_encoder

    with torch.device("meta"):
        enc = build_encoder(name, **kwargs)
    config = enc.config() if hasattr(enc, "config") else kwargs
    return json.loads(json.dumps(config))


# ---------------------------------------------------------------------------- clip embeddings


@dataclass
class Embeddings:
    """One pooled embedding per clip of a store, with the clip table's columns.

    Attributes
    ----------
    ids : list of str
    X : np.ndarray, shape (n_clips, D'), float32
        ``D' = D`` for ``mean`` pooling, ``2 D`` for ``mean+std``.
    labels : list of str
        Multi-label clips joined by ``';'``; ``""`` when unlabelled.
    splits, groups : list of str
    key : str
        The embedder's key.
    pooling : str
    """

    ids: list[str]
    X: np.ndarray
    labels: list[str]
    splits: list[str]
    groups: list[str]
    key: str
    pooling: str


def cache_path(store_path: str | os.PathLike[str], key: str, pooling: str,
               crop_seconds: float) -> Path:
    """``<store>.embeddings/<key>-<pooling>-<crop_seconds>.h5``."""
    store_path = Path(store_path)
    folder = store_path.with_name(store_path.name + ".embeddings")
    return folder / f"{key}-{pooling}-{crop_seconds:g}.h5"


def store_identity(store: Store) -> dict[str, Any]:
    """What identifies a built store: its ``created`` attribute, clip count, and a digest
    of its clip ids and checksums."""
    h = hashlib.sha1()
    for col in ("id", "sha1", "n_samples"):
        h.update("\n".join(str(v) for v in store.clips[col].tolist()).encode())
        h.update(b"\0")
    return {"store_created": str(store.attrs.get("created", "")), "n_clips": store.n_clips,
            "clips_digest": h.hexdigest()}


def _settings(embedder: Embedder) -> dict[str, Any]:
    """How an encoder embedder computes (recorded in, and checked against, its cache):
    its crop buckets and CPU precision. Empty for store embedders."""
    if not isinstance(embedder, EncoderEmbedder):
        return {}
    return {"buckets": embedder.buckets, "cpu_bf16": int(embedder.cpu_bf16)}


def _read_cache(path: Path, identity: dict[str, Any], key: str, pooling: str,
                crop_seconds: float) -> np.ndarray | None:
    import h5py

    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            same = (a.get("format") == CACHE_FORMAT and a.get("key") == key
                    and a.get("pooling") == pooling
                    and float(a.get("crop_seconds", -1)) == float(crop_seconds)
                    and all(str(a.get(k)) == str(v) for k, v in identity.items()))
            if not same:
                return None
            return np.asarray(f["X"][...], dtype=np.float32)
    except (OSError, KeyError, ValueError, TypeError):
        return None  # unreadable or damaged: recompute and replace


def _write_cache(path: Path, X: np.ndarray, ids: list[str], identity: dict[str, Any],
                 embedder: Embedder, pooling: str, crop_seconds: float) -> None:
    """Write the cache file: laid out by h5py in memory, then written with plain writes
    into a temporary file renamed over ``path``. A cache is optional: when the disk is
    full (or unwritable) a warning says so, nothing is left behind and the embeddings are
    used uncached (HDF5 itself could crash at exit after failing to write a file)."""
    import io
    import warnings

    import h5py

    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        f.attrs["format"] = CACHE_FORMAT
        f.attrs["key"] = embedder.key
        f.attrs["name"] = embedder.name
        f.attrs["pooling"] = pooling
        f.attrs["crop_seconds"] = float(crop_seconds)
        for k, v in identity.items():
            f.attrs[k] = v
        f.create_dataset("X", data=X)
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            out.write(image.getbuffer())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"{path}: embeddings not cached ({e.strerror or e}); they are used "
                      "as computed", RuntimeWarning, stacklevel=3)
    finally:
        tmp.unlink(missing_ok=True)


def _encoder_batches(embedder: EncoderEmbedder, store: Store, crop_frames: int,
                     batch_size: int, device: torch.device,
                     on_batch: Callable[[int], None] = lambda frames: None,
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """Frame embeddings ``(clip, [T, D])`` of every clip, in clip order, computed in
    batches of equal-length crops drawn from many clips.

    Full crops fill batches of ``batch_size``; shorter last crops wait in buckets of their
    padded length (:func:`bucket_frames` with the embedder's ``buckets``). Pending crops
    are bounded (about ``4 * batch_size`` full crops' samples): when the bound is passed,
    every bucket is flushed, each in :func:`batch_pieces`.
    """
    hop = embedder.hop
    limit = 4 * batch_size * crop_frames
    buckets: dict[int, list[tuple[int, int, np.ndarray]]] = {}
    pending_frames = 0
    pieces: dict[int, list[np.ndarray | None]] = {}
    next_clip = 0

    def run(length: int) -> None:
        nonlocal pending_frames
        items = buckets.pop(length)
        pending_frames -= length * len(items)
        for k in range(0, len(items), batch_size):
            chunk = items[k : k + batch_size]
            out = embedder.encode_crops([w for _, _, w in chunk], crop_frames, device,
                                        batch_size)
            on_batch(sum(len(w) for _, _, w in chunk) // hop)
            for (clip, j, _), frames in zip(chunk, out, strict=True):
                pieces[clip][j] = frames

    def finished() -> Iterator[tuple[int, np.ndarray]]:
        nonlocal next_clip
        while next_clip in pieces and all(p is not None for p in pieces[next_clip]):
            parts = pieces.pop(next_clip)
            yield next_clip, np.concatenate(parts)  # type: ignore[arg-type]
            next_clip += 1

    for i in range(store.n_clips):
        wave = clip_wave(store, i)
        bounds = crop_bounds(len(wave) // hop, crop_frames)
        pieces[i] = [None] * len(bounds)
        for j, (a, b) in enumerate(bounds):
            length = bucket_frames(b - a, crop_frames, embedder.buckets)
            buckets.setdefault(length, []).append((i, j, wave[a * hop : b * hop]))
            pending_frames += length
        if len(buckets.get(crop_frames, ())) >= batch_size:
            run(crop_frames)
        if pending_frames > limit:
            for length in sorted(buckets):
                run(length)
        yield from finished()
    for length in sorted(buckets):
        run(length)
    yield from finished()


def clip_embeddings(spec: str | Embedder, store_path: str | os.PathLike[str], *,
                    pooling: str = "mean+std", device: str | torch.device = "auto",
                    batch_size: int = 16, crop_seconds: float = 10.0, cache: bool = True,
                    progress: bool = False) -> Embeddings:
    """Pooled frozen-encoder embeddings of every clip of a store, cached beside it.

    Parameters
    ----------
    spec : str or Embedder
        What :func:`load_embedder` reads (``random:`` encoders with seed 0), or an
        embedder.
    store_path : path-like
        One store file (read only: nothing is ever written into it).
    pooling : {"mean", "mean+std"}
        Pooling of a clip's frames (see :func:`pool`).
    device : str or torch.device
        ``auto``: CUDA when available, else CPU.
    batch_size : int
        Crops per encoder call.
    crop_seconds : float
        Longest crop fed to the encoder, rounded down to whole frames (at least one).
    cache : bool
        Read and write ``<store>.embeddings/<key>-<pooling>-<crop_seconds>.h5``. A cache
        written for another build of the store (another ``created`` time, clip count or
        clip table) is recomputed and replaced; the file is written under a temporary
        name and renamed.
    progress : bool
        A progress bar over the clips (stderr).

    Returns
    -------
    Embeddings

    Raises
    ------
    ValueError
        Unknown pooling; a device this machine lacks
        (:class:`trainer.device.DeviceError`); an encoder whose frame rate or sample rate
        differs from the store's; ``mfcc-stats`` on a store without ``mfcc``;
        ``targets-stats`` on a store without a default target.
    featurestore.errors.FeatureStoreError
        No such store, or not a readable store.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if crop_seconds <= 0:
        raise ValueError(f"crop_seconds must be positive, got {crop_seconds}")
    dev = resolve_device(device)
    store = open_store(store_path)
    embedder = load_embedder(spec, device=dev) if isinstance(spec, str) else spec
    c = store.clips
    ids = [str(v) for v in c["id"].tolist()]
    identity = {**store_identity(store), **_settings(embedder)}
    path = cache_path(store_path, embedder.key, pooling, crop_seconds)
    X = _read_cache(path, identity, embedder.key, pooling, crop_seconds) if cache else None
    if X is not None and len(X) != store.n_clips:
        X = None
    if X is None:
        X = _compute(embedder, store, pooling, dev, batch_size, crop_seconds, progress)
        if cache:
            try:
                _write_cache(path, X, ids, identity, embedder, pooling, crop_seconds)
            except OSError as e:  # a read-only folder: the result is still good
                warnings.warn(f"{path}: embeddings not cached ({e})", stacklevel=2)
    return Embeddings(
        ids=ids, X=X, labels=[str(v) for v in c["label"].tolist()],
        splits=[str(v) for v in c["split"].tolist()],
        groups=[str(v) for v in c["group"].tolist()], key=embedder.key, pooling=pooling,
    )


def _compute(embedder: Embedder, store: Store, pooling: str, device: torch.device,
             batch_size: int, crop_seconds: float, progress: bool) -> np.ndarray:
    from tqdm import tqdm

    embedder.check(store)
    # Frames of every clip as the crops see them (a clip under one frame is padded to one).
    n_frames = np.maximum(np.asarray(store.clips["n_frames"], dtype=np.int64), 1)
    per_second = store.sample_rate / store.hop
    crop_frames = 1
    if isinstance(embedder, EncoderEmbedder):
        embedder.to(device)
        crop_frames = max(1, int(crop_seconds * embedder.sample_rate) // embedder.hop)
        # The first call of a shape sets up kernels (several times a later call on a CPU):
        # done before the bar starts. The bar counts seconds of audio as each batch is
        # encoded (clips finish in bursts), so its rate and ETA are right from the first tick.
        full = int(np.sum(n_frames // crop_frames))
        if progress and full:
            embedder.encode(torch.zeros(min(batch_size, full), crop_frames * embedder.hop,
                                        device=device))
    # Counted in whole frames and shown in seconds (unit_scale): float seconds added up
    # could pass the total by a rounding error, and tqdm then warns.
    bar = tqdm(total=int(n_frames.sum()), disable=not progress, file=sys.stderr,
               unit="audio-s", unit_scale=1 / per_second, smoothing=0.05,
               desc=f"embedding {Path(store.path).name}")
    rows: list[np.ndarray] = []
    try:
        if isinstance(embedder, EncoderEmbedder):
            for _, frames in _encoder_batches(embedder, store, crop_frames, batch_size, device,
                                              bar.update):
                rows.append(pool(frames, pooling))
        else:
            for i in range(store.n_clips):
                rows.append(embedder.pooled(store, i, pooling, device))
                bar.update(int(n_frames[i]))
    finally:
        bar.close()
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(rows).astype(np.float32)


__all__ = [
    "DEFAULT_BUCKETS", "STORE_EMBEDDERS", "Embedder", "Embeddings", "EncoderEmbedder",
    "MfccStatsEmbedder", "TargetsStatsEmbedder", "batch_pieces", "bucket_frames",
    "cache_path", "clip_embeddings", "load_embedder", "pool",
]
