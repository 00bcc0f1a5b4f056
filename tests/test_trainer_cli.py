"""The trainer command as a new user meets it: help, version, defaults, choices from the
registries, --set for any option, and what a long CPU run will cost."""

from __future__ import annotations

import io
import re
from importlib.metadata import version

import pytest
from click.testing import CliRunner

from trainer.cli import main
from trainer.config import PretrainConfig, parse_settings, resolve_config
from trainer.encoders import ENCODERS
from trainer.pretrain import _CpuCost
from trainer.weighting import WEIGHTINGS


def help_of(*command: str) -> str:
    result = CliRunner().invoke(main, [*command, "-h"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # click wraps lines


def test_dash_h_is_help_and_version_is_the_package_version() -> None:
    assert help_of().startswith("Usage: main [OPTIONS] COMMAND [ARGS]...")
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"trainer, version {version('featurestore')}\n"


def test_pretrain_help_shows_every_default_and_the_registries_choices() -> None:
    text = help_of("pretrain")
    d = PretrainConfig()
    for option, value in [("--out", d.out), ("--encoder", d.encoder), ("--lr", d.lr),
                          ("--steps", d.steps), ("--batch-size", d.batch_size),
                          ("--crop-seconds", d.crop_seconds), ("--weighting", d.weighting),
                          ("--warmup-steps", d.warmup_steps), ("--device", d.device),
                          ("--cache", d.cache), ("--seed", d.seed), ("--workers", "default")]:
        # (a default that presets and config files may replace is shown in parentheses)
        assert re.search(rf"{option} .*?\[default: \({re.escape(str(value))}\)\]", text), option
    assert f"[{'|'.join(sorted(ENCODERS))}]" in text
    assert f"[{'|'.join(sorted(WEIGHTINGS))}]" in text
    assert "--quiet No progress bars." in text


@pytest.mark.parametrize("command", ["embed", "probe", "sweep", "demo", "compare"])
def test_every_quiet_flag_says_what_it_does(command: str) -> None:
    text = help_of(command)
    assert "--quiet" not in text or "--quiet No progress bars." in text


def test_set_reads_toml_values_and_dotted_table_entries() -> None:
    assert parse_settings(["lr=3e-4", "distort=false", "workers=['mfcc', 'lim']",
                           "out=runs/a b", "encoder_kwargs.freq_pools=[2, 2]"]) == {
        "lr": 3e-4, "distort": False, "workers": ["mfcc", "lim"], "out": "runs/a b",
        "encoder_kwargs": {"freq_pools": [2, 2]}}


def test_set_comes_last_and_a_dotted_key_updates_the_preset_table() -> None:
    cfg = resolve_config(None, {"lr": 0.5}, preset="cpu-small",
                         settings=parse_settings(["lr=0.25", "encoder_kwargs.dim=256"]))
    assert cfg.lr == 0.25
    assert cfg.encoder_kwargs == {"n_mels": 80, "channels": [16, 32, 64, 128],
                                  "freq_pools": [2, 2, 2, 2], "dim": 256, "context_layers": 5}


@pytest.mark.parametrize(("pair", "message"), [
    ("lr", "expected key=value"),
    ("=3", "expected key=value"),
    ("stepz=3", r"unknown option 'stepz'; options: batch_size, cache,"),
    ("lr.x=3", r"lr is not a table option \(distortions, encoder_kwargs, weighting_kwargs\)"),
])
def test_a_bad_set_names_the_pair_and_the_reason(pair: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_settings([pair])
    result = CliRunner().invoke(main, ["pretrain", "--set", pair])
    assert result.exit_code == 1 and result.output.startswith(f"error: --set {pair!r}:")


def test_resume_refuses_options_that_would_change_the_run(tmp_path: object) -> None:
    result = CliRunner().invoke(main, ["pretrain", "--resume", "x", "--set", "lr=1"])
    assert result.exit_code == 1
    assert "only --steps and --device may change" in result.output


class _Bar:
    def __init__(self) -> None:
        self.out = io.StringIO()

    def write(self, text: str, file: object = None) -> None:
        self.out.write(text + "\n")


def test_a_long_cpu_run_says_its_cost_once_measured_on_its_own_steps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 130.0])  # step 1 at 100 s, step 4 at 130 s: 10 s a step
    monkeypatch.setattr("trainer.pretrain.time.perf_counter", lambda: next(clock))
    cfg = PretrainConfig(encoder="pase+", steps=1004, batch_size=128, crop_seconds=2.0)
    bar, cost = _Bar(), _CpuCost(first_step=0)
    for step in range(1, 8):
        cost.tick(step, cfg, bar)
    (line,) = bar.out.getvalue().splitlines()
    assert line.startswith("note: on the CPU this run takes 10.0 s a step (batch 128 x 2 s, "
                           "pase+), about 2.8 h for the 1000 steps left; peak memory so far ")
    assert line.endswith("GB. For a recipe sized for a CPU: --preset cpu-small.")


def test_a_short_cpu_run_says_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.3])
    monkeypatch.setattr("trainer.pretrain.time.perf_counter", lambda: next(clock))
    bar, cost = _Bar(), _CpuCost(first_step=0)
    for step in range(1, 8):
        cost.tick(step, PretrainConfig(steps=1000), bar)
    assert bar.out.getvalue() == ""
