"""Clip labels for the probe tasks: classes, tags and their encodings.

The label format itself (:data:`TAG_SEPARATOR`, :func:`split_tags`) belongs to the store
format and is declared in :mod:`featurestore.store`, which builds and this module read.
A store's ``label`` column holds, per clip, one class name (``"rock"``), several tags joined
by :data:`TAG_SEPARATOR` (``"rock;guitar"``), or ``''`` (unlabeled, or no tag). Blanks
around a label or a tag and empty tags (``"rock;"``) are ignored. Two tasks follow from the
labels: ``"classification"`` (one class per clip; unlabeled clips take no part) and
``"tagging"`` (a tag set per clip; a clip without tags is a negative for every tag).

>>> split_tags(" rock; guitar ;")
['rock', 'guitar']
>>> encode_labels(["b", "", "a"], multilabel=False)
(array([ 1, -1,  0]), ['a', 'b'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from sklearn.preprocessing import MultiLabelBinarizer

from featurestore.store import TAG_SEPARATOR, split_tags  # the label format's one home

__all__ = [
    "TAG_SEPARATOR",
    "EncodedLabels",
    "encode_labels",
    "encode_targets",
    "has_several_tags",
    "is_tag_list",
    "resolve_task",
    "split_tags",
]

def is_tag_list(label: str) -> bool:
    """Whether a label string is written as a tag list (it holds a ``';'``), even one with a
    single tag such as ``"rock;"``: what makes ``task="auto"`` choose tagging."""
    return TAG_SEPARATOR in str(label)


def has_several_tags(label: str) -> bool:
    """Whether a label string names more than one tag (``"a;b"``, not ``"a;"``)."""
    return len(split_tags(label)) > 1


def resolve_task(labels: Sequence[str], task: str = "auto") -> str:
    """``"classification"`` or ``"tagging"`` for these labels.

    Parameters
    ----------
    labels : sequence of str
        One label string per clip.
    task : {"auto", "classification", "tagging"}
        ``"auto"`` is tagging when any label is a tag list (:func:`is_tag_list`).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        No clip is labeled, or tag lists meet ``task="classification"``.
    """
    if not any(str(label).strip() for label in labels):
        raise ValueError(
            "no labels: every clip is unlabeled (an unlabeled store?); a probe needs labels"
        )
    multilabel = any(is_tag_list(label) for label in labels)
    if task == "auto":
        return "tagging" if multilabel else "classification"
    if task == "classification" and multilabel:
        raise ValueError("labels hold ';' (several tags per clip) but task='classification'")
    return task


def encode_labels(
    labels: Sequence[str], multilabel: bool, classes: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Class indices (classification) or a 0/1 tag matrix (tagging) of label strings.

    Tags are binarised with scikit-learn's ``MultiLabelBinarizer``. Classes are mapped to
    indices directly rather than with ``LabelBinarizer``, which returns a single column for
    two classes and has no place for unlabeled clips.

    Parameters
    ----------
    labels : sequence of str
        One string per clip. Single-label: the class name, ``''`` for unlabeled.
        Multi-label: tags joined by ``';'``, ``''`` for no tag.
    multilabel : bool
        Whether the labels are tag sets (tagging) or single classes (classification).
    classes : sequence of str, optional
        The class (tag) vocabulary and its order; by default the sorted distinct non-empty
        labels (tags) of ``labels``.

    Returns
    -------
    y : numpy.ndarray
        Classification: int64, shape ``(n,)``, the class index or ``-1`` for an unlabeled
        clip. Tagging: uint8, shape ``(n, C)``, ``y[i, c] = 1`` when clip ``i`` carries
        tag ``c``.
    classes : list of str
        The vocabulary used.

    Raises
    ------
    ValueError
        A label (tag) outside a given ``classes``, or duplicate names in ``classes``.
    """
    labels = [str(label).strip() for label in labels]
    tag_sets = [split_tags(label) for label in labels] if multilabel else None
    if classes is None:
        names = {t for tags in tag_sets for t in tags} if tag_sets is not None else set(labels)
        classes = sorted(names - {""})
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate class names in {classes}")
    known = set(classes)

    if tag_sets is not None:
        for i, tags in enumerate(tag_sets):
            unknown = [t for t in tags if t not in known]
            if unknown:
                raise ValueError(f"clip {i}: tag {unknown[0]!r} is not among the classes "
                                 f"{classes}")
        binarizer = MultiLabelBinarizer(classes=classes)
        Y = binarizer.fit_transform(tag_sets) if labels else np.zeros((0, len(classes)))
        return np.asarray(Y, dtype=np.uint8).reshape(len(labels), len(classes)), classes

    index = {c: i for i, c in enumerate(classes)}
    y = np.full(len(labels), -1, dtype=np.int64)
    for i, label in enumerate(labels):
        if not label:
            continue
        if label not in index:
            raise ValueError(f"clip {i}: label {label!r} is not among the classes {classes}")
        y[i] = index[label]
    return y, classes


class EncodedLabels(NamedTuple):
    """The labels of a probe (or baseline), encoded once: what :func:`encode_targets` returns.

    Attributes
    ----------
    task : str
        ``"classification"`` or ``"tagging"``.
    keep : numpy.ndarray of int, shape (n_keep,)
        The clips that take part: labeled clips for classification, every clip for tagging.
    target : numpy.ndarray
        Class indices, shape ``(n_keep,)``, or the 0/1 tag matrix, shape ``(n_keep, C)``.
    Y : numpy.ndarray of int64, shape (n_keep, C)
        One-hot classes or the tag matrix.
    classes : list of str
    """

    task: str
    keep: np.ndarray
    target: np.ndarray
    Y: np.ndarray
    classes: list[str]


def encode_targets(labels: Sequence[str], task: str = "auto") -> EncodedLabels:
    """Resolve the task and encode the labels, as every probe and baseline does.

    Parameters
    ----------
    labels : sequence of str
        Per clip: a class, tags joined by ``';'``, or ``''`` (unlabeled / no tag).
    task : {"auto", "classification", "tagging"}
        As in :func:`resolve_task`.

    Returns
    -------
    EncodedLabels

    Raises
    ------
    ValueError
        No labels at all, tags with task ``classification``, or a single class.
    """
    labels = [str(label).strip() for label in labels]
    task = resolve_task(labels, task)
    if task == "classification":
        y_all, classes = encode_labels(labels, multilabel=False)
        if len(classes) < 2:
            raise ValueError(
                f"a single class ({classes[0]!r}): classification needs at least two classes"
            )
        keep = np.flatnonzero(y_all >= 0)
        target = y_all[keep]
        return EncodedLabels(task, keep, target, np.eye(len(classes), dtype=np.int64)[target],
                             classes)
    Y_all, classes = encode_labels(labels, multilabel=True)
    return EncodedLabels(task, np.arange(len(labels)), Y_all, Y_all.astype(np.int64), classes)
