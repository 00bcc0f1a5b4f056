"""The HEAR API over our encoders: shapes, dtypes, timestamps, scene pooling, loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from stores import TINY_PASE
from torch import Tensor, nn

from trainer import hear
from trainer.encoder_file import save_encoder
from trainer.encoders import build_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> hear.HearModel:
    return hear.load_model("random:pase+", encoder_kwargs=TINY_PASE)


def sounds(n: int, samples: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    freqs = 200 + 300 * torch.rand(n, 1, generator=gen)
    return (0.5 * torch.sin(2 * math.pi * freqs * t)
            + 0.05 * torch.randn(n, samples, generator=gen)).float()


class FrameLinear(nn.Module):
    """A frame-local encoder: each frame depends only on its own hop of samples."""

    hop, dim = 160, 8

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(self.hop, self.dim)

    def forward(self, wave: Tensor) -> Tensor:
        b, s = wave.shape
        return self.proj(wave.reshape(b, s // self.hop, self.hop)).transpose(1, 2)


def test_attributes(model: hear.HearModel) -> None:
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000
    assert model.timestamp_embedding_size == 32
    assert model.scene_embedding_size == 32
    model.train()
    assert not model.encoder.training  # always eval: no batch statistics


def test_timestamp_embeddings_shapes_dtypes_and_times(model: hear.HearModel) -> None:
    audio = sounds(3, 19_750)  # 123.4 hops: padded to 124 frames
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape == (3, 124, 32) and emb.dtype == torch.float32
    assert ts.shape == (3, 124) and ts.dtype == torch.float32
    assert emb.device == audio.device and ts.device == audio.device
    assert torch.isfinite(emb).all()
    expect = torch.arange(124, dtype=torch.float64) * 10.0  # ms: hop / sr * 1000 = 10
    for row in ts:
        torch.testing.assert_close(row.double(), expect, rtol=0, atol=1e-3)
    assert ts[0, 0] == 0.0
    torch.testing.assert_close(ts[:, 1:] - ts[:, :-1], torch.full((3, 123), 10.0))


def test_a_sound_shorter_than_one_hop_has_one_timestamp(model: hear.HearModel) -> None:
    emb, ts = hear.get_timestamp_embeddings(sounds(2, 50), model)
    assert emb.shape == (2, 1, 32) and ts.shape == (2, 1)
    assert ts.tolist() == [[0.0], [0.0]]
    assert hear.get_scene_embeddings(sounds(2, 50), model).shape == (2, 32)
    exact, ts = hear.get_timestamp_embeddings(sounds(1, 320), model)
    assert exact.shape == (1, 2, 32) and ts.tolist() == [[0.0, 10.0]]


def test_scene_embedding_is_the_mean_of_the_timestamp_embeddings(
        model: hear.HearModel) -> None:
    audio = sounds(4, 8_000, seed=1)
    scene = hear.get_scene_embeddings(audio, model)
    emb, _ = hear.get_timestamp_embeddings(audio, model)
    assert scene.shape == (4, model.scene_embedding_size) and scene.dtype == torch.float32
    torch.testing.assert_close(scene, emb.mean(dim=1), rtol=1e-5, atol=1e-6)


def test_deterministic_and_batch_independent(model: hear.HearModel) -> None:
    audio = sounds(5, 12_345, seed=2)
    a, _ = hear.get_timestamp_embeddings(audio, model)
    b, _ = hear.get_timestamp_embeddings(audio, model)
    assert torch.equal(a, b)
    alone, _ = hear.get_timestamp_embeddings(audio[3:4], model)
    torch.testing.assert_close(alone[0], a[3], rtol=1e-5, atol=1e-5)
    small_batches = hear.load_model("random:pase+", encoder_kwargs=TINY_PASE, batch_size=2)
    c, _ = hear.get_timestamp_embeddings(audio, small_batches)
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
    other, _ = hear.get_timestamp_embeddings(
        audio, hear.load_model("random:pase+", encoder_kwargs=TINY_PASE, seed=1))
    assert not torch.allclose(other, a)


def test_long_audio_is_chunked_without_changing_a_frame_local_encoder() -> None:
    torch.manual_seed(0)
    encoder = FrameLinear()
    whole = hear.HearModel(encoder, chunk_seconds=60.0)
    chunked = hear.HearModel(encoder, chunk_seconds=0.33, batch_size=2)
    audio = sounds(3, 40_001)
    a, ta = hear.get_timestamp_embeddings(audio, whole)
    b, tb = hear.get_timestamp_embeddings(audio, chunked)
    assert a.shape == (3, 251, 8)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert torch.equal(ta, tb)
    torch.testing.assert_close(hear.get_scene_embeddings(audio, chunked), a.mean(dim=1),
                               rtol=1e-5, atol=1e-6)
    # Frame k is the encoder's frame k of the zero-padded sound.
    padded = torch.nn.functional.pad(audio, (0, 251 * 160 - 40_001))
    with torch.no_grad():
        direct = encoder(padded).transpose(1, 2)
    torch.testing.assert_close(a, direct, rtol=1e-5, atol=1e-6)


def test_loads_an_encoder_file_saved_by_pretrain(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = build_encoder("pase+", **TINY_PASE)
    path = tmp_path / "encoder.pt"
    save_encoder(path, encoder, "pase+", None, step=0, sample_rate=16000)
    model = hear.load_model(str(path))
    assert model.sample_rate == 16000
    assert model.timestamp_embedding_size == model.scene_embedding_size == 32
    audio = sounds(2, 16_000, seed=3)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape == (2, 100, 32) and ts.shape == (2, 100)
    with torch.no_grad():
        direct = encoder.eval()(audio).transpose(1, 2)
    torch.testing.assert_close(emb, direct, rtol=1e-4, atol=1e-5)


def test_bad_arguments(model: hear.HearModel) -> None:
    with pytest.raises(ValueError, match="model_file_path"):
        hear.load_model()
    with pytest.raises(ValueError, match="unknown load_model arguments"):
        hear.load_model("random:pase+", colour="blue")
    with pytest.raises(FileNotFoundError):
        hear.load_model("no/such/encoder.pt")
    with pytest.raises(ValueError, match=r"\[n_sounds, n_samples\]"):
        hear.get_timestamp_embeddings(torch.zeros(16000), model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_audio_gives_cuda_embeddings() -> None:
    cpu_model = hear.load_model("random:pase+", encoder_kwargs=TINY_PASE)
    gpu_model = hear.load_model("random:pase+", encoder_kwargs=TINY_PASE)
    audio = sounds(2, 16_000)
    emb, ts = hear.get_timestamp_embeddings(audio.cuda(), gpu_model)
    assert emb.device.type == "cuda" and ts.device.type == "cuda"
    assert emb.dtype == torch.float32
    ref, _ = hear.get_timestamp_embeddings(audio, cpu_model)
    # bf16 autocast on CUDA: close, not equal.
    assert torch.nn.functional.cosine_similarity(emb.cpu().flatten(), ref.flatten(),
                                                 dim=0) > 0.98
