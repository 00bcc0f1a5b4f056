"""The trainer's data path: aligned crops, normalisation, several store files, caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stores import build_store, tone_corpus

import featurestore
from trainer.data import CropDataset, DataError, Prefetcher, StagingRing

TARGETS = "mfcc,chroma,onset,tempo"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return build_store(tone_corpus(root / "audio", n_clips=12, seconds=2.5), root / "t.h5",
                       TARGETS)


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("data2")
    a = build_store(tone_corpus(root / "a", n_clips=6, seconds=2.0, seed=1), root / "c-000.h5",
                    TARGETS)
    b = build_store(tone_corpus(root / "b", n_clips=6, seconds=3.0, seed=2), root / "c-001.h5",
                    TARGETS)
    return [a, b]


def test_crops_are_aligned_across_waveform_and_every_target(store: Path) -> None:
    data = CropDataset(store, ["mfcc", "chroma", "onset", "tempo"], crop_frames=50)
    s = featurestore.open_store(store)
    rng = np.random.default_rng(0)
    clips, starts = data.draw(rng, 16)
    raw = data.gather(clips, starts)
    assert raw["waveform"].shape == (16, 50 * 160)
    assert raw["mfcc"].shape == (16, 50, 60)
    assert raw["tempo"].shape == (16, 1)
    for b, (c, f) in enumerate(zip(clips, starts, strict=True)):
        i = int(data.clip_local[c])
        assert 0 <= f <= s.clips["n_frames"][i] - 50
        wave = s.waveform_of(i)[f * 160 : (f + 50) * 160]
        np.testing.assert_array_equal(raw["waveform"][b], wave)
        for name in ("mfcc", "chroma", "onset"):
            np.testing.assert_array_equal(raw[name][b], s.frames_of(name, i)[f : f + 50])
        np.testing.assert_array_equal(raw["tempo"][b], s.frames_of("tempo", i)[0])


def test_batches_are_normalised_with_the_store_statistics(store: Path) -> None:
    data = CropDataset(store, ["mfcc", "chroma"], crop_frames=40)
    s = featurestore.open_store(store)
    rng = np.random.default_rng(3)
    clips, starts = data.draw(rng, 8)
    batch = data.to_batch(data.gather(clips, starts), clips)
    raw = data.gather(clips, starts)
    expect = (raw["mfcc"].astype(np.float32) - s.stats["mfcc"].mean) / s.stats["mfcc"].std
    np.testing.assert_allclose(batch.targets["mfcc"].numpy(), expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch.wave.numpy(), raw["waveform"] / 32768.0, rtol=0, atol=0)
    assert batch.wave.dtype == torch.float32


def test_a_batch_is_a_pure_function_of_seed_and_step(store: Path) -> None:
    data = CropDataset(store, ["mfcc"], crop_frames=30)
    a, b = data.batch(5, 17, 8), data.batch(5, 17, 8)
    c = data.batch(5, 18, 8)
    assert torch.equal(a.wave, b.wave) and torch.equal(a.targets["mfcc"], b.targets["mfcc"])
    assert not torch.equal(a.wave, c.wave)


def test_pairs_share_a_clip_and_differ_in_position(store: Path) -> None:
    data = CropDataset(store, ["mfcc"], crop_frames=30, pairs=True)
    clips, starts = data.draw(np.random.default_rng(1), 32)
    assert (clips[0::2] == clips[1::2]).all()
    assert (starts[0::2] != starts[1::2]).any()


def test_every_crop_position_is_equally_likely(store: Path) -> None:
    data = CropDataset(store, ["onset"], crop_frames=100)
    clips, _ = data.draw(np.random.default_rng(2), 60000)
    counts = np.bincount(clips, minlength=data.n_clips)
    positions = data.clip_frames - 100 + 1
    expect = 60000 * positions / positions.sum()
    assert np.all(np.abs(counts - expect) < 5 * np.sqrt(expect))


def test_several_store_files_open_as_one_data_set(two_stores: list[Path]) -> None:
    pattern = str(two_stores[0].parent / "c-*.h5")
    data = CropDataset(pattern, ["mfcc", "chroma"], crop_frames=100)
    assert data.n_clips == 12
    clips, starts = data.draw(np.random.default_rng(4), 64)
    assert set(data.clip_store[clips]) == {0, 1}
    raw = data.gather(clips, starts)
    stores = [featurestore.open_store(p) for p in two_stores]
    for b in (0, 63):
        s = stores[data.clip_store[clips[b]]]
        i = int(data.clip_local[clips[b]])
        np.testing.assert_array_equal(raw["chroma"][b],
                                      s.frames_of("chroma", i)[starts[b] : starts[b] + 100])
    both = featurestore.store.combined_stats(stores, "mfcc")
    np.testing.assert_allclose(data.mean["mfcc"].numpy(), both.mean, rtol=1e-6)


@pytest.mark.parametrize("cache", ["ram", "device"])
def test_caches_serve_the_same_batches_as_the_memory_maps(store: Path, cache: str) -> None:
    plain = CropDataset(store, ["mfcc", "tempo"], crop_frames=64)
    cached = CropDataset(store, ["mfcc", "tempo"], crop_frames=64, cache=cache)
    a, b = plain.batch(0, 3, 8), cached.batch(0, 3, 8)
    assert torch.equal(a.wave, b.wave)
    assert torch.equal(a.targets["mfcc"], b.targets["mfcc"])
    assert torch.equal(a.targets["tempo"], b.targets["tempo"])


def test_prefetcher_delivers_the_batches_in_step_order(store: Path) -> None:
    data = CropDataset(store, ["chroma"], crop_frames=20)
    feeder = Prefetcher(data, seed=9, start_step=5, batch_size=4, depth=2)
    try:  # 8 batches kept through a ring of 4 buffers: none is overwritten by a later one
        got = [feeder.get(step) for step in range(5, 13)]
    finally:
        feeder.close()
    for step, b in zip(range(5, 13), got, strict=True):
        expect = data.batch(9, step, 4)
        assert torch.equal(b.wave, expect.wave)
        assert torch.equal(b.targets["chroma"], expect.targets["chroma"])
    assert feeder.wait_seconds >= 0.0


def test_gathering_into_buffers_gives_the_bytes_of_the_fancy_index(
        two_stores: list[Path]) -> None:
    data = CropDataset([str(p) for p in two_stores], ["mfcc", "chroma", "tempo"],
                       crop_frames=60)
    clips, starts = data.draw(np.random.default_rng(5), 24)
    assert set(data.clip_store[clips]) == {0, 1}
    layout = data.raw_layout(24)
    out = {name: np.full(shape, 7, dtype=dtype) for name, (shape, dtype) in layout.items()}
    filled = data.gather(clips, starts, out=out)
    assert filled is out
    expect = data.gather(clips, starts)
    assert set(expect) == set(out) == {"waveform", "mfcc", "chroma", "tempo"}
    for name, x in expect.items():
        assert (x.shape, x.dtype) == layout[name], name
        np.testing.assert_array_equal(out[name], x, err_msg=name)


def test_a_staging_ring_hands_out_its_buffers_in_turn(store: Path) -> None:
    data = CropDataset(store, ["mfcc", "tempo"], crop_frames=30)
    ring = StagingRing(data.raw_layout(6), data.device, slots=2)
    seen = []
    for _ in range(4):
        buffers = ring.take()
        seen.append(buffers["waveform"].data_ptr())
        ring.queued()
        assert buffers["mfcc"].shape == (6, 30, 60) and buffers["mfcc"].dtype == torch.float16
    assert seen[0] == seen[2] != seen[1] == seen[3]
    a = data.batch(2, 11, 6, ring=ring)
    b = data.batch(2, 12, 6, ring=ring)
    c = data.batch(2, 13, 6, ring=ring)  # reuses a's buffers: a must not change
    for step, got in zip((11, 12, 13), (a, b, c), strict=True):
        expect = data.batch(2, step, 6)
        assert torch.equal(got.wave, expect.wave)
        assert torch.equal(got.targets["mfcc"], expect.targets["mfcc"])
        assert torch.equal(got.targets["tempo"], expect.targets["tempo"])
    with pytest.raises(ValueError, match="slots must be >= 1"):
        StagingRing(data.raw_layout(6), data.device, slots=0)


def test_a_missing_target_names_the_store_and_what_it_has(store: Path) -> None:
    with pytest.raises(DataError, match=r"t\.h5: has no target cqt; it has .*mfcc"):
        CropDataset(store, ["mfcc", "cqt"], crop_frames=10)


def test_a_crop_longer_than_the_shortest_clip_is_an_error(store: Path) -> None:
    with pytest.raises(DataError, match=r"crop of 3 s is longer than clip"):
        CropDataset(store, ["mfcc"], crop_frames=300)


def test_a_split_selects_its_clips(store: Path) -> None:
    data = CropDataset(store, ["mfcc"], crop_frames=10, splits=["train"])
    s = featurestore.open_store(store)
    assert data.n_clips == int((s.clips["split"] == "train").sum()) == 12
