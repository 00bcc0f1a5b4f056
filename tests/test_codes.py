"""8-bit codes: the quantised store option (``featurestore build --quantize``), from the
codec to a verified store, its reader and the trainer's batches."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import Corpus

from featurestore import FeatureStoreError, build, open_store, verify
from featurestore.store import CODE_DTYPE, decode_codes, encode_codes
from trainer.data import CropDataset, StagingRing

TARGETS = "mfcc,chroma,onset,tempo"  # three frame-rate targets and a clip-rate one


def build_pool(corpus: Corpus, out: Path, **kw: object) -> Path:
    with cf.ThreadPoolExecutor(2) as pool:
        build(str(corpus.csv), out, executor=pool, partition_size=3, progress=False, **kw)
    return out


@pytest.fixture(scope="module")
def stores(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The main corpus built twice: float16 (as declared) and as 8-bit codes."""
    folder = tmp_path_factory.mktemp("codes")
    plain = build_pool(corpus, folder / "plain.h5", targets=TARGETS)
    coded = build_pool(corpus, folder / "coded.h5", targets=TARGETS, quantize=True)
    return plain, coded


# --------------------------------------------------------------------------- codec


def test_codes_span_each_dimension_from_0_to_255() -> None:
    x = np.array([[-2.0, 10.0], [0.0, 10.5], [3.1, 11.0]], dtype=np.float32)
    codes, affine = encode_codes(x)
    assert codes.dtype == np.uint8 and affine.dtype == np.float32
    np.testing.assert_array_equal(codes[[0, 2]], [[0, 0], [255, 255]])
    np.testing.assert_allclose(affine, [[-2.0, 10.0], [5.1 / 255, 1.0 / 255]], rtol=1e-6)
    np.testing.assert_allclose(decode_codes(codes, affine)[[0, 2]], x[[0, 2]], rtol=1e-6)


def test_decoding_is_within_half_a_step() -> None:
    x = np.random.default_rng(0).normal(-5.0, 3.0, size=(1000, 40)).astype(np.float32)
    codes, affine = encode_codes(x)
    error = np.abs(decode_codes(codes, affine) - x)
    assert (error <= affine[1] / 2 * (1 + 1e-4) + 1e-6).all()


def test_a_constant_dimension_decodes_exactly() -> None:
    x = np.full((7, 2), -3.25, dtype=np.float32)
    codes, affine = encode_codes(x)
    np.testing.assert_array_equal(codes, 0)
    np.testing.assert_array_equal(affine[1], 1.0)
    np.testing.assert_array_equal(decode_codes(codes, affine), x)


def test_one_affine_per_row_decodes_rows_of_several_clips() -> None:
    a, b = np.arange(6.0).reshape(3, 2), -np.arange(4.0).reshape(2, 2)
    (ca, fa), (cb, fb) = encode_codes(a), encode_codes(b)
    rows = decode_codes(np.concatenate([ca, cb]), np.stack([fa] * 3 + [fb] * 2))
    np.testing.assert_array_equal(rows, np.concatenate([decode_codes(ca, fa),
                                                        decode_codes(cb, fb)]))


def test_encoding_refuses_a_vector() -> None:
    with pytest.raises(ValueError, match=r"shape \(n, dim\)"):
        encode_codes(np.zeros(5))


# --------------------------------------------------------------------------- store


def test_a_quantised_store_holds_codes_and_verifies(stores: tuple[Path, Path]) -> None:
    plain, coded = (open_store(p) for p in stores)
    assert verify(coded.path) == []
    for name in ("mfcc", "chroma", "onset"):
        assert coded.specs[name].dtype == CODE_DTYPE
        assert coded.targets[name].dtype == np.uint8
        assert coded.affine[name].shape == (coded.n_clips, 2, coded.specs[name].dim)
    # Clip-rate targets keep their declared dtype: one row per clip costs nothing.
    assert coded.specs["tempo"].dtype == plain.specs["tempo"].dtype == "float16"
    assert "tempo" not in coded.affine
    np.testing.assert_array_equal(coded.waveform, plain.waveform)


def test_decoded_values_are_the_float16_values_within_half_a_step(
        stores: tuple[Path, Path]) -> None:
    plain, coded = (open_store(p) for p in stores)
    for name in ("mfcc", "chroma", "onset"):
        for i in range(coded.n_clips):
            want = np.asarray(plain.frames_of(name, i), dtype=np.float32)
            got = coded.frames_of(name, i)
            offset, step = coded.affine[name][i]
            assert got.dtype == np.float32 and got.shape == want.shape
            # half a code step, plus float16's rounding of the reference and float32's of
            # the decoding (relative to the offset)
            bound = step / 2 + np.abs(want) * 2**-11 + np.abs(offset) * 2**-21 + 1e-6
            assert (np.abs(got - want) <= bound).all(), name


def test_statistics_are_of_the_decoded_values(stores: tuple[Path, Path]) -> None:
    coded = open_store(stores[1])
    for name in ("mfcc", "chroma", "onset"):
        values = np.concatenate([coded.frames_of(name, i) for i in range(coded.n_clips)])
        np.testing.assert_allclose(coded.stats[name].mean, values.mean(axis=0, dtype=np.float64),
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(coded.stats[name].std, values.std(axis=0, dtype=np.float64),
                                   rtol=1e-5, atol=1e-6)


def test_codes_take_about_half_the_bytes_of_float16(stores: tuple[Path, Path]) -> None:
    plain, coded = (open_store(p).summary()["targets"] for p in stores)
    for name in ("mfcc", "chroma"):
        assert coded[name]["dtype"] == "uint8"
        # codes: half of float16's bytes; plus 2 x dim float32 per clip (8 short clips here)
        assert coded[name]["bytes"] < 0.75 * plain[name]["bytes"]


def test_verify_names_a_damaged_affine_table(stores: tuple[Path, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(stores[1].read_bytes())
    with h5py.File(damaged, "r") as f:
        offset = f["affine/chroma"].id.get_offset()
    with open(damaged, "r+b") as fh:
        fh.seek(offset + 2 * 12 * 4)  # clip 1's row: 2 x 12 float32 (chroma has 12 dims)
        fh.write(b"\x00\x00\x80\x7f")  # its first offset becomes +inf
    problems = verify(damaged)
    assert any(p.startswith("/affine/chroma: rows") for p in problems), problems


def test_adding_a_target_keeps_the_store_quantised(corpus: Corpus, stores: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    out = tmp_path / "coded.h5"
    out.write_bytes(stores[1].read_bytes())
    build_pool(corpus, out, targets=TARGETS + ",contrast")
    s = open_store(out)
    assert s.specs["contrast"].dtype == CODE_DTYPE and "contrast" in s.affine
    assert verify(out) == []


def test_a_float16_build_over_a_quantised_store_is_refused(
        corpus: Corpus, stores: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "coded.h5"
    out.write_bytes(stores[1].read_bytes())
    with pytest.raises(FeatureStoreError, match=r"target '\w+' is stored as uint8, this "
                                                r"build would store float16 \(without "
                                                r"--quantize\)"):
        build_pool(corpus, out, targets=TARGETS, quantize=False)


# --------------------------------------------------------------------------- trainer


def test_batches_of_a_quantised_store_match_the_float16_ones(stores: tuple[Path, Path]) -> None:
    plain = CropDataset(stores[0], ["mfcc", "chroma"], crop_frames=50)
    coded = CropDataset(stores[1], ["mfcc", "chroma"], crop_frames=50,
                        normalise_like=plain)
    a, b = plain.batch(seed=3, step=0, batch_size=6), coded.batch(seed=3, step=0, batch_size=6)
    torch.testing.assert_close(a.wave, b.wave, rtol=0, atol=0)
    clips = coded.clip_local[b.clip.numpy()]
    for name in ("mfcc", "chroma"):
        offset, step = torch.from_numpy(open_store(stores[1]).affine[name][clips]).unbind(1)
        raw = a.targets[name] * plain.std[name] + plain.mean[name]  # the float16 values
        error = step[:, None] / 2 + raw.abs() * 2**-11 + offset[:, None].abs() * 2**-21
        bound = error / plain.std[name] + 1e-4
        assert (b.targets[name] - a.targets[name]).abs().le(bound).all(), name


def test_a_quantised_store_gathers_into_staging_buffers_as_it_indexes(
        stores: tuple[Path, Path]) -> None:
    coded = CropDataset(stores[1], ["mfcc", "chroma"], crop_frames=50)
    ring = StagingRing(coded.raw_layout(6), coded.device, slots=1)
    assert coded.raw_layout(6)["mfcc/affine"] == ((6, 2, 60), np.dtype(np.float32))
    a, b = coded.batch(4, 1, 6), coded.batch(4, 1, 6, ring=ring)
    for name in ("mfcc", "chroma"):
        torch.testing.assert_close(b.targets[name], a.targets[name], rtol=0, atol=0)
