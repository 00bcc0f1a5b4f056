"""The store: round trip against direct computation, the documented HDF5 schema, memory
maps, exact statistics, integrity checks."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import HOP, MAIN_TARGETS, SR, Corpus, quantise
from stores import partition_of
from threadpoolctl import threadpool_limits

import featurestore.store
from featurestore import FeatureStoreError, open_store, open_stores, verify
from featurestore.audio import decode
from featurestore.cli import main
from featurestore.store import (
    SCHEMA_VERSION,
    Assembly,
    Stats,
    Store,
    TargetSpec,
    assemble,
    combined_stats,
    write_shard,
)
from featurestore.targets import DecodedClip, resolve

TARGET_NAMES = MAIN_TARGETS.split(",")


def decoded(path: str) -> np.ndarray:
    (y,) = list(decode(path, SR))
    return y


# --------------------------------------------------------------------------- round trip


def test_clip_table(built_store: Path, corpus: Corpus) -> None:
    s = open_store(built_store)
    assert s.n_clips == len(corpus.rows)
    assert s.clips["id"].tolist() == [r["id"] for r in corpus.rows]
    assert s.clips["path"].tolist() == [r["path"] for r in corpus.rows]
    assert s.clips["label"].tolist() == [r["label"] for r in corpus.rows]
    assert s.clips["split"].tolist() == [r["split"] for r in corpus.rows]
    assert s.clips["group"].tolist() == [r["group"] for r in corpus.rows]
    assert [json.loads(m) for m in s.clips["meta"]] == [{"take": str(k)}
                                                         for k in range(len(corpus.rows))]
    n = [len(decoded(r["path"])) for r in corpus.rows]
    assert s.clips["n_samples"].tolist() == n
    assert s.clips["n_frames"].tolist() == [k // HOP for k in n]
    assert s.clips["sample_offset"].tolist() == [sum(n[:i]) for i in range(len(n))]
    assert s.clips["frame_offset"].tolist() == [sum(k // HOP for k in n[:i])
                                                for i in range(len(n))]
    assert s.sample_rate == SR and s.hop == HOP
    assert s.errors == []
    # The 22.05 kHz file is resampled to 16 kHz.
    assert n[5] == round(round(1.3 * 22050) * SR / 22050)


def test_waveform_is_decoded_audio_as_int16(built_store: Path, corpus: Corpus) -> None:
    s = open_store(built_store)
    assert s.waveform.dtype == np.int16
    expect = np.concatenate([quantise(decoded(r["path"])) for r in corpus.rows])
    assert np.array_equal(s.waveform, expect)
    for i, r in enumerate(corpus.rows):
        assert np.array_equal(s.waveform_of(i), quantise(decoded(r["path"])))


def test_targets_equal_direct_computation(built_store: Path, corpus: Corpus) -> None:
    s = open_store(built_store)
    assert sorted(s.targets) == sorted(TARGET_NAMES)
    with threadpool_limits(1):  # the workers run single-threaded BLAS too
        for i, r in enumerate(corpus.rows):
            clip = DecodedClip(decoded(r["path"]), SR, HOP)
            for name in TARGET_NAMES:
                expect = resolve(name)[0](clip).astype(np.float16)
                got = s.frames_of(name, i)
                assert got.dtype == np.float16
                assert np.array_equal(got, expect), (r["id"], name)
    # Frame-rate targets have one row per frame of the whole store, clip-rate one per clip.
    for name in ("mfcc", "chroma", "onset"):
        assert s.targets[name].shape == (s.n_frames, s.specs[name].dim)
    assert s.targets["tempo"].shape == (s.n_clips, 1)
    assert s.specs["mfcc"].dim == 60 and s.specs["chroma"].dim == 12


def test_memmaps_equal_h5py_reads(built_store: Path) -> None:
    s = open_store(built_store)
    assert isinstance(s.waveform, np.memmap)
    with h5py.File(built_store, "r") as f:
        assert np.array_equal(s.waveform, f["waveform"][...])
        for name, x in s.targets.items():
            assert isinstance(x, np.memmap)
            assert not x.flags.writeable
            assert x.dtype == f["targets"][name].dtype
            assert np.array_equal(x, f["targets"][name][...])


def test_stats_are_exact_over_stored_values(built_store: Path) -> None:
    s = open_store(built_store)
    for name, x in s.targets.items():
        values = np.asarray(x, dtype=np.float64)
        st = s.stats[name]
        assert st.count == len(values)
        np.testing.assert_allclose(st.mean, values.mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(st.std, values.std(axis=0), rtol=1e-12, atol=1e-12)
        assert st.mean.dtype == np.float64 and st.std.dtype == np.float64
    # One file through combined_stats is the file's own statistics.
    (one,) = open_stores(str(built_store))
    c = combined_stats([one], "mfcc")
    assert c.count == s.stats["mfcc"].count
    np.testing.assert_allclose(c.mean, s.stats["mfcc"].mean, rtol=1e-15)
    np.testing.assert_allclose(c.std, s.stats["mfcc"].std, rtol=1e-15)


def test_stats_combine_exactly() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(1000, 4))
    parts = [x[:1], x[1:400], x[400:400], x[400:]]
    total = Stats.combine((Stats.of(p) for p in parts), 4)
    assert total.count == 1000
    np.testing.assert_allclose(total.mean, x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(total.std, x.std(axis=0), rtol=1e-13)
    np.testing.assert_allclose(total.m2, ((x - x.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-12)
    summed = Stats.of(x[:400]) + Stats.of(x[400:])
    np.testing.assert_allclose(summed.mean, total.mean, rtol=1e-15)
    empty = Stats.combine((), 3)
    assert empty.count == 0 and empty.mean.tolist() == [0.0] * 3
    assert empty.std.tolist() == [0.0] * 3


def test_a_spec_as_stored_before_typed_parameters_still_parses() -> None:
    """The JSON of a chroma target as every store written so far holds it."""
    text = ('{"default": true, "deltas": 0, "description": "chroma from the STFT power, '
            'max-normalised per frame; bin 0 is C, bin 9 is A", "dim": 12, "dtype": '
            '"float16", "library": "librosa", "loss": "l1", "name": "chroma", "params": '
            '{"n_fft": 1024, "tuning": 0.0}, "rate": "frame"}')
    spec = TargetSpec.from_json(text)
    assert spec == resolve("chroma")[0].spec()
    assert spec.to_json() == text


def test_store_repr_is_one_short_line(built_store: Path) -> None:
    s = open_store(built_store)
    hours = s.seconds / 3600
    assert repr(s) == (f"Store({str(built_store)!r}, clips={s.n_clips}, hours={hours:.3f}, "
                       f"targets={sorted(TARGET_NAMES)})")
    assert len(repr(s)) < 200


def test_summary_is_what_info_prints(built_store: Path) -> None:
    s = open_store(built_store)
    summary = s.summary()
    assert json.loads(json.dumps(summary)) == summary  # plain JSON data
    assert summary["clips"] == s.n_clips and summary["n_errors"] == len(s.errors)
    assert sorted(summary["targets"]) == sorted(TARGET_NAMES)
    assert summary["targets"]["mfcc"]["dim"] == 60
    info = CliRunner().invoke(main, ["info", str(built_store)])
    assert info.exit_code == 0 and info.output == s.describe() + "\n"
    as_json = CliRunner().invoke(main, ["info", "--json", str(built_store)])
    assert json.loads(as_json.output) == summary


def test_plain_h5py_schema(built_store: Path, corpus: Corpus) -> None:
    """The documented layout, read without featurestore."""
    with h5py.File(built_store, "r") as f:
        assert int(f.attrs["schema_version"]) == SCHEMA_VERSION
        assert int(f.attrs["sample_rate"]) == SR and int(f.attrs["hop"]) == HOP
        assert f.attrs["source"] == str(corpus.csv)
        assert "created" in f.attrs
        versions = json.loads(f.attrs["versions"])
        assert {"librosa", "numpy", "h5py", "soundfile", "soxr"} <= set(versions)
        assert sorted(f) == ["clips", "errors", "targets", "waveform"]
        assert sorted(f["clips"]) == sorted(
            ["id", "path", "label", "split", "group", "sha1", "meta", "n_samples", "n_frames",
             "sample_offset", "frame_offset"])
        n = len(corpus.rows)
        for col in f["clips"].values():
            assert col.shape == (n,)
        assert f["clips"]["n_samples"].dtype == np.int64
        ids = f["clips"]["id"].asstr()[...].tolist()
        assert ids == [r["id"] for r in corpus.rows]
        sha1 = f["clips"]["sha1"].asstr()[...]
        assert all(len(h) == 40 for h in sha1)
        total = int(f["clips"]["n_samples"][...].sum())
        frames = int(f["clips"]["n_frames"][...].sum())
        w = f["waveform"]
        assert w.shape == (total,) and w.dtype == np.int16
        assert w.chunks is None and w.compression is None
        assert w.id.get_offset() is not None
        for name in TARGET_NAMES:
            d = f["targets"][name]
            spec = json.loads(d.attrs["spec"])
            assert spec["name"] == name
            rows = n if spec["rate"] == "clip" else frames
            assert d.shape == (rows, spec["dim"]) and d.dtype == np.float16
            assert d.chunks is None and d.compression is None
            assert d.attrs["mean"].shape == (spec["dim"],)
            assert d.attrs["std"].dtype == np.float64
            assert int(d.attrs["count"]) == rows
        assert f["errors"]["path"].shape == (0,) and f["errors"]["reason"].shape == (0,)


# --------------------------------------------------------------------------- verify


@pytest.fixture
def store_copy(built_store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy.h5"
    shutil.copyfile(built_store, out)
    return out


def test_verify_sound_store(built_store: Path) -> None:
    assert verify(built_store) == []
    result = CliRunner().invoke(main, ["verify", str(built_store)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{built_store}: ok"


def _cli_verify_fails(path: Path, needle: str) -> None:
    result = CliRunner().invoke(main, ["verify", str(path)])
    assert result.exit_code == 1
    assert needle in result.output
    assert "Traceback" not in result.output


def test_verify_detects_nan_in_a_target(store_copy: Path) -> None:
    with h5py.File(store_copy, "r+") as f:
        f["targets"]["chroma"][5, 3] = np.nan
    problems = verify(store_copy)
    assert "target chroma: contains NaN or Inf" in problems
    assert "target chroma: stored statistics differ from the values" in problems
    assert all("mfcc" not in p for p in problems)
    _cli_verify_fails(store_copy, "contains NaN or Inf")


def test_verify_detects_a_changed_value(store_copy: Path) -> None:
    with h5py.File(store_copy, "r+") as f:
        f["targets"]["mfcc"][10, 0] = f["targets"]["mfcc"][10, 0] + 500
    assert verify(store_copy, quick=True) == [
        "target mfcc: stored statistics differ from the values"]
    assert verify(store_copy) == [
        "/targets/mfcc: rows 0-1136 differ from their checksum (clips tone_a4 to clicks)",
        "target mfcc: stored statistics differ from the values"]


def test_verify_detects_a_wrong_offset(store_copy: Path) -> None:
    with h5py.File(store_copy, "r+") as f:
        f["clips"]["sample_offset"][3] += 1
    assert verify(store_copy, quick=True) == [
        "sample_offset is not the running sum of n_samples"]
    assert verify(store_copy) == [
        "sample_offset is not the running sum of n_samples",
        "/clips/sample_offset: rows 0-7 differ from their checksum (clips tone_a4 to clicks)"]
    _cli_verify_fails(store_copy, "sample_offset is not the running sum")


def test_verify_detects_frame_count_and_sizes(store_copy: Path) -> None:
    with h5py.File(store_copy, "r+") as f:
        f["clips"]["n_frames"][0] -= 1
    problems = verify(store_copy)
    assert "n_frames differs from n_samples // hop" in problems
    assert "frame_offset is not the running sum of n_frames" in problems
    assert any(p.startswith("target mfcc: shape") for p in problems)


def test_verify_detects_duplicate_ids_and_bad_split(store_copy: Path) -> None:
    with h5py.File(store_copy, "r+") as f:
        ids = f["clips"]["id"].asstr()[...]
        f["clips"]["id"][1] = ids[0]
        f["clips"]["split"][0] = "dev"
    assert verify(store_copy, quick=True) == [
        "clip ids are not unique", "unknown split values ['dev']"]
    assert verify(store_copy) == [
        "clip ids are not unique", "unknown split values ['dev']",
        "/clips/id: rows 0-7 differ from their checksum (clips tone_a4 to clicks)",
        "/clips/split: rows 0-7 differ from their checksum (clips tone_a4 to clicks)"]


def test_verify_and_open_reject_other_schema_versions(store_copy: Path) -> None:
    with h5py.File(store_copy, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(FeatureStoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        open_store(store_copy)
    (problem,) = verify(store_copy)
    assert "schema version" in problem


@pytest.mark.parametrize("damage", ["no_waveform", "no_spec", "not_hdf5", "missing"])
def test_open_store_damaged_files(store_copy: Path, damage: str) -> None:
    if damage == "no_waveform":
        with h5py.File(store_copy, "r+") as f:
            del f["waveform"]
        match = "damaged store"
    elif damage == "no_spec":
        with h5py.File(store_copy, "r+") as f:
            del f["targets"]["onset"].attrs["spec"]
        match = "damaged store"
    elif damage == "not_hdf5":
        store_copy.write_bytes(b"not a store")
        match = "not an HDF5 store"
    else:
        store_copy.unlink()
        match = "no such store"
    with pytest.raises(FeatureStoreError, match=match):
        open_store(store_copy)
    assert len(verify(store_copy)) == 1
    _cli_verify_fails(store_copy, match)


def test_open_stores_checks_agreement(built_store: Path, store_copy: Path) -> None:
    assert [s.path for s in open_stores([built_store, store_copy])] == [built_store, store_copy]
    with h5py.File(store_copy, "r+") as f:
        spec = json.loads(f["targets"]["mfcc"].attrs["spec"])
        spec["params"]["n_mfcc"] = 13
        f["targets"]["mfcc"].attrs["spec"] = json.dumps(spec)
    with pytest.raises(FeatureStoreError, match="'mfcc' declared differently"):
        open_stores([built_store, store_copy])
    with pytest.raises(FeatureStoreError, match="no store matches"):
        open_stores(str(store_copy.parent / "nothing-*.h5"))


def test_a_store_written_without_m2_still_opens(built_store: Path, tmp_path: Path) -> None:
    """Stores written before the sum of squared deviations was recorded: their statistics
    come from the stored standard deviation."""
    old = tmp_path / "old.h5"
    shutil.copy(built_store, old)
    with h5py.File(old, "r+") as f:
        for d in f["targets"].values():
            del d.attrs["m2"]
    now, then = open_store(built_store), open_store(old)
    for name, st in now.stats.items():
        was = then.stats[name]
        assert was.count == st.count
        np.testing.assert_array_equal(was.mean, st.mean)
        np.testing.assert_allclose(was.m2, st.std**2 * st.count, rtol=1e-12)
        np.testing.assert_allclose(was.std, st.std, rtol=1e-12)


# ------------------------------------------------------------ writing around the page cache


def test_large_arrays_start_on_aligned_offsets(built_store: Path) -> None:
    """Every array of at least DIRECT_MIN_BYTES starts at a multiple of DIRECT_ALIGNMENT,
    so that its bytes can be written with O_DIRECT."""
    large = []
    with h5py.File(built_store, "r") as f:
        for d in [f["waveform"], *f["targets"].values()]:
            if d.nbytes >= featurestore.store.DIRECT_MIN_BYTES:
                assert d.id.get_offset() % featurestore.store.DIRECT_ALIGNMENT == 0, d.name
                large.append(d.name)
    assert "/waveform" in large and len(large) >= 2


class _Writes:
    """os.pwrite with a record of every write on a direct descriptor; it refuses (EINVAL)
    the direct write number ``refuse`` (counting from 1), as a file system without direct
    writes would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse: int | None) -> None:
        self.direct_fds: set[int] = set()
        self.direct: list[tuple[int, int]] = []  # (offset, length) of each direct write
        self.refused = 0
        self.refuse = refuse
        real_pwrite, real_open = os.pwrite, featurestore.store._Direct.open

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if fd in self.direct_fds:
                if len(self.direct) + 1 == self.refuse:
                    self.refused += 1
                    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
                self.direct.append((offset, len(memoryview(data).cast("B"))))
            return real_pwrite(fd, data, offset)

        def open_direct(path: Path) -> Any:
            direct = real_open(path)
            if direct is not None:
                self.direct_fds.add(direct.fd)
            return direct

        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(featurestore.store._Direct, "open", staticmethod(open_direct))


def _same_content(a: Path, b: Path) -> None:
    """Two stores hold the same arrays, checksums and statistics (their creation times
    differ)."""
    sa, sb = open_store(a), open_store(b)
    assert np.array_equal(sa.waveform, sb.waveform)
    assert sa.targets.keys() == sb.targets.keys()
    for name in sa.targets:
        assert np.array_equal(sa.targets[name], sb.targets[name], equal_nan=True), name
        assert np.array_equal(sa.checksums[f"targets/{name}"].digests,
                              sb.checksums[f"targets/{name}"].digests), name
        assert sa.stats[name].count == sb.stats[name].count
        assert np.array_equal(sa.stats[name].mean, sb.stats[name].mean), name
        assert np.array_equal(sa.stats[name].m2, sb.stats[name].m2), name
    assert np.array_equal(sa.checksums["waveform"].digests, sb.checksums["waveform"].digests)


@pytest.mark.parametrize("how", ["direct", "refused-midway", "page-cache-only"])
def test_direct_writes_store_the_same_bytes(built_store: Path, tmp_path: Path, how: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written through O_DIRECT (with a staging buffer of three blocks, so that
    every array takes several direct writes and most end in a partial block), one whose
    file system refuses the third direct write, and one written through the page cache
    only hold the same bytes as the store they were assembled from."""
    align = featurestore.store.DIRECT_ALIGNMENT
    monkeypatch.setattr(featurestore.store, "_STAGING_BYTES", 3 * align)
    if how == "page-cache-only":
        monkeypatch.setattr(featurestore.store._Direct, "open", staticmethod(lambda path: None))
    writes = _Writes(monkeypatch, refuse=3 if how == "refused-midway" else None)
    out = tmp_path / "out.h5"
    assemble(out, [built_store], attrs={"sample_rate": SR, "hop": HOP, "source": "test"})
    _same_content(out, built_store)
    assert verify(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
    if how == "direct":
        # Every large array went to the disk directly, in aligned pieces.
        assert len(writes.direct) > 10
        assert all(at % align == 0 and n % align == 0 and 0 < n <= 3 * align
                   for at, n in writes.direct)
    elif how == "refused-midway":
        assert writes.refused == 1 and len(writes.direct) == 2  # none after the refusal
    else:
        assert writes.direct_fds == set() and writes.direct == []


def _shards_of(store: Store, size: int, folder: Path) -> list[Path]:
    """The store cut back into shards of ``size`` clips each (its build's partitions)."""
    paths = []
    for first in range(0, store.n_clips, size):
        result, specs = partition_of(store, list(range(first, min(first + size,
                                                                  store.n_clips))), [])
        paths.append(folder / f"part-{first // size:05d}.h5")
        write_shard(paths[-1], result, specs, sample_rate=store.sample_rate, hop=store.hop,
                    attrs={})
    return paths


@pytest.mark.parametrize("refuse", [None, 1, 4, 9, 25])
def test_shards_added_one_at_a_time_store_the_same_bytes(
        built_store: Path, tmp_path: Path, refuse: int | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An Assembly given the built store's three shards one after another (as a build
    gives them while it runs) writes a few rows of each array in turn, each array through
    its own staging buffer of three blocks. Whether every write goes to the disk directly
    or the file system refuses the 1st, 4th, 9th or 25th direct write (then the staged
    bytes of the other arrays, and everything after, go through the page cache), the
    store holds the same bytes as the one the shards were cut from."""
    s = open_store(built_store)
    shards = _shards_of(s, int(s.attrs["partition_size"]), tmp_path)
    align = featurestore.store.DIRECT_ALIGNMENT
    monkeypatch.setattr(featurestore.store, "_STAGING_BYTES", 3 * align)
    monkeypatch.setattr(featurestore.store, "DIRECT_MIN_BYTES", align)  # every target too
    writes = _Writes(monkeypatch, refuse=refuse)
    out = tmp_path / "out.h5"
    assembly = Assembly(out, n_samples=s.clips["n_samples"].tolist(),
                        specs=list(s.specs.values()), hop=HOP,
                        attrs={"sample_rate": SR, "hop": HOP, "source": "test"})
    for k, shard in enumerate(shards):
        assert assembly.add(open_store(shard))
        assert assembly.complete == (k == len(shards) - 1)
    assembly.finish()
    _same_content(out, built_store)
    assert open_store(out).clips["id"].tolist() == s.clips["id"].tolist()
    assert verify(out) == []
    if refuse is None:
        assert writes.refused == 0 and len(writes.direct) > 20
    else:
        assert writes.refused == 1 and len(writes.direct) == refuse - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in shards] + ["out.h5"])


def test_assembly_refuses_a_shard_it_was_not_planned_for(built_store: Path,
                                                          tmp_path: Path) -> None:
    """A shard whose clips have other sample counts than the next ones planned is refused
    with nothing written; the assembly is then incomplete, and discarding it leaves no
    file."""
    s = open_store(built_store)
    first, second, _ = _shards_of(s, 3, tmp_path)
    planned = s.clips["n_samples"].tolist()
    out = tmp_path / "out.h5"
    assembly = Assembly(out, n_samples=[*planned[:4], planned[4] + 1, *planned[5:]],
                        specs=list(s.specs.values()), hop=HOP,
                        attrs={"sample_rate": SR, "hop": HOP, "source": "test"})
    assert assembly.add(open_store(first))
    assert not assembly.add(open_store(second))
    assert not assembly.complete
    with pytest.raises(FeatureStoreError, match=r"out\.h5: 3 of 8 clips added$"):
        assembly.finish()
    assert not out.exists() and not list(tmp_path.glob("out.h5.tmp-*"))
