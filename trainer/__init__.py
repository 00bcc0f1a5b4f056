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

    Returns
    -------
    torch.nn.Module
        ``forward(wave (B, T * hop)) -> (B, dim, T)``, with attributes ``hop``, ``dim``,
        ``sample_rate`` and ``source`` (the file it came from).
    """
    import torch

    from trainer.encoders import build_encoder
    from trainer.pretrain import ENCODER_FORMAT

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such encoder file")
    payload = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{path}: not an encoder file of format {ENCODER_FORMAT}")
    encoder = build_encoder(payload["encoder"], **payload["kwargs"])
    encoder.load_state_dict(payload["state_dict"])
    encoder.sample_rate = int(payload["sample_rate"])
    encoder.source = path
    return encoder.to(device).eval()
