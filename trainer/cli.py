"""The ``trainer`` command (also ``python -m trainer``, which torchrun can launch)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from featurestore.errors import FeatureStoreError
from trainer.specs import SPEC_HELP, parse_spec

DEVICE_HELP = "auto (CUDA when torch sees one, else CPU), cpu, cuda or cuda:N."


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


def _preset_names() -> list[str]:
    from trainer.config import preset_names

    return preset_names()


def _config_default(name: str) -> str:
    """A PretrainConfig default as the help shows it (the options below default to None so
    that a preset and a config file can set them; the help shows what applies without)."""
    from trainer.config import PretrainConfig

    value = getattr(PretrainConfig(), name)
    return ",".join(value) if isinstance(value, list) else str(value)


def _registry(name: str) -> list[str]:
    if name == "encoder":
        from trainer.encoders import ENCODERS

        return sorted(ENCODERS)
    from trainer.weighting import WEIGHTINGS

    return sorted(WEIGHTINGS)


QUIET_HELP = "No progress bars."


def _demo_steps() -> list[tuple[str, int]]:
    from trainer.demo import DEMO_STEPS

    return list(DEMO_STEPS.items())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featurestore", prog_name="trainer")
def main() -> None:
    """Pre-train music encoders on feature stores, and evaluate them."""


@main.command()
@click.option("--preset", type=click.Choice(_preset_names()),
              help="A named recipe (trainer/presets/) as the base of the config.")
@click.option("--store", help="Training store(s): path, glob, or comma-separated list.")
@click.option("--valid-store", help="Held-out store(s) for validation losses and R².")
@click.option("--out", show_default=_config_default("out"), help="Run folder.")
@click.option("--encoder", type=click.Choice(_registry("encoder")),
              show_default=_config_default("encoder"), help="Encoder architecture.")
@click.option("--workers", show_default=_config_default("workers"),
              help="Worker heads: comma-separated target names, or 'default' / 'all'.")
@click.option("--weighting", type=click.Choice(_registry("weighting")),
              show_default=_config_default("weighting"), help="How the workers' losses "
              "are weighted.")
@click.option("--crop-seconds", type=float, show_default=_config_default("crop_seconds"))
@click.option("--batch-size", type=int, show_default=_config_default("batch_size"))
@click.option("--steps", type=int, show_default=_config_default("steps"))
@click.option("--lr", type=float, show_default=_config_default("lr"), help="Peak AdamW rate.")
@click.option("--warmup-steps", type=int, show_default=_config_default("warmup_steps"))
@click.option("--device", show_default=_config_default("device"), help=DEVICE_HELP)
@click.option("--cache", type=click.Choice(["none", "ram", "device"]),
              show_default=_config_default("cache"),
              help="Where the stores' arrays are held: memory maps, RAM or the device.")
@click.option("--no-distort", "distort", flag_value=False, default=None,
              help="Train on clean crops (no denoising objective).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile.")
@click.option("--seed", type=int, show_default=_config_default("seed"))
@click.option("--log-every", type=int, show_default=_config_default("log_every"))
@click.option("--eval-every", type=int, show_default=_config_default("eval_every"))
@click.option("--save-every", type=int, show_default=_config_default("save_every"))
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any config option (repeatable), e.g. --set weight_decay=0.05 "
                   "--set encoder_kwargs.dim=256; values are TOML.")
@click.option("--config", "config_file", type=click.Path(), help="TOML or YAML config file.")
@click.option("--resume", "resume_dir", type=click.Path(),
              help="Continue the run in this folder exactly where it stopped.")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
@_user_errors
def pretrain(config_file: str | None, resume_dir: str | None, quiet: bool, compile_: bool | None,
             preset: str | None, settings: tuple[str, ...], **options: Any) -> None:
    """Multi-task self-supervised pre-training of an encoder.

    Options come from the defaults, then --preset, then --config, then the command line
    (--set last). On a CPU, start from --preset cpu-small."""
    from pathlib import Path

    from trainer.config import PretrainConfig, parse_settings, read_config_file, resolve_config
    from trainer.device import resolve_device
    from trainer.pretrain import pretrain as run

    if options["device"] is not None:
        resolve_device(options["device"])  # before any config, store or run folder is read
    options["compile"] = compile_
    if resume_dir is not None:
        if settings or preset or config_file:
            raise ValueError("--resume continues a run with its own config; only --steps and "
                             "--device may change (not --set, --preset or --config)")
        saved = Path(resume_dir) / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"{resume_dir}: no config.json: not a run folder")
        data = read_config_file(saved)
        # A resumed run may go on longer, or on another device; nothing else changes.
        data.update({k: v for k, v in options.items()
                     if v is not None and k in ("steps", "device")})
        data["out"] = resume_dir
        cfg = PretrainConfig.from_dict(data, str(saved))
        out = run(cfg, resume=True, progress=not quiet)
    else:
        cfg = resolve_config(config_file, options, preset=preset,
                             settings=parse_settings(settings))
        out = run(cfg, progress=not quiet)
    click.echo(f"encoder saved to {out / 'encoder.pt'}")


@main.command()
@click.option("--encoder", "spec", required=True,
              help="encoder.pt, random:<encoder name or encoder.pt>, mfcc-stats or "
                   "targets-stats.")
@click.option("--store", required=True, type=click.Path(), help="Store whose clips to embed.")
@click.option("--pooling", default="mean+std", show_default=True,
              type=click.Choice(["mean", "mean+std"]))
@click.option("--crop-seconds", default=10.0, show_default=True,
              help="Long clips are embedded in crops of this length, then pooled.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
@_user_errors
def embed(spec: str, store: str, pooling: str, crop_seconds: float, device: str,
          quiet: bool) -> None:
    """Compute (or find cached) clip embeddings of STORE, beside the store."""
    from trainer.device import resolve_device
    from trainer.embed import clip_embeddings

    dev = resolve_device(device)
    emb = clip_embeddings(spec, store, pooling=pooling, device=dev,
                          crop_seconds=crop_seconds, progress=not quiet)
    click.echo(f"{len(emb.ids)} clips x {emb.X.shape[1]} dims ({spec}, {pooling}); cached "
               f"under {store}.embeddings/")


@main.command()
@click.option("--encoder", "spec", required=True,
              help=SPEC_HELP + ".")
@click.option("--store", required=True, type=click.Path(), help="Labeled store.")
@click.option("--classifier", default="mlp", show_default=True,
              type=click.Choice(["linear", "mlp"]))
@click.option("--pooling", default="mean+std", show_default=True,
              type=click.Choice(["mean", "mean+std"]))
@click.option("--folds", type=int, help="Grouped k-fold instead of the store's splits.")
@click.option("--seeds", default=3, show_default=True)
@click.option("--task", default="auto", show_default=True,
              type=click.Choice(["auto", "classification", "tagging"]))
@click.option("--crop-seconds", type=float,
              help="Embedding crop length [10]; supervised: training crop length [2].")
@click.option("--steps", default=500, show_default=True,
              help="Training steps of a supervised:<encoder> baseline (only there).")
@click.option("--encoder-kwargs", "encoder_kwargs_json",
              help="JSON object of encoder constructor arguments, for supervised:<encoder> "
                   "and random:<encoder name>.")
@click.option("--init-seed", default=0, show_default=True,
              help="Initialisation seed of a random:<encoder> (probe several to see the "
                   "spread of random weights).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--out", required=True, type=click.Path(), help="Report folder.")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
@_user_errors
def probe(spec: str, store: str, classifier: str, pooling: str, folds: int | None, seeds: int,
          task: str, crop_seconds: float | None, steps: int, encoder_kwargs_json: str | None,
          init_seed: int, device: str, out: str, quiet: bool) -> None:
    """Probe a frozen encoder (or a baseline) on a labeled store and write a report.

    The device, the store's labels for the protocol and the encoder are checked before
    anything is embedded or trained."""
    import json
    from pathlib import Path

    from trainer.device import resolve_device
    from trainer.embed import clip_embeddings, load_embedder
    from trainer.evaluation import ProbeConfig, check_store, run_probe
    from trainer.report import write_report

    dev = resolve_device(device)
    parsed = parse_spec(spec)
    encoder_kwargs = None
    if encoder_kwargs_json is not None:
        try:
            encoder_kwargs = json.loads(encoder_kwargs_json)
        except json.JSONDecodeError as e:
            raise ValueError(f"--encoder-kwargs: not JSON ({e})") from None
        if not isinstance(encoder_kwargs, dict):
            raise ValueError("--encoder-kwargs: expected a JSON object")
        if not parsed.builds_encoder:
            raise ValueError("--encoder-kwargs applies to supervised:<encoder> and "
                             "random:<encoder> only")
    if init_seed != 0 and parsed.kind != "random":
        raise ValueError("--init-seed applies to random:<encoder> only")
    config = ProbeConfig(classifier=classifier, folds=folds, seeds=seeds, task=task,
                         device=str(dev))
    meta: dict[str, Any] = {"name": Path(out).name, "encoder": spec, "store": store,
                            "store_name": Path(store).stem}
    if parsed.kind == "supervised":
        from trainer.supervised import run_supervised

        encoder = parsed.target
        crop = 2.0 if crop_seconds is None else crop_seconds
        result = run_supervised(store, config, encoder=encoder, encoder_kwargs=encoder_kwargs,
                                steps=steps, crop_seconds=crop, device=dev,
                                progress=not quiet)
        meta.update(crop_seconds=crop, probe_config={
            "method": "supervised", "encoder": encoder, "encoder_kwargs": encoder_kwargs or {},
            "steps": steps, "crop_seconds": crop, "seeds": seeds, "task": task})
        embeddings = None
    else:
        crop = 10.0 if crop_seconds is None else crop_seconds
        check_store(store, config)  # the store opens and its labels suit the protocol
        embedder = load_embedder(spec, seed=init_seed, device=dev,
                                 encoder_kwargs=encoder_kwargs)
        emb = clip_embeddings(embedder, store, pooling=pooling, device=dev,
                              crop_seconds=crop, progress=not quiet)
        result = run_probe(emb.X, emb.labels, emb.splits, emb.groups, config,
                           progress=not quiet)
        meta.update(encoder_key=emb.key, pooling=pooling, crop_seconds=crop)
        if parsed.kind == "random":
            meta.update(init_seed=init_seed, encoder_kwargs=encoder_kwargs or {})
        embeddings = (emb.X, emb.labels)
    path = write_report(Path(out), result, meta=meta, embeddings=embeddings)
    click.echo((Path(out) / "summary.md").read_text())
    click.echo(f"report: {path}")


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), help="Also write the table to this Markdown file.")
@click.option("--per-seed", is_flag=True,
              help="One row per run, not one row per pre-training recipe (mean ± std over "
                   "pre-training seeds).")
@_user_errors
def compare(results: tuple[str, ...], out: str | None, per_seed: bool) -> None:
    """One table of every probe report (result.json files).

    Runs of one pre-training recipe that differ only in the pre-training seed become one
    row, mean ± std over pre-training seeds; the Spread column says which spread each ±
    is."""
    from pathlib import Path

    from trainer.report import compare as table

    text = table(list(results), group_seeds=not per_seed)
    click.echo(text)
    if out:
        Path(out).write_text(text + "\n")


@main.command()
@click.argument("sweep_file", type=click.Path())
@click.option("--out", type=click.Path(), help="Output folder [sweeps/<file stem>].")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--dry-run", is_flag=True, help="List the runs and probes, run nothing.")
@click.option("--runs", "pattern",
              help="Only the runs whose names match this glob, without the baselines (to "
                   "share a sweep between processes; a last pass without --runs probes "
                   "the baselines and writes the whole table).")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
@_user_errors
def sweep(sweep_file: str, out: str | None, device: str, dry_run: bool, pattern: str | None,
          quiet: bool) -> None:
    """Run a grid of pre-training runs and probes; resumable; ends with one table."""
    from trainer.device import resolve_device
    from trainer.sweep import load_sweep, probe_specs, run_sweep, select_runs

    dev = resolve_device(device)
    plan, folder = load_sweep(sweep_file, out)
    if dry_run:
        if pattern is not None:
            plan = select_runs(plan, pattern)
        for run in plan.runs:
            click.echo(f"run   {run.name}: {run.config.encoder}, workers "
                       f"{','.join(run.config.workers)}, {run.config.weighting}, "
                       f"{run.config.steps} steps")
        for name, spec in probe_specs(plan, folder):
            click.echo(f"probe {name}: {spec} on {', '.join(plan.probe_stores)}")
        return
    path = run_sweep(plan, folder, device=str(dev), progress=not quiet, runs=pattern)
    click.echo(path.read_text())
    click.echo(f"table: {path}")


@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path())
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--scale", default=1.0, show_default=True, help="Size of the demo corpus.")
@click.option("--steps", type=int, help="Pre-training steps [" + ", ".join(
    f"{n} on {dev.upper() if dev == 'cpu' else 'CUDA'}" for dev, n in _demo_steps()) + "].")
@click.option("--seeds", default=5, show_default=True, help="Probe seeds.")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the demo corpus and of pre-training (another --out per seed).")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
@_user_errors
def demo(out: str, device: str, scale: float, steps: int | None, seeds: int, seed: int,
         quiet: bool) -> None:
    """The main job end to end on the embedded demo corpus (no data needed)."""
    from trainer.demo import main_job

    main_job(out, device=device, scale=scale, steps=steps, seeds=seeds, seed=seed,
             progress=not quiet, echo=click.echo)
