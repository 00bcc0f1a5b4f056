"""Learning diagnostics: the formulas on constructed data, and what a tiny run logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from stores import TINY_PASE, build_store, tone_corpus

from trainer.config import PretrainConfig
from trainer.data import CropDataset
from trainer.diagnostics import (
    HELDOUT,
    PLOT,
    ProbeTask,
    R2Accumulator,
    channel_variance_stats,
    effective_rank,
    plot_diagnostics,
    pool_mean_std,
    r2_score,
)
from trainer.pretrain import TrainingError, pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORKERS = ["mfcc", "chroma", "tempo", "lim"]  # frame-rate, frame-rate, clip-rate, info-max


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_k_equal_orthogonal_directions_have_effective_rank_k(k: int) -> None:
    # Rows +-3 e_i in 10 dimensions, rotated: k principal directions of equal variance.
    q, _ = np.linalg.qr(np.random.default_rng(k).standard_normal((10, 10)))
    rows = [s * 3.0 * q[:, i] for i in range(k) for s in (1, -1)]
    X = np.array(rows) + 7.0  # an offset: the formula centres first
    assert effective_rank(X) == pytest.approx(k, rel=1e-12)


def test_rank_one_data_has_effective_rank_one_and_constant_data_zero() -> None:
    t = np.linspace(-2, 5, 40)
    X = np.outer(t, [1.0, -2.0, 0.5, 4.0]) + np.array([1.0, 2.0, 3.0, 4.0])
    assert effective_rank(X) == pytest.approx(1.0, rel=1e-12)
    assert effective_rank(torch.tensor(X)) == pytest.approx(1.0, rel=1e-12)
    assert effective_rank(np.ones((6, 3))) == 0.0


def test_unequal_variances_give_the_entropy_formula() -> None:
    # Two orthogonal directions with variance shares 0.8 and 0.2: exp(H(0.8, 0.2)).
    X = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert effective_rank(X) == pytest.approx(math.exp(h), rel=1e-12)


def test_dead_channels_are_those_far_below_the_median_variance() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 10))
    X = (X - X.mean(0)) / X.std(0)  # every channel variance exactly 1
    X[:, 7] *= 0.05  # variance 0.0025 <= 0.01 * median: dead
    X[:, 8] = 3.0  # constant: dead
    X[:, 9] *= 0.2  # variance 0.04: alive
    stats = channel_variance_stats(X, dead_ratio=0.01)
    assert stats["dead_fraction"] == 0.2
    assert stats["var_median"] == pytest.approx(1.0)
    assert stats["var_min"] == 0.0 and stats["var_max"] == pytest.approx(1.0)
    assert channel_variance_stats(np.zeros((5, 4)))["dead_fraction"] == 1.0


def test_r2_is_one_for_perfect_predictions_and_zero_for_the_mean() -> None:
    y = torch.randn(4, 25, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor(
        [1.0, 5.0, 0.1])
    assert r2_score(y, y) == 1.0
    mean = y.reshape(-1, 3).double().mean(0).expand(4, 25, 3)
    assert r2_score(mean, y) == pytest.approx(0.0, abs=1e-12)


def test_r2_is_the_variance_weighted_average_over_dimensions_and_batches() -> None:
    # Dim 0: y = (1, -1, 1, -1), SST 4, predictions 0 -> SSE 4; dim 1: y = (2, 0, 2, 0),
    # SST 4, predicted exactly. R^2 = 1 - (4 + 0) / (4 + 4) = 0.5, fed in two batches.
    y = np.array([[1.0, 2.0], [-1.0, 0.0], [1.0, 2.0], [-1.0, 0.0]])
    pred = np.array([[0.0, 2.0], [0.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    acc = R2Accumulator()
    acc.update(torch.tensor(pred[:1]), torch.tensor(y[:1]))
    acc.update(torch.tensor(pred[1:]), torch.tensor(y[1:]))
    assert acc.value() == 0.5
    assert r2_score(pred, y) == 0.5
    assert R2Accumulator().value() is None
    assert r2_score(np.zeros((3, 2)), np.ones((3, 2))) is None  # a target without variance
    with pytest.raises(ValueError, match="differ in shape"):
        r2_score(np.zeros((3, 2)), np.zeros((3, 1)))


def test_mean_std_pooling() -> None:
    h = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])  # [B=1, D=2, T=2]
    assert pool_mean_std(h).tolist() == [[2.0, 2.0, 1.0, 0.0]]


# --------------------------------------------------------------------------- tiny runs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("diagnostics")
    return build_store(tone_corpus(root / "audio", n_clips=18, seconds=2.0), root / "tones.h5",
                       "mfcc,chroma,tempo")


def tiny(store: Path, out: Path, **overrides: object) -> PretrainConfig:
    base: dict[str, object] = dict(
        store=[str(store)], out=str(out), encoder="pase+", encoder_kwargs=TINY_PASE,
        workers=WORKERS, batch_size=8, crop_seconds=0.5, steps=6, lr=3e-3, warmup_steps=2,
        log_every=1, eval_every=3, save_every=1000, device="cpu", diag_clips=12,
        valid_batches=2,
    )
    base.update(overrides)
    return PretrainConfig(**base)  # type: ignore[arg-type]


def rows(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_a_tiny_run_logs_r2_collapse_statistics_and_probe_accuracy(store: Path,
                                                                  tmp_path: Path) -> None:
    run = pretrain(tiny(store, tmp_path / "run", valid_store=[str(store)],
                        probe_store=str(store), probe_every=2), progress=False)
    valid = rows(run, "valid")
    assert [r["step"] for r in valid] == [0, 3, 6]
    for r in valid:
        assert set(r["valid"]) == set(WORKERS)
        assert set(r["r2"]) == {"mfcc", "chroma", "tempo"}  # regression workers only
        assert all(isinstance(v, float) and v <= 1.0 for v in r["r2"].values())
    # tempo trains with MSE (one dimension per clip), so its R^2 is 1 - loss * N / SST,
    # with SST over the same validation crops, normalised like the training data.
    targets = ["mfcc", "chroma", "tempo"]
    train_data = CropDataset(str(store), targets, crop_frames=50, pairs=True)
    valid_data = CropDataset(str(store), targets, crop_frames=50, pairs=True,
                             normalise_like=train_data)
    y = torch.cat([valid_data.batch(0 + 7919, k, 8).targets["tempo"] for k in range(2)])
    sst = float(((y.double() - y.double().mean()) ** 2).sum())
    assert sst > 0
    for r in valid:
        assert r["r2"]["tempo"] == pytest.approx(1 - r["valid"]["tempo"] * 16 / sst, rel=1e-5)
    diag = rows(run, "diag")
    assert [r["step"] for r in diag] == [0, 2, 3, 4, 6]
    collapse = {0, 3, 6}  # step 0 (random init), every eval_every, the end
    for r in diag:
        d = r["diag"]
        assert ("erank" in d) == (r["step"] in collapse)
        assert ("probe_accuracy" in d) == (r["step"] in {0, 2, 4, 6})  # every probe_every
        assert 0.0 <= d.get("probe_accuracy", 0.0) <= 1.0
        if "erank" in d:
            assert 1.0 <= d["erank"] <= 11.0  # 12 crops, centred: at most 11
            assert 1.0 <= d["erank_mean"] <= 11.0
            assert 0.0 <= d["dead_fraction"] <= 1.0
    assert diag[0]["diag"]["erank"] != diag[-1]["diag"]["erank"]  # the encoder changed
    # The held-out batch is fixed and kept in the run folder: 12 crops of 0.5 s, from 12
    # distinct clips of the (validation) store.
    with np.load(run / HELDOUT) as f:
        assert f["wave"].shape == (12, 8000) and f["wave"].dtype == np.int16
        assert len(set(f["clip_id"].tolist())) == 12
    png = (run / PLOT).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_diagnostics_do_not_change_the_training_losses(store: Path, tmp_path: Path) -> None:
    # Distortions on: the step generator's stream is in play too.
    plain = pretrain(tiny(store, tmp_path / "plain", diagnostics=False, distort=True),
                     progress=False)
    full = pretrain(tiny(store, tmp_path / "full", distort=True, valid_store=[str(store)],
                         probe_store=str(store), probe_every=1, eval_every=2),
                    progress=False)
    a, b = rows(plain, "train"), rows(full, "train")
    assert [r["step"] for r in a] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert rows(plain, "diag") == [] and not (plain / PLOT).exists()
    assert len(rows(full, "diag")) == 7  # probe at every step 0..6
    sa = torch.load(plain / "checkpoint.pt", weights_only=False)["model"]
    sb = torch.load(full / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_resumed_run_reuses_its_held_out_batch(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    pretrain(tiny(store, out, steps=3, save_every=3), progress=False)
    first = (out / HELDOUT).read_bytes()
    cfg = tiny(store, out, steps=6, save_every=3)
    pretrain(cfg, resume=True, progress=False)
    assert (out / HELDOUT).read_bytes() == first
    assert [r["step"] for r in rows(out, "diag")] == [0, 3, 6]


def test_probe_plan_uses_the_stores_splits_else_grouped_folds(store: Path,
                                                             tmp_path: Path) -> None:
    task = ProbeTask.plan(store)
    # tone_corpus: rounds of six pitch classes go to train, train, valid (18 clips).
    assert task.protocol == "split"
    (train, held), = task.folds
    assert train.tolist() == list(range(12)) and held.tolist() == list(range(12, 18))
    X = np.eye(6)[task.y] + 0.01 * np.arange(18)[:, None]  # one-hot of the class: separable
    assert task.accuracy(X) == 1.0
    # No splits: grouped 5-fold over the groups g0..g5 (clips 2i and 2i + 1).
    src = _blank_column(tone_corpus(tmp_path / "audio", n_clips=12, seconds=1.0), "split")
    folds = ProbeTask.plan(build_store(src, tmp_path / "nosplit.h5", "mfcc"))
    assert folds.protocol == "5-fold" and len(folds.folds) == 5
    held = np.concatenate([ev for _, ev in folds.folds])
    assert sorted(held.tolist()) == list(range(12))
    for tr, ev in folds.folds:
        assert not {i // 2 for i in tr} & {i // 2 for i in ev}  # groups never straddle


def test_a_probe_store_without_labels_is_refused_before_training(store: Path, tmp_path: Path,
                                                                 corpus_unlabeled: Path
                                                                 ) -> None:
    with pytest.raises(TrainingError, match=r"probe_store: .*two classes"):
        pretrain(tiny(store, tmp_path / "run", probe_store=str(corpus_unlabeled)),
                 progress=False)
    assert not (tmp_path / "run").exists()


def _blank_column(csv_path: Path, column: str) -> Path:
    """Empty one column of a tone_corpus CSV (path, label, split, group)."""
    lines = csv_path.read_text().splitlines()
    k = lines[0].split(",").index(column)
    body = [line.split(",") for line in lines[1:]]
    for cells in body:
        cells[k] = ""
    csv_path.write_text("\n".join([lines[0], *map(",".join, body)]) + "\n")
    return csv_path


@pytest.fixture(scope="module")
def corpus_unlabeled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unlabeled")
    src = _blank_column(tone_corpus(root / "audio", n_clips=6, seconds=1.0), "label")
    return build_store(src, root / "unlabeled.h5", "mfcc")


def test_plot_diagnostics_of_a_run_without_rows_is_none(tmp_path: Path) -> None:
    assert plot_diagnostics(tmp_path) is None
