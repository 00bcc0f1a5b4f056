"""A store can be trusted: block checksums that find any damaged byte, multi-file sets
that open only when whole, a full disk that ends in one line (no crash, no temporary file,
the previous store intact), and file names that are not UTF-8 kept exactly.

Faults are written into built stores the way a disk or a careless copy would: with plain
``open(..., "r+b")`` at the offset HDF5 reports for the dataset.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import xxhash
from click.testing import CliRunner
from conftest import HOP, SR, tmpfs
from stores import partition_of

import featurestore.store
from featurestore import FeatureStoreError, open_store, open_stores, verify
from featurestore.cli import main
from featurestore.store import (
    assemble,
    write_shard,
)

ATTRS = {"sample_rate": SR, "hop": HOP, "source": "test"}
MISMATCH = "differ from their checksum"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def store_copy(built_store: Path, tmp_path: Path) -> Path:
    """A copy of the built store to damage (as in test_store.py)."""
    out = tmp_path / "copy.h5"
    shutil.copyfile(built_store, out)
    return out


@pytest.fixture(scope="module")
def small_blocks(built_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built store assembled again with small checksum blocks: 4 KiB blocks of the
    large arrays (2048 waveform samples, 64 mfcc rows), 2 rows per column block."""
    out = tmp_path_factory.mktemp("blocks") / "blocks.h5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(featurestore.store, "CHECKSUM_BLOCK_BYTES", 4096)
        mp.setattr(featurestore.store, "COLUMN_BLOCK_ROWS", 2)
        assemble(out, [built_store], attrs=ATTRS)
    return out


@pytest.fixture
def blocks_copy(small_blocks: Path, tmp_path: Path) -> Path:
    out = tmp_path / "blocks.h5"
    shutil.copyfile(small_blocks, out)
    return out


def layout(path: Path, name: str) -> tuple[int, int, int, int]:
    """Offset, bytes per row, rows and checksum block rows of a contiguous dataset."""
    with h5py.File(path, "r") as f:
        d = f[name]
        row_bytes = d.dtype.itemsize * int(np.prod(d.shape[1:], dtype=np.int64))
        return d.id.get_offset(), row_bytes, d.shape[0], int(d.attrs["checksum_block_rows"])


def flip_bit(path: Path, name: str, row: int) -> set[int]:
    """Flip the lowest bit of the first byte of ``row``; return the rows touched."""
    offset, row_bytes, _, _ = layout(path, name)
    with open(path, "r+b") as fh:
        fh.seek(offset + row * row_bytes)
        byte = fh.read(1)[0]
        fh.seek(offset + row * row_bytes)
        fh.write(bytes([byte ^ 1]))
    return {row}


def overwrite(path: Path, name: str, row: int, n: int = 64) -> set[int]:
    """Write ``n`` random bytes from the start of ``row`` (at most to the dataset's end)."""
    offset, row_bytes, rows, _ = layout(path, name)
    n = min(n, rows * row_bytes - row * row_bytes)
    with open(path, "r+b") as fh:
        fh.seek(offset + row * row_bytes)
        before = fh.read(n)
        noise = np.random.default_rng(0).bytes(n)
        assert noise != before
        fh.seek(offset + row * row_bytes)
        fh.write(noise)
    return set(range(row, row + -(-n // row_bytes)))


def swap_rows(path: Path, name: str, a: int, b: int) -> set[int]:
    offset, row_bytes, _, _ = layout(path, name)
    with open(path, "r+b") as fh:
        fh.seek(offset + a * row_bytes)
        row_a = fh.read(row_bytes)
        fh.seek(offset + b * row_bytes)
        row_b = fh.read(row_bytes)
        assert row_a != row_b
        fh.seek(offset + a * row_bytes)
        fh.write(row_b)
        fh.seek(offset + b * row_bytes)
        fh.write(row_a)
    return {a, b}


def expected_lines(path: Path, name: str, rows_touched: set[int]) -> list[str]:
    """The checksum lines (without the clip names) of the blocks holding those rows."""
    _, _, rows, block = layout(path, name)
    blocks = sorted({r // block for r in rows_touched})
    return [f"/{name}: rows {b * block}-{min((b + 1) * block, rows) - 1} {MISMATCH}"
            for b in blocks]


def checksum_lines(problems: list[str]) -> list[str]:
    return [p.split(" (clip")[0] for p in problems if MISMATCH in p]


def checked_datasets(f: h5py.File) -> list[str]:
    return (["waveform"] + [f"targets/{n}" for n in f["targets"]]
            + [f"clips/{n}" for n in f["clips"]] + [f"errors/{n}" for n in f["errors"]])


# --------------------------------------------------------------------------- the layout


@pytest.mark.parametrize("which", ["built", "small_blocks"])
def test_checksums_are_xxh3_64_of_the_stored_bytes_by_blocks(which: str, built_store: Path,
                                                             small_blocks: Path) -> None:
    """The documented layout, recomputed from the file with xxhash alone."""
    path = built_store if which == "built" else small_blocks
    raw = path.read_bytes()
    with h5py.File(path, "r") as f:
        names = checked_datasets(f)
        assert len(names) == 1 + 4 + 11 + 2
        for name in names:
            d = f[name]
            assert d.attrs["checksum_algorithm"] == "xxh3_64", name
            block = int(d.attrs["checksum_block_rows"])
            rows = d.shape[0]
            starts = range(0, max(rows, 1), block)
            if name.startswith("clips/") and h5py.check_string_dtype(d.dtype) is None:
                values = d[...].astype("<i8")
                data = [values[a : a + block].tobytes() for a in starts]
            elif h5py.check_string_dtype(d.dtype) is not None:
                values = d[...].tolist()  # the stored bytes of each string
                data = [b"".join(len(v).to_bytes(8, "little") + v for v in values[a : a + block])
                        for a in starts]
            else:
                offset = d.id.get_offset()
                row_bytes = d.dtype.itemsize * int(np.prod(d.shape[1:], dtype=np.int64))
                data = [raw[offset + a * row_bytes : offset + min(a + block, rows) * row_bytes]
                        for a in starts]
            expect = [xxhash.xxh3_64_intdigest(x) for x in data]
            assert d.attrs["checksums"].dtype == np.uint64
            assert d.attrs["checksums"].tolist() == expect, name
        if which == "built":  # about 1 MiB per block: a power of two rows
            assert int(f["waveform"].attrs["checksum_block_rows"]) == 1 << 19
            assert int(f["targets/mfcc"].attrs["checksum_block_rows"]) == 1 << 14
            assert int(f["clips/id"].attrs["checksum_block_rows"]) == 4096
        else:
            assert int(f["waveform"].attrs["checksum_block_rows"]) == 2048
            assert int(f["targets/mfcc"].attrs["checksum_block_rows"]) == 64
            assert len(f["waveform"].attrs["checksums"]) == -(-f["waveform"].shape[0] // 2048)


def test_a_sound_store_passes_both_checks(built_store: Path, small_blocks: Path) -> None:
    assert verify(built_store) == []
    assert verify(built_store, quick=True) == []
    assert verify(small_blocks) == []
    # Reassembling with other block sizes changes only the checksum attributes.
    a, b = open_store(built_store), open_store(small_blocks)
    assert np.array_equal(a.waveform, b.waveform)
    assert all(np.array_equal(a.targets[n], b.targets[n]) for n in a.targets)


# --------------------------------------------------------------------------- damage found


def test_the_reported_faults_are_found(store_copy: Path) -> None:
    """The faults of the issue: 64 random bytes in /waveform, one flipped low bit in a
    target value, two swapped mfcc rows. Quick verify cannot see the first and the last;
    the full verify names each damaged array."""
    overwrite(store_copy, "waveform", 1000)
    swap_rows(store_copy, "targets/mfcc", 100, 900)
    assert verify(store_copy, quick=True) == []
    flip_bit(store_copy, "targets/chroma", 500)
    problems = verify(store_copy)
    assert checksum_lines(problems) == [
        f"/waveform: rows 0-182393 {MISMATCH}",
        f"/targets/chroma: rows 0-1136 {MISMATCH}",
        f"/targets/mfcc: rows 0-1136 {MISMATCH}",
    ]
    assert f"/waveform: rows 0-182393 {MISMATCH} (clips tone_a4 to clicks)" in problems


CASES = [
    ("waveform", "flip_bit", (5000,)),
    ("waveform", "overwrite", (5000,)),
    ("waveform", "overwrite", (2040,)),  # across the boundary of blocks 0 and 1
    ("waveform", "swap_rows", (100, 5000)),  # rows of two blocks
    ("targets/mfcc", "flip_bit", (70,)),
    ("targets/mfcc", "overwrite", (200,)),
    ("targets/mfcc", "swap_rows", (10, 11)),  # rows of one block
    ("targets/tempo", "flip_bit", (3,)),  # a clip-rate target
    ("targets/tempo", "overwrite", (0,)),
    ("targets/tempo", "swap_rows", (0, 7)),
    ("clips/n_samples", "flip_bit", (3,)),
    ("clips/n_samples", "overwrite", (0,)),
    ("clips/n_samples", "swap_rows", (1, 6)),
]
FAULTS: dict[str, Callable[..., set[int]]] = {
    "flip_bit": flip_bit, "overwrite": overwrite, "swap_rows": swap_rows}


@pytest.mark.parametrize(("name", "fault", "rows"), CASES,
                         ids=[f"{n}-{f}-{'-'.join(map(str, r))}" for n, f, r in CASES])
def test_full_verify_names_the_damaged_array_and_blocks(blocks_copy: Path, name: str,
                                                        fault: str, rows: tuple[int, ...]
                                                        ) -> None:
    touched = FAULTS[fault](blocks_copy, name, *rows)
    problems = verify(blocks_copy)
    assert checksum_lines(problems) == expected_lines(blocks_copy, name, touched)


def test_mismatches_name_the_clips_of_the_block(blocks_copy: Path) -> None:
    s = open_store(blocks_copy)
    assert s.clips["sample_offset"][2:4].tolist() == [35794, 59853]  # noise_1, chord_cmaj
    assert s.clips["frame_offset"][6] == 815  # chord_amin
    del s
    flip_bit(blocks_copy, "waveform", 59863)  # block 29: samples 59392-61439
    flip_bit(blocks_copy, "targets/onset", 815)  # 2-byte rows: one block of 2048 rows
    flip_bit(blocks_copy, "clips/n_frames", 7)  # 2 rows per column block
    assert [p for p in verify(blocks_copy) if MISMATCH in p] == [
        f"/clips/n_frames: rows 6-7 {MISMATCH} (clips chord_amin to clicks)",
        f"/waveform: rows 59392-61439 {MISMATCH} (clips noise_1 to chord_cmaj)",
        f"/targets/onset: rows 0-1136 {MISMATCH} (clips tone_a4 to clicks)",
    ]


def test_a_flipped_bit_in_a_string_column_is_found(blocks_copy: Path) -> None:
    """The strings of a column live in HDF5's heap: flip a bit of one sha1 there."""
    sha1 = open_store(blocks_copy).clips["sha1"][5].encode()
    raw = blocks_copy.read_bytes()
    assert raw.count(sha1) == 1
    at = raw.index(sha1)
    with open(blocks_copy, "r+b") as fh:
        fh.seek(at)
        fh.write(bytes([sha1[0] ^ 1]))
    assert open_store(blocks_copy).clips["sha1"][5] != sha1.decode()
    assert verify(blocks_copy, quick=True) == []
    assert verify(blocks_copy) == [
        f"/clips/sha1: rows 4-5 {MISMATCH} (clips noise_2 to tone_22k)"]


def test_many_damaged_blocks_are_summarised(blocks_copy: Path) -> None:
    offset, _, rows, _ = layout(blocks_copy, "waveform")
    with open(blocks_copy, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.random.default_rng(1).bytes(2 * rows))  # every block differs
    lines = [p for p in verify(blocks_copy) if p.startswith("/waveform")]
    n_blocks = -(-rows // 2048)
    assert [ln.split(" (clip")[0] for ln in lines[:5]] == [
        f"/waveform: rows {b * 2048}-{b * 2048 + 2047} {MISMATCH}" for b in range(5)]
    assert lines[5:] == [f"/waveform: and {n_blocks - 5} more blocks differ from their checksums"]


# --------------------------------------------------------------------------- quick, none


def test_quick_verify_does_not_read_the_checksums(store_copy: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with h5py.File(store_copy, "r+") as f:
        names = checked_datasets(f)
        for name in names:
            f[name].attrs.modify("checksums", np.zeros_like(f[name].attrs["checksums"]))
    assert verify(store_copy, quick=True) == []
    full = verify(store_copy)
    assert sorted(p.split(":")[0] for p in full) == sorted(f"/{n}" for n in names)

    def no_hashing(data: object) -> int:
        raise AssertionError("quick verify computed a checksum")

    monkeypatch.setattr(featurestore.store, "_digest", no_hashing)
    monkeypatch.setattr(featurestore.store, "_column_digests", no_hashing)
    assert verify(store_copy, quick=True) == []


def test_a_store_without_checksums_is_reported(store_copy: Path) -> None:
    with h5py.File(store_copy, "r+") as f:
        del f["targets/onset"].attrs["checksums"]
    assert verify(store_copy) == ["/targets/onset: no checksums"]
    with h5py.File(store_copy, "r+") as f:
        for name in checked_datasets(f):
            for key in ("checksums", "checksum_block_rows", "checksum_algorithm"):
                if key in f[name].attrs:
                    del f[name].attrs[key]
    assert verify(store_copy) == [
        "no checksums: the store was written without them (by an older featurestore), so "
        "only the quick checks were made; rebuild it to check every byte"]
    assert verify(store_copy, quick=True) == []
    # Still a store: it opens, and a build can copy it (the copy gets checksums).
    out = store_copy.with_name("again.h5")
    assemble(out, [store_copy], attrs=ATTRS)
    assert verify(out) == []


def test_damaged_checksum_tables_are_reported(store_copy: Path) -> None:
    with h5py.File(store_copy, "r+") as f:
        f["waveform"].attrs["checksums"] = np.zeros(3, dtype=np.uint64)
        f["targets/mfcc"].attrs["checksum_algorithm"] = "crc32"
    assert verify(store_copy) == [
        "/waveform: 3 checksums, expected 1 (blocks of 524288 rows)",
        "/targets/mfcc: unknown checksum algorithm 'crc32'",
    ]


def test_assemble_refuses_a_damaged_shard(blocks_copy: Path, tmp_path: Path) -> None:
    flip_bit(blocks_copy, "targets/mfcc", 70)
    out = tmp_path / "out.h5"
    with pytest.raises(FeatureStoreError) as e:
        assemble(out, [blocks_copy], attrs=ATTRS)
    assert str(e.value) == (
        f"{blocks_copy}: /targets/mfcc rows 64-127 differ from their checksum: the file is "
        "damaged (remove it and run the build again)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.h5"]


# --------------------------------------------------------------------------- command line


def test_cli_verify_full_and_quick(store_copy: Path) -> None:
    overwrite(store_copy, "waveform", 1000)
    quick = CliRunner().invoke(main, ["verify", "--quick", str(store_copy)])
    assert quick.exit_code == 0
    assert quick.stdout == f"{store_copy}: ok\n"
    full = CliRunner().invoke(main, ["verify", str(store_copy)])
    assert full.exit_code == 1
    assert full.stdout == ""
    assert full.stderr.splitlines() == [
        f"{store_copy}: /waveform: rows 0-182393 {MISMATCH} (clips tone_a4 to clicks)"]


def test_cli_verify_names_a_missing_store_once(built_store: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.h5"
    result = CliRunner().invoke(main, ["verify", str(missing), str(built_store)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"{missing}: no such store"]
    assert result.stdout == f"{built_store}: ok\n"
    assert verify(missing) == ["no such store"]


# --------------------------------------------------------------------------- sets of files


@pytest.fixture(scope="module")
def sets(built_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sets of two files, ``A/set-00k.h5`` (set id ``A``) and ``B/set-00k.h5`` (``B``),
    and ``legacy/set-00k.h5`` written without a set id, each file the built store."""
    root = tmp_path_factory.mktemp("sets")
    for set_id in ("A", "B", "legacy"):
        (root / set_id).mkdir()
        for k in range(2):
            attrs = {**ATTRS, "files": json.dumps([k, 2])}
            if set_id != "legacy":
                attrs["set_id"] = set_id
            assemble(root / set_id / f"set-{k:03d}.h5", [built_store], attrs=attrs)
    return root


def take(sets: Path, folder: Path, *names: str) -> None:
    """Copy ``<set>/<file>`` names (``A/set-000.h5``) into ``folder``, keeping file names."""
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copyfile(sets / name, folder / Path(name).name)


def set_error(paths: str | list[Path]) -> str:
    with pytest.raises(FeatureStoreError) as e:
        open_stores(paths)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("set_id", ["A", "legacy"])
def test_a_whole_set_opens(sets: Path, set_id: str) -> None:
    stores = open_stores(str(sets / set_id / "set-*.h5"))
    assert [s.path.name for s in stores] == ["set-000.h5", "set-001.h5"]
    assert [s.attrs.get("set_id") for s in stores] == ([set_id] * 2 if set_id == "A"
                                                       else [None, None])
    assert all(verify(s.path) == [] for s in stores)


@pytest.mark.parametrize("set_id", ["A", "legacy"])
def test_an_incomplete_set_is_refused(sets: Path, tmp_path: Path, set_id: str) -> None:
    take(sets, tmp_path, f"{set_id}/set-000.h5")
    first, second = tmp_path / "set-000.h5", tmp_path / "set-001.h5"
    message = (f"{second}: missing: file 2 of 2 of the set of {first}; the set is incomplete "
               "(a build stopped while writing it? run it again)")
    assert set_error(str(tmp_path / "set-*.h5")) == message
    assert set_error([first]) == message
    assert verify(first) == [message]
    result = CliRunner().invoke(main, ["verify", str(first)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"{first}: {message}"]


def test_the_trainer_refuses_an_incomplete_set(sets: Path, tmp_path: Path) -> None:
    from trainer.data import CropDataset

    take(sets, tmp_path, "A/set-001.h5")
    with pytest.raises(FeatureStoreError, match=re.escape(
            f"{tmp_path / 'set-000.h5'}: missing: file 1 of 2 of the set of "
            f"{tmp_path / 'set-001.h5'}")):
        CropDataset(str(tmp_path / "set-*.h5"), ["mfcc"], 50)


def test_a_file_of_another_set_is_refused(sets: Path, tmp_path: Path) -> None:
    """A build stopped after rewriting file 000 leaves the old set's file 001 behind."""
    take(sets, tmp_path, "A/set-000.h5", "B/set-001.h5")
    first, second = tmp_path / "set-000.h5", tmp_path / "set-001.h5"
    message = (f"{second}: belongs to another set of store files than {first} (set id B, not "
               "set id A); rebuild the set or remove the stale file")
    assert set_error(str(tmp_path / "set-*.h5")) == message
    assert verify(second) == [message]
    assert verify(first) == [message]
    # A file written without a set id does not belong to a set with one either.
    shutil.copyfile(sets / "legacy" / "set-001.h5", second)
    assert set_error(str(tmp_path / "set-*.h5")) == (
        f"{second}: belongs to another set of store files than {first} (no set id, not set "
        "id A); rebuild the set or remove the stale file")


def test_a_file_given_twice_or_copied_is_refused(sets: Path, tmp_path: Path) -> None:
    first, second = sets / "A" / "set-000.h5", sets / "A" / "set-001.h5"
    assert set_error([first, second, first]) == f"{first}: given twice"
    take(sets, tmp_path, "A/set-000.h5")
    copy = tmp_path / "set-000.h5"
    assert set_error([first, second, copy]) == (
        f"{copy}: duplicates {first} (both are file 1 of 2 of one set); use one of them")


def test_single_file_stores_are_not_sets(built_store: Path, store_copy: Path) -> None:
    assert "files" not in open_store(built_store).attrs
    assert [s.path for s in open_stores([built_store, store_copy])] == [built_store, store_copy]


def test_adding_targets_keeps_the_set_id(sets: Path, built_store: Path, tmp_path: Path) -> None:
    take(sets, tmp_path, "A/set-000.h5", "A/set-001.h5")
    member = tmp_path / "set-000.h5"
    assemble(member, [built_store], base=member, attrs={**ATTRS, "files": json.dumps([0, 2])})
    assert open_store(member).attrs["set_id"] == "A"
    assert len(open_stores(str(tmp_path / "set-*.h5"))) == 2
    with pytest.raises(FeatureStoreError, match=re.escape(
            f"{member}: attribute 'files' must be JSON [k, K] with 0 <= k < K, got '[2, 2]'")):
        assemble(member, [built_store], attrs={**ATTRS, "files": "[2, 2]", "set_id": "A"})


def test_set_id_for_is_a_stable_content_id() -> None:
    ident = {"manifest": "abc", "groups": [[0, 2], [2, 4]]}
    assert featurestore.store.set_id_for(ident) == featurestore.store.set_id_for(dict(ident))
    assert re.fullmatch(r"[0-9a-f]{32}", featurestore.store.set_id_for(ident))
    assert featurestore.store.set_id_for(ident) != featurestore.store.set_id_for(
        {**ident, "groups": [[0, 3], [3, 4]]})


# --------------------------------------------------------------------------- a full disk


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` free bytes with a file ``filler``."""
    st = os.statvfs(disk)
    with open(disk / "filler", "wb") as fh:
        fh.write(bytes(max(0, st.f_bavail * st.f_frsize - leave)))


DISK_FULL = re.compile(
    r"(?P<path>.+): disk full while writing (?P<what>the store|a shard) "
    r"\(\d+(\.\d)? [KM]?B needed(, \d+(\.\d)? [KM]?B free in (?P<folder>.+))?\); (?P<kept>.+)")


@pytest.mark.parametrize("early", [True, False], ids=["refused-early", "write-fails"])
def test_assemble_over_a_store_on_a_full_disk(built_store: Path, tmp_path: Path, early: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Room for the store, not for a second copy: one line, no temporary file, the store
    as it was. ``write-fails`` skips the free-space check, so that the disk fills during
    the writes themselves."""
    if not early:
        monkeypatch.setattr(featurestore.store, "_free_bytes", lambda folder: None)
    size = built_store.stat().st_size
    with tmpfs(tmp_path / "disk", size + size // 2) as disk:
        out = disk / "main.h5"
        shutil.copyfile(built_store, out)
        with pytest.raises(FeatureStoreError) as e:
            assemble(out, [built_store], attrs=ATTRS)
        m = DISK_FULL.fullmatch(str(e.value))
        assert m is not None, str(e.value)
        assert (m["path"], m["what"], m["kept"]) == (
            str(out), "the store", "the previous store is unchanged")
        assert m["folder"] == (str(disk) if early else None)
        assert sorted(p.name for p in disk.iterdir()) == ["main.h5"]
        assert filecmp.cmp(out, built_store, shallow=False)
        assert verify(out) == []


@pytest.mark.parametrize("early", [True, False], ids=["refused-early", "write-fails"])
def test_write_shard_on_a_full_disk(built_store: Path, tmp_path: Path, early: bool,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if not early:
        monkeypatch.setattr(featurestore.store, "_free_bytes", lambda folder: None)
    result, specs = partition_of(open_store(built_store), list(range(8)), [])
    with tmpfs(tmp_path / "disk", 256 * 1024) as disk:
        shard = disk / "part-00000.h5"
        with pytest.raises(FeatureStoreError) as e:
            write_shard(shard, result, specs, sample_rate=SR, hop=HOP, attrs={})
        m = DISK_FULL.fullmatch(str(e.value))
        assert m is not None, str(e.value)
        assert (m["path"], m["what"]) == (str(shard), "a shard")
        assert m["kept"] == ("the store is unchanged and finished shards are kept: free some "
                             "space and run the same command to resume")
        assert list(disk.iterdir()) == []


def assemble_script(setup: str) -> str:
    """A script assembling the shard ``argv[2]`` into ``argv[1]`` after ``setup``; a
    FeatureStoreError is printed as its one line and exits with status 1."""
    return f"""
import resource, sys
import featurestore.store as fs
{setup}
try:
    fs.assemble(sys.argv[1], [sys.argv[2]], attrs={{"sample_rate": 16000, "hop": 160,
                                                    "source": "test"}})
except fs.FeatureStoreError as e:
    print(f"error: {{e}}", file=sys.stderr)
    sys.exit(1)
"""


# no early refusal: the writes themselves fail
ASSEMBLE = assemble_script("fs._free_bytes = lambda folder: None")


def test_a_disk_filling_at_any_point_ends_in_one_line(built_store: Path,
                                                      tmp_path: Path) -> None:
    """HDF5 used to meet the full disk itself: two tracebacks, then a segmentation fault
    at exit (rc 139; with 9000 bytes left, while closing a dataset). Each free-space level
    stops the writing at another point: nothing left, the file's first pages, mid-array."""
    size = built_store.stat().st_size
    with tmpfs(tmp_path / "disk", 2 * size) as disk:
        for leave in (0, 4096, 9000, 65536, size // 2):
            fill(disk, leave)
            out = disk / "main.h5"
            run = subprocess.run([sys.executable, "-c", ASSEMBLE, str(out), str(built_store)],
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 1, (leave, run.returncode, run.stderr[-2000:])
            (line,) = run.stderr.splitlines()
            assert line.startswith(f"error: {out}: disk full while writing the store ("), line
            assert line.endswith("; no store was written"), line
            assert sorted(p.name for p in disk.iterdir()) == ["filler"], leave
            (disk / "filler").unlink()


FILE_SIZE_LIMIT = assemble_script(
    "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))")


def test_a_file_size_limit_ends_in_one_line(built_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "main.h5"
    run = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(out), str(built_store)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    (line,) = run.stderr.splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(out))}: file size limit reached while writing "
                        r"the store \(\d+\.\d KB needed\); no store was written", line), line
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- file names


def test_file_names_that_are_not_utf8_are_kept(built_store: Path, tmp_path: Path) -> None:
    bad = "/music/bad\udcff.wav"  # the bytes b"/music/bad\xff.wav", as Python reads them
    errors = [(bad, f"cannot decode: Error opening '{bad}': Format not recognised."),
              ("/music/caf\u00e9.wav", "too short: 0.100 s < 0.5 s minimum")]
    result, specs = partition_of(open_store(built_store), [0, 1], errors)
    shard = tmp_path / "part-00000.h5"
    write_shard(shard, result, specs, sample_rate=SR, hop=HOP, attrs={})
    assert open_store(shard).errors == errors
    assert verify(shard) == []
    with h5py.File(shard, "r") as f:  # the original bytes, as UTF-8 strings otherwise
        assert f["errors/path"][...].tolist() == [b"/music/bad\xff.wav",
                                                  "/music/caf\u00e9.wav".encode()]
        assert h5py.check_string_dtype(f["errors/path"].dtype).encoding == "utf-8"
    out = tmp_path / "store.h5"
    assemble(out, [shard], attrs=ATTRS)
    assert open_store(out).errors == errors
    assert verify(out) == []
    assert os.fsencode(open_store(out).errors[0][0]) == b"/music/bad\xff.wav"


def test_error_rows_of_older_stores_still_read(store_copy: Path) -> None:
    """Older stores wrote error rows as UTF-8 strings from ``str`` values."""
    with h5py.File(store_copy, "r+") as f:
        for col, value in (("path", "/music/caf\u00e9.wav"), ("reason", "too short")):
            del f["errors"][col]
            f["errors"].create_dataset(col, data=np.array([value], dtype=object),
                                       dtype=h5py.string_dtype())
    assert open_store(store_copy).errors == [("/music/caf\u00e9.wav", "too short")]
    assert verify(store_copy, quick=True) == []
