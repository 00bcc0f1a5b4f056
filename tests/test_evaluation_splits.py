"""Splits of the probe: store split names, grouped (stratified) folds, carved valid sets."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.evaluation import carve_valid, check_coverage, make_folds, normalise_splits


def grouped_classes(seed: int, n_classes: int, k: int) -> tuple[list[str], np.ndarray]:
    """Clips in groups of 1-6 clips of one class each, every class in at least ``k`` groups,
    shuffled."""
    rng = np.random.default_rng(seed)
    groups: list[str] = []
    y: list[int] = []
    for c in range(n_classes):
        for g in range(int(rng.integers(k, 3 * k))):
            size = int(rng.integers(1, 7))
            groups += [f"c{c}g{g}"] * size
            y += [c] * size
    order = rng.permutation(len(groups))
    return [groups[i] for i in order], np.array(y)[order]


def assert_partition(folds: list[tuple[np.ndarray, np.ndarray]], groups: list[str]) -> None:
    """Each clip is tested exactly once and no named group straddles train and test."""
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(len(groups)))
    for train, test in folds:
        assert train.dtype == test.dtype == np.int64
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
        assert len(np.intersect1d(train, test)) == 0
        assert len(train) + len(test) == len(groups)
        named_train = {groups[i] for i in train if groups[i]}
        named_test = {groups[i] for i in test if groups[i]}
        assert not named_train & named_test


def test_stratified_folds_never_split_a_group_and_keep_every_class_everywhere() -> None:
    for seed in range(20):
        n_classes, k = 2 + seed % 5, 2 + seed % 4
        groups, y = grouped_classes(seed, n_classes, k)
        folds = make_folds(groups, k, seed=seed, y=y)
        assert len(folds) == k
        assert_partition(folds, groups)
        for train, test in folds:  # every class has >= k groups, so it fits in every part
            assert set(y[train].tolist()) == set(range(n_classes))
            assert set(y[test].tolist()) == set(range(n_classes))


def test_stratified_folds_depend_on_the_seed_only() -> None:
    groups, y = grouped_classes(0, n_classes=3, k=5)
    folds = make_folds(groups, 5, seed=0, y=y)
    again = make_folds(groups, 5, seed=0, y=y)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = make_folds(groups, 5, seed=1, y=y)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))


def test_unstratified_folds_are_grouped_and_balanced_in_clips() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9, 60)
    groups = [f"g{g}" for g, size in enumerate(sizes) for _ in range(size)]
    groups += [""] * 7  # ungrouped clips are groups of their own
    groups = [groups[i] for i in rng.permutation(len(groups))]
    folds = make_folds(groups, 5)
    assert len(folds) == 5
    assert_partition(folds, groups)
    test_sizes = [len(test) for _, test in folds]
    assert max(test_sizes) - min(test_sizes) <= 8  # balanced to within the largest group


def test_make_folds_rejects_impossible_k() -> None:
    with pytest.raises(ValueError, match="k >= 2"):
        make_folds(["a", "b"], 1)
    with pytest.raises(ValueError, match="at least 3 groups"):
        make_folds(["a", "a", "b"], 3)
    with pytest.raises(ValueError, match="at least 3 groups"):
        make_folds(["a", "a", "b"], 3, y=np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="2 class labels for 3 clips"):
        make_folds(["a", "b", "c"], 2, y=np.array([0, 1]))


def test_carve_valid_is_grouped_and_keeps_every_class_in_train() -> None:
    groups = [f"g{i // 3}" for i in range(90)]
    y = np.repeat(np.arange(30) % 3, 3)
    y[-3:] = 3  # class 3 lives in a single group: it must stay in train
    Y = np.eye(4, dtype=int)[y]
    train, valid = carve_valid(np.arange(90), groups, Y, fraction=0.3, seed=0)
    assert len(valid) == 27  # 30 % of 30 groups of 3
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(90))
    assert not {groups[i] for i in train} & {groups[i] for i in valid}
    assert (Y[train].sum(axis=0) > 0).all()
    assert set(valid.tolist()).isdisjoint({87, 88, 89})
    with pytest.raises(ValueError, match="single group"):
        carve_valid(np.arange(3), groups, Y, seed=0)


def test_check_coverage_names_the_classes_train_lacks() -> None:
    Y = np.eye(3, dtype=int)[[0, 1, 0, 1, 2]]
    check_coverage(Y, np.array([0, 1]), np.array([2, 3]), "test", ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\['c'\] occur in valid but not in train"):
        check_coverage(Y, np.array([0, 1]), np.array([3, 4]), "valid", ["a", "b", "c"])


def test_normalise_splits_reads_aliases_and_refuses_unknown_names() -> None:
    got = normalise_splits(["Train", " val", "validation", "dev", "TEST", ""], 6)
    assert got.tolist() == ["train", "valid", "valid", "valid", "test", ""]
    assert normalise_splits(None, 2).tolist() == ["", ""]
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        normalise_splits(["train", "holdout"], 2)
    with pytest.raises(ValueError, match="1 splits for 2 clips"):
        normalise_splits(["train"], 2)


def test_classes_too_small_to_stratify_fall_back_to_grouped_folds() -> None:
    groups = [f"g{i}" for i in range(8)]
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # no class has 5 clips
    folds = make_folds(groups, 5, seed=0, y=y)
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(8))
    assert [len(te) for _, te in folds] == [2, 2, 2, 1, 1]
