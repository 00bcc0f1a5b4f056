"""Sample-level CNN on the raw waveform (Lee et al. 2017), adapted to a 100 Hz frame output.

Lee et al. stack small-kernel convolutions and max-pooling stages of factor 3 from a stride-3
first layer up to one clip-level vector. Here the stride-5 stem and the pooling factors
(default 4, 4, 2) multiply to exactly 160, and stride-1 blocks at the frame rate follow, so
``wave [B, T*160] → [B, dim, T]``. Every stage is centred: output frame ``k`` is centred on
input sample ``k * 160``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from ._common import HOP, CentredConv1d, Encoder, as_tuple, centred_pool1d


class _Stage(nn.Module):
    """Conv ('same') + BN + ReLU + centred max-pool: ``[B, C_in, L] → [B, C_out, L / pool]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, pool: int) -> None:
        super().__init__()
        self.conv = CentredConv1d(in_channels, out_channels, kernel_size, bias=False)
        self.bn = nn.BatchNorm1d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        return centred_pool1d(self.act(self.bn(self.conv(x))), self.pool, mode="max")

    def extra_repr(self) -> str:
        return f"pool={self.pool}"


class SampleCNN(Encoder):
    """Sample-level CNN: ``wave [B, T*160] → [B, dim, T]``.

    Parameters
    ----------
    dim : int
        Output channels.
    stem_channels : int
        Channels of the strided first convolution.
    stem_stride : int
        Stride of the first convolution; its kernel is ``stem_stride`` rounded up to odd
        (centred).
    channels : sequence of int
        Output channels of each stage (conv + BN + ReLU + max-pool).
    pools : sequence of int
        Max-pool factor of each stage (1 = a stride-1 stage); ``stem_stride * prod(pools)``
        must be 160.
    kernel_size : int
        Kernel size of the stage convolutions (Lee et al.: 3).
    out_norm : bool
        Affine-free batch norm on the output (as PASE+).
    """

    def __init__(
        self,
        *,
        dim: int = 256,
        stem_channels: int = 128,
        stem_stride: int = 5,
        channels: Sequence[int] = (128, 128, 256, 256, 512, 512),
        pools: Sequence[int] = (4, 4, 2, 1, 1, 1),
        kernel_size: int = 3,
        out_norm: bool = True,
    ) -> None:
        super().__init__()
        channels = as_tuple(channels, "channels")
        pools = as_tuple(pools, "pools")
        if len(channels) != len(pools):
            raise ValueError(
                f"channels and pools must have the same length, got {len(channels)}, {len(pools)}"
            )
        if stem_stride * math.prod(pools) != HOP:
            raise ValueError(
                f"stem_stride * prod(pools) must be {HOP}, got {stem_stride * math.prod(pools)}"
            )
        self.dim = int(dim)
        self._config = dict(
            dim=self.dim, stem_channels=stem_channels, stem_stride=stem_stride,
            channels=channels, pools=pools, kernel_size=kernel_size, out_norm=out_norm,
        )
        stem_kernel = stem_stride + (1 - stem_stride % 2)
        self.stem = nn.Sequential(
            CentredConv1d(1, stem_channels, stem_kernel, stride=stem_stride, bias=False),
            nn.BatchNorm1d(stem_channels),
            nn.ReLU(inplace=True),
        )
        ins = (stem_channels, *channels[:-1])
        self.stages = nn.Sequential(
            *(_Stage(c_in, c_out, kernel_size, p)
              for c_in, c_out, p in zip(ins, channels, pools, strict=True))
        )
        self.proj = nn.Conv1d(channels[-1], self.dim, 1)
        self.norm = nn.BatchNorm1d(self.dim, affine=False) if out_norm else nn.Identity()

    def encode(self, wave: Tensor) -> Tensor:
        h = self.stages(self.stem(wave.unsqueeze(1)))  # [B, C, T]
        out = self.norm(self.proj(h))
        return out


__all__ = ["SampleCNN"]
