"""The HEAR benchmark's common API (hearbenchmark.com) over any of our encoders.

HEAR evaluates an embedding model through three functions of a Python module; this is
that module::

    from trainer import hear
    model = hear.load_model("runs/pase-music/encoder.pt")
    emb, ts = hear.get_timestamp_embeddings(audio, model)   # audio [n, samples], 16 kHz
    scene = hear.get_scene_embeddings(audio, model)

Timestamp embeddings are the encoder's frames: frame ``k`` is centred on sample
``k * hop``, so its timestamp is ``k * hop / sample_rate * 1000`` ms (10 ms apart at
16 kHz, hop 160, starting at 0). Audio is zero-padded at the end to a whole number of
hops (at least one), so every sound, however short, has at least one timestamp.

The scene embedding is the **mean over time** of the timestamp embeddings
(``scene_embedding_size == timestamp_embedding_size``).

Memory stays bounded for long audio: sounds are encoded ``batch_size`` at a time, in
chunks of at most ``chunk_seconds`` (whole hops) whose frames are concatenated. Every
frame of a frame-local encoder is then exactly its whole-sound value; a recurrent encoder
(PASE+'s GRU) sees each chunk on its own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.data import crop_bounds
from trainer.embed import EncoderEmbedder, load_embedder
from trainer.specs import parse_spec

SAMPLE_RATE = 16000


class HearModel(nn.Module):
    """A frozen encoder with the attributes HEAR asks for.

    Parameters
    ----------
    encoder : nn.Module
        ``wave [B, T * hop] → [B, dim, T]``, with ``hop`` and ``dim``.
    sample_rate : int
        The sample rate the encoder expects (the rate HEAR resamples audio to).
    chunk_seconds : float
        Longest piece of a sound fed to the encoder at once.
    batch_size : int
        Sounds per encoder call.

    Attributes
    ----------
    sample_rate : int
    timestamp_embedding_size : int
        The encoder's ``dim``.
    scene_embedding_size : int
        The same (the scene embedding is the mean of the timestamp embeddings).
    hop : int
        Samples between timestamps.
    """

    def __init__(self, encoder: nn.Module, *, sample_rate: int = SAMPLE_RATE,
                 chunk_seconds: float = 10.0, batch_size: int = 16) -> None:
        super().__init__()
        if chunk_seconds <= 0 or batch_size < 1:
            raise ValueError(f"chunk_seconds must be positive and batch_size at least 1, got "
                             f"{chunk_seconds} and {batch_size}")
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.sample_rate = int(sample_rate)
        self.hop = int(encoder.hop)
        self.timestamp_embedding_size = int(encoder.dim)
        self.scene_embedding_size = int(encoder.dim)
        self.chunk_frames = max(1, int(chunk_seconds * self.sample_rate) // self.hop)
        self.batch_size = int(batch_size)

    def train(self, mode: bool = True) -> HearModel:
        """The encoder stays in eval mode: embeddings never depend on the batch."""
        super().train(False)
        return self

    def forward(self, audio: Tensor) -> Tensor:
        """Timestamp embeddings ``[n, T, D]`` (float32) of ``audio`` ``[n, samples]``."""
        return self.embed(audio)

    def _prepare(self, audio: Tensor) -> tuple[Tensor, int]:
        """Validate ``audio``, put the encoder on its device; returns float audio and the
        number of timestamps ``max(1, ceil(samples / hop))``."""
        if audio.dim() != 2:
            raise ValueError(f"audio must be [n_sounds, n_samples], got shape "
                             f"{tuple(audio.shape)}")
        first = next(self.encoder.parameters(), None)
        if first is not None and first.device != audio.device:
            self.encoder.to(audio.device)
        return audio.float(), max(1, math.ceil(audio.shape[1] / self.hop))

    def _pieces(self, audio: Tensor, n_frames: int) -> Iterator[tuple[int, int, Tensor]]:
        """Encode ``audio`` by batches of sounds and chunks of frames: yields
        ``(first sound, first frame, frames [B, t, D] float32)``."""
        hop, device = self.hop, audio.device
        bounds = crop_bounds(n_frames, self.chunk_frames)
        with torch.no_grad():
            for s0 in range(0, audio.shape[0], self.batch_size):
                rows = audio[s0 : s0 + self.batch_size]
                for a, b in bounds:
                    piece = rows[:, a * hop : b * hop]
                    if piece.shape[1] < (b - a) * hop:  # the padded end of the sounds
                        piece = F.pad(piece, (0, (b - a) * hop - piece.shape[1]))
                    with torch.autocast(device.type, dtype=torch.bfloat16,
                                        enabled=device.type == "cuda"):
                        frames = self.encoder(piece.contiguous())  # [B, D, b - a]
                    yield s0, a, frames.float().transpose(1, 2)

    def embed(self, audio: Tensor) -> Tensor:
        """Timestamp embeddings ``[n_sounds, n_timestamps, D]``, float32, on the audio's
        device; ``n_timestamps = max(1, ceil(samples / hop))``."""
        audio, n_frames = self._prepare(audio)
        out = torch.empty(audio.shape[0], n_frames, self.timestamp_embedding_size,
                          device=audio.device)
        for s0, a, frames in self._pieces(audio, n_frames):
            out[s0 : s0 + frames.shape[0], a : a + frames.shape[1]] = frames
        return out

    def scene(self, audio: Tensor) -> Tensor:
        """Mean over time of the timestamp embeddings, ``[n_sounds, D]``, accumulated
        chunk by chunk (the frames of long sounds are never all held at once)."""
        audio, n_frames = self._prepare(audio)
        total = torch.zeros(audio.shape[0], self.scene_embedding_size, device=audio.device,
                            dtype=torch.float64)
        for s0, _, frames in self._pieces(audio, n_frames):
            total[s0 : s0 + frames.shape[0]] += frames.double().sum(dim=1)
        return (total / n_frames).float()

    def timestamps(self, n_sounds: int, n_frames: int, device: torch.device) -> Tensor:
        """Centres of the frames in milliseconds, ``[n_sounds, n_frames]`` float32."""
        ms = torch.arange(n_frames, device=device, dtype=torch.float64) * (
            self.hop / self.sample_rate * 1000.0)
        return ms.float().unsqueeze(0).expand(n_sounds, n_frames).contiguous()


def load_model(model_file_path: str = "", **kwargs: Any) -> HearModel:
    """Load an encoder as a HEAR model.

    Parameters
    ----------
    model_file_path : str
        An ``encoder.pt`` written by ``trainer pretrain``, or ``random:<encoder>`` (an
        untrained encoder: for testing, and as the untrained baseline).
    **kwargs
        ``seed`` and ``encoder_kwargs`` (``random:`` encoders), ``chunk_seconds`` (10)
        and ``batch_size`` (16), ``device`` (where to put the model: ``cpu`` (default),
        ``auto``, ``cuda`` or ``cuda:N``, see :func:`trainer.device.resolve_device`; it
        follows the audio's device anyway).

    Returns
    -------
    HearModel
        With ``sample_rate``, ``scene_embedding_size`` and ``timestamp_embedding_size``.

    Raises
    ------
    ValueError
        An empty path, an unknown encoder, unknown keyword arguments, or a device this
        machine lacks (:class:`trainer.device.DeviceError`).
    FileNotFoundError
        A path that does not exist.
    """
    known = {"seed", "encoder_kwargs", "chunk_seconds", "batch_size", "device"}
    unknown = set(kwargs) - known
    if unknown:
        raise ValueError(f"unknown load_model arguments {sorted(unknown)}; known: "
                         f"{sorted(known)}")
    if not model_file_path:
        raise ValueError("load_model needs model_file_path: an encoder.pt written by "
                         "'trainer pretrain', or 'random:pase+' for an untrained encoder")
    spec = os.fspath(model_file_path)
    if parse_spec(spec).kind == "store":
        raise ValueError(f"{spec} reads a feature store, not audio; HEAR needs an encoder")
    embedder = load_embedder(spec, seed=int(kwargs.get("seed", 0)),
                             device=kwargs.get("device", "cpu"),
                             encoder_kwargs=kwargs.get("encoder_kwargs"))
    assert isinstance(embedder, EncoderEmbedder)
    return HearModel(embedder.encoder, sample_rate=embedder.sample_rate,
                     chunk_seconds=float(kwargs.get("chunk_seconds", 10.0)),
                     batch_size=int(kwargs.get("batch_size", 16)))


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """Frame embeddings and their times.

    Parameters
    ----------
    audio : Tensor
        ``[n_sounds, n_samples]`` float in [-1, 1] at ``model.sample_rate``, on any device.
    model : HearModel

    Returns
    -------
    embeddings : Tensor
        ``[n_sounds, n_timestamps, timestamp_embedding_size]`` float32, on the audio's
        device; ``n_timestamps = max(1, ceil(n_samples / hop))``.
    timestamps : Tensor
        ``[n_sounds, n_timestamps]`` float32, in milliseconds: the centre of frame ``k``,
        ``k * hop / sample_rate * 1000``.
    """
    emb = model.embed(audio)
    return emb, model.timestamps(emb.shape[0], emb.shape[1], audio.device)


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """One embedding per sound: the mean over time of its timestamp embeddings.

    Parameters
    ----------
    audio : Tensor
        ``[n_sounds, n_samples]`` float in [-1, 1] at ``model.sample_rate``.
    model : HearModel

    Returns
    -------
    Tensor
        ``[n_sounds, scene_embedding_size]`` float32, on the audio's device.
    """
    return model.scene(audio)


__all__ = ["HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
