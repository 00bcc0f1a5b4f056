"""Probe reports: result.json round-trip, summary, valid PNG figures, comparison tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.probe import ProbeConfig, ProbeResult, run_probe
from trainer.report import compare, load_result, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ProbeConfig(
    lrs=(1e-3, 1e-2), weight_decays=(0.0,), epochs=15, patience=5, hidden=32, seeds=2
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def classification() -> tuple[ProbeResult, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 240)
    X = np.eye(3)[y] @ rng.normal(size=(3, 12)) * 3 + rng.normal(size=(240, 12))
    labels = [["blues", "jazz", "rock"][k] for k in y]
    splits = ["train"] * 140 + ["valid"] * 50 + ["test"] * 50
    return run_probe(X, labels, splits, None, FAST), X, labels


@pytest.fixture(scope="module")
def tagging() -> tuple[ProbeResult, np.ndarray, list[str]]:
    rng = np.random.default_rng(1)
    Y = rng.random((240, 4)) < 0.35
    X = Y @ rng.normal(size=(4, 12)) * 2 + rng.normal(size=(240, 12))
    names = ["drums", "guitar", "piano", "vocal"]
    labels = [";".join(t for t, on in zip(names, row, strict=True) if on) for row in Y]
    splits = ["train"] * 140 + ["valid"] * 50 + ["test"] * 50
    return run_probe(X, labels, splits, None, FAST), X, labels


META = {
    "name": "pase+ equal",
    "encoder": "runs/pase/encoder.pt",
    "encoder_key": "ab12cd",
    "store": "stores/gtzan.h5",
    "store_hash": "ffee01",
    "store_created": "2026-01-01",
    "pooling": "mean",
}


def assert_png(path: Path, min_bytes: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) >= min_bytes, (path, len(data))
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 200 and height >= 200


def test_classification_report_files(tmp_path: Path, classification) -> None:
    result, X, labels = classification
    out = write_report(tmp_path / "run", result, meta=META, embeddings=(X, labels))
    assert out == tmp_path / "run"
    for name in ("result.json", "summary.md", "confusion.png", "per_class.png", "projection.png"):
        assert (out / name).is_file(), name
    for name in ("confusion.png", "per_class.png", "projection.png"):
        assert_png(out / name)
    summary = (out / "summary.md").read_text()
    assert "classification into 3 classes" in summary
    assert "140 train, 50 validation, 50 test" in summary
    mean = 100 * result.summary["accuracy"]["mean"]
    assert f"{mean:.1f} ±" in summary
    assert f"{100 * result.majority['accuracy']:.1f}" in summary
    assert "most frequent training class" in summary


def test_result_json_round_trips_with_every_seed(tmp_path: Path, classification) -> None:
    result, _, _ = classification
    write_report(tmp_path, result, meta=META)
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["meta"]["store_hash"] == "ffee01"
    assert data["meta"]["probe_config"]["lrs"] == [1e-3, 1e-2]
    assert data["task"] == "classification"  # the result's fields sit at the top level
    per_seed = data["per_seed"]
    assert len(per_seed) == 2
    for seed in per_seed:
        assert {"accuracy", "macro_f1", "confusion", "per_class"} <= set(seed["test"])
        assert set(seed["chosen"]) == {"lr", "weight_decay", "epochs"}
    assert set(data["summary"]) >= {"accuracy", "macro_f1"}
    assert "accuracy" in data["majority"]
    loaded, meta = load_result(tmp_path)
    assert loaded.to_dict() == result.to_dict()
    assert meta["name"] == "pase+ equal"
    assert not (tmp_path / "projection.png").exists()


def test_tagging_report_has_no_confusion(tmp_path: Path, tagging) -> None:
    result, X, labels = tagging
    write_report(tmp_path, result, meta={"name": "tagger"}, embeddings=(X, labels))
    assert not (tmp_path / "confusion.png").exists()
    assert_png(tmp_path / "per_class.png")
    assert_png(tmp_path / "projection.png")
    summary = (tmp_path / "summary.md").read_text()
    assert "tagging with 4 tags" in summary and "ROC-AUC" in summary and "PR-AUC" in summary


def test_projection_accepts_an_embeddings_object_and_tsne(tmp_path: Path, classification) -> None:
    result, X, labels = classification

    class Embeddings:
        def __init__(self) -> None:
            self.X, self.labels = X[:120], labels[:120]

    write_report(tmp_path, result, meta=META, embeddings=Embeddings(), projection="tsne")
    assert_png(tmp_path / "projection.png")


def fake_result(path: Path, name: str, store: str, task: str, main: float) -> Path:
    if task == "classification":
        summary = {
            "accuracy": {"mean": main, "std": 0.01},
            "macro_f1": {"mean": main - 0.05, "std": 0.02},
        }
        majority = {"accuracy": 0.1, "macro_f1": 0.02}
        metric = "accuracy"
    else:
        summary = {
            "roc_auc_macro": {"mean": main, "std": 0.004},
            "pr_auc_macro": {"mean": main / 2, "std": 0.01},
        }
        majority = {"roc_auc_macro": 0.5, "pr_auc_macro": 0.05}
        metric = "roc_auc_macro"
    result = ProbeResult(
        task=task,
        classes=["a", "b"],
        metric=metric,
        per_seed=[],
        summary=summary,
        majority=majority,
        n_train=8,
        n_valid=2,
        n_test=2,
    )
    path.mkdir(parents=True)
    (path / "result.json").write_text(
        json.dumps(
            {
                "format": "trainer-probe-result/1",
                "meta": {"name": name, "store": store},
                **result.to_dict(),
            }
        )
    )
    return path / "result.json"


def test_compare_orders_runs_by_main_metric(tmp_path: Path) -> None:
    worse = fake_result(tmp_path / "a", "melcnn", "stores/gtzan.h5", "classification", 0.712)
    better = fake_result(tmp_path / "b", "pase+", "stores/gtzan.h5", "classification", 0.834)
    table = compare([worse, better])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Store | Run | Accuracy (%) | Macro-F1 (%) | Majority")
    assert len(lines) == 4
    assert "pase+" in lines[2] and "83.4 ± 1.0" in lines[2] and "78.4 ± 2.0" in lines[2]
    assert "melcnn" in lines[3] and "71.2 ± 1.0" in lines[3]
    assert "10.0" in lines[2]
    assert table.index("pase+") < table.index("melcnn")


def test_compare_groups_by_store(tmp_path: Path) -> None:
    paths = [
        fake_result(tmp_path / "1", "melcnn", "stores/mtat.h5", "tagging", 0.85),
        fake_result(tmp_path / "2", "melcnn", "stores/gtzan.h5", "classification", 0.70),
        fake_result(tmp_path / "3", "pase+", "stores/mtat.h5", "tagging", 0.89),
        fake_result(tmp_path / "4", "pase+", "stores/gtzan.h5", "classification", 0.80),
    ]
    lines = compare(paths).strip().splitlines()
    assert "ROC-AUC (%)" in lines[0] and "Accuracy (%)" in lines[0]
    body = lines[2:]
    assert [line.split("|")[2].strip() for line in body] == ["pase+", "melcnn"] * 2
    assert body[0].split("|")[1].strip() == "stores/mtat.h5"
    assert body[1].split("|")[1].strip() == ""  # store named once per group
    assert body[2].split("|")[1].strip() == "stores/gtzan.h5"
    assert "89.0 ± 0.4" in body[0] and "—" in body[0]
