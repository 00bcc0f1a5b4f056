"""Decoding (downmix, resampling, bounded segments, truncation) and what a build does with
odd and broken input: what is stored, what becomes an error row and with which reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import BAD_TARGETS, HOP, SR, BadInputs, chord, noise, quantise, tone, write_wav

from featurestore import open_store, verify
from featurestore.audio import AudioError, declared_frames, decode, downmix
from featurestore.extract import ExtractConfig, extract_clip
from featurestore.manifest import Clip

RATES = (8000, 22050, 44100, 48000)


def decode_all(path: Path, **kw: float) -> np.ndarray:
    return np.concatenate(list(decode(path, SR, **kw)))


# --------------------------------------------------------------------------- decode


@pytest.mark.parametrize("channels", [1, 2, 3, 6])
def test_downmix_is_the_channel_mean_bit_for_bit(channels: int) -> None:
    x = np.random.default_rng(channels).standard_normal((10_001, channels)).astype(np.float32)
    y = downmix(x)
    assert y.dtype == np.float32 and y.shape == (10_001,)
    np.testing.assert_array_equal(y, x.mean(axis=1))



def test_decode_at_the_store_rate_is_the_file(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", noise(1.2345, seed=5))
    (y,) = list(decode(path, SR))
    assert y.dtype == np.float32
    assert np.array_equal(y, sf.read(path, dtype="float32")[0])


@pytest.mark.parametrize("channels", [2, 3, 6])
def test_decode_downmixes_to_the_channel_mean(tmp_path: Path, channels: int) -> None:
    x = np.stack([tone(100.0 * (k + 1), 1.0, amp=0.3) for k in range(channels)], axis=1)
    path = write_wav(tmp_path / "multi.wav", x)
    pcm = sf.read(path, dtype="float32")[0]
    assert np.array_equal(decode_all(path), pcm.mean(axis=1))


@pytest.mark.parametrize("sr", RATES)
def test_decode_resamples_to_16k(tmp_path: Path, sr: int) -> None:
    n = round(1.3 * sr)
    path = write_wav(tmp_path / f"r{sr}.wav", tone(440.0, 1.3, sr=sr), sr)
    y = decode_all(path)
    assert abs(len(y) - round(n * SR / sr)) <= 2
    ideal = tone(440.0, len(y) / SR)[: len(y)]
    # High-quality resampling: the same sine, up to 16-bit quantisation, away from the ends.
    assert np.abs(y[400:-400] - ideal[400:-400]).max() < 2e-4
    # Streaming in small blocks and cutting into segments changes nothing.
    assert np.array_equal(decode_all(path, block_seconds=0.1, max_seconds=0.5), y)


def test_decode_long_file_in_bounded_segments(tmp_path: Path) -> None:
    y = chord([220.0, 330.0], 5.2)
    path = write_wav(tmp_path / "long.wav", y)
    segments = list(decode(path, SR, max_seconds=2.0, block_seconds=0.3))
    assert [len(s) for s in segments] == [32000, 32000, 19200]
    assert np.array_equal(np.concatenate(segments), sf.read(path, dtype="float32")[0])
    stereo = write_wav(tmp_path / "long44.wav", np.stack([y, y], axis=1), 44100)
    n = len(y)  # at 44.1 kHz: 5.2 * 16000 / 44100 s of audio
    segments = list(decode(stereo, SR, max_seconds=0.5, block_seconds=0.25))
    assert all(len(s) == 8000 for s in segments[:-1]) and 0 < len(segments[-1]) <= 8000
    assert abs(sum(map(len, segments)) - round(n * SR / 44100)) <= 2


@pytest.mark.parametrize(("fmt", "subtype", "ext"), [
    ("WAV", "PCM_16", "wav"), ("WAV", "FLOAT", "wav"), ("WAV", "PCM_24", "wav"),
    ("AIFF", "PCM_16", "aiff"),
])
def test_decode_detects_truncated_files(tmp_path: Path, fmt: str, subtype: str,
                                        ext: str) -> None:
    """libsndfile silently shortens a file whose data ends early; the header says how much
    there should be."""
    whole = tmp_path / f"whole.{ext}"
    sf.write(whole, np.stack([tone(440.0, 1.5)] * 2, axis=1), SR, subtype=subtype, format=fmt)
    assert declared_frames(whole, subtype) == 24000
    cut = tmp_path / f"cut.{ext}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert sf.info(cut).frames < 24000  # what libsndfile makes of it
    with pytest.raises(AudioError, match=r"^truncated: header declares 24000 samples, "
                                         r"decoded 1\d{4}$"):
        list(decode(cut, SR))


def test_declared_frames_only_for_plain_pcm_headers(tmp_path: Path) -> None:
    flac = tmp_path / "a.flac"
    sf.write(flac, tone(440.0, 0.5), SR)
    assert declared_frames(flac, "PCM_16") is None
    assert declared_frames(tmp_path / "missing.wav", "PCM_16") is None
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00")
    assert declared_frames(junk, "PCM_16") is None


@pytest.mark.parametrize(("kind", "reason"), [
    ("missing", "^file not found$"),
    ("empty", "^cannot decode: "),
    ("corrupt", "^cannot decode: "),
    ("zero_length", r"^no audio samples \(zero-length file\)$"),
])
def test_decode_errors(tmp_path: Path, kind: str, reason: str) -> None:
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(np.random.default_rng(1).bytes(5000))
    elif kind == "zero_length":
        write_wav(path, np.zeros(0, dtype=np.float32))
        assert path.stat().st_size == 44
    with pytest.raises(AudioError, match=reason):
        list(decode(path, SR))


def test_extract_long_file_drops_a_short_tail(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "long.wav", chord([220.0, 330.0], 4.3))
    config = ExtractConfig(targets=("onset",), max_seconds=2.0, min_seconds=0.5)
    rows = extract_clip(Clip("long", str(path), label="x"), config)
    assert [r.clip.id for r in rows] == ["long@0000", "long@0001"]  # 0.3 s tail dropped
    assert [r.n_samples for r in rows] == [32000, 32000]
    assert [r.clip.meta for r in rows] == [
        {"segment": "0", "segment_start_seconds": "0"},
        {"segment": "1", "segment_start_seconds": "2"},
    ]
    assert all(r.clip.label == "x" and r.targets["onset"].shape == (200, 1) for r in rows)


# --------------------------------------------------------------------------- in a build


def test_every_bad_input_is_an_error_row(bad_inputs: BadInputs) -> None:
    s = open_store(bad_inputs.store)
    errors = dict(s.errors)
    f = {k: str(v) for k, v in bad_inputs.files.items()}
    assert sorted(errors) == sorted(f[k] for k in ("corrupt", "truncated", "empty",
                                                    "zero_length", "too_short"))
    assert errors[f["corrupt"]].startswith("cannot decode: ")
    assert errors[f["empty"]].startswith("cannot decode: ")
    assert errors[f["truncated"]].startswith("truncated: header declares 24000 samples, "
                                             "decoded ")
    assert errors[f["zero_length"]] == "no audio samples (zero-length file)"
    assert errors[f["too_short"]] == "too short: 0.200 s < 0.5 s minimum"
    assert verify(bad_inputs.store) == []


def test_build_summary_lists_the_skipped_inputs(bad_inputs: BadInputs) -> None:
    out = bad_inputs.output
    assert "5 input(s) skipped (see 'featurestore info'):" in out
    for kind in ("corrupt", "truncated", "empty", "zero_length", "too_short"):
        assert f"  {bad_inputs.files[kind]}: " in out
    assert f"{bad_inputs.store}: 11 clips, " in out
    assert "Traceback" not in out


def test_odd_inputs_are_stored(bad_inputs: BadInputs) -> None:
    s = open_store(bad_inputs.store)
    assert s.clips["id"].tolist() == [
        "good", "long@0000", "long@0001", "long@0002", "rate_22050", "rate_44100",
        "rate_48000", "rate_8000", "silent", "stereo", "three_channels"] and s.n_clips == 11


def test_silent_file_is_stored_with_finite_targets(bad_inputs: BadInputs) -> None:
    s = open_store(bad_inputs.store)
    i = s.clips["id"].tolist().index("silent")
    assert s.clips["n_samples"][i] == SR
    assert not s.waveform_of(i).any()
    for name in BAD_TARGETS.split(","):
        x = s.frames_of(name, i)
        assert x.shape[0] == SR // HOP and np.isfinite(x).all()


@pytest.mark.parametrize("kind", ["stereo", "three_channels"])
def test_multichannel_is_downmixed(bad_inputs: BadInputs, kind: str) -> None:
    s = open_store(bad_inputs.store)
    i = s.clips["id"].tolist().index(kind)
    pcm = sf.read(bad_inputs.files[kind], dtype="float32")[0]
    assert np.array_equal(s.waveform_of(i), quantise(pcm.mean(axis=1)))


@pytest.mark.parametrize("sr", RATES)
def test_odd_sample_rates_are_resampled(bad_inputs: BadInputs, sr: int) -> None:
    s = open_store(bad_inputs.store)
    i = s.clips["id"].tolist().index(f"rate_{sr}")
    n = int(s.clips["n_samples"][i])
    assert abs(n - round(round(1.3 * sr) * SR / sr)) <= 2
    assert s.clips["n_frames"][i] == n // HOP
    y = s.waveform_of(i).astype(np.float64) / 32767
    ideal = tone(440.0, n / SR)[:n]
    assert np.abs(y[400:-400] - ideal[400:-400]).max() < 3e-4


def test_long_file_becomes_bounded_clips(bad_inputs: BadInputs) -> None:
    s = open_store(bad_inputs.store)
    ids = s.clips["id"].tolist()
    pcm = sf.read(bad_inputs.files["long"], dtype="float32")[0]
    for k, (start, n) in enumerate([(0, 32000), (32000, 32000), (64000, 19200)]):
        i = ids.index(f"long@{k:04d}")
        assert s.clips["n_samples"][i] == n <= 2 * SR
        assert s.clips["path"][i] == str(bad_inputs.files["long"])
        assert s.clip(i).meta == {"segment": str(k), "segment_start_seconds": f"{2 * k}"}
        assert np.array_equal(s.waveform_of(i), quantise(pcm[start : start + n]))
