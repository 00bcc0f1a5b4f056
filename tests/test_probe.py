"""The downstream probe on synthetic embeddings with known answers.

Features are Gaussian clusters per class plus noise dimensions (a real signal), pure noise
(no signal) or sums of per-tag directions (tagging). A small grid keeps the file fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from trainer.evaluation import ProbeConfig, plan_probe, run_probe

FAST = dict(
    lrs=(1e-3, 1e-2),
    weight_decays=(0.0, 1e-3),
    epochs=40,
    patience=10,
    hidden=64,
    batch_size=128,
    seeds=2,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clusters(
    n: int = 400,
    n_classes: int = 4,
    signal_dims: int = 8,
    noise_dims: int = 8,
    separation: float = 4.0,
    seed: int = 0,
    weights: list[float] | None = None,
) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Class clusters (unit noise around centres ``separation`` apart) plus noise dims.

    Returns X, labels, splits (about 60 / 20 / 20 by group) and groups of 4 clips, every
    group of one class (like the clips of one song).
    """
    rng = np.random.default_rng(seed)
    n_groups = n // 4
    group_class = rng.choice(n_classes, n_groups, p=weights)
    y = np.repeat(group_class, 4)
    centres = rng.normal(size=(n_classes, signal_dims))
    centres *= separation / np.linalg.norm(centres, axis=1, keepdims=True)
    X = np.concatenate(
        [centres[y] + rng.normal(size=(n, signal_dims)), rng.normal(size=(n, noise_dims))], 1
    ).astype(np.float32)
    group_split = rng.choice(["train", "valid", "test"], n_groups, p=[0.6, 0.2, 0.2])
    return (
        X,
        [f"class{k}" for k in y],
        np.repeat(group_split, 4).tolist(),
        [f"song{g}" for g in np.repeat(np.arange(n_groups), 4)],
    )


# --------------------------------------------------------------------------- learning


def test_near_perfect_on_well_separated_clusters() -> None:
    X, labels, splits, groups = clusters(separation=8.0)
    result = run_probe(X, labels, splits, groups, ProbeConfig(**FAST))
    assert result.task == "classification" and result.metric == "accuracy"
    assert result.classes == ["class0", "class1", "class2", "class3"]
    assert result.summary["accuracy"]["mean"] >= 0.98
    assert result.summary["macro_f1"]["mean"] >= 0.98
    assert result.majority["accuracy"] < 0.45
    assert len(result.per_seed) == 2
    for seed in result.per_seed:
        assert set(seed["chosen"]) == {"lr", "weight_decay", "epochs"}
        assert seed["chosen"]["lr"] in FAST["lrs"]
        assert 1 <= seed["chosen"]["epochs"] <= FAST["epochs"]
        assert len(seed["grid"]) == 4
        assert seed["valid"] == max(g["valid"] for g in seed["grid"])
    assert result.n_train + result.n_valid + result.n_test == 400


def test_beats_the_majority_class_by_a_wide_margin_on_noisy_signal() -> None:
    # unbalanced classes, overlapping clusters and as many noise dims as signal dims
    X, labels, splits, groups = clusters(
        n=600, separation=3.0, noise_dims=16, weights=[0.4, 0.3, 0.2, 0.1], seed=1
    )
    for classifier in ("mlp", "linear"):
        result = run_probe(X, labels, splits, groups, ProbeConfig(classifier=classifier, **FAST))
        acc = result.summary["accuracy"]["mean"]
        assert acc >= result.majority["accuracy"] + 0.3, (classifier, acc, result.majority)


def test_pure_noise_is_near_chance() -> None:
    X, labels, splits, groups = clusters(n=800, seed=2)
    X = np.random.default_rng(5).normal(size=X.shape).astype(np.float32)
    result = run_probe(X, labels, splits, groups, ProbeConfig(**FAST))
    assert result.summary["accuracy"]["mean"] < 0.42  # chance is 0.25 for 4 balanced classes


def test_deterministic_for_a_seed() -> None:
    X, labels, splits, groups = clusters(separation=3.0, seed=3)
    config = ProbeConfig(**{**FAST, "seeds": 1, "epochs": 15})
    first = run_probe(X, labels, splits, groups, config).to_dict()
    second = run_probe(X, labels, splits, groups, config).to_dict()
    assert first == second


def test_unlabeled_clips_are_dropped_for_classification() -> None:
    X, labels, splits, groups = clusters(separation=8.0)
    labels = [label if i % 5 else "" for i, label in enumerate(labels)]
    result = run_probe(X, labels, splits, groups, ProbeConfig(**{**FAST, "seeds": 1}))
    assert result.n_train + result.n_valid + result.n_test == 400 - 80
    assert result.summary["accuracy"]["mean"] >= 0.95


def test_valid_set_carved_from_train_when_missing() -> None:
    X, labels, splits, groups = clusters(separation=8.0)
    splits = ["train" if s == "valid" else s for s in splits]
    n_train = splits.count("train")
    result = run_probe(X, labels, splits, groups, ProbeConfig(**{**FAST, "seeds": 1}))
    assert result.n_valid > 0
    assert result.n_train + result.n_valid == n_train
    assert result.n_valid % 4 == 0  # whole groups of 4


# --------------------------------------------------------------------------- folds and progress


def test_kfold_plan_is_stratified_and_grouped() -> None:
    _, labels, _, groups = clusters(n=300, separation=8.0, seed=4)
    plan = plan_probe(labels, None, groups, ProbeConfig(folds=3, seeds=1))
    assert len(plan.parts) == 1 and len(plan.parts[0]) == 3
    tested = np.sort(np.concatenate([test for _, _, test in plan.parts[0]]))
    assert tested.tolist() == list(range(300))
    for train, valid, test in plan.parts[0]:
        assert sorted(np.concatenate([train, valid, test]).tolist()) == list(range(300))
        for a, b in ((train, test), (train, valid), (valid, test)):
            assert not {groups[i] for i in a} & {groups[i] for i in b}
        for part in (train, test):
            assert set(plan.target[part].tolist()) == {0, 1, 2, 3}


def test_each_seed_of_a_kfold_probe_draws_its_own_fold_assignment() -> None:
    _, labels, _, groups = clusters(n=300, separation=8.0, seed=4)
    plan = plan_probe(labels, None, groups, ProbeConfig(folds=3, seeds=3, split_seed=5))
    assert len(plan.parts) == 3
    test_sets = []
    for folds in plan.parts:  # every seed: a whole cross-validation, each clip tested once
        tested = np.sort(np.concatenate([test for _, _, test in folds]))
        assert tested.tolist() == list(range(300))
        test_sets.append({frozenset(groups[i] for i in test) for _, _, test in folds})
    assert test_sets[0] != test_sets[1] != test_sets[2] != test_sets[0]
    # seed s is the assignment of split_seed + s: a probe with one seed from split_seed 6
    # tests on seed 1's folds
    shifted = plan_probe(labels, None, groups, ProbeConfig(folds=3, seeds=1, split_seed=6))
    for (a, b, c), (x, y, z) in zip(plan.parts[1], shifted.parts[0], strict=True):
        assert np.array_equal(a, x) and np.array_equal(b, y) and np.array_equal(c, z)


def test_the_store_splits_are_the_same_for_every_seed() -> None:
    _, labels, splits, groups = clusters(separation=8.0)
    plan = plan_probe(labels, splits, groups, ProbeConfig(seeds=3))
    assert len(plan.parts) == 3 and all(len(p) == 1 for p in plan.parts)
    for part in plan.parts[1:]:
        for a, b in zip(part[0], plan.parts[0][0], strict=True):
            assert np.array_equal(a, b)


def test_progress_goes_to_stderr_once_per_fit_and_quiet_is_silent(
        capsys: pytest.CaptureFixture[str]) -> None:
    X, labels, _, groups = clusters(n=120, separation=8.0, seed=4)
    config = ProbeConfig(**{**FAST, "folds": 2, "seeds": 2, "epochs": 3})
    run_probe(X, labels, None, groups, config, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "probe" in err and "4/4" in err and "seed 1 fold 1" in err
    run_probe(X, labels, None, groups, config)
    assert capsys.readouterr() == ("", "")


def test_kfold_probe_reports_every_fold_and_their_mean() -> None:
    X, labels, _, groups = clusters(n=300, separation=8.0, seed=4)
    config = ProbeConfig(**{**FAST, "folds": 3, "seeds": 1, "epochs": 25})
    result = run_probe(X, labels, None, groups, config)
    assert result.folds == 3 and result.n_test == 300
    seed = result.per_seed[0]
    assert len(seed["folds"]) == 3
    assert sum(f["n_test"] for f in seed["folds"]) == 300
    for fold in seed["folds"]:
        assert fold["n_train"] + fold["n_valid"] + fold["n_test"] == 300
        assert fold["test"]["accuracy"] >= 0.95
    mean = np.mean([f["test"]["accuracy"] for f in seed["folds"]])
    assert seed["test"]["accuracy"] == pytest.approx(mean)
    assert np.sum(seed["test"]["confusion"]) == 300
    assert result.summary["accuracy"]["mean"] == pytest.approx(mean)
    assert 0.0 < result.majority["accuracy"] < 0.5


# --------------------------------------------------------------------------- tagging


def tags(n: int = 500, n_tags: int = 5, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Each tag present with probability 0.3; X = sum of the tags' directions + noise."""
    rng = np.random.default_rng(seed)
    Y = rng.random((n, n_tags)) < 0.3
    directions = 3.0 * rng.normal(size=(n_tags, 16)) / 4.0
    X = (Y @ directions + rng.normal(size=(n, 16))).astype(np.float32)
    names = [f"tag{k}" for k in range(n_tags)]
    labels = [";".join(name for name, on in zip(names, row, strict=True) if on) for row in Y]
    return X, labels


def test_tagging_on_synthetic_multilabel_data() -> None:
    X, labels = tags()
    assert any(";" in label for label in labels) and "" in labels
    splits = ["train"] * 300 + ["valid"] * 100 + ["test"] * 100
    result = run_probe(X, labels, splits, None, ProbeConfig(**FAST))
    assert result.task == "tagging" and result.metric == "roc_auc_macro"
    assert result.classes == [f"tag{k}" for k in range(5)]
    assert result.n_train + result.n_valid + result.n_test == 500  # untagged clips kept
    assert result.summary["roc_auc_macro"]["mean"] >= 0.9
    assert result.summary["pr_auc_macro"]["mean"] > result.majority["pr_auc_macro"] + 0.3
    assert result.majority["roc_auc_macro"] == pytest.approx(0.5)
    assert set(result.per_seed[0]["test"]["per_class"]) == set(result.classes)


def test_tagging_can_be_forced_on_single_tag_labels() -> None:
    X, labels, splits, groups = clusters(separation=8.0)
    result = run_probe(
        X, labels, splits, groups, ProbeConfig(**{**FAST, "seeds": 1, "task": "tagging"})
    )
    assert result.task == "tagging"
    assert result.summary["roc_auc_macro"]["mean"] >= 0.98


# --------------------------------------------------------------------------- bad input


def test_error_on_unlabeled_store() -> None:
    X, _, splits, groups = clusters(n=40)
    with pytest.raises(ValueError, match="no labels"):
        run_probe(X, [""] * 40, splits, groups, ProbeConfig(**FAST))


def test_error_on_a_single_class() -> None:
    X, _, splits, groups = clusters(n=40)
    with pytest.raises(ValueError, match="single class"):
        run_probe(X, ["rock"] * 40, splits, groups, ProbeConfig(**FAST))


def test_error_on_a_test_class_missing_from_train() -> None:
    X, labels, splits, groups = clusters(n=200)
    labels = [
        "newclass" if s == "test" and i % 2 else label
        for i, (label, s) in enumerate(zip(labels, splits, strict=True))
    ]
    with pytest.raises(ValueError, match=r"labels missing from a split.*newclass"):
        run_probe(X, labels, splits, groups, ProbeConfig(**FAST))


def test_error_on_nan_features() -> None:
    X, labels, splits, groups = clusters(n=40)
    X[7, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        run_probe(X, labels, splits, groups, ProbeConfig(**FAST))


def test_error_without_a_test_split_asks_for_folds() -> None:
    X, labels, _, groups = clusters(n=40)
    with pytest.raises(ValueError, match="folds"):
        run_probe(X, labels, ["train"] * 40, groups, ProbeConfig(**FAST))


def test_error_on_mismatched_or_unknown_input() -> None:
    X, labels, splits, groups = clusters(n=40)
    with pytest.raises(ValueError, match="39 labels for 40 clips"):
        run_probe(X, labels[:-1], splits, groups, ProbeConfig(**FAST))
    with pytest.raises(ValueError, match="unknown split"):
        run_probe(X, labels, ["holdout"] * 40, groups, ProbeConfig(**FAST))
    with pytest.raises(ValueError, match="task='classification'"):
        run_probe(
            X,
            ["a;b", *labels[1:]],
            splits,
            groups,
            ProbeConfig(**{**FAST, "task": "classification"}),
        )
    with pytest.raises(ValueError, match="classifier"):
        ProbeConfig(classifier="svm")
    with pytest.raises(ValueError, match="folds"):
        ProbeConfig(folds=1)
