"""The probing protocol: a small classifier trained on frozen clip embeddings.

The field's protocol for judging a frozen encoder (HEAR, MARBLE; see DESIGN.md, 'Probing
protocol'): a linear layer or an MLP with one hidden layer of 512 (ReLU, dropout 0.2) is
trained on clip embeddings, its learning rate and weight decay are swept, the point with
the best validation score is kept, and only that model is scored on the test clips, once.
Everything is repeated for several seeds and reported as mean ± std, next to two
label-only figures: chance (the expected score of a guess drawn from the training label
prior) and the score of predicting the training prior for every clip (the majority
baseline). Under grouped folds a fold's test part often lacks the training majority class,
so the majority figure can fall far below chance; a probe is above the label-only
baselines only when it beats both.

Task
    ``"classification"`` (accuracy, macro-F1) or ``"tagging"`` (ROC-AUC and PR-AUC, macro
    over tags), from the labels (:mod:`trainer.evaluation.labels`).
Splits
    ``folds=None`` uses the store's ``train`` / ``valid`` / ``test`` splits; without
    ``valid`` clips, about ``valid_fraction`` of the train groups are set aside for
    validation. ``folds=K`` runs a grouped K-fold cross-validation over all labeled clips
    (:func:`trainer.evaluation.make_folds`: stratified by class for classification) with
    a grouped validation split carved out of every fold's train part; the figures of a
    seed are the mean over its folds. Seed ``s`` draws its own fold assignment (from
    ``split_seed + s``): the seeds are a repeated cross-validation, so that their mean
    does not hang on which groups happen to share a fold (on a few dozen groups that
    alone moves a figure by several points) and their spread includes it. The store's
    splits are the same for every seed, and their spread is that of training alone.
Training
    Features are z-scored with the training clips' statistics, and the whole grid is
    trained at once (:func:`trainer.evaluation.train_grid`).

>>> result = run_probe(X, labels, splits, groups, ProbeConfig(seeds=3))   # doctest: +SKIP
>>> result.summary["accuracy"]                                           # doctest: +SKIP
{'mean': 0.71, 'std': 0.012}
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from trainer.device import resolve_device
from trainer.evaluation.aggregate import (
    label_only_baseline,
    mean_or_none,
    mean_over_folds,
    summarise_seeds,
    to_plain,
)
from trainer.evaluation.grid import EpochCallback, grid_logits, train_grid
from trainer.evaluation.labels import encode_targets
from trainer.evaluation.metrics import (
    MAIN_METRIC,
    SCALAR_METRICS,
    chance_metrics,
    majority_metrics,
    task_metrics,
)
from trainer.evaluation.splits import (
    carve_valid,
    check_coverage,
    group_keys,
    make_folds,
    normalise_splits,
)

__all__ = [
    "CLASSIFIERS",
    "TASKS",
    "ProbeConfig",
    "ProbePlan",
    "ProbeResult",
    "check_store",
    "fit_split",
    "plan_probe",
    "run_probe",
]

TASKS = ("auto", "classification", "tagging")
CLASSIFIERS = ("linear", "mlp")


@dataclass
class ProbeConfig:
    """How to probe.

    Parameters
    ----------
    classifier : {"mlp", "linear"}
        ``"mlp"``: one hidden layer of ``hidden`` units, ReLU, dropout ``dropout`` (MARBLE's
        probe); ``"linear"``: logistic regression.
    lrs, weight_decays : tuple of float
        The grid swept for every seed (and fold).
    epochs : int
        Most epochs per grid point.
    patience : int
        Early stopping: training ends when no grid point has improved its validation score
        for this many epochs.
    batch_size : int
        Mini-batch size (a training set no larger than it is one full batch).
    hidden : int
        Hidden units of the MLP.
    dropout : float
        Dropout after the hidden layer of the MLP.
    seeds : int
        Repetitions with seeds ``0 .. seeds - 1`` (initial weights, dropout, batch order).
    folds : int, optional
        ``None``: the store's splits; ``K``: grouped K-fold cross-validation.
    valid_fraction : float
        Share of the training groups set aside for validation where a validation set is
        carved out of train.
    split_seed : int
        Seed of the folds (seed ``s`` of the probe uses ``split_seed + s``) and of
        validation sets carved out of train.
    task : {"auto", "classification", "tagging"}
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; checked on construction
        (:func:`trainer.device.resolve_device`).
    standardize : bool
        z-score the features with the training clips' mean and standard deviation.
    """

    classifier: str = "mlp"
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3)
    epochs: int = 200
    patience: int = 20
    batch_size: int = 256
    hidden: int = 512
    dropout: float = 0.2
    seeds: int = 3
    folds: int | None = None
    valid_fraction: float = 0.15
    split_seed: int = 0
    task: str = "auto"
    device: str = "cpu"
    standardize: bool = True

    def __post_init__(self) -> None:
        self.lrs = tuple(float(v) for v in self.lrs)
        self.weight_decays = tuple(float(v) for v in self.weight_decays)
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.lrs or min(self.lrs) <= 0:
            raise ValueError(f"lrs must be a non-empty tuple of positive numbers: {self.lrs}")
        if not self.weight_decays or min(self.weight_decays) < 0:
            raise ValueError(
                f"weight_decays must be a non-empty tuple of numbers >= 0: {self.weight_decays}"
            )
        for name in ("epochs", "patience", "batch_size", "hidden", "seeds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.folds is not None and int(self.folds) < 2:
            raise ValueError(f"folds must be None or >= 2, got {self.folds}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must lie in (0, 1), got {self.valid_fraction}")
        resolve_device(self.device, option="device")  # a DeviceError now, not after embedding


@dataclass
class ProbeResult:
    """What a probe found.

    Attributes
    ----------
    task : str
        ``"classification"`` or ``"tagging"``.
    classes : list of str
        Class (tag) names, the column order of every score matrix.
    metric : str
        The selection and main metric: ``"accuracy"`` or ``"roc_auc_macro"``.
    per_seed : list of dict
        One entry per seed: ``seed``; ``valid`` (the chosen model's validation score);
        ``test`` (a :func:`trainer.evaluation.task_metrics` dict). With the store's splits
        also ``chosen`` (``{"lr", "weight_decay", "epochs"}``, ``epochs`` = the epoch whose
        weights were kept) and ``grid`` (every grid point's best validation score, loss and
        epoch). With K folds instead ``folds``: one such entry (plus ``fold``, ``n_train``,
        ``n_valid``, ``n_test``) per fold; the seed's ``test`` is then the mean over folds
        (:func:`trainer.evaluation.mean_over_folds`) and ``valid`` the mean validation
        score.
    summary : dict
        Scalar test metric (and ``valid_<metric>``) -> ``{"mean", "std"}`` over seeds
        (:func:`trainer.evaluation.summarise_seeds`).
    majority : dict
        Test metrics of predicting the training prior for every clip (the majority class
        for classification; the mean over folds with K folds).
    chance : dict
        Expected test metrics (the scalar metrics of the task) of a guess that knows only
        the training label prior (:func:`trainer.evaluation.chance_metrics`); the mean over
        folds with K folds. Empty in results written before it existed.
    n_train, n_valid, n_test : int
        Clip counts; with K folds ``n_test`` counts every labeled clip (each is tested
        once) and ``n_train`` / ``n_valid`` are the mean per fold.
    folds : int or None
    config : dict
        The :class:`ProbeConfig` used, as a dict.
    """

    task: str
    classes: list[str]
    metric: str
    per_seed: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    majority: dict[str, Any]
    n_train: int
    n_valid: int
    n_test: int
    folds: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    chance: dict[str, Any] = field(default_factory=dict)

    def baseline(self, metric: str) -> float | None:
        """The label-only figure to beat for ``metric``
        (:func:`trainer.evaluation.label_only_baseline`)."""
        return label_only_baseline(self.chance, self.majority, metric)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready Python objects."""
        return to_plain(asdict(self))

    @classmethod
    def of_seeds(cls, task: str, classes: Sequence[str], per_seed: list[dict[str, Any]], *,
                 majority: dict[str, Any], chance: dict[str, Any], n_train: int,
                 n_valid: int, n_test: int, folds: int | None = None,
                 config: dict[str, Any] | None = None) -> ProbeResult:
        """A result from its per-seed records: the main metric follows from ``task`` and
        the summary (mean ± std over seeds) from ``per_seed``; values become plain data."""
        return cls(
            task=task, classes=list(classes), metric=MAIN_METRIC[task],
            per_seed=to_plain(per_seed), summary=summarise_seeds(task, per_seed),
            majority=to_plain(majority), chance=to_plain(chance), n_train=int(n_train),
            n_valid=int(n_valid), n_test=int(n_test), folds=folds,
            config=to_plain(config or {}),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        """Rebuild a result from :meth:`to_dict`'s output (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ProbePlan:
    """What a probe will train and test on, decided from the labels alone.

    Attributes
    ----------
    task : str
        ``"classification"`` or ``"tagging"``.
    keep : numpy.ndarray of int
        The clips that take part (indices into the input).
    target : numpy.ndarray
        Class indices ``(n_keep,)`` or a 0/1 tag matrix ``(n_keep, C)``.
    Y : numpy.ndarray of int64, shape (n_keep, C)
        One-hot classes or the tag matrix.
    classes : list of str
    parts : list of list of (train, valid, test)
        Per probe seed, index arrays into the kept clips: one triple for the store's
        splits (the same for every seed), one per fold with ``folds`` (each seed's own
        fold assignment).
    """

    task: str
    keep: np.ndarray
    target: np.ndarray
    Y: np.ndarray
    classes: list[str]
    parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]

    @property
    def distinct_parts(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each (train, valid, test) once: every fold of every seed, or the store's splits
        once (every seed shares them)."""
        seen = {id(part): part for seed_parts in self.parts for part in seed_parts}
        return list(seen.values())


def plan_probe(
    labels: Sequence[str],
    splits: Sequence[str] | None,
    groups: Sequence[str] | None,
    config: ProbeConfig | None = None,
) -> ProbePlan:
    """Everything :func:`run_probe` decides before it trains: task, classes and splits.

    Needs no features, so a store's labels can be checked before anything is embedded.

    Parameters
    ----------
    labels, splits, groups, config
        As in :func:`run_probe`.

    Returns
    -------
    ProbePlan

    Raises
    ------
    ValueError
        Mismatched lengths, no labels at all, tags with ``task="classification"``, a single
        class, an unknown split name, labels present in test (or valid) but absent from
        train, a missing train or test split without ``folds``, fewer groups than
        ``folds``, a validation set that cannot be carved out of train or cannot rank any
        tag.
    """
    config = config or ProbeConfig()
    n = len(labels)
    split_of = normalise_splits(None if config.folds else splits, n)
    keys = group_keys(groups, n)
    task, keep, target, Y, classes = encode_targets(labels, config.task)
    split_of, keys = split_of[keep], keys[keep]

    if config.folds is None:
        train, valid, test = (np.flatnonzero(split_of == s) for s in ("train", "valid", "test"))
        if not len(train) or not len(test):
            missing = "train" if not len(train) else "test"
            raise ValueError(
                f"no labeled {missing} clips in the splits; pass folds=K for a grouped "
                "K-fold cross-validation instead"
            )
        if not len(valid):
            train, valid = carve_valid(train, keys, Y, config.valid_fraction, config.split_seed)
        parts = [[(train, valid, test)]] * config.seeds
    else:
        strata = target if task == "classification" else None
        parts = []
        for seed in range(config.seeds):
            split_seed = config.split_seed + seed
            folds = []
            for train, test in make_folds(keys, config.folds, split_seed, y=strata):
                train, valid = carve_valid(train, keys, Y, config.valid_fraction, split_seed)
                folds.append((train, valid, test))
            parts.append(folds)

    plan = ProbePlan(task, keep, target, Y, list(classes), parts)
    for train, valid, test in plan.distinct_parts:
        check_coverage(Y, train, test, "test", classes)
        check_coverage(Y, train, valid, "valid", classes)
        if task == "tagging":
            pos = Y[valid].sum(axis=0)
            if not np.any((pos > 0) & (pos < len(valid))):
                raise ValueError(
                    "the validation clips have no tag with both positive and negative "
                    "clips, so no model can be selected on them"
                )
    return plan


def check_store(store_path: str | os.PathLike[str], config: ProbeConfig | None = None
                ) -> ProbePlan:
    """Open a store and plan its probe from the clip table, before anything is embedded.

    Parameters
    ----------
    store_path : path-like
        A labeled store.
    config : ProbeConfig, optional
        The protocol (``task``, ``folds``, ``valid_fraction``, ``split_seed``).

    Returns
    -------
    ProbePlan

    Raises
    ------
    featurestore.errors.FeatureStoreError
        No such store, or not a readable store.
    ValueError
        Whatever :func:`plan_probe` refuses, prefixed with the store's path: e.g.
        ``stores/x.h5: no labels: every clip is unlabeled (an unlabeled store?); a probe
        needs labels``.
    """
    from featurestore.store import open_store

    clips = open_store(store_path).clips
    labels, splits, groups = ([str(v) for v in clips[col].tolist()]
                              for col in ("label", "split", "group"))
    try:
        return plan_probe(labels, splits, groups, config)
    except ValueError as e:
        raise ValueError(f"{os.fspath(store_path)}: {e}") from None


def fit_split(
    X: np.ndarray,
    plan: ProbePlan,
    part: tuple[np.ndarray, np.ndarray, np.ndarray],
    config: ProbeConfig,
    seed: int,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Sweep the grid on one (train, valid, test) part and score the chosen model on test.

    Parameters
    ----------
    X : numpy.ndarray, shape (n_keep, D)
        Features of the plan's kept clips.
    plan : ProbePlan
    part : (train, valid, test)
        Index arrays into the kept clips, one of a seed's ``plan.parts``.
    config : ProbeConfig
    seed : int
    device : torch.device
    on_epoch : callable, optional
        Passed to :func:`trainer.evaluation.train_grid`.

    Returns
    -------
    dict
        ``chosen`` (``lr``, ``weight_decay``, ``epochs``), ``valid`` (its validation
        score), ``test`` (:func:`trainer.evaluation.task_metrics`), ``grid`` (every point).
    """
    train, valid, test = part
    target = plan.target
    if config.standardize:
        Xtr = X[train].astype(np.float64)
        mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)
        std[std < 1e-8] = 1.0
    else:
        mean, std = np.zeros(X.shape[1]), np.ones(X.shape[1])
    dtype = np.int64 if plan.task == "classification" else np.float32

    def features(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((X[idx] - mean) / std).astype(np.float32)).to(device)

    def targets(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(target[idx].astype(dtype)).to(device)

    fit = train_grid(features(train), targets(train), features(valid), targets(valid),
                     len(plan.classes), plan.task, config, seed, on_epoch)
    test_logits = grid_logits(fit.chosen_params(), features(test))[0].double().cpu().numpy()
    chosen = fit.record[fit.chosen]
    return {
        "chosen": {k: chosen[k] for k in ("lr", "weight_decay", "epochs")},
        "valid": chosen["valid"],
        "test": task_metrics(plan.task, target[test], test_logits, plan.classes),
        "grid": fit.record,
    }


class _Progress:
    """A tqdm bar over the (seed, fold) fits on stderr, its postfix updated every epoch."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, disable=not enabled, file=sys.stderr, unit="fit",
                        desc="probe", mininterval=1.0)
        self.where = ""

    def start(self, seed: int, fold: int | None) -> None:
        self.where = f"seed {seed}" + ("" if fold is None else f" fold {fold}")
        self.bar.set_postfix_str(self.where)

    def epoch(self, epoch: int, best_valid: float) -> None:
        self.bar.set_postfix_str(f"{self.where} epoch {epoch} best valid {best_valid:.3f}",
                                 refresh=False)
        self.bar.update(0)  # redraws at most once per mininterval

    def close(self) -> None:
        self.bar.close()


def run_probe(
    X: np.ndarray,
    labels: Sequence[str],
    splits: Sequence[str] | None,
    groups: Sequence[str] | None,
    config: ProbeConfig | None = None,
    *,
    progress: bool = False,
) -> ProbeResult:
    """Probe frozen clip embeddings: sweep, select on validation, score once on test.

    Parameters
    ----------
    X : numpy.ndarray, shape (n_clips, D)
        One embedding per clip.
    labels : sequence of str, length n_clips
        Per clip: a class, tags joined by ``';'``, or ``''`` (unlabeled / no tag).
    splits : sequence of str, optional
        Per clip: ``'train'``, ``'valid'`` (also ``'val'``, ``'validation'``, ``'dev'``),
        ``'test'`` or ``''`` (unused). Ignored (may be ``None``) with ``config.folds``.
    groups : sequence of str, optional
        Per clip: the group that must not straddle a split (artist, source file); ``''`` or
        ``None`` makes every such clip its own group.
    config : ProbeConfig, optional
    progress : bool
        A progress bar on stderr: one step per (seed, fold) fit, with the epoch and the
        best validation score so far.

    Returns
    -------
    ProbeResult

    Raises
    ------
    ValueError
        Mismatched lengths, NaN / Inf features, and whatever :func:`plan_probe` refuses.
    """
    config = config or ProbeConfig()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must have shape (n_clips, D), got {X.shape}")
    n = X.shape[0]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} clips")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"X must be numeric, got dtype {X.dtype}")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ValueError(
            f"features hold NaN or Inf in {int(bad.sum())} of {n} clips "
            f"(first: clip {int(np.flatnonzero(bad)[0])}); fix the embeddings first"
        )
    plan = plan_probe(labels, splits, groups, config)
    task, Y, target, classes, parts = plan.task, plan.Y, plan.target, plan.classes, plan.parts
    X = X[plan.keep]
    device = resolve_device(config.device)

    every = plan.distinct_parts
    majorities = [majority_metrics(task, Y[tr], target[te], classes) for tr, _, te in every]
    chances = [chance_metrics(task, Y[tr], target[te]) for tr, _, te in every]

    bar = _Progress(sum(len(seed_parts) for seed_parts in parts), progress)
    per_seed = []
    try:
        for seed in range(config.seeds):
            runs = []
            for f, part in enumerate(parts[seed]):
                bar.start(seed, None if config.folds is None else f)
                runs.append(fit_split(X, plan, part, config, seed, device, bar.epoch))
                bar.bar.update(1)
            if config.folds is None:
                per_seed.append({"seed": seed, **runs[0]})
                continue
            for f, (run, (tr, va, te)) in enumerate(zip(runs, parts[seed], strict=True)):
                run.update(fold=f, n_train=len(tr), n_valid=len(va), n_test=len(te))
            per_seed.append({
                "seed": seed,
                "valid": float(np.mean([r["valid"] for r in runs])),
                "test": mean_over_folds(task, [r["test"] for r in runs], classes),
                "folds": runs,
            })
    finally:
        bar.close()

    chance = {m: mean_or_none([c[m] for c in chances]) for m in SCALAR_METRICS[task]}
    if config.folds is None:
        majority = majorities[0]
        n_train, n_valid, n_test = (len(p) for p in parts[0][0])
    else:
        majority = mean_over_folds(task, majorities, classes)
        n_train = round(np.mean([len(p[0]) for p in every]))
        n_valid = round(np.mean([len(p[1]) for p in every]))
        n_test = sum(len(p[2]) for p in parts[0])

    return ProbeResult.of_seeds(task, classes, per_seed, majority=majority, chance=chance,
                                n_train=n_train, n_valid=n_valid, n_test=n_test,
                                folds=config.folds, config=asdict(config))
