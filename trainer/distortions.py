"""PASE+-style input distortions for music, applied batched on the training device.

The data path hands over clean waveform crops; the targets are computed from the clean crop
and never pass through here. Only the encoder's input is corrupted: each distortion kind is
applied to each example independently with its own probability, in a fixed chain

    reverb -> additive noise -> band drop -> gain -> clipping -> time mask

(a room, then the background, then the channel, then the device). Everything is vectorised
over the batch (masks choose which rows change), random numbers come from the caller's
generator on the waveform's device, and the input tensor is never modified.

``Distortions.draw`` samples the random parameters and ``Distortions.apply`` applies them;
``forward`` is the two together. Tests and logging can inspect the drawn parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

__all__ = ["DistortionConfig", "Distortions"]

#: 20 * log10(e^x) = -60 dB  <=>  x = -ln(1000): amplitude decay over one RT60.
_LN_1000 = math.log(1000.0)
#: Standard deviation of the reverberant tail relative to the direct path (before
#: normalising the impulse response to unit energy).
_TAIL_STD = 0.1


@dataclass
class DistortionConfig:
    """Probabilities and parameter ranges of the distortions (ranges are inclusive).

    Attributes
    ----------
    p_noise, snr_db
        Additive noise at a uniform SNR in dB: 50/50 another clip of the batch (the batch
        rolled by one) or synthetic white / pink / brown noise.
    p_reverb, rt60
        Convolution with a synthetic room impulse response: a unit direct path followed by
        exponentially decaying Gaussian noise with a uniform RT60 in seconds; FFT
        convolution, output truncated to the input length.
    p_band_drop, band_hz
        Band-reject: zero the FFT bins of a band 0.5-1 octave wide whose (geometric) centre
        frequency is log-uniform in ``band_hz``.
    p_clip, clip_level
        Hard clipping at a uniform fraction of the example's peak.
    p_gain, gain_db
        Gain, uniform in dB.
    p_mask, mask_fraction
        Time masking: zero one contiguous span of a uniform fraction of the length.
    sample_rate
        Sampling rate in Hz.
    """

    p_noise: float = 0.4
    snr_db: tuple[float, float] = (5.0, 20.0)
    p_reverb: float = 0.3
    rt60: tuple[float, float] = (0.2, 1.0)
    p_band_drop: float = 0.2
    band_hz: tuple[float, float] = (100.0, 4000.0)
    p_clip: float = 0.1
    clip_level: tuple[float, float] = (0.1, 0.5)
    p_gain: float = 0.3
    gain_db: tuple[float, float] = (-12.0, 6.0)
    p_mask: float = 0.2
    mask_fraction: tuple[float, float] = (0.05, 0.2)
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_"):
                if not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"{f.name} must be in [0, 1], got {value}")
            elif isinstance(value, (tuple, list)):
                lo, hi = (float(v) for v in value)
                if not lo <= hi:
                    raise ValueError(f"{f.name} must be (low, high) with low <= high, got {value}")
                setattr(self, f.name, (lo, hi))
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {self.sample_rate}")
        if self.rt60[0] <= 0:
            raise ValueError(f"rt60 must be > 0 s, got {self.rt60}")
        if self.band_hz[0] <= 0:
            raise ValueError(f"band_hz must be > 0 Hz, got {self.band_hz}")
        if not (0.0 < self.clip_level[0] and self.clip_level[1] <= 1.0):
            raise ValueError(f"clip_level must lie in (0, 1], got {self.clip_level}")
        if not (0.0 <= self.mask_fraction[0] and self.mask_fraction[1] <= 1.0):
            raise ValueError(f"mask_fraction must lie in [0, 1], got {self.mask_fraction}")

    @classmethod
    def off(cls, sample_rate: int = 16000) -> DistortionConfig:
        """A configuration with every probability 0 (the identity)."""
        return cls(
            p_noise=0.0,
            p_reverb=0.0,
            p_band_drop=0.0,
            p_clip=0.0,
            p_gain=0.0,
            p_mask=0.0,
            sample_rate=sample_rate,
        )

    @property
    def enabled(self) -> bool:
        """Whether any distortion has a non-zero probability."""
        return any(getattr(self, f.name) > 0 for f in fields(self) if f.name.startswith("p_"))


def _uniform(
    lo: float, hi: float, n: int, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device, generator=generator)


def _coin(p: float, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def _power(x: Tensor) -> Tensor:
    """Mean power per row, ``[B, S] -> [B]``."""
    return x.square().mean(dim=-1)


class Distortions(nn.Module):
    """Batched, device-side distortion of clean waveforms (PASE+'s denoising objective).

    Parameters
    ----------
    config : DistortionConfig
        Probabilities and ranges.

    Notes
    -----
    Computation is in float32; the output has the input's dtype. The module has no
    parameters or buffers. A kind whose probability is 0 draws no random numbers.
    """

    def __init__(self, config: DistortionConfig) -> None:
        super().__init__()
        self.config = config

    def extra_repr(self) -> str:
        return repr(self.config)

    @property
    def rir_length(self) -> int:
        """Impulse-response length in samples (the longest RT60 of the range)."""
        return max(1, math.ceil(self.config.rt60[1] * self.config.sample_rate))

    # -- sampling ----------------------------------------------------------------------------
    def draw(
        self,
        batch: int,
        length: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Sample every random parameter for a batch.

        Parameters
        ----------
        batch, length : int
            Batch size ``B`` and samples per example ``S``.
        device : torch.device or str
            Where to draw (the waveform's device).
        generator : torch.Generator, optional
            Source of randomness on ``device``; the device's default generator if None.

        Returns
        -------
        dict[str, Tensor]
            For each enabled kind, ``<kind>_on`` (bool ``[B]``) and its parameters:
            ``reverb_rt60`` ``[B]`` s, ``reverb_rir`` ``[B, L]``; ``noise_snr_db`` ``[B]``,
            ``noise_from_batch`` bool ``[B]``, ``noise_color`` long ``[B]`` (0 white, 1 pink,
            2 brown), ``noise_white`` ``[B, S]``; ``band_lo_hz``, ``band_hi_hz`` ``[B]``;
            ``gain_db`` ``[B]``; ``clip_level`` ``[B]`` (fraction of the peak);
            ``mask_start``, ``mask_length`` long ``[B]`` samples.
        """
        cfg = self.config
        dev = torch.device(device)
        if generator is not None and generator.device.type != dev.type:
            raise ValueError(f"generator is on {generator.device}, waveform on {dev}")
        b, g = batch, generator
        out: dict[str, Tensor] = {}
        if cfg.p_reverb > 0:
            out["reverb_on"] = _coin(cfg.p_reverb, b, dev, g)
            rt60 = _uniform(*cfg.rt60, b, dev, g)
            n = self.rir_length
            t = torch.arange(n, device=dev, dtype=torch.float32) / cfg.sample_rate
            decay = torch.exp(-_LN_1000 * t / rt60[:, None])
            rir = _TAIL_STD * torch.randn(b, n, device=dev, generator=g) * decay
            rir[:, 0] = 1.0  # direct path first
            out["reverb_rt60"] = rt60
            out["reverb_rir"] = rir / torch.linalg.vector_norm(rir, dim=-1, keepdim=True)
        if cfg.p_noise > 0:
            out["noise_on"] = _coin(cfg.p_noise, b, dev, g)
            out["noise_snr_db"] = _uniform(*cfg.snr_db, b, dev, g)
            out["noise_from_batch"] = _coin(0.5, b, dev, g) & (b > 1)
            out["noise_color"] = torch.randint(0, 3, (b,), device=dev, generator=g)
            out["noise_white"] = torch.randn(b, length, device=dev, generator=g)
        if cfg.p_band_drop > 0:
            out["band_on"] = _coin(cfg.p_band_drop, b, dev, g)
            lo, hi = cfg.band_hz
            centre = torch.exp(_uniform(math.log(lo), math.log(hi), b, dev, g))
            half_width = 0.5 * _uniform(0.5, 1.0, b, dev, g)  # octaves
            out["band_lo_hz"] = centre * torch.exp2(-half_width)
            out["band_hi_hz"] = centre * torch.exp2(half_width)
        if cfg.p_gain > 0:
            out["gain_on"] = _coin(cfg.p_gain, b, dev, g)
            out["gain_db"] = _uniform(*cfg.gain_db, b, dev, g)
        if cfg.p_clip > 0:
            out["clip_on"] = _coin(cfg.p_clip, b, dev, g)
            out["clip_level"] = _uniform(*cfg.clip_level, b, dev, g)
        if cfg.p_mask > 0:
            out["mask_on"] = _coin(cfg.p_mask, b, dev, g)
            span = torch.round(_uniform(*cfg.mask_fraction, b, dev, g) * length).long()
            span = span.clamp(0, length)
            start = torch.floor(torch.rand(b, device=dev, generator=g) * (length - span + 1)).long()
            out["mask_start"] = torch.minimum(start, length - span)
            out["mask_length"] = span
        return out

    # -- application -------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, wave: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Apply drawn parameters to a batch of clean waveforms.

        Parameters
        ----------
        wave : Tensor
            ``[B, S]`` clean waveforms (not modified).
        params : dict[str, Tensor]
            Output of :meth:`draw` for this batch size and length.

        Returns
        -------
        Tensor
            A new ``[B, S]`` tensor with ``wave``'s dtype.
        """
        if wave.ndim != 2:
            raise ValueError(f"expected wave [B, S], got shape {tuple(wave.shape)}")
        clean = wave.detach().to(torch.float32)
        x = clean.clone()
        length = x.shape[-1]
        sr = self.config.sample_rate

        if "reverb_on" in params:
            rir = params["reverb_rir"]
            n_fft = 1 << (length + rir.shape[-1] - 2).bit_length()
            wet = torch.fft.irfft(
                torch.fft.rfft(x, n=n_fft) * torch.fft.rfft(rir, n=n_fft), n=n_fft
            )[:, :length]
            x = torch.where(params["reverb_on"][:, None], wet, x)

        if "noise_on" in params:
            other = clean.roll(1, dims=0)
            use_other = params["noise_from_batch"] & (_power(other) > 0)
            noise = torch.where(
                use_other[:, None],
                other,
                self._colored(params["noise_white"], params["noise_color"]),
            )
            snr = torch.pow(10.0, params["noise_snr_db"] / 10.0)
            tiny = torch.finfo(torch.float32).tiny
            scale = torch.sqrt(_power(x) / (_power(noise).clamp_min(tiny) * snr))
            x = torch.where(params["noise_on"][:, None], x + scale[:, None] * noise, x)

        if "band_on" in params:
            freqs = torch.fft.rfftfreq(length, d=1.0 / sr, device=x.device)
            inside = (freqs >= params["band_lo_hz"][:, None]) & (
                freqs <= params["band_hi_hz"][:, None]
            )
            spec = torch.fft.rfft(x).masked_fill(inside, 0)
            x = torch.where(params["band_on"][:, None], torch.fft.irfft(spec, n=length), x)

        if "gain_on" in params:
            gain = torch.pow(10.0, params["gain_db"] / 20.0)
            x = torch.where(params["gain_on"][:, None], x * gain[:, None], x)

        if "clip_on" in params:
            limit = (params["clip_level"] * x.abs().amax(dim=-1))[:, None]
            x = torch.where(params["clip_on"][:, None], torch.clamp(x, -limit, limit), x)

        if "mask_on" in params:
            idx = torch.arange(length, device=x.device)
            start = params["mask_start"][:, None]
            zero = (
                (idx >= start)
                & (idx < start + params["mask_length"][:, None])
                & params["mask_on"][:, None]
            )
            x = x.masked_fill(zero, 0.0)

        return x.to(wave.dtype)

    @staticmethod
    def _colored(white: Tensor, color: Tensor) -> Tensor:
        """Shape white noise to a ``1 / f ** color`` power spectrum (DC removed)."""
        length = white.shape[-1]
        f = torch.fft.rfftfreq(length, device=white.device)
        f = f.clamp_min(f[1] if f.numel() > 1 else 1.0)
        shape = f[None, :].pow(-0.5 * color[:, None].to(torch.float32))
        shape[:, 0] = 0.0
        return torch.fft.irfft(torch.fft.rfft(white) * shape, n=length)

    def forward(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Distort a batch: ``apply(wave, draw(...))``.

        Parameters
        ----------
        wave : Tensor
            ``[B, S]`` clean waveforms (not modified).
        generator : torch.Generator, optional
            Generator on ``wave``'s device, for reproducible (and resumable) draws.

        Returns
        -------
        Tensor
            A new ``[B, S]`` tensor, same dtype and device.
        """
        if wave.ndim != 2:
            raise ValueError(f"expected wave [B, S], got shape {tuple(wave.shape)}")
        params = self.draw(wave.shape[0], wave.shape[1], wave.device, generator)
        return self.apply(wave, params)
