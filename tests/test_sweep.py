"""Sweeps: expansion of the grid, resumption after an interruption, the comparison table."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from stores import build_store, tone_corpus

import trainer.probe
from trainer.sweep import load_sweep, parse_sweep, probe_specs, run_sweep

REPO = Path(__file__).resolve().parents[1]


def sweep_text(store: Path) -> str:
    return f"""
[stores]
pretrain = ["{store}"]
pretrain_splits = ["train"]
probe = {{ tones = "{store}" }}

[pretrain]
steps = 4
batch_size = 8
crop_seconds = 0.5
warmup_steps = 1
device = "cpu"
log_every = 1
save_every = 2
[pretrain.encoder_kwargs]
channels = [8, 8, 16, 16, 16, 16, 16]
dim = 16
rnn_hidden = 8
sinc_filters = 8

[probe]
seeds = 1
classifier = "linear"
pooling = "mean"
epochs = 30
baselines = ["mfcc-stats", "random"]

[[study]]
name = "w"
weighting = ["equal", "dwa"]
workers = {{ small = ["mfcc", "lim"] }}

[[study]]
name = "again"
weighting = ["equal"]
workers = {{ small = ["mfcc", "lim"] }}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    return build_store(tone_corpus(root / "audio", n_clips=24, seconds=1.5), root / "t.h5",
                       "mfcc")


def test_the_paper_inspired_sweep_expands_to_its_studies() -> None:
    plan, out = load_sweep(REPO / "experiments" / "paper-inspired.toml")
    names = [r.name for r in plan.runs]
    assert out == Path("sweeps/paper-inspired")
    assert len(names) == len(set(names)) == 14 + 3 + 3 + 2  # single, sets, weighting, encoders
    assert {r.config.weighting for r in plan.runs} == {"equal", "uncertainty", "dwa",
                                                       "gradnorm"}
    assert {r.config.encoder for r in plan.runs} == {"pase+", "samplecnn", "melcnn"}
    assert set(plan.probe_stores) == {"gtzan", "nsynth", "mtat"}
    specs = [s for _, s in probe_specs(plan, out)]
    assert "mfcc-stats" in specs and sum(s.startswith("random:") for s in specs) == 3


def test_a_run_asked_for_twice_is_trained_once(tmp_path: Path, store: Path) -> None:
    plan = parse_sweep(tomllib.loads(sweep_text(store)), tmp_path)
    assert [r.name for r in plan.runs] == ["w-paseplus-small-equal-s0", "w-paseplus-small-dwa-s0"]


def test_unknown_study_keys_are_refused(tmp_path: Path, store: Path) -> None:
    data = tomllib.loads(sweep_text(store))
    data["study"][0]["weightings"] = ["equal"]
    with pytest.raises(ValueError, match="unknown key\\(s\\) weightings"):
        parse_sweep(data, tmp_path)


def test_an_interrupted_sweep_resumes_without_redoing_finished_work(
        tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan_file = tmp_path / "s.toml"
    plan_file.write_text(sweep_text(store))
    plan, out = load_sweep(plan_file, tmp_path / "out")
    real_probe = trainer.probe.run_probe
    calls = {"probe": 0}

    def probe_then_stop(*args: object, **kw: object) -> object:
        calls["probe"] += 1
        if calls["probe"] == 3:
            raise KeyboardInterrupt
        return real_probe(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer.probe, "run_probe", probe_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, out, device="cpu", progress=False, echo=lambda s: None)
    done = sorted(out.glob("reports/*/tones/result.json"))
    assert len(done) == 2
    stamps = {p: p.stat().st_mtime_ns for p in done}
    encoders = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/encoder.pt")}
    assert len(encoders) == 2

    monkeypatch.setattr(trainer.probe, "run_probe", real_probe)
    log: list[str] = []
    plan, out = load_sweep(plan_file, tmp_path / "out")
    table = run_sweep(plan, out, device="cpu", progress=False, echo=log.append)
    assert sum("pre-trained already" in line for line in log) == 2
    assert sum("done already" in line for line in log) == 2
    assert {p: p.stat().st_mtime_ns for p in done} == stamps
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/encoder.pt")} == encoders
    reports = sorted(out.glob("reports/*/tones/result.json"))
    assert [p.parent.parent.name for p in reports] == [
        "mfcc-stats", "random-w-paseplus-small-equal-s0", "w-paseplus-small-dwa-s0",
        "w-paseplus-small-equal-s0"]
    text = table.read_text()
    for name in ("mfcc-stats", "w-paseplus-small-dwa-s0", "w-paseplus-small-equal-s0"):
        assert name in text
