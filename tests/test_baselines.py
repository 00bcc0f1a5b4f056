"""Honest baselines: the statistics of the store's default targets (``targets-stats``), and
chance levels that stay right under grouped folds."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from stores import build_store, tone_corpus

import featurestore
from trainer.cli import main as cli
from trainer.embed import (
    TARGETS_STATS_KEY,
    TargetsStatsEmbedder,
    cache_path,
    clip_embeddings,
    load_embedder,
)
from trainer.evaluation import (
    ProbeConfig,
    chance_classification,
    chance_tagging,
    classification_metrics,
    plan_probe,
    run_probe,
)
from trainer.sweep import Sweep, check_sweep

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# mfcc and onset are default frame-rate targets; tonnetz (frame) and tempo (clip) are not.
TARGETS = "mfcc,onset,tonnetz,tempo"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("baselines")
    source = tone_corpus(root / "audio", n_clips=24, seconds=0.73, seed=5)
    return build_store(source, root / "tones.h5", TARGETS)


def numpy_stats(store: featurestore.Store, i: int, names: list[str]) -> np.ndarray:
    """Mean then std (ddof=0) over the clip's frames of each target, straight from the
    store arrays."""
    start = int(store.clips["frame_offset"][i])
    stop = start + int(store.clips["n_frames"][i])
    x = np.concatenate([np.asarray(store.targets[n][start:stop], dtype=np.float64)
                        for n in names], axis=1)
    return np.concatenate([x.mean(axis=0), x.std(axis=0)])


# --------------------------------------------------------------------------- targets-stats


def test_targets_stats_is_mean_and_std_of_every_default_frame_target(store_path: Path) -> None:
    store = featurestore.open_store(store_path)
    assert {n for n, s in store.specs.items() if s.default} == {"mfcc", "onset"}
    dims = store.specs["mfcc"].dim + store.specs["onset"].dim
    emb = clip_embeddings("targets-stats", store_path, pooling="mean+std", device="cpu",
                          cache=False)
    assert emb.key == TARGETS_STATS_KEY
    assert emb.X.shape == (24, 2 * dims) and emb.X.dtype == np.float32
    assert TargetsStatsEmbedder().dim(store) == 2 * dims
    for i in range(24):
        expected = numpy_stats(store, i, ["mfcc", "onset"])  # sorted target names
        np.testing.assert_allclose(emb.X[i], expected, rtol=1e-5, atol=1e-5)
    mean = clip_embeddings("targets-stats", store_path, pooling="mean", device="cpu",
                           cache=False)
    np.testing.assert_array_equal(mean.X, emb.X[:, :dims])


def test_default_clip_rate_targets_are_appended_as_they_are(store_path: Path) -> None:
    store = featurestore.open_store(store_path)
    specs = dict(store.specs)
    specs["tempo"] = dataclasses.replace(specs["tempo"], default=True)
    tempo_default = dataclasses.replace(store, specs=specs)
    embedder = TargetsStatsEmbedder()
    assert embedder.targets_of(tempo_default) == (["mfcc", "onset"], ["tempo"])
    for i in range(24):
        row = embedder.pooled(tempo_default, i, "mean+std")
        assert row.shape == (embedder.dim(tempo_default),) == (2 * 61 + 1,)
        np.testing.assert_allclose(row[:-1], numpy_stats(store, i, ["mfcc", "onset"]),
                                   rtol=1e-5, atol=1e-5)
        assert row[-1] == np.float32(store.targets["tempo"][i, 0])


def test_targets_stats_is_cached_beside_the_store(store_path: Path) -> None:
    first = clip_embeddings("targets-stats", store_path, pooling="mean+std", device="cpu")
    path = cache_path(store_path, TARGETS_STATS_KEY, "mean+std", 10.0)
    assert path.exists()
    stamp = path.stat().st_mtime_ns
    again = clip_embeddings("targets-stats", store_path, pooling="mean+std", device="cpu")
    assert path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.X, again.X)


def test_targets_stats_without_default_targets_is_refused(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("nodefault")
    path = build_store(tone_corpus(root / "audio", n_clips=4, seconds=0.5), root / "t.h5",
                       "tonnetz")
    with pytest.raises(ValueError, match="no default target, which targets-stats embeds"):
        clip_embeddings("targets-stats", path, device="cpu", cache=False)


def test_targets_stats_through_the_cli_and_the_sweep_check(store_path: Path,
                                                          tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["embed", "--encoder", "targets-stats", "--store",
                              str(store_path), "--device", "cpu", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "24 clips x 122 dims (targets-stats, mean+std)" in out.output
    report = tmp_path / "report"
    out = runner.invoke(cli, ["probe", "--encoder", "targets-stats", "--store",
                              str(store_path), "--seeds", "1", "--classifier", "linear",
                              "--device", "cpu", "--out", str(report), "--quiet"])
    assert out.exit_code == 0, out.output
    result = json.loads((report / "result.json").read_text())
    assert result["meta"]["encoder"] == "targets-stats"
    assert set(result["chance"]) == {"accuracy", "macro_f1"}
    assert "| Accuracy |" in (report / "summary.md").read_text()
    assert isinstance(load_embedder("targets-stats"), TargetsStatsEmbedder)
    plan = Sweep(pretrain_stores=[str(store_path)], probe_stores={"t": str(store_path)},
                 runs=[], baselines=["targets-stats"])
    assert [s.name for s in check_sweep(plan, "cpu")] == ["t"]


def test_random_weights_probed_over_initialisation_seeds(store_path: Path,
                                                         tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["probe", "--encoder", "random:melcnn", "--store", str(store_path), "--seeds", "1",
            "--classifier", "linear", "--crop-seconds", "0.5", "--device", "cpu", "--quiet"]
    reports = []
    for seed in (0, 1):
        out = tmp_path / f"random-s{seed}"
        result = runner.invoke(cli, [*args, "--init-seed", str(seed), "--out", str(out)])
        assert result.exit_code == 0, result.output
        reports.append(json.loads((out / "result.json").read_text()))
    assert [r["meta"]["init_seed"] for r in reports] == [0, 1]
    assert [r["meta"]["encoder_kwargs"] for r in reports] == [{}, {}]
    assert reports[0]["meta"]["encoder_key"] != reports[1]["meta"]["encoder_key"]
    assert load_embedder("random:melcnn", seed=1).key == reports[1]["meta"]["encoder_key"]
    refused = runner.invoke(cli, ["probe", "--encoder", "mfcc-stats", "--store",
                                  str(store_path), "--init-seed", "1", "--out",
                                  str(tmp_path / "no")])
    assert refused.exit_code != 0
    assert "--init-seed applies to random:<encoder> only" in refused.output
    assert not (tmp_path / "no").exists()


# --------------------------------------------------------------------------- chance


def brute_force(prior: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Expected accuracy and macro-F1 over every possible guess, weighted by its
    probability under the prior."""
    n_classes = len(prior)
    acc = f1 = 0.0
    for guess in itertools.product(range(n_classes), repeat=len(y)):
        weight = float(np.prod(prior[list(guess)]))
        if weight == 0.0:
            continue
        scores = np.eye(n_classes)[list(guess)]
        m = classification_metrics(y, scores, [str(c) for c in range(n_classes)])
        acc += weight * m["accuracy"]
        f1 += weight * m["macro_f1"]
    return {"accuracy": acc, "macro_f1": f1}


def test_chance_accuracy_is_the_prior_product() -> None:
    prior = np.array([0.5, 0.3, 0.2])
    y = np.array([0, 1, 1, 2, 2, 2, 2, 2, 2, 2])
    assert chance_classification(prior, y)["accuracy"] == pytest.approx(
        0.5 * 0.1 + 0.3 * 0.2 + 0.2 * 0.7, abs=1e-15)


def test_chance_macro_f1_is_exact_when_every_class_is_in_test() -> None:
    prior = np.array([0.5, 0.3, 0.2])
    y = np.array([0, 1, 2, 2, 0, 1, 2])
    got = chance_classification(prior, y)
    want = brute_force(prior, y)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert got["macro_f1"] == pytest.approx(want["macro_f1"], abs=1e-12)


def test_chance_macro_f1_with_a_train_class_absent_from_test() -> None:
    prior = np.array([0.6, 0.25, 0.15])  # class 0 is the train majority, absent from test
    y = np.array([1, 2, 2, 1, 2, 1])
    got = chance_classification(prior, y, draws=20000)
    want = brute_force(prior, y)
    assert got["accuracy"] == pytest.approx(0.25 * 0.5 + 0.15 * 0.5, abs=1e-15)
    assert got["macro_f1"] == pytest.approx(want["macro_f1"], abs=3e-3)


def test_chance_of_tagging_is_half_and_the_positive_rate() -> None:
    Y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])  # tags 1 and 2 excluded
    assert chance_tagging(Y) == {"roc_auc_macro": 0.5, "pr_auc_macro": 0.5}
    Y = np.array([[1, 1], [0, 0], [0, 0], [0, 0]])
    assert chance_tagging(Y) == {"roc_auc_macro": 0.5, "pr_auc_macro": 0.25}


def test_grouped_folds_where_test_lacks_the_train_majority() -> None:
    # "a" (8 clips) sits in two groups of four; "b" and "c" are single clips. Stratified
    # grouped 3-fold spreads "b" and "c" over every fold, but the two "a" groups fill only
    # two folds, so fold 2 trains with "a" as its majority and tests none of it: the
    # majority figure of that fold is 0 %.
    labels = ["a"] * 8 + ["b", "c"] * 4
    groups = ["A1"] * 4 + ["A2"] * 4 + [f"s{i}" for i in range(8)]
    config = ProbeConfig(folds=3, seeds=1, classifier="linear", lrs=(1e-2,),
                         weight_decays=(0.0,), epochs=2, patience=1)
    plan = plan_probe(labels, None, groups, config)
    counts = [(np.bincount(plan.target[tr], minlength=3).tolist(),
               np.bincount(plan.target[te], minlength=3).tolist())
              for tr, _, te in plan.parts[0]]
    assert counts == [([4, 3, 2], [4, 1, 1]), ([4, 3, 2], [4, 1, 1]), ([8, 1, 2], [0, 2, 2])]
    X = np.random.default_rng(0).normal(size=(len(labels), 3))
    result = run_probe(X, labels, None, groups, config)
    # chance per fold: sum_c p_train(c) p_test(c); majority: the test share of the train
    # arg-max (class "a" in every fold)
    chance = [(4 * 4 + 3 * 1 + 2 * 1) / (9 * 6), (4 * 4 + 3 * 1 + 2 * 1) / (9 * 6),
              (8 * 0 + 1 * 2 + 2 * 2) / (11 * 4)]
    majority = [4 / 6, 4 / 6, 0 / 4]
    assert result.chance["accuracy"] == pytest.approx(np.mean(chance), abs=1e-12)
    assert result.majority["accuracy"] == pytest.approx(np.mean(majority), abs=1e-12)
    for (train, _, test), want in zip(plan.parts[0], chance, strict=True):
        prior = np.bincount(plan.target[train], minlength=3) / len(train)
        got = chance_classification(prior, plan.target[test])
        assert got["accuracy"] == pytest.approx(want, abs=1e-15)
    fold2 = chance_classification(np.array([0.8, 0.1, 0.1]), np.array([1, 1, 1, 2, 2]))
    assert fold2["accuracy"] == pytest.approx(0.1, abs=1e-15)
    assert result.baseline("accuracy") == max(result.chance["accuracy"],
                                              result.majority["accuracy"])
    assert set(result.chance) == {"accuracy", "macro_f1"}


def test_chance_on_the_store_splits_when_test_lacks_the_train_majority() -> None:
    labels = ["a"] * 6 + ["b"] * 2 + ["c"] * 2 + ["b", "c"] * 2 + ["a", "b", "c"] + ["b"] * 3 \
        + ["c"]
    splits = ["train"] * 10 + ["valid"] * 4 + ["valid"] * 3 + ["test"] * 4
    X = np.random.default_rng(1).normal(size=(len(labels), 2))
    config = ProbeConfig(seeds=1, classifier="linear", lrs=(1e-2,), weight_decays=(0.0,),
                         epochs=2, patience=1)
    result = run_probe(X, labels, splits, None, config)
    assert result.majority["accuracy"] == 0.0
    assert result.chance["accuracy"] == pytest.approx(0.6 * 0 + 0.2 * 0.75 + 0.2 * 0.25,
                                                      abs=1e-15)
    assert result.baseline("accuracy") == result.chance["accuracy"]
