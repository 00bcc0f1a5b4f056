"""Sweeps: a grid of pre-training runs, each probed on labeled stores, with baselines,
ending with one comparison table. Every finished piece is kept and skipped on a rerun, so
an interrupted sweep resumes where it stopped.

A sweep file (TOML) names the stores, a base pre-training config, the probes and one or
more studies; each study is a grid whose every combination is one run::

    [stores]
    pretrain = ["stores/fma-*.h5"]         # pre-training data (labels unused)
    pretrain_splits = ["train", ""]        # optional: keep test clips out of pre-training
    probe = { gtzan = "stores/gtzan.h5" }  # name -> labeled store, or a table with
                                           # path and probe options: { path = ..., folds = 10 }

    [pretrain]                             # any PretrainConfig option, for every run,
    preset = "cpu-small"                   # over a named preset (optional)
    steps = 20000

    [probe]
    seeds = 3
    classifier = "mlp"
    pooling = "mean+std"
    baselines = ["mfcc-stats", "random"]   # "random" = each encoder with random weights;
                                           # "supervised:pase+" trains one from scratch
                                           # (supervised_steps, supervised_crop_seconds)

    [[study]]
    name = "weighting"
    encoder = ["pase+"]
    weighting = ["equal", "uncertainty", "dwa", "gradnorm"]
    workers = { all = ["default"] }        # name -> worker list
    seed = [0]

    [[study]]                              # any other PretrainConfig field: a list is one
    name = "lr"                            # more axis of the grid (named in the run name,
    lr = [3e-4, 1e-3]                      # "lr-pase+-default-equal-lr0.001-s0"), a scalar
    distort = false                        # a setting of the study; tables
    encoder_kwargs = { dim = 128 }         # (encoder_kwargs, ...) merge over [pretrain]'s
                                           # (not when the study changes the encoder)

Layout of the output folder: ``runs/<run>/`` (pre-training), ``reports/<run>/<store>/``
(probe reports), ``comparison.md``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import PretrainConfig, apply_preset
from trainer.specs import parse_spec

if TYPE_CHECKING:
    from trainer.evaluation import ProbeConfig


@dataclass
class Run:
    """One pre-training run of a sweep."""

    name: str
    config: PretrainConfig


@dataclass
class Sweep:
    """A parsed sweep file."""

    pretrain_stores: list[str]
    probe_stores: dict[str, str | dict[str, Any]]
    runs: list[Run]
    probe: dict[str, Any] = field(default_factory=dict)
    baselines: list[str] = field(default_factory=list)
    pretrain_splits: list[str] | None = None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.replace("+", "plus"))


#: The study axes that every run name spells out, in this order.
_NAMED_AXES = {"encoder", "workers", "weighting", "seed"}
#: Config fields a sweep sets itself (from [stores] and the output folder).
_NOT_A_STUDY_AXIS = {"store", "out", "splits"}


def _fmt(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value).lower()


def parse_sweep(data: dict[str, Any], out: Path, source: str = "sweep") -> Sweep:
    """Expand a sweep description (a parsed TOML document) into runs.

    Raises
    ------
    ValueError
        Missing sections, unknown options, or duplicate run names.
    """
    stores = data.get("stores", {})
    if not stores.get("pretrain") or not stores.get("probe"):
        raise ValueError(f"{source}: [stores] needs 'pretrain' (list) and 'probe' (table)")
    base = apply_preset(dict(data.get("pretrain", {})))
    probe = dict(data.get("probe", {}))
    baselines = [str(b) for b in probe.pop("baselines", [])]
    runs: list[Run] = []
    seen: set[str] = set()
    studies = data.get("study", [])
    if not studies:
        raise ValueError(f"{source}: no [[study]] tables")
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    for study in studies:
        unknown = set(study) - {"name"} - (fields - _NOT_A_STUDY_AXIS)
        if unknown:
            raise ValueError(f"{source}: study {study.get('name')!r}: unknown key(s) "
                             f"{', '.join(sorted(unknown))} (a study varies PretrainConfig "
                             f"fields other than {', '.join(sorted(_NOT_A_STUDY_AXIS))})")
        workers = study.get("workers", {"default": ["default"]})
        if isinstance(workers, list):
            workers = {"+".join(workers): workers}
        # Further axes: any other config field; a list is an axis, a scalar a setting.
        # Dict fields (encoder_kwargs, ...) are merged over the base's, never an axis.
        extra = {k: v for k, v in study.items() if k not in _NAMED_AXES | {"name"}}
        axes = {k: _as_list(v) for k, v in extra.items() if not isinstance(v, dict)}
        named_axes = [k for k, v in axes.items() if len(v) > 1]
        grid = itertools.product(
            _as_list(study.get("encoder", base.get("encoder", "pase+"))),
            list(workers.items()),
            _as_list(study.get("weighting", base.get("weighting", "equal"))),
            _as_list(study.get("seed", base.get("seed", 0))),
            *axes.values(),
        )
        for encoder, (wname, wlist), weighting, seed, *values in grid:
            setting = dict(zip(axes, values, strict=True))
            tail = "".join(f"-{k}{_fmt(setting[k])}" for k in named_axes)
            name = _slug(f"{study.get('name', 'study')}-{encoder}-{wname}-{weighting}{tail}"
                         f"-s{seed}")
            options = {**base, **setting, "encoder": encoder, "workers": list(wlist),
                       "weighting": weighting, "seed": seed,
                       "store": list(stores["pretrain"]), "out": str(out / "runs" / name)}
            if encoder != base.get("encoder", encoder):
                options.pop("encoder_kwargs", None)  # they belong to the base's encoder
            for key, value in extra.items():
                if isinstance(value, dict):
                    options[key] = {**options.get(key, {}), **value}
            identity = json.dumps({k: v for k, v in options.items() if k != "out"},
                                  sort_keys=True)
            if identity in seen:
                continue  # the same run requested by two studies is trained once
            seen.add(identity)
            runs.append(Run(name, PretrainConfig.from_dict(options, f"{source}: {name}")))
    return Sweep(
        pretrain_stores=list(stores["pretrain"]), probe_stores=dict(stores["probe"]),
        runs=runs, probe=probe, baselines=baselines,
        pretrain_splits=stores.get("pretrain_splits"),
    )


def load_sweep(path: str | Path, out: str | Path | None = None) -> tuple[Sweep, Path]:
    """Read a sweep file; the output folder defaults to ``sweeps/<file stem>``."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such sweep file")
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    out_dir = Path(out) if out is not None else Path(data.get("out", f"sweeps/{path.stem}"))
    return parse_sweep(data, out_dir, str(path)), out_dir


def probe_specs(sweep: Sweep, out: Path) -> Iterator[tuple[str, str]]:
    """(report name, embedder spec) of every probe: each run's encoder, then baselines."""
    for run in sweep.runs:
        yield run.name, str(out / "runs" / run.name / "encoder.pt")
    for baseline in sweep.baselines:
        if baseline == "random":
            seen: set[str] = set()
            for run in sweep.runs:
                key = json.dumps([run.config.encoder, run.config.encoder_kwargs], sort_keys=True)
                if key not in seen:  # one random baseline per architecture
                    seen.add(key)
                    yield (f"random-{run.name}",
                           "random:" + str(out / "runs" / run.name / "encoder.pt"))
        else:
            yield _slug(baseline), baseline


@dataclass
class ProbeStore:
    """One probe store of a sweep with its probe options, checked before any work."""

    name: str
    path: str
    config: ProbeConfig
    pooling: str = "mean+std"
    crop_seconds: float = 10.0
    supervised_steps: int = 500
    supervised_crop_seconds: float = 2.0

    def __post_init__(self) -> None:
        self.supervised_steps = int(self.supervised_steps)
        self.supervised_crop_seconds = float(self.supervised_crop_seconds)

    @classmethod
    def options(cls) -> set[str]:
        """The per-store options of a sweep's probe table that are not ProbeConfig's."""
        return {f.name for f in dataclasses.fields(cls)} - {"name", "path", "config"}


def check_sweep(sweep: Sweep, device: str = "auto") -> list[ProbeStore]:
    """Everything a sweep can check before its first step: devices, probe options, probe
    stores and their labels for the protocol, and the baselines.

    Parameters
    ----------
    sweep : Sweep
    device : str
        The device of runs and probes whose config says ``auto`` (or nothing).

    Returns
    -------
    list of ProbeStore
        The probe stores with their parsed options, in the sweep's order.

    Raises
    ------
    ValueError
        A device this machine lacks (:class:`trainer.device.DeviceError`), an unknown
        probe option, a probe store that does not open or whose labels do not suit the
        probe (:func:`trainer.evaluation.check_store`), an unknown baseline, or
        ``mfcc-stats`` on a store without ``mfcc`` (``targets-stats`` without a default
        target).
    """
    from featurestore.store import open_store
    from trainer.device import resolve_device
    from trainer.embed import EncoderEmbedder, load_embedder
    from trainer.evaluation import ProbeConfig, check_store

    resolve_device(device)
    for run in sweep.runs:
        resolve_device(run.config.device, option=f"run {run.name}: device")
    known = {f.name for f in dataclasses.fields(ProbeConfig)} | ProbeStore.options()
    stores = []
    for store_name, entry in sweep.probe_stores.items():
        # A probe store is a path, or a table with a path and its own probe options.
        options = {**sweep.probe, **(entry if isinstance(entry, dict) else {"path": entry})}
        if "path" not in options:
            raise ValueError(f"probe store {store_name!r}: no path")
        unknown = sorted(set(options) - known - {"path"})
        if unknown:
            raise ValueError(f"probe store {store_name!r}: unknown probe option(s) "
                             f"{', '.join(unknown)}")
        path = str(options.pop("path"))
        own = {k: options.pop(k) for k in ProbeStore.options() if k in options}
        try:
            config = ProbeConfig(**{**options, "device": options.get("device", device)})
        except ValueError as e:
            raise type(e)(f"probe store {store_name!r}: {e}") from None
        store = ProbeStore(store_name, path, config, **own)
        check_store(store.path, store.config)
        for baseline in sweep.baselines:
            if baseline == "random":
                continue
            if parse_spec(baseline).kind == "supervised":  # the encoder name is known
                continue
            embedder = load_embedder(baseline)
            if not isinstance(embedder, EncoderEmbedder):  # mfcc-stats, targets-stats
                embedder.check(open_store(store.path))
        stores.append(store)
    return stores


def select_runs(sweep: Sweep, pattern: str) -> Sweep:
    """The sweep restricted to the runs whose names match the glob ``pattern``, without
    its baselines: several processes (or machines sharing the folder) can each take a
    share of the runs; a last pass without a pattern probes the baselines and writes
    the whole table.

    Raises
    ------
    ValueError
        No run matches.
    """
    runs = [r for r in sweep.runs if fnmatch.fnmatchcase(r.name, pattern)]
    if not runs:
        raise ValueError(f"--runs {pattern!r} matches none of the sweep's runs: "
                         f"{', '.join(r.name for r in sweep.runs)}")
    return dataclasses.replace(sweep, runs=runs, baselines=[])


def run_sweep(sweep: Sweep, out: Path, *, device: str = "auto", progress: bool = True,
              echo: Callable[[str], None] = print, runs: str | None = None) -> Path:
    """Pre-train every run (resuming unfinished ones, skipping finished ones), probe every
    encoder and baseline on every probe store (skipping finished reports), and write
    ``comparison.md``. Returns its path.

    With ``runs`` (a glob), only the matching runs (:func:`select_runs`), and the table
    of their probes goes to ``comparison-<runs>.md``.

    :func:`check_sweep` runs first: a bad device, probe option, probe store or baseline
    is refused before anything is trained or written.
    """
    if runs is not None:
        sweep = select_runs(sweep, runs)
    from trainer.embed import clip_embeddings
    from trainer.encoder_file import ENCODER
    from trainer.evaluation import run_probe
    from trainer.pretrain import CHECKPOINT, pretrain
    from trainer.report import compare, write_report

    probe_stores = check_sweep(sweep, device)
    out.mkdir(parents=True, exist_ok=True)
    for k, run in enumerate(sweep.runs, 1):
        folder = Path(run.config.out)
        if (folder / ENCODER).exists():
            echo(f"[{k}/{len(sweep.runs)}] {run.name}: pre-trained already")
            continue
        if run.config.device == "auto":
            run.config.device = device
        if sweep.pretrain_splits is not None:
            run.config.splits = list(sweep.pretrain_splits)
        resume = (folder / CHECKPOINT).exists()
        echo(f"[{k}/{len(sweep.runs)}] {run.name}: {'resuming' if resume else 'pre-training'}"
             f" ({run.config.steps} steps)")
        pretrain(run.config, resume=resume, progress=progress)
    results = []
    for probe_store in probe_stores:
        store_name, store_path, config = probe_store.name, probe_store.path, probe_store.config
        pooling, crop_seconds = probe_store.pooling, probe_store.crop_seconds
        supervised_steps = probe_store.supervised_steps
        supervised_crop = probe_store.supervised_crop_seconds
        for name, spec in probe_specs(sweep, out):
            report_dir = out / "reports" / name / _slug(store_name)
            parsed = parse_spec(spec)
            if parsed.kind == "supervised" and config.folds is not None:
                echo(f"probe {name} on {store_name}: skipped (supervised training needs "
                     f"the store's splits, not {config.folds} folds)")
                continue
            results.append(report_dir / "result.json")
            if results[-1].exists():
                echo(f"probe {name} on {store_name}: done already")
                continue
            echo(f"probe {name} on {store_name}")
            if parsed.kind == "supervised":
                from trainer.supervised import run_supervised

                encoder = parsed.target
                # the architecture the sweep pre-trains under that name, else its defaults
                kwargs = next((dict(run.config.encoder_kwargs or {}) for run in sweep.runs
                               if run.config.encoder == encoder), {})
                result = run_supervised(store_path, config, encoder=encoder,
                                        encoder_kwargs=kwargs, steps=supervised_steps,
                                        crop_seconds=supervised_crop, device=device,
                                        progress=progress)
                write_report(report_dir, result, meta={
                    "name": name, "encoder": spec, "store": store_path,
                    "store_name": store_name, "crop_seconds": supervised_crop,
                    "probe_config": {"method": "supervised", "encoder": encoder,
                                     "encoder_kwargs": kwargs, "steps": supervised_steps,
                                     "crop_seconds": supervised_crop, "seeds": config.seeds,
                                     "task": config.task},
                }, embeddings=None)
                continue
            emb = clip_embeddings(spec, store_path, pooling=pooling, device=device,
                                  crop_seconds=crop_seconds, progress=progress)
            result = run_probe(emb.X, emb.labels, emb.splits, emb.groups, config,
                               progress=progress)
            write_report(report_dir, result, meta={
                "name": name, "encoder": spec, "encoder_key": emb.key, "store": store_path,
                "store_name": store_name, "pooling": pooling, "crop_seconds": crop_seconds,
            }, embeddings=(emb.X, emb.labels))
    table = compare(results)
    path = out / ("comparison.md" if runs is None else f"comparison-{_slug(runs)}.md")
    path.write_text(table + "\n")
    return path
