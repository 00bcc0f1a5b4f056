"""The "supervised from scratch" baseline: an encoder and a linear classifier trained end
to end on a store's labelled training clips.

What pre-training is measured against: the same encoder architecture, randomly
initialised, trained on the downstream labels alone. The classifier sees the mean over
time of the encoder's frames (``[B, dim, T] → [B, dim]``) and is one linear layer.

* Training: random crops of ``crop_seconds`` from the ``train`` split's labelled clips
  (every crop position equally likely, drawn from :class:`trainer.data.CropDataset`'s
  index), AdamW at a constant learning rate, cross-entropy for single-label data,
  binary cross-entropy (one sigmoid per class) for multi-label data; bf16 autocast on
  CUDA.
* Selection: every ``eval_every`` steps the ``valid`` clips are scored as test clips are
  (below) and the (binary) cross-entropy of those clip scores is measured; the weights
  with the lowest valid loss are kept. Without a labelled valid split the final weights
  are kept and ``valid_loss`` is NaN.
* Prediction: every ``test`` clip is cut into consecutive crops of ``crop_seconds`` (the
  last, shorter one kept); its scores are the average of its crops' probabilities
  (softmax or sigmoid), weighted by crop length.
* Clips: single-label mode uses the labelled clips of each split; multi-label mode, like
  the probe's tagging task, also keeps a split's clips without any tag (all negatives).

:func:`run_supervised` repeats the training for several seeds and scores it like the
probe (:func:`trainer.evaluation.run_probe`): the same labels, metrics and aggregation
(:mod:`trainer.evaluation`), the same :class:`~trainer.evaluation.ProbeResult`, so
:func:`trainer.report.write_report` and :func:`trainer.report.compare` take it as one more
row.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.data import PCM_SCALE, CropDataset, clip_crops
from trainer.device import resolve_device
from trainer.evaluation import (
    MAIN_METRIC,
    ProbeConfig,
    ProbeResult,
    chance_metrics,
    check_coverage,
    encode_labels,
    encode_targets,
    has_several_tags,
    majority_metrics,
    resolve_task,
    split_tags,
    task_metrics,
)


@dataclass
class SupervisedResult:
    """What :func:`train_supervised` returns.

    Attributes
    ----------
    classes : list of str
        Column order of ``test_scores`` (sorted labels of the labelled clips).
    test_ids : list of str
        The test clips, in store order.
    test_scores : np.ndarray, shape (n_test, n_classes), float32
        Probabilities: softmax rows (single-label) or independent sigmoids (multi-label).
    valid_loss : float
        The selected model's valid loss (NaN without a valid split).
    steps : int
        The training step at which the selected model was taken.
    valid_ids : list of str
        The valid clips, in store order (empty without a valid split).
    valid_scores : np.ndarray, shape (n_valid, n_classes), float32
        The selected model's probabilities on them.
    """

    classes: list[str]
    test_ids: list[str]
    test_scores: np.ndarray
    valid_loss: float
    steps: int
    valid_ids: list[str] = field(default_factory=list)
    valid_scores: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 0), dtype=np.float32))


class Classifier(nn.Module):
    """An encoder, mean pooling over time, and one linear layer: ``wave → logits``."""

    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.dim), n_classes)

    def forward(self, wave: Tensor) -> Tensor:
        """``wave [B, T * hop]`` → logits ``[B, n_classes]``."""
        return self.head(self.encoder(wave).float().mean(dim=-1))


def _targets(labels: Sequence[str], classes: list[str], multilabel: bool) -> np.ndarray:
    """Class indices (single-label) or multi-hot float32 rows (multi-label) of ``labels``."""
    y, _ = encode_labels(labels, multilabel, classes)
    return y.astype(np.float32) if multilabel else y


def _in_split(label: str, split: str, wanted: str, multilabel: bool) -> bool:
    """Whether a clip takes part in split ``wanted``: labelled clips, and in multi-label
    mode also clips without any tag (negatives for every tag, as in the probe)."""
    return split == wanted and (multilabel or bool(split_tags(label)))


class _Split:
    """The clips of one split (see :func:`_in_split`), as ``(store, clip)`` pairs, with
    their targets."""

    def __init__(self, data: CropDataset, split: str, classes: list[str],
                 multilabel: bool) -> None:
        self.items: list[tuple[int, int]] = []
        labels: list[str] = []
        self.ids: list[str] = []
        for k, s in enumerate(data.stores):
            for i in range(s.n_clips):
                if _in_split(str(s.clips["label"][i]), str(s.clips["split"][i]), split,
                             multilabel):
                    self.items.append((k, i))
                    labels.append(str(s.clips["label"][i]))
                    self.ids.append(str(s.clips["id"][i]))
        self.targets = _targets(labels, classes, multilabel)

    def __len__(self) -> int:
        return len(self.items)


def _predict(model: Classifier, data: CropDataset, split: _Split, crop_frames: int,
             batch_size: int, device: torch.device, multilabel: bool) -> np.ndarray:
    """Per-clip probabilities: crop probabilities averaged, weighted by crop length."""
    crops: list[tuple[int, np.ndarray]] = []
    for r, (k, i) in enumerate(split.items):
        crops.extend((r, c) for c in clip_crops(data.stores[k], i, crop_frames))
    by_length: dict[int, list[tuple[int, np.ndarray]]] = {}
    for r, c in crops:
        by_length.setdefault(len(c), []).append((r, c))
    n_classes = model.head.out_features
    total = np.zeros((len(split), n_classes), dtype=np.float64)
    weight = np.zeros(len(split), dtype=np.float64)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                         enabled=device.type == "cuda"):
        for length, items in by_length.items():
            for b in range(0, len(items), batch_size):
                chunk = items[b : b + batch_size]
                wave = torch.from_numpy(np.stack([c for _, c in chunk])).to(device)
                logits = model(wave).float()
                prob = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
                for (r, _), p in zip(chunk, prob.cpu().numpy(), strict=True):
                    total[r] += length * p
                    weight[r] += length
    return (total / np.maximum(weight, 1)[:, None]).astype(np.float32)


def _loss(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """Mean cross-entropy (or binary cross-entropy) of clip probabilities."""
    eps = 1e-7
    p = np.clip(probs.astype(np.float64), eps, 1 - eps)
    if multilabel:
        t = targets.astype(np.float64)
        return float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(p)), targets]).mean())


def train_supervised(
    store_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    encoder: str = "pase+",
    encoder_kwargs: dict[str, Any] | None = None,
    steps: int = 500,
    batch_size: int = 16,
    crop_seconds: float = 2.0,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "auto",
    multilabel: bool | None = None,
    progress: bool = False,
    eval_every: int | None = None,
    weight_decay: float = 1e-4,
) -> SupervisedResult:
    """Train an encoder and a linear classifier from scratch on a store's train split.

    Parameters
    ----------
    store_path : path-like, glob pattern or sequence of path-like
        The store (or store files of one corpus); its clip table gives labels and splits.
    encoder : str
        Encoder name (:data:`trainer.encoders.ENCODERS`).
    encoder_kwargs : dict, optional
        Its constructor arguments (a smaller configuration); default: its defaults.
    steps : int
        Optimiser steps.
    batch_size : int
        Crops per step.
    crop_seconds : float
        Crop length for training and for the valid and test crops (whole frames).
    lr : float
        AdamW learning rate (constant).
    seed : int
        Initialisation and crop draws.
    device : str or torch.device
        ``auto``: CUDA when available, else CPU.
    multilabel : bool, optional
        Binary cross-entropy over independent classes; default: True when some clip has
        several labels (joined by ``';'``).
    progress : bool
        A progress bar (stderr).
    eval_every : int, optional
        Steps between valid-loss measurements (default: ``steps // 10``, at least 1); the
        last step is always measured.
    weight_decay : float
        AdamW weight decay.

    Returns
    -------
    SupervisedResult

    Raises
    ------
    ValueError
        No labelled train clips or no labelled test clips (a store without splits);
        several labels on a clip in single-label mode; a single class; an encoder whose
        frame rate differs from the store's.
    trainer.data.DataError
        A train clip shorter than ``crop_seconds``.
    """
    from tqdm import tqdm

    from trainer.encoders import build_encoder

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be at least 1, got {steps}, {batch_size}")
    dev = resolve_device(device)
    probe = CropDataset(store_path, [], 1)  # every clip: the clip table and the hop
    hop, rate = probe.hop, probe.sample_rate
    crop_frames = max(1, int(crop_seconds * rate) // hop)
    where = probe.stores[0].path
    all_labels = [str(x) for s in probe.stores for x in s.clips["label"].tolist()]
    all_splits = [str(x) for s in probe.stores for x in s.clips["split"].tolist()]
    labelled = [(la, sp) for la, sp in zip(all_labels, all_splits, strict=True)
                if split_tags(la)]
    for needed in ("train", "test"):
        if not any(sp == needed for _, sp in labelled):
            raise ValueError(
                f"{where}: no labelled clips in the {needed!r} split (the supervised "
                f"baseline needs labelled train and test clips; give the source a 'split' "
                f"column with train/valid/test)")
    if multilabel is None:
        multilabel = any(has_several_tags(la) for la, _ in labelled)
    if not multilabel:
        several = [la for la, _ in labelled if has_several_tags(la)]
        if several:
            raise ValueError(f"{where}: clip label {several[0]!r} has several labels; use "
                             "multilabel=True")
    classes = sorted({x for la, _ in labelled for x in split_tags(la)})
    if len(classes) < 2 and not multilabel:
        raise ValueError(f"{where}: a single class ({classes[0]!r}); nothing to classify")

    train_data = CropDataset(store_path, [], crop_frames, splits=["train"])
    train = _Split(probe, "train", classes, multilabel)
    valid = _Split(probe, "valid", classes, multilabel)
    test = _Split(probe, "test", classes, multilabel)
    # Dataset clip index of each labelled train clip, weighted by its crop positions.
    row_of = {(int(k), int(i)): r for r, (k, i) in enumerate(
        zip(train_data.clip_store, train_data.clip_local, strict=True))}
    units = np.array([row_of[item] for item in train.items], dtype=np.int64)
    positions = (train_data.clip_frames[units] - crop_frames + 1).astype(np.float64)
    p_units = positions / positions.sum()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(build_encoder(encoder, **(encoder_kwargs or {})), len(classes))
    if int(model.encoder.hop) != hop:
        raise ValueError(f"{encoder}: encoder frame rate {rate / model.encoder.hop:g} Hz does "
                         f"not match the store's {rate / hop:g} Hz")
    model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng([seed, 7])
    eval_every = max(1, steps // 10) if eval_every is None else max(1, int(eval_every))
    targets_t = torch.from_numpy(train.targets)

    best_loss, best_step, best_state = math.inf, steps, None
    best_valid = np.zeros((0, len(classes)), dtype=np.float32)
    bar = tqdm(total=steps, disable=not progress, file=sys.stderr, unit="step",
               desc="supervised")
    try:
        for step in range(1, steps + 1):
            pick = rng.choice(len(units), size=batch_size, p=p_units)
            order = np.argsort(units[pick], kind="stable")
            pick = pick[order]
            clips = units[pick]
            span = train_data.clip_frames[clips] - crop_frames + 1
            starts = (rng.random(batch_size) * span).astype(np.int64)
            raw = train_data.gather(clips, starts)
            wave = torch.from_numpy(np.ascontiguousarray(raw["waveform"])).to(dev).float()
            wave = wave / PCM_SCALE
            y = targets_t[torch.from_numpy(pick)].to(dev)
            model.train()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(wave).float()
            loss = (F.binary_cross_entropy_with_logits(logits, y) if multilabel
                    else F.cross_entropy(logits, y))
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                warnings.warn(f"step {step}: non-finite loss; step skipped", stacklevel=2)
                continue
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if len(valid) and (step % eval_every == 0 or step == steps):
                probs = _predict(model, probe, valid, crop_frames, batch_size, dev, multilabel)
                v = _loss(probs, valid.targets, multilabel)
                if v < best_loss:
                    best_loss, best_step, best_valid = v, step, probs
                    best_state = copy.deepcopy(model.state_dict())
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_loss = math.nan
    scores = _predict(model, probe, test, crop_frames, batch_size, dev, multilabel)
    return SupervisedResult(classes=classes, test_ids=test.ids, test_scores=scores,
                            valid_loss=float(best_loss), steps=int(best_step),
                            valid_ids=valid.ids if best_state is not None else [],
                            valid_scores=best_valid)


def run_supervised(
    store_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    config: ProbeConfig | None = None,
    *,
    encoder: str = "pase+",
    encoder_kwargs: dict[str, Any] | None = None,
    steps: int = 500,
    crop_seconds: float = 2.0,
    device: str | torch.device = "auto",
    progress: bool = False,
    batch_size: int = 16,
    lr: float = 1e-3,
) -> ProbeResult:
    """The supervised-from-scratch baseline over seeds, scored and shaped like a probe.

    For each seed ``0 .. config.seeds - 1`` :func:`train_supervised` trains the encoder and
    its linear head on the store's ``train`` split (model chosen by valid loss); its test
    probabilities are scored with the probe's metric functions. The result has the fields
    and keys of :func:`trainer.evaluation.run_probe`'s (``summary``: mean and std with
    ``ddof=1`` over seeds; ``majority``: the training prior scored on test), so
    :func:`trainer.report.write_report` and :func:`trainer.report.compare` take it
    unchanged. Each ``per_seed`` entry holds ``seed``, ``valid`` (the selected model's
    valid accuracy or macro ROC-AUC; ``None`` without a valid split), ``test``, and
    ``valid_loss`` and ``step`` (the step whose weights were kept) instead of the
    probe's ``chosen`` and ``grid``. ``config`` is empty (no probe was trained): record
    the training settings in the report's meta.

    Parameters
    ----------
    store_path : path-like, glob pattern or sequence of path-like
        A labelled store with train / (valid) / test splits.
    config : ProbeConfig, optional
        Used: ``seeds``, ``task`` and ``folds`` (which must be ``None``); the probe's grid,
        classifier and device are not.
    encoder, encoder_kwargs, steps, crop_seconds, device, progress, batch_size, lr
        As in :func:`train_supervised`.

    Returns
    -------
    ProbeResult

    Raises
    ------
    ValueError
        A device this machine lacks (:class:`trainer.device.DeviceError`), an unknown
        encoder or encoder argument, ``config.folds`` set (supervised training uses the
        store's splits only), labels holding several tags with ``task="classification"``,
        labels in test or valid that train lacks, and whatever :func:`train_supervised`
        refuses.
    """
    from trainer.encoders import build_encoder

    device = resolve_device(device)
    with torch.device("meta"):  # the encoder's name and arguments, at no cost
        build_encoder(encoder, **(encoder_kwargs or {}))
    config = config or ProbeConfig()
    if config.folds is not None:
        raise ValueError(
            f"folds={config.folds}: the supervised baseline trains on the store's "
            "train/valid/test splits and cannot run a k-fold cross-validation; give the "
            "store a 'split' column (or probe it without folds)")
    table = CropDataset(store_path, [], 1)
    labels = [str(x).strip() for s in table.stores for x in s.clips["label"].tolist()]
    splits = [str(x) for s in table.stores for x in s.clips["split"].tolist()]
    ids = [str(x) for s in table.stores for x in s.clips["id"].tolist()]
    if not any(labels):
        raise ValueError(f"{table.stores[0].path}: no labels: every clip is unlabeled; the "
                         "supervised baseline needs labels")
    task = resolve_task(labels, config.task)
    multilabel = task == "tagging"

    # The clips train_supervised uses, in its (store) order, with the probe's encoding.
    keep = np.array([_in_split(la, sp, sp, multilabel) and sp in ("train", "valid", "test")
                     for la, sp in zip(labels, splits, strict=True)], dtype=bool)
    rows = np.flatnonzero(keep)
    kept_labels = [labels[r] for r in rows]
    kept_splits = np.array([splits[r] for r in rows], dtype=object)
    kept_ids = [ids[r] for r in rows]
    # Every kept clip is labeled (or, for tagging, a negative), so none is dropped here.
    _, _, target, Y, classes = encode_targets(kept_labels, task)
    train, valid, test = (np.flatnonzero(kept_splits == name)
                          for name in ("train", "valid", "test"))
    if not len(train) or not len(test):
        missing = "train" if not len(train) else "test"
        raise ValueError(
            f"{table.stores[0].path}: no labeled {missing} clips; the supervised baseline "
            "needs the store's train/valid/test splits")
    check_coverage(Y, train, test, "test", classes)
    check_coverage(Y, train, valid, "valid", classes)
    majority = majority_metrics(task, Y[train], target[test], classes)
    chance = chance_metrics(task, Y[train], target[test])

    per_seed = []
    for seed in range(config.seeds):
        run = train_supervised(
            store_path, encoder=encoder, encoder_kwargs=encoder_kwargs, steps=steps,
            batch_size=batch_size, crop_seconds=crop_seconds, lr=lr, seed=seed,
            device=device, multilabel=multilabel, progress=progress)
        column = [run.classes.index(c) for c in classes]  # the probe's class order
        if run.test_ids != [kept_ids[i] for i in test]:
            raise RuntimeError("supervised test clips differ from the store's test split")
        valid_score = None
        if len(run.valid_ids):
            if run.valid_ids != [kept_ids[i] for i in valid]:
                raise RuntimeError("supervised valid clips differ from the store's valid split")
            valid_score = task_metrics(task, target[valid], run.valid_scores[:, column],
                                       classes)[MAIN_METRIC[task]]
        per_seed.append({
            "seed": seed,
            "valid": valid_score,
            "test": task_metrics(task, target[test], run.test_scores[:, column], classes),
            "valid_loss": run.valid_loss if math.isfinite(run.valid_loss) else None,
            "step": run.steps,
        })

    return ProbeResult.of_seeds(task, classes, per_seed, majority=majority, chance=chance,
                                n_train=len(train), n_valid=len(valid), n_test=len(test))


__all__ = ["Classifier", "SupervisedResult", "run_supervised", "train_supervised"]
