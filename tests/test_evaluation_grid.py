"""The batched probe grid: stacked models, the per-point AdamW, best-epoch selection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from trainer.evaluation import GridAdamW, ProbeConfig, grid_forward, train_grid
from trainer.evaluation.grid import init_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LRS = (1e-4, 1e-3, 3e-2)
WEIGHT_DECAYS = (0.0, 1e-3, 0.5)


def test_grid_adamw_equals_torch_adamw_step_for_step() -> None:
    """Every grid point follows torch.optim.AdamW with its own lr and weight decay on the
    weights (biases undecayed), given the same gradients."""
    grid = list(itertools.product(LRS, WEIGHT_DECAYS))
    params = init_grid([6, 5, 3], len(grid), seed=0)
    opt = GridAdamW(params, torch.tensor([lr for lr, _ in grid]),
                    torch.tensor([wd for _, wd in grid]))
    reference = []
    for g, (lr, wd) in enumerate(grid):
        mine = [p[g].detach().clone().requires_grad_(True) for p in params]
        torch_opt = torch.optim.AdamW(
            [{"params": mine[0::2], "weight_decay": wd}, {"params": mine[1::2],
                                                          "weight_decay": 0.0}],
            lr=lr, betas=(0.9, 0.999), eps=1e-8)
        reference.append((mine, torch_opt))

    gen = torch.Generator().manual_seed(1)
    for step in range(30):
        scale = 10.0 ** (step % 4 - 2)  # gradients from 0.01 to 10
        grads = [torch.randn(p.shape, generator=gen) * scale for p in params]
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad.clone()
        opt.step()
        for g, (mine, torch_opt) in enumerate(reference):
            for q, grad in zip(mine, grads, strict=True):
                q.grad = grad[g].clone()
            torch_opt.step()
            for p, q in zip(params, mine, strict=True):
                torch.testing.assert_close(p[g], q, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in params)
    assert opt.step_count == 30


def test_grid_forward_is_each_point_as_a_plain_mlp() -> None:
    params = init_grid([4, 8, 3], 2, seed=3)
    with torch.no_grad():
        params[0][1] *= 2.0  # make the two points differ
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    out = grid_forward(params, x)
    assert out.shape == (2, 5, 3)
    for g in range(2):
        hidden = torch.relu(x @ params[0][g] + params[1][g])
        torch.testing.assert_close(out[g], hidden @ params[2][g] + params[3][g])


def test_init_grid_matches_the_bounds_of_torch_linear_and_is_shared_by_all_points() -> None:
    params = init_grid([16, 4], 3, seed=0)
    assert [tuple(p.shape) for p in params] == [(3, 16, 4), (3, 1, 4)]
    assert all(p.requires_grad for p in params)
    for p in params:
        assert torch.equal(p[0], p[1]) and torch.equal(p[0], p[2])
        assert p.abs().max() <= 1 / 4  # 1 / sqrt(fan_in)


def test_train_grid_keeps_each_points_best_epoch_and_chooses_the_best_point() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 240)
    X = (np.eye(3)[y] @ rng.normal(size=(3, 6)) * 2 + rng.normal(size=(240, 6)))
    Xt = torch.from_numpy(X.astype(np.float32))
    yt = torch.from_numpy(y)
    config = ProbeConfig(classifier="linear", lrs=(1e-5, 1e-1), weight_decays=(0.0,),
                         epochs=12, patience=12, batch_size=64)
    seen: list[tuple[int, float]] = []
    fit = train_grid(Xt[:160], yt[:160], Xt[160:], yt[160:], 3, "classification", config,
                     seed=0, on_epoch=lambda e, best: seen.append((e, best)))
    assert [e for e, _ in seen] == list(range(1, 13))
    assert [r["lr"] for r in fit.record] == [1e-5, 1e-1]
    assert fit.chosen == 1  # the tiny learning rate barely moves
    assert fit.record[1]["valid"] > fit.record[0]["valid"]
    assert seen[-1][1] == max(r["valid"] for r in fit.record)
    chosen = fit.chosen_params()
    logits = grid_forward(chosen, Xt[160:])
    accuracy = (logits[0].argmax(dim=1) == yt[160:]).double().mean().item()
    assert accuracy == fit.record[1]["valid"]  # the kept weights are the recorded epoch's
