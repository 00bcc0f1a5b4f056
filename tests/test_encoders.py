"""Encoders: the frame-grid contract (shape, centring), rebuild from config, known answers.

Tiny configurations keep the file fast on CPU; the default configurations are only built
(parameter counts) and run once on a short input.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from trainer.encoders import ENCODERS, MelCNN, PasePlus, SampleCNN, build_encoder, count_parameters
from trainer.encoders.pase_plus import SincConv1d

HOP = 160

# Tiny but structurally complete configurations (same strides/pools as the defaults).
TINY: dict[str, dict[str, Any]] = {
    "pase+": dict(sinc_filters=8, channels=[8] * 7, dim=16, rnn_hidden=8),
    "samplecnn": dict(stem_channels=8, channels=[8, 8, 8, 8], pools=[4, 4, 2, 1], dim=16),
    "melcnn": dict(n_mels=32, channels=[4, 8], freq_pools=[2, 4], dim=16),
}
# The bidirectional GRU makes every PASE+ frame depend on the whole input, so centring is
# tested on the convolutional part (rnn=False); the GRU maps frames 1:1 (tested separately).
LOCAL = {**TINY, "pase+": {**TINY["pase+"], "rnn": False}}


def tiny(name: str, **overrides: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_encoder(name, **{**TINY[name], **overrides}).eval()


def noise(batch: int, frames: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(batch, frames * HOP, generator=gen)).clamp(-1, 1)


def test_registry() -> None:
    assert set(ENCODERS) == {"pase+", "samplecnn", "melcnn"}
    assert set(TINY) == set(ENCODERS)
    assert isinstance(build_encoder("pase+", **TINY["pase+"]), PasePlus)
    with pytest.raises(ValueError, match=r"unknown encoder 'nope'.*melcnn.*pase\+.*samplecnn"):
        build_encoder("nope")


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_attributes(name: str) -> None:
    enc = tiny(name)
    assert enc.hop == HOP
    assert enc.dim == TINY[name]["dim"]


@pytest.mark.parametrize("frames", [1, 2, 7, 200])
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_output_shape(name: str, frames: int) -> None:
    enc = tiny(name)
    with torch.no_grad():
        out = enc(noise(2, frames))
    assert out.shape == (2, enc.dim, frames)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_train_mode_backward(name: str) -> None:
    enc = tiny(name).train()
    out = enc(noise(2, 5))
    assert out.shape == (2, enc.dim, 5)
    out.square().mean().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("samples", [0, 159, 161, 1000, 32001])
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_rejects_bad_lengths(name: str, samples: int) -> None:
    enc = tiny(name)
    with pytest.raises(ValueError, match="multiple of hop=160"):
        enc(torch.zeros(1, samples))


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_rejects_bad_rank(name: str) -> None:
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        tiny(name)(torch.zeros(1, 1, 1600))


def _grad_profile(enc: nn.Module, frames: int, k: int) -> Tensor:
    """|d sum_c out[b, c, k] / d wave[b, :]| summed over a batch of 3 noise inputs: ``[S]``."""
    wave = noise(3, frames, seed=1).requires_grad_()
    enc(wave)[:, :, k].sum().backward()
    assert wave.grad is not None
    return wave.grad.abs().sum(0).double()


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_frame_k_is_centred_on_sample_k_hop(name: str) -> None:
    # Frame k of every target describes the window centred on sample k*hop (librosa
    # center=True), so the encoder's frame k must look at the same place: the centre of mass
    # of |d frame_k / d wave| must lie within hop/2 of k*hop, and the receptive field (the
    # support of the gradient) must be symmetric about it. Random init, eval mode, and a
    # frame far enough from the edges that the receptive field is not clipped.
    torch.manual_seed(0)
    enc = build_encoder(name, **LOCAL[name]).eval()
    frames, k = 40, 20
    g = _grad_profile(enc, frames, k)
    pos = torch.arange(g.numel(), dtype=torch.float64)
    centre = (g * pos).sum() / g.sum()
    assert abs(centre.item() - k * HOP) <= HOP / 2
    support = torch.nonzero(g).squeeze(1)
    first, last = support.min().item(), support.max().item()
    assert first > 0 and last < g.numel() - 1, "receptive field clipped: use more frames"
    # Exactly symmetric for odd kernels; PASE+'s kernel-20 block is half a sample late.
    assert abs((first + last) / 2 - k * HOP) <= 1


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_shift_by_hop_shifts_by_one_frame(name: str) -> None:
    # With no recurrent layer every encoder is shift-equivariant on the frame grid:
    # delaying the input by one hop delays the output by exactly one frame (away from the
    # zero-padded edges). This fails if any layer's phase does not divide the grid.
    torch.manual_seed(0)
    enc = build_encoder(name, **LOCAL[name]).eval()
    wave = noise(1, 40, seed=2)
    shifted = torch.cat([torch.zeros(1, HOP), wave[:, :-HOP]], dim=1)
    with torch.no_grad():
        a, b = enc(wave), enc(shifted)
    torch.testing.assert_close(b[:, :, 16:25], a[:, :, 15:24], rtol=1e-4, atol=1e-5)


def test_pase_rnn_is_global_but_frame_exact() -> None:
    enc = tiny("pase+")
    assert enc.rnn is not None
    frames = 12
    g = _grad_profile(enc, frames, 0)
    # Frame 0 sees the last sample through the backward GRU: no local receptive field ...
    assert g[-HOP:].sum() > 0
    # ... while the frame count stays exact.
    with torch.no_grad():
        assert enc(noise(1, frames)).shape == (1, enc.dim, frames)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_config_rebuilds_identical_architecture(name: str) -> None:
    enc = tiny(name)
    config = json.loads(json.dumps(enc.config()))  # survives a JSON checkpoint header
    twin = type(enc)(**config)
    assert twin.config() == enc.config()
    twin.load_state_dict(enc.state_dict(), strict=True)
    twin.eval()
    wave = noise(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(twin(wave), enc(wave))


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_default_config_rebuilds(name: str) -> None:
    enc = build_encoder(name)
    twin = build_encoder(name, **enc.config())
    twin.load_state_dict(enc.state_dict(), strict=True)
    assert count_parameters(twin) == count_parameters(enc)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_batch_independence_in_eval(name: str) -> None:
    enc = tiny(name)
    wave = noise(2, 8)
    other = wave.clone()
    other[1] = noise(1, 8, seed=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(enc(other)[0], enc(wave)[0])
        torch.testing.assert_close(enc(wave[:1])[0], enc(wave)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_bfloat16_autocast(name: str) -> None:
    # CUDA is not available in the test environment; CPU autocast exercises the same code
    # paths (the GRU and the STFT leave autocast and run in float32).
    enc = tiny(name)
    wave = noise(2, 6)
    with torch.no_grad():
        ref = enc(wave)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = enc(wave)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.1


def test_default_parameter_counts() -> None:
    counts = {name: count_parameters(build_encoder(name)) for name in ENCODERS}
    print(f"default parameter counts: {counts}")
    assert 5_000_000 <= counts["pase+"] <= 10_000_000
    assert 500_000 <= counts["samplecnn"] <= 5_000_000
    assert 200_000 <= counts["melcnn"] <= 5_000_000


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_default_encoders_run(name: str) -> None:
    torch.manual_seed(0)
    enc = build_encoder(name).eval()
    assert enc.dim == 256
    with torch.no_grad():
        out = enc(noise(1, 7))
    assert out.shape == (1, 256, 7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(strides=[10, 2, 1, 2, 1, 2, 1]), "product of strides must be 160"),
        (dict(channels=[8] * 6), "same length"),
        (dict(sinc_kernel=250), "odd"),
    ],
)
def test_pase_rejects_bad_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PasePlus(**{**TINY["pase+"], **kwargs})


def test_samplecnn_rejects_bad_stride() -> None:
    with pytest.raises(ValueError, match="must be 160"):
        SampleCNN(pools=[3, 3, 3, 1, 1, 1])


def test_sinc_filters_mel_initialised_band_pass() -> None:
    sinc = SincConv1d(64, 251, sample_rate=16000)
    low, high = (t.detach() for t in sinc.cutoffs_hz())
    assert torch.all(low[1:] > low[:-1]) and torch.all(high[1:] > high[:-1])
    assert low[0] >= 50 and high[-1] <= 8000
    # Mel spacing: bandwidths (at least min_band_hz = 50) grow with frequency.
    width = high - low
    assert width.min() >= 50 - 1e-3
    assert torch.all(width[16:][1:] > width[16:][:-1]) and width[-1] > 5 * width[16]
    # Unit pass-band gain where the band is wide enough for a 251-tap filter, and the
    # stop band well below it (response of each filter on a 1 Hz grid).
    response = torch.fft.rfft(sinc.filters().detach().squeeze(1), n=16000).abs()
    # (The Hamming main lobe of 251 taps is about 250 Hz wide: bands from filter 48 up.)
    for i in range(48, 64):
        centre = int((low[i] + high[i]) / 2)
        assert 0.95 < response[i, centre] < 1.05
        assert response[i, : int(low[i]) - 300].max() < 0.01
        if high[i] + 300 < 8000:
            assert response[i, int(high[i]) + 300 :].max() < 0.01


def test_sine_excites_the_matching_sinc_filter() -> None:
    sinc = SincConv1d(64, 251, sample_rate=16000)
    low, high = (t.detach() for t in sinc.cutoffs_hz())
    i = 50
    freq = float((low[i] + high[i]) / 2)
    t = torch.arange(16000) / 16000
    with torch.no_grad():
        out = sinc(torch.sin(2 * torch.pi * freq * t)[None, None])[0, :, 2000:-2000]
    rms = out.square().mean(-1).sqrt()
    assert rms.argmax().item() == i
    assert abs(rms[i].item() - 2**-0.5) < 0.05


def test_mel_filterbank_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    enc = MelCNN(n_mels=96, f_min=20.0, f_max=7600.0, channels=[4], freq_pools=[2], dim=8)
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=96, fmin=20.0, fmax=7600.0)
    np.testing.assert_allclose(enc.mel_fb.numpy(), ref, rtol=1e-4, atol=1e-7)


def test_melcnn_log_mel_matches_librosa_frame_grid() -> None:
    # A click train: the log-mel computed on the device lines up with librosa's
    # center=True frames (frame k centred on sample k*hop), with the last frame dropped.
    librosa = pytest.importorskip("librosa")
    enc = MelCNN(n_mels=64, channels=[4], freq_pools=[2], dim=8)
    wave = np.zeros(50 * HOP, dtype=np.float32)
    wave[7 * HOP :: 9 * HOP] = 0.9
    wave += 0.01 * np.random.default_rng(0).standard_normal(wave.size).astype(np.float32)
    ours = enc.log_mel(torch.from_numpy(wave)[None])[0].numpy()
    mel = librosa.feature.melspectrogram(
        y=wave, sr=16000, n_fft=1024, hop_length=HOP, n_mels=64, center=True,
        pad_mode="constant", power=2.0,
    )
    ref = np.log(mel[:, :50] + 1e-6)
    assert ours.shape == (64, 50)
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3)
    energy = ours.max(axis=0)
    assert set(np.flatnonzero(energy > energy.mean() + energy.std())) >= {7, 16, 25, 34, 43}


def test_melcnn_stft_stays_float32_under_autocast() -> None:
    enc = tiny("melcnn")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = enc.log_mel(noise(1, 4))
    assert spec.dtype == torch.float32


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_melcnn_context_layers_widen_the_receptive_field_exactly(layers: int) -> None:
    # Two 3x3 blocks see one frame either side each; context layer i (dilation 2**i) adds
    # 2**i more: output frame 32 depends on log-mel frames 32 ± (2 + 2**layers - 1).
    torch.manual_seed(0)
    enc = MelCNN(n_mels=16, channels=[4, 4], freq_pools=[2, 2], dim=8,
                 context_layers=layers).eval()
    mel = torch.randn(1, 16, 64, requires_grad=True)
    enc.log_mel = lambda wave: mel  # type: ignore[method-assign]
    enc.encode(torch.zeros(1, 64 * HOP))[0, :, 32].sum().backward()
    assert mel.grad is not None
    touched = mel.grad[0].abs().sum(0).nonzero().flatten().tolist()
    half = 2 + 2**layers - 1
    assert touched == list(range(32 - half, 32 + half + 1))
    assert enc.config()["context_layers"] == layers


# ---------------------------------------------------------------------------- CPU fast path
# (issue 12) PASE+'s eval-mode CPU path computes the sinc block, the first conv block and
# the first skip as matrix products; it must be the same function as the layers.


def _with_running_stats(enc: PasePlus) -> PasePlus:
    """``enc`` after two training-mode forwards (non-trivial batch-norm statistics) and
    with random PReLU slopes, in eval mode."""
    enc.train()
    with torch.no_grad():
        for seed in (7, 8):
            enc(noise(2, 30, seed=seed))
        for m in enc.modules():
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(-0.5, 1.5)
    return enc.eval()


@pytest.mark.parametrize("overrides", [
    {},
    {"skips": False, "rnn": False},
    # another first block: odd kernel, stride 8 (the taps split over frames differently)
    {"kernels": [21, 5, 5, 5, 5, 5, 5], "strides": [8, 2, 1, 5, 1, 2, 1], "sinc_kernel": 31},
])
@pytest.mark.parametrize("frames", [1, 2, 13])
def test_pase_fast_eval_path_equals_the_layers(overrides: dict[str, Any], frames: int) -> None:
    enc = _with_running_stats(tiny("pase+", **overrides))
    wave = noise(3, frames, seed=4)
    with torch.no_grad():
        enc.fast_eval = False
        ref = enc(wave)
        enc.fast_eval = True
        fast = enc(wave)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


def test_pase_fast_eval_path_is_differentiable_and_follows_weight_changes() -> None:
    enc = _with_running_stats(tiny("pase+"))
    wave = noise(2, 6, seed=5)
    with torch.no_grad():
        before = enc(wave)
    # Eval mode with autograd on (as the centring tests use): gradients reach the sinc
    # cut-offs and the first block through the fast path.
    enc(wave).square().sum().backward()
    assert enc.sinc[0].low.grad is not None and enc.sinc[0].low.grad.abs().sum() > 0
    assert enc.blocks[0][0].weight.grad is not None
    # An in-place update (an optimiser step, a loaded state dict) is seen at once.
    with torch.no_grad():
        enc.blocks[0][0].weight.mul_(2.0)
        enc.sinc[0].band.add_(0.01)
        after = enc(wave)
        enc.fast_eval = False
        ref = enc(wave)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, ref, rtol=1e-5, atol=1e-6)


def test_eval_mode_sinc_filters_are_cached_and_equal_fresh_ones() -> None:
    sinc = SincConv1d(8, 31).eval()
    with torch.no_grad():
        first = sinc.cached_filters()
        assert sinc.cached_filters() is first  # kept while the cut-offs are unchanged
        torch.testing.assert_close(first, sinc.filters(), rtol=0, atol=0)
        sinc.low.add_(0.001)  # bumps the version counter
        second = sinc.cached_filters()
    assert second is not first
    torch.testing.assert_close(second, sinc.filters().detach(), rtol=0, atol=0)
    with torch.inference_mode():
        third = sinc.cached_filters()
    assert not third.is_inference()  # usable outside inference mode too
    # Training mode, or a gradient wanted: always fresh, attached to the cut-offs.
    assert sinc.cached_filters().requires_grad
    sinc.train()
    with torch.no_grad():
        assert sinc.cached_filters() is not sinc.cached_filters()


def test_pase_gru_runs_on_one_thread_and_restores_the_count() -> None:
    enc = _with_running_stats(tiny("pase+"))
    seen: list[int] = []
    assert enc.rnn is not None
    enc.rnn.register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    wave = noise(2, 20, seed=6)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            one = enc(wave)
            assert torch.get_num_threads() == 2
            enc.rnn_one_thread = False
            every = enc(wave)
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]
    torch.testing.assert_close(one, every, rtol=1e-5, atol=1e-6)


def test_pase_fast_eval_path_under_cpu_bf16_autocast() -> None:
    enc = _with_running_stats(tiny("pase+"))
    wave = noise(2, 10, seed=9)
    with torch.no_grad():
        ref = enc(wave)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = enc(wave)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05
