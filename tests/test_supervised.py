"""The supervised-from-scratch baseline on tone stores labelled by pitch class."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from stores import NOTE_NAMES, build_store, tone_corpus

import featurestore
from trainer.supervised import train_supervised

TINY_PASE = {"channels": (16, 16, 32, 32, 32, 32, 32), "dim": 32, "rnn_hidden": 16,
             "sinc_filters": 16}
N_CLIPS = 48  # 8 per pitch class


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a small, often busy machine: one intra-op thread is both faster
    and steadier than several competing for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def relabel(source: Path, name: str,
            row: Callable[[int, dict[str, str]], dict[str, str] | None]) -> Path:
    """A copy of the tone corpus's CSV with rows rewritten by ``row(i, old_row)`` (rows
    for which it returns None are left out)."""
    with open(source, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = source.with_name(name)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        for i, r in enumerate(rows):
            new = row(i, dict(r))
            if new is not None:
                w.writerow(new)
    return out


def block_split(i: int) -> str:
    """Every pitch class in every split: blocks of six clips (one per class), five
    blocks train, one valid, two test."""
    return ("train", "train", "train", "train", "train", "valid", "test", "test")[i // 6]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("supervised")
    return tone_corpus(root / "audio", n_clips=N_CLIPS, seconds=1.5, seed=5)


@pytest.fixture(scope="module")
def store(source: Path) -> Path:
    csv_path = relabel(source, "split.csv", lambda i, r: {**r, "split": block_split(i)})
    return build_store(csv_path, source.parent.parent / "pitch.h5", "onset")


def test_beats_the_majority_class_on_test(store: Path) -> None:
    result = train_supervised(store, encoder="pase+", encoder_kwargs=TINY_PASE, steps=60,
                              batch_size=8, crop_seconds=0.5, lr=3e-3, seed=0, device="cpu")
    s = featurestore.open_store(store)
    test = [i for i in range(s.n_clips) if s.clips["split"][i] == "test"]
    truth = [s.clips["label"][i] for i in test]
    assert result.classes == sorted(NOTE_NAMES)
    assert result.test_ids == [s.clips["id"][i] for i in test]
    assert result.test_scores.shape == (12, 6) and result.test_scores.dtype == np.float32
    np.testing.assert_allclose(result.test_scores.sum(axis=1), 1.0, rtol=1e-5)
    assert np.isfinite(result.valid_loss) and 1 <= result.steps <= 60
    predicted = [result.classes[k] for k in result.test_scores.argmax(axis=1)]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    majority = Counter(truth).most_common(1)[0][1] / len(truth)
    assert accuracy > majority + 0.2, (accuracy, majority)


def test_multilabel_mode_runs(source: Path) -> None:
    def row(i: int, r: dict[str, str]) -> dict[str, str]:
        extra = "loud" if i % 4 < 2 else "soft"
        return {**r, "label": f"{r['label']};{extra}", "split": block_split(i)}

    store = build_store(relabel(source, "multi.csv", row), source.parent.parent / "multi.h5",
                        "onset")
    result = train_supervised(store, encoder_kwargs=TINY_PASE, steps=6, batch_size=4,
                              crop_seconds=0.5, device="cpu", eval_every=3)
    assert result.classes == sorted([*NOTE_NAMES, "loud", "soft"])
    assert result.test_scores.shape == (12, 8)
    assert ((result.test_scores >= 0) & (result.test_scores <= 1)).all()
    assert np.isfinite(result.valid_loss) and result.steps in (3, 6)
    with pytest.raises(ValueError, match="several labels"):
        train_supervised(store, encoder_kwargs=TINY_PASE, steps=1, crop_seconds=0.5,
                         device="cpu", multilabel=False)
    forced = train_supervised(store, encoder_kwargs=TINY_PASE, steps=2, batch_size=4,
                              crop_seconds=0.5, device="cpu", multilabel=True)
    assert forced.test_scores.shape == (12, 8)


def test_a_store_without_splits_is_refused(source: Path) -> None:
    csv_path = relabel(source, "nosplit.csv",
                       lambda i, r: {**r, "split": ""} if i < 8 else None)
    store = build_store(csv_path, source.parent.parent / "nosplit.h5", "onset")
    with pytest.raises(ValueError, match="no labelled clips in the 'train' split"):
        train_supervised(store, encoder_kwargs=TINY_PASE, steps=1, crop_seconds=0.5,
                         device="cpu")
