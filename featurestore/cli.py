"""The ``featurestore`` command: thin wrappers over the Python API."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import click

from featurestore.audio import MIN_SAMPLE_RATE
from featurestore.errors import FeatureStoreError


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a FeatureStoreError into one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            # The reader went away (``featurestore info X | head``): not an error. Point
            # stdout at /dev/null so that the interpreter's final flush is quiet too.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except FeatureStoreError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except OSError as e:  # an unwritable output folder, a full disk, ...
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: finished shards are kept; run the same command to resume",
                       err=True)
            sys.exit(130)

    return wrapper


@click.group()
@click.version_option(package_name="featurestore")
def main() -> None:
    """Precompute music worker targets into memory-mappable HDF5 feature stores."""


@main.command()
@click.argument("source", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Store file (.h5).")
@click.option("--layout", default="auto", show_default=True,
              help="auto, folder, csv, gtzan, nsynth, mtat or fma.")
@click.option("--targets", default="default", show_default=True,
              help="'default', 'all' or comma-separated names (see 'featurestore targets').")
@click.option("--sample-rate", default=16000, show_default=True,
              type=click.IntRange(min=MIN_SAMPLE_RATE), help="Store sample rate (Hz).")
@click.option("--hop", default=160, show_default=True, type=click.IntRange(min=1),
              help="Samples per frame.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Local Dask worker processes [all cores].")
@click.option("--scheduler", help="Run on an existing Dask cluster (tcp://host:8786).")
@click.option("--worker-timeout", default=120.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait while no Dask worker is connected before giving up.")
@click.option("--partition-size", type=click.IntRange(min=1),
              help="Clips per task and shard [ceil(clips / 8), at most 16].")
@click.option("--max-seconds", default=600.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Longer files become several clips.")
@click.option("--min-seconds", default=0.5, show_default=True, type=click.FloatRange(min=0),
              help="Shorter files are skipped and recorded.")
@click.option("--hours-per-file", type=click.FloatRange(min=0, min_open=True),
              help="Write the corpus as several store files.")
@click.option("--strict", is_flag=True, help="Stop at the first unusable input.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def build(source: str, output: str, layout: str, targets: str, sample_rate: int, hop: int,
          workers: int | None, scheduler: str | None, worker_timeout: float,
          partition_size: int | None, max_seconds: float, min_seconds: float,
          hours_per_file: float | None, strict: bool, quiet: bool) -> None:
    """Build, extend or resume the store OUTPUT from SOURCE."""
    from featurestore.build import build as run_build

    report = run_build(
        source, output, layout=layout, targets=targets, sample_rate=sample_rate, hop=hop,
        workers=workers, scheduler=scheduler, worker_timeout=worker_timeout,
        partition_size=partition_size,
        max_seconds=max_seconds, min_seconds=min_seconds, hours_per_file=hours_per_file,
        strict=strict, progress=not quiet,
    )
    click.echo(report.summary())


@main.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def info(store: str, as_json: bool) -> None:
    """Summarise STORE: clips, hours, labels, splits, targets, size, errors."""
    from featurestore.store import format_bytes as _size
    from featurestore.store import format_hours, open_store, printable

    s = open_store(store)
    hours = s.seconds / 3600
    labels = Counter(lab for row in s.clips["label"] for lab in row.split(";") if lab)
    splits = Counter(s.clips["split"].tolist())
    targets = {}
    for name, x in s.targets.items():
        spec = s.specs[name]
        targets[name] = {"dim": spec.dim, "rate": spec.rate, "dtype": str(x.dtype),
                         "bytes": int(x.nbytes), "library": spec.library}
    file_bytes = s.path.stat().st_size
    summary = {
        "path": str(s.path), "clips": s.n_clips, "hours": hours, "sample_rate": s.sample_rate,
        "hop": s.hop, "bytes": file_bytes,
        "bytes_per_audio_hour": file_bytes / hours if hours else None,
        "waveform_bytes": int(s.waveform.nbytes), "labels": dict(labels.most_common()),
        "splits": dict(splits), "targets": targets, "n_errors": len(s.errors),
        "errors": [{"path": p, "reason": r} for p, r in s.errors],
        "schema_version": s.attrs.get("schema_version"), "created": s.attrs.get("created"),
        "source": s.attrs.get("source"),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{s.path}  (schema {summary['schema_version']}, created {summary['created']})")
    click.echo(f"source: {summary['source']}")
    click.echo(f"{s.n_clips} clips, {format_hours(s.seconds)} of audio at {s.sample_rate} Hz, "
               f"hop {s.hop} "
               f"({s.sample_rate / s.hop:g} frames/s)")
    per_hour = f", {_size(file_bytes / hours)} per audio-hour" if hours else ""
    click.echo(f"size {_size(file_bytes)}{per_hour}")
    split_text = ", ".join(f"{k or '(none)'} {v}" for k, v in sorted(splits.items()))
    click.echo(f"splits: {split_text}")
    if labels:
        shown = ", ".join(f"{k} {v}" for k, v in labels.most_common(12))
        more = f", ... ({len(labels)} labels)" if len(labels) > 12 else ""
        click.echo(f"labels: {shown}{more}")
    else:
        click.echo("labels: none (unlabeled)")
    click.echo(f"{'target':<12} {'dim':>5} {'rate':>6} {'dtype':>8} {'size':>10} "
               f"{'per hour':>10}  library")
    rows = [("waveform", 1, "sample", str(s.waveform.dtype), int(s.waveform.nbytes), "numpy")]
    rows += [(n, t["dim"], t["rate"], t["dtype"], t["bytes"], t["library"])
             for n, t in targets.items()]
    for name, dim, rate, dtype, nbytes, lib in rows:
        ph = _size(nbytes / hours) if hours else "-"
        click.echo(f"{name:<12} {dim:>5} {rate:>6} {dtype:>8} {_size(nbytes):>10} {ph:>10}  {lib}")
    click.echo(f"errors: {len(s.errors)}")
    for path, reason in s.errors[:20]:
        click.echo(printable(f"  {path}: {reason}"))
    if len(s.errors) > 20:
        click.echo(f"  ... and {len(s.errors) - 20} more")


@main.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path())
@click.option("--quick", is_flag=True,
              help="Skip the checksums: schema, clip table, sizes, statistics, NaN/Inf and "
                   "the set of files only.")
@_user_errors
def verify(stores: tuple[str, ...], quick: bool) -> None:
    """Check STORES end to end, every checksum included; exit non-zero on any problem.

    One line per problem on stderr, each starting with the store's path; "PATH: ok" on
    stdout for a sound store.
    """
    from featurestore.store import printable
    from featurestore.store import verify as run_verify

    bad = 0
    for path in stores:
        problems = run_verify(path, quick=quick)
        if problems:
            bad += 1
            for p in problems:
                click.echo(printable(f"{path}: {p}"), err=True)
        else:
            click.echo(printable(f"{path}: ok"))
    sys.exit(1 if bad else 0)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The declarations as JSON.")
def targets(as_json: bool) -> None:
    """List every target in the registry: dims, rate, library, parameters."""
    from featurestore.targets import REGISTRY

    specs = [cls.spec() for cls in REGISTRY.values()]
    if as_json:
        click.echo(json.dumps(specs, indent=2))
        return
    click.echo(f"{'name':<10} {'dim':>4} {'rate':>6} {'dtype':>8} {'library':>9} {'loss':>4} "
               f"{'default':>7}  description")
    for sp in specs:
        click.echo(f"{sp['name']:<10} {sp['dim']:>4} {sp['rate']:>6} {sp['dtype']:>8} "
                   f"{sp['library']:>9} {sp['loss']:>4} {'yes' if sp['default'] else '':>7}  "
                   f"{sp['description']}")
        click.echo(f"{'':<10} params: {json.dumps(sp['params'])}, deltas: {sp['deltas']}")


@main.command("demo-data")
@click.argument("out_dir", type=click.Path())
@click.option("--seed", default=0, show_default=True)
@click.option("--scale", default=1.0, show_default=True,
              help="Multiplies the number of clips (1.0: about 37 minutes of audio).")
@_user_errors
def demo_data(out_dir: str, seed: int, scale: float) -> None:
    """Render the embedded demo corpus into OUT_DIR as CSV sources (no network)."""
    from featurestore.demo import make_demo_data

    try:
        csvs = make_demo_data(out_dir, seed=seed, scale=scale)
    except (ImportError, ValueError, RuntimeError) as e:
        raise FeatureStoreError(str(e)) from None
    for name, path in csvs.items():
        click.echo(f"{name:<12} {path}")
    click.echo(f"build a store: featurestore build {csvs['instruments']} -o stores/instruments.h5")
