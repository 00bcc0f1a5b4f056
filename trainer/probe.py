"""The downstream probe: a small classifier trained on frozen clip embeddings.

This is the field's protocol for judging a frozen encoder (HEAR, MARBLE; see
``REFERENCE.md``): a linear layer or an MLP with one hidden layer of 512 (ReLU, dropout 0.2)
is trained on clip embeddings, its learning rate and weight decay are swept, the point
with the best validation score is kept, and only that model is scored on the test clips,
once. Everything is repeated for several seeds and reported as mean ± std, next to two
label-only figures: chance (the expected score of a guess drawn from the training label
prior, :func:`trainer.metrics.chance_classification`) and the score of predicting the
training prior for every clip (the majority-class baseline). Under grouped folds a fold's
test part often lacks the training majority class, so the majority figure can fall far
below chance; a probe is above the label-only baselines only when it beats both.

Protocol
--------
Task
    ``"classification"`` (one label per clip; accuracy, macro-F1) or ``"tagging"`` (labels
    ``"a;b;c"``; ROC-AUC and PR-AUC, macro over tags). ``"auto"`` picks tagging when any
    label holds a ``';'``. Unlabeled clips (``''``) are dropped for classification and kept
    as clips without any tag for tagging.
Splits
    ``folds=None`` uses the store's ``train`` / ``valid`` / ``test`` splits; without
    ``valid`` clips, about ``valid_fraction`` of the train groups are set aside for
    validation. ``folds=K`` runs a grouped K-fold cross-validation over all labeled clips
    (a group, e.g. an artist or the clips cut from one file, never straddles train and
    test; an empty group name makes a clip its own group) with a grouped validation split
    carved out of every fold's train part; the figures of a seed are the mean over folds.
    Splits depend on ``split_seed`` only, so the spread over seeds is the spread of
    training alone.
Training
    Features are z-scored with the training clips' statistics. Every (learning rate,
    weight decay) point of the grid is trained with AdamW (weight decay on the weights, not
    the biases) on mini-batches for at most ``epochs`` epochs; after every epoch the
    validation metric (accuracy, or macro ROC-AUC for tagging; on a tie, a validation loss
    lower by 0.1 % counts as progress) is measured and the best epoch's weights are kept,
    and training stops once no grid point has improved for ``patience`` epochs. All grid
    points of a seed start from the same initial weights, see the same mini-batches and
    dropout masks, and are trained together as one batched model (one batched matrix
    product per layer): a full sweep costs about one run's time on a GPU, and on a CPU the
    same arithmetic as separate runs without their per-step overhead.

>>> result = run_probe(X, labels, splits, groups, ProbeConfig(seeds=3))   # doctest: +SKIP
>>> result.summary["accuracy"]                                           # doctest: +SKIP
{'mean': 0.71, 'std': 0.012}
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.device import resolve_device
from trainer.metrics import (
    chance_classification,
    chance_tagging,
    classification_metrics,
    encode_labels,
    roc_auc,
    tagging_metrics,
)

__all__ = [
    "CLASSIFIERS",
    "TASKS",
    "ProbeConfig",
    "ProbePlan",
    "ProbeResult",
    "carve_valid",
    "check_store",
    "make_folds",
    "plan_probe",
    "run_probe",
]

TASKS = ("auto", "classification", "tagging")
CLASSIFIERS = ("linear", "mlp")
#: The metric that selects the model, per task (and the main metric of reports).
MAIN_METRIC = {"classification": "accuracy", "tagging": "roc_auc_macro"}
#: The scalar test metrics summarised over seeds, per task.
SCALAR_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "tagging": ("roc_auc_macro", "pr_auc_macro"),
}
_SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "dev": "valid",
    "test": "test",
    "": "",
}
_EVAL_CHUNK = 4096  # rows per forward pass when scoring validation / test clips
#: A tie on the validation metric counts as progress only if the validation loss falls by
#: this relative amount (else separable data would never stop early).
_LOSS_MIN_DELTA = 1e-3


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
        Seed of the folds and of carved validation sets.
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


def label_only_baseline(chance: dict[str, Any], majority: dict[str, Any],
                        metric: str) -> float | None:
    """The label-only figure a probe must beat for ``metric``: the higher of chance and
    the majority baseline (``None`` when neither is known)."""
    values = [v for v in (chance.get(metric), majority.get(metric)) if v is not None]
    return max(values) if values else None


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
        ``test`` (the metrics dict of :func:`trainer.metrics.classification_metrics` or
        :func:`trainer.metrics.tagging_metrics`). With the store's splits also ``chosen``
        (``{"lr", "weight_decay", "epochs"}``, ``epochs`` = the epoch whose weights were
        kept) and ``grid`` (every grid point's best validation score, loss and epoch).
        With K folds instead ``folds``: one such entry (plus ``fold``, ``n_train``,
        ``n_valid``, ``n_test``) per fold; the seed's ``test`` is then the mean over folds
        (scalar and per-class figures averaged, confusion counts summed) and ``valid`` the
        mean validation score.
    summary : dict
        Scalar test metric (and ``valid_<metric>``) -> ``{"mean", "std"}`` over seeds (std
        with ``ddof=1``; 0 for one seed).
    majority : dict
        Test metrics of predicting the training prior for every clip (the majority class
        for classification; the mean over folds with K folds).
    chance : dict
        Expected test metrics (the scalar metrics of the task) of a guess that knows only
        the training label prior: :func:`trainer.metrics.chance_classification` (a class
        drawn from the prior for every clip) or :func:`trainer.metrics.chance_tagging`
        (ROC-AUC 0.5, PR-AUC the test positive rate); the mean over folds with K folds.
        Empty in results written before it existed.
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
        """The label-only figure to beat for ``metric`` (:func:`label_only_baseline`)."""
        return label_only_baseline(self.chance, self.majority, metric)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready Python objects."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        """Rebuild a result from :meth:`to_dict`'s output (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------- splits


def _group_keys(groups: Sequence[str] | None, n: int) -> np.ndarray:
    """Group names with every empty (or missing) group replaced by a name of its own."""
    if groups is None:
        groups = [""] * n
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} clips")
    keys = [str(g) for g in groups]
    return np.array([g if g else f"\0clip{i}" for i, g in enumerate(keys)], dtype=object)


def make_folds(groups: Sequence[str], k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped K-fold: every group's clips land in the test part of exactly one fold.

    Groups are dealt, largest first (random order among equal sizes), to the fold with the
    fewest clips so far, so folds are balanced in clips; an empty group name makes a clip a
    group of its own.

    Parameters
    ----------
    groups : sequence of str
        The group of every clip.
    k : int
        Number of folds, at least 2 and at most the number of groups.
    seed : int
        Seed of the order among groups of equal size.

    Returns
    -------
    list of (train_idx, test_idx)
        ``k`` pairs of sorted int64 index arrays into ``groups``; the test parts partition
        ``range(len(groups))``.

    Raises
    ------
    ValueError
        ``k < 2`` or fewer groups than folds.
    """
    k = int(k)
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    keys = _group_keys(groups, len(groups))
    uniq, inverse = np.unique(keys, return_inverse=True)
    if len(uniq) < k:
        raise ValueError(f"{k} folds need at least {k} groups, found {len(uniq)}")
    sizes = np.bincount(inverse, minlength=len(uniq))
    order = np.random.default_rng(seed).permutation(len(uniq))
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    for g in order:
        f = int(np.argmin(load))
        fold_of_group[g] = f
        load[f] += sizes[g]
    fold = fold_of_group[inverse]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def carve_valid(
    train_idx: np.ndarray,
    groups: Sequence[str],
    Y: np.ndarray,
    fraction: float = 0.15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Set about ``fraction`` of the training groups aside as a validation set.

    Groups are visited in a seeded random order and moved to validation unless that would
    take the last training example of some class (tag) away.

    Parameters
    ----------
    train_idx : numpy.ndarray of int
        Clip indices of the training part.
    groups : sequence of str
        The group of every clip (indexed by clip, not by position in ``train_idx``).
    Y : numpy.ndarray, shape (n_clips, C)
        0/1 class (tag) membership of every clip.
    fraction : float
        Target share of the training groups.
    seed : int

    Returns
    -------
    (train_idx, valid_idx) : tuple of numpy.ndarray
        Sorted, disjoint, their union the input ``train_idx``.

    Raises
    ------
    ValueError
        Fewer than two groups, or no group can be moved without emptying a class.
    """
    train_idx = np.asarray(train_idx, dtype=np.int64)
    keys = _group_keys(groups, len(groups))[train_idx]
    uniq, inverse = np.unique(keys, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError(
            "cannot carve a validation set out of the training clips: they form a single "
            "group; give the data a 'valid' split or more groups"
        )
    target = min(len(uniq) - 1, max(1, round(fraction * len(uniq))))
    Ytr = np.asarray(Y, dtype=np.int64)[train_idx]
    counts = Ytr.sum(axis=0)
    group_counts = np.zeros((len(uniq), Ytr.shape[1]), dtype=np.int64)
    np.add.at(group_counts, inverse, Ytr)
    needed = counts > 0
    taken: list[int] = []
    for g in np.random.default_rng(seed).permutation(len(uniq)):
        left = counts - group_counts[g]
        if np.all(left[needed] > 0):
            taken.append(int(g))
            counts = left
            if len(taken) == target:
                break
    if not taken:
        raise ValueError(
            "cannot carve a grouped validation set out of the training clips without "
            "removing every training example of some class; give the data a 'valid' split"
        )
    is_valid = np.isin(inverse, taken)
    return np.sort(train_idx[~is_valid]), np.sort(train_idx[is_valid])


def _check_coverage(
    Y: np.ndarray, train: np.ndarray, other: np.ndarray, name: str, classes: list[str]
) -> None:
    """Refuse a split whose clips carry classes that the training clips lack."""
    in_train = Y[train].sum(axis=0) > 0
    in_other = Y[other].sum(axis=0) > 0
    missing = [c for c, a, b in zip(classes, in_train, in_other, strict=True) if b and not a]
    if missing:
        raise ValueError(
            f"labels missing from a split: {missing} occur in {name} but not in train; "
            "the probe cannot learn a class it never sees"
        )


# --------------------------------------------------------------------------- the model


def _init_params(
    d_in: int, n_out: int, config: ProbeConfig, n_grid: int, seed: int, device: torch.device
) -> list[torch.Tensor]:
    """Weights ``(G, fan_in, fan_out)`` and biases ``(G, 1, fan_out)`` of every layer.

    Initialised as ``torch.nn.Linear`` (uniform in ``±1/sqrt(fan_in)``), identical for all
    ``G`` grid points.
    """
    gen = torch.Generator().manual_seed(seed)
    dims = [d_in, config.hidden, n_out] if config.classifier == "mlp" else [d_in, n_out]
    params = []
    for fan_in, fan_out in itertools.pairwise(dims):
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * bound
        b = (torch.rand(1, fan_out, generator=gen) * 2 - 1) * bound
        params += [w.expand(n_grid, -1, -1).clone(), b.expand(n_grid, -1, -1).clone()]
    return [p.to(device).requires_grad_(True) for p in params]


def _forward(
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    dropout: float = 0.0,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Logits ``(G, B, C)`` of all grid points for the features ``x`` ``(B, D)``.

    Dropout is applied after hidden layers when ``gen`` is given (training mode), with one
    mask shared by all grid points.
    """
    n_layers = len(params) // 2
    h = x.expand(params[0].shape[0], -1, -1)
    for i in range(n_layers):
        h = torch.baddbmm(params[2 * i + 1], h, params[2 * i])
        if i < n_layers - 1:
            h = torch.relu(h)
            if gen is not None and dropout > 0:
                # one mask for all grid points: common random numbers, and 1/G the draws
                keep = torch.rand(h.shape[1:], generator=gen, device=h.device) >= dropout
                h = h * (keep / (1.0 - dropout))
    return h


def _loss(logits: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """Per-grid-point mean loss, shape ``(G,)``."""
    n_grid, batch, n_out = logits.shape
    if task == "classification":
        per_clip = F.cross_entropy(
            logits.reshape(-1, n_out), target.repeat(n_grid), reduction="none"
        )
        return per_clip.view(n_grid, batch).mean(dim=1)
    per_entry = F.binary_cross_entropy_with_logits(
        logits, target.expand(n_grid, -1, -1), reduction="none"
    )
    return per_entry.mean(dim=(1, 2))


class _GridAdamW:
    """AdamW over stacked grid parameters, with one learning rate / weight decay per point.

    Matches ``torch.optim.AdamW`` (decoupled decay ``p -= lr * wd * p``, bias-corrected
    moments); decay applies to weight matrices only (every other tensor of ``params``).
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        lr: torch.Tensor,
        weight_decay: torch.Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = params
        self.lr = lr.view(-1, 1, 1)
        self.weight_decay = weight_decay.view(-1, 1, 1)
        self.betas = betas
        self.eps = eps
        self.step_count = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        c1 = 1 - b1**self.step_count
        c2 = 1 - b2**self.step_count
        for i, (p, m, v) in enumerate(zip(self.params, self.m, self.v, strict=True)):
            g = p.grad
            if i % 2 == 0:
                p.mul_(1 - self.lr * self.weight_decay)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / c2).sqrt_().add_(self.eps)
            p.sub_(self.lr * (m / c1) / denom)
            p.grad = None


@torch.no_grad()
def _logits(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Evaluation-mode logits ``(G, n, C)``, in chunks of clips."""
    return torch.cat(
        [_forward(params, x[i : i + _EVAL_CHUNK]) for i in range(0, len(x), _EVAL_CHUNK)], dim=1
    )


def _score(
    logits: torch.Tensor, target: torch.Tensor, task: str, target_np: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validation metric and loss per grid point."""
    loss = _loss(logits, target, task).cpu().numpy().astype(np.float64)
    if task == "classification":
        metric = (logits.argmax(dim=2) == target).double().mean(dim=1).cpu().numpy()
    else:
        auc = roc_auc(target_np, logits.double().cpu().numpy())
        metric = np.nanmean(auc, axis=1)
    return metric, loss


def _train_grid(
    Xtr: torch.Tensor,
    Ttr: torch.Tensor,
    Xva: torch.Tensor,
    Tva: torch.Tensor,
    Tva_np: np.ndarray,
    n_out: int,
    task: str,
    config: ProbeConfig,
    seed: int,
) -> tuple[list[torch.Tensor], list[dict[str, Any]], int]:
    """Train every grid point; return the best-epoch weights, the grid record, the choice."""
    device = Xtr.device
    grid = [(lr, wd) for lr in config.lrs for wd in config.weight_decays]
    n_grid = len(grid)
    params = _init_params(Xtr.shape[1], n_out, config, n_grid, seed, device)
    opt = _GridAdamW(
        params,
        torch.tensor([g[0] for g in grid], dtype=torch.float32, device=device),
        torch.tensor([g[1] for g in grid], dtype=torch.float32, device=device),
    )
    best = [p.detach().clone() for p in params]
    best_metric = np.full(n_grid, -np.inf)
    best_loss = np.full(n_grid, np.inf)
    best_epoch = np.zeros(n_grid, dtype=np.int64)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(Xtr)
    batch = min(config.batch_size, n)

    for epoch in range(1, config.epochs + 1):
        order = torch.from_numpy(rng.permutation(n)).to(device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            logits = _forward(params, Xtr[idx], config.dropout, gen)
            _loss(logits, Ttr[idx], task).sum().backward()
            opt.step()
        metric, loss = _score(_logits(params, Xva), Tva, task, Tva_np)
        better = (metric > best_metric) | (
            (metric == best_metric) & (loss < best_loss * (1 - _LOSS_MIN_DELTA))
        )
        if better.any():
            mask = torch.from_numpy(better).to(device)
            with torch.no_grad():
                for b, p in zip(best, params, strict=True):
                    b[mask] = p[mask]
            best_metric = np.where(better, metric, best_metric)
            best_loss = np.where(better, loss, best_loss)
            best_epoch = np.where(better, epoch, best_epoch)
        if np.all(epoch - best_epoch >= config.patience):
            break

    record = [
        {
            "lr": lr,
            "weight_decay": wd,
            "epochs": int(best_epoch[g]),
            "valid": float(best_metric[g]),
            "valid_loss": float(best_loss[g]),
        }
        for g, (lr, wd) in enumerate(grid)
    ]
    chosen = max(range(n_grid), key=lambda g: (best_metric[g], -best_loss[g], -g))
    return best, record, chosen


# --------------------------------------------------------------------------- the protocol


def _metrics(task: str, target: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict:
    if task == "classification":
        return classification_metrics(target, scores, classes)
    return tagging_metrics(target, scores, classes)


def _majority(
    task: str,
    Y: np.ndarray,
    target: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    classes: list[str],
) -> dict[str, Any]:
    """Test metrics of scoring every test clip with the training prior."""
    prior = Y[train].mean(axis=0)
    scores = np.tile(prior, (len(test), 1))
    return _metrics(task, target[test], scores, classes)


def _chance(
    task: str, Y: np.ndarray, target: np.ndarray, train: np.ndarray, test: np.ndarray
) -> dict[str, float | None]:
    """Expected test metrics of a guess from the training label prior (chance level)."""
    if task == "classification":
        prior = Y[train].sum(axis=0) / len(train)
        return chance_classification(prior, target[test])
    return chance_tagging(Y[test])


def _fit_one(
    X: np.ndarray,
    Y: np.ndarray,
    target: np.ndarray,
    task: str,
    classes: list[str],
    train: np.ndarray,
    valid: np.ndarray,
    test: np.ndarray,
    config: ProbeConfig,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Sweep the grid on (train, valid), score the chosen model once on test."""
    Xtr = X[train].astype(np.float64)
    if config.standardize:
        mean = Xtr.mean(axis=0)
        std = Xtr.std(axis=0)
        std[std < 1e-8] = 1.0
    else:
        mean, std = np.zeros(X.shape[1]), np.ones(X.shape[1])

    def to_device(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((X[idx] - mean) / std).astype(np.float32)).to(device)

    if task == "classification":

        def as_target(idx: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(target[idx].astype(np.int64)).to(device)
    else:

        def as_target(idx: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(target[idx].astype(np.float32)).to(device)

    best, grid, chosen = _train_grid(
        to_device(train),
        as_target(train),
        to_device(valid),
        as_target(valid),
        target[valid],
        len(classes),
        task,
        config,
        seed,
    )
    params = [p[chosen : chosen + 1] for p in best]
    test_logits = _logits(params, to_device(test))[0].double().cpu().numpy()
    return {
        "chosen": {k: grid[chosen][k] for k in ("lr", "weight_decay", "epochs")},
        "valid": grid[chosen]["valid"],
        "test": _metrics(task, target[test], test_logits, classes),
        "grid": grid,
    }


def _mean_metrics(task: str, runs: Sequence[dict[str, Any]], classes: list[str]) -> dict:
    """Average metric dicts over folds: scalars and per-class figures averaged, counts summed."""

    def mean(values: Sequence[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return float(np.mean(kept)) if kept else None

    out: dict[str, Any] = {m: mean([r[m] for r in runs]) for m in SCALAR_METRICS[task]}
    per_class = {}
    for c in classes:
        entries = [r["per_class"][c] for r in runs]
        per_class[c] = {
            k: (sum(e[k] for e in entries) if k == "support" else mean([e[k] for e in entries]))
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


def _summary(task: str, per_seed: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    def stats(values: Sequence[float | None]) -> dict[str, float] | None:
        kept = np.array([v for v in values if v is not None], dtype=np.float64)
        if not len(kept):
            return None
        std = float(kept.std(ddof=1)) if len(kept) > 1 else 0.0
        return {"mean": float(kept.mean()), "std": std}

    out = {m: stats([s["test"][m] for s in per_seed]) for m in SCALAR_METRICS[task]}
    out[f"valid_{MAIN_METRIC[task]}"] = stats([s["valid"] for s in per_seed])
    return {k: v for k, v in out.items() if v is not None}


def _normalise_splits(splits: Sequence[str] | None, n: int) -> np.ndarray:
    if splits is None:
        return np.full(n, "", dtype=object)
    if len(splits) != n:
        raise ValueError(f"{len(splits)} splits for {n} clips")
    out = np.empty(n, dtype=object)
    for i, s in enumerate(splits):
        key = str(s).strip().lower()
        if key not in _SPLIT_ALIASES:
            raise ValueError(
                f"clip {i}: unknown split {s!r}; expected 'train', 'valid', 'test' or ''"
            )
        out[i] = _SPLIT_ALIASES[key]
    return out


def resolve_task(labels: Sequence[str], task: str = "auto") -> str:
    """``classification`` or ``tagging``: ``auto`` is tagging when any clip holds several
    tags. Raises ValueError when no clip is labeled, or tags meet ``classification``."""
    if not any(labels):
        raise ValueError(
            "no labels: every clip is unlabeled (an unlabeled store?); a probe needs labels"
        )
    multilabel = any(";" in label for label in labels)
    if task == "auto":
        return "tagging" if multilabel else "classification"
    if task == "classification" and multilabel:
        raise ValueError("labels hold ';' (several tags per clip) but task='classification'")
    return task


def encode_targets(
    labels: Sequence[str], task: str = "auto"
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Resolve the task and encode the labels, as every probe and baseline does.

    Parameters
    ----------
    labels : sequence of str
        Per clip: a class, tags joined by ``';'``, or ``''`` (unlabeled / no tag).
    task : {"auto", "classification", "tagging"}
        ``auto`` is tagging when any clip holds several tags.

    Returns
    -------
    task : str
    keep : numpy.ndarray of int
        The clips that take part: labeled clips for classification, all for tagging
        (a clip without tags is a negative for every tag).
    target : numpy.ndarray
        Class indices (n_keep,) or a 0/1 tag matrix (n_keep, C).
    Y : numpy.ndarray of int64, shape (n_keep, C)
        One-hot classes or the tag matrix.
    classes : list of str

    Raises
    ------
    ValueError
        No labels at all, tags with task ``classification``, or a single class.
    """
    task = resolve_task(labels, task)
    if task == "classification":
        y_all, classes = encode_labels(labels, multilabel=False)
        keep = np.flatnonzero(y_all >= 0)
        target = y_all[keep]
        if len(classes) < 2:
            raise ValueError(
                f"a single class ({classes[0]!r}): classification needs at least two classes"
            )
        return task, keep, target, np.eye(len(classes), dtype=np.int64)[target], classes
    Y_all, classes = encode_labels(labels, multilabel=True)
    return task, np.arange(len(labels)), Y_all, Y_all.astype(np.int64), classes


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
    parts : list of (train, valid, test)
        Index arrays into the kept clips: one triple for the store's splits, one per fold
        with ``folds``.
    """

    task: str
    keep: np.ndarray
    target: np.ndarray
    Y: np.ndarray
    classes: list[str]
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]


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
    labels = [str(label).strip() for label in labels]
    split_of = _normalise_splits(None if config.folds else splits, n)
    group_keys = _group_keys(groups, n)
    task, keep, target, Y, classes = encode_targets(labels, config.task)
    split_of = split_of[keep]
    group_keys = group_keys[keep]

    # the (train, valid, test) index triples, one per fold
    if config.folds is None:
        train = np.flatnonzero(split_of == "train")
        valid = np.flatnonzero(split_of == "valid")
        test = np.flatnonzero(split_of == "test")
        if not len(train) or not len(test):
            missing = "train" if not len(train) else "test"
            raise ValueError(
                f"no labeled {missing} clips in the splits; pass folds=K for a grouped "
                "K-fold cross-validation instead"
            )
        if not len(valid):
            train, valid = carve_valid(
                train, group_keys, Y, config.valid_fraction, config.split_seed
            )
        parts = [(train, valid, test)]
    else:
        parts = []
        for train, test in make_folds(group_keys, config.folds, config.split_seed):
            train, valid = carve_valid(
                train, group_keys, Y, config.valid_fraction, config.split_seed
            )
            parts.append((train, valid, test))

    for train, valid, test in parts:
        _check_coverage(Y, train, test, "test", classes)
        _check_coverage(Y, train, valid, "valid", classes)
        if task == "tagging":
            pos = Y[valid].sum(axis=0)
            if not np.any((pos > 0) & (pos < len(valid))):
                raise ValueError(
                    "the validation clips have no tag with both positive and negative "
                    "clips, so no model can be selected on them"
                )
    return ProbePlan(task, keep, target, Y, list(classes), parts)


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


def run_probe(
    X: np.ndarray,
    labels: Sequence[str],
    splits: Sequence[str] | None,
    groups: Sequence[str] | None,
    config: ProbeConfig | None = None,
) -> ProbeResult:
    """Probe frozen clip embeddings: sweep, select on validation, score once on test.

    Parameters
    ----------
    X : numpy.ndarray, shape (n_clips, D)
        One embedding per clip.
    labels : sequence of str
        Per clip: a class, tags joined by ``';'``, or ``''`` (unlabeled / no tag).
    splits : sequence of str, optional
        Per clip: ``'train'``, ``'valid'`` (also ``'val'``, ``'validation'``, ``'dev'``),
        ``'test'`` or ``''`` (unused). Ignored (may be ``None``) with ``config.folds``.
    groups : sequence of str, optional
        Per clip: the group that must not straddle a split (artist, source file); ``''`` or
        ``None`` makes every such clip its own group.
    config : ProbeConfig, optional

    Returns
    -------
    ProbeResult

    Raises
    ------
    ValueError
        Mismatched lengths, NaN / Inf features, no labels at all, a single class, labels
        present in test (or valid) but absent from train, a missing train or test split
        without ``folds``, a validation set that cannot rank any tag, or an impossible
        split.
    """
    config = config or ProbeConfig()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must have shape (n_clips, D), got {X.shape}")
    n = X.shape[0]
    labels = [str(label).strip() for label in labels]
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
    task, target, Y, classes, parts = plan.task, plan.target, plan.Y, plan.classes, plan.parts
    X = X[plan.keep]
    device = resolve_device(config.device)

    majorities = [_majority(task, Y, target, tr, te, classes) for tr, _, te in parts]
    chances = [_chance(task, Y, target, tr, te) for tr, _, te in parts]

    per_seed = []
    for seed in range(config.seeds):
        runs = [
            _fit_one(X, Y, target, task, classes, tr, va, te, config, seed, device)
            for tr, va, te in parts
        ]
        if config.folds is None:
            per_seed.append({"seed": seed, **runs[0]})
        else:
            for f, (run, (tr, va, te)) in enumerate(zip(runs, parts, strict=True)):
                run.update(fold=f, n_train=len(tr), n_valid=len(va), n_test=len(te))
            per_seed.append(
                {
                    "seed": seed,
                    "valid": float(np.mean([r["valid"] for r in runs])),
                    "test": _mean_metrics(task, [r["test"] for r in runs], classes),
                    "folds": runs,
                }
            )

    chance = {m: _mean_or_none([c[m] for c in chances]) for m in SCALAR_METRICS[task]}
    if config.folds is None:
        majority = majorities[0]
        n_train, n_valid, n_test = (len(p) for p in parts[0])
    else:
        majority = _mean_metrics(task, majorities, classes)
        n_train = round(np.mean([len(p[0]) for p in parts]))
        n_valid = round(np.mean([len(p[1]) for p in parts]))
        n_test = sum(len(p[2]) for p in parts)

    return ProbeResult(
        task=task,
        classes=list(classes),
        metric=MAIN_METRIC[task],
        per_seed=_plain(per_seed),
        summary=_summary(task, per_seed),
        majority=_plain(majority),
        chance=_plain(chance),
        n_train=int(n_train),
        n_valid=int(n_valid),
        n_test=int(n_test),
        folds=config.folds,
        config=_plain(asdict(config)),
    )


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _plain(obj: Any) -> Any:
    """Numpy scalars and arrays, tuples and dicts as plain JSON-ready Python objects."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
