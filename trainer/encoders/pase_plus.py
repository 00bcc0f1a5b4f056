"""PASE+-style waveform encoder (Ravanelli et al. 2020), as adapted to music by Wu et al. 2021.

SincNet band-pass front end, seven strided conv blocks (total stride 160), a bidirectional
GRU (PASE+ uses a QRNN; a GRU is the portable choice), a 1x1 projection, skip connections
from every earlier block summed into the output, and an affine-free batch norm.

Every layer is centred (see :mod:`trainer.encoders._common`): output frame ``k`` is centred
on input sample ``k * 160``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (
    HOP,
    SAMPLE_RATE,
    CentredConv1d,
    Encoder,
    as_tuple,
    centred_padding,
    centred_pool1d,
    float32_region,
)


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _version_key(tensors: Sequence[Tensor]) -> tuple[object, ...] | None:
    """What identifies the values of ``tensors`` for a cache: their identity, version
    counter, device and dtype (None when a tensor has no version counter, as inference
    tensors do: then nothing is cached)."""
    try:
        return tuple((id(t), t._version, t.device, t.dtype) for t in tensors)
    except RuntimeError:
        return None


@contextmanager
def one_cpu_thread(x: Tensor, enabled: bool = True) -> Iterator[None]:
    """Run the enclosed region on one intra-op thread when ``x`` is on the CPU (and
    ``enabled``).

    A recurrent layer does one small matrix product per time step; with two or more
    intra-op threads every step ends in a barrier, which on a machine shared with other
    jobs costs a scheduler time slice whenever the other thread is descheduled (measured:
    a CPU-sized BiGRU over 1,000 frames takes 60 ms on one thread and 0.3-2.4 s on two,
    benchmarks/RESULTS.md). The previous thread count is restored on exit.
    """
    n = torch.get_num_threads()
    if not enabled or x.device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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
        self._cache: tuple[tuple[object, ...], Tensor] | None = None

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

    def cached_filters(self) -> Tensor:
        """:meth:`filters`, computed once per value of the cut-offs where no gradient is
        needed.

        In eval mode with autograd off (or the cut-offs frozen), the bank is kept and
        rebuilt only when ``low`` or ``band`` change (an optimiser step or a loaded state
        dict bumps their version counters) or move to another device; otherwise (training,
        or a gradient wanted) it is computed afresh, so that gradients reach the cut-offs.
        """
        if self.training or (torch.is_grad_enabled()
                             and (self.low.requires_grad or self.band.requires_grad)):
            return self.filters()
        key = _version_key((self.low, self.band))
        cached = self._cache
        if key is None or cached is None or cached[0] != key:
            # A plain tensor even under inference mode, so that it may be used outside it.
            with torch.inference_mode(False), torch.no_grad():
                bank = self.filters()
            if key is not None:
                self._cache = (key, bank)
            return bank
        return cached[1]

    def forward(self, x: Tensor) -> Tensor:
        """Filter ``x`` ``[B, 1, S]`` into ``[B, n_filters, S]``."""
        pad = (self.kernel_size - 1) // 2
        return F.conv1d(x, self.cached_filters().to(x.dtype), padding=pad)

    def extra_repr(self) -> str:
        return f"{self.n_filters}, kernel_size={self.kernel_size}, sample_rate={self.sample_rate}"


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` of an eval-mode ``BatchNorm1d``: ``bn(x) = scale * x + shift``
    per channel (running statistics)."""
    assert isinstance(bn, nn.BatchNorm1d) and bn.running_var is not None
    assert bn.running_mean is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


@dataclass(frozen=True, eq=False)
class _FrontWeights:
    """The folded matrices of :meth:`PasePlus._front_fast` (see
    :meth:`PasePlus._front_weights`)."""

    sinc: Tensor  # [Kp * P, P * F]: polyphase sinc bank, its batch norm folded in
    sinc_bias: Tensor  # [P * F]
    sinc_act: Tensor  # PReLU slopes
    block0: dict[int, Tensor]  # frame offset d -> [n_d * F, C_0] slice of block 0's kernel
    block0_bias: Tensor  # [C_0]
    block0_act: Tensor
    skip0: Tensor | None  # [F, dim], the first skip's projection (None without skips)


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
    take bfloat16 everywhere), and on one intra-op thread on the CPU
    (:func:`one_cpu_thread`). Batch norm makes the output depend on the batch in training
    mode; in eval mode samples are independent.

    In eval mode on the CPU the sinc block, the first conv block and the first skip run as
    matrix products with the batch norms folded in (:meth:`_front_fast`, ``fast_eval``):
    the same function up to float rounding, without the per-shape set-up and the idle
    vector units of a one-channel 251-tap ``Conv1d``; the folded matrices and the sinc bank
    are kept between calls while the weights do not change.
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
        self._front_cache: tuple[tuple[object, ...], _FrontWeights] | None = None

    #: Whether eval mode on the CPU runs the sinc block and the first conv block as the
    #: matrix products of :meth:`_front_fast` (the same function, 1.5-2x faster). Not part
    #: of the architecture; False runs the reference layers.
    fast_eval: bool = True
    #: Whether the GRU runs on one intra-op thread on the CPU (:func:`one_cpu_thread`).
    rnn_one_thread: bool = True
    #: Samples per row of the sinc layer's matrix product in :meth:`_front_fast`; it
    #: divides the hop, so every valid input length is a whole number of rows.
    _SINC_PHASES = 10

    def _front_tensors(self) -> list[Tensor]:
        """Every parameter and buffer that :meth:`_front_weights` reads."""
        sinc, bn, act = self.sinc
        conv, bn0, act0 = self.blocks[0]
        mods = [bn, act, conv, bn0, act0, *self.skips[:1]]
        return [sinc.low, sinc.band, *(t for m in mods for t in (*m.parameters(),
                                                                 *m.buffers()))]

    def _front_weights(self) -> _FrontWeights:
        """The matrices of :meth:`_front_fast`, folded from the eval-mode layers.

        Batch norms (running statistics) are folded into the preceding linear maps; the
        sinc bank becomes a ``[Kp * P, P * F]`` matrix that maps ``Kp`` consecutive rows of
        ``P`` samples to ``P`` output samples of ``F`` channels (polyphase form); the first
        conv block's kernel is split by frame offset ``d`` into ``[n_d * F, C_0]`` matrices.
        Kept (like :meth:`SincConv1d.cached_filters`) while no gradient is needed and the
        tensors they come from keep their versions.
        """
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in self._front_tensors())
        key = None if grad else _version_key(self._front_tensors())
        if key is not None and self._front_cache is not None and self._front_cache[0] == key:
            return self._front_cache[1]
        sinc, bn, act = self.sinc
        conv, bn0, act0 = self.blocks[0]
        with torch.inference_mode(False), torch.set_grad_enabled(grad):
            bank = sinc.cached_filters()[:, 0]  # [F, K]
            scale, shift = _bn_affine(bn)
            bank = bank * scale[:, None]
            n_filters, k = bank.shape
            p = self._SINC_PHASES
            kp = (p + k - 2) // p + 1
            d = torch.arange(kp, device=bank.device)[:, None, None]
            q = torch.arange(p, device=bank.device)[None, :, None]
            r = torch.arange(p, device=bank.device)[None, None, :]
            tap = p * d + q - r  # [Kp, P (input phase), P (output phase)]
            valid = (tap >= 0) & (tap < k)
            w = bank[:, tap.clamp(0, k - 1)] * valid  # [F, Kp, P, P]
            scale0, shift0 = _bn_affine(bn0)
            w0 = conv.weight * scale0[:, None, None]  # [C_0, F, k0]
            s0, k0 = conv.stride[0], conv.kernel_size[0]
            left = centred_padding(k0)[0]
            block0 = {}
            for off in range(-((left + s0 - 1) // s0), (k0 - 1 - left) // s0 + 1):
                t_lo = max(0, s0 * off + left)
                t_hi = min(k0, s0 * (off + 1) + left)  # taps of frame offset ``off``
                if t_lo < t_hi:
                    block0[off] = w0[:, :, t_lo:t_hi].permute(2, 1, 0).reshape(-1, w0.shape[0])
            out = _FrontWeights(
                sinc=w.permute(1, 2, 3, 0).reshape(kp * p, p * n_filters),
                sinc_bias=shift.repeat(p), sinc_act=act.weight, block0=block0,
                block0_bias=shift0, block0_act=act0.weight,
                skip0=self.skips[0].weight[:, :, 0].t() if self.skips else None,  # [F, dim]
            )
        if key is not None:
            self._front_cache = (key, out)
        return out

    def _front_fast(self, wave: Tensor) -> tuple[Tensor, Tensor | None]:
        """The sinc block, the first conv block and the first skip as matrix products.

        The same function as the eval-mode layers (up to float rounding): the sinc
        convolution is one product of the waveform cut into rows of ``P`` samples
        (``Kp`` rows per output row) with :meth:`_front_weights`' polyphase matrix, giving
        the activations channels-last (``[B, S, F]``); the strided first block reads them
        as frames of ``stride * F`` values, one product per frame offset; the first skip
        pools half-hops. A direct ``Conv1d`` with one input channel and a 251-tap kernel
        (or a stride-10 kernel) leaves most of the CPU's vector units idle.

        Returns
        -------
        tuple
            The first block's output ``[B, C_0, S / stride_0]`` and the first skip's
            ``[B, dim, T]`` (None without skips).
        """
        w = self._front_weights()
        b, n = wave.shape
        sinc = self.sinc[0]
        k, p = sinc.kernel_size, self._SINC_PHASES
        kp = (p + k - 2) // p + 1
        rows = n // p
        half = (k - 1) // 2
        xp = F.pad(wave, (half, p * (rows + kp - 1) - n - half))
        cols = xp.unfold(1, kp * p, p).reshape(b * rows, kp * p)
        z = torch.addmm(w.sinc_bias, cols, w.sinc)  # [B * rows, P * F]
        n_filters = sinc.n_filters
        z = F.prelu(z.view(-1, n_filters), w.sinc_act.to(z.dtype)).view(b, n, n_filters)

        conv = self.blocks[0][0]
        s0 = conv.stride[0]
        left = centred_padding(conv.kernel_size[0])[0]
        m = n // s0
        # Rows are frames of s0 samples x F channels; 2-D slices of them are strided
        # matrices that the products read in place.
        frames = z.view(b * m, s0 * n_filters)
        w00 = w.block0[0]
        h = torch.addmm(w.block0_bias.to(z.dtype), frames[:, : w00.shape[0]], w00)
        h = h.view(b, m, -1)
        for off, wd in w.block0.items():  # output frame j reads frame j + off ...
            if off == 0 or abs(off) >= m:
                continue
            r_a = max(0, -(s0 * off + left))  # ... from its phase r_a (tap s0*off + r + left)
            part = torch.mm(frames[:, r_a * n_filters : r_a * n_filters + wd.shape[0]], wd)
            part = part.view(b, m, -1)
            if off < 0:
                h[:, -off:] += part[:, : m + off]
            else:
                h[:, : m - off] += part[:, off:]
        h = F.prelu(h.reshape(-1, h.shape[-1]), w.block0_act.to(h.dtype)).view(b, m, -1)
        h = h.transpose(1, 2)

        skip = None
        if w.skip0 is not None:
            hop = HOP
            t = n // hop
            hh = hop // 2
            halves = z.view(b, 2 * t, hh, n_filters).sum(2, dtype=torch.float32)
            total = halves[:, 0::2] + z.view(b, t, hop, n_filters)[:, :, hh].float()
            total[:, 1:] += halves[:, 1 : 2 * t - 1 : 2]
            count = torch.full((t, 1), 2.0 * hh + 1, device=wave.device)
            count[0] = hh + 1
            skip = torch.matmul((total / count).to(z.dtype), w.skip0).transpose(1, 2)
        return h, skip

    def encode(self, wave: Tensor) -> Tensor:
        skips: list[Tensor] = []
        start = 0
        if self.fast_eval and not self.training and wave.device.type == "cpu":
            h, first_skip = self._front_fast(wave)  # the sinc block and block 0
            skips += [first_skip] if first_skip is not None else []
            start = 1
        else:
            h = self.sinc(wave.unsqueeze(1))  # [B, F, S]
        for i in range(start, len(self.blocks)):
            if i < len(self.skips):
                # Average-pool first, then project: both are linear, so this equals
                # project-then-pool at a fraction of the cost on high-rate inputs.
                skips.append(self.skips[i](centred_pool1d(h, self._skip_factors[i])))
            h = self.blocks[i](h)  # [B, C_i, S / rate_i]
        if self.rnn is not None:
            with float32_region(h), one_cpu_thread(h, self.rnn_one_thread):
                h, _ = self.rnn(h.float().transpose(1, 2))  # [B, T, 2 * hidden]
            h = h.transpose(1, 2)
        out = self.proj(h)  # [B, dim, T]
        for skip in skips:
            out = out + skip
        out = self.norm(out)
        return out


__all__ = ["PasePlus", "SincConv1d"]
