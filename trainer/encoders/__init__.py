"""Waveform encoders: ``wave [B, T * hop] → [B, dim, T]`` at 100 frames/s (16 kHz, hop 160).

Every encoder is an ``nn.Module`` with ``hop`` and ``dim`` attributes, keyword-only
constructor arguments and ``config()`` returning the keyword arguments that rebuild it:
``type(enc)(**enc.config())``. Output frame ``k`` is centred on input sample ``k * hop``.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .melcnn import MelCNN
from .pase_plus import PasePlus
from .samplecnn import SampleCNN

ENCODERS: dict[str, type[nn.Module]] = {
    "pase+": PasePlus,
    "samplecnn": SampleCNN,
    "melcnn": MelCNN,
}


def build_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder registered as ``name`` with keyword arguments ``kwargs``.

    Raises
    ------
    ValueError
        If ``name`` is not a key of :data:`ENCODERS`, or ``kwargs`` names an argument its
        constructor does not take.
    """
    try:
        cls = ENCODERS[name]
    except KeyError:
        known = ", ".join(sorted(ENCODERS))
        raise ValueError(f"unknown encoder {name!r}; known encoders: {known}") from None
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        known = ", ".join(inspect.signature(cls).parameters)
        raise ValueError(f"encoder {name!r}: {e}; its arguments: {known}") from None
    return cls(**kwargs)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all of them, or only those requiring grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ENCODERS", "MelCNN", "PasePlus", "SampleCNN", "build_encoder", "count_parameters"]
