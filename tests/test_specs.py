"""The encoder-spec language and the encoder file: one parser, one format."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import trainer
from trainer.encoder_file import (
    ENCODER_FORMAT,
    architecture_of,
    load_encoder,
    read_encoder_file,
    save_encoder,
)
from trainer.encoders import build_encoder
from trainer.specs import EncoderSpec, parse_spec

TINY = dict(n_mels=32, channels=[4, 8], freq_pools=[2, 4], dim=16, context_layers=2)


@pytest.mark.parametrize(("text", "kind", "target"), [
    ("runs/x/encoder.pt", "file", "runs/x/encoder.pt"),
    ("random:melcnn", "random", "melcnn"),
    ("random:runs/x/encoder.pt", "random", "runs/x/encoder.pt"),
    ("mfcc-stats", "store", "mfcc-stats"),
    ("targets-stats", "store", "targets-stats"),
    ("supervised:samplecnn", "supervised", "samplecnn"),
])
def test_every_kind_of_spec_parses_to_what_it_names(text: str, kind: str, target: str) -> None:
    assert parse_spec(text) == EncoderSpec(text, kind, target)  # type: ignore[arg-type]


def test_only_specs_that_build_a_network_take_encoder_arguments() -> None:
    assert [parse_spec(t).builds_encoder for t in
            ("random:melcnn", "supervised:melcnn", "mfcc-stats", "a/encoder.pt")] == [
        True, True, False, False]


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty encoder spec"),
    ("random:", "expected a name after 'random:'"),
    ("supervised:", "expected a name after 'supervised:'"),
    ("supervised:resnet", r"unknown encoder 'resnet'; expected one of melcnn, pase\+, samplecnn"),
])
def test_a_malformed_spec_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec(text)


def test_an_encoder_file_round_trips_weights_architecture_and_run(tmp_path: Path) -> None:
    torch.manual_seed(3)
    encoder = build_encoder("melcnn", **TINY)
    path = tmp_path / "encoder.pt"
    save_encoder(path, encoder, "melcnn", {"seed": 7, "steps": 10}, step=10, sample_rate=16000)
    assert not (tmp_path / "encoder.pt.tmp").exists()
    payload = read_encoder_file(path)
    assert payload["format"] == ENCODER_FORMAT
    assert (payload["encoder"], payload["step"], payload["pretrain"]) == (
        "melcnn", 10, {"seed": 7, "steps": 10})
    assert architecture_of(path) == ("melcnn", encoder.config(), 16000)
    loaded = trainer.load_encoder(path)
    assert loaded.source == str(path) and loaded.sample_rate == 16000 and not loaded.training
    wave = torch.randn(2, 30 * 160)
    with torch.no_grad():
        torch.testing.assert_close(loaded(wave), encoder.eval()(wave), rtol=0, atol=0)
    assert trainer.load_encoder is load_encoder


class _Payload:  # any pickled object that is not plain data
    pass


def test_a_file_with_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": ENCODER_FORMAT, "encoder": _Payload()}, path)
    with pytest.raises(ValueError, match=rf"{path}: not an encoder file \(UnpicklingError"):
        read_encoder_file(path)


def test_files_that_are_not_encoder_files_are_named(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"format": "something/1"}, other)
    with pytest.raises(ValueError, match=rf"{other}: not an encoder file of format "
                                         rf"{ENCODER_FORMAT}"):
        read_encoder_file(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(pickle.dumps([1, 2], protocol=2) + b"junk")
    with pytest.raises(ValueError, match=rf"{junk}: not an encoder file"):
        read_encoder_file(junk)
    with pytest.raises(FileNotFoundError, match="no such encoder file"):
        read_encoder_file(tmp_path / "missing.pt")
