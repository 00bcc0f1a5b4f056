"""Scores of a probe: scikit-learn's metrics, shaped for reports, and the label-only figures.

Classification (one label per clip) reports accuracy, macro-F1, the confusion matrix and
per-class precision / recall / F1; tagging (several tags per clip) the macro averages over
tags of ROC-AUC and PR-AUC (average precision). All of them are ``sklearn.metrics``; every
function returns plain Python numbers, lists and dicts (JSON-ready), and an undefined
figure (a tag without both positive and negative clips) is ``None``, never NaN.

What scikit-learn lacks is kept here:

- :func:`roc_auc`: ROC-AUC from ranks, batched over a leading axis, which the probe grid
  computes for every grid point after every epoch;
- :func:`chance_classification` and :func:`chance_tagging`: the *expected* score of a guess
  drawn from the training label prior (``DummyClassifier(strategy="stratified")`` gives one
  draw, not the expectation);
- :func:`majority_metrics` and :func:`chance_metrics`: those two label-only baselines for
  one (train, test) pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binom, rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = [
    "MAIN_METRIC",
    "SCALAR_METRICS",
    "chance_classification",
    "chance_metrics",
    "chance_tagging",
    "classification_metrics",
    "majority_metrics",
    "roc_auc",
    "tagging_metrics",
    "task_metrics",
]

#: The metric that selects the model, per task (and the main metric of reports).
MAIN_METRIC = {"classification": "accuracy", "tagging": "roc_auc_macro"}
#: The scalar test metrics summarised over folds and seeds, per task.
SCALAR_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "tagging": ("roc_auc_macro", "pr_auc_macro"),
}


def _as_scores(scores: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n, n_classes):
        raise ValueError(f"scores have shape {scores.shape}, expected {(n, n_classes)}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or Inf")
    return scores


def classification_metrics(
    y: np.ndarray, scores: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, confusion matrix and per-class figures of a single-label task.

    The prediction of a clip is the arg-max of its scores (the lowest index on ties).

    Parameters
    ----------
    y : numpy.ndarray of int, shape (n,)
        True class indices into ``classes``.
    scores : numpy.ndarray, shape (n, C)
        Any monotone class scores (logits, probabilities).
    classes : sequence of str, length C

    Returns
    -------
    dict
        ``accuracy``; ``macro_f1`` (``f1_score(average="macro", zero_division=0)``: the
        mean over the classes present in ``y`` or in the predictions, since a class neither
        present nor predicted is no failure of the model); ``confusion`` (``C x C`` counts,
        rows = true class, columns = predicted class); ``per_class`` (class name ->
        ``{"precision", "recall", "f1", "support"}``, 0 for a zero division); ``n``.

    Raises
    ------
    ValueError
        Empty input, shapes that disagree, or a class index outside ``[0, C)``.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    n, n_classes = len(y), len(classes)
    if n == 0:
        raise ValueError("no clips to score")
    if n_classes == 0:
        raise ValueError("no classes")
    scores = _as_scores(scores, n, n_classes)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"class indices must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    pred = scores.argmax(axis=1)
    every = np.arange(n_classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=every, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "confusion": confusion_matrix(y, pred, labels=every).tolist(),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "n": n,
    }


def tagging_metrics(Y: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Macro ROC-AUC and PR-AUC of a multi-label task, and per-tag figures.

    Parameters
    ----------
    Y : numpy.ndarray of 0/1, shape (n, C)
        True tags.
    scores : numpy.ndarray, shape (n, C)
        Any monotone per-tag scores (logits, sigmoid probabilities).
    classes : sequence of str, length C

    Returns
    -------
    dict
        ``roc_auc_macro`` and ``pr_auc_macro`` (``roc_auc_score`` and
        ``average_precision_score``, unweighted means over the tags with at least one
        positive and one negative clip; ``None`` when no tag qualifies); ``per_class`` (tag
        -> ``{"roc_auc", "pr_auc", "support"}``, support = positive clips, the AUCs ``None``
        for an excluded tag); ``excluded`` (the tags left out, in class order); ``n``.

    Raises
    ------
    ValueError
        Empty input, shapes that disagree, or labels other than 0/1.
    """
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[1] != len(classes):
        raise ValueError(f"Y has shape {Y.shape}, expected (n, {len(classes)})")
    n = Y.shape[0]
    if n == 0:
        raise ValueError("no clips to score")
    if not np.isin(Y, (0, 1)).all():
        raise ValueError("Y must hold only 0 and 1")
    scores = _as_scores(scores, n, len(classes))
    support = Y.sum(axis=0).astype(np.int64)
    included = (support > 0) & (support < n)
    auc = {c: float(roc_auc_score(Y[:, c], scores[:, c])) for c in np.flatnonzero(included)}
    ap = {c: float(average_precision_score(Y[:, c], scores[:, c]))
          for c in np.flatnonzero(included)}

    def mean(values: dict[int, float]) -> float | None:
        return float(np.mean(list(values.values()))) if values else None

    return {
        "roc_auc_macro": mean(auc),
        "pr_auc_macro": mean(ap),
        "per_class": {
            c: {"roc_auc": auc.get(i), "pr_auc": ap.get(i), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "excluded": [c for i, c in enumerate(classes) if not included[i]],
        "n": int(n),
    }


def task_metrics(
    task: str, target: np.ndarray, scores: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """:func:`classification_metrics` or :func:`tagging_metrics`, by ``task``.

    Parameters
    ----------
    task : {"classification", "tagging"}
    target : numpy.ndarray
        Class indices, shape ``(n,)``, or the 0/1 tag matrix, shape ``(n, C)``.
    scores : numpy.ndarray, shape (n, C)
    classes : sequence of str, length C

    Returns
    -------
    dict
    """
    if task == "classification":
        return classification_metrics(target, scores, classes)
    return tagging_metrics(target, scores, classes)


def roc_auc(Y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC of every column from ranks (Mann-Whitney, ties counted half), batched.

    Equals ``roc_auc_score`` column by column; one call scores every model of a grid.

    Parameters
    ----------
    Y : numpy.ndarray of 0/1, shape (n, C)
        Positives per clip and class.
    scores : numpy.ndarray, shape (..., n, C)
        Scores; leading axes (one per model of a grid) are broadcast against ``Y``.

    Returns
    -------
    numpy.ndarray, shape (..., C)
        The AUC per class; NaN for a class without both a positive and a negative clip.
    """
    Y = np.asarray(Y).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = Y.sum(axis=0).astype(np.float64)
    n_neg = Y.shape[0] - n_pos
    ranks = rankdata(scores, axis=-2)  # average ranks over tied scores
    rank_sum = np.where(Y, ranks, 0.0).sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


# --------------------------------------------------------------------------- label-only figures

_MC_DRAWS = 4000  # draws of the stratified guess when macro-F1 has no closed form here


def _binomial_window(n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Values and probabilities of Binomial(n, p) over every value with any mass that
    float64 can hold next to 1 (the mean ± 12 standard deviations + 30)."""
    sd = math.sqrt(n * p * (1 - p))
    lo = max(0, math.floor(n * p - 12 * sd - 30))
    hi = min(n, math.ceil(n * p + 12 * sd + 30))
    k = np.arange(lo, hi + 1)
    return k, binom.pmf(k, n, p)


def _expected_f1(n_pos: int, n: int, p: float) -> float:
    """E[F1] of one class with ``n_pos`` of ``n`` clips when every clip is predicted as it
    independently with probability ``p``: ``TP ~ Bin(n_pos, p)`` and ``FP ~ Bin(n - n_pos,
    p)`` are independent and ``F1 = 2 TP / (n_pos + TP + FP)``."""
    if n_pos == 0 or p <= 0.0:
        return 0.0
    a, pa = _binomial_window(n_pos, p)
    b, pb = _binomial_window(n - n_pos, p)
    f1 = 2.0 * a[:, None] / (n_pos + a[:, None] + b[None, :])
    return float(pa @ f1 @ pb)


def _simulated_macro_f1(prior: np.ndarray, y: np.ndarray, draws: int, seed: int) -> float:
    """Mean macro-F1 (as :func:`classification_metrics`) of ``draws`` seeded guesses."""
    n, n_classes = len(y), len(prior)
    counts = np.bincount(y, minlength=n_classes)
    rng = np.random.default_rng(seed)
    total, done = 0.0, 0
    chunk = max(1, min(draws, 2_000_000 // n))
    while done < draws:
        r = min(chunk, draws - done)
        pred = rng.choice(n_classes, size=(r, n), p=prior)
        f1_sum = np.zeros(r)
        n_present = np.zeros(r)
        for c in range(n_classes):
            is_pred = pred == c
            tp = is_pred[:, y == c].sum(axis=1)
            denom = counts[c] + is_pred.sum(axis=1)
            f1_sum += np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)
            n_present += denom > 0
        total += float(np.sum(f1_sum / n_present))
        done += r
    return total / draws


def chance_classification(prior: np.ndarray, y: np.ndarray, draws: int = _MC_DRAWS,
                          seed: int = 0) -> dict[str, float]:
    """Expected test metrics of the stratified guess: every test clip gets a class drawn
    independently from the training label prior, whatever the clip.

    This is chance level, which the majority-class figure is not: under grouped folds a
    fold's test part often lacks the training majority class, and always predicting it
    then scores 0 % where a guess from the prior scores ``sum_c p_train(c) p_test(c)``.

    Parameters
    ----------
    prior : numpy.ndarray, shape (C,)
        Training class frequencies (non-negative, summing to 1).
    y : numpy.ndarray of int, shape (n,)
        True test class indices.
    draws : int
        Draws of the guess when macro-F1 is estimated by simulation (see below).
    seed : int
        Seed of that simulation.

    Returns
    -------
    dict
        ``accuracy``: exactly ``sum_c prior[c] * q[c]`` with ``q`` the test class
        frequencies. ``macro_f1``: the expectation of :func:`classification_metrics`'
        macro-F1, exact (a sum over the binomial laws of true and false positives, class by
        class) when every class the guess can predict occurs in test; otherwise a class
        absent from test joins the average only when predicted, the denominator is random,
        and the expectation is the mean over ``draws`` seeded simulated guesses.
    """
    prior = np.asarray(prior, dtype=np.float64).ravel()
    y = np.asarray(y).astype(np.int64).ravel()
    n, n_classes = len(y), len(prior)
    if n == 0:
        raise ValueError("no clips to score")
    if np.any(prior < 0) or not np.isclose(prior.sum(), 1.0):
        raise ValueError(f"prior must be non-negative and sum to 1, got {prior.tolist()}")
    prior = prior / prior.sum()
    counts = np.bincount(y, minlength=n_classes)
    accuracy = float(prior @ counts / n)
    if np.any((counts == 0) & (prior > 0)):
        return {"accuracy": accuracy, "macro_f1": _simulated_macro_f1(prior, y, draws, seed)}
    f1 = [_expected_f1(int(counts[c]), n, float(prior[c]))
          for c in range(n_classes) if counts[c] > 0]
    return {"accuracy": accuracy, "macro_f1": float(np.mean(f1))}


def chance_tagging(Y: np.ndarray) -> dict[str, float | None]:
    """Expected macro ROC-AUC and PR-AUC of scores that know nothing about the clips.

    Over the tags :func:`tagging_metrics` averages (those with positive and negative test
    clips), random scores have an expected ROC-AUC of 0.5 and an expected average precision
    of the tag's positive rate on test.

    Parameters
    ----------
    Y : numpy.ndarray of 0/1, shape (n, C)
        True test tags.

    Returns
    -------
    dict
        ``roc_auc_macro`` (0.5) and ``pr_auc_macro`` (the mean positive rate); both
        ``None`` when no tag qualifies.
    """
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[0] == 0:
        raise ValueError(f"Y must have shape (n, C) with n > 0, got {Y.shape}")
    support = Y.sum(axis=0)
    included = (support > 0) & (support < Y.shape[0])
    if not included.any():
        return {"roc_auc_macro": None, "pr_auc_macro": None}
    return {"roc_auc_macro": 0.5,
            "pr_auc_macro": float(np.mean(support[included] / Y.shape[0]))}


def majority_metrics(
    task: str, Y_train: np.ndarray, test_target: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Test metrics of scoring every test clip with the training prior.

    For classification that predicts the training majority class (the first on a tie).

    Parameters
    ----------
    task : {"classification", "tagging"}
    Y_train : numpy.ndarray of 0/1, shape (n_train, C)
        One-hot classes or tags of the training clips.
    test_target : numpy.ndarray
        Test class indices ``(n_test,)`` or test tags ``(n_test, C)``.
    classes : sequence of str, length C

    Returns
    -------
    dict
        As :func:`task_metrics`.
    """
    prior = np.asarray(Y_train).mean(axis=0)
    return task_metrics(task, test_target, np.tile(prior, (len(test_target), 1)), classes)


def chance_metrics(
    task: str, Y_train: np.ndarray, test_target: np.ndarray
) -> dict[str, float | None]:
    """Expected test metrics of a guess from the training label prior (chance level).

    Parameters
    ----------
    task : {"classification", "tagging"}
    Y_train : numpy.ndarray of 0/1, shape (n_train, C)
        One-hot classes or tags of the training clips.
    test_target : numpy.ndarray
        Test class indices ``(n_test,)`` or test tags ``(n_test, C)``.

    Returns
    -------
    dict
        :func:`chance_classification` of the training prior, or :func:`chance_tagging`.
    """
    if task == "classification":
        Y_train = np.asarray(Y_train)
        return chance_classification(Y_train.sum(axis=0) / len(Y_train), test_target)
    return chance_tagging(test_target)
