"""The supervised-from-scratch baseline on tone stores labelled by pitch class."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from stores import NOTE_NAMES, TINY_PASE, build_store, tone_corpus

import featurestore
from trainer.evaluation import ProbeConfig, ProbeResult, classification_metrics, run_probe
from trainer.report import compare, load_result, write_report
from trainer.supervised import run_supervised, train_supervised

#: Smaller still, for the harness tests (a few steps per seed).
TINIER_PASE = {"channels": [8, 8, 16, 16, 16, 16, 16], "dim": 16, "rnn_hidden": 8,
               "sinc_filters": 8}
N_CLIPS = 48  # 8 per pitch class


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def relabel(source: Path, name: str,
            row: Callable[[int, dict[str, str]], dict[str, str] | None]) -> Path:
    """A copy of the tone corpus's CSV with rows rewritten by ``row(i, old_row)`` (rows
    for which it returns None are left out)."""
    with open(source, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = source.with_name(name)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        for i, r in enumerate(rows):
            new = row(i, dict(r))
            if new is not None:
                w.writerow(new)
    return out


def block_split(i: int) -> str:
    """Every pitch class in every split: blocks of six clips (one per class), five
    blocks train, one valid, two test."""
    return ("train", "train", "train", "train", "train", "valid", "test", "test")[i // 6]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("supervised")
    return tone_corpus(root / "audio", n_clips=N_CLIPS, seconds=1.5, seed=5)


@pytest.fixture(scope="module")
def store(source: Path) -> Path:
    csv_path = relabel(source, "split.csv", lambda i, r: {**r, "split": block_split(i)})
    return build_store(csv_path, source.parent.parent / "pitch.h5", "onset")


def test_beats_the_majority_class_on_test(store: Path) -> None:
    result = train_supervised(store, encoder="pase+", encoder_kwargs=TINY_PASE, steps=60,
                              batch_size=8, crop_seconds=0.5, lr=3e-3, seed=0, device="cpu")
    s = featurestore.open_store(store)
    test = [i for i in range(s.n_clips) if s.clips["split"][i] == "test"]
    truth = [s.clips["label"][i] for i in test]
    assert result.classes == sorted(NOTE_NAMES)
    assert result.test_ids == [s.clips["id"][i] for i in test]
    assert result.test_scores.shape == (12, 6) and result.test_scores.dtype == np.float32
    np.testing.assert_allclose(result.test_scores.sum(axis=1), 1.0, rtol=1e-5)
    assert np.isfinite(result.valid_loss) and 1 <= result.steps <= 60
    predicted = [result.classes[k] for k in result.test_scores.argmax(axis=1)]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    majority = Counter(truth).most_common(1)[0][1] / len(truth)
    assert accuracy > majority + 0.2, (accuracy, majority)


def test_multilabel_mode_runs(source: Path) -> None:
    def row(i: int, r: dict[str, str]) -> dict[str, str]:
        extra = "loud" if i % 4 < 2 else "soft"
        return {**r, "label": f"{r['label']};{extra}", "split": block_split(i)}

    store = build_store(relabel(source, "multi.csv", row), source.parent.parent / "multi.h5",
                        "onset")
    result = train_supervised(store, encoder_kwargs=TINY_PASE, steps=6, batch_size=4,
                              crop_seconds=0.5, device="cpu", eval_every=3)
    assert result.classes == sorted([*NOTE_NAMES, "loud", "soft"])
    assert result.test_scores.shape == (12, 8)
    assert ((result.test_scores >= 0) & (result.test_scores <= 1)).all()
    assert np.isfinite(result.valid_loss) and result.steps in (3, 6)
    with pytest.raises(ValueError, match="several labels"):
        train_supervised(store, encoder_kwargs=TINY_PASE, steps=1, crop_seconds=0.5,
                         device="cpu", multilabel=False)
    forced = train_supervised(store, encoder_kwargs=TINY_PASE, steps=2, batch_size=4,
                              crop_seconds=0.5, device="cpu", multilabel=True)
    assert forced.test_scores.shape == (12, 8)


def test_a_store_without_splits_is_refused(source: Path) -> None:
    csv_path = relabel(source, "nosplit.csv",
                       lambda i, r: {**r, "split": ""} if i < 8 else None)
    store = build_store(csv_path, source.parent.parent / "nosplit.h5", "onset")
    with pytest.raises(ValueError, match="no labelled clips in the 'train' split"):
        train_supervised(store, encoder_kwargs=TINY_PASE, steps=1, crop_seconds=0.5,
                         device="cpu")


# --------------------------------------------------------------------------- the harness


def tiny_run(store: Path, config: ProbeConfig) -> ProbeResult:
    return run_supervised(store, config, encoder="pase+", encoder_kwargs=TINIER_PASE, steps=4,
                          crop_seconds=0.5, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def two_seeds(store: Path) -> ProbeResult:
    return tiny_run(store, ProbeConfig(seeds=2))


def test_run_supervised_is_shaped_like_a_probe(store: Path, two_seeds: ProbeResult) -> None:
    result = two_seeds
    assert result.task == "classification" and result.metric == "accuracy"
    assert result.classes == sorted(NOTE_NAMES)
    assert (result.n_train, result.n_valid, result.n_test) == (30, 6, 12)
    assert result.folds is None
    assert [s["seed"] for s in result.per_seed] == [0, 1]
    for entry in result.per_seed:
        test = entry["test"]
        assert set(test) == {"accuracy", "macro_f1", "confusion", "per_class", "n"}
        assert test["n"] == 12 and np.sum(test["confusion"]) == 12
        assert set(test["per_class"]) == set(NOTE_NAMES)
        assert 0.0 <= entry["valid"] <= 1.0
        assert entry["valid_loss"] > 0 and 1 <= entry["step"] <= 4
    for metric in ("accuracy", "macro_f1"):
        values = [s["test"][metric] for s in result.per_seed]
        assert result.summary[metric]["mean"] == pytest.approx(np.mean(values))
        assert result.summary[metric]["std"] == pytest.approx(np.std(values, ddof=1))
    valid = [s["valid"] for s in result.per_seed]
    assert result.summary["valid_accuracy"]["mean"] == pytest.approx(np.mean(valid))
    assert json.loads(json.dumps(result.to_dict()))["per_seed"] == result.per_seed

    # seed 0 is train_supervised's seed-0 run, scored by the probe's metric function
    run = train_supervised(store, encoder="pase+", encoder_kwargs=TINIER_PASE, steps=4,
                           crop_seconds=0.5, device="cpu", batch_size=4, seed=0)
    s = featurestore.open_store(store)
    truth = [str(s.clips["label"][i]) for i in range(s.n_clips) if s.clips["split"][i] == "test"]
    expected = classification_metrics(np.array([run.classes.index(t) for t in truth]),
                                      run.test_scores, run.classes)
    assert result.per_seed[0]["test"] == expected

    # the majority baseline is run_probe's, on the same labels and splits
    labels = [str(x) for x in s.clips["label"].tolist()]
    splits = [str(x) for x in s.clips["split"].tolist()]
    X = np.random.default_rng(0).standard_normal((s.n_clips, 4))
    probe = run_probe(X, labels, splits, None,
                      ProbeConfig(seeds=1, classifier="linear", epochs=2, lrs=(1e-3,),
                                  weight_decays=(0.0,)))
    assert result.majority == probe.majority
    assert result.chance == probe.chance and result.chance["accuracy"] is not None
    assert (probe.n_train, probe.n_valid, probe.n_test) == (30, 6, 12)
    assert set(result.summary) == set(probe.summary)
    assert set(result.to_dict()) == set(probe.to_dict())


def test_run_supervised_reports_and_compares(store: Path, two_seeds: ProbeResult,
                                             tmp_path: Path) -> None:
    sup = write_report(tmp_path / "supervised", two_seeds, meta={
        "name": "supervised:pase+", "encoder": "supervised:pase+", "store": str(store),
        "store_name": "pitch"}, embeddings=None)
    for name in ("result.json", "summary.md", "confusion.png", "per_class.png"):
        assert (sup / name).exists(), name
    assert not (sup / "projection.png").exists()
    loaded, meta = load_result(sup)
    assert loaded.summary == two_seeds.summary and loaded.per_seed == two_seeds.per_seed
    assert meta["encoder"] == "supervised:pase+"
    summary = (sup / "summary.md").read_text()
    assert "supervised:pase+" in summary and "frozen embeddings" not in summary

    s = featurestore.open_store(store)
    X = np.random.default_rng(1).standard_normal((s.n_clips, 4))
    probe = run_probe(X, [str(x) for x in s.clips["label"].tolist()],
                      [str(x) for x in s.clips["split"].tolist()], None,
                      ProbeConfig(seeds=2, classifier="linear", epochs=2, lrs=(1e-3,),
                                  weight_decays=(0.0,)))
    noise = write_report(tmp_path / "noise", probe, meta={"name": "noise",
                                                         "store_name": "pitch"})
    table = compare([sup / "result.json", noise / "result.json"])
    rows = [line for line in table.splitlines() if "supervised:pase+" in line]
    assert len(rows) == 1
    mean = 100 * two_seeds.summary["accuracy"]["mean"]
    std = 100 * two_seeds.summary["accuracy"]["std"]
    assert f"{mean:.1f} ± {std:.1f}" in rows[0]
    assert f"{100 * two_seeds.majority['accuracy']:.1f} (Accuracy)" in rows[0]
    assert sum("| noise |" in line for line in table.splitlines()) == 1


def test_run_supervised_needs_the_store_splits(store: Path) -> None:
    with pytest.raises(ValueError, match="train/valid/test splits"):
        tiny_run(store, ProbeConfig(folds=3))


def test_run_supervised_tagging_keeps_untagged_clips(source: Path) -> None:
    """Tagging, like the probe: clips without any tag take part as all-negative clips."""

    def row(i: int, r: dict[str, str]) -> dict[str, str]:
        tags = "" if i % 6 == 5 else f"{r['label']};{'loud' if i % 4 < 2 else 'soft'}"
        return {**r, "label": tags, "split": block_split(i)}

    store = build_store(relabel(source, "tags.csv", row), source.parent.parent / "tags.h5",
                        "onset")
    result = tiny_run(store, ProbeConfig(seeds=1))
    assert result.task == "tagging" and result.metric == "roc_auc_macro"
    assert (result.n_train, result.n_valid, result.n_test) == (30, 6, 12)
    assert set(result.summary) == {"roc_auc_macro", "pr_auc_macro", "valid_roc_auc_macro"}
    test = result.per_seed[0]["test"]
    assert test["n"] == 12 and set(test["per_class"]) == set(result.classes)
    assert result.majority["roc_auc_macro"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="task='classification'"):
        tiny_run(store, ProbeConfig(seeds=1, task="classification"))


def test_cli_probe_supervised(store: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trainer.cli import main

    out = tmp_path / "cli-supervised"
    args = ["probe", "--encoder", "supervised:pase+", "--store", str(store), "--out", str(out),
            "--steps", "3", "--seeds", "2", "--crop-seconds", "0.5", "--device", "cpu",
            "--encoder-kwargs", json.dumps(TINIER_PASE), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
    data = json.loads((out / "result.json").read_text())
    assert data["meta"]["encoder"] == "supervised:pase+"
    assert data["meta"]["probe_config"]["steps"] == 3
    assert data["meta"]["probe_config"]["encoder_kwargs"] == TINIER_PASE
    assert len(data["per_seed"]) == 2 and all(s["step"] <= 3 for s in data["per_seed"])
    assert "| pitch | cli-supervised |" in compare([out])  # named by its folder, as probes are

    refused = CliRunner().invoke(main, [*args[:-1], "--folds", "3"])
    assert refused.exit_code == 1 and "splits" in refused.output
    bad = CliRunner().invoke(main, [*args[:-3], "--encoder-kwargs", "[1]"])
    assert bad.exit_code == 1 and "JSON object" in bad.output
