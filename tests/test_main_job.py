"""The main job (README's first command) end to end on a reduced schedule: the whole
demo corpus (the instrument test set then has 33 clips), 40 pre-training steps, 2 seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_main_job_beats_the_majority_class(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "demo", "--out", str(out), "--steps", "40",
         "--seeds", "2", "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    assert "| " in table and "pase-default-equal" in table and "mfcc-stats" in table
    assert "report:" in proc.stdout and "Pre-training" in proc.stdout
    for store in ("instruments", "composers"):
        for name in ("pase-default-equal", "mfcc-stats", "random-pase-default-equal"):
            result = json.loads((out / "reports" / name / store / "result.json").read_text())
            assert len(result["per_seed"]) == 2
    # Instrument families: 11 classes, a held-out test program per family.
    for name in ("pase-default-equal", "mfcc-stats"):
        result = json.loads((out / "reports" / name / "instruments" / "result.json").read_text())
        accuracy = result["summary"]["accuracy"]["mean"]
        assert accuracy > result["majority"]["accuracy"] + 0.1, (name, accuracy)
    verdict = (out / "verdict.md").read_text()
    assert verdict.count("Pre-training") == 2


def write_result(out: Path, name: str, store: str, mean: float, std: float,
                 chance: float, majority: float) -> None:
    folder = out / "reports" / name / store
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "task": "classification", "summary": {"accuracy": {"mean": mean, "std": std}},
        "chance": {"accuracy": chance}, "majority": {"accuracy": majority}}))


def test_the_verdict_compares_against_the_higher_of_chance_and_majority(
        tmp_path: Path) -> None:
    from trainer.demo import plain_words

    # grouped folds: the majority figure reads 0.0, chance is 0.2
    write_result(tmp_path, "pase-default-equal", "composers", 0.15, 0.01, 0.2, 0.0)
    write_result(tmp_path, "targets-stats", "composers", 0.30, 0.02, 0.2, 0.0)
    write_result(tmp_path, "pase-default-equal", "instruments", 0.50, 0.01, 0.09, 0.3)
    assert plain_words(tmp_path).splitlines() == [
        "composers: pre-trained 0.150 ± 0.010, default-target statistics 0.300 ± 0.020, "
        "chance 0.200, majority class 0.000 (accuracy, mean ± std over seeds). "
        "Pre-training is worse than default-target statistics, is below the label-only "
        "baseline (0.200, the higher of chance and majority).",
        "instruments: pre-trained 0.500 ± 0.010, chance 0.090, majority class 0.300 "
        "(accuracy, mean ± std over seeds). Pre-training beats the label-only baseline "
        "(0.300, the higher of chance and majority).",
    ]
