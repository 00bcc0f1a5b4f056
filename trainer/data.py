"""The data path: random aligned crops from memory-mapped feature stores, and whole clips
cut into consecutive crops (for embedding and evaluation).

One crop of ``T`` frames starting at frame ``f`` of a clip pairs with the samples
``[f * hop, (f + T) * hop)`` and with rows ``f .. f + T - 1`` of every frame-rate target
(DESIGN.md, "Frame grid"). A batch is gathered with one fancy index per array per store
file, from numpy memory maps (or from RAM or device copies), with no per-crop Python.

Randomness is a pure function of ``(seed, step, rank)``: batch ``k`` is the same whether
it is drawn in a straight run or after a resume, and a prefetch thread may run ahead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featurestore.errors import FeatureStoreError
from featurestore.store import Store, TargetSpec, combined_stats, open_stores

PCM_SCALE = 32768.0
"""int16 waveform samples divided by this are floats in [-1, 1)."""


def crop_bounds(n_frames: int, crop_frames: int) -> list[tuple[int, int]]:
    """Consecutive crops ``[start, stop)`` in frames covering ``n_frames`` frames.

    Parameters
    ----------
    n_frames : int
        Frames of the clip.
    crop_frames : int
        Longest crop, in frames (at least 1).

    Returns
    -------
    list of (int, int)
        Full crops of ``crop_frames`` and, when ``n_frames`` is not a multiple, a last
        shorter crop (always at least one frame). Empty for ``n_frames == 0``.
    """
    crop_frames = max(1, int(crop_frames))
    return [(s, min(s + crop_frames, n_frames)) for s in range(0, n_frames, crop_frames)]


def clip_wave(store: Store, i: int) -> np.ndarray:
    """Clip ``i`` of ``store`` as float32 in [-1, 1], cut to its whole frames
    (``n_frames * hop`` samples); a clip shorter than one hop is one frame of zeros."""
    n = int(store.clips["n_frames"][i])
    if n == 0:
        return np.zeros(store.hop, dtype=np.float32)
    return np.asarray(store.waveform_of(i)[: n * store.hop], dtype=np.float32) / PCM_SCALE


def clip_crops(store: Store, i: int, crop_frames: int) -> list[np.ndarray]:
    """Clip ``i`` (:func:`clip_wave`) in consecutive crops of at most ``crop_frames``
    frames (:func:`crop_bounds`), float32, ``[t * hop]`` each."""
    wave, hop = clip_wave(store, i), store.hop
    return [wave[a * hop : b * hop] for a, b in crop_bounds(len(wave) // hop, crop_frames)]


class DataError(FeatureStoreError):
    """A data set that cannot serve the requested run (missing target, crop too long)."""


@dataclass
class Batch:
    """One batch on its device.

    Attributes
    ----------
    wave : Tensor, shape (B, T * hop), float32
        Clean waveform crops in [-1, 1].
    targets : dict of str to Tensor
        Normalised targets: (B, T, dim) for frame-rate targets, (B, dim) for clip rate.
    clip : Tensor, shape (B,), int64
        Global clip index of each crop (crops ``2i`` and ``2i + 1`` share a clip when the
        data set draws pairs).
    """

    wave: torch.Tensor
    targets: dict[str, torch.Tensor]
    clip: torch.Tensor


class CropDataset:
    """Several store files opened as one data set of aligned random crops.

    Parameters
    ----------
    paths : sequence of path-like, or a glob pattern
        Store files of one corpus (``stores/fma-*.h5`` or a list).
    targets : sequence of str
        Target names to serve; each must be in every store (frame or clip rate).
    crop_frames : int
        Frames per crop (``T``); every clip must have at least this many.
    splits : sequence of str, optional
        Keep only clips of these splits (``""`` is the unsplit remainder).
    cache : {"none", "ram", "device"}
        ``none`` reads the memory maps (page cache); ``ram`` copies the arrays into process
        memory; ``device`` holds them on ``device`` and crops there.
    device : torch.device
        Where batches are delivered.
    pairs : bool
        Draw crops in pairs from the same clip (the contrastive workers' positives).
    normalise_like : CropDataset, optional
        Use this data set's normalisation statistics (validation data normalised like
        the training data) instead of this one's own.
    """

    def __init__(
        self,
        paths: Any,
        targets: Sequence[str],
        crop_frames: int,
        *,
        splits: Sequence[str] | None = None,
        cache: str = "none",
        device: torch.device | str = "cpu",
        pairs: bool = False,
        normalise_like: CropDataset | None = None,
    ) -> None:
        self.stores: list[Store] = open_stores(paths)
        first = self.stores[0]
        self.sample_rate, self.hop = first.sample_rate, first.hop
        self.crop_frames = int(crop_frames)
        self.device = torch.device(device)
        self.pairs = pairs
        self.target_names = list(targets)
        if cache not in ("none", "ram", "device"):
            raise ValueError(f"cache must be none, ram or device, got {cache!r}")
        for s in self.stores:
            missing = [n for n in self.target_names if n not in s.targets]
            if missing:
                raise DataError(
                    f"{s.path}: has no target {', '.join(missing)}; it has "
                    f"{', '.join(s.targets) or 'none'} (add them with 'featurestore build "
                    f"SOURCE -o {s.path} --targets ...')"
                )
        self.specs: dict[str, TargetSpec] = {n: first.specs[n] for n in self.target_names}
        if normalise_like is not None:
            self.mean, self.std = normalise_like.mean, normalise_like.std
        else:
            stats = {n: combined_stats(self.stores, n) for n in self.target_names}
            # Constant dimensions (std 0) are centred but not scaled.
            self.mean = {n: torch.tensor(st.mean, dtype=torch.float32) for n, st in stats.items()}
            self.std = {
                n: torch.tensor(np.where(st.std > 1e-6, st.std, 1.0), dtype=torch.float32)
                for n, st in stats.items()
            }
        self._select_clips(splits)
        self._arrays = [self._hold(s, cache) for s in self.stores]
        self._norm = {n: (self.mean[n].to(self.device), self.std[n].to(self.device))
                      for n in self.target_names}

    # ------------------------------------------------------------------ clip selection
    def _select_clips(self, splits: Sequence[str] | None) -> None:
        store_of, local, n_frames = [], [], []
        for k, s in enumerate(self.stores):
            keep = np.ones(s.n_clips, dtype=bool)
            if splits is not None:
                keep &= np.isin(s.clips["split"].astype(str), list(splits))
            idx = np.flatnonzero(keep)
            store_of.append(np.full(len(idx), k))
            local.append(idx)
            n_frames.append(s.clips["n_frames"][idx])
        self.clip_store = np.concatenate(store_of)
        self.clip_local = np.concatenate(local)
        self.clip_frames = np.concatenate(n_frames).astype(np.int64)
        if len(self.clip_local) == 0:
            where = f" in split(s) {list(splits)}" if splits is not None else ""
            raise DataError(f"{self.stores[0].path}: no clips{where}")
        shortest = int(np.argmin(self.clip_frames))
        if self.clip_frames[shortest] < self.crop_frames:
            s = self.stores[self.clip_store[shortest]]
            i = int(self.clip_local[shortest])
            raise DataError(
                f"{s.path}: crop of {self.crop_frames * self.hop / self.sample_rate:g} s is "
                f"longer than clip {s.clips['id'][i]!r} "
                f"({self.clip_frames[shortest] * self.hop / self.sample_rate:g} s); use a "
                f"shorter crop, or rebuild the store with --min-seconds to skip short clips"
            )
        positions = self.clip_frames - self.crop_frames + 1
        self._cum_positions = np.cumsum(positions)

    @property
    def n_clips(self) -> int:
        return len(self.clip_local)

    @property
    def crop_samples(self) -> int:
        return self.crop_frames * self.hop

    def _hold(self, s: Store, cache: str) -> dict[str, Any]:
        arrays: dict[str, Any] = {"waveform": s.waveform}
        arrays.update({n: s.targets[n] for n in self.target_names})
        # Targets stored as 8-bit codes: their per-clip offsets and scales, decoded on the
        # device in to_batch.
        arrays.update({_affine_key(n): s.affine[n] for n in self.target_names if n in s.affine})
        if cache == "ram":
            arrays = {k: np.array(v) for k, v in arrays.items()}
        elif cache == "device":
            arrays = {k: torch.from_numpy(np.array(v)).to(self.device)
                      for k, v in arrays.items()}
        return arrays

    # ------------------------------------------------------------------ sampling
    def draw(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Random crops, every crop position of every clip equally likely, sorted by
        position in the data set (ascending reads help the page cache; pairs stay adjacent).

        Returns
        -------
        clips : np.ndarray, shape (batch_size,), int64
            Data-set clip indices (crops ``2i`` and ``2i + 1`` share a clip when ``pairs``).
        starts : np.ndarray, shape (batch_size,), int64
            First frame of each crop within its clip.
        """
        per_unit = 2 if self.pairs else 1
        n = batch_size // per_unit
        pos = rng.integers(0, self._cum_positions[-1], size=n)
        units = np.searchsorted(self._cum_positions, pos, side="right").astype(np.int64)
        span = self.clip_frames[units] - self.crop_frames + 1
        starts = (rng.random((n, per_unit)) * span[:, None]).astype(np.int64)
        order = np.lexsort((starts[:, 0], units))
        return np.repeat(units[order], per_unit), starts[order].reshape(-1)

    def gather(self, clips: np.ndarray, starts: np.ndarray,
               out: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Raw arrays of the given crops in their storage dtypes (numpy, or tensors on the
        device with ``cache="device"``); ``clips`` must be sorted (as :meth:`draw` makes
        them), so that each store file serves one contiguous run of the batch.

        Parameters
        ----------
        clips, starts : np.ndarray, shape (B,), int64
            As :meth:`draw` returns them.
        out : dict of str to np.ndarray, optional
            Arrays of :meth:`raw_layout` for ``B`` crops to write the crops into (a
            staging ring's buffers: no batch array is allocated); not with
            ``cache="device"``.

        Returns
        -------
        dict of str to array
            ``waveform`` (B, T * hop), frame-rate targets (B, T, dim), clip-rate targets
            (B, dim) and coded targets' offsets and scales (B, 2, dim); ``out`` when given.
        """
        T, hop = self.crop_frames, self.hop
        on_device = self.held_on_device
        if out is not None and on_device:
            raise ValueError("gather(out=...) needs arrays held on the host, not cache='device'")
        pieces: dict[str, list[Any]] = {n: [] for n in self._arrays[0]}
        for k, s in enumerate(self.stores):
            rows = self.clip_store[clips] == k
            if not rows.any():
                continue
            local = self.clip_local[clips[rows]]
            first = {
                "frame": s.clips["frame_offset"][local] + starts[rows],
                "sample": s.clips["sample_offset"][local] + starts[rows] * hop,
                "clip": local,
            }
            run = slice(first_row := int(np.argmax(rows)), first_row + int(rows.sum()))
            for name, x in self._arrays[k].items():
                rate = self._rate(name)
                idx = first[rate]
                if out is not None:  # one block copy per crop into the caller's buffer
                    dst = out[name][run]
                    if rate == "clip":
                        np.take(x, idx, axis=0, out=dst)
                    else:
                        n = T * hop if rate == "sample" else T
                        np.concatenate([x[a : a + n] for a in idx.tolist()],
                                       out=dst.reshape(-1, *x.shape[1:]))
                    continue
                if rate != "clip":  # one index per crop into a view of every crop window
                    x = _windows(x, T * hop if rate == "sample" else T)
                pieces[name].append(x[torch.from_numpy(idx).to(self.device)] if on_device
                                    else x[idx])
        if out is not None:
            return out
        join = torch.cat if on_device else np.concatenate
        return {n: p[0] if len(p) == 1 else join(p) for n, p in pieces.items()}

    @property
    def held_on_device(self) -> bool:
        """Whether the arrays are held on the device (``cache="device"``) and cropped there."""
        return isinstance(self._arrays[0]["waveform"], torch.Tensor)

    def _rate(self, name: str) -> str:
        """``sample`` (the waveform), ``frame`` or ``clip``: what one crop's rows of a held
        array are indexed by."""
        if name == "waveform":
            return "sample"
        return "clip" if name.endswith(_AFFINE) else self.specs[name].rate

    def raw_layout(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and storage dtype of each raw array :meth:`gather` returns for
        ``batch_size`` crops."""
        T, hop = self.crop_frames, self.hop
        rows = {"sample": (T * hop,), "frame": (T,), "clip": ()}
        return {name: ((batch_size, *rows[self._rate(name)], *x.shape[1:]),
                       np.dtype(str(x.dtype).removeprefix("torch.")))
                for name, x in self._arrays[0].items()}

    def to_batch(self, raw: dict[str, Any], clips: np.ndarray) -> Batch:
        """Move raw arrays to the device (asynchronously from pinned memory, as a
        :class:`StagingRing` holds it) and normalise there."""
        def move(x: Any) -> torch.Tensor:
            t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
            return t.to(self.device, non_blocking=True)

        def fresh_float(x: Any) -> torch.Tensor:  # a float32 tensor safe to modify in place
            src = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
            t = move(src)
            if t.dtype != torch.float32:
                return t.float()
            return t.clone() if t.data_ptr() == src.data_ptr() else t

        wave = fresh_float(raw["waveform"]).div_(PCM_SCALE)
        targets = {}
        for name in self.target_names:
            mean, std = self._norm[name]
            x = fresh_float(raw[name])
            if _affine_key(name) in raw:  # codes: offset + scale * code, per crop
                affine = move(raw[_affine_key(name)])
                x.mul_(affine[:, 1:2]).add_(affine[:, 0:1])
            targets[name] = x.sub_(mean).div_(std)
        return Batch(wave, targets, torch.from_numpy(clips).to(self.device))

    def batch(self, seed: int, step: int, batch_size: int, rank: int = 0,
              ring: StagingRing | None = None) -> Batch:
        """Batch number ``step`` (a pure function of ``seed, step, rank``), gathered into
        the next buffers of ``ring`` when one is given."""
        rng = np.random.default_rng([seed, step, rank])
        clips, starts = self.draw(rng, batch_size)
        if ring is None:
            return self.to_batch(self.gather(clips, starts), clips)
        buffers = ring.take()
        self.gather(clips, starts, out={k: v.numpy() for k, v in buffers.items()})
        batch = self.to_batch(buffers, clips)
        ring.queued()
        return batch


class StagingRing:
    """Host buffers that batches are gathered into and copied to the device from, reused
    in turn: no batch array is allocated, and on CUDA the buffers are pinned, so that the
    copies are asynchronous (DMA) and overlap the training step.

    A buffer is written again only after the copies queued from it have finished (a CUDA
    event recorded after them), so a ring of any size is safe; ``slots`` larger than the
    batches in flight means the producer never waits.

    Parameters
    ----------
    layout : dict
        :meth:`CropDataset.raw_layout` of the batch size.
    device : torch.device
        Where batches go; CUDA pins the buffers and records events.
    slots : int
        Buffers in the ring.
    """

    def __init__(self, layout: dict[str, tuple[tuple[int, ...], np.dtype]],
                 device: torch.device, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.cuda = device.type == "cuda"
        dtypes = {name: torch.from_numpy(np.empty(0, dtype=dtype)).dtype
                  for name, (_, dtype) in layout.items()}
        self.buffers = [
            {name: torch.empty(shape, dtype=dtypes[name], pin_memory=self.cuda)
             for name, (shape, _) in layout.items()}
            for _ in range(slots)
        ]
        self._copied: list[Any] = [None] * slots  # CUDA events, one per slot
        self._next = 0

    def take(self) -> dict[str, torch.Tensor]:
        """The next slot's buffers, once the copies last queued from them have finished."""
        k = self._next
        if self._copied[k] is not None:
            self._copied[k].synchronize()
        return self.buffers[k]

    def queued(self) -> None:
        """Mark the slot last taken as copied from: its copies have been queued on the
        current stream."""
        k = self._next
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
            self._copied[k] = event
        self._next = (k + 1) % len(self.buffers)


_AFFINE = "/affine"


def _affine_key(name: str) -> str:
    """Key of a coded target's offsets and scales among a store's held arrays."""
    return name + _AFFINE


def _windows(x: Any, n: int) -> Any:
    """A read-only view of every window of ``n`` consecutive rows of ``x``:
    shape ``(len(x) - n + 1, n, *x.shape[1:])``, no copy. Indexing it with one start per
    crop gathers whole crops (a 1-D index instead of a (B, n) one)."""
    if isinstance(x, torch.Tensor):
        return x.as_strided((x.shape[0] - n + 1, n, *x.shape[1:]),
                            (x.stride(0), *x.stride()))
    return np.lib.stride_tricks.as_strided(
        x, (x.shape[0] - n + 1, n, *x.shape[1:]), (x.strides[0], *x.strides), writeable=False
    )


class Prefetcher:
    """Keeps ``depth`` batches ready in a background thread and measures data-wait.

    numpy's slicing and the memory-map reads release the GIL, so the gather overlaps the
    training step. Batches are gathered into a :class:`StagingRing` (on CUDA ``depth + 2``
    pinned buffers; on the CPU one, since nothing is copied asynchronously there). On CUDA
    the thread queues the copies and the normalisation on a stream of its own, so that they
    overlap the step's kernels; :meth:`get` makes the training stream wait for them.
    ``wait_seconds`` accumulates the time the training loop spent blocked on data.
    """

    def __init__(self, data: CropDataset, *, seed: int, start_step: int, batch_size: int,
                 rank: int = 0, depth: int = 4) -> None:
        self.data, self.seed, self.batch_size, self.rank = data, seed, batch_size, rank
        self._queue: queue.Queue[tuple[int, Batch, Any] | BaseException] = queue.Queue(depth)
        self._next = start_step
        self._stop = threading.Event()
        self.wait_seconds = 0.0
        cuda = data.device.type == "cuda"
        self._ring = None if data.held_on_device else StagingRing(
            data.raw_layout(batch_size), data.device, depth + 2 if cuda else 1)
        self._stream = torch.cuda.Stream(data.device) if cuda else None
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _make(self, step: int) -> tuple[Batch, Any]:
        """Batch ``step`` and, on CUDA, the event that marks it ready on the device."""
        if self._stream is None:
            return self.data.batch(self.seed, step, self.batch_size, self.rank, self._ring), None
        with torch.cuda.stream(self._stream):
            b = self.data.batch(self.seed, step, self.batch_size, self.rank, self._ring)
            ready = torch.cuda.Event()
            ready.record()
        return b, ready

    def _work(self) -> None:
        step = self._next
        try:
            while not self._stop.is_set():
                b, ready = self._make(step)
                while not self._stop.is_set():
                    try:
                        self._queue.put((step, b, ready), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as e:  # noqa: BLE001 - handed to the consumer and re-raised there
            self._queue.put(e)

    def get(self, step: int) -> Batch:
        """The batch for ``step``; blocks (and counts the wait) until it is ready."""
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if isinstance(item, BaseException):
            raise item
        got, b, ready = item
        if got != step:
            raise RuntimeError(f"prefetcher out of order: expected step {step}, got {got}")
        if ready is not None:  # made on the prefetch stream, used on this one
            stream = torch.cuda.current_stream(self.data.device)
            stream.wait_event(ready)
            for t in (b.wave, b.clip, *b.targets.values()):
                t.record_stream(stream)
        return b

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
