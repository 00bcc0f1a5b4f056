"""PASE+-style waveform encoder (Ravanelli et al. 2020), as adapted to music by Wu et al. 2021.

SincNet band-pass front end, seven strided conv blocks (total stride 160), a bidirectional
GRU (PASE+ uses a QRNN; a GRU is the portable choice), a 1x1 projection, skip connections
from every earlier block summed into the output, and an affine-free batch norm.

Every layer is centred (see :mod:`trainer.encoders._common`): output frame ``k`` is centred
on input sample ``k * 160``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (
    HOP,
    SAMPLE_RATE,
    CentredConv1d,
    Encoder,
    as_tuple,
    centred_pool1d,
    float32_region,
)


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class SincConv1d(nn.Module):
    """Learnable band-pass sinc filters (SincNet, Ravanelli & Bengio 2018).

    Each filter is an ideal band-pass ``[f_low, f_high]`` (difference of two windowed sinc
    low-passes, unit pass-band gain) under a Hamming window. Only the two cut-offs per filter
    are learnt. They are stored in cycles per sample (Hz / sample rate), so that optimiser
    steps of ~1e-3 move a cut-off by ~16 Hz at 16 kHz, and are initialised on a mel scale.

    Parameters
    ----------
    n_filters : int
        Number of filters (output channels).
    kernel_size : int
        Filter length (odd); the output is centred ('same' length, stride 1).
    sample_rate : int
        Sample rate in Hz.
    min_low_hz, min_band_hz : float
        Lower bounds on the low cut-off and on the bandwidth, in Hz.
    """

    def __init__(
        self,
        n_filters: int = 64,
        kernel_size: int = 251,
        sample_rate: int = SAMPLE_RATE,
        min_low_hz: float = 50.0,
        min_band_hz: float = 50.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"sinc kernel_size must be odd (a centred filter), got {kernel_size}")
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.sample_rate = sample_rate
        self.min_low = min_low_hz / sample_rate
        self.min_band = min_band_hz / sample_rate

        # Mel-spaced band edges from 30 Hz to just below Nyquist.
        top = sample_rate / 2 - (min_low_hz + min_band_hz)
        mel = torch.linspace(_hz_to_mel(30.0), _hz_to_mel(top), n_filters + 1, dtype=torch.float64)
        edges = _mel_to_hz(mel) / sample_rate
        self.low = nn.Parameter((edges[:-1] - self.min_low).clamp_min(0.0).float().unsqueeze(1))
        self.band = nn.Parameter(
            (edges[1:] - edges[:-1] - self.min_band).clamp_min(0.0).float().unsqueeze(1)
        )
        half = (kernel_size - 1) // 2
        self.register_buffer("n", torch.arange(-half, half + 1, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("window", torch.hamming_window(kernel_size, periodic=False),
                             persistent=False)

    def cutoffs_hz(self) -> tuple[Tensor, Tensor]:
        """Current ``(low, high)`` cut-offs in Hz, each ``[n_filters]``."""
        low, high = self._cutoffs()
        return low.squeeze(1) * self.sample_rate, high.squeeze(1) * self.sample_rate

    def _cutoffs(self) -> tuple[Tensor, Tensor]:
        low = self.min_low + self.low.abs()
        high = (low + self.min_band + self.band.abs()).clamp(max=0.5)
        return low, high

    def filters(self) -> Tensor:
        """The filter bank ``[n_filters, 1, kernel_size]`` (float32)."""
        low, high = self._cutoffs()  # [F, 1], cycles per sample
        n = self.n.unsqueeze(0)  # [1, K]
        # torch.sinc(x) = sin(pi x) / (pi x): 2 f sinc(2 f n) is the unit-gain ideal low-pass.
        band_pass = 2 * high * torch.sinc(2 * high * n) - 2 * low * torch.sinc(2 * low * n)
        return (band_pass * self.window).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        """Filter ``x`` ``[B, 1, S]`` into ``[B, n_filters, S]``."""
        pad = (self.kernel_size - 1) // 2
        return F.conv1d(x, self.filters().to(x.dtype), padding=pad)

    def extra_repr(self) -> str:
        return f"{self.n_filters}, kernel_size={self.kernel_size}, sample_rate={self.sample_rate}"


class ConvBlock(nn.Sequential):
    """Centred strided ``Conv1d`` + ``BatchNorm1d`` + ``PReLU``.

    ``[B, C_in, L] → [B, C_out, L / stride]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__(
            CentredConv1d(in_channels, out_channels, kernel_size, stride=stride, bias=False),
            nn.BatchNorm1d(out_channels),
            nn.PReLU(out_channels),
        )


class PasePlus(Encoder):
    """PASE+ encoder: ``wave [B, T*160] → [B, dim, T]`` at 100 frames/s (16 kHz input).

    Parameters
    ----------
    dim : int
        Output channels (PASE+: 256).
    sinc_filters : int
        Number of SincNet band-pass filters (PASE+: 64).
    sinc_kernel : int
        SincNet filter length, odd (PASE+: 251).
    channels : sequence of int
        Output channels of the conv blocks after the sinc layer (PASE+: 64, 128, 128, 256,
        256, 512, 512).
    kernels : sequence of int
        Kernel sizes of the conv blocks (PASE+: 20, then 11).
    strides : sequence of int
        Strides of the conv blocks; their product must be 160 (PASE+: 10, 2, 1, 2, 1, 2, 2).
    rnn : bool
        Bidirectional GRU after the last block. With it the receptive field of every frame
        is the whole input; without it it is local (about +-1,300 samples by default).
    rnn_hidden : int
        GRU hidden size per direction (the GRU outputs ``2 * rnn_hidden`` channels).
    skips : bool
        Skip connections: the output of the sinc block and of every conv block but the last
        is pooled to the frame rate (centred average), projected by a 1x1 conv to ``dim``
        and summed into the output.
    sample_rate : int
        Input sample rate (sets the sinc filters' initial cut-offs); hop stays 160 samples.

    Notes
    -----
    The recurrent layer runs in float32 even under autocast (portable: cuDNN GRUs do not
    take bfloat16 everywhere). Batch norm makes the output depend on the batch in training
    mode; in eval mode samples are independent.
    """

    def __init__(
        self,
        *,
        dim: int = 256,
        sinc_filters: int = 64,
        sinc_kernel: int = 251,
        channels: Sequence[int] = (64, 128, 128, 256, 256, 512, 512),
        kernels: Sequence[int] = (20, 11, 11, 11, 11, 11, 11),
        strides: Sequence[int] = (10, 2, 1, 2, 1, 2, 2),
        rnn: bool = True,
        rnn_hidden: int = 256,
        skips: bool = True,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__()
        channels = as_tuple(channels, "channels")
        kernels = as_tuple(kernels, "kernels")
        strides = as_tuple(strides, "strides")
        if not len(channels) == len(kernels) == len(strides):
            raise ValueError(
                f"channels, kernels and strides must have the same length, got "
                f"{len(channels)}, {len(kernels)}, {len(strides)}"
            )
        if math.prod(strides) != HOP:
            raise ValueError(f"the product of strides must be {HOP}, got {math.prod(strides)}")
        self.dim = int(dim)
        self._config = dict(
            dim=self.dim, sinc_filters=sinc_filters, sinc_kernel=sinc_kernel, channels=channels,
            kernels=kernels, strides=strides, rnn=rnn, rnn_hidden=rnn_hidden, skips=skips,
            sample_rate=sample_rate,
        )

        self.sinc = nn.Sequential(
            SincConv1d(sinc_filters, sinc_kernel, sample_rate=sample_rate),
            nn.BatchNorm1d(sinc_filters),
            nn.PReLU(sinc_filters),
        )
        ins = (sinc_filters, *channels[:-1])
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, k, s)
            for c_in, c_out, k, s in zip(ins, channels, kernels, strides, strict=True)
        )

        # Skip sources: the sinc block and every conv block but the last (which is the main
        # path). ``_skip_factors[i]`` pools source i from its own rate to the frame rate.
        rates = [1]
        for s in strides:
            rates.append(rates[-1] * s)
        self._skip_factors: tuple[int, ...] = tuple(HOP // r for r in rates[:-1]) if skips else ()
        self.skips = nn.ModuleList(
            nn.Conv1d(c, self.dim, 1, bias=False) for c in (ins if skips else ())
        )

        self.rnn: nn.GRU | None = None
        main = channels[-1]
        if rnn:
            self.rnn = nn.GRU(main, rnn_hidden, batch_first=True, bidirectional=True)
            main = 2 * rnn_hidden
        self.proj = nn.Conv1d(main, self.dim, 1)
        self.norm = nn.BatchNorm1d(self.dim, affine=False)

    def encode(self, wave: Tensor) -> Tensor:
        h = self.sinc(wave.unsqueeze(1))  # [B, F, S]
        skips: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            if i < len(self.skips):
                # Average-pool first, then project: both are linear, so this equals
                # project-then-pool at a fraction of the cost on high-rate inputs.
                skips.append(self.skips[i](centred_pool1d(h, self._skip_factors[i])))
            h = block(h)  # [B, C_i, S / rate_i]
        if self.rnn is not None:
            with float32_region(h):
                h, _ = self.rnn(h.float().transpose(1, 2))  # [B, T, 2 * hidden]
            h = h.transpose(1, 2)
        out = self.proj(h)  # [B, dim, T]
        for skip in skips:
            out = out + skip
        out = self.norm(out)
        return out


__all__ = ["PasePlus", "SincConv1d"]
