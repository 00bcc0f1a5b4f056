"""Probe metrics: hand-computed small cases, agreement with scikit-learn, label-only figures."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from trainer.evaluation import (
    chance_metrics,
    classification_metrics,
    majority_metrics,
    roc_auc,
    tagging_metrics,
    task_metrics,
)


def one_hot_scores(pred: list[int], n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[pred]


# --------------------------------------------------------------------------- classification


def test_classification_metrics_hand_computed() -> None:
    y = np.array([0, 0, 1, 1, 2])
    pred = [0, 1, 1, 1, 0]
    m = classification_metrics(y, one_hot_scores(pred, 3), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # a: P 1/2 R 1/2 F1 1/2; b: P 2/3 R 1 F1 0.8; c: never predicted, P 0 R 0 F1 0
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert m["per_class"]["b"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["n"] == 5


def test_classification_argmax_ties_pick_lowest_index() -> None:
    m = classification_metrics(np.array([1, 0]), np.full((2, 3), 0.2), ["a", "b", "c"])
    assert m["confusion"] == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert m["accuracy"] == 0.5


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n_classes = int(rng.integers(2, 7))
        y = rng.integers(0, n_classes, 80)
        scores = rng.normal(size=(80, n_classes)) + 1.5 * np.eye(n_classes)[y]
        pred = scores.argmax(axis=1)
        m = classification_metrics(y, scores, [f"c{i}" for i in range(n_classes)])
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert m["macro_f1"] == pytest.approx(
            f1_score(y, pred, average="macro", zero_division=0), abs=1e-12
        )
        assert m["confusion"] == confusion_matrix(y, pred, labels=range(n_classes)).tolist()
        p, r, f, s = precision_recall_fscore_support(
            y, pred, labels=range(n_classes), zero_division=0
        )
        for i in range(n_classes):
            assert m["per_class"][f"c{i}"] == pytest.approx(
                {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}, abs=1e-12
            )


def test_macro_f1_skips_a_class_neither_present_nor_predicted() -> None:
    m = classification_metrics(np.array([0, 1]), one_hot_scores([0, 1], 3), ["a", "b", "c"])
    assert m["macro_f1"] == 1.0
    assert m["per_class"]["c"]["support"] == 0


def test_classification_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.array([0, 1]), np.zeros((2, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(np.array([0, 3]), np.zeros((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.array([0, 1]), np.full((2, 2), np.nan), ["a", "b"])


# --------------------------------------------------------------------------- tagging


def test_tagging_metrics_hand_computed() -> None:
    Y = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])
    scores = np.array([[0.9, 0.5], [0.8, 0.5], [0.3, 0.5], [0.1, 0.5]])
    m = tagging_metrics(Y, scores, ["x", "y"])
    # x: positives {0.9, 0.3}, negatives {0.8, 0.1}: 3 of 4 pairs ordered -> 0.75
    #    ranked P N P N: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    # y: every score tied -> AUC 1/2, AP = prevalence 1/2
    assert m["per_class"]["x"] == pytest.approx({"roc_auc": 0.75, "pr_auc": 5 / 6, "support": 2})
    assert m["per_class"]["y"] == pytest.approx({"roc_auc": 0.5, "pr_auc": 0.5, "support": 2})
    assert m["roc_auc_macro"] == pytest.approx((0.75 + 0.5) / 2)
    assert m["pr_auc_macro"] == pytest.approx((5 / 6 + 0.5) / 2)
    assert m["excluded"] == []


def test_tagging_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        n, n_tags = int(rng.integers(20, 120)), int(rng.integers(2, 8))
        Y = (rng.random((n, n_tags)) < 0.3).astype(int)
        Y[0], Y[1] = 1, 0  # every tag has a positive and a negative
        scores = np.round(rng.normal(size=(n, n_tags)) + Y, 1)  # rounding makes ties
        m = tagging_metrics(Y, scores, [f"t{i}" for i in range(n_tags)])
        assert m["roc_auc_macro"] == pytest.approx(
            roc_auc_score(Y, scores, average="macro"), abs=1e-12
        )
        assert m["pr_auc_macro"] == pytest.approx(
            average_precision_score(Y, scores, average="macro"), abs=1e-12
        )
        for i in range(n_tags):
            assert m["per_class"][f"t{i}"]["roc_auc"] == pytest.approx(
                roc_auc_score(Y[:, i], scores[:, i]), abs=1e-12
            )


def test_tagging_excludes_tags_without_positives_or_negatives() -> None:
    rng = np.random.default_rng(2)
    Y = (rng.random((50, 4)) < 0.4).astype(int)
    Y[0, :2], Y[1, :2] = 1, 0
    Y[:, 2] = 0  # no positive
    Y[:, 3] = 1  # no negative
    scores = rng.normal(size=(50, 4))
    m = tagging_metrics(Y, scores, ["a", "b", "none", "all"])
    assert m["excluded"] == ["none", "all"]
    assert m["per_class"]["none"] == {"roc_auc": None, "pr_auc": None, "support": 0}
    assert m["per_class"]["all"]["support"] == 50
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(Y[:, :2], scores[:, :2]))
    assert m["pr_auc_macro"] == pytest.approx(average_precision_score(Y[:, :2], scores[:, :2]))
    m = tagging_metrics(Y[:, 2:], scores[:, 2:], ["none", "all"])
    assert m["roc_auc_macro"] is None and m["pr_auc_macro"] is None


def test_batched_rank_roc_auc_equals_sklearn_for_every_grid_point() -> None:
    rng = np.random.default_rng(3)
    Y = (rng.random((30, 4)) < 0.5).astype(int)
    Y[0], Y[1] = 1, 0
    Y[:, 3] = 0  # no positive: NaN
    scores = np.round(rng.normal(size=(5, 30, 4)), 1)  # rounding makes ties
    batched = roc_auc(Y, scores)
    assert batched.shape == (5, 4)
    for g in range(5):
        for c in range(3):
            assert batched[g, c] == pytest.approx(roc_auc_score(Y[:, c], scores[g, :, c]),
                                                  abs=1e-12)
    assert np.isnan(batched[:, 3]).all()


def test_tagging_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="0 and 1"):
        tagging_metrics(np.array([[2, 0]]), np.zeros((1, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        tagging_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["a"])


# --------------------------------------------------------------------------- label-only figures


def test_majority_scores_the_training_prior_and_breaks_ties_to_the_first_class() -> None:
    Y_train = np.eye(3, dtype=int)[[1, 1, 2, 2, 0]]  # classes 1 and 2 tie as majority
    m = majority_metrics("classification", Y_train, np.array([1, 2, 1, 0]), ["a", "b", "c"])
    assert m["accuracy"] == 0.5
    assert m["confusion"] == [[0, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert m == task_metrics("classification", np.array([1, 2, 1, 0]),
                             np.tile([0.2, 0.4, 0.4], (4, 1)), ["a", "b", "c"])
    tags = majority_metrics("tagging", np.array([[1, 0], [1, 1]]),
                            np.array([[1, 0], [0, 1], [0, 0]]), ["x", "y"])
    assert tags["roc_auc_macro"] == 0.5
    assert tags["pr_auc_macro"] == pytest.approx(1 / 3)


def test_chance_is_the_prior_against_the_test_labels() -> None:
    Y_train = np.eye(2, dtype=int)[[0, 0, 0, 1]]  # prior 3/4, 1/4
    got = chance_metrics("classification", Y_train, np.array([1, 1, 0, 1]))
    assert got["accuracy"] == pytest.approx(0.75 * 0.25 + 0.25 * 0.75, abs=1e-15)
    got = chance_metrics("tagging", Y_train, np.array([[1, 0], [0, 0], [0, 1], [0, 1]]))
    assert got == {"roc_auc_macro": 0.5, "pr_auc_macro": pytest.approx((0.25 + 0.5) / 2)}
