"""The probe grid: every (learning rate, weight decay) point trained at once, as one model.

The ``G`` grid points of one (fold, seed) share everything but their optimiser settings:
the same initial weights, mini-batches and dropout masks. So their parameters are stacked
along a leading grid axis (weights ``(G, fan_in, fan_out)``, biases ``(G, 1, fan_out)``),
every layer is one batched matrix product (``torch.baddbmm``) and one optimiser step
updates all of them: a full sweep costs about one run on a GPU, and on a CPU the same
arithmetic as ``G`` separate runs without their per-step overhead.

The optimiser is :class:`GridAdamW`, ``torch.optim.AdamW`` with one learning rate and one
weight decay per grid point (a stock optimiser takes one per parameter group, so it would
need ``G`` separate tensors per layer); ``tests/test_evaluation_grid.py`` pins it to
``torch.optim.AdamW`` step for step.

After every epoch each point is scored on the validation clips (accuracy, or macro ROC-AUC
for tagging; on a tie a validation loss lower by 0.1 % counts as progress) and its best
epoch's weights are kept; training stops once no point has improved for ``patience``
epochs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.evaluation.metrics import roc_auc

if TYPE_CHECKING:
    from trainer.evaluation.protocol import ProbeConfig

__all__ = ["GridAdamW", "GridFit", "grid_forward", "grid_logits", "init_grid", "train_grid"]

_EVAL_CHUNK = 4096  # rows per forward pass when scoring validation / test clips
#: A tie on the validation metric counts as progress only if the validation loss falls by
#: this relative amount (else separable data would never stop early).
_LOSS_MIN_DELTA = 1e-3

#: ``on_epoch(epoch, best_valid)``: called after every epoch with the best validation score
#: of any grid point so far.
EpochCallback = Callable[[int, float], None]


def init_grid(
    dims: Sequence[int], n_grid: int, seed: int, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Stacked weights and biases of an MLP, initialised as ``torch.nn.Linear`` would be.

    Parameters
    ----------
    dims : sequence of int
        Layer widths ``[d_in, (hidden,) n_out]``.
    n_grid : int
        Grid points ``G``; all start from the same values.
    seed : int
        Seed of the uniform ``±1/sqrt(fan_in)`` draws.
    device : torch.device or str

    Returns
    -------
    list of torch.Tensor
        ``[W1 (G, d_in, h), b1 (G, 1, h), ...]``, leaf tensors that require grad.
    """
    gen = torch.Generator().manual_seed(seed)
    params = []
    for fan_in, fan_out in itertools.pairwise(dims):
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * bound
        b = (torch.rand(1, fan_out, generator=gen) * 2 - 1) * bound
        params += [w.expand(n_grid, -1, -1).clone(), b.expand(n_grid, -1, -1).clone()]
    return [p.to(device).requires_grad_(True) for p in params]


def grid_forward(
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    dropout: float = 0.0,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Logits of every grid point.

    Parameters
    ----------
    params : sequence of torch.Tensor
        As :func:`init_grid` returns.
    x : torch.Tensor, shape (B, D)
        Features.
    dropout : float
        Dropout after hidden layers, applied only when ``gen`` is given (training), with
        one mask shared by all grid points.
    gen : torch.Generator, optional

    Returns
    -------
    torch.Tensor, shape (G, B, C)
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


@torch.no_grad()
def grid_logits(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Evaluation-mode logits ``(G, n, C)`` of the features ``x`` ``(n, D)``, in chunks."""
    return torch.cat(
        [grid_forward(params, x[i : i + _EVAL_CHUNK]) for i in range(0, len(x), _EVAL_CHUNK)],
        dim=1,
    )


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


class GridAdamW:
    """AdamW over stacked grid parameters, with one learning rate and weight decay per point.

    The update of ``torch.optim.AdamW`` (decoupled decay ``p -= lr * wd * p``, then the
    bias-corrected Adam step), applied to every grid point with its own ``lr`` and ``wd``;
    decay applies to the weight matrices only (``params[0::2]``), not to the biases.

    Parameters
    ----------
    params : list of torch.Tensor
        As :func:`init_grid` returns, shape ``(G, ...)`` each.
    lr, weight_decay : torch.Tensor, shape (G,)
    betas : (float, float)
    eps : float
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
        """One update from the parameters' ``.grad``, which it then clears."""
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


def _score(
    logits: torch.Tensor, target: torch.Tensor, task: str, target_np: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validation metric and loss per grid point, each ``(G,)``."""
    loss = _loss(logits, target, task).cpu().numpy().astype(np.float64)
    if task == "classification":
        metric = (logits.argmax(dim=2) == target).double().mean(dim=1).cpu().numpy()
    else:
        metric = np.nanmean(roc_auc(target_np, logits.double().cpu().numpy()), axis=1)
    return metric, loss


@dataclass
class GridFit:
    """What :func:`train_grid` returns.

    Attributes
    ----------
    params : list of torch.Tensor
        Every grid point's best-epoch weights, stacked as :func:`init_grid`'s.
    record : list of dict
        Per grid point: ``lr``, ``weight_decay``, ``epochs`` (the kept epoch), ``valid``
        (its validation score) and ``valid_loss``.
    chosen : int
        The grid point with the best validation score (then the lowest loss, then the
        first).
    """

    params: list[torch.Tensor]
    record: list[dict[str, Any]]
    chosen: int

    def chosen_params(self) -> list[torch.Tensor]:
        """The chosen point's weights, with a grid axis of 1."""
        return [p[self.chosen : self.chosen + 1] for p in self.params]


def train_grid(
    Xtr: torch.Tensor,
    Ttr: torch.Tensor,
    Xva: torch.Tensor,
    Tva: torch.Tensor,
    n_out: int,
    task: str,
    config: ProbeConfig,
    seed: int,
    on_epoch: EpochCallback | None = None,
) -> GridFit:
    """Train every (lr, weight decay) point of ``config``'s grid; keep each one's best epoch.

    Parameters
    ----------
    Xtr : torch.Tensor, shape (n_train, D)
        Standardised training features (on the training device).
    Ttr : torch.Tensor
        Training class indices ``(n_train,)`` (int64) or tags ``(n_train, C)`` (float32).
    Xva, Tva : torch.Tensor
        The same for the validation clips.
    n_out : int
        Classes (tags) ``C``.
    task : {"classification", "tagging"}
    config : ProbeConfig
        ``classifier``, ``hidden``, ``dropout``, ``lrs``, ``weight_decays``, ``epochs``,
        ``patience``, ``batch_size``.
    seed : int
        Initial weights, batch order and dropout masks.
    on_epoch : callable, optional
        ``on_epoch(epoch, best_valid)`` after every epoch (progress reports).

    Returns
    -------
    GridFit
    """
    device = Xtr.device
    grid = [(lr, wd) for lr in config.lrs for wd in config.weight_decays]
    n_grid = len(grid)
    d_in = Xtr.shape[1]
    dims = [d_in, config.hidden, n_out] if config.classifier == "mlp" else [d_in, n_out]
    params = init_grid(dims, n_grid, seed, device)
    opt = GridAdamW(
        params,
        torch.tensor([g[0] for g in grid], dtype=torch.float32, device=device),
        torch.tensor([g[1] for g in grid], dtype=torch.float32, device=device),
    )
    Tva_np = Tva.cpu().numpy()
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
            logits = grid_forward(params, Xtr[idx], config.dropout, gen)
            _loss(logits, Ttr[idx], task).sum().backward()
            opt.step()
        metric, loss = _score(grid_logits(params, Xva), Tva, task, Tva_np)
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
        if on_epoch is not None:
            on_epoch(epoch, float(np.max(best_metric)))
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
    return GridFit(best, record, chosen)
