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
