"""Worker heads: one per selected target, built from the store's target declarations.

* a regression head (a small MLP applied per frame) for every frame-rate target, and on
  the time-averaged embedding for every clip-rate target; its loss (L1 or MSE) is the one
  the target declares;
* ``waveform``: a decoder of transposed convolutions (total stride = hop) that rebuilds
  the clean crop, L1;
* ``lim`` and ``gim``: PASE's local and global info-max discriminators. Crops come in
  pairs from one clip: a frame (LIM) or the time-averaged embedding (GIM) of one crop is
  paired with the same of its partner (positive) and of a crop of another clip (negative),
  and a small MLP tells them apart (binary cross-entropy).

Any name in the registry becomes a worker with no extra code: the head's shape and loss
are read from the store's :class:`~featurestore.store.TargetSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featurestore.store import TargetSpec

CONTRASTIVE = ("lim", "gim")


class RegressionHead(nn.Module):
    """Per-frame MLP: (B, D, T) embeddings -> (B, T, dim) predictions (or (B, dim) for a
    clip-rate target, from the time-averaged embedding). ``hidden=0`` makes it linear: the
    target must then be a linear read-out of the embedding, so the encoder does all the
    work."""

    def __init__(self, spec: TargetSpec, in_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.spec = spec
        self.net: nn.Module
        if hidden:
            self.net = nn.Sequential(
                nn.Conv1d(in_dim, hidden, 1), nn.PReLU(hidden), nn.Conv1d(hidden, spec.dim, 1)
            )
        else:
            self.net = nn.Conv1d(in_dim, spec.dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.spec.rate == "clip":
            return self.net(h.mean(dim=2, keepdim=True))[:, :, 0]
        return self.net(h).transpose(1, 2)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = pred.float()
        if self.spec.loss == "mse":
            return F.mse_loss(pred, target)
        return F.l1_loss(pred, target)


class WaveformDecoder(nn.Module):
    """Transposed convolutions with strides 4, 4, 10 (= 160): (B, D, T) -> (B, T * 160).

    Each layer has kernel ``2 * stride`` and padding ``stride / 2``, so the output has
    exactly ``stride`` times the input's length and frame ``t`` decodes the samples around
    ``t * hop``.
    """

    def __init__(self, in_dim: int, hop: int = 160, channels: int = 64) -> None:
        super().__init__()
        strides = (4, 4, 10) if hop == 160 else (hop,)
        if hop % 2 and hop != 1:
            raise ValueError(f"the waveform decoder needs an even hop, got {hop}")
        layers: list[nn.Module] = []
        c_in = in_dim
        for i, s in enumerate(strides):
            c_out = 1 if i == len(strides) - 1 else channels
            layers.append(nn.ConvTranspose1d(c_in, c_out, 2 * s, stride=s, padding=s // 2))
            if c_out != 1:
                layers += [nn.BatchNorm1d(c_out), nn.PReLU(c_out)]
            c_in = c_out
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)[:, 0]

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(pred.float(), target)


class InfoMax(nn.Module):
    """PASE's LIM (``local=True``: single frames) or GIM (time-averaged crops).

    Expects a batch of crop pairs: rows ``2i`` and ``2i + 1`` come from one clip.
    """

    def __init__(self, in_dim: int, local: bool, hidden: int = 256) -> None:
        super().__init__()
        self.local = local
        self.net = nn.Sequential(
            nn.Linear(2 * in_dim, hidden), nn.PReLU(hidden), nn.Linear(hidden, 1)
        )

    def summaries(self, h: torch.Tensor, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
        """(B, D, T) -> (B, D): a random frame of each crop (LIM) or its mean (GIM)."""
        if not self.local:
            return h.mean(dim=2)
        t = torch.randint(0, h.shape[2], (h.shape[0],), device=h.device, generator=generator)
        return h[torch.arange(h.shape[0], device=h.device), :, t]

    def forward(self, h: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """Binary cross-entropy of positive vs negative pairs (a scalar)."""
        if h.shape[0] < 4 or h.shape[0] % 2:
            raise ValueError(f"info-max workers need an even batch of at least 4, got {h.shape[0]}")
        z = self.summaries(h, generator)
        anchor, partner = z[0::2], z[1::2]
        negative = partner.roll(1, dims=0)  # a crop of the next pair: another clip
        pos = self.net(torch.cat([anchor, partner], dim=1))
        neg = self.net(torch.cat([anchor, negative], dim=1))
        logits = torch.cat([pos, neg]).float()[:, 0]
        labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).float()[:, 0]
        return F.binary_cross_entropy_with_logits(logits, labels)


def resolve_workers(names: Sequence[str], specs: Mapping[str, TargetSpec]) -> list[str]:
    """Expand ``default`` (the store's default frame/clip targets plus LIM and GIM) and
    check every name is a target of the store, ``waveform``, ``lim`` or ``gim``."""
    out: list[str] = []
    for name in names:
        if name == "default":
            picked = [n for n, s in specs.items() if s.default and s.rate != "sample"]
            picked += list(CONTRASTIVE)
        elif name == "all":
            picked = [*specs, *CONTRASTIVE, "waveform"]
        else:
            picked = [name]
        for n in picked:
            if n not in out:
                out.append(n)
    unknown = [n for n in out if n not in specs and n not in (*CONTRASTIVE, "waveform")]
    if unknown:
        raise ValueError(
            f"unknown worker(s) {', '.join(unknown)}: the store has targets "
            f"{', '.join(specs)}; other workers are waveform, lim, gim"
        )
    return out


class Workers(nn.Module):
    """Every selected worker head, with one call computing every worker's loss.

    Parameters
    ----------
    names : sequence of str
        Worker names: target names, ``waveform``, ``lim``, ``gim``.
    specs : mapping of str to TargetSpec
        The store's declarations (regression heads read dims, rate and loss from them).
    in_dim : int
        Encoder output channels.
    hop : int
        Samples per frame (the waveform decoder's total stride).
    hidden : int
        Hidden width of the regression heads (0: linear heads) and of the info-max
        discriminators (256 when 0: a linear discriminator of a pair cannot compare its
        two halves).
    """

    def __init__(self, names: Sequence[str], specs: Mapping[str, TargetSpec], in_dim: int,
                 hop: int, hidden: int = 256) -> None:
        super().__init__()
        self.names = list(names)
        heads: dict[str, nn.Module] = {}
        for n in self.names:
            if n == "waveform":
                heads[n] = WaveformDecoder(in_dim, hop)
            elif n in CONTRASTIVE:
                heads[n] = InfoMax(in_dim, local=(n == "lim"), hidden=hidden or 256)
            else:
                heads[n] = RegressionHead(specs[n], in_dim, hidden)
        self.heads = nn.ModuleDict(heads)

    @property
    def targets(self) -> list[str]:
        """Store targets the workers need from the data path."""
        return [n for n in self.names if n not in CONTRASTIVE and n != "waveform"]

    @property
    def needs_pairs(self) -> bool:
        return any(n in CONTRASTIVE for n in self.names)

    def forward(self, h: torch.Tensor, wave: torch.Tensor, targets: Mapping[str, torch.Tensor],
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-worker losses (float32 scalars) from embeddings ``h`` (B, D, T), the clean
        waveform (B, T * hop) and normalised targets."""
        losses: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            if name == "waveform":
                losses[name] = head.loss(head(h), wave)
            elif name in CONTRASTIVE:
                losses[name] = head(h, generator)
            else:
                losses[name] = head.loss(head(h), targets[name])
        return losses
