"""The main job (README's first command) end to end on a reduced schedule: the demo
corpus at 0.4 of its size (the instrument test set then has 33 clips), 40 pre-training
steps of the cpu-small recipe, 2 probe seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_the_main_job_beats_the_majority_class(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "demo", "--out", str(out), "--steps", "40",
         "--scale", "0.4", "--seeds", "2", "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    assert "| " in table and "cpu-small" in table and "mfcc-stats" in table
    assert "report:" in proc.stdout and "Pre-training" in proc.stdout
    config = json.loads((out / "runs" / "cpu-small" / "config.json").read_text())
    assert config["encoder"] == "melcnn" and config["steps"] == 40
    assert config["store"] == [str(out / "stores" / "pretrain.h5")]  # no probe task's clip
    for store in ("instruments", "composers"):
        for name in ("cpu-small", "mfcc-stats", "random-cpu-small", "targets-stats"):
            result = json.loads((out / "reports" / name / store / "result.json").read_text())
            assert len(result["per_seed"]) == 2
    # Instrument families: 11 classes, a held-out test program per family.
    for name in ("cpu-small", "mfcc-stats"):
        result = json.loads((out / "reports" / name / "instruments" / "result.json").read_text())
        accuracy = result["summary"]["accuracy"]["mean"]
        assert accuracy > result["majority"]["accuracy"] + 0.1, (name, accuracy)
    verdict = (out / "verdict.md").read_text()
    assert verdict.count("Pre-training helped") + verdict.count("Pre-training did not help") == 2
    assert verdict.count("instruments (accuracy, mean ± std over 2 probe seeds of one "
                         "pre-training run)") == 1
    assert verdict.count("composers (accuracy, mean ± std over 2 probe seeds, each its own "
                         "5-fold assignment, of one pre-training run)") == 1


def write_result(out: Path, name: str, store: str, mean: float, std: float,
                 chance: float, majority: float, folds: int | None = None) -> None:
    folder = out / "reports" / name / store
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "task": "classification", "summary": {"accuracy": {"mean": mean, "std": std}},
        "per_seed": [{}, {}, {}], "folds": folds,
        "chance": {"accuracy": chance}, "majority": {"accuracy": majority}}))


def test_the_verdict_says_whether_pre_training_helped(tmp_path: Path) -> None:
    from trainer.demo import plain_words

    # grouped folds: the majority figure reads 0.0, chance is 0.2
    write_result(tmp_path, "cpu-small", "composers", 0.15, 0.01, 0.2, 0.0, folds=5)
    write_result(tmp_path, "random-cpu-small", "composers", 0.16, 0.02, 0.2, 0.0, folds=5)
    write_result(tmp_path, "targets-stats", "composers", 0.30, 0.02, 0.2, 0.0, folds=5)
    write_result(tmp_path, "cpu-small", "instruments", 0.50, 0.01, 0.09, 0.3)
    write_result(tmp_path, "random-cpu-small", "instruments", 0.40, 0.02, 0.09, 0.3)
    write_result(tmp_path, "mfcc-stats", "instruments", 0.49, 0.01, 0.09, 0.3)
    assert plain_words(tmp_path, "cpu-small").splitlines() == [
        "composers (accuracy, mean ± std over 3 probe seeds, each its own 5-fold "
        "assignment, of one pre-training run): "
        "pre-trained 15.0 ± 1.0 %, random weights of the same network 16.0 ± 2.0 %, "
        "default-target statistics 30.0 ± 2.0 %, chance 20.0 %, majority class 0.0 %. "
        "Pre-training did not help measurably: -1.0 points against random weights of the "
        "same network, within the spread (3.0). It is 15.0 points below default-target "
        "statistics. It is not above the label-only floor (20.0 %, the higher of chance "
        "and majority).",
        "instruments (accuracy, mean ± std over 3 probe seeds of one pre-training run): "
        "pre-trained 50.0 ± 1.0 %, random weights of the same network 40.0 ± 2.0 %, "
        "MFCC statistics 49.0 ± 1.0 %, chance 9.0 %, majority class 30.0 %. "
        "Pre-training helped: +10.0 points over random weights of the same network, more "
        "than the spread (3.0). It is within the spread of MFCC statistics (+1.0 points).",
    ]


def test_a_folder_holding_another_demo_run_is_refused_before_anything_is_done(
        tmp_path: Path) -> None:
    from trainer.demo import main_job

    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps(
        {"seed": 0, "scale": 1.0, "preset": "cpu-small", "steps": 1000, "seeds": 5}))
    with pytest.raises(ValueError) as refused:
        main_job(out, device="cpu", seed=1, progress=False, echo=lambda s: None)
    assert str(refused.value) == (f"--out {out}: holds a demo run with seed 0 (asked 1); "
                                  "resume it with the same options, or use another --out")
    assert sorted(p.name for p in out.iterdir()) == ["demo.json"]
