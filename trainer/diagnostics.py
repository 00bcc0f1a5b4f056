"""Learning diagnostics of a pre-training run: why an encoder is, or is not, getting better.

Three kinds of measurement, all taken without touching the training random stream:

* **per-worker validation R²** (:class:`R2Accumulator`): how much of each regression
  target's variance the worker explains on the validation batches;
* **collapse detector** (:func:`effective_rank`, :func:`channel_variance_stats`): the
  effective rank and the dead-channel fraction of mean+std-pooled embeddings of a fixed
  held-out batch (:func:`heldout_batch`, stored in the run folder), from step 0 (the
  random initialisation) on. A representation that narrows during pre-training shows as a
  falling effective rank;
* **linear probe** (:class:`ProbeTask`): accuracy of a logistic regression on pooled
  embeddings of a small labeled store, every N steps.

:func:`plot_diagnostics` draws all of them over the steps into ``diagnostics.png``.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.data import PCM_SCALE

HELDOUT = "diagnostics_heldout.npz"
PLOT = "diagnostics.png"

__all__ = [
    "HELDOUT", "PLOT", "ProbeTask", "R2Accumulator", "channel_variance_stats",
    "collapse_stats", "effective_rank", "heldout_batch", "plot_diagnostics", "pool_mean_std",
    "r2_score",
]


# --------------------------------------------------------------------------- formulas


def effective_rank(X: np.ndarray | torch.Tensor) -> float:
    """Effective rank (Roy & Vetterli, 2007) of the rows of ``X`` ``[n, d]``.

    With ``X`` centred (each column minus its mean over the rows) and singular values
    ``s_1 .. s_r``, ``p_i = s_i^2 / sum_j s_j^2`` (the share of the total variance along
    each principal direction) and

        erank(X) = exp(H(p)),   H(p) = -sum_i p_i log p_i   (0 log 0 = 0).

    ``k`` directions holding equal variance give exactly ``k``; data on one line gives 1.

    Parameters
    ----------
    X : array or Tensor, shape (n, d)
        One row per sample (e.g. a pooled clip embedding).

    Returns
    -------
    float
        Between 1 and ``min(n - 1, d)``; 0.0 when ``X`` has no variance at all.
    """
    x = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"effective_rank needs a 2-D matrix [n, d], got shape {x.shape}")
    x = x - x.mean(axis=0, keepdims=True)
    s2 = np.linalg.svd(x, compute_uv=False) ** 2
    total = s2.sum()
    if not np.isfinite(total) or total <= 0:
        return 0.0
    p = s2[s2 > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def channel_variance_stats(X: np.ndarray | torch.Tensor, dead_ratio: float = 0.01
                           ) -> dict[str, float]:
    """Per-channel variance statistics of ``X`` ``[n, d]`` (rows: samples).

    A channel is *dead* when its variance over the rows (``ddof=0``) is at most
    ``dead_ratio`` times the median channel variance (so a matrix with no variance at all
    has every channel dead).

    Returns
    -------
    dict
        ``dead_fraction`` (dead channels / d), ``var_median``, ``var_min``, ``var_max``.
    """
    x = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
    var = x.var(axis=0)
    median = float(np.median(var))
    return {"dead_fraction": float(np.mean(var <= dead_ratio * median)),
            "var_median": median, "var_min": float(var.min()), "var_max": float(var.max())}


class R2Accumulator:
    """Coefficient of determination of one regression worker over several batches.

    With rows ``y`` (every frame of every crop for a frame-rate target, every crop for a
    clip-rate one), predictions ``ŷ`` and, per target dimension ``j``, the sum of squared
    errors ``SSE_j = sum (ŷ_j - y_j)^2`` and the total sum of squares around the mean of all
    the rows ``SST_j = sum (y_j - mean(y_j))^2``:

        R² = 1 - sum_j SSE_j / sum_j SST_j = 1 - mean_j MSE_j / mean_j Var_j

    the *variance-weighted* average over dimensions (scikit-learn's
    ``multioutput="variance_weighted"``): a near-constant dimension cannot blow it up. It
    is 1 for perfect predictions and 0 for predicting each dimension's mean; it uses the
    squared error whatever loss (L1 or MSE) the worker trains with.
    """

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # (4, dim): n, sum y, sum y^2, SSE

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` of one shape ``[..., dim]``."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        dim = target.shape[-1] if target.ndim > 1 else 1
        y = target.detach().reshape(-1, dim).double()
        p = pred.detach().reshape(-1, dim).double()
        count = torch.full((dim,), float(y.shape[0]), dtype=y.dtype, device=y.device)
        part = torch.stack([count, y.sum(0), (y * y).sum(0), ((p - y) ** 2).sum(0)])
        self.sums = part if self.sums is None else self.sums + part

    def value(self) -> float | None:
        """R² (see the class), or None when nothing was added or the targets are constant."""
        if self.sums is None:
            return None
        n, sy, syy, sse = self.sums.cpu()
        if float(n[0]) == 0:
            return None
        sst = (syy - sy * sy / n).clamp_min(0).sum()
        if float(sst) <= 0:
            return None
        return float(1 - sse.sum() / sst)


def r2_score(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float | None:
    """R² of one batch of predictions (see :class:`R2Accumulator`)."""
    acc = R2Accumulator()
    acc.update(torch.as_tensor(pred), torch.as_tensor(target))
    return acc.value()


# --------------------------------------------------------------------------- collapse


def pool_mean_std(h: torch.Tensor) -> torch.Tensor:
    """Frame embeddings ``[B, D, T]`` → ``[B, 2D]``: mean, then population std over T."""
    h = h.float()
    return torch.cat([h.mean(dim=2), h.std(dim=2, correction=0)], dim=1)


def heldout_batch(path: Path, data: Any, n: int, seed: int, *, reuse: bool) -> np.ndarray:
    """The fixed held-out crops of a run, ``[n, T * hop]`` int16, kept in ``path``.

    With ``reuse`` and ``path`` present, the stored crops are returned. Otherwise ``n``
    crops are drawn from ``data`` (a :class:`trainer.data.CropDataset`) with their own
    generator seeded by ``seed``: distinct clips when the data set has at least ``n``
    (else every clip in turn), one uniformly random crop position in each; the crops, the
    clip ids and the starts are written to ``path``.
    """
    if reuse and path.exists():
        with np.load(path) as f:
            return f["wave"]
    rng = np.random.default_rng([seed, 104_729])
    order = rng.permutation(data.n_clips)
    clips = np.resize(order, n).astype(np.int64)
    span = data.clip_frames[clips] - data.crop_frames + 1
    starts = (rng.random(n) * span).astype(np.int64)
    sort = np.lexsort((starts, clips))
    clips, starts = clips[sort], starts[sort]
    wave = data.gather(clips, starts)["waveform"]
    wave = np.asarray(wave.cpu() if isinstance(wave, torch.Tensor) else wave, dtype=np.int16)
    ids = [str(data.stores[data.clip_store[c]].clips["id"][data.clip_local[c]]) for c in clips]
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, wave=wave, clip_id=np.array(ids), start_frame=starts)
    os.replace(tmp, path)
    return wave


@torch.no_grad()
def collapse_stats(encoder: nn.Module, wave: np.ndarray, device: torch.device, *,
                   batch_size: int = 32, dead_ratio: float = 0.01) -> dict[str, float]:
    """Effective rank and channel statistics of the mean+std-pooled embeddings of the
    held-out crops ``wave`` (int16 ``[n, samples]``); the encoder runs in eval mode (the
    caller restores its mode).

    Returns
    -------
    dict
        ``erank`` (:func:`effective_rank` of the ``[n, 2D]`` pooled embeddings),
        ``erank_mean`` (of the mean half alone) and :func:`channel_variance_stats`.
    """
    encoder.eval()
    pooled = []
    for k in range(0, len(wave), batch_size):
        x = torch.from_numpy(wave[k : k + batch_size].astype(np.float32) / PCM_SCALE).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            h = encoder(x)
        pooled.append(pool_mean_std(h).double().cpu())
    z = torch.cat(pooled).numpy()
    d = z.shape[1] // 2
    return {"erank": effective_rank(z), "erank_mean": effective_rank(z[:, :d]),
            **channel_variance_stats(z, dead_ratio)}


# --------------------------------------------------------------------------- probe


@dataclass
class ProbeTask:
    """A linear probe on a small labeled store, planned once before training.

    Attributes
    ----------
    path : str
        The store.
    y : np.ndarray
        Class index of every clip, -1 for an unlabeled clip.
    folds : list of (np.ndarray, np.ndarray)
        (train, evaluation) clip indices: the store's ``train`` split against its ``valid``
        split (else ``test``) when it has both, otherwise grouped 5-fold over the labeled
        clips (``group`` column, else one group per clip).
    protocol : str
        ``"split"`` or ``"5-fold"``.
    """

    path: str
    y: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    protocol: str

    @classmethod
    def plan(cls, path: str | os.PathLike[str], n_folds: int = 5) -> ProbeTask:
        """Read the store's labels, splits and groups and plan the folds.

        Raises
        ------
        ValueError
            No labels, multi-label labels, fewer than two classes, fewer than two groups.
        featurestore.errors.FeatureStoreError
            No such store.
        """
        from featurestore.store import open_store
        from trainer.evaluation import group_keys, is_tag_list, make_folds, normalise_splits

        clips = open_store(path).clips
        labels = np.array([str(v).strip() for v in clips["label"].tolist()], dtype=object)
        if any(is_tag_list(lab) for lab in labels):
            raise ValueError(f"{path}: probe during pre-training needs single-label clips; "
                             "this store holds multi-label tags")
        labeled = labels != ""
        classes = sorted(set(labels[labeled]))
        if len(classes) < 2:
            raise ValueError(f"{path}: probe during pre-training needs at least two classes "
                             f"of labeled clips, found {len(classes)}")
        y = np.array([classes.index(v) if v else -1 for v in labels], dtype=np.int64)
        splits = normalise_splits(clips["split"].tolist(), len(labels))
        train = np.flatnonzero(labeled & (splits == "train"))
        held = np.flatnonzero(labeled & (splits == "valid"))
        if len(held) == 0:
            held = np.flatnonzero(labeled & (splits == "test"))
        if len(train) and len(held) and len(set(y[train])) >= 2:
            return cls(str(path), y, [(train, held)], "split")
        idx = np.flatnonzero(labeled)
        groups = group_keys(clips["group"].tolist(), len(labels))[idx]
        k = min(n_folds, len(set(groups)))
        if k < 2:
            raise ValueError(f"{path}: probe during pre-training needs train and valid/test "
                             "splits or at least two groups")
        # the probe's own folds (trainer.evaluation), stratified by class
        folds = [(idx[a], idx[b]) for a, b in make_folds(groups, k, seed=0, y=y[idx])]
        return cls(str(path), y, folds, f"{k}-fold")

    def embed(self, encoder: nn.Module, device: torch.device, sample_rate: int,
              batch_size: int = 16) -> np.ndarray:
        """mean+std-pooled embeddings ``[clips, 2D]`` of the store by a copy of ``encoder``
        (:func:`trainer.embed.clip_embeddings`, not cached; the encoder is not touched)."""
        from trainer.embed import EncoderEmbedder, clip_embeddings

        frozen = copy.deepcopy(encoder)
        embedder = EncoderEmbedder("pretraining-encoder", "pretraining-encoder",
                                   lambda: frozen, sample_rate=sample_rate)
        return clip_embeddings(embedder, self.path, pooling="mean+std", device=device,
                               batch_size=batch_size, cache=False).X

    def accuracy(self, X: np.ndarray, c: float = 1.0) -> float:
        """Mean accuracy over the folds of a logistic regression (L2, inverse strength
        ``c``, lbfgs) on features standardised with the training clips' statistics."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scores = []
        for tr, ev in self.folds:
            scaler = StandardScaler().fit(X[tr])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(X[tr]),
                                                                 self.y[tr])
            scores.append(float(np.mean(clf.predict(scaler.transform(X[ev])) == self.y[ev])))
        return float(np.mean(scores))


# --------------------------------------------------------------------------- plot


def read_rows(run: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row of a run's ``metrics.jsonl`` (empty when there is none)."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_diagnostics(run: str | os.PathLike[str], path: str | os.PathLike[str] | None = None
                     ) -> Path | None:
    """Draw a run's diagnostics over the steps: validation R² per worker, effective rank
    of the held-out pooled embeddings, dead-channel fraction and probe accuracy (the
    panels that have data). Written to ``<run>/diagnostics.png`` unless ``path`` is given.

    Returns
    -------
    Path or None
        The figure, or None when the run has no diagnostics rows yet.
    """
    rows = read_rows(run)
    valid = [r for r in rows if r.get("kind") == "valid" and r.get("r2")]
    diag = [r for r in rows if r.get("kind") == "diag"]
    panels: list[tuple[str, dict[str, tuple[list[int], list[float]]]]] = []

    def series(rs: Sequence[dict[str, Any]], group: str, keys: Sequence[str] | None = None
               ) -> dict[str, tuple[list[int], list[float]]]:
        out: dict[str, tuple[list[int], list[float]]] = {}
        for r in rs:
            for k, v in r.get(group, {}).items():
                if v is not None and (keys is None or k in keys):
                    out.setdefault(k, ([], []))
                    out[k][0].append(r["step"])
                    out[k][1].append(v)
        return out

    for title, s in (
        ("validation R² per worker", series(valid, "r2")),
        ("effective rank (held-out, pooled)", series(diag, "diag", ("erank", "erank_mean"))),
        ("dead-channel fraction", series(diag, "diag", ("dead_fraction",))),
        ("probe accuracy", series(diag, "diag", ("probe_accuracy",))),
    ):
        if s:
            panels.append((title, s))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, s) in zip(axes[0], panels, strict=True):
        for name, (steps, values) in s.items():
            ax.plot(steps, values, marker="o", markersize=3, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(s) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path) if path is not None else Path(run) / PLOT
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
