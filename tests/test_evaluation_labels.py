"""Labels: the one parser of the store's label strings (classes and ``a;b`` tag lists)."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.evaluation import (
    encode_labels,
    encode_targets,
    has_several_tags,
    is_tag_list,
    resolve_task,
    split_tags,
)


def test_split_tags_ignores_blanks_and_empty_parts() -> None:
    assert split_tags("rock;guitar") == ["rock", "guitar"]
    assert split_tags(" rock ; guitar ;") == ["rock", "guitar"]
    assert split_tags("rock") == ["rock"]
    assert split_tags("") == [] and split_tags(" ; ") == []


def test_a_tag_list_may_hold_one_tag_but_several_tags_need_two() -> None:
    assert is_tag_list("rock;") and not is_tag_list("rock")
    assert not has_several_tags("rock;") and has_several_tags("rock;pop")


def test_resolve_task() -> None:
    assert resolve_task(["a", "b", ""]) == "classification"
    assert resolve_task(["a", "b;c"]) == "tagging"
    assert resolve_task(["a", "b"], "tagging") == "tagging"
    with pytest.raises(ValueError, match="no labels"):
        resolve_task(["", " "])
    with pytest.raises(ValueError, match="task='classification'"):
        resolve_task(["a;b", "c"], "classification")


def test_encode_labels_classification_sorted_and_unlabeled() -> None:
    y, classes = encode_labels(["rock", "jazz", "", " rock "], multilabel=False)
    assert classes == ["jazz", "rock"]
    assert y.tolist() == [1, 0, -1, 1] and y.dtype == np.int64
    y, classes = encode_labels(["b", "a"], multilabel=False, classes=["b", "a", "c"])
    assert classes == ["b", "a", "c"] and y.tolist() == [0, 1]


def test_encode_labels_multilabel() -> None:
    Y, classes = encode_labels(["rock;guitar", "", "piano", "guitar; piano;"], multilabel=True)
    assert classes == ["guitar", "piano", "rock"]
    assert Y.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 0]] and Y.dtype == np.uint8
    Y, classes = encode_labels(["a;b"], multilabel=True, classes=["b", "c", "a"])
    assert Y.tolist() == [[1, 0, 1]]
    Y, classes = encode_labels([], multilabel=True, classes=["a"])
    assert Y.shape == (0, 1)


def test_encode_labels_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="not among the classes"):
        encode_labels(["a", "z"], multilabel=False, classes=["a", "b"])
    with pytest.raises(ValueError, match="clip 0: tag 'z' is not among the classes"):
        encode_labels(["a;z"], multilabel=True, classes=["a"])
    with pytest.raises(ValueError, match="duplicate"):
        encode_labels(["a"], multilabel=False, classes=["a", "a"])


def test_encode_targets_drops_unlabeled_clips_for_classification_only() -> None:
    enc = encode_targets(["b", "", "a", "b"])
    assert enc.task == "classification" and enc.classes == ["a", "b"]
    assert enc.keep.tolist() == [0, 2, 3] and enc.target.tolist() == [1, 0, 1]
    assert enc.Y.tolist() == [[0, 1], [1, 0], [0, 1]]
    enc = encode_targets(["b;a", "", "a"])
    assert enc.task == "tagging" and enc.keep.tolist() == [0, 1, 2]
    assert enc.target.tolist() == enc.Y.tolist() == [[1, 1], [0, 0], [1, 0]]
    with pytest.raises(ValueError, match="single class"):
        encode_targets(["a", "a", ""])
