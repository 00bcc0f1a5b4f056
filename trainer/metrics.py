"""Metrics of the downstream probes: single-label classification and multi-label tagging.

Classification (one label per clip, e.g. GTZAN genres) reports accuracy, macro-F1, the
confusion matrix and per-class precision / recall / F1. Tagging (several labels per clip,
e.g. MagnaTagATune's top-50 tags) reports the macro averages over tags of ROC-AUC and of
PR-AUC (average precision), the field's two standard numbers.

Every function returns plain Python numbers, lists and dicts (JSON-ready); a metric that is
undefined (a tag without both positive and negative clips) is ``None``, never NaN.

ROC-AUC is computed in closed form from ranks (the Mann-Whitney statistic, ties counted
half), which equals the area under the trapezoidal ROC curve exactly and is vectorised over
classes and over a leading batch axis; the probe uses it at every epoch for early stopping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "average_precision",
    "chance_classification",
    "chance_tagging",
    "classification_metrics",
    "encode_labels",
    "roc_auc",
    "split_tags",
    "tagging_metrics",
]


def split_tags(label: str) -> list[str]:
    """The tags of one multi-label string (``"rock;guitar"`` → ``["rock", "guitar"]``).

    Parameters
    ----------
    label : str
        Tags joined by ``';'``; surrounding blanks and empty parts are ignored, so ``''``
        means no tag.

    Returns
    -------
    list of str
    """
    return [t.strip() for t in str(label).split(";") if t.strip()]


def encode_labels(
    labels: Sequence[str], multilabel: bool, classes: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Turn label strings into class indices (classification) or a 0/1 matrix (tagging).

    Parameters
    ----------
    labels : sequence of str
        One string per clip. Single-label: the class name, ``''`` for unlabeled.
        Multi-label: tags joined by ``';'``, ``''`` for no tag.
    multilabel : bool
        Whether the labels are tag sets (tagging) or single classes (classification).
    classes : list of str, optional
        The class (tag) vocabulary and its order. By default the sorted distinct non-empty
        labels (tags) found in ``labels``.

    Returns
    -------
    y : numpy.ndarray
        Classification: int64 of shape ``(n,)`` with the class index, ``-1`` for an
        unlabeled clip. Tagging: uint8 of shape ``(n, C)`` with ``Y[i, c] = 1`` when clip
        ``i`` carries tag ``c``.
    classes : list of str
        The vocabulary used.

    Raises
    ------
    ValueError
        A label (tag) outside a given ``classes``, or duplicate names in ``classes``.
    """
    labels = [str(label).strip() for label in labels]
    if multilabel:
        tag_sets = [split_tags(label) for label in labels]
        if classes is None:
            classes = sorted({t for tags in tag_sets for t in tags})
    else:
        if classes is None:
            classes = sorted({label for label in labels if label})
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate class names in {classes}")
    index = {c: i for i, c in enumerate(classes)}

    if multilabel:
        Y = np.zeros((len(labels), len(classes)), dtype=np.uint8)
        for i, tags in enumerate(tag_sets):
            for t in tags:
                if t not in index:
                    raise ValueError(f"clip {i}: tag {t!r} is not among the classes {classes}")
                Y[i, index[t]] = 1
        return Y, classes

    y = np.full(len(labels), -1, dtype=np.int64)
    for i, label in enumerate(labels):
        if not label:
            continue
        if label not in index:
            raise ValueError(f"clip {i}: label {label!r} is not among the classes {classes}")
        y[i] = index[label]
    return y, classes


def _as_scores(scores: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n, n_classes):
        raise ValueError(f"scores have shape {scores.shape}, expected {(n, n_classes)}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or Inf")
    return scores


def classification_metrics(y: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, confusion matrix and per-class figures of a single-label task.

    The prediction of a clip is the arg-max of its scores (the lowest index on ties).

    Parameters
    ----------
    y : numpy.ndarray of int, shape (n,)
        True class indices into ``classes``.
    scores : numpy.ndarray, shape (n, C)
        Any monotone class scores (logits, probabilities).
    classes : list of str
        The ``C`` class names.

    Returns
    -------
    dict
        ``accuracy`` (float); ``macro_f1`` (float: the unweighted mean of F1 over the classes
        that occur in ``y`` or in the predictions, as scikit-learn's ``f1_score(...,
        average="macro")``; a class neither present nor predicted is not a failure of the
        model); ``confusion`` (``C x C`` list of int counts, rows = true class, columns =
        predicted class); ``per_class`` (class name -> ``{"precision", "recall", "f1",
        "support"}``, with 0 for a zero division); ``n`` (int).

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

    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    present = (support > 0) | (predicted > 0)

    return {
        "accuracy": float(tp.sum() / n),
        "macro_f1": float(f1[present].mean()),
        "confusion": confusion.tolist(),
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


def roc_auc(Y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC of every column, from ranks (ties count half), batched.

    Parameters
    ----------
    Y : numpy.ndarray of 0/1, shape (n, C)
        Positives per clip and class.
    scores : numpy.ndarray, shape (..., n, C)
        Scores; leading axes (e.g. one per model of a grid) are broadcast against ``Y``.

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


def average_precision(Y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision (area under the step-wise precision-recall curve) per column.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in decreasing
    order, the definition of scikit-learn's ``average_precision_score``.

    Parameters
    ----------
    Y : numpy.ndarray of 0/1, shape (n, C)
    scores : numpy.ndarray, shape (n, C)

    Returns
    -------
    numpy.ndarray, shape (C,)
        AP per class; NaN for a class without a positive clip.
    """
    Y = np.asarray(Y).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    out = np.full(Y.shape[1], np.nan)
    for c in range(Y.shape[1]):
        pos = Y[:, c]
        n_pos = int(pos.sum())
        if n_pos == 0:
            continue
        order = np.argsort(-scores[:, c], kind="mergesort")
        s, p = scores[order, c], pos[order]
        # the last index of every run of tied scores: one threshold per distinct score
        last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
        tps = np.cumsum(p)[last].astype(np.float64)
        precision = tps / (last + 1)
        recall = tps / n_pos
        out[c] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return out


def tagging_metrics(Y: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Macro ROC-AUC and PR-AUC of a multi-label task, and per-tag figures.

    Parameters
    ----------
    Y : numpy.ndarray of 0/1, shape (n, C)
        True tags.
    scores : numpy.ndarray, shape (n, C)
        Any monotone per-tag scores (logits, sigmoid probabilities).
    classes : list of str
        The ``C`` tag names.

    Returns
    -------
    dict
        ``roc_auc_macro`` and ``pr_auc_macro`` (float, or ``None`` when no tag qualifies):
        unweighted means over the tags with at least one positive and one negative clip;
        ``per_class`` (tag -> ``{"roc_auc", "pr_auc", "support"}``, support = number of
        positive clips, the AUCs ``None`` for an excluded tag); ``excluded`` (the tags left
        out of the macro averages, in class order); ``n`` (int).

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
    auc = roc_auc(Y, scores)
    ap = average_precision(Y, scores)

    def mean(values: np.ndarray) -> float | None:
        return float(values[included].mean()) if included.any() else None

    return {
        "roc_auc_macro": mean(auc),
        "pr_auc_macro": mean(ap),
        "per_class": {
            c: {
                "roc_auc": float(auc[i]) if included[i] else None,
                "pr_auc": float(ap[i]) if included[i] else None,
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "excluded": [c for i, c in enumerate(classes) if not included[i]],
        "n": int(n),
    }


# --------------------------------------------------------------------------- chance levels

_MC_DRAWS = 4000  # draws of the stratified guess when macro-F1 has no closed form here


def _binomial_window(n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Values and probabilities of Binomial(n, p) over every value with any mass that
    float64 can hold next to 1 (the mean ± 12 standard deviations + 30)."""
    from scipy.stats import binom

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


def chance_classification(prior: np.ndarray, y: np.ndarray, draws: int = _MC_DRAWS,
                          seed: int = 0) -> dict[str, float]:
    """Expected test metrics of the stratified guess: every test clip gets a class drawn
    independently from the training label prior (scikit-learn's
    ``DummyClassifier(strategy="stratified")``), whatever the clip.

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
        frequencies. ``macro_f1``: the expected value of
        :func:`classification_metrics`' macro-F1, exact (a sum over the binomial
        distributions of true and false positives, class by class) when every class the
        guess can predict occurs in the test clips; otherwise a class absent from test
        joins the macro average only when it happens to be predicted, the average's
        denominator is random, and the expectation is the mean over ``draws`` seeded
        simulated guesses.
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
    if not np.any((counts == 0) & (prior > 0)):
        present = counts > 0  # the classes of the macro average, on every draw
        f1 = [_expected_f1(int(counts[c]), n, float(prior[c])) for c in range(n_classes)
              if present[c]]
        return {"accuracy": accuracy, "macro_f1": float(np.mean(f1))}
    rng = np.random.default_rng(seed)
    total = 0.0
    chunk = max(1, min(draws, 2_000_000 // n))
    done = 0
    while done < draws:
        r = min(chunk, draws - done)
        pred = rng.choice(n_classes, size=(r, n), p=prior)
        f1_sum = np.zeros(r)
        n_present = np.zeros(r)
        for c in range(n_classes):
            is_pred = pred == c
            predicted = is_pred.sum(axis=1)
            tp = is_pred[:, y == c].sum(axis=1)
            denom = counts[c] + predicted
            f1_sum += np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)
            n_present += denom > 0
        total += float(np.sum(f1_sum / n_present))
        done += r
    return {"accuracy": accuracy, "macro_f1": total / draws}


def chance_tagging(Y: np.ndarray) -> dict[str, float | None]:
    """Expected macro ROC-AUC and PR-AUC of scores that know nothing about the clips.

    Over the tags :func:`tagging_metrics` averages (those with both positive and negative
    test clips), the expected ROC-AUC of random scores is 0.5 and the expected average
    precision is the tag's positive rate on test.

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
