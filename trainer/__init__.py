"""trainer: multi-task self-supervised pre-training of music encoders from feature stores.

>>> import trainer
>>> encoder = trainer.load_encoder("runs/pase-music/encoder.pt")   # doctest: +SKIP
>>> encoder(wave).shape      # wave: (B, T * 160) at 16 kHz          # doctest: +SKIP
torch.Size([B, 256, T])
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["load_encoder"]


def load_encoder(path: str | os.PathLike[str], device: str | Any = "cpu") -> Any:
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
    from trainer.pretrain import read_encoder_file

    path = os.fspath(path)
    device = resolve_device(device)
    payload = read_encoder_file(path, map_location=device)
    encoder = build_encoder(payload["encoder"], **payload["kwargs"])
    encoder.load_state_dict(payload["state_dict"])
    encoder.sample_rate = int(payload["sample_rate"])
    encoder.source = path
    return encoder.to(device).eval()
