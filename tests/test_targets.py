"""The target registry, specified on precisely constructed signals.

Every assertion states what a target must report for a signal whose answer is known in
advance: a pure tone has one pitch and one pitch class, a click train at 120 BPM has its
onsets every 50 frames, silence has no voiced frame. The grid is the store's (16 kHz, hop
160, 100 frames/s): a clip of ``n`` samples has ``n // 160`` frames and frame ``t`` is
centred on sample ``160 * t``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import librosa
import numpy as np
import pytest

from featurestore.errors import FeatureStoreError
from featurestore.store import TargetSpec
from featurestore.targets import (
    REGISTRY,
    DecodedClip,
    Target,
    deltas,
    fit_frames,
    register,
    resolve,
)
from featurestore.targets.pitch import yin_from_power, zero_crossing_rate
from featurestore.targets.spectral import erb_space, gammatone_weights

SR = 16000
HOP = 160
MARGIN = 10
"""Frames within 100 ms of either end are 'edge' frames: their windows (up to 2048 samples,
6.4 frames either side of the centre) run past the clip, so tone tests look at the rest."""

DEFAULT_SET = [
    "lps", "fbank", "mfcc", "contrast", "cqt", "prosody", "chroma", "onset", "tempogram",
]
"""The default set (DESIGN.md, "Target registry"), in registry order (spectral, pitch,
tonal, rhythm)."""


# --------------------------------------------------------------------------- signals


def tone(*freqs: float, seconds: float = 2.0, amps: list[float] | None = None) -> np.ndarray:
    """A sum of sines (each 0.5 / number of partials unless ``amps`` is given), float32."""
    t = np.arange(round(seconds * SR)) / SR
    amps = amps if amps is not None else [0.5 / len(freqs)] * len(freqs)
    y = sum(a * np.sin(2 * np.pi * f * t) for f, a in zip(freqs, amps, strict=True))
    return np.asarray(y, dtype=np.float32)


def harmonic_tone(f0: float, seconds: float = 2.0, n_partials: int = 8) -> np.ndarray:
    """Partials k * f0 with amplitude 0.4 / k (a sawtooth-like complex tone)."""
    ks = range(1, n_partials + 1)
    return tone(*[k * f0 for k in ks], seconds=seconds, amps=[0.4 / k for k in ks])


def clicks(n_samples: int, positions: list[int] | np.ndarray) -> np.ndarray:
    """Silence with unit impulses at the given sample positions."""
    y = np.zeros(n_samples, dtype=np.float32)
    y[np.asarray(positions)] = 1.0
    return y


def compute(name: str, y_or_clip: np.ndarray | DecodedClip) -> np.ndarray:
    """The registered target ``name`` on a clip, as the store would hold it."""
    clip = y_or_clip if isinstance(y_or_clip, DecodedClip) else DecodedClip(y_or_clip, SR, HOP)
    return REGISTRY[name]()(clip)


def interior(x: np.ndarray) -> np.ndarray:
    return x[MARGIN:-MARGIN]


def f0_hz(target: np.ndarray) -> np.ndarray:
    """Column 0 of a pitch target is the natural log of F0."""
    return np.exp(target[:, 0].astype(np.float64))


def midi_bin_from_c1(freq: float) -> int:
    """The CQT bin (12 per octave, bin 0 = C1 = 32.703 Hz) holding ``freq``."""
    return round(12 * np.log2(freq / 32.703195662574764))


@pytest.fixture(scope="module")
def a440() -> DecodedClip:
    """3 s of a 440 Hz sine at amplitude 0.5; shared so the targets share one STFT."""
    return DecodedClip(tone(440.0, seconds=3.0), SR, HOP)


# --------------------------------------------------------------------------- declarations


@pytest.mark.parametrize("name", list(REGISTRY))
def test_declaration_round_trips_through_json(name: str) -> None:
    cls = REGISTRY[name]
    spec = cls.spec()
    assert TargetSpec.from_json(spec.to_json()) == spec
    assert TargetSpec.from_json(spec.to_json()).to_json() == spec.to_json()
    assert spec.params == dataclasses.asdict(cls.params)
    assert json.loads(json.dumps(spec.params)) == spec.params  # plain JSON data


@pytest.mark.parametrize("name", list(REGISTRY))
def test_parameters_are_a_frozen_dataclass(name: str) -> None:
    params = REGISTRY[name].params
    assert dataclasses.is_dataclass(params) and not isinstance(params, type)
    field = next(iter(dataclasses.fields(params)), None)
    if field is not None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(params, field.name, getattr(params, field.name))


class _Reading:
    """A target's parameters that remember which of them were read."""

    def __init__(self, params: object) -> None:
        self._params = params
        self.read: set[str] = set()

    def __getattr__(self, name: str) -> object:
        self.read.add(name)
        return getattr(self._params, name)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_declared_parameter_is_used(name: str) -> None:
    """A parameter recorded in the store but not read by the computation (chroma's
    ``tuning`` once was) cannot be declared."""
    target = REGISTRY[name]()
    reading = _Reading(target.params)
    target.params = reading  # type: ignore[misc]  # shadows the class's, on this instance
    y = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(SR) / SR).astype(np.float32)
    target(DecodedClip(y, SR, HOP))
    assert reading.read == {f.name for f in dataclasses.fields(REGISTRY[name].params)}


def test_chroma_tuning_is_a_used_parameter() -> None:
    chroma = REGISTRY["chroma"]
    assert [f.name for f in dataclasses.fields(chroma.params)] == ["n_fft", "tuning"]
    y = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(SR) / SR).astype(np.float32)
    standard = chroma()(DecodedClip(y, SR, HOP))
    detuned = chroma()
    detuned.params = dataclasses.replace(chroma.params, tuning=-0.5)  # type: ignore[misc]
    shifted = detuned(DecodedClip(y, SR, HOP))
    assert not np.allclose(shifted, standard)


def test_register_refuses_parameters_that_are_not_a_frozen_dataclass() -> None:
    class Loose(Target):
        name = "loose"
        dim = 1
        library = "numpy"
        params = {"n_fft": 1024}

    with pytest.raises(TypeError, match="params must be an instance of a frozen dataclass"):
        register(Loose)
    assert "loose" not in REGISTRY


@pytest.mark.parametrize("name", list(REGISTRY))
def test_declaration_is_well_formed(name: str) -> None:
    cls = REGISTRY[name]
    assert cls.name == name
    assert cls.rate in ("frame", "clip", "sample")
    assert cls.loss in ("l1", "mse")
    assert cls.deltas in (0, 1, 2)
    assert cls.dim >= 1 and cls.dim % (1 + cls.deltas) == 0
    assert cls.description
    if cls.rate != "frame":
        assert cls.deltas == 0


def test_names_are_unique_and_a_second_declaration_is_refused() -> None:
    names = [cls.name for cls in REGISTRY.values()]
    assert len(names) == len(set(names))

    class Duplicate(Target):
        name = "mfcc"
        dim = 1
        library = "numpy"

    with pytest.raises(ValueError, match="mfcc"):
        register(Duplicate)
    assert REGISTRY["mfcc"] is not Duplicate


# --------------------------------------------------------------------------- resolve


def test_resolve_default_is_the_default_set_in_registry_order() -> None:
    assert [t.name for t in resolve("default")] == DEFAULT_SET
    assert [t.name for t in resolve("default")] == [
        n for n, cls in REGISTRY.items() if cls.default and n != "waveform"
    ]


def test_resolve_all_is_every_target_but_the_waveform() -> None:
    assert [t.name for t in resolve("all")] == [n for n in REGISTRY if n != "waveform"]


def test_resolve_names_gives_exactly_those_in_registry_order_once() -> None:
    assert [t.name for t in resolve("mfcc,chroma")] == ["mfcc", "chroma"]
    assert [t.name for t in resolve(" chroma , mfcc,mfcc")] == ["mfcc", "chroma"]
    assert [t.name for t in resolve(["tempo", "lps"])] == ["lps", "tempo"]
    assert [t.name for t in resolve("default,tempo")] == [*DEFAULT_SET, "tempo"]
    assert all(isinstance(t, REGISTRY[t.name]) for t in resolve("all"))


def test_resolve_unknown_name_names_it_and_lists_the_known_targets() -> None:
    with pytest.raises(FeatureStoreError) as err:
        resolve("mfcc,no_such_target")
    message = str(err.value)
    assert "'no_such_target'" in message
    for name in REGISTRY:
        assert name in message


# --------------------------------------------------------------------------- frame grid


@pytest.mark.parametrize("n", [16000, 16001, 16159, 16160, 33333])
def test_every_target_lives_on_the_frame_grid(n: int) -> None:
    y = (0.1 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    frames = DecodedClip(y, SR, HOP)
    assert frames.n_frames == n // HOP
    expected = {"frame": (n // HOP, None), "clip": (1, None), "sample": (n, 1)}
    for name, cls in REGISTRY.items():
        out = cls()(frames)
        rows, _ = expected[cls.rate]
        assert out.shape == (rows, cls.dim), name
        assert out.dtype == np.float32, name
        assert np.isfinite(out).all(), name
    assert np.array_equal(compute("waveform", frames)[:, 0], y)


def test_frame_t_is_centred_on_sample_t_times_hop() -> None:
    # One click at sample 8000 = 50 * hop: every frame-rate view of it is centred on frame 50.
    frames = DecodedClip(clicks(2 * SR, [8000]), SR, HOP)
    lps = compute("lps", frames)
    energy = lps.mean(axis=1, dtype=np.float64)
    assert int(np.argmax(energy)) == 50
    # symmetric about frame 50: nothing is shifted by half a window
    np.testing.assert_allclose(energy[47:50], energy[51:54][::-1], rtol=1e-4)
    # the 1024-sample window (3.2 frames either side) sees the click on frames 47..53 only
    floor = np.log(1e-10)
    np.testing.assert_allclose(energy[:47], floor, rtol=1e-7)
    np.testing.assert_allclose(energy[54:], floor, rtol=1e-7)
    assert np.all(energy[47:54] > floor + 5)

    for name in ("fbank", "gtn_long", "cqt"):
        assert int(np.argmax(compute(name, frames).mean(axis=1))) == 50, name
    assert int(np.argmax(compute("prosody", frames)[:, 3])) == 50  # log RMS energy

    onset = compute("onset", frames)[:, 0]
    assert abs(int(np.argmax(onset)) - 50) <= 1
    assert onset[:49].max() == 0.0  # no onset before the click is reached


# --------------------------------------------------------------------------- fit_frames


def test_fit_frames_trims_the_end() -> None:
    np.testing.assert_array_equal(fit_frames(np.arange(10), 7), np.arange(7))


def test_fit_frames_trims_without_copying() -> None:
    """A centred STFT's extra frame is dropped by a view of the spectrogram, not a copy."""
    spec = np.ones((513, 101), dtype=np.complex64)
    fitted = fit_frames(spec, 100, axis=1)
    assert fitted.shape == (513, 100) and np.shares_memory(fitted, spec)


def test_fit_frames_edge_pads_the_end() -> None:
    np.testing.assert_array_equal(fit_frames(np.arange(5), 8), [0, 1, 2, 3, 4, 4, 4, 4])


def test_fit_frames_works_along_any_axis() -> None:
    x = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(fit_frames(x, 5, axis=1), [[0, 1, 2, 2, 2], [3, 4, 5, 5, 5]])
    np.testing.assert_array_equal(fit_frames(x, 2, axis=1), [[0, 1], [3, 4]])
    np.testing.assert_array_equal(fit_frames(x, 3, axis=0), [[0, 1, 2], [3, 4, 5], [3, 4, 5]])


def test_fit_frames_keeps_an_exact_fit_and_fills_an_empty_input_with_zeros() -> None:
    x = np.arange(4.0)
    np.testing.assert_array_equal(fit_frames(x, 4), x)
    out = fit_frames(np.zeros((3, 0), dtype=np.float32), 4, axis=1)
    assert out.shape == (3, 4) and out.dtype == np.float32 and not out.any()


# --------------------------------------------------------------------------- deltas


def test_first_delta_of_a_linear_ramp_is_one() -> None:
    t = np.arange(40, dtype=np.float32)
    x = np.stack([t, -2.0 * t + 3.0], axis=1)  # slopes 1 and -2
    out = deltas(x, 1)
    assert out.shape == (40, 4)
    np.testing.assert_array_equal(out[:, :2], x)
    np.testing.assert_allclose(out[4:-4, 2], 1.0, atol=1e-5)
    np.testing.assert_allclose(out[4:-4, 3], -2.0, atol=1e-5)


def test_second_delta_of_a_parabola_is_one() -> None:
    t = np.arange(40, dtype=np.float64)
    out = deltas((0.5 * t**2)[:, None], 2)
    assert out.shape == (40, 3)
    np.testing.assert_allclose(out[4:-4, 1], t[4:-4], atol=1e-6)  # d/dt t^2/2 = t
    np.testing.assert_allclose(out[4:-4, 2], 1.0, atol=1e-6)


def test_deltas_of_order_zero_and_of_too_short_inputs() -> None:
    x = np.ones((5, 3), dtype=np.float32)
    assert deltas(x, 0) is x
    out = deltas(np.arange(2.0)[:, None], 2)  # no 3-frame window fits: deltas are 0
    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(deltas(np.arange(5.0)[:, None], 1)[:, 1], 1.0, atol=1e-6)


@pytest.mark.parametrize("name", [n for n, cls in REGISTRY.items() if cls.deltas])
def test_delta_columns_are_time_differences_of_the_base_columns(name: str) -> None:
    # A rising chirp with a swelling amplitude, so that every column moves.
    t = np.arange(2 * SR) / SR
    y = ((0.05 + 0.2 * t) * np.sin(2 * np.pi * (200.0 * t + 100.0 * t**2))).astype(np.float32)
    cls = REGISTRY[name]
    out = compute(name, y)
    base = cls.dim // (1 + cls.deltas)
    np.testing.assert_allclose(out, deltas(out[:, :base], cls.deltas), rtol=1e-5, atol=1e-4)
    assert np.abs(out[:, base : 2 * base]).max() > 0


def test_mfcc_and_prosody_declare_base_columns_then_two_orders_of_deltas() -> None:
    assert (REGISTRY["mfcc"].dim, REGISTRY["mfcc"].deltas) == (60, 2)
    assert (REGISTRY["prosody"].dim, REGISTRY["prosody"].deltas) == (12, 2)


# --------------------------------------------------------------------------- shared work


def test_one_stft_serves_every_target_with_the_same_window(monkeypatch) -> None:
    calls: list[int] = []
    real_stft = librosa.stft

    def counting_stft(*args, **kwargs):
        calls.append(kwargs.get("n_fft"))
        return real_stft(*args, **kwargs)

    monkeypatch.setattr(librosa, "stft", counting_stft)
    frames = DecodedClip(tone(440.0, seconds=1.0), SR, HOP)
    compute("lps", frames)
    compute("fbank", frames)
    assert calls == [1024]
    for name in ("mfcc", "contrast", "prosody", "chroma", "tonnetz", "hpcp", "onset",
                 "tempogram", "tempo"):
        compute(name, frames)
    assert calls == [1024]
    assert [k for k in frames._memo if k[0] == "stft"] == [("stft", 1024, None)]


# --------------------------------------------------------------------------- a 440 Hz tone


def test_prosody_f0_of_a_440_hz_tone(a440: DecodedClip) -> None:
    out = compute("prosody", a440)
    np.testing.assert_allclose(interior(f0_hz(out)), 440.0, rtol=0.01)
    assert np.all(out[:, 1] == 1.0)  # voiced everywhere, the edges included


def test_chroma_of_a_440_hz_tone_peaks_at_a(a440: DecodedClip) -> None:
    out = interior(compute("chroma", a440))
    assert np.all(out.argmax(axis=1) == 9)  # bin 0 is C, bin 9 is A
    np.testing.assert_allclose(out[:, 9], 1.0)  # max-normalised per frame


def test_hpcp_of_a_440_hz_tone_is_a_alone(a440: DecodedClip) -> None:
    # essentia's bin 0 is its reference, 440 Hz (A); the target rolls it to bin 9.
    out = interior(compute("hpcp", a440))
    assert np.all(out.argmax(axis=1) == 9)
    np.testing.assert_allclose(out[:, 9], 1.0)
    assert np.delete(out, 9, axis=1).max() < 0.05


def test_cqt_of_a_440_hz_tone_peaks_at_a4(a440: DecodedClip) -> None:
    assert midi_bin_from_c1(440.0) == 45
    out = interior(compute("cqt", a440))
    assert np.all(out.argmax(axis=1) == 45)


@pytest.mark.parametrize("cents", [-25, 0, 25])
def test_cqt_tones_across_its_range_peak_at_their_bin(cents: int) -> None:
    # C1 (bin 0) to B7 (bin 83), and a quarter of a semitone either side of each; C1's
    # wavelet is ~8,200 samples (51 frames) long, so only frames 40.. -40 are looked at.
    for k in (0, 1, 5, 12, 23, 33, 45, 57, 69, 76, 82, 83):
        freq = 32.703195662574764 * 2 ** ((k + cents / 100) / 12)
        out = compute("cqt", tone(freq))[40:-40]
        assert np.all(out.argmax(axis=1) == k), (k, cents)


def librosa_log_cqt(y: np.ndarray, sr: int = SR, hop: int = HOP) -> np.ndarray:
    """What the ``cqt`` target computed with ``librosa.cqt`` before issue 12: the reference."""
    p = REGISTRY["cqt"].params
    c = librosa.cqt(y, sr=sr, hop_length=hop, fmin=p.fmin, n_bins=p.n_bins,
                    bins_per_octave=p.bins_per_octave, tuning=0.0)
    return np.log(fit_frames(np.abs(c).astype(np.float32), len(y) // hop, axis=1) + 1e-6).T


def test_cqt_agrees_with_librosa_cqt_on_a_seeded_harmonic_signal() -> None:
    rng = np.random.default_rng(12)
    y = sum(harmonic_tone(f0, seconds=3.0) for f0 in rng.uniform(40.0, 600.0, size=3))
    y = (y + 0.01 * rng.standard_normal(y.size)).astype(np.float32)
    ours, ref = compute("cqt", y), librosa_log_cqt(y)
    assert ours.shape == ref.shape == (y.size // HOP, 84)
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] >= 0.99
    # the same computation (librosa's filters, octaves and frames): equal to float32 rounding
    np.testing.assert_allclose(np.exp(ours), np.exp(ref), rtol=0, atol=1e-5 * np.exp(ref).max())
    assert np.abs(ours - ref).mean() < 1e-4


@pytest.mark.parametrize(
    ("sr", "hop", "n_samples"),
    [(16000, 160, 0), (16000, 160, 100), (16000, 160, 4000), (16000, 161, 24000),
     (22050, 512, 44100), (44100, 441, 44100)],
    ids=["empty", "shorter-than-a-hop", "quarter-second", "odd-hop", "22k-hop-512", "44k"],
)
# librosa's reference warns that its lowest octaves' FFTs are longer than short inputs
@pytest.mark.filterwarnings("ignore:n_fft=.* is too large for input signal:UserWarning")
def test_cqt_matches_librosa_at_other_rates_hops_and_lengths(
    sr: int, hop: int, n_samples: int
) -> None:
    # 22050 Hz / hop 512 takes librosa's early down-sampling path; an odd hop, none at all.
    rng = np.random.default_rng(0)
    y = (0.2 * rng.standard_normal(n_samples)).astype(np.float32)
    p = REGISTRY["cqt"].params
    ours = DecodedClip(y, sr, hop).cqt(p.n_bins, p.bins_per_octave, p.fmin)
    ref = np.exp(librosa_log_cqt(y, sr, hop).T) - 1e-6
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (84, n_samples // hop)
    if ours.size:
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * ref.max())


def test_pyin_f0_of_a_440_hz_tone() -> None:
    out = compute("pyin", tone(440.0, seconds=1.0))  # pYIN is slow: one second
    np.testing.assert_allclose(interior(f0_hz(out)), 440.0, rtol=0.01)
    assert np.all(interior(out[:, 1]) > 0.5)  # voicing probability


def test_melody_f0_of_a_440_hz_tone(a440: DecodedClip) -> None:
    # Melodia tracks a pure tone (checked: it does), so no harmonic complex is needed.
    out = compute("melody", a440)
    np.testing.assert_allclose(interior(f0_hz(out)), 440.0, rtol=0.02)
    assert np.all(interior(out[:, 1]) == 1.0)


# --------------------------------------------------------------------------- other tones


@pytest.mark.parametrize(
    ("freq", "pitch_class"),
    [(220.0, 9), (261.6256, 0), (329.6276, 4), (391.9954, 7)],
    ids=["A3", "C4", "E4", "G4"],
)
def test_single_tones_pitch_class_cqt_bin_and_f0(freq: float, pitch_class: int) -> None:
    frames = DecodedClip(tone(freq), SR, HOP)
    np.testing.assert_allclose(interior(f0_hz(compute("prosody", frames))), freq, rtol=0.01)
    assert np.all(interior(compute("chroma", frames)).argmax(axis=1) == pitch_class)
    assert np.all(interior(compute("hpcp", frames)).argmax(axis=1) == pitch_class)
    assert np.all(interior(compute("cqt", frames)).argmax(axis=1) == midi_bin_from_c1(freq))


def test_c_major_triad_has_c_e_g_as_its_three_strongest_pitch_classes() -> None:
    frames = DecodedClip(tone(261.6256, 329.6276, 391.9954), SR, HOP)
    for name in ("chroma", "hpcp"):
        top3 = np.sort(np.argsort(interior(compute(name, frames)), axis=1)[:, -3:], axis=1)
        assert np.all(top3 == [0, 4, 7]), name


def test_harmonic_tone_at_110_hz_has_f0_110_hz() -> None:
    frames = DecodedClip(harmonic_tone(110.0), SR, HOP)
    np.testing.assert_allclose(interior(f0_hz(compute("prosody", frames))), 110.0, rtol=0.01)
    np.testing.assert_allclose(interior(f0_hz(compute("melody", frames))), 110.0, rtol=0.02)
    pyin = compute("pyin", harmonic_tone(110.0, seconds=1.0))
    np.testing.assert_allclose(interior(f0_hz(pyin)), 110.0, rtol=0.01)
    # the strongest pitch classes are A (110, 220, 440, 880 Hz), then E (330, 660 Hz)
    hpcp = interior(compute("hpcp", frames))
    assert np.all(np.argsort(hpcp, axis=1)[:, -2:] == [4, 9])


# --------------------------------------------------------------------------- prosody's YIN


@pytest.mark.parametrize("freq", [55.0, 220.0, 1000.0, 1760.0])
def test_prosody_f0_of_pure_tones_across_the_range(freq: float) -> None:
    out = compute("prosody", tone(freq))
    np.testing.assert_allclose(interior(f0_hz(out)), freq, rtol=0.01)
    assert np.all(interior(out[:, 1]) == 1.0)  # voiced


def test_prosody_is_not_an_octave_off_on_a_strong_second_harmonic() -> None:
    # The second harmonic is twice as loud as the fundamental (four times the power), so
    # the first dip of the difference function is at half the period; YIN's cumulative-
    # mean normalisation must still pick the full period.
    out = compute("prosody", tone(200.0, 400.0, 600.0, amps=[0.15, 0.3, 0.1]))
    np.testing.assert_allclose(interior(f0_hz(out)), 200.0, rtol=0.01)
    assert np.all(interior(out[:, 1]) == 1.0)


@pytest.mark.parametrize("method", ["yin", "PitchYinFFT"])
def test_prosody_f0_methods_give_the_declared_shape_and_the_pitch(method: str) -> None:
    target = REGISTRY["prosody"]()
    target.params = dataclasses.replace(target.params, f0_method=method)  # type: ignore[misc]
    clip = DecodedClip(tone(440.0, seconds=1.0), SR, HOP)
    out = target(clip)
    assert out.shape == (clip.n_frames, REGISTRY["prosody"].dim)
    assert out.dtype == np.float32
    np.testing.assert_allclose(interior(f0_hz(out)), 440.0, rtol=0.01)


def test_prosody_declares_numpy_yin_as_its_default_tracker() -> None:
    spec = REGISTRY["prosody"].spec()
    assert spec.params["f0_method"] == "yin"
    assert spec.library == "numpy"


def plain_yin(
    frame: np.ndarray, sample_rate: int, fmin: float, fmax: float, threshold: float
) -> tuple[float, float]:
    """YIN on one frame, written out: the reference :func:`yin_from_power` must match.

    The frame is Hann-windowed; ``r(tau)`` is its circular autocorrelation (what an
    inverse FFT of its power spectrum gives) divided by the window's own, normalised to
    1 at lag 0; ``d(tau) = 2 (r(0) - r(tau))``, ``d'(tau) = d(tau) tau / sum d(1..tau)``.
    The lag is the first local minimum of ``d'`` below ``threshold`` in
    ``[sample_rate // fmax, ceil(sample_rate / fmin)]``, else the smallest ``d'`` there,
    refined by a parabola through ``d`` at the lag and its neighbours.
    """
    n = len(frame)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic Hann
    xw = frame * window

    def circular_autocorrelation(x: np.ndarray, lag: int) -> float:
        return float(sum(x[i] * x[(i + lag) % n] for i in range(n)))

    lo = max(2, int(sample_rate // fmax))
    hi = int(np.ceil(sample_rate / fmin))
    w0 = circular_autocorrelation(window, 0)
    r = [circular_autocorrelation(xw, lag) * w0 / circular_autocorrelation(window, lag)
         for lag in range(hi + 2)]
    if r[0] <= 1e-12:
        return 0.0, 0.0
    d = [max(2.0 * (r[0] - r[lag]), 0.0) for lag in range(hi + 2)]
    dn = [1.0] * (hi + 2)
    total = 0.0
    for lag in range(1, hi + 2):
        total += d[lag]
        dn[lag] = d[lag] * lag / max(total, 1e-20)
    best = None
    for lag in range(lo, hi + 1):
        if dn[lag] < threshold and dn[lag] < dn[lag - 1] and dn[lag] <= dn[lag + 1]:
            best = lag
            break
    if best is None:
        best = min(range(lo, hi + 1), key=lambda lag: dn[lag])
    a, b, c = d[best - 1], d[best], d[best + 1]
    curvature = a - 2 * b + c
    shift = float(np.clip(0.5 * (a - c) / curvature, -1, 1)) if curvature > 0 else 0.0
    return sample_rate / (best + shift), float(np.clip(1 - dn[best], 0, 1))


def test_yin_from_power_agrees_with_a_plain_per_frame_yin() -> None:
    rng = np.random.default_rng(12)
    n_fft, n_frames = 512, 24
    t = np.arange(n_fft) / SR
    frames = []
    for _ in range(n_frames):  # random harmonic tones in noise, a few frames of noise only
        f0 = rng.uniform(60.0, 900.0)
        amps = rng.uniform(0.0, 0.5, size=4)
        phases = rng.uniform(0.0, 2 * np.pi, size=4)
        y = sum(a * np.sin(2 * np.pi * k * f0 * t + p)
                for k, (a, p) in enumerate(zip(amps, phases, strict=True), start=1))
        frames.append(y + rng.uniform(0.0, 0.3) * rng.standard_normal(n_fft))
    frames[3] = 0.1 * rng.standard_normal(n_fft)
    frames[7] = np.zeros(n_fft)
    frames = np.asarray(frames)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=1)).T ** 2  # (1 + n_fft // 2, n_frames)

    f0, confidence = yin_from_power(power, SR, 80.0, 2000.0, threshold=0.2)
    expected = np.array([plain_yin(f, SR, 80.0, 2000.0, 0.2) for f in frames])
    assert f0.shape == confidence.shape == (n_frames,)
    np.testing.assert_allclose(f0, expected[:, 0], rtol=1e-6)
    np.testing.assert_allclose(confidence, expected[:, 1], atol=1e-6)
    assert (f0[7], confidence[7]) == (0.0, 0.0)  # digital silence


def test_yin_from_power_keeps_single_precision() -> None:
    power = DecodedClip(tone(440.0, seconds=0.5), SR, HOP).power(1024)
    f0, confidence = yin_from_power(power, SR, 40.0, 2000.0)
    assert f0.dtype == confidence.dtype == np.float32
    np.testing.assert_allclose(interior(f0), 440.0, rtol=0.001)
    f0_64, _ = yin_from_power(power.astype(np.float64), SR, 40.0, 2000.0)
    assert f0_64.dtype == np.float64
    np.testing.assert_allclose(f0, f0_64, rtol=1e-4)


@pytest.mark.parametrize(
    ("power", "kwargs", "message"),
    [
        (np.ones(513), {}, "shape"),
        (np.ones((513, 4), dtype=np.complex64), {}, "real"),
        (np.ones((513, 4)), {"fmin": 2000.0, "fmax": 40.0}, "fmin"),
        (np.ones((513, 4)), {"fmax": 9000.0}, "fmax"),
        (np.ones((513, 4)), {"fmin": 20.0}, "n_fft"),
        (np.ones((513, 4)), {"sample_rate": 0}, "sample_rate"),
        (np.ones((513, 4)), {"threshold": 0.0}, "threshold"),
    ],
    ids=["1-d", "complex", "fmin-above-fmax", "fmax-above-nyquist", "fmin-too-low",
         "sample-rate", "threshold"],
)
def test_yin_from_power_rejects_bad_input(power: np.ndarray, kwargs: dict, message: str) -> None:
    args = {"sample_rate": SR, "fmin": 40.0, "fmax": 2000.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        yin_from_power(power, **args)


# --------------------------------------------------------------------- zero-crossing rate


def test_zero_crossing_rate_of_a_tone_is_twice_its_frequency() -> None:
    """A 1 kHz tone crosses zero 2,000 times a second: 1/8 of the sample pairs at 16 kHz."""
    zcr = zero_crossing_rate(tone(1000.0, seconds=1.0), 1024, HOP)
    assert zcr.shape == (1 + SR // HOP,)
    np.testing.assert_allclose(interior(zcr), 2000.0 / SR, atol=1.0 / 1024)


@pytest.mark.parametrize(("n", "frame_length", "hop"),
                         [(48_000, 1024, 160), (1_001, 1024, 160), (5_000, 1023, 7),
                          (3_000, 16, 16)])
def test_zero_crossing_rate_equals_librosas(n: int, frame_length: int, hop: int) -> None:
    """The same values as librosa's frame-by-frame count, bit for bit, on noise with exact
    zeros, samples at and just beyond the threshold, a constant stretch, and frames that
    reach into the edge padding."""
    import librosa

    y = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1
    y[::7], y[::11], y[::13], y[::17] = 0.0, 1e-10, -1e-10, -2e-10
    y[5:300] = 0.3
    expected = librosa.feature.zero_crossing_rate(y, frame_length=frame_length,
                                                  hop_length=hop, center=True)[0]
    got = zero_crossing_rate(y, frame_length, hop)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- silence


@pytest.mark.parametrize(
    "y",
    [
        np.zeros(2 * SR, dtype=np.float32),
        (1e-4 * np.random.default_rng(0).standard_normal(2 * SR)).astype(np.float32),
    ],
    ids=["zeros", "noise-80dBFS"],
)
def test_silence_and_quiet_noise_are_finite_and_unvoiced(y: np.ndarray) -> None:
    frames = DecodedClip(y, SR, HOP)
    for name, cls in REGISTRY.items():
        out = cls()(frames)
        assert np.isfinite(out).all(), name
    prosody = compute("prosody", frames)
    assert np.all(prosody[:, 1] == 0.0)  # no voiced frame
    assert np.all(prosody[:, 0] == 0.0)  # so no log-F0 either


def test_digital_silence_sits_at_the_declared_floors() -> None:
    frames = DecodedClip(np.zeros(SR, dtype=np.float32), SR, HOP)
    np.testing.assert_allclose(compute("lps", frames), np.log(1e-10))
    np.testing.assert_allclose(compute("fbank", frames), np.log(1e-10))
    np.testing.assert_allclose(compute("prosody", frames)[:, 3], np.log(1e-5), rtol=1e-6)
    assert not compute("onset", frames).any()
    assert not compute("chroma", frames).any()


# --------------------------------------------------------------------------- rhythm


@pytest.fixture(scope="module")
def click_train() -> tuple[DecodedClip, np.ndarray]:
    """8 s of impulses every 0.5 s (120 BPM), the first at 0.5 s."""
    positions = np.arange(SR // 2, 8 * SR, SR // 2)
    return DecodedClip(clicks(8 * SR, positions), SR, HOP), positions // HOP


def test_onset_strength_peaks_on_the_clicks_and_is_zero_between(click_train) -> None:
    frames, click_frames = click_train
    onset = compute("onset", frames)[:, 0]
    peak = onset.max()
    assert peak > 0
    for c in click_frames:
        local = onset[c - 10 : c + 11]
        assert abs(int(np.argmax(local)) - 10) <= 1, c
        assert local.max() > 0.9 * peak
    for a, b in itertools.pairwise(click_frames):
        assert onset[a + 5 : b - 5].max() <= 1e-3 * peak, (a, b)


def test_tempogram_peaks_at_a_lag_of_50_frames(click_train) -> None:
    frames, _ = click_train
    tempogram = compute("tempogram", frames)
    inner = tempogram[100:-100, 1:]  # lag 0 (always 1) left out; 96-frame half windows
    assert int(np.argmax(inner.mean(axis=0))) + 1 == 50  # 0.5 s = 120 BPM
    assert np.all(inner.argmax(axis=1) + 1 == 50)


def test_tempo_of_a_120_bpm_click_train(click_train) -> None:
    frames, _ = click_train
    out = compute("tempo", frames)
    assert out.shape == (1, 1)
    assert out[0, 0] == pytest.approx(120.0, rel=0.02)


# --------------------------------------------------------------------------- gammatone


def test_gammatone_rows_peak_at_erb_spaced_centres() -> None:
    n_fft, n_bands, fmin = 2048, 40, 100.0
    weights = gammatone_weights(SR, n_fft, n_bands, fmin)
    assert weights.shape == (n_bands, 1 + n_fft // 2)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)

    centres = erb_space(fmin, 0.9 * SR / 2, n_bands)
    erb_rate = 21.4 * np.log10(1.0 + 0.00437 * centres)  # Glasberg & Moore ERB-rate
    np.testing.assert_allclose(np.diff(erb_rate), np.diff(erb_rate)[0], rtol=1e-9)
    np.testing.assert_allclose(centres[[0, -1]], [fmin, 0.9 * SR / 2])

    bin_hz = SR / n_fft
    peaks_hz = weights.argmax(axis=1) * bin_hz
    assert np.all(np.abs(peaks_hz - centres) <= bin_hz)


def test_gtn_long_hears_a_1_khz_tone_in_the_nearest_band() -> None:
    p = REGISTRY["gtn_long"].params
    centres = erb_space(p.fmin, 0.9 * SR / 2, p.n_bands)
    nearest = int(np.argmin(np.abs(centres - 1000.0)))
    out = interior(compute("gtn_long", tone(1000.0)))
    assert np.all(out.argmax(axis=1) == nearest)
