"""Tests for trainer.weighting: each method's defining behaviour on toy problems (CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainer.weighting import (
    DWA,
    WEIGHTINGS,
    Equal,
    Fixed,
    GradNorm,
    Uncertainty,
    build_weighting,
    dwa_weights,
)

NAMES = ("a", "b", "c")


def _losses(*values: float) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(v) for n, v in zip(NAMES, values, strict=False)}


# -- registry / equal / fixed ----------------------------------------------------------------
def test_build_weighting_known_and_unknown() -> None:
    assert set(WEIGHTINGS) == {"equal", "fixed", "uncertainty", "dwa", "gradnorm"}
    for name, cls in WEIGHTINGS.items():
        assert isinstance(build_weighting(name, NAMES), cls)
    with pytest.raises(ValueError, match="gradnorm"):
        build_weighting("pcgrad", NAMES)


def test_equal_sums_losses() -> None:
    w = Equal(NAMES)
    total = w(_losses(1.5, 2.25, 0.125))
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(3.875, abs=0)
    assert w.weights() == {"a": 1.0, "b": 1.0, "c": 1.0}
    # a subset of the workers is allowed for the sum-type methods
    assert w({"b": torch.tensor(2.0)}).item() == 2.0


def test_equal_gradients_are_ones() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    Equal(NAMES)({n: x[i] * 1.0 for i, n in enumerate(NAMES)}).backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_fixed_applies_weights_exactly() -> None:
    w = Fixed(NAMES, weights={"a": 0.5, "c": 4.0})
    assert w.weights() == {"a": 0.5, "b": 1.0, "c": 4.0}
    assert w(_losses(2.0, 3.0, 0.25)).item() == 0.5 * 2.0 + 1.0 * 3.0 + 4.0 * 0.25
    x = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    w({n: x[i] * 2.0 for i, n in enumerate(NAMES)}).backward()
    assert x.grad.tolist() == [1.0, 2.0, 8.0]


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="unknown"):
        Fixed(NAMES, weights={"zz": 2.0})
    for name in WEIGHTINGS:
        w = build_weighting(name, NAMES)
        with pytest.raises(ValueError, match="unknown"):
            w({"a": torch.tensor(1.0), "zz": torch.tensor(1.0)}, shared=torch.zeros(1))
    with pytest.raises(ValueError, match="missing"):
        DWA(NAMES)({"a": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="duplicate"):
        Equal(["a", "a"])


# -- uncertainty -----------------------------------------------------------------------------
def test_uncertainty_formula_and_weights() -> None:
    w = Uncertainty(NAMES)
    with torch.no_grad():
        w.log_var.copy_(torch.tensor([0.0, 1.0, -2.0]))
    total = w(_losses(2.0, 3.0, 0.5))
    expected = 2.0 + (math.exp(-1.0) * 3.0 + 1.0) + (math.exp(2.0) * 0.5 - 2.0)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert list(w.weights().values()) == pytest.approx([1.0, math.exp(-1.0), math.exp(2.0)])


def test_uncertainty_learns_inverse_noise_variance() -> None:
    """Two regression tasks on a shared linear model; task b has 10x the target noise.

    With MSE losses the optimum of ``exp(-s) L + s`` is ``exp(-s) = 1 / L``: the noisier
    task ends up with the smaller weight, each weight close to 1 / its residual MSE.
    """
    g = torch.Generator().manual_seed(0)
    n, d = 512, 8
    x = torch.randn(n, d, generator=g)
    coef = torch.randn(d, 2, generator=g)
    noise = torch.randn(n, 2, generator=g) * torch.tensor([0.1, 1.0])
    y = x @ coef + noise

    torch.manual_seed(0)
    model = nn.Linear(d, 2)
    weighting = Uncertainty(["a", "b"])
    opt = torch.optim.Adam([*model.parameters(), *weighting.parameters()], lr=0.03)
    for _ in range(1500):
        pred = model(x)
        losses = {
            "a": ((pred[:, 0] - y[:, 0]) ** 2).mean(),
            "b": ((pred[:, 1] - y[:, 1]) ** 2).mean(),
        }
        opt.zero_grad()
        weighting(losses).backward()
        opt.step()
        weighting.after_step({k: v.item() for k, v in losses.items()})

    with torch.no_grad():
        mse = ((model(x) - y) ** 2).mean(dim=0)
    weights = weighting.weights()
    assert weights["b"] < weights["a"] / 20  # noise variance ratio is 100
    assert weights["a"] == pytest.approx(1.0 / mse[0].item(), rel=0.05)
    assert weights["b"] == pytest.approx(1.0 / mse[1].item(), rel=0.05)
    # residual MSEs themselves are close to the noise variances
    assert mse[0].item() == pytest.approx(0.01, rel=0.25)
    assert mse[1].item() == pytest.approx(1.0, rel=0.25)


# -- DWA -------------------------------------------------------------------------------------
def _feed(w: DWA, sequences: dict[str, list[float]]) -> None:
    for step in range(len(next(iter(sequences.values())))):
        w.after_step({k: v[step] for k, v in sequences.items()})


def test_dwa_formula_matches_numpy() -> None:
    last = np.array([0.9, 0.3, 2.0])
    before = np.array([1.0, 0.6, 1.0])
    temperature = 2.0
    r = last / before
    e = np.exp(r / temperature)
    expected = len(r) * e / e.sum()
    got = dwa_weights(torch.tensor(last), torch.tensor(before), temperature).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)

    # the same through the module: period averages of (before, last), constant within a period
    w = DWA(NAMES, temperature=temperature, period=4)
    seqs = {n: [before[i]] * 4 + [last[i]] * 4 for i, n in enumerate(NAMES)}
    _feed(w, seqs)
    np.testing.assert_allclose(list(w.weights().values()), expected, rtol=1e-6)
    total = w(_losses(1.0, 2.0, 3.0)).item()
    assert total == pytest.approx(float(expected @ np.array([1.0, 2.0, 3.0])), rel=1e-6)


def test_dwa_averages_over_period() -> None:
    w = DWA(["a", "b"], temperature=1.0, period=3)
    _feed(w, {"a": [1.0, 2.0, 3.0, 1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0, 4.0, 4.0, 4.0]})
    r = np.array([1.0 / 2.0, 4.0 / 2.0])
    expected = 2 * np.exp(r) / np.exp(r).sum()
    np.testing.assert_allclose(list(w.weights().values()), expected, rtol=1e-6)


def test_dwa_slow_task_gets_larger_weight() -> None:
    period, n_periods = 10, 5
    w = DWA(["slow", "fast"], period=period)
    seen = []
    for p in range(n_periods):
        for _ in range(period):
            w.after_step({"slow": 1.0 * 0.98**p, "fast": 1.0 * 0.5**p})
        seen.append(w.weights())
    # weights stay 1 until two period averages exist
    assert seen[0] == {"slow": 1.0, "fast": 1.0}
    for weights in seen[1:]:
        assert weights["slow"] > weights["fast"]
        assert sum(weights.values()) == pytest.approx(2.0, rel=1e-6)
    assert seen[-1]["slow"] == pytest.approx(
        2 * math.exp(0.49) / (math.exp(0.49) + math.exp(0.25)), rel=1e-6
    )


def test_dwa_equal_ratios_give_ones() -> None:
    w = DWA(NAMES, period=5)
    for p in range(4):
        for _ in range(5):
            w.after_step({"a": 3.0 * 0.7**p, "b": 0.1 * 0.7**p, "c": 50.0 * 0.7**p})
    assert list(w.weights().values()) == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)


def test_dwa_leaves_non_finite_steps_out_of_the_period_average() -> None:
    w = DWA(["a"], period=3)
    w.after_step({"a": float("nan")})
    assert (int(w.calls), int(w.count)) == (1, 0)  # counts toward the period, not the average
    w.after_step({"a": torch.tensor(1.0)})  # a device tensor, as the training loop passes
    w.after_step({"a": 3.0})
    assert w.history[1].tolist() == [2.0] and (int(w.count), int(w.periods)) == (0, 1)
    for _ in range(3):  # a period with no finite step repeats the previous average
        w.after_step({"a": float("inf")})
    assert w.history.tolist() == [[2.0], [2.0]] and list(w.weights().values()) == [1.0]


def test_dwa_reads_nothing_back_from_the_device_after_its_first_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = DWA(NAMES, period=2)
    w.after_step(dict.fromkeys(NAMES, 1.0))
    monkeypatch.setattr(torch.Tensor, "__int__", lambda self: pytest.fail("host read"))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("host read"))
    for p in range(6):
        w.after_step({n: torch.tensor(0.9**p) for n in NAMES})


# -- GradNorm --------------------------------------------------------------------------------
class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 16)
        self.head_a = nn.Linear(16, 1)
        self.head_b = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.shared(x))
        return self.head_a(h).squeeze(-1), self.head_b(h).squeeze(-1)


def _gradnorm_problem(
    scale: float = 100.0,
) -> tuple[_TwoHeads, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=g)
    ya = torch.sin(x @ torch.randn(8, generator=g))
    yb = scale * torch.sin(x @ torch.randn(8, generator=g))
    torch.manual_seed(1)
    return _TwoHeads(), x, ya, yb


def _train_gradnorm(alpha: float, scale: float, steps: int = 300) -> dict[str, list[float]]:
    """Train the toy problem; per step, log G_b / G_a and (r_b / r_a) ** alpha (as logs)."""
    model, x, ya, yb = _gradnorm_problem(scale)
    w = GradNorm(["a", "b"], alpha=alpha)
    opt = torch.optim.Adam(
        [
            {"params": model.parameters(), "lr": 1e-3},
            {"params": w.parameters(), "lr": 1e-2, "weight_decay": 0.0},
        ]
    )
    log = {"ratio": [], "target": []}
    for _ in range(steps):
        pa, pb = model(x)
        losses = {"a": ((pa - ya) ** 2).mean(), "b": ((pb - yb) ** 2).mean()}
        opt.zero_grad()
        w(losses, shared=model.shared.weight).backward()
        opt.step()
        w.after_step({k: v.item() for k, v in losses.items()})
        assert sum(w.weights().values()) == pytest.approx(2.0, rel=1e-5)
        g = w.last_grad_norms
        rel = torch.stack([losses["a"], losses["b"]]).detach() / w.initial_losses
        log["ratio"].append(math.log(g[1] / g[0]))
        log["target"].append(alpha * math.log(rel[1] / rel[0]))
    return log


def test_gradnorm_brings_gradient_norms_together() -> None:
    """Targets scaled x1 and x100: the weighted gradient norms at the shared layer start ~90x
    apart and end near GradNorm's target ratio ``(r_b / r_a) ** alpha`` (a factor < 2)."""
    log = _train_gradnorm(alpha=1.5, scale=100.0)
    start = log["ratio"][0]  # weights are still 1 at the first call
    assert start > math.log(30)
    end = float(np.mean(log["ratio"][-50:]))  # the L1 objective makes the weights chatter
    target = float(np.mean(log["target"][-50:]))
    assert abs(end) < 0.2 * abs(start), (start, end)
    assert end == pytest.approx(target, abs=0.25)


def test_gradnorm_alpha_zero_equalises_gradient_norms() -> None:
    log = _train_gradnorm(alpha=0.0, scale=30.0)
    assert log["ratio"][0] > math.log(10)
    assert abs(float(np.mean(log["ratio"][-50:]))) < 0.15  # within ~15 % of equal


def test_gradnorm_one_backward_splits_gradients() -> None:
    """The model gets the weighted losses' gradient; the weights get L_grad's only."""
    model, x, ya, yb = _gradnorm_problem()
    w = GradNorm(["a", "b"])
    with torch.no_grad():
        w.w.copy_(torch.tensor([1.5, 0.5]))
    pa, pb = model(x)
    la, lb = ((pa - ya) ** 2).mean(), ((pb - yb) ** 2).mean()
    w({"a": la, "b": lb}, shared=model.shared.weight).backward()
    got = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    pa, pb = model(x)
    (1.5 * ((pa - ya) ** 2).mean() + 0.5 * ((pb - yb) ** 2).mean()).backward()
    for g_got, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g_got, p.grad)

    # at the first call r_i = 1, so target_i = mean(G) and dL_grad/dw_i = sign(G_i - mean) n_i
    n = w.last_grad_norms / w.w.detach()
    sign = torch.sign(w.last_grad_norms - w.last_grad_norms.mean())
    torch.testing.assert_close(w.w.grad, sign * n)
    torch.testing.assert_close(w.initial_losses, torch.stack([la, lb]).detach())


def test_gradnorm_requires_shared_and_records_initial_once() -> None:
    model, x, ya, yb = _gradnorm_problem()
    w = GradNorm(["a", "b"])
    pa, pb = model(x)
    losses = {"a": ((pa - ya) ** 2).mean(), "b": ((pb - yb) ** 2).mean()}
    with pytest.raises(ValueError, match="shared"):
        w(losses)
    with torch.no_grad():  # validation pass: no recording, plain weighted sum
        pa, pb = model(x)
        val = {"a": ((pa - ya) ** 2).mean(), "b": ((pb - yb) ** 2).mean()}
        assert w(val, shared=model.shared.weight).item() == pytest.approx(
            sum(v.item() for v in val.values())
        )
    assert not bool(w.has_initial)
    w(losses, shared=model.shared.weight)
    first = w.initial_losses.clone()
    w({k: v * 0.5 for k, v in losses.items()}, shared=model.shared.weight)
    torch.testing.assert_close(w.initial_losses, first)


def test_gradnorm_renormalises_and_clamps() -> None:
    w = GradNorm(NAMES, min_weight=1e-2)
    with torch.no_grad():
        w.w.copy_(torch.tensor([3.0, -1.0, 1.0]))
    w.after_step({})
    weights = torch.tensor(list(w.weights().values()))
    assert weights.sum().item() == pytest.approx(3.0, rel=1e-6)
    assert (weights > 0).all()
    torch.testing.assert_close(weights, torch.tensor([3.0, 0.01, 1.0]) * 3.0 / 4.01)


# -- state dict ------------------------------------------------------------------------------
def test_dwa_state_dict_resume_is_exact() -> None:
    rng = np.random.default_rng(0)
    seq = rng.uniform(0.5, 2.0, size=(37, 3))
    ref = DWA(NAMES, period=5)
    for row in seq:
        ref.after_step(dict(zip(NAMES, row, strict=True)))

    first = DWA(NAMES, period=5)
    for row in seq[:13]:  # stop mid-period
        first.after_step(dict(zip(NAMES, row, strict=True)))
    resumed = DWA(NAMES, period=5)
    resumed.load_state_dict(first.state_dict())
    for row in seq[13:]:
        resumed.after_step(dict(zip(NAMES, row, strict=True)))
    assert resumed.weights() == ref.weights()
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_gradnorm_and_uncertainty_state_dict_round_trip() -> None:
    model, x, ya, yb = _gradnorm_problem()
    w = GradNorm(["a", "b"])
    pa, pb = model(x)
    w(
        {"a": ((pa - ya) ** 2).mean(), "b": ((pb - yb) ** 2).mean()}, shared=model.shared.weight
    ).backward()
    with torch.no_grad():
        w.w.sub_(0.1 * w.w.grad)
    w.after_step({})
    state = w.state_dict()
    assert set(state) == {"w", "initial_losses", "has_initial"}
    fresh = GradNorm(["a", "b"])
    fresh.load_state_dict(state)
    assert fresh.weights() == w.weights()
    assert torch.equal(fresh.initial_losses, w.initial_losses)
    assert bool(fresh.has_initial)

    u = Uncertainty(NAMES)
    with torch.no_grad():
        u.log_var.copy_(torch.tensor([0.3, -1.2, 2.5]))
    u2 = Uncertainty(NAMES)
    u2.load_state_dict(u.state_dict())
    assert u2.weights() == u.weights()

    f = Fixed(NAMES, weights={"b": 7.0})
    f2 = Fixed(NAMES)
    f2.load_state_dict(f.state_dict())
    assert f2.weights() == f.weights()
