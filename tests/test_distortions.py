"""Tests for trainer.distortions: each kind's defining behaviour on signals with known answers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from trainer.distortions import DistortionConfig, Distortions

SR = 16000
KINDS = ("noise", "reverb", "band_drop", "clip", "gain", "mask")


def _only(kind: str, **overrides: object) -> Distortions:
    """Distortions with one kind at p=1 and everything else off."""
    cfg = dataclasses.replace(DistortionConfig.off(), **{f"p_{kind}": 1.0}, **overrides)
    return Distortions(cfg)


def _all_on() -> Distortions:
    return Distortions(DistortionConfig(**{f"p_{k}": 1.0 for k in KINDS}))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _music(batch: int = 4, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Chords of decaying partials plus a little noise: no exact zeros anywhere."""
    g = _gen(seed)
    t = torch.arange(int(seconds * SR)) / SR
    out = torch.zeros(batch, t.numel())
    for b in range(batch):
        for f0 in (110.0 * 2 ** (b / 12), 138.6, 164.8):
            for h in range(1, 6):
                phase = 2 * math.pi * torch.rand((), generator=g)
                out[b] += 0.2 / h * torch.sin(2 * math.pi * f0 * h * t + phase)
    out += 0.01 * torch.randn(out.shape, generator=g)
    return out * torch.exp(-t)[None] + 0.05


def _tone(freq: float, seconds: float = 1.0, phase: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return torch.sin(2 * math.pi * freq * t + phase)


def _db(x: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(x.square().mean(dim=-1))


# -- general contract ------------------------------------------------------------------------
def test_input_unchanged_output_differs_shape_dtype_finite() -> None:
    wave = _music()
    before = wave.clone()
    y = _all_on()(wave, generator=_gen())
    assert torch.equal(wave, before)
    assert y.shape == wave.shape and y.dtype == wave.dtype and y.device == wave.device
    assert torch.isfinite(y).all()
    assert not torch.allclose(y, wave)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_leaves_input_alone(kind: str) -> None:
    wave = _music()
    before = wave.clone()
    y = _only(kind)(wave, generator=_gen())
    assert torch.equal(wave, before)
    assert not torch.equal(y, wave)
    assert y.data_ptr() != wave.data_ptr()


def test_all_off_is_identity() -> None:
    wave = _music()
    for cfg in (DistortionConfig.off(), DistortionConfig(**{f"p_{k}": 0.0 for k in KINDS})):
        assert not cfg.enabled
        y = Distortions(cfg)(wave, generator=_gen())
        assert torch.equal(y, wave)
        assert y.data_ptr() != wave.data_ptr()  # a new tensor
        y.zero_()
        assert wave.abs().sum() > 0


def test_silent_and_low_precision_inputs_stay_finite() -> None:
    wave = _music(batch=3)
    wave[1] = 0.0
    y = _all_on()(wave, generator=_gen(3))
    assert torch.isfinite(y).all()
    yb = _all_on()(wave.to(torch.bfloat16), generator=_gen(3))
    assert yb.dtype == torch.bfloat16 and torch.isfinite(yb.float()).all()


def test_deterministic_with_same_seed() -> None:
    wave = _music()
    d = _all_on()
    y1, y2 = d(wave, generator=_gen(7)), d(wave, generator=_gen(7))
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, d(wave, generator=_gen(8)))


def test_applied_per_example_with_its_probability() -> None:
    wave = _music(batch=2).repeat(200, 1)
    d = Distortions(dataclasses.replace(DistortionConfig.off(), p_gain=0.5))
    params = d.draw(*wave.shape, generator=_gen(1))
    y = d.apply(wave, params)
    changed = (y != wave).any(dim=-1)
    assert torch.equal(changed, params["gain_on"] & (params["gain_db"] != 0))
    assert 0.4 < changed.float().mean().item() < 0.6


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="p_noise"):
        DistortionConfig(p_noise=1.5)
    with pytest.raises(ValueError, match="snr_db"):
        DistortionConfig(snr_db=(20.0, 5.0))
    with pytest.raises(ValueError, match="generator"):
        _all_on().draw(2, 100, device="meta", generator=_gen())


# -- each kind's defining behaviour ----------------------------------------------------------
def test_clipping_caps_at_fraction_of_peak() -> None:
    wave = _music(batch=8)
    d = _only("clip")
    params = d.draw(*wave.shape, generator=_gen())
    y = d.apply(wave, params)
    level = params["clip_level"]
    assert ((level >= 0.1) & (level <= 0.5)).all()
    limit = level * wave.abs().amax(dim=-1)
    assert (y.abs().amax(dim=-1) <= limit * (1 + 1e-6)).all()
    below = wave.abs() < limit[:, None]
    assert torch.equal(y[below], wave[below])  # samples under the limit are untouched
    assert torch.allclose(y.abs().amax(dim=-1), limit)


def test_gain_scales_by_drawn_factor_in_range() -> None:
    wave = _music(batch=16)
    d = _only("gain")
    params = d.draw(*wave.shape, generator=_gen())
    y = d.apply(wave, params)
    g = (y * wave).sum(-1) / wave.square().sum(-1)  # least-squares gain per example
    torch.testing.assert_close(y, g[:, None] * wave)
    torch.testing.assert_close(g, 10 ** (params["gain_db"] / 20))
    assert (g >= 10 ** (-12 / 20) - 1e-6).all() and (g <= 10 ** (6 / 20) + 1e-6).all()


def test_band_drop_removes_in_band_tone_keeps_far_tones() -> None:
    # centre forced to 1 kHz: the band is [1000 * 2**-w/2, 1000 * 2**w/2], w in [0.5, 1] oct
    d = _only("band_drop", band_hz=(1000.0, 1000.0))
    wave = torch.stack([_tone(1000.0), _tone(960.0), _tone(250.0), _tone(5000.0)])
    params = d.draw(*wave.shape, generator=_gen())
    assert (params["band_lo_hz"] <= 841.0).all() and (params["band_hi_hz"] >= 1189.0).all()
    y = d.apply(wave, params)
    drop = _db(wave) - _db(y)
    assert (drop[:2] > 30).all(), drop
    assert (drop[2:].abs() < 1).all(), drop


def test_band_drop_band_is_half_to_one_octave() -> None:
    d = _only("band_drop")
    params = d.draw(256, 1000, generator=_gen())
    octaves = torch.log2(params["band_hi_hz"] / params["band_lo_hz"])
    assert (octaves >= 0.5 - 1e-5).all() and (octaves <= 1.0 + 1e-5).all()
    centre = torch.sqrt(params["band_hi_hz"] * params["band_lo_hz"])
    assert (centre >= 100 * (1 - 1e-5)).all() and (centre <= 4000 * (1 + 1e-5)).all()


def test_time_mask_zeroes_one_span_of_expected_length() -> None:
    wave = _music(batch=6)
    assert (wave != 0).all()
    d = _only("mask", mask_fraction=(0.1, 0.1))
    params = d.draw(*wave.shape, generator=_gen())
    y = d.apply(wave, params)
    expected = round(0.1 * wave.shape[1])
    for b in range(wave.shape[0]):
        zeros = torch.nonzero(y[b] == 0).squeeze(-1)
        assert zeros.numel() == expected
        assert (zeros.diff() == 1).all()  # contiguous
        assert zeros[0].item() == params["mask_start"][b].item()
        keep = y[b] != 0
        assert torch.equal(y[b][keep], wave[b][keep])


def test_reverb_adds_decaying_tail_and_keeps_length() -> None:
    d = _only("reverb", rt60=(0.5, 0.5))
    burst = torch.zeros(2, SR)
    burst[:, :160] = torch.randn(2, 160, generator=_gen(5))  # 10 ms burst
    params = d.draw(*burst.shape, generator=_gen())
    y = d.apply(burst, params)
    assert y.shape == burst.shape
    after = slice(400, 4000)
    assert burst[:, after].abs().max() == 0
    tail = y[:, after].square().mean(-1)
    assert (10 * torch.log10(tail / burst[:, :160].square().mean(-1)) > -40).all()
    # decaying: 60 dB per RT60, so about 24 dB between windows 0.2 s apart
    early = y[:, 800:2400].square().mean(-1)
    late = y[:, 4000:5600].square().mean(-1)
    torch.testing.assert_close(
        10 * torch.log10(early / late), torch.full((2,), 24.0), atol=3.0, rtol=0
    )


def test_reverb_of_impulse_is_direct_path_first_rir() -> None:
    d = _only("reverb")
    impulse = torch.zeros(3, 2 * SR)
    impulse[:, 0] = 1.0
    params = d.draw(*impulse.shape, generator=_gen())
    y = d.apply(impulse, params)
    rir = params["reverb_rir"]
    torch.testing.assert_close(y[:, : rir.shape[1]], rir, atol=1e-5, rtol=0)
    assert (y[:, 0] == y.abs().amax(-1)).all()  # direct path is the first and largest tap
    torch.testing.assert_close(rir.square().sum(-1), torch.ones(3))
    assert (params["reverb_rt60"] >= 0.2).all() and (params["reverb_rt60"] <= 1.0).all()


def test_noise_snr_matches_drawn_value() -> None:
    wave = _music(batch=16)
    d = _only("noise")
    params = d.draw(*wave.shape, generator=_gen(2))
    kinds = params["noise_from_batch"]
    assert kinds.any() and (~kinds).any()  # both sources exercised with this seed
    y = d.apply(wave, params)
    snr = _db(wave) - _db(y - wave)
    torch.testing.assert_close(snr, params["noise_snr_db"], atol=1.0, rtol=0)
    assert ((snr > 5 - 1) & (snr < 20 + 1)).all()
    # "another clip of the batch": the added noise is the neighbouring clean clip, scaled
    other = wave.roll(1, dims=0)
    for b in torch.nonzero(kinds).squeeze(-1).tolist():
        added = y[b] - wave[b]
        corr = (added * other[b]).sum() / (added.norm() * other[b].norm())
        assert corr.item() > 0.9999


def test_noise_narrow_range_and_colours() -> None:
    wave = _music(batch=64)
    d = _only("noise", snr_db=(12.0, 12.0))
    params = d.draw(*wave.shape, generator=_gen())
    params["noise_from_batch"][:] = False
    y = d.apply(wave, params)
    torch.testing.assert_close(_db(wave) - _db(y - wave), torch.full((64,), 12.0), atol=1.0, rtol=0)
    # white / pink / brown: power spectrum slope of 0 / -1 / -2 in log-log
    noise = y - wave
    spec = torch.fft.rfft(noise).abs().square()
    f = torch.fft.rfftfreq(noise.shape[1], d=1 / SR)
    band = (f >= 50) & (f <= 5000)
    lx = torch.log10(f[band])
    for color in range(3):
        rows = params["noise_color"] == color
        assert rows.any()
        ly = torch.log10(spec[rows][:, band].mean(0))
        slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / (lx - lx.mean()).square().sum()
        assert slope.item() == pytest.approx(-color, abs=0.15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_contract() -> None:
    wave = _music().cuda()
    before = wave.clone()
    d = _all_on()
    g1 = torch.Generator(device="cuda").manual_seed(0)
    g2 = torch.Generator(device="cuda").manual_seed(0)
    y1, y2 = d(wave, generator=g1), d(wave, generator=g2)
    assert torch.equal(wave, before) and torch.equal(y1, y2)
    assert y1.is_cuda and torch.isfinite(y1).all() and not torch.allclose(y1, wave)
