"""The encoder file (``encoder.pt``): what ``trainer pretrain`` hands to every other tool.

One self-describing ``torch.save`` payload, read with ``weights_only=True`` (plain
containers, numbers, strings and tensors only, so loading a file runs no pickled code)::

    format        "trainer-encoder/1"
    encoder       registry name (trainer.encoders.ENCODERS), e.g. "melcnn"
    kwargs        every constructor argument (encoder.config()): rebuilds the architecture
    state_dict    the weights
    hop, dim      frame hop in samples, output channels
    sample_rate   input rate in Hz
    step          the pre-training step it was written at
    pretrain      the run's PretrainConfig as a plain dict (None when not pre-trained)
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

ENCODER = "encoder.pt"
"""File name of a run's final encoder, inside its run folder."""
ENCODER_FORMAT = "trainer-encoder/1"


def save_encoder(path: str | os.PathLike[str], encoder: nn.Module, name: str,
                 pretrain: dict[str, Any] | None, step: int, sample_rate: int) -> None:
    """Write an encoder file atomically (a temporary file renamed into place).

    Parameters
    ----------
    path : path-like
        Destination, conventionally ``<run>/encoder.pt``.
    encoder : nn.Module
        An encoder of :mod:`trainer.encoders` (it has ``config()``, ``hop`` and ``dim``).
    name : str
        Its registry name.
    pretrain : dict or None
        The pre-training configuration as plain data (``PretrainConfig.to_dict()``).
    step : int
        Training step of these weights.
    sample_rate : int
        Input rate in Hz.
    """
    payload = {
        "format": ENCODER_FORMAT, "encoder": name, "kwargs": encoder.config(),
        "state_dict": encoder.state_dict(), "hop": encoder.hop, "dim": encoder.dim,
        "sample_rate": int(sample_rate), "step": int(step), "pretrain": pretrain,
    }
    atomic_save(payload, path)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename it into place: a
    reader never sees a half-written file (encoder files, the run's checkpoint)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_encoder_file(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                      *, mmap: bool = False) -> dict[str, Any]:
    """The payload of an encoder file written by :func:`save_encoder`.

    ``mmap=True`` maps the weights instead of reading them: a cheap look at what the file
    is (the payload's tensors are then read on first use).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A file that torch cannot read, that holds more than plain data and tensors, or
        that is not an encoder file of this format.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such encoder file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: not an encoder file ({type(e).__name__}: {reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{path}: not an encoder file of format {ENCODER_FORMAT}")
    return payload


def architecture_of(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any], int]:
    """Encoder name, constructor arguments (tuples as lists) and sample rate of a file."""
    payload = read_encoder_file(path, mmap=True)
    kwargs = json.loads(json.dumps(payload["kwargs"]))
    return str(payload["encoder"]), kwargs, int(payload["sample_rate"])


def load_encoder(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Load an encoder saved by ``trainer pretrain`` (``encoder.pt``), in eval mode.

    Parameters
    ----------
    path : path-like
        An ``encoder.pt`` file.
    device : str or torch.device
        ``cpu``, ``auto``, ``cuda``, ``cuda:N`` (:func:`trainer.device.resolve_device`).

    Returns
    -------
    torch.nn.Module
        ``forward(wave (B, T * hop)) -> (B, dim, T)``, with attributes ``hop``, ``dim``,
        ``sample_rate`` and ``source`` (the file it came from).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not an encoder file; a device this machine does not have
        (:class:`trainer.device.DeviceError`).
    """
    from trainer.device import resolve_device
    from trainer.encoders import build_encoder

    path = os.fspath(path)
    dev = resolve_device(device)
    payload = read_encoder_file(path, map_location=dev)
    encoder = build_encoder(payload["encoder"], **payload["kwargs"])
    encoder.load_state_dict(payload["state_dict"])
    encoder.sample_rate = int(payload["sample_rate"])
    encoder.source = path
    return encoder.to(dev).eval()


__all__ = ["ENCODER", "ENCODER_FORMAT", "architecture_of", "atomic_save", "load_encoder",
           "read_encoder_file", "save_encoder"]
