"""Long files and hostile inputs: a long file is planned as pieces (one per segment) from
its header and each piece is decoded alone, exactly where the whole file's segment is;
headers that cannot be real audio are refused before decoding; shards are keyed on the
files' content; file names that are not UTF-8 become error rows.

Builds here run on a thread pool in this process (``executor=``): no Dask start-up.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, chord, noise, quantise, tone, write_wav

from featurestore import FeatureStoreError, build, open_store
from featurestore.audio import (
    AudioError,
    content_hash,
    decode,
    file_digests,
    output_length,
    probe,
    sha1_file,
)
from featurestore.build import PARTITION_SECONDS, partition_hash, partitions
from featurestore.extract import ExtractConfig, extract_partition, plan_pieces
from featurestore.manifest import Clip, Piece
from featurestore.sources import load_manifest

CONFIG = ExtractConfig(targets=("onset",), max_seconds=2.0, min_seconds=0.5)


def signal(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    """A rising ramp plus a tone and a little noise: no two segments alike."""
    n = round(seconds * sr)
    ramp = np.linspace(-0.4, 0.4, n, dtype=np.float32)
    y = ramp + tone(441.0, seconds, sr, amp=0.3)[:n] + noise(seconds, sr, amp=0.05)[:n]
    return y if channels == 1 else np.stack([y, -y[::-1]], axis=1)


def write_blocks(path: Path, y: np.ndarray, sr: int, fmt: str, subtype: str) -> Path:
    """Write in blocks (libsndfile's Vorbis encoder can crash on one large write)."""
    with sf.SoundFile(path, "w", sr, y.shape[1] if y.ndim > 1 else 1, format=fmt,
                      subtype=subtype) as f:
        for i in range(0, len(y), 8192):
            f.write(y[i : i + 8192])
    return path


def thread_build(source: Path, out: Path, **kw: Any) -> Any:
    with cf.ThreadPoolExecutor(2) as pool:
        return build(str(source), out, targets="onset", executor=pool, progress=False, **kw)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("first", [1, 2, 5])
def test_segment_decoded_alone_is_that_segment_of_the_file(tmp_path: Path, first: int) -> None:
    path = write_wav(tmp_path / "long.wav", signal(13.3))
    whole = list(decode(path, SR, max_seconds=2.0))
    assert [len(s) for s in whole] == [32000] * 6 + [20800]
    (alone,) = decode(path, SR, max_seconds=2.0, first=first, count=1)
    assert np.array_equal(alone, whole[first])  # bit for bit at the file's own rate
    rest = list(decode(path, SR, max_seconds=2.0, first=first))
    assert len(rest) == 7 - first
    assert all(np.array_equal(a, b) for a, b in zip(rest, whole[first:], strict=True))
    assert list(decode(path, SR, max_seconds=2.0, first=7)) == []  # past the end


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_segment_alone_equals_one_stream(tmp_path: Path, rate: int) -> None:
    """Output sample j of segment k is output sample k * L + j of the whole file: the
    resampler enters on the grid where source and output samples coincide, after a
    pre-roll that is dropped."""
    path = write_wav(tmp_path / f"long{rate}.wav", signal(9.3, rate, channels=2), rate)
    whole = list(decode(path, SR, max_seconds=2.0))
    n = output_length(sf.info(path).frames, rate, SR)
    assert sum(map(len, whole)) == n == 148800
    for k, segment in enumerate(whole):
        (alone,) = decode(path, SR, max_seconds=2.0, first=k, count=1, block_seconds=0.7)
        assert len(alone) == len(segment)
        assert np.abs(alone - segment).max() < 2e-6  # float rounding only


@pytest.mark.parametrize(("fmt", "subtype", "ext"), [
    ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"),
])
@pytest.mark.parametrize("rate", [16000, 44100])
def test_compressed_segment_alone_equals_one_stream(tmp_path: Path, fmt: str, subtype: str,
                                                    ext: str, rate: int) -> None:
    """Seeking lands exactly (FLAC), or a few hundred frames off in what the decoder
    outputs first (libsndfile's Vorbis): the pre-roll covers it."""
    path = write_blocks(tmp_path / f"long.{ext}", signal(9.3, rate, channels=2), rate, fmt,
                        subtype)
    whole = list(decode(path, SR, max_seconds=2.0))
    assert sum(map(len, whole)) == 148800
    for k, segment in enumerate(whole):
        (alone,) = decode(path, SR, max_seconds=2.0, first=k, count=1)
        assert len(alone) == len(segment)
        if rate == SR:
            assert np.array_equal(alone, segment)
        else:
            assert np.abs(alone - segment).max() < 2e-6


@pytest.mark.parametrize("rate", [1000, 8000, 11025, 22050, 32000, 44100, 48000, 96000])
def test_output_length_is_what_decoding_yields(tmp_path: Path, rate: int) -> None:
    for k, seconds in enumerate((0.25, 1.0, 1.2345, 3.0001)):
        n = round(seconds * rate) + k  # odd lengths too
        path = write_wav(tmp_path / f"r{rate}-{k}.wav", noise(n / rate + 1e-9, rate)[:n], rate)
        assert sf.info(path).frames == n
        assert sum(map(len, decode(path, SR))) == output_length(n, rate, SR)


# --------------------------------------------------------------------------- planning


def test_plan_cuts_a_long_file_into_pieces(tmp_path: Path) -> None:
    files = {
        "long": write_wav(tmp_path / "long.wav", signal(5.3)),       # 2 + 2 + 1.3 s
        "tail": write_wav(tmp_path / "tail.wav", signal(4.3)),       # 2 + 2 (+ 0.3 dropped)
        "one": write_wav(tmp_path / "one.wav", signal(2.3)),         # 2 (+ 0.3 dropped)
        "short": write_wav(tmp_path / "short.wav", signal(0.2)),     # too short
        "rate": write_wav(tmp_path / "rate.wav", signal(4.5, 44100), 44100),
    }
    clips = [Clip(k, str(p)) for k, p in files.items()]
    clips.append(Clip("missing", str(tmp_path / "missing.wav")))
    pieces = plan_pieces(clips, CONFIG)
    rows = [(p.clip.id, p.segment, p.n_segments, p.last, p.samples) for p in pieces]
    assert rows == [
        ("long", 0, 3, False, 32000), ("long", 1, 3, False, 32000), ("long", 2, 3, True, 20800),
        ("tail", 0, 2, False, 32000), ("tail", 1, 2, True, 32000),
        ("one", 0, 1, True, 32000),
        ("short", 0, 1, True, 0),
        ("rate", 0, 3, False, 32000), ("rate", 1, 3, False, 32000), ("rate", 2, 3, True, 8000),
        ("missing", 0, 1, True, 0),
    ]
    for p in pieces[:-1]:
        assert p.content == content_hash(p.path) and len(p.content) == 32
    assert pieces[-1].content is None
    assert plan_pieces(clips, CONFIG) == pieces  # a function of the manifest and the files


def test_partitions_hold_at_most_a_budget_of_audio() -> None:
    """An hour-long file at the default 600 s segments is six pieces, each its own task;
    short clips share tasks up to the clip count or the audio budget."""
    seg = 600 * SR
    hour = [Piece(Clip("hour", "/h.wav"), k, 6, k == 5, seg) for k in range(6)]
    short = [Piece(Clip(f"s{i}", f"/s{i}.wav"), samples=30 * SR) for i in range(40)]
    budget = round(PARTITION_SECONDS * SR)
    parts = partitions(short[:3] + hour + short[3:], 16, budget)
    sizes = [[p.clip.id for p in part] for part in parts]
    assert sizes[0] == ["s0", "s1", "s2"]
    assert sizes[1:7] == [["hour"]] * 6
    assert [len(s) for s in sizes[7:]] == [16, 16, 5]
    assert all(sum(p.samples for p in part) <= budget for part in parts)
    assert partitions(short, 4) == [short[i : i + 4] for i in range(0, 40, 4)]
    big = [Piece(Clip("big", "/b.wav"), samples=2 * budget)]  # a piece alone may hold more
    assert partitions(big + short[:1], 16, budget) == [big, short[:1]]


# --------------------------------------------------------------------------- in a build


def test_long_files_become_clips_one_piece_per_task(tmp_path: Path) -> None:
    root = tmp_path / "audio"
    y = signal(5.3)
    write_wav(root / "long.wav", y)
    write_wav(root / "tail.wav", signal(4.3))
    y44 = signal(4.5, 44100)
    write_wav(root / "rate.wav", y44, 44100)
    report = thread_build(root, tmp_path / "s.h5", max_seconds=2.0, partition_size=1)
    assert (report.partitions_total, report.partitions_computed) == (8, 8)
    s = open_store(tmp_path / "s.h5")
    ids = s.clips["id"].tolist()
    assert ids == ["long@0000", "long@0001", "long@0002", "rate@0000", "rate@0001",
                   "rate@0002", "tail@0000", "tail@0001"]
    assert s.clips["n_samples"].tolist() == [32000, 32000, 20800, 32000, 32000, 8000,
                                             32000, 32000]
    assert [s.clip(i).meta for i in range(3)] == [
        {"segment": str(k), "segment_start_seconds": str(2 * k)} for k in range(3)]
    assert set(s.clips["sha1"].tolist()) == {sha1_file(root / f) for f in
                                             ("long.wav", "rate.wav", "tail.wav")}
    pcm = sf.read(root / "long.wav", dtype="float32")[0]
    assert np.array_equal(np.asarray(s.waveform[: len(pcm)]), quantise(pcm))
    one_stream = np.concatenate(list(decode(root / "rate.wav", SR, max_seconds=2.0)))
    stored = np.asarray(s.waveform[len(pcm) : len(pcm) + 72000]).astype(np.int32)
    assert np.abs(stored - quantise(one_stream)).max() <= 1  # float rounding, then int16
    assert s.errors == []


def test_truncated_long_wav_is_one_error_row_and_no_clip(tmp_path: Path) -> None:
    root = tmp_path / "audio"
    write_wav(root / "good.wav", tone(440.0, 1.0))
    whole = write_wav(tmp_path / "whole.wav", chord([220.0, 330.0], 7.0)).read_bytes()
    cut = root / "cut.wav"
    cut.write_bytes(whole[: 44 + 2 * 70000])  # 70000 of 112000 samples
    (piece,) = plan_pieces([Clip("cut", str(cut))], CONFIG)  # refused from its header
    assert (piece.segment, piece.n_segments, piece.samples) == (0, 1, 0)
    report = thread_build(root, tmp_path / "s.h5", max_seconds=2.0, partition_size=1)
    s = open_store(tmp_path / "s.h5")
    assert s.clips["id"].tolist() == ["good"]
    assert s.errors == [(str(cut), "truncated: header declares 112000 samples, decoded 70000")]
    assert report.errors == s.errors


def test_truncated_long_flac_is_refused_from_its_end(tmp_path: Path) -> None:
    whole = write_blocks(tmp_path / "whole.flac", signal(7.0), SR, "FLAC", "PCM_16")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 4])
    with pytest.raises(AudioError, match=r"^truncated: header declares 112000 samples, the "
                                         r"last one cannot be read \(.+\)$"):
        probe(cut)
    result = extract_partition(plan_pieces([Clip("cut", str(cut))], CONFIG), CONFIG)
    assert result.clips == [] and len(result.errors) == 1


def wav_header(path: Path, rate: int | None = None, data_bytes: int | None = None) -> Path:
    """Rewrite the sample rate (and byte rate) or the data chunk size of a plain WAV."""
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"fmt " and data[36:40] == b"data"
    if rate is not None:
        block_align = struct.unpack("<H", data[32:34])[0]
        data[24:32] = struct.pack("<II", rate, rate * block_align)
    if data_bytes is not None:
        data[40:44] = struct.pack("<I", data_bytes)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("rate", "reason"), [
    (8, "unusable header: sample rate 8 Hz is below the 1000 Hz minimum"),
    (999, "unusable header: sample rate 999 Hz is below the 1000 Hz minimum"),
    (2_000_000, "unusable header: sample rate 2000000 Hz is above the 1000000 Hz maximum"),
])
def test_absurd_sample_rate_is_refused_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: int, reason: str) -> None:
    """The fault-injection file: 19 KB declaring 8 Hz, so 20 minutes of 'audio'."""
    path = wav_header(write_wav(tmp_path / "absurd.wav", noise(9600 / SR)), rate=rate)
    assert path.stat().st_size == 44 + 2 * 9600
    assert sf.info(path).samplerate == rate  # libsndfile takes the header at its word
    with pytest.raises(AudioError, match=f"^{reason}$"):
        probe(path)

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded")

    monkeypatch.setattr("featurestore.extract.decode", no_decoding)
    pieces = plan_pieces([Clip("absurd", str(path))], CONFIG)
    assert len(pieces) == 1
    result = extract_partition(pieces, CONFIG)
    assert result.clips == [] and result.errors == [(str(path), reason)]


def test_data_size_larger_than_the_file_is_refused(tmp_path: Path) -> None:
    path = wav_header(write_wav(tmp_path / "big.wav", noise(1.0)), data_bytes=0x7FFFFFF0)
    with pytest.raises(AudioError, match=r"^truncated: header declares 1073741816 samples, "
                                         r"decoded 16000$"):
        probe(path)


# --------------------------------------------------------------------------- content


def _fail() -> None:
    time.sleep(0.5)  # after the earlier tasks' results are taken
    raise RuntimeError("injected")


class FailingExecutor(cf.ThreadPoolExecutor):
    """One thread, running the tasks in turn; those of partitions holding ``fail_on`` fail
    (as a task lost to a crash would): the build stops with the earlier shards kept."""

    def __init__(self, fail_on: str) -> None:
        super().__init__(1)
        self.fail_on = fail_on

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        if any(p.path.endswith(self.fail_on) for p in args[0]):
            return super().submit(_fail)
        return super().submit(fn, *args, **kwargs)


def interrupted_build(root: Path, out: Path) -> None:
    with FailingExecutor("b.wav") as pool, pytest.raises(FeatureStoreError):
        build(str(root), out, targets="onset", executor=pool, partition_size=1,
              progress=False)
    assert [p.name for p in out.with_name(out.name + ".parts").glob("part-*.h5")] == [
        "part-00000.h5"]


def rewrite_same_size_and_mtime(path: Path, y: np.ndarray) -> None:
    st = path.stat()
    write_wav(path, y)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_content_change_with_same_size_and_mtime_recomputes_the_shard(tmp_path: Path) -> None:
    root = tmp_path / "audio"
    a = write_wav(root / "a.wav", tone(440.0, 1.0))
    write_wav(root / "b.wav", tone(660.0, 1.0))

    interrupted_build(root, tmp_path / "same.h5")  # control: nothing changed
    resumed = thread_build(root, tmp_path / "same.h5", partition_size=1)
    assert (resumed.partitions_total, resumed.partitions_computed) == (2, 1)

    interrupted_build(root, tmp_path / "changed.h5")
    new = noise(1.0, seed=9)
    rewrite_same_size_and_mtime(a, new)
    resumed = thread_build(root, tmp_path / "changed.h5", partition_size=1)
    assert (resumed.partitions_total, resumed.partitions_computed) == (2, 2)
    s = open_store(tmp_path / "changed.h5")
    assert s.clips["id"].tolist() == ["a", "b"]
    assert np.array_equal(s.waveform_of(0), quantise(sf.read(a, dtype="float32")[0]))
    assert s.clips["sha1"][0] == sha1_file(a)


def test_partition_hash_keys_on_content(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "a.wav", tone(440.0, 1.0))
    before = [partition_hash(p, CONFIG) for p in partitions(plan_pieces([Clip("a", str(a))],
                                                                        CONFIG), 1)]
    os.utime(a, ns=(1, 2))  # times alone change nothing
    assert [partition_hash(p, CONFIG) for p in partitions(
        plan_pieces([Clip("a", str(a))], CONFIG), 1)] == before
    rewrite_same_size_and_mtime(a, noise(1.0, seed=3))
    assert [partition_hash(p, CONFIG) for p in partitions(
        plan_pieces([Clip("a", str(a))], CONFIG), 1)] != before


def test_file_changed_after_planning_is_refused(tmp_path: Path) -> None:
    """Each piece checks the file's content against the plan (a shard must hold what its
    identity says); the pieces of one task make one error row."""
    path = write_wav(tmp_path / "long.wav", signal(5.3))
    pieces = plan_pieces([Clip("long", str(path))], CONFIG)
    assert len(pieces) == 3
    rewrite_same_size_and_mtime(path, signal(5.3)[::-1].copy())
    assert [extract_partition([p], CONFIG).errors for p in pieces] == [
        [(str(path), "changed while the build ran (its content differs from when the build "
                     "was planned); run the build again")]] * 3
    result = extract_partition(pieces, CONFIG)
    assert result.clips == []
    assert result.errors == [(str(path), "changed while the build ran (its content differs "
                                         "from when the build was planned); run the build "
                                         "again")]
    sha1, xxh = file_digests(path)
    assert (sha1, xxh) == (sha1_file(path), content_hash(path))


# --------------------------------------------------------------------------- file names


@pytest.fixture
def bad_name_folder(tmp_path: Path) -> tuple[Path, str]:
    """A folder with a good file and one whose name is the bytes ``bad\\xff.wav``."""
    root = tmp_path / "audio"
    write_wav(root / "good.wav", tone(440.0, 1.0))
    raw = os.path.join(os.fsencode(root), b"bad\xff.wav")
    try:
        sf.write(raw, tone(330.0, 1.0), SR)
    except OSError:
        pytest.skip("the file system refuses names that are not UTF-8")
    (name,) = [n for n in os.listdir(root) if n != "good.wav"]
    assert name == "bad\udcff.wav"
    return root, os.path.join(root, name)


def test_file_name_not_utf8_is_an_error_row(bad_name_folder: tuple[Path, str]) -> None:
    root, bad = bad_name_folder
    clips = load_manifest(root, "folder")  # listed, not silently skipped
    assert [(c.id, c.path) for c in clips] == [("bad\udcff", bad),
                                               ("good", str(root / "good.wav"))]
    result = extract_partition(plan_pieces(clips, CONFIG), CONFIG)
    assert [r.clip.id for r in result.clips] == ["good"]
    assert result.errors == [(bad, "file name is not valid UTF-8")]
    other = Clip("x\udcfe", str(root / "good.wav"), label="ok")
    assert extract_partition([other], CONFIG).errors == [
        (str(root / "good.wav"), "clip id is not valid UTF-8")]


def test_file_name_not_utf8_does_not_abort_the_build(bad_name_folder: tuple[Path, str],
                                                     tmp_path: Path) -> None:
    root, bad = bad_name_folder
    report = thread_build(root, tmp_path / "s.h5")
    s = open_store(tmp_path / "s.h5")
    assert s.clips["id"].tolist() == ["good"]
    assert s.errors == [(bad, "file name is not valid UTF-8")]
    assert report.errors == s.errors
    shown = f"  {root}/bad\\xff.wav: file name is not valid UTF-8"  # printable everywhere
    assert shown in report.summary().splitlines()
    info = subprocess.run(["featurestore", "info", str(tmp_path / "s.h5")],
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and info.stderr == ""
    assert shown in info.stdout.splitlines()
