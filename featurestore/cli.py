"""The ``featurestore`` command: thin wrappers over the Python API."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from featurestore.audio import MIN_SAMPLE_RATE
from featurestore.corpus.demo import demo_data
from featurestore.errors import FeatureStoreError
from featurestore.sources import LAYOUTS


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


CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


class _TargetsOption(click.Option):
    """``--targets``, whose help lists the registry's names (loaded only for the help)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from featurestore.targets import REGISTRY

        self.help = ("'default', 'all' or comma-separated names: "
                     f"{', '.join(REGISTRY)} (see 'featurestore targets').")
        return super().get_help_record(ctx)


def _deprecated_workers(ctx: click.Context, param: click.Parameter,
                        value: int | None) -> int | None:
    if value is not None:
        click.echo("warning: --workers is deprecated; use --processes (Dask worker processes)",
                   err=True)
    return value


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="featurestore")
def main() -> None:
    """Precompute music worker targets into memory-mappable HDF5 feature stores."""


@main.command()
@click.argument("source", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Store file (.h5).")
@click.option("--layout", default="auto", show_default=True,
              type=click.Choice(["auto", *LAYOUTS]),
              help="The data set's layout on disk (auto: detected).")
@click.option("--targets", default="default", cls=_TargetsOption)
@click.option("--sample-rate", default=16000, show_default=True,
              type=click.IntRange(min=MIN_SAMPLE_RATE), help="Store sample rate (Hz).")
@click.option("--hop", default=160, show_default=True, type=click.IntRange(min=1),
              help="Samples per frame.")
@click.option("--processes", type=click.IntRange(min=1), show_default="all cores",
              help="Local Dask worker processes (one single-threaded task each).")
@click.option("--workers", type=click.IntRange(min=1), hidden=True,
              callback=_deprecated_workers, help="Deprecated name of --processes.")
@click.option("--scheduler", show_default="a local cluster",
              help="Run on an existing Dask cluster (tcp://host:8786).")
@click.option("--shared-filesystem/--no-shared-filesystem", default=None,
              show_default="when every worker runs on this machine",
              help="Workers write their shards into the output's folder themselves (they must "
                   "see it at the same path); otherwise they send the arrays to this process.")
@click.option("--worker-timeout", default=120.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait while no Dask worker is connected before giving up.")
@click.option("--partition-size", type=click.IntRange(min=1),
              show_default="ceil(clips / 8), at most 16", help="Clips per task and shard.")
@click.option("--max-seconds", default=600.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Longer files become several clips.")
@click.option("--min-seconds", default=0.5, show_default=True, type=click.FloatRange(min=0),
              help="Shorter files are skipped and recorded.")
@click.option("--hours-per-file", type=click.FloatRange(min=0, min_open=True),
              show_default="one file",
              help="Write the corpus as several store files of about this many hours each.")
@click.option("--quantize/--no-quantize", default=None,
              show_default="as the existing store; a new one: float16",
              help="Store the frame-rate targets as 8-bit codes with a per-clip offset and "
                   "scale per dimension: about 45 % of the float16 store's size.")
@click.option("--strict", is_flag=True, help="Stop at the first unusable input.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def build(source: str, output: str, layout: str, targets: str, sample_rate: int, hop: int,
          processes: int | None, workers: int | None, scheduler: str | None,
          shared_filesystem: bool | None, worker_timeout: float, partition_size: int | None,
          max_seconds: float, min_seconds: float, hours_per_file: float | None,
          quantize: bool | None, strict: bool, quiet: bool) -> None:
    """Build, extend or resume the store OUTPUT from SOURCE."""
    from featurestore.build import build as run_build

    if processes is not None and workers is not None and processes != workers:
        raise click.UsageError("--workers is the old name of --processes: give one of them")
    report = run_build(
        source, output, layout=layout, targets=targets, sample_rate=sample_rate, hop=hop,
        workers=processes if processes is not None else workers, scheduler=scheduler,
        worker_timeout=worker_timeout,
        partition_size=partition_size,
        max_seconds=max_seconds, min_seconds=min_seconds, hours_per_file=hours_per_file,
        strict=strict, progress=not quiet, shared_filesystem=shared_filesystem,
        quantize=quantize,
    )
    click.echo(report.summary())


@main.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def info(store: str, as_json: bool) -> None:
    """Summarise STORE: clips, hours, labels, splits, targets, size, errors."""
    from featurestore.store import open_store

    s = open_store(store)
    click.echo(json.dumps(s.summary(), indent=2) if as_json else s.describe())


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

    specs = [cls.spec().to_dict() for cls in REGISTRY.values()]
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


main.add_command(demo_data)  # featurestore demo-data OUT: the embedded demo corpus
