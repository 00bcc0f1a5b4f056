"""Which clips train, select and test a probe: store splits, grouped folds, carved valid sets.

A *group* is a set of clips that must never straddle train and test (the clips of one song,
one artist, one source file); an empty group name makes a clip a group of its own.

- :func:`normalise_splits` reads the store's split names (``val``, ``dev``, ... are
  ``valid``).
- :func:`make_folds` is grouped K-fold cross-validation with scikit-learn:
  ``StratifiedGroupKFold(shuffle=True, random_state=seed)`` when class labels are given
  (every class spread over the folds as evenly as whole groups allow, so that it stays in
  every training part where it can), else ``GroupKFold()`` (folds balanced in clips,
  largest group first; scikit-learn's shuffled ``GroupKFold`` would deal equal *numbers*
  of groups instead, so uneven group sizes would give uneven folds, and the unshuffled one
  takes no seed: tagging folds do not depend on ``seed``).
- :func:`carve_valid` sets a grouped validation set aside from a training part without
  taking the last training example of any class away (scikit-learn's group splitters give
  no such guarantee).
- :func:`check_coverage` refuses a split that tests a class the training part lacks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

__all__ = [
    "SPLIT_ALIASES",
    "carve_valid",
    "check_coverage",
    "group_keys",
    "make_folds",
    "normalise_splits",
]

#: Split names a store may use, and the name the probe reads them as.
SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "dev": "valid",
    "test": "test",
    "": "",
}


def normalise_splits(splits: Sequence[str] | None, n: int) -> np.ndarray:
    """Per clip ``'train'``, ``'valid'``, ``'test'`` or ``''`` (unused).

    Parameters
    ----------
    splits : sequence of str, optional
        The store's split names (any case, any alias of :data:`SPLIT_ALIASES`); ``None``
        for no splits.
    n : int
        The number of clips.

    Returns
    -------
    numpy.ndarray of object, shape (n,)

    Raises
    ------
    ValueError
        A length other than ``n``, or an unknown split name.
    """
    if splits is None:
        return np.full(n, "", dtype=object)
    if len(splits) != n:
        raise ValueError(f"{len(splits)} splits for {n} clips")
    out = np.empty(n, dtype=object)
    for i, s in enumerate(splits):
        key = str(s).strip().lower()
        if key not in SPLIT_ALIASES:
            raise ValueError(
                f"clip {i}: unknown split {s!r}; expected 'train', 'valid', 'test' or ''"
            )
        out[i] = SPLIT_ALIASES[key]
    return out


def group_keys(groups: Sequence[str] | None, n: int) -> np.ndarray:
    """Group names with every empty (or missing) group replaced by a name of its own.

    Parameters
    ----------
    groups : sequence of str, optional
        The group of every clip; ``None`` makes every clip its own group.
    n : int
        The number of clips.

    Returns
    -------
    numpy.ndarray of object, shape (n,)
    """
    if groups is None:
        groups = [""] * n
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} clips")
    return np.array([str(g) or f"\0clip{i}" for i, g in enumerate(groups)], dtype=object)


def make_folds(
    groups: Sequence[str], k: int, seed: int = 0, y: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped K-fold: every group's clips land in the test part of exactly one fold.

    Parameters
    ----------
    groups : sequence of str, shape (n,)
        The group of every clip (``''``: a group of its own).
    k : int
        Number of folds, at least 2 and at most the number of groups.
    seed : int
        ``random_state`` of the shuffled ``StratifiedGroupKFold`` (with ``y``); unused
        without ``y`` (``GroupKFold`` is deterministic).
    y : numpy.ndarray of int, shape (n,), optional
        Class indices: stratify the folds by class (single-label data only). When no
        class has ``k`` clips, the folds are not stratified (``GroupKFold``).

    Returns
    -------
    list of (train_idx, test_idx)
        ``k`` pairs of sorted int64 index arrays; the test parts partition ``range(n)``.

    Raises
    ------
    ValueError
        ``k < 2``, fewer groups than folds, or ``y`` of another length.
    """
    k = int(k)
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    keys = group_keys(groups, len(groups))
    n_groups = len(set(keys.tolist()))
    if n_groups < k:
        raise ValueError(f"{k} folds need at least {k} groups, found {n_groups}")
    index = np.arange(len(keys))
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(keys):
            raise ValueError(f"{len(y)} class labels for {len(keys)} clips")
        if np.unique(y, return_counts=True)[1].max() < k:
            y = None  # no class can be spread over k folds: nothing to stratify
    if y is None:
        split = GroupKFold(n_splits=k).split(index, groups=keys)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # "the least populated class has fewer members than n_splits": such a class
            # cannot be in every fold; check_coverage says so when it matters
            warnings.simplefilter("ignore", UserWarning)
            split = list(splitter.split(index, y, groups=keys))
    return [(np.sort(tr).astype(np.int64), np.sort(te).astype(np.int64)) for tr, te in split]


def carve_valid(
    train_idx: np.ndarray,
    groups: Sequence[str],
    Y: np.ndarray,
    fraction: float = 0.15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Set about ``fraction`` of the training groups aside as a validation set.

    Groups are visited in a seeded random order and moved to validation unless that would
    take the last training example of some class (tag) away.

    Parameters
    ----------
    train_idx : numpy.ndarray of int, shape (n_train,)
        Clip indices of the training part.
    groups : sequence of str, shape (n_clips,)
        The group of every clip (indexed by clip, not by position in ``train_idx``).
    Y : numpy.ndarray, shape (n_clips, C)
        0/1 class (tag) membership of every clip.
    fraction : float
        Target share of the training groups.
    seed : int
        Seed of the order in which groups are visited.

    Returns
    -------
    (train_idx, valid_idx) : tuple of numpy.ndarray of int64
        Sorted, disjoint, their union the input ``train_idx``.

    Raises
    ------
    ValueError
        Fewer than two groups, or no group can be moved without emptying a class.
    """
    train_idx = np.asarray(train_idx, dtype=np.int64)
    keys = group_keys(groups, len(groups))[train_idx]
    uniq, inverse = np.unique(keys, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError(
            "cannot carve a validation set out of the training clips: they form a single "
            "group; give the data a 'valid' split or more groups"
        )
    wanted = min(len(uniq) - 1, max(1, round(fraction * len(uniq))))
    Ytr = np.asarray(Y, dtype=np.int64)[train_idx]
    counts = Ytr.sum(axis=0)
    group_counts = np.zeros((len(uniq), Ytr.shape[1]), dtype=np.int64)
    np.add.at(group_counts, inverse, Ytr)
    needed = counts > 0
    taken: list[int] = []
    for g in np.random.default_rng(seed).permutation(len(uniq)):
        left = counts - group_counts[g]
        if np.all(left[needed] > 0):
            taken.append(int(g))
            counts = left
            if len(taken) == wanted:
                break
    if not taken:
        raise ValueError(
            "cannot carve a grouped validation set out of the training clips without "
            "removing every training example of some class; give the data a 'valid' split"
        )
    is_valid = np.isin(inverse, taken)
    return np.sort(train_idx[~is_valid]), np.sort(train_idx[is_valid])


def check_coverage(
    Y: np.ndarray, train: np.ndarray, other: np.ndarray, name: str, classes: Sequence[str]
) -> None:
    """Refuse a split whose clips carry classes (tags) that the training clips lack.

    Parameters
    ----------
    Y : numpy.ndarray, shape (n_clips, C)
        0/1 class (tag) membership.
    train, other : numpy.ndarray of int
        Clip indices of the training part and of the part checked against it.
    name : str
        The checked part's name for the message (``"test"``, ``"valid"``).
    classes : sequence of str, length C

    Raises
    ------
    ValueError
        ``labels missing from a split: [...] occur in <name> but not in train ...``.
    """
    in_train = Y[train].sum(axis=0) > 0
    in_other = Y[other].sum(axis=0) > 0
    missing = [c for c, a, b in zip(classes, in_train, in_other, strict=True) if b and not a]
    if missing:
        raise ValueError(
            f"labels missing from a split: {missing} occur in {name} but not in train; "
            "the probe cannot learn a class it never sees"
        )
