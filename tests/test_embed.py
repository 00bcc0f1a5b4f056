"""Frozen-encoder clip embeddings: shapes, pooling, crops, the sidecar cache, errors."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import tmpfs
from stores import TINY_PASE, build_store, tone_corpus
from torch import Tensor, nn

import featurestore
from trainer.data import clip_crops, crop_bounds
from trainer.embed import (
    EncoderEmbedder,
    batch_pieces,
    bucket_frames,
    cache_path,
    clip_embeddings,
    load_embedder,
    pool,
)
from trainer.encoder_file import save_encoder
from trainer.encoders import build_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Ten 2.37 s tones (237 frames: not a multiple of any crop used here), as a store
    with mfcc and, from the same audio, a store without it."""
    root = tmp_path_factory.mktemp("embed")
    source = tone_corpus(root / "audio", n_clips=10, seconds=2.37, seed=3)
    return {"mfcc": build_store(source, root / "tones.h5", "mfcc"),
            "onset": build_store(source, root / "onset.h5", "onset")}


def tiny(seed: int = 0) -> EncoderEmbedder:
    e = load_embedder("random:pase+", seed=seed, encoder_kwargs=TINY_PASE)
    assert isinstance(e, EncoderEmbedder)
    return e


class FrameLinear(nn.Module):
    """A frame-local encoder: each frame is a function of its own hop of samples only."""

    def __init__(self, hop: int = 160, dim: int = 8) -> None:
        super().__init__()
        self.hop, self.dim = hop, dim
        torch.manual_seed(0)
        self.proj = nn.Linear(hop, dim)

    def forward(self, wave: Tensor) -> Tensor:
        b, s = wave.shape
        return torch.tanh(self.proj(wave.reshape(b, s // self.hop, self.hop))).transpose(1, 2)


def counting(embedder: EncoderEmbedder) -> list[int]:
    """Count the encoder's forward calls into the returned list."""
    calls: list[int] = []
    embedder.encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def sha1_of(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_shapes_for_mean_and_mean_std(stores: dict[str, Path]) -> None:
    store = featurestore.open_store(stores["mfcc"])
    mean = clip_embeddings(tiny(), stores["mfcc"], pooling="mean", device="cpu",
                           crop_seconds=1.0, cache=False)
    both = clip_embeddings(tiny(), stores["mfcc"], pooling="mean+std", device="cpu",
                           crop_seconds=1.0, cache=False)
    assert mean.X.shape == (10, 32) and mean.X.dtype == np.float32
    assert both.X.shape == (10, 64) and both.X.dtype == np.float32
    np.testing.assert_allclose(both.X[:, :32], mean.X, rtol=1e-6, atol=1e-6)
    assert (both.X[:, 32:] >= 0).all() and np.isfinite(both.X).all()
    assert mean.ids == store.clips["id"].tolist()
    assert mean.labels == store.clips["label"].tolist()
    assert mean.splits == store.clips["split"].tolist()
    assert mean.groups == store.clips["group"].tolist()
    assert (mean.pooling, both.pooling) == ("mean", "mean+std")
    assert mean.key == both.key == tiny().key


def test_mfcc_stats_is_numpy_mean_and_std_of_the_mfcc_rows(stores: dict[str, Path]) -> None:
    store = featurestore.open_store(stores["mfcc"])
    got = clip_embeddings("mfcc-stats", stores["mfcc"], crop_seconds=0.3, cache=False)
    expect = np.stack([
        np.concatenate([x.mean(axis=0), x.std(axis=0)])
        for x in (np.asarray(store.frames_of("mfcc", i), dtype=np.float64)
                  for i in range(store.n_clips))
    ]).astype(np.float32)
    assert got.X.shape == (10, 120)
    np.testing.assert_array_equal(got.X, expect)
    mean = clip_embeddings("mfcc-stats", stores["mfcc"], pooling="mean", cache=False)
    np.testing.assert_array_equal(mean.X, expect[:, :60])


def test_crops_pooled_equal_the_whole_clip_for_a_frame_local_encoder(
        stores: dict[str, Path]) -> None:
    assert crop_bounds(237, 50) == [(0, 50), (50, 100), (100, 150), (150, 200), (200, 237)]
    assert crop_bounds(100, 50) == [(0, 50), (50, 100)]
    assert crop_bounds(3, 50) == [(0, 3)]
    store = featurestore.open_store(stores["mfcc"])
    n = int(store.clips["n_frames"][0])
    crops = clip_crops(store, 0, 50)  # the clip's whole frames, as float in [-1, 1)
    assert [len(c) for c in crops] == [(b - a) * 160 for a, b in crop_bounds(n, 50)]
    np.testing.assert_array_equal(np.concatenate(crops),
                                  store.waveform_of(0)[: n * 160] / np.float32(32768))
    embedder = EncoderEmbedder("frame-linear", "frame-linear-key", FrameLinear)
    whole = clip_embeddings(embedder, stores["mfcc"], crop_seconds=60.0, device="cpu",
                            cache=False)
    cropped = clip_embeddings(embedder, stores["mfcc"], crop_seconds=0.5, batch_size=3,
                              device="cpu", cache=False)
    np.testing.assert_allclose(cropped.X, whole.X, rtol=1e-5, atol=1e-6)
    # ... and both equal the pooled frames of each clip encoded in one piece.
    for i in (0, 7):
        wave = torch.from_numpy(store.waveform_of(i)[: 237 * 160].astype(np.float32) / 32768)
        with torch.no_grad():
            frames = embedder.encoder(wave[None])[0].T.numpy()
        assert frames.shape == (237, 8)
        np.testing.assert_allclose(whole.X[i], pool(frames, "mean+std"), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(embedder.frames(store, i), frames, rtol=1e-5, atol=1e-6)


def test_batched_crops_equal_one_clip_at_a_time(stores: dict[str, Path]) -> None:
    store = featurestore.open_store(stores["mfcc"])
    embedder = tiny()
    embedder.crop_seconds = 0.8
    got = clip_embeddings(embedder, stores["mfcc"], crop_seconds=0.8, batch_size=4,
                          device="cpu", cache=False)
    for i in (0, 5, 9):
        frames = embedder.frames(store, i)
        assert frames.shape == (237, 32)
        np.testing.assert_allclose(got.X[i], pool(frames, "mean+std"), rtol=1e-4, atol=1e-5)


def test_cache_is_reused_and_invalidated_for_another_store(stores: dict[str, Path],
                                                           tmp_path: Path) -> None:
    path = tmp_path / "copy.h5"
    shutil.copy(stores["mfcc"], path)
    before = sha1_of(path)
    first = tiny()
    calls = counting(first)
    a = clip_embeddings(first, path, crop_seconds=1.0, device="cpu")
    assert len(calls) > 0
    sidecar = cache_path(path, first.key, "mean+std", 1.0)
    assert sidecar == tmp_path / "copy.h5.embeddings" / f"{first.key}-mean+std-1.h5"
    assert sidecar.exists()
    assert [p.name for p in sidecar.parent.iterdir()] == [sidecar.name]  # no temp left
    with h5py.File(sidecar, "r") as f:
        assert f["X"].shape == (10, 64)
        assert f["ids"].asstr()[...].tolist() == a.ids
    assert sha1_of(path) == before  # the store itself is never written

    again = tiny()
    calls = counting(again)
    b = clip_embeddings(again, path, crop_seconds=1.0, device="cpu")
    assert calls == []  # served from the cache: the encoder never ran
    np.testing.assert_array_equal(a.X, b.X)
    assert b.ids == a.ids and b.labels == a.labels

    # Another pooling or crop length is another file.
    other = tiny()
    calls = counting(other)
    clip_embeddings(other, path, crop_seconds=1.0, pooling="mean", device="cpu")
    assert len(calls) > 0
    # Without the cache the encoder always runs.
    calls.clear()
    clip_embeddings(other, path, crop_seconds=1.0, device="cpu", cache=False)
    assert len(calls) > 0

    # A store with another identity (another build) is embedded again.
    with h5py.File(path, "r+") as f:
        f.attrs["created"] = "2000-01-01T00:00:00+00:00"
    rebuilt = tiny()
    calls = counting(rebuilt)
    c = clip_embeddings(rebuilt, path, crop_seconds=1.0, device="cpu")
    assert len(calls) > 0
    np.testing.assert_allclose(c.X, a.X, rtol=1e-6, atol=1e-6)
    with h5py.File(sidecar, "r") as f:
        assert f.attrs["store_created"] == "2000-01-01T00:00:00+00:00"
    final = tiny()
    calls = counting(final)
    clip_embeddings(final, path, crop_seconds=1.0, device="cpu")
    assert calls == []


def test_a_full_disk_leaves_the_embeddings_uncached(stores: dict[str, Path],
                                                    tmp_path: Path) -> None:
    size = stores["mfcc"].stat().st_size
    with tmpfs(tmp_path / "disk", size + 16 * 1024) as disk:
        path = disk / "tones.h5"
        shutil.copy(stores["mfcc"], path)
        (disk / "filler").write_bytes(bytes(os.statvfs(disk).f_bavail * 4096 - 4096))
        first = tiny()
        with pytest.warns(RuntimeWarning, match="embeddings not cached .No space left"):
            a = clip_embeddings(first, path, crop_seconds=1.0, device="cpu")
        assert not [p for p in disk.rglob("*") if ".tmp-" in p.name]
        sidecar = cache_path(path, first.key, "mean+std", 1.0)
        assert not sidecar.exists()
        (disk / "filler").unlink()
        b = clip_embeddings(tiny(), path, crop_seconds=1.0, device="cpu")  # room again
        np.testing.assert_array_equal(a.X, b.X)
        assert sidecar.exists()


def test_mfcc_stats_on_a_store_without_mfcc_says_how_to_add_it(
        stores: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="no 'mfcc' target") as err:
        clip_embeddings("mfcc-stats", stores["onset"], cache=False)
    message = str(err.value)
    assert str(stores["onset"]) in message
    assert "featurestore build SOURCE -o" in message and "--targets mfcc" in message


def test_encoder_frame_rate_must_match_the_store(stores: dict[str, Path]) -> None:
    embedder = EncoderEmbedder("hop320", "hop320-key", lambda: FrameLinear(hop=320))
    with pytest.raises(ValueError,
                       match="encoder frame rate 50 Hz does not match the store's 100 Hz"):
        clip_embeddings(embedder, stores["mfcc"], device="cpu", cache=False)
    wrong_rate = EncoderEmbedder("sr8k", "sr8k-key", FrameLinear, sample_rate=8000)
    with pytest.raises(ValueError, match="frame rate 50 Hz"):
        clip_embeddings(wrong_rate, stores["mfcc"], device="cpu", cache=False)


def test_random_encoder_is_deterministic_for_a_seed(stores: dict[str, Path]) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = clip_embeddings(tiny(seed=3), stores["mfcc"], crop_seconds=1.0, device="cpu",
                        cache=False)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    b = clip_embeddings(tiny(seed=3), stores["mfcc"], crop_seconds=1.0, device="cpu",
                        cache=False)
    c = clip_embeddings(tiny(seed=4), stores["mfcc"], crop_seconds=1.0, device="cpu",
                        cache=False)
    np.testing.assert_array_equal(a.X, b.X)
    assert a.key == b.key != c.key
    assert not np.allclose(a.X, c.X)
    assert load_embedder("random:pase+").key != tiny().key  # kwargs are in the key
    assert load_embedder("random:pase+").key == load_embedder("random:pase+", seed=0).key
    # Defaults given explicitly are the same architecture, hence the same key.
    assert load_embedder("random:pase+", encoder_kwargs={"dim": 256}).key == \
        load_embedder("random:pase+").key


def test_encoder_file_is_keyed_by_its_bytes(stores: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = build_encoder("pase+", **TINY_PASE)
    path = tmp_path / "encoder.pt"
    save_encoder(path, encoder, "pase+", None, step=0, sample_rate=16000)
    embedder = load_embedder(str(path))
    assert embedder.key == sha1_of(path)
    got = clip_embeddings(str(path), stores["mfcc"], pooling="mean", crop_seconds=1.0,
                          device="cpu", cache=False)
    assert got.key == embedder.key and got.X.shape == (10, 32)
    store = featurestore.open_store(stores["mfcc"])
    wave = torch.from_numpy(store.waveform_of(2)[:100 * 160].astype(np.float32) / 32768)
    with torch.no_grad():
        direct = encoder.eval()(wave[None])[0].T.numpy()
    assert isinstance(embedder, EncoderEmbedder)
    embedder.crop_seconds = 1.0
    np.testing.assert_allclose(embedder.frames(store, 2)[:100], direct, rtol=1e-4, atol=1e-5)


def test_random_weights_of_a_saved_architecture(stores: dict[str, Path],
                                                tmp_path: Path) -> None:
    """``random:<encoder.pt>`` (the sweep's random baseline): the file's architecture,
    fresh weights; the same key and embeddings as ``random:<name>`` with its arguments."""
    torch.manual_seed(99)
    path = tmp_path / "encoder.pt"
    save_encoder(path, build_encoder("pase+", **TINY_PASE), "pase+", None, step=0,
                 sample_rate=16000)
    from_file = load_embedder(f"random:{path}", seed=0)
    assert isinstance(from_file, EncoderEmbedder)
    assert from_file.key == tiny(seed=0).key != load_embedder(str(path)).key
    assert from_file.dim == 32
    a = clip_embeddings(from_file, stores["mfcc"], crop_seconds=1.0, device="cpu",
                        cache=False)
    b = clip_embeddings(tiny(seed=0), stores["mfcc"], crop_seconds=1.0, device="cpu",
                        cache=False)
    trained = clip_embeddings(str(path), stores["mfcc"], crop_seconds=1.0, device="cpu",
                              cache=False)
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.allclose(a.X, trained.X)
    with pytest.raises(ValueError, match="architecture comes from the encoder file"):
        load_embedder(f"random:{path}", encoder_kwargs={"dim": 8})


def test_bad_arguments(stores: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unknown pooling"):
        clip_embeddings("mfcc-stats", stores["mfcc"], pooling="max")
    with pytest.raises(ValueError, match="neither a known encoder"):
        load_embedder("random:nope")
    with pytest.raises(FileNotFoundError, match="no such encoder file"):
        load_embedder("runs/none/encoder.pt")


@pytest.mark.filterwarnings("error::tqdm.TqdmWarning")  # never past its total
def test_progress_counts_audio_seconds_as_batches_are_encoded(
        stores: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    store = featurestore.open_store(stores["mfcc"])
    seconds = float(np.maximum(store.clips["n_frames"], 1).sum()) * store.hop / store.sample_rate
    embedder = EncoderEmbedder("frame-linear", "frame-linear-key", FrameLinear)
    clip_embeddings(embedder, stores["mfcc"], crop_seconds=0.5, batch_size=3, device="cpu",
                    cache=False, progress=True)
    err = capsys.readouterr().err
    assert "embedding" in err and "audio-s" in err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{seconds:.1f}/{seconds:.1f}" in last


# ---------------------------------------------------------------------------- crop buckets
# (issue 12) Every new input shape costs a CPU encoder a kernel set-up, so last crops are
# padded to a few lengths and partial batches run in power-of-two pieces.


def test_bucket_lengths_and_batch_pieces() -> None:
    # 100-frame crops, 8 buckets: multiples of 13, at most the crop.
    assert [bucket_frames(t, 100, 8) for t in (1, 13, 14, 90, 91, 92, 99, 100)] == \
        [13, 13, 26, 91, 91, 100, 100, 100]
    assert len({bucket_frames(t, 100, 8) for t in range(1, 101)}) == 8
    assert len({bucket_frames(t, 1000, 8) for t in range(1, 1001)}) == 8
    assert [bucket_frames(t, 100, 0) for t in (1, 37, 100)] == [1, 37, 100]  # no buckets
    assert bucket_frames(3, 5, 8) == 3  # fewer frames than buckets: every length is one
    assert batch_pieces(13, 16) == [8, 4, 1]
    assert batch_pieces(35, 16) == [16, 16, 2, 1]
    assert batch_pieces(16, 16) == [16] and batch_pieces(0, 4) == []
    assert {s for n in range(1, 200) for s in batch_pieces(n, 16)} == {1, 2, 4, 8, 16}


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight tones of 0.57-2.89 s: every clip's last crop of 1 s has its own length."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("varied")
    source = tone_corpus(root / "audio", n_clips=8, seconds=3.0, seed=5)
    for i, seconds in enumerate((0.57, 0.96, 1.23, 1.48, 1.72, 2.05, 2.64, 2.89)):
        path = root / "audio" / f"clip{i:03d}.wav"
        y, sr = sf.read(path, dtype="float32")
        sf.write(path, y[: int(seconds * sr)], sr)
    return build_store(source, root / "varied.h5", "mfcc")


def test_the_encoder_sees_at_most_one_shape_per_bucket_and_batch_piece(varied: Path) -> None:
    embedder = load_embedder("random:pase+", encoder_kwargs=TINY_PASE, buckets=4)
    assert isinstance(embedder, EncoderEmbedder)
    shapes: set[tuple[int, ...]] = set()
    embedder.encoder.register_forward_pre_hook(lambda m, a: shapes.add(tuple(a[0].shape)))
    got = clip_embeddings(embedder, varied, crop_seconds=1.0, batch_size=4, device="cpu",
                          cache=False)
    lengths = {s[1] // 160 for s in shapes}
    assert lengths <= {25, 50, 75, 100}  # 4 buckets of a 100-frame crop
    assert {s[0] for s in shapes} <= {1, 2, 4}
    assert len(shapes) <= 4 * 3
    # Without buckets every last crop is a shape of its own.
    plain = load_embedder("random:pase+", encoder_kwargs=TINY_PASE, buckets=0)
    assert isinstance(plain, EncoderEmbedder)
    seen: set[int] = set()
    plain.encoder.register_forward_pre_hook(lambda m, a: seen.add(a[0].shape[1] // 160))
    ref = clip_embeddings(plain, varied, crop_seconds=1.0, batch_size=4, device="cpu",
                          cache=False)
    assert len(seen) == 9  # 100 frames and eight last-crop lengths
    # The padding changes the recurrent encoder's pooled embeddings only a little.
    rel = np.linalg.norm(got.X - ref.X, axis=1) / np.linalg.norm(ref.X, axis=1)
    assert rel.max() < 0.05, rel


def test_buckets_leave_a_bucket_length_crop_and_a_frame_local_encoder_unchanged(
        stores: dict[str, Path]) -> None:
    # 237 frames in crops of 79: the last crop is 79 frames, a bucket length, so padding
    # never happens and the recurrent encoder's embeddings are those without buckets.
    a = clip_embeddings(tiny(), stores["mfcc"], crop_seconds=0.79, device="cpu", cache=False)
    plain = tiny()
    plain.buckets = 0
    b = clip_embeddings(plain, stores["mfcc"], crop_seconds=0.79, device="cpu", cache=False)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-6)
    # Last crops of 37 frames padded to 39 (1 s crops, step 13): a frame-local encoder's
    # frames are untouched by the padding, which pooling never sees.
    local = EncoderEmbedder("frame-linear", "frame-linear-key", FrameLinear, buckets=8)
    exact = EncoderEmbedder("frame-linear", "frame-linear-key", FrameLinear, buckets=0)
    np.testing.assert_allclose(
        clip_embeddings(local, stores["mfcc"], crop_seconds=1.0, device="cpu", cache=False).X,
        clip_embeddings(exact, stores["mfcc"], crop_seconds=1.0, device="cpu", cache=False).X,
        rtol=1e-6, atol=1e-7)
    store = featurestore.open_store(stores["mfcc"])
    local.crop_seconds = 1.0
    frames = local.frames(store, 3)
    assert frames.shape == (237, 8)  # the unbatched path trims the padding too


def test_the_cache_records_buckets_and_precision(stores: dict[str, Path],
                                                 tmp_path: Path) -> None:
    path = tmp_path / "copy.h5"
    shutil.copy(stores["mfcc"], path)
    first = tiny()
    clip_embeddings(first, path, crop_seconds=1.0, device="cpu")
    with h5py.File(cache_path(path, first.key, "mean+std", 1.0), "r") as f:
        assert (f.attrs["buckets"], f.attrs["cpu_bf16"]) == (8, 0)
    for change in ({"buckets": 0}, {"cpu_bf16": True}):
        other = tiny()
        for k, v in change.items():
            setattr(other, k, v)
        calls = counting(other)
        clip_embeddings(other, path, crop_seconds=1.0, device="cpu")
        assert len(calls) > 0, change  # computed again, not served from the other cache
    same = tiny()
    calls = counting(same)
    clip_embeddings(same, path, crop_seconds=1.0, device="cpu")  # last written: bf16
    assert len(calls) > 0
    calls.clear()
    clip_embeddings(same, path, crop_seconds=1.0, device="cpu")
    assert calls == []


def test_cpu_bf16_embeddings_are_close_to_float32(stores: dict[str, Path]) -> None:
    fp32 = clip_embeddings(tiny(), stores["mfcc"], crop_seconds=1.0, device="cpu",
                           cache=False)
    half = load_embedder("random:pase+", encoder_kwargs=TINY_PASE, cpu_bf16=True)
    bf16 = clip_embeddings(half, stores["mfcc"], crop_seconds=1.0, device="cpu", cache=False)
    assert bf16.key == fp32.key and bf16.X.dtype == np.float32
    rel = np.linalg.norm(bf16.X - fp32.X, axis=1) / np.linalg.norm(fp32.X, axis=1)
    assert 0 < rel.max() < 0.02, rel
