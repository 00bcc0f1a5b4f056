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

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "average_precision",
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
