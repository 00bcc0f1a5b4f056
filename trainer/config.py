"""Run configuration: one dataclass, filled from defaults, then a named preset, then a TOML
or YAML file, then the command line; the resolved config is saved in the run folder.

Presets are recipes found by measurement, shipped as TOML files in ``trainer/presets/``
(also reachable as ``experiments/presets/``): ``cpu-small`` for two CPU cores,
``gpu`` for one GPU. ``trainer pretrain --preset cpu-small --store ...`` or
``preset = "cpu-small"`` in a config file or a sweep's ``[pretrain]`` table.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PretrainConfig:
    """Everything a pre-training run needs; saved as ``config.json`` in the run folder.

    Parameters
    ----------
    store : list of str
        Training store file(s) (paths or glob patterns); several files open as one set.
    valid_store : list of str
        Held-out store file(s) for per-worker validation losses (optional).
    splits : list of str, optional
        Pre-train only on clips of these splits (``""`` is the unsplit part), e.g.
        ``["train", ""]`` to keep a labeled store's test clips out; default: every clip.
    out : str
        Run folder (checkpoints, logs, the final ``encoder.pt``).
    encoder : str
        ``pase+``, ``samplecnn`` or ``melcnn``; ``encoder_kwargs`` are passed to it.
    workers : list of str
        Target names of the store, ``waveform``, ``lim``, ``gim``, or ``default``
        (the store's default targets plus LIM and GIM) / ``all``.
    weighting : str
        ``equal``, ``fixed``, ``uncertainty``, ``dwa`` or ``gradnorm``;
        ``weighting_kwargs`` are passed to it (``weights`` for fixed, ``period`` and
        ``temperature`` for DWA, ``alpha`` for GradNorm); learned task weights
        (uncertainty, GradNorm) train at ``weighting_lr``.
    crop_seconds, batch_size, steps : float, int, int
        Crop length, global batch (split over DDP ranks) and number of optimiser steps.
    lr, weight_decay, warmup_steps, min_lr_ratio, grad_clip : float, float, int, float, float
        AdamW with linear warm-up then cosine decay to ``lr * min_lr_ratio``; gradient
        norm clipping.
    distort : bool
        The denoising objective: the encoder sees corrupted crops (``distortions`` holds
        overrides of :class:`trainer.distortions.DistortionConfig`).
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    compile : bool
        ``torch.compile`` the encoder.
    cache : str
        ``none`` (memory maps), ``ram`` or ``device`` (hold the store on the GPU).
    seed : int
        Every random draw is a function of (seed, step, rank).
    head_hidden : int
        Hidden width of the worker heads (0: linear regression heads; small heads make
        the encoder do the work).
    log_every, eval_every, save_every, valid_batches, prefetch, max_nan_steps : int
        Logging period, validation period and size, checkpoint period, batches kept
        ready, and how many consecutive non-finite steps stop the run. Every validation
        logs, besides each worker's loss, each regression worker's R²
        (:class:`trainer.diagnostics.R2Accumulator`).
    diagnostics : bool
        Learning diagnostics (on by default; they never change the training losses): at
        step 0 (the random initialisation), every ``eval_every`` steps and at the end,
        the effective rank and dead-channel fraction of mean+std-pooled embeddings of
        ``diag_clips`` fixed held-out crops (drawn once with the run's seed from the
        validation store, else the training store, and kept in the run folder as
        ``diagnostics_heldout.npz``), logged as ``kind: "diag"`` rows; the validation
        (with its R²) also runs at step 0; ``diagnostics.png`` plots them all.
    diag_clips : int
        Crops in the held-out batch (distinct clips when the store has enough).
    diag_dead_ratio : float
        A channel is dead when its variance over the held-out batch is at most this
        fraction of the median channel variance.
    probe_store : str, optional
        A small labeled (single-label) store to probe during pre-training: every
        ``probe_every`` steps (0: every ``eval_every``), at step 0 and at the end, its
        clips are embedded with the current encoder (mean+std pooling) and a logistic
        regression (standardised features, inverse regularisation ``probe_c``) is fit on
        its train split and scored on its valid split (else test), or grouped 5-fold
        when it has no such splits; the accuracy is logged as ``probe_accuracy``. Off by
        default; needs ``diagnostics``.
    probe_every : int
        Probe period in steps (0: ``eval_every``).
    probe_c : float
        Inverse L2 regularisation strength ``C`` of the probe's logistic regression.
    """

    store: list[str] = field(default_factory=list)
    valid_store: list[str] = field(default_factory=list)
    splits: list[str] | None = None
    out: str = "runs/pretrain"
    encoder: str = "pase+"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    workers: list[str] = field(default_factory=lambda: ["default"])
    weighting: str = "equal"
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    weighting_lr: float = 1e-2
    crop_seconds: float = 2.0
    batch_size: int = 128
    steps: int = 100_000
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.05
    grad_clip: float = 5.0
    distort: bool = True
    distortions: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    compile: bool = False
    cache: str = "none"
    seed: int = 0
    head_hidden: int = 256
    log_every: int = 10
    eval_every: int = 500
    save_every: int = 1000
    valid_batches: int = 8
    prefetch: int = 4
    max_nan_steps: int = 20
    diagnostics: bool = True
    diag_clips: int = 64
    diag_dead_ratio: float = 0.01
    probe_store: str | None = None
    probe_every: int = 0
    probe_c: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> PretrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}")
        return cls(**data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file; a ``[pretrain]``
    table is used when present, otherwise the top level."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such config file")
    if path.suffix == ".toml":
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: YAML configs need PyYAML (pip install pyyaml)") from None
        data = yaml.safe_load(path.read_text()) or {}
    elif path.suffix == ".json":
        data = json.loads(path.read_text())
    else:
        raise ValueError(f"{path}: config files are .toml, .yaml or .json")
    return dict(data.get("pretrain", data))


PRESETS = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def load_preset(name: str) -> dict[str, Any]:
    """The options of a named preset (a ``[pretrain]`` table of ``trainer/presets/``).

    Raises
    ------
    ValueError
        No preset of that name (the message lists the known ones).
    """
    path = PRESETS / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    return read_config_file(path)


def apply_preset(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` over the preset its ``preset`` key names (``data`` itself when none).

    Options of ``data`` replace the preset's whole (tables are not merged). When ``data``
    changes the encoder and gives no ``encoder_kwargs``, the preset's encoder arguments
    (which belong to its encoder) are dropped: the new encoder gets its own defaults.
    """
    data = dict(data)
    name = data.pop("preset", None)
    if name is None:
        return data
    base = load_preset(str(name))
    if "encoder" in data and data["encoder"] != base.get("encoder", PretrainConfig.encoder):
        base.pop("encoder_kwargs", None)
    return {**base, **data}


TABLE_OPTIONS = frozenset(f.name for f in dataclasses.fields(PretrainConfig)
                          if str(f.type).startswith("dict"))
"""Options that are tables (``encoder_kwargs``, ...): ``--set`` may set one entry."""


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs (``trainer pretrain --set``) as config options.

    A value is read as a TOML value when it is one (``3e-4``, ``true``, ``[2, 2]``,
    ``{dim = 256}``, ``"text"``), else kept as the plain string. A dotted key
    (``encoder_kwargs.dim=256``) sets one entry of a table option.

    Parameters
    ----------
    pairs : sequence of str
        ``key=value`` strings, applied in order.

    Returns
    -------
    dict
        Options by field name; a dotted key gives a dict under its field.

    Raises
    ------
    ValueError
        A pair without ``=``, or a key that is not a field of :class:`PretrainConfig`
        (or a dotted key on a field that is not a table).

    Examples
    --------
    >>> parse_settings(["lr=3e-4", "encoder_kwargs.dim=256", "out=runs/a"])
    {'lr': 0.0003, 'encoder_kwargs': {'dim': 256}, 'out': 'runs/a'}
    """
    fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected key=value")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        name, _, entry = key.partition(".")
        if name not in fields:
            raise ValueError(f"--set {pair!r}: unknown option {name!r}; options: "
                             f"{', '.join(sorted(fields))}")
        if entry:
            if name not in TABLE_OPTIONS:
                raise ValueError(f"--set {pair!r}: {name} is not a table option "
                                 f"({', '.join(sorted(TABLE_OPTIONS))})")
            out.setdefault(name, {})[entry] = value
        else:
            out[name] = value
    return out


def resolve_config(file: str | Path | None, overrides: dict[str, Any],
                   preset: str | None = None,
                   settings: dict[str, Any] | None = None) -> PretrainConfig:
    """Defaults, then the preset (``preset``, else the file's ``preset`` key), then
    ``file``, then the non-None ``overrides`` (the command line's options), then
    ``settings`` (:func:`parse_settings`; a dotted key's table updates the resolved table
    option entry by entry)."""
    data: dict[str, Any] = {}
    if file is not None:
        data.update(read_config_file(file))
    if preset is not None:
        data["preset"] = preset
    data.update({k: v for k, v in overrides.items() if v is not None})
    settings = settings or {}
    data.update({k: v for k, v in settings.items() if not isinstance(v, dict)})
    data = apply_preset(data)
    for key, table in settings.items():  # dotted keys: entries of the resolved table
        if isinstance(table, dict):
            data[key] = {**(data.get(key) or {}), **table}
    for key in ("store", "valid_store", "workers"):
        if isinstance(data.get(key), str):
            data[key] = [x.strip() for x in data[key].split(",") if x.strip()]
    return PretrainConfig.from_dict(data, str(file) if file else "command line")
