"""Log-mel spectrogram + 2-D CNN encoder: the spectrogram is computed on the device.

``wave [B, T*160] → STFT (n_fft 1024, hop 160, Hann, center=True, float32 even under
autocast) → mel power → log(mel + 1e-6) → per-bin batch norm → 2-D conv blocks ('same' in
time, max-pooling over frequency only) → 1x1 conv → optional dilated residual 1-D convs over
time (context) → [B, dim, T]``. Frame ``k`` of the STFT is
centred on sample ``k * 160`` and nothing after it strides or shifts time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import SAMPLE_RATE, Encoder, as_tuple, float32_region


class _Block(nn.Module):
    """3x3 conv ('same') + BN + ReLU + max-pool over frequency only.

    ``[B, C_in, F, T] → [B, C_out, F // pool, T]``.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn(self.conv(x)))
        if self.pool > 1:
            x = F.max_pool2d(x, (self.pool, 1))
        return x

    def extra_repr(self) -> str:
        return f"freq_pool={self.pool}"


class _Context(nn.Module):
    """Dilated residual 1-D conv over time: ``x + ReLU(BN(conv_d(x)))``, ``[B, C, T]`` kept.

    A kernel of 3 with dilation ``d`` (padding ``d``) widens the receptive field by ``2 d``
    frames and keeps frame ``k`` centred on frame ``k``.
    """

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation,
                              bias=False)
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.relu(self.bn(self.conv(x)))


class MelCNN(Encoder):
    """Log-mel CNN: ``wave [B, T*160] → [B, dim, T]``.

    Parameters
    ----------
    dim : int
        Output channels.
    n_mels : int
        Mel bands.
    n_fft : int
        FFT size and Hann window length (hop is 160).
    f_min, f_max : float
        Mel range in Hz (``f_max`` None: Nyquist).
    channels : sequence of int
        Output channels of the 2-D conv blocks.
    freq_pools : sequence of int
        Max-pool factor over frequency after each block; the remaining frequency bins
        (``n_mels`` divided down, floor) times the last channel count feed the 1x1 output conv.
    sample_rate : int
        Input sample rate.
    context_layers : int
        Dilated residual 1-D conv layers over time after the 1x1 projection, with dilations
        1, 2, 4, ...: ``n`` layers add ``2 * (2**n - 1)`` frames (10 ms each) to the receptive
        field, which the 3x3 blocks alone keep at ``2 * len(channels) + 1`` frames. 0: none.
    out_norm : bool
        Affine-free batch norm on the output (as PASE+).
    """

    def __init__(
        self,
        *,
        dim: int = 256,
        n_mels: int = 128,
        n_fft: int = 1024,
        f_min: float = 0.0,
        f_max: float | None = None,
        channels: Sequence[int] = (32, 64, 128, 256),
        freq_pools: Sequence[int] = (2, 2, 4, 4),
        sample_rate: int = SAMPLE_RATE,
        context_layers: int = 0,
        out_norm: bool = True,
    ) -> None:
        super().__init__()
        channels = as_tuple(channels, "channels")
        freq_pools = as_tuple(freq_pools, "freq_pools")
        if len(channels) != len(freq_pools):
            raise ValueError(
                f"channels and freq_pools must have the same length, got {len(channels)}, "
                f"{len(freq_pools)}"
            )
        n_bins = n_mels
        for p in freq_pools:
            n_bins //= p
        if n_bins < 1:
            raise ValueError(f"freq_pools {freq_pools} pool n_mels={n_mels} below one bin")
        if context_layers < 0:
            raise ValueError(f"context_layers must be >= 0, got {context_layers}")
        self.dim = int(dim)
        self.n_fft = int(n_fft)
        self._config = dict(
            dim=self.dim, n_mels=n_mels, n_fft=self.n_fft, f_min=f_min, f_max=f_max,
            channels=channels, freq_pools=freq_pools, sample_rate=sample_rate,
            context_layers=int(context_layers), out_norm=out_norm,
        )
        # The Slaney filterbank of the store's fbank target, built once here: librosa is
        # used at construction only, never in forward.
        import librosa

        fb = librosa.filters.mel(sr=sample_rate, n_fft=self.n_fft, n_mels=n_mels, fmin=f_min,
                                 fmax=f_max).astype(np.float32)
        # Derived from the config, so not saved in checkpoints (persistent=False).
        self.register_buffer("mel_fb", torch.from_numpy(fb), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.in_norm = nn.BatchNorm1d(n_mels)
        ins = (1, *channels[:-1])
        self.blocks = nn.Sequential(
            *(_Block(c_in, c_out, p) for c_in, c_out, p in zip(ins, channels, freq_pools,
                                                                strict=True))
        )
        self.proj = nn.Conv1d(channels[-1] * n_bins, self.dim, 1)
        self.context = nn.Sequential(*(_Context(self.dim, 2**i) for i in range(context_layers)))
        self.norm = nn.BatchNorm1d(self.dim, affine=False) if out_norm else nn.Identity()

    def log_mel(self, wave: Tensor) -> Tensor:
        """Log-mel power spectrogram, always float32.

        Parameters
        ----------
        wave : Tensor
            ``[B, S]``, ``S = T * 160``.

        Returns
        -------
        Tensor
            ``[B, n_mels, T]``; frame ``k`` is the window centred on sample ``k * 160``
            (``center=True`` gives ``T + 1`` frames; the last is dropped).
        """
        n_frames = wave.shape[-1] // self.hop
        with float32_region(wave):
            spec = torch.stft(
                wave.float(), self.n_fft, hop_length=self.hop, window=self.window,
                center=True, pad_mode="constant", return_complex=True,
            )  # [B, n_fft // 2 + 1, T + 1]
            power = spec[..., :n_frames].abs().square()
            return torch.log(torch.matmul(self.mel_fb, power) + 1e-6)

    def encode(self, wave: Tensor) -> Tensor:
        x = self.log_mel(wave)
        with float32_region(x):
            x = self.in_norm(x)  # [B, n_mels, T], per-band standardisation
        h = self.blocks(x.unsqueeze(1))  # [B, C, F', T]
        out = self.context(self.proj(h.flatten(1, 2)))  # [B, dim, T]
        return self.norm(out)


__all__ = ["MelCNN"]
