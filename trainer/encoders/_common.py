"""Pieces shared by the encoders: the frame-grid contract, centred convolutions and pooling.

The frame grid (see DESIGN.md, "Frame grid"): a waveform of ``S = T * hop`` samples maps to
exactly ``T`` output frames, and output frame ``k`` describes the window centred on sample
``k * hop`` (librosa's ``center=True``). Every strided layer here is built so that its output
position ``j`` is centred on input position ``j * stride``; stacking such layers keeps every
intermediate position ``j`` centred on sample ``j * (cumulative stride)``, which makes the
whole encoder's frame ``k`` centred on sample ``k * hop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HOP = 160
SAMPLE_RATE = 16000


def centred_padding(kernel_size: int) -> tuple[int, int]:
    """Left and right zero padding that centres a kernel on its output position.

    Parameters
    ----------
    kernel_size : int
        Kernel length ``k``.

    Returns
    -------
    tuple of int
        ``(left, right)`` with ``left + right = k - 1``. For odd ``k`` the window of output
        ``j`` is ``[j*s - (k-1)/2, j*s + (k-1)/2]``, exactly centred on ``j*s``; for even ``k``
        the centre is ``j*s + 0.5`` (half an input sample late, the closest possible).
        With an input length ``L`` that is a multiple of the stride ``s``, the output has
        exactly ``L / s`` positions.
    """
    left = (kernel_size - 1) // 2
    return left, kernel_size - 1 - left


class CentredConv1d(nn.Conv1d):
    """A ``Conv1d`` whose output position ``j`` is centred on input position ``j * stride``.

    Input ``[B, C_in, L]`` with ``L`` a multiple of ``stride`` gives ``[B, C_out, L // stride]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        bias: bool = True,
    ) -> None:
        left, right = centred_padding(kernel_size)
        # Symmetric padding is done by the convolution itself (no copy); asymmetric by F.pad.
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride,
            padding=left if left == right else 0, bias=bias,
        )
        self.asym_pad: tuple[int, int] | None = None if left == right else (left, right)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``x`` ``[B, C_in, L]`` into ``[B, C_out, L // stride]``."""
        if self.asym_pad is not None:
            x = F.pad(x, self.asym_pad)
        return super().forward(x)


def centred_pool1d(x: Tensor, factor: int, mode: str = "avg") -> Tensor:
    """Downsample by ``factor`` with windows centred on the kept positions.

    Output ``j`` pools input positions ``[j*factor - factor//2, j*factor + factor//2]``
    (an odd window of ``2*(factor//2) + 1`` positions, so it is exactly centred on
    ``j*factor``; edges pool only the valid positions for ``"avg"``).

    Parameters
    ----------
    x : Tensor
        ``[B, C, L]`` with ``L`` a multiple of ``factor``.
    factor : int
        Downsampling factor (1 returns ``x`` unchanged).
    mode : {"avg", "max"}
        Pooling type.

    Returns
    -------
    Tensor
        ``[B, C, L // factor]``.
    """
    if factor == 1:
        return x
    half = factor // 2
    kernel = 2 * half + 1
    if mode == "avg":
        return F.avg_pool1d(x, kernel, stride=factor, padding=half, count_include_pad=False)
    if mode == "max":
        return F.max_pool1d(x, kernel, stride=factor, padding=half)
    raise ValueError(f"unknown pooling mode {mode!r}; expected 'avg' or 'max'")


def as_tuple(values: Sequence[int], name: str) -> tuple[int, ...]:
    """Validate a non-empty sequence of positive ints and return it as a tuple."""
    out = tuple(int(v) for v in values)
    if not out or any(v <= 0 for v in out):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {values!r}")
    return out


class Encoder(nn.Module):
    """Base class: the frame-grid contract shared by every encoder.

    Subclasses set ``hop`` and ``dim`` and store their constructor keyword arguments in
    ``self._config`` (tuples are returned as lists by :meth:`config`, so that the result is
    JSON-serialisable); ``type(enc)(**enc.config())`` rebuilds the same architecture.
    """

    hop: int = HOP
    dim: int

    def __init__(self) -> None:
        super().__init__()
        self._config: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture (JSON-serialisable)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._config.items()}

    def n_frames(self, wave: Tensor) -> int:
        """Validate ``wave`` ``[B, S]`` and return its frame count ``T = S // hop``.

        Raises
        ------
        ValueError
            If ``wave`` is not 2-D, not floating point, empty, or ``S`` is not a multiple of
            ``hop``.
        """
        if wave.dim() != 2:
            raise ValueError(
                f"{type(self).__name__} expects a waveform batch [B, S], got shape "
                f"{tuple(wave.shape)}"
            )
        if not wave.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a float waveform, got {wave.dtype}")
        n = wave.shape[1]
        if n == 0 or n % self.hop != 0:
            raise ValueError(
                f"{type(self).__name__}: the number of samples ({n}) must be a positive multiple "
                f"of hop={self.hop} (crop T frames as T*hop samples)"
            )
        return n // self.hop

    def forward(self, wave: Tensor) -> Tensor:
        """Encode a waveform batch.

        Parameters
        ----------
        wave : Tensor
            ``[B, S]`` float waveform in [-1, 1], ``S = T * hop``.

        Returns
        -------
        Tensor
            ``[B, dim, T]``; frame ``k`` is centred on sample ``k * hop``.
        """
        n_frames = self.n_frames(wave)
        out = self.encode(wave)
        assert out.shape[-1] == n_frames, (out.shape, n_frames)
        return out

    def encode(self, wave: Tensor) -> Tensor:
        """The architecture proper: a validated ``[B, T * hop]`` batch to ``[B, dim, T]``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"hop={self.hop}, dim={self.dim}"


def float32_region(x: Tensor) -> torch.autocast:
    """A context that disables autocast on ``x``'s device (compute the region in float32)."""
    return torch.autocast(device_type=x.device.type, enabled=False)
