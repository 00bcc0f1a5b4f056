"""Figures over folds and seeds: fold means, seed summaries, label-only floors, JSON.

A probe's figures are first averaged over the folds of a seed (:func:`mean_over_folds`),
then summarised over seeds as mean ± std (:func:`summarise_seeds`). The supervised baseline
(:mod:`trainer.supervised`) builds the same records and calls the same functions.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trainer.evaluation.metrics import MAIN_METRIC, SCALAR_METRICS

__all__ = ["label_only_baseline", "mean_or_none", "mean_over_folds", "summarise_seeds",
           "to_plain"]


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not ``None``; ``None`` when there are none."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def mean_over_folds(
    task: str, runs: Sequence[Mapping[str, Any]], classes: Sequence[str]
) -> dict[str, Any]:
    """Average the metric dicts of several folds.

    Parameters
    ----------
    task : {"classification", "tagging"}
    runs : sequence of dict
        One :func:`trainer.evaluation.task_metrics` dict per fold.
    classes : sequence of str

    Returns
    -------
    dict
        The same keys: scalar and per-class figures averaged over the folds where they are
        defined, ``support``, ``confusion`` and ``n`` summed, ``excluded`` the tags
        excluded in any fold.
    """
    out: dict[str, Any] = {m: mean_or_none([r[m] for r in runs]) for m in SCALAR_METRICS[task]}
    per_class = {}
    for c in classes:
        entries = [r["per_class"][c] for r in runs]
        per_class[c] = {
            k: (sum(e[k] for e in entries) if k == "support"
                else mean_or_none([e[k] for e in entries]))
            for k in entries[0]
        }
    out["per_class"] = per_class
    if task == "classification":
        out["confusion"] = np.sum([r["confusion"] for r in runs], axis=0).tolist()
    else:
        excluded = {c for r in runs for c in r["excluded"]}
        out["excluded"] = [c for c in classes if c in excluded]
    out["n"] = int(sum(r["n"] for r in runs))
    return out


def summarise_seeds(
    task: str, per_seed: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """Mean and std (``ddof=1``; 0 for one seed) over seeds of every scalar figure.

    Parameters
    ----------
    task : {"classification", "tagging"}
    per_seed : sequence of dict
        Per seed: ``test`` (a metric dict) and ``valid`` (the selection score or ``None``).

    Returns
    -------
    dict
        Metric name (the task's scalar metrics and ``valid_<main metric>``) ->
        ``{"mean", "std"}``; a metric undefined in every seed is left out.
    """

    def stats(values: Sequence[float | None]) -> dict[str, float] | None:
        kept = np.array([v for v in values if v is not None], dtype=np.float64)
        if not len(kept):
            return None
        std = float(kept.std(ddof=1)) if len(kept) > 1 else 0.0
        return {"mean": float(kept.mean()), "std": std}

    out = {m: stats([s["test"][m] for s in per_seed]) for m in SCALAR_METRICS[task]}
    out[f"valid_{MAIN_METRIC[task]}"] = stats([s["valid"] for s in per_seed])
    return {k: v for k, v in out.items() if v is not None}


def label_only_baseline(chance: Mapping[str, Any], majority: Mapping[str, Any],
                        metric: str) -> float | None:
    """The label-only figure a probe must beat for ``metric``: the higher of chance and
    the majority baseline (``None`` when neither is known)."""
    values = [v for v in (chance.get(metric), majority.get(metric)) if v is not None]
    return max(values) if values else None


def to_plain(obj: Any) -> Any:
    """Plain JSON types, recursively: numpy scalars and arrays, tuples, paths and
    dataclasses become ints, floats, bools, lists, strings and dicts; a non-finite float
    becomes None (JSON has no NaN); anything else unknown becomes its ``str``. The one
    numpy-to-JSON conversion of the trainer (results, reports, recorded configs)."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_plain(dataclasses.asdict(obj))
    return str(obj)
