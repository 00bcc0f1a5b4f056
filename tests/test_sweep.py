"""Sweeps: expansion of the grid, resumption after an interruption, the comparison table."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from stores import build_store, tone_corpus

import trainer.evaluation
from trainer.sweep import load_sweep, parse_sweep, probe_specs, run_sweep, select_runs

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


def test_any_config_field_is_an_axis_of_a_study(tmp_path: Path, store: Path) -> None:
    data = tomllib.loads(sweep_text(store))
    data["study"] = [{"name": "r", "lr": [3e-4, 1e-3], "distort": [True, False],
                      "head_hidden": 0, "encoder_kwargs": {"dim": 8}}]
    plan = parse_sweep(data, tmp_path)
    assert [r.name for r in plan.runs] == [
        "r-paseplus-default-equal-lr0.0003-distorttrue-s0",
        "r-paseplus-default-equal-lr0.0003-distortfalse-s0",
        "r-paseplus-default-equal-lr0.001-distorttrue-s0",
        "r-paseplus-default-equal-lr0.001-distortfalse-s0",
    ]
    assert [(r.config.lr, r.config.distort) for r in plan.runs] == [
        (3e-4, True), (3e-4, False), (1e-3, True), (1e-3, False)]
    # a scalar is a setting of the study, a table merges over [pretrain]'s
    assert {r.config.head_hidden for r in plan.runs} == {0}
    assert plan.runs[0].config.encoder_kwargs == {"channels": [8, 8, 16, 16, 16, 16, 16],
                                                  "dim": 8, "rnn_hidden": 8, "sinc_filters": 8}
    assert plan.runs[0].config.steps == 4


def test_a_sweep_can_start_from_a_preset(tmp_path: Path, store: Path) -> None:
    from trainer.config import load_preset

    data = tomllib.loads(sweep_text(store))
    data["pretrain"] = {"preset": "cpu-small", "steps": 5}
    data["study"] = [{"name": "p", "head_hidden": [0, 256]},
                     {"name": "pase", "encoder": "pase+"}]
    runs = parse_sweep(data, tmp_path).runs
    preset = load_preset("cpu-small")
    assert [(r.config.encoder, r.config.head_hidden, r.config.steps) for r in runs] == [
        ("melcnn", 0, 5), ("melcnn", 256, 5), ("pase+", preset["head_hidden"], 5)]
    assert runs[0].config.encoder_kwargs == preset["encoder_kwargs"]
    assert runs[2].config.encoder_kwargs == {}  # the preset's belong to its encoder


def test_a_share_of_the_runs_without_the_baselines(tmp_path: Path, store: Path) -> None:
    plan = parse_sweep(tomllib.loads(sweep_text(store)), tmp_path)
    share = select_runs(plan, "*-dwa-*")
    assert [r.name for r in share.runs] == ["w-paseplus-small-dwa-s0"]
    assert share.baselines == [] and plan.baselines == ["mfcc-stats", "random"]
    with pytest.raises(ValueError, match="--runs 'x\\*' matches none of the sweep's runs: "
                                         "w-paseplus-small-equal-s0, w-paseplus-small-dwa-s0"):
        select_runs(plan, "x*")


@pytest.mark.parametrize("key", ["weightings", "store", "out"])
def test_unknown_study_keys_are_refused(key: str, tmp_path: Path, store: Path) -> None:
    data = tomllib.loads(sweep_text(store))
    data["study"][0][key] = ["equal"]
    with pytest.raises(ValueError, match=f"unknown key\\(s\\) {key}"):
        parse_sweep(data, tmp_path)


def test_an_interrupted_sweep_resumes_without_redoing_finished_work(
        tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan_file = tmp_path / "s.toml"
    plan_file.write_text(sweep_text(store))
    plan, out = load_sweep(plan_file, tmp_path / "out")
    real_probe = trainer.evaluation.run_probe
    calls = {"probe": 0}

    def probe_then_stop(*args: object, **kw: object) -> object:
        calls["probe"] += 1
        if calls["probe"] == 3:
            raise KeyboardInterrupt
        return real_probe(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer.evaluation, "run_probe", probe_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, out, device="cpu", progress=False, echo=lambda s: None)
    done = sorted(out.glob("reports/*/tones/result.json"))
    assert len(done) == 2
    stamps = {p: p.stat().st_mtime_ns for p in done}
    encoders = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/encoder.pt")}
    assert len(encoders) == 2

    monkeypatch.setattr(trainer.evaluation, "run_probe", real_probe)
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
