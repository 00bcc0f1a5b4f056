"""Loss weighting for multi-task pre-training: one interface, five methods.

Every method turns a dict of per-worker scalar losses into the one total that the trainer
back-propagates, reports its current per-worker weights for logging, and keeps all the state
it needs for an exact resume in its ``state_dict`` (parameters and buffers).

The trainer's contract
----------------------
1. ``weighting = build_weighting(name, worker_names, **options).to(device)``.
2. Add ``weighting.parameters()`` to the optimiser in a group without weight decay (only
   ``Uncertainty`` and ``GradNorm`` have parameters).
3. Every step: ``total = weighting(losses, shared=last_shared_weight)``;
   ``total.backward()``; ``optimiser.step()``;
   ``weighting.after_step({name: loss.detach() ...})`` (device tensors: no host read); log
   ``weighting.weights()`` at log steps.

Methods
-------
equal
    Plain sum, every weight 1.
fixed
    Constant per-worker weights (``weights={"name": w}``; missing names get 1).
uncertainty
    Kendall, Gal & Cipolla (2018), regression form: learned ``s_i = log sigma_i^2``,
    ``total = sum_i exp(-s_i) L_i + s_i``.
dwa
    Dynamic weight average, Liu, Johns & Davison (2019), with loss averages taken over
    periods of ``period`` optimiser steps instead of epochs.
gradnorm
    Chen et al. (2018): learned weights pulled so that the weighted losses' gradient norms at
    a shared layer approach ``mean norm * (relative inverse training rate) ** alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DWA",
    "WEIGHTINGS",
    "Equal",
    "Fixed",
    "GradNorm",
    "Uncertainty",
    "Weighting",
    "build_weighting",
    "dwa_weights",
]


class Weighting(nn.Module):
    """Base class: combines per-worker scalar losses into one total.

    Parameters
    ----------
    names : Sequence[str]
        The workers' names, in a fixed order (the order of every internal tensor).

    Notes
    -----
    ``forward`` accepts losses for a subset of the workers for the methods whose total is a
    sum of independent terms (equal, fixed, uncertainty); DWA and GradNorm need every worker
    at every step. An unknown name is always a ``ValueError``.
    """

    #: Whether ``forward`` needs every worker's loss at every call.
    requires_all: bool = False

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        names = [str(n) for n in names]
        if not names:
            raise ValueError("a weighting needs at least one worker name")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate worker names: {names}")
        self.names: tuple[str, ...] = tuple(names)
        self._index = {n: i for i, n in enumerate(self.names)}

    @property
    def num_tasks(self) -> int:
        """Number of workers ``K``."""
        return len(self.names)

    # -- helpers -----------------------------------------------------------------------------
    def _gather(self, losses: Mapping[str, Tensor]) -> tuple[list[int], Tensor]:
        """Validate ``losses`` and stack them in worker order.

        Returns
        -------
        tuple[list[int], Tensor]
            Indices of the present workers and their losses as a float32 vector ``[n]``.
        """
        unknown = [k for k in losses if k not in self._index]
        if unknown:
            raise ValueError(f"unknown worker names {unknown}; known: {list(self.names)}")
        if not losses:
            raise ValueError("no losses given")
        if self.requires_all:
            missing = [n for n in self.names if n not in losses]
            if missing:
                raise ValueError(
                    f"{type(self).__name__} needs every worker's loss; missing {missing}"
                )
        idx = [i for i, n in enumerate(self.names) if n in losses]
        vals = []
        for i in idx:
            loss = losses[self.names[i]]
            if loss.numel() != 1:
                raise ValueError(
                    f"loss {self.names[i]!r} must be a scalar, got shape {tuple(loss.shape)}"
                )
            vals.append(loss.reshape(()).float())
        return idx, torch.stack(vals)

    @staticmethod
    def _select(vec: Tensor, idx: list[int], like: Tensor) -> Tensor:
        """``vec[idx]`` on ``like``'s device (an identity index keeps autograd simple)."""
        out = vec if len(idx) == vec.shape[0] else vec[idx]
        return out.to(like.device)

    # -- interface ---------------------------------------------------------------------------
    def forward(self, losses: dict[str, Tensor], shared: Tensor | None = None) -> Tensor:
        """Return the total loss to back-propagate.

        Parameters
        ----------
        losses : dict[str, Tensor]
            Scalar loss per worker name.
        shared : Tensor, optional
            The last shared layer's weight tensor (only GradNorm uses it).

        Returns
        -------
        Tensor
            A float32 scalar.
        """
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """Current weight per worker (for logging)."""
        raise NotImplementedError

    def after_step(self, losses: dict[str, float | Tensor]) -> None:
        """Hook called once per optimiser step with the detached loss values (floats, or
        0-d tensors that stay on the device: no weighting reads them on the host)."""


class Equal(Weighting):
    """Plain sum of the losses (every weight 1)."""

    def forward(self, losses: dict[str, Tensor], shared: Tensor | None = None) -> Tensor:
        _, vec = self._gather(losses)
        return vec.sum()

    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.names, 1.0)


class Fixed(Weighting):
    """Constant per-worker weights.

    Parameters
    ----------
    names : Sequence[str]
        Worker names.
    weights : Mapping[str, float], optional
        Weight per worker; names not given get 1.0; unknown names raise ``ValueError``.
    """

    def __init__(self, names: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(names)
        weights = dict(weights or {})
        unknown = [k for k in weights if k not in self._index]
        if unknown:
            raise ValueError(
                f"fixed weights for unknown workers {unknown}; known: {list(self.names)}"
            )
        values = [float(weights.get(n, 1.0)) for n in self.names]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"fixed weights must be finite, got {weights}")
        self.register_buffer("w", torch.tensor(values, dtype=torch.float32))

    def forward(self, losses: dict[str, Tensor], shared: Tensor | None = None) -> Tensor:
        idx, vec = self._gather(losses)
        return (self._select(self.w, idx, vec) * vec).sum()

    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.w.tolist(), strict=True))


class Uncertainty(Weighting):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla 2018), regression form.

    ``total = sum_i exp(-s_i) * L_i + s_i`` with learned ``s_i = log sigma_i^2``. At the
    optimum over ``s_i``, ``exp(-s_i) = 1 / L_i``.

    Parameters
    ----------
    names : Sequence[str]
        Worker names.
    init : float, default 0.0
        Initial ``s_i`` (0 means every weight starts at 1).
    """

    def __init__(self, names: Sequence[str], init: float = 0.0) -> None:
        super().__init__(names)
        self.log_var = nn.Parameter(torch.full((len(self.names),), float(init)))

    def forward(self, losses: dict[str, Tensor], shared: Tensor | None = None) -> Tensor:
        idx, vec = self._gather(losses)
        s = self._select(self.log_var, idx, vec).float()
        return (torch.exp(-s) * vec + s).sum()

    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, torch.exp(-self.log_var.detach()).tolist(), strict=True))


def dwa_weights(last: Tensor, before_last: Tensor, temperature: float = 2.0) -> Tensor:
    """Dynamic-weight-average weights from two consecutive loss averages.

    ``w_i = K * softmax_i(r_i / T)`` with ``r_i = last_i / before_last_i``.

    Parameters
    ----------
    last, before_last : Tensor
        Average loss per task over the latest and the previous period, shape ``[K]``.
    temperature : float, default 2.0
        Softmax temperature ``T``.

    Returns
    -------
    Tensor
        Weights ``[K]`` summing to ``K``, in ``last``'s dtype.
    """
    ratio = last / before_last.clamp_min(torch.finfo(before_last.dtype).tiny)
    return last.shape[0] * torch.softmax(ratio / temperature, dim=0)


class DWA(Weighting):
    """Dynamic weight average (Liu, Johns & Davison 2019) over periods of steps.

    Each worker's loss is averaged over ``period`` optimiser steps (fed by ``after_step``).
    At the end of every period, once two period averages exist, the weights become
    ``dwa_weights(avg(t-1), avg(t-2), temperature)``; before that they are all 1. All
    history lives in buffers, so a resume mid-period is exact.

    Parameters
    ----------
    names : Sequence[str]
        Worker names.
    temperature : float, default 2.0
        Softmax temperature ``T``.
    period : int, default 100
        Optimiser steps per averaging period (the paper's "epoch").
    """

    requires_all = True

    def __init__(self, names: Sequence[str], temperature: float = 2.0, period: int = 100) -> None:
        super().__init__(names)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if int(period) < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.temperature = float(temperature)
        self.period = int(period)
        k = len(self.names)
        self.register_buffer("w", torch.ones(k))
        self.register_buffer("acc", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        # history[0] = average over period t-2, history[1] = over period t-1
        self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))
        self.register_buffer("periods", torch.zeros((), dtype=torch.long))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        # Host copies of calls and periods, so that a step never reads the device; read
        # from the buffers once, at the first step after construction or a load.
        self._host: tuple[int, int] | None = None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        # A checkpoint from before ``calls`` existed: its period counted valid steps only.
        if prefix + "count" in state_dict:
            state_dict.setdefault(prefix + "calls", state_dict[prefix + "count"].clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host = None

    def forward(self, losses: dict[str, Tensor], shared: Tensor | None = None) -> Tensor:
        idx, vec = self._gather(losses)
        return (self._select(self.w, idx, vec) * vec).sum()

    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.w.tolist(), strict=True))

    @torch.no_grad()
    def after_step(self, losses: dict[str, float | Tensor]) -> None:
        """Accumulate one step's losses; close the period every ``period`` steps.

        A step with a non-finite loss still counts toward the period but not toward its
        average; a period with no finite step repeats the previous average. Runs on the
        losses' device with no host read.
        """
        try:
            values = torch.stack([torch.as_tensor(losses[n], dtype=torch.float64)
                                  .reshape(()).to(self.acc.device) for n in self.names])
        except KeyError as exc:
            raise ValueError(f"DWA.after_step needs every worker's loss; missing {exc}") from None
        if self._host is None:
            self._host = (int(self.calls), int(self.periods))
        calls, periods = self._host
        ok = torch.isfinite(values).all()
        self.acc += torch.where(ok, values, torch.zeros_like(values))
        self.count += ok.long()
        self.calls += 1
        calls += 1
        if calls % self.period:
            self._host = (calls, periods)
            return
        avg = torch.where(self.count > 0, self.acc / self.count.clamp_min(1), self.history[1])
        self.history.copy_(torch.stack([self.history[1], avg]))
        self.acc.zero_()
        self.count.zero_()
        self.periods += 1
        periods += 1
        self._host = (calls, periods)
        if periods >= 2:
            new = dwa_weights(self.history[1], self.history[0], self.temperature)
            self.w.copy_(new.to(self.w.dtype))


class GradNorm(Weighting):
    """GradNorm (Chen et al. 2018): learned weights that balance gradient norms.

    ``forward`` computes, for every worker, ``G_i = w_i * ||dL_i / d shared||_2`` (the norm
    detached, so ``G_i`` is differentiable w.r.t. ``w_i`` only), the relative inverse training
    rate ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))``, the detached target
    ``mean(G) * r_i ** alpha`` and ``L_grad = sum_i |G_i - target_i|``. It returns
    ``sum_i w_i.detach() * L_i + L_grad``: one backward trains the model with the weighted
    losses and the weights with ``L_grad`` only. ``after_step`` renormalises the weights to
    sum to ``K`` (after clamping at ``min_weight``).

    Parameters
    ----------
    names : Sequence[str]
        Worker names.
    alpha : float, default 1.5
        Strength of the pull toward equal training rates.
    min_weight : float, default 1e-3
        Floor applied to the weights before renormalising.

    Notes
    -----
    ``L_i(0)`` is recorded at the first call made with autograd enabled (a validation pass
    under ``no_grad`` neither records it nor computes ``L_grad``). Under ``no_grad`` the
    return value is the weighted sum alone. ``last_grad_norms`` holds the latest ``G_i``
    (detached) for logging.
    """

    requires_all = True

    def __init__(self, names: Sequence[str], alpha: float = 1.5, min_weight: float = 1e-3) -> None:
        super().__init__(names)
        if not min_weight > 0:
            raise ValueError(f"min_weight must be > 0, got {min_weight}")
        self.alpha = float(alpha)
        self.min_weight = float(min_weight)
        k = len(self.names)
        self.w = nn.Parameter(torch.ones(k))
        self.register_buffer("initial_losses", torch.ones(k))
        self.register_buffer("has_initial", torch.zeros((), dtype=torch.bool))
        self.last_grad_norms: Tensor | None = None

    def forward(self, losses: dict[str, Tensor], shared: Tensor | None = None) -> Tensor:
        if shared is None:
            raise ValueError("GradNorm needs `shared`: the last shared layer's weight tensor")
        _, vec = self._gather(losses)
        w = self.w.to(vec.device).float()
        weighted = (w.detach() * vec).sum()
        if not (torch.is_grad_enabled() and shared.requires_grad and vec.requires_grad):
            return weighted

        norms = []
        for name in self.names:
            (grad,) = torch.autograd.grad(
                losses[name], shared, retain_graph=True, allow_unused=True
            )
            if grad is None:
                norms.append(vec.new_zeros(()))
            else:
                norms.append(torch.linalg.vector_norm(grad.detach().float()))
        g = w * torch.stack(norms).to(vec.device)

        with torch.no_grad():
            current = vec.detach()
            # record L_i(0) at the first training call, without a host sync
            self.initial_losses.copy_(
                torch.where(
                    self.has_initial, self.initial_losses, current.to(self.initial_losses.device)
                )
            )
            self.has_initial.fill_(True)
            initial = self.initial_losses.to(vec.device)
            tiny = torch.finfo(torch.float32).tiny
            ratio = current / initial.clamp_min(tiny)
            rate = ratio / ratio.mean().clamp_min(tiny)
            target = g.detach().mean() * rate.pow(self.alpha)
        self.last_grad_norms = g.detach()
        grad_loss = (g - target).abs().sum()
        return weighted + grad_loss

    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.w.detach().tolist(), strict=True))

    @torch.no_grad()
    def after_step(self, losses: dict[str, float | Tensor]) -> None:
        """Clamp the weights at ``min_weight`` and renormalise them to sum to ``K``."""
        self.w.clamp_(min=self.min_weight)
        self.w.mul_(len(self.names) / self.w.sum())


WEIGHTINGS: dict[str, type[Weighting]] = {
    "equal": Equal,
    "fixed": Fixed,
    "uncertainty": Uncertainty,
    "dwa": DWA,
    "gradnorm": GradNorm,
}


def build_weighting(name: str, names: Sequence[str], **kwargs: object) -> Weighting:
    """Build a weighting by name.

    Parameters
    ----------
    name : str
        One of ``WEIGHTINGS`` (case-insensitive).
    names : Sequence[str]
        Worker names.
    **kwargs
        Method options (``weights`` for fixed; ``init`` for uncertainty; ``temperature``,
        ``period`` for dwa; ``alpha``, ``min_weight`` for gradnorm).

    Returns
    -------
    Weighting

    Raises
    ------
    ValueError
        If ``name`` is unknown.
    """
    key = name.lower()
    if key not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; choose from {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[key](names, **kwargs)
