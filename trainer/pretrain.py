"""Multi-task self-supervised pre-training: one readable loop.

    batch (clean crops + normalised targets) ─► distort (on the device) ─► encoder
      ─► worker heads ─► per-worker losses ─► weighting ─► AdamW step

Run as ``trainer pretrain ...`` or, on several GPUs, ``torchrun --nproc-per-node N -m
trainer pretrain ...`` (DDP; every rank draws its own crops from ``(seed, step, rank)``).
A checkpoint holds every state the run needs, so ``--resume`` continues exactly: the
losses after a resume equal those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from featurestore.store import open_stores
from trainer.config import PretrainConfig
from trainer.data import CropDataset, Prefetcher
from trainer.device import DeviceError, resolve_device
from trainer.diagnostics import (
    HELDOUT,
    ProbeTask,
    R2Accumulator,
    collapse_stats,
    heldout_batch,
    plot_diagnostics,
)
from trainer.distortions import DistortionConfig, Distortions
from trainer.encoder_file import ENCODER, atomic_save, save_encoder
from trainer.encoders import build_encoder
from trainer.weighting import build_weighting
from trainer.workers import Workers, resolve_workers

CHECKPOINT = "checkpoint.pt"


class TrainingError(RuntimeError):
    """A run that cannot go on (repeated non-finite losses, incompatible checkpoint)."""


class MultiTask(nn.Module):
    """The encoder and its worker heads: what DDP wraps and checkpoints hold."""

    def __init__(self, encoder: nn.Module, workers: Workers) -> None:
        super().__init__()
        self.encoder = encoder
        self.workers = workers

    def forward(self, x: torch.Tensor, wave: torch.Tensor, targets: dict[str, torch.Tensor],
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return self.workers(self.encoder(x), wave, targets, generator)


@dataclass
class Env:
    """Where this process runs: device, DDP rank and world size."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_env(device: str) -> Env:
    """Pick the device (:func:`trainer.device.resolve_device`) and, under torchrun, join
    the process group (NCCL on CUDA, gloo on CPU); each rank takes the CUDA device of its
    ``LOCAL_RANK``.

    Raises
    ------
    trainer.device.DeviceError
        A device name this machine's torch does not know or see, or a ``LOCAL_RANK`` past
        the visible CUDA devices.
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if dev.type == "cuda":
            count = torch.cuda.device_count()
            if local >= count:
                raise DeviceError(f"torchrun LOCAL_RANK {local}: only {count} CUDA device(s) "
                                  "visible; start at most that many processes per node")
            dev = torch.device("cuda", local)
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Env(dev, rank, world)


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def shared_parameter(encoder: nn.Module) -> torch.Tensor:
    """The last weight matrix of the encoder: where GradNorm measures gradient norms."""
    weights = [p for p in encoder.parameters() if p.ndim >= 2 and p.requires_grad]
    return weights[-1]


def step_generator(device: torch.device, seed: int, step: int, rank: int) -> torch.Generator:
    """The random stream of one step (distortions, LIM frames): a function of its key."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 997 + rank)
    return g


def _param_groups(model: nn.Module, weighting: nn.Module, cfg: PretrainConfig
                  ) -> list[dict[str, Any]]:
    """Weights decay; biases, norms and the weighting's own parameters (learned task
    weights, at their own learning rate) do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    learned = [p for p in weighting.parameters() if p.requires_grad]
    if learned:
        groups.append({"params": learned, "weight_decay": 0.0, "lr": cfg.weighting_lr})
    return groups


class RunLog:
    """Metrics as JSONL (every row), CSV (training rows) and TensorBoard (if installed)."""

    def __init__(self, out: Path, start_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.jsonl = out / "metrics.jsonl"
        self.csv = out / "metrics.csv"
        self.tb: Any = None
        if not enabled:
            return
        # A resumed run keeps the rows up to its checkpoint's step and rewrites the rest;
        # a fresh run (start_step 0) starts the files afresh.
        for path in (self.jsonl, self.csv):
            if path.exists():
                lines = path.read_text().splitlines(keepends=True)
                keep = [ln for ln in lines
                        if start_step > 0 and _row_step(ln, path) <= start_step]
                path.write_text("".join(keep))
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
        for group in ("loss", "weight", "valid", "r2", "diag"):
            flat.update({f"{group}/{k}": v for k, v in row.get(group, {}).items()
                         if v is not None})
        if row.get("kind") == "train":
            new = not self.csv.exists() or self.csv.stat().st_size == 0
            with open(self.csv, "a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(flat))
                if new:
                    w.writeheader()
                w.writerow(flat)
        if self.tb is not None:
            for k, v in flat.items():
                if isinstance(v, (int, float)) and k not in ("step", "kind"):
                    self.tb.add_scalar(f"{row.get('kind')}/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _row_step(line: str, path: Path) -> int:
    if path.suffix == ".jsonl":
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            return -1
    fields = line.split(",", 2)
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else -1  # header kept


class _CpuCost:
    """Says, once, what a long run on the CPU will cost, measured on its own first steps:
    seconds per step (steps 2-4, after the first call's set-up), the projected time and
    the peak memory, with the CPU-sized preset as the way out."""

    def __init__(self, first_step: int, measured: int = 3, warn_hours: float = 1.0) -> None:
        self.first, self.measured, self.warn_hours = first_step, measured, warn_hours
        self.t0: float | None = None

    def tick(self, step: int, cfg: PretrainConfig, bar: Any) -> None:
        done = step - self.first
        if done == 1:
            self.t0 = time.perf_counter()
        elif done == 1 + self.measured and self.t0 is not None:
            per_step = (time.perf_counter() - self.t0) / self.measured
            hours = per_step * (cfg.steps - step) / 3600
            if hours >= self.warn_hours:
                import resource

                peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                bar.write(f"note: on the CPU this run takes {per_step:.1f} s a step (batch "
                          f"{cfg.batch_size} x {cfg.crop_seconds:g} s, {cfg.encoder}), about "
                          f"{hours:.1f} h for the {cfg.steps - step} steps left; peak memory "
                          f"so far {peak_gb:.1f} GB. For a recipe sized for a CPU: "
                          "--preset cpu-small.", file=sys.stderr)


def _mean_over_ranks(losses: dict[str, torch.Tensor], env: Env) -> torch.Tensor:
    """Detached loss values ``[K]`` in ``losses``' order, averaged over DDP ranks (so DWA
    sees the same on every rank); they stay on the device."""
    stacked = torch.stack([v.detach() for v in losses.values()])
    if env.world > 1:
        dist.all_reduce(stacked)
        stacked /= env.world
    return stacked


def _unwrap(model: nn.Module) -> MultiTask:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def pretrain(cfg: PretrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train an encoder by its workers; returns the run folder.

    The folder holds ``config.json``, ``checkpoint.pt`` (exact resume), ``metrics.jsonl``,
    ``metrics.csv``, ``tensorboard/`` and, at the end, ``encoder.pt``.
    """
    env = setup_env(cfg.device)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    if not resume and ckpt_path.exists():
        raise TrainingError(f"{out}: holds a run already; use --resume to continue it, or "
                            "another --out")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.crop_seconds <= 0:
        raise TrainingError("steps, batch size and crop length must be positive")
    if not cfg.store:
        raise TrainingError("no training store given (--store)")
    if cfg.batch_size % env.world:
        raise TrainingError(f"batch size {cfg.batch_size} does not split over {env.world} "
                            "ranks")
    torch.manual_seed(cfg.seed)
    first = open_stores(cfg.store[0] if len(cfg.store) == 1 else cfg.store)[0]
    specs = first.specs
    names = resolve_workers(cfg.workers, specs)
    encoder = build_encoder(cfg.encoder, **cfg.encoder_kwargs)
    workers = Workers(names, specs, encoder.dim, encoder.hop, cfg.head_hidden)
    hop_seconds = encoder.hop / first.sample_rate
    per_rank = cfg.batch_size // env.world
    if workers.needs_pairs and (per_rank < 4 or per_rank % 2):
        raise TrainingError(f"LIM/GIM need an even batch of at least 4 per rank, got {per_rank}")
    data = CropDataset(
        cfg.store if len(cfg.store) > 1 else cfg.store[0], workers.targets,
        crop_frames=round(cfg.crop_seconds / hop_seconds), splits=cfg.splits, cache=cfg.cache,
        device=env.device, pairs=workers.needs_pairs,
    )
    if data.hop != encoder.hop:
        raise TrainingError(f"{data.stores[0].path}: hop {data.hop} differs from the encoder's "
                            f"{encoder.hop}")
    valid = None
    if cfg.valid_store:
        valid = CropDataset(
            cfg.valid_store if len(cfg.valid_store) > 1 else cfg.valid_store[0],
            workers.targets, crop_frames=data.crop_frames, device=env.device,
            pairs=workers.needs_pairs, normalise_like=data,
        )
        for name in workers.targets:
            if not valid.specs[name].same_values(data.specs[name]):
                raise TrainingError(
                    f"{valid.stores[0].path}: target {name!r} was computed with other "
                    f"parameters than in {data.stores[0].path} (valid "
                    f"{valid.specs[name].params}, train {data.specs[name].params}): its "
                    "validation R² would compare different things; rebuild one of them")
    probe = None
    if cfg.probe_store and cfg.diagnostics and env.main:
        try:
            probe = ProbeTask.plan(cfg.probe_store)
        except (ValueError, OSError) as e:
            raise TrainingError(f"probe_store: {e}") from None
        pstore = open_stores(cfg.probe_store)[0]
        if (pstore.sample_rate, pstore.hop) != (data.sample_rate, data.hop):
            raise TrainingError(
                f"probe_store {cfg.probe_store}: sample rate {pstore.sample_rate} and hop "
                f"{pstore.hop} differ from the training store's {data.sample_rate} and "
                f"{data.hop}")
    model: nn.Module = MultiTask(encoder, workers).to(env.device)
    weighting = build_weighting(cfg.weighting, names, **cfg.weighting_kwargs).to(env.device)
    # fused: one kernel for all parameters, and it skips a step flagged in found_inf on the
    # device (how a non-finite step is dropped without a host read)
    optimizer = torch.optim.AdamW(_param_groups(model, weighting, cfg), lr=cfg.lr,
                                  betas=(0.9, 0.98), fused=True)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    distort = Distortions(DistortionConfig(**cfg.distortions)).to(env.device) \
        if cfg.distort else None
    step, nan_run0 = 0, 0
    if resume:
        if not ckpt_path.exists():
            raise TrainingError(f"{out}: no {CHECKPOINT} to resume from")
        state = torch.load(ckpt_path, map_location=env.device, weights_only=False)
        try:
            _unwrap(model).load_state_dict(state["model"])
            weighting.load_state_dict(state["weighting"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrainingError(f"{ckpt_path}: incompatible with this run's config ({e})"
                                ) from None
        step, nan_run0 = int(state["step"]), int(state["nan_run"])
    # Counted on the device, read at log and save steps only.
    nan_run = torch.tensor(nan_run0, dtype=torch.long, device=env.device)
    skipped = torch.zeros((), dtype=torch.long, device=env.device)
    bad: torch.Tensor | None = None  # which losses were non-finite since the last log
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if env.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    if cfg.compile:
        _unwrap(model).encoder = torch.compile(_unwrap(model).encoder)  # type: ignore[assignment]
    shared = shared_parameter(_unwrap(model).encoder)
    use_bf16 = env.device.type == "cuda"
    log = RunLog(out, step, env.main)
    diagnostics = _Diagnostics(cfg, out, valid if valid is not None else data, env, probe,
                               resume, data.sample_rate) \
        if cfg.diagnostics and env.main else None

    def diagnose(at: int) -> None:
        """Validation (with R²) and the diagnostics due at step ``at``, then the plot."""
        wrote = False
        if valid is not None and (at % cfg.eval_every == 0 or at == cfg.steps):
            val, r2 = evaluate(model, valid, cfg, env)
            log.write({"kind": "valid", "step": at, "valid": val, "r2": r2})
            wrote = True
        if diagnostics is not None:
            row = diagnostics.row(model, at)
            if row is not None:
                log.write(row)
                wrote = True
            if wrote:
                plot_diagnostics(out)
        model.train()

    feeder = Prefetcher(data, seed=cfg.seed, start_step=step, batch_size=per_rank,
                        rank=env.rank, depth=cfg.prefetch)
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and env.main),
               file=sys.stderr, dynamic_ncols=True, unit="step")
    window_t0, window_wait, window_steps = time.perf_counter(), 0.0, 0
    cost = _CpuCost(first_step=step)
    try:
        if step == 0 and cfg.diagnostics:
            diagnose(0)  # the random initialisation
        model.train()
        while step < cfg.steps:
            wait0 = feeder.wait_seconds
            batch = feeder.get(step)
            for group in optimizer.param_groups:  # the schedule is a function of the step
                group["lr"] = group["base_lr"] * lr_factor(step, cfg)
            gen = step_generator(env.device, cfg.seed, step, env.rank)
            with torch.no_grad():
                x = distort(batch.wave, gen) if distort is not None else batch.wave
            with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                losses = model(x, batch.wave, batch.targets, gen)
            losses = {k: v.float() for k, v in losses.items()}
            total = weighting(losses, shared=shared)
            optimizer.zero_grad(set_to_none=True)
            # No host read in a step: a non-finite total skips the update on the device
            # (the fused AdamW honours found_inf), and the skips are counted on the device
            # and reported at log steps.
            finite = torch.isfinite(total).float()
            if env.world > 1:  # every rank skips together
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            total.backward()
            if env.world > 1:
                for p in weighting.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= env.world
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.found_inf = 1.0 - finite  # type: ignore[attr-defined]
            optimizer.step()
            values = _mean_over_ranks(losses, env)
            weighting.after_step(dict(zip(losses, values, strict=True)))
            nan_run = (nan_run + 1) * (1 - finite.long())
            skipped += 1 - finite.long()
            bad = ~torch.isfinite(values) if bad is None else bad | ~torch.isfinite(values)
            step += 1
            window_steps += 1
            window_wait += feeder.wait_seconds - wait0
            bar.update(1)
            if env.device.type == "cpu" and env.main:
                cost.tick(step, cfg, bar)
            if step % cfg.log_every == 0 or step == cfg.steps:
                n_skipped = int(skipped)
                if n_skipped and bad is not None:
                    failing = [k for k, b in zip(losses, bad.tolist(), strict=True) if b]
                    warnings.warn(f"steps {step - window_steps + 1}-{step}: {n_skipped} with a "
                                  f"non-finite loss ({', '.join(failing) or 'total'}); skipped",
                                  stacklevel=1)
                    if int(nan_run) >= cfg.max_nan_steps:
                        raise TrainingError(f"{int(nan_run)} consecutive steps with non-finite "
                                            f"losses (last: {', '.join(failing) or 'total'}); "
                                            "stopping")
                    skipped.zero_()
                    bad.zero_()
                elapsed = time.perf_counter() - window_t0
                row = {
                    "kind": "train", "step": step, "lr": optimizer.param_groups[0]["lr"],
                    "total": float(total.detach()), "grad_norm": float(grad_norm),
                    "steps_per_s": window_steps / elapsed,
                    "audio_s_per_s": window_steps * cfg.batch_size * cfg.crop_seconds / elapsed,
                    "data_wait": window_wait / elapsed, "skipped": n_skipped,
                    "loss": dict(zip(losses, values.tolist(), strict=True)),
                    "weight": weighting.weights(),
                }
                log.write(row)
                bar.set_postfix_str(
                    f"loss {row['total']:.3f}, {row['audio_s_per_s']:.0f} audio-s/s, "
                    f"data-wait {100 * row['data_wait']:.0f}%", refresh=False)
                window_t0, window_wait, window_steps = time.perf_counter(), 0.0, 0
            diagnose(step)
            if step % cfg.save_every == 0 or step == cfg.steps:
                if env.main:
                    atomic_save({
                        "model": _unwrap(model).state_dict(), "weighting": weighting.state_dict(),
                        "optimizer": optimizer.state_dict(), "step": step,
                        "nan_run": int(nan_run),
                        "config": cfg.to_dict(),
                    }, ckpt_path)
                if env.world > 1:
                    dist.barrier()
    finally:
        feeder.close()
        bar.close()
        log.close()
    if env.main:
        enc = _unwrap(model).encoder
        enc = getattr(enc, "_orig_mod", enc)
        save_encoder(out / ENCODER, enc, cfg.encoder, cfg.to_dict(), step, data.sample_rate)
    if env.world > 1:
        dist.barrier()
    return out


@torch.no_grad()
def evaluate(model: nn.Module, data: CropDataset, cfg: PretrainConfig, env: Env
             ) -> tuple[dict[str, float], dict[str, float | None]]:
    """Per-worker validation over ``cfg.valid_batches`` fixed batches of clean crops.

    Returns
    -------
    losses : dict of str to float
        Mean loss of every worker over the batches (this rank's).
    r2 : dict of str to float or None
        R² of every regression worker over all the batches (and, under DDP, all ranks):
        ``1 - sum_j SSE_j / sum_j SST_j`` over the target's dimensions ``j``, the
        variance-weighted average (:class:`trainer.diagnostics.R2Accumulator`); None for
        a target without variance on the validation data.
    """
    model.eval()
    m = _unwrap(model)
    sums: dict[str, float] = {}
    r2 = {name: R2Accumulator() for name in m.workers.targets}
    per_rank = cfg.batch_size // env.world
    for k in range(cfg.valid_batches):
        batch = data.batch(cfg.seed + 7919, k, per_rank, env.rank)
        gen = step_generator(env.device, cfg.seed + 7919, k, env.rank)
        with torch.autocast(env.device.type, dtype=torch.bfloat16,
                            enabled=env.device.type == "cuda"):
            h = m.encoder(batch.wave)
            losses = m.workers(h, batch.wave, batch.targets, gen)
            for name, acc in r2.items():
                acc.update(m.workers.heads[name](h).float(), batch.targets[name])
        for name, v in losses.items():
            sums[name] = sums.get(name, 0.0) + float(v.float()) / cfg.valid_batches
    if env.world > 1:
        for acc in r2.values():
            if acc.sums is not None:
                dist.all_reduce(acc.sums)
    return sums, {name: acc.value() for name, acc in r2.items()}


@contextlib.contextmanager
def _untouched_random_state(device: torch.device) -> Any:
    """Run diagnostics without moving any global random stream (torch, CUDA, numpy,
    Python): the training losses are the same with and without them."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class _Diagnostics:
    """The run's collapse detector and optional probe (main rank only)."""

    def __init__(self, cfg: PretrainConfig, out: Path, source: CropDataset, env: Env,
                 probe: ProbeTask | None, resume: bool, sample_rate: int) -> None:
        self.cfg, self.out, self.env, self.probe = cfg, out, env, probe
        self.sample_rate = sample_rate
        self.wave = heldout_batch(out / HELDOUT, source, cfg.diag_clips, cfg.seed,
                                  reuse=resume)
        self.probe_every = cfg.probe_every or cfg.eval_every

    def due(self, step: int) -> tuple[bool, bool]:
        """(collapse statistics, probe) due at ``step``."""
        last = step == self.cfg.steps
        collapse = step == 0 or step % self.cfg.eval_every == 0 or last
        probe = self.probe is not None and (step == 0 or step % self.probe_every == 0 or last)
        return collapse, probe

    def row(self, model: nn.Module, step: int) -> dict[str, Any] | None:
        collapse, probe = self.due(step)
        if not (collapse or probe):
            return None
        enc = _unwrap(model).encoder
        enc = getattr(enc, "_orig_mod", enc)
        diag: dict[str, Any] = {}
        with _untouched_random_state(self.env.device):
            model.eval()
            if collapse:
                diag.update(collapse_stats(enc, self.wave, self.env.device,
                                           batch_size=max(1, self.cfg.batch_size // 2),
                                           dead_ratio=self.cfg.diag_dead_ratio))
            if probe and self.probe is not None:
                X = self.probe.embed(enc, self.env.device, self.sample_rate)
                diag["probe_accuracy"] = self.probe.accuracy(X, self.cfg.probe_c)
        return {"kind": "diag", "step": step, "diag": diag}
