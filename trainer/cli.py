"""The ``trainer`` command (also ``python -m trainer``, which torchrun can launch)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from featurestore.errors import FeatureStoreError


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Input problems become one line on stderr and exit status 1, not a traceback."""
    from trainer.pretrain import TrainingError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (FeatureStoreError, TrainingError, ValueError, FileNotFoundError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)

    return wrapper


@click.group()
def main() -> None:
    """Pre-train music encoders on feature stores, and evaluate them."""


@main.command()
@click.option("--store", help="Training store(s): path, glob, or comma-separated list.")
@click.option("--valid-store", help="Held-out store(s) for validation losses.")
@click.option("--out", help="Run folder.")
@click.option("--encoder", help="pase+, samplecnn or melcnn.")
@click.option("--workers", help="Comma-separated workers, or 'default' / 'all'.")
@click.option("--weighting", help="equal, fixed, uncertainty, dwa or gradnorm.")
@click.option("--crop-seconds", type=float)
@click.option("--batch-size", type=int)
@click.option("--steps", type=int)
@click.option("--lr", type=float)
@click.option("--warmup-steps", type=int)
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
@click.option("--cache", type=click.Choice(["none", "ram", "device"]))
@click.option("--no-distort", "distort", flag_value=False, default=None,
              help="Train on clean crops (no denoising objective).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile.")
@click.option("--seed", type=int)
@click.option("--log-every", type=int)
@click.option("--eval-every", type=int)
@click.option("--save-every", type=int)
@click.option("--config", "config_file", type=click.Path(), help="TOML or YAML config file.")
@click.option("--resume", "resume_dir", type=click.Path(),
              help="Continue the run in this folder exactly where it stopped.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def pretrain(config_file: str | None, resume_dir: str | None, quiet: bool, compile_: bool | None,
             **options: Any) -> None:
    """Multi-task self-supervised pre-training of an encoder."""
    from pathlib import Path

    from trainer.config import PretrainConfig, read_config_file, resolve_config
    from trainer.pretrain import pretrain as run

    options["compile"] = compile_
    if resume_dir is not None:
        saved = Path(resume_dir) / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"{resume_dir}: no config.json: not a run folder")
        data = read_config_file(saved)
        data.update({k: v for k, v in options.items() if v is not None and k == "steps"})
        data["out"] = resume_dir
        cfg = PretrainConfig.from_dict(data, str(saved))
        out = run(cfg, resume=True, progress=not quiet)
    else:
        cfg = resolve_config(config_file, options)
        out = run(cfg, progress=not quiet)
    click.echo(f"encoder saved to {out / 'encoder.pt'}")
