"""The encoder-spec language: one string names what turns clips into embeddings.

Every command that takes an encoder (``trainer embed``, ``trainer probe``, a sweep's
baselines, the HEAR loader) reads it here:

=============================  =========================================================
``runs/x/encoder.pt``          a pre-trained encoder file (:mod:`trainer.encoder_file`)
``random:<encoder name>``      that architecture with seeded random weights
``random:<encoder.pt>``        the architecture recorded in that file, random weights
``mfcc-stats``                 the store's MFCC rows, pooled (no network)
``targets-stats``              the store's default targets, pooled (no network)
``supervised:<encoder name>``  that architecture trained from scratch on the labels
=============================  =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MFCC_STATS = "mfcc-stats"
TARGETS_STATS = "targets-stats"
STORE_BASELINES = (MFCC_STATS, TARGETS_STATS)
"""Specs that read a feature store's targets instead of audio."""

SPEC_HELP = ("encoder.pt, random:<encoder name or encoder.pt>, mfcc-stats, targets-stats, "
             "or supervised:<encoder name> (trained from scratch on the store's labels)")

Kind = Literal["file", "random", "store", "supervised"]


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder spec.

    Attributes
    ----------
    text : str
        The spec as given.
    kind : {"file", "random", "store", "supervised"}
        What it names (see the module's table).
    target : str
        The file path (``file``), the encoder name or file after ``random:``, the baseline
        name (``store``), or the encoder name after ``supervised:``.
    """

    text: str
    kind: Kind
    target: str

    @property
    def builds_encoder(self) -> bool:
        """Whether it builds a network from constructor arguments (``random:``,
        ``supervised:``), so that encoder keyword arguments may apply."""
        return self.kind in ("random", "supervised")


def parse_spec(text: str) -> EncoderSpec:
    """Parse an encoder spec (no file is opened, no network built).

    Parameters
    ----------
    text : str
        See the module's table.

    Returns
    -------
    EncoderSpec

    Raises
    ------
    ValueError
        An empty spec, nothing after ``random:`` or ``supervised:``, or an unknown encoder
        name after ``supervised:``.

    Examples
    --------
    >>> parse_spec("random:melcnn")
    EncoderSpec(text='random:melcnn', kind='random', target='melcnn')
    >>> parse_spec("mfcc-stats").kind
    'store'
    """
    text = str(text)
    if not text.strip():
        raise ValueError(f"empty encoder spec; expected {SPEC_HELP}")
    if text in STORE_BASELINES:
        return EncoderSpec(text, "store", text)
    for prefix in ("random", "supervised"):
        if text.startswith(prefix + ":"):
            target = text.split(":", 1)[1]
            if not target:
                raise ValueError(f"{text!r}: expected a name after '{prefix}:'; {SPEC_HELP}")
            if prefix == "supervised":
                from trainer.encoders import ENCODERS

                if target not in ENCODERS:
                    raise ValueError(f"{text!r}: unknown encoder {target!r}; expected one of "
                                     f"{', '.join(sorted(ENCODERS))}")
            return EncoderSpec(text, prefix, target)  # type: ignore[arg-type]
    return EncoderSpec(text, "file", text)


__all__ = ["MFCC_STATS", "SPEC_HELP", "STORE_BASELINES", "TARGETS_STATS", "EncoderSpec",
           "parse_spec"]
