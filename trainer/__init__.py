"""trainer: multi-task self-supervised pre-training of music encoders from feature stores.

>>> import trainer
>>> encoder = trainer.load_encoder("runs/pase-music/encoder.pt")   # doctest: +SKIP
>>> encoder(wave).shape      # wave: (B, T * 160) at 16 kHz          # doctest: +SKIP
torch.Size([B, 256, T])
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_encoder"]


def __getattr__(name: str) -> Any:
    # Lazy: `import trainer` stays cheap (no torch) until the encoder loader is used.
    if name == "load_encoder":
        from trainer.encoder_file import load_encoder

        return load_encoder
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
