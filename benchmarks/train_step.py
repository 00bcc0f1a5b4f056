"""Pre-training step speed per encoder: steps/s, audio-s/s, data-wait and peak memory.

Every encoder runs ``trainer.pretrain`` (the real loop: data path, workers, weighting,
fused AdamW, bf16 autocast on CUDA) on a real store twice:

- ``cache=none``: crops gathered from the memory maps on the CPU by the prefetch thread,
  pinned and copied to the device (what a run does by default);
- ``cache=device``: the store's arrays held on the device and cropped there, so the data
  path costs the device almost nothing (the "fed on-device data" reference).

The first ``--warmup`` steps (kernel selection, allocator growth, first-call set-up) are
left out of every figure. On CUDA, goal: data-wait under 5 % with ``cache=none``, and
``cache=none`` within 10 % of ``cache=device`` in steps/s.

    python benchmarks/train_step.py --store stores/dev/pool.h5                  # CUDA, 128 x 2 s
    python benchmarks/train_step.py --store S --device cpu --batch 8 --crop 1 \\
        --steps 12 --warmup 4 --log-every 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainer.config import PretrainConfig, load_preset
from trainer.pretrain import pretrain

ENCODERS = ("pase+", "samplecnn", "melcnn")


def measure(store: str, encoder: str, cache: str, args: argparse.Namespace,
            encoder_kwargs: dict) -> dict[str, float]:
    """One short run; figures from the log rows after the warm-up steps."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PretrainConfig(
            store=[store], out=tmp, encoder=encoder, encoder_kwargs=encoder_kwargs,
            batch_size=args.batch, crop_seconds=args.crop, steps=args.warmup + args.steps,
            warmup_steps=1, log_every=args.log_every, eval_every=10**9, save_every=10**9,
            diagnostics=False, device=args.device, cache=cache, compile=args.compile,
            distort=not args.no_distort, seed=0,
        )
        cuda = torch.device(args.device).type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        pretrain(cfg, progress=False)
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    # Log rows are the loop's only host reads: one every --log-every steps, as in a real
    # run. Each row covers the window since the previous one.
    rows = [r for r in rows if r["kind"] == "train" and r["step"] > args.warmup]
    seconds = [args.log_every / r["steps_per_s"] for r in rows]
    steps_per_s = len(rows) * args.log_every / sum(seconds)
    return {
        "steps_per_s": steps_per_s,
        "audio_s_per_s": steps_per_s * args.batch * args.crop,
        "data_wait": sum(r["data_wait"] * t for r, t in zip(rows, seconds, strict=True))
        / sum(seconds),
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="A store built with the default targets.")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--crop", type=float, default=2.0, help="Crop length in seconds.")
    parser.add_argument("--steps", type=int, default=100, help="Measured steps per run.")
    parser.add_argument("--warmup", type=int, default=20, help="Steps left out first.")
    parser.add_argument("--log-every", type=int, default=10,
                        help="Steps between log rows, the loop's only host reads; --steps "
                             "and --warmup must be multiples of it.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model.")
    parser.add_argument("--no-distort", action="store_true")
    parser.add_argument("--preset-sizes", action="store_true",
                        help="melcnn at the gpu preset's size (its encoder_kwargs).")
    args = parser.parse_args()
    if args.steps % args.log_every or args.warmup % args.log_every or not args.steps:
        parser.error("--steps and --warmup must be multiples of --log-every (steps > 0)")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# {name}, torch {torch.__version__}, batch {args.batch} x {args.crop:g} s, "
          f"{args.steps} steps after {args.warmup}, distort {not args.no_distort}, "
          f"compile {args.compile}", flush=True)
    header = ("| encoder | cache | steps/s | audio-s/s | data-wait | peak GB | vs on-device |\n"
              "|---|---|---:|---:|---:|---:|---:|")
    lines = [header]
    for encoder in args.encoders.split(","):
        kwargs = {}
        if args.preset_sizes and encoder == load_preset("gpu").get("encoder"):
            kwargs = dict(load_preset("gpu").get("encoder_kwargs", {}))
        res = {cache: measure(args.store, encoder, cache, args, kwargs)
               for cache in ("device", "none")}
        for cache in ("none", "device"):
            r = res[cache]
            ratio = r["steps_per_s"] / res["device"]["steps_per_s"]
            lines.append(f"| {encoder} | {cache} | {r['steps_per_s']:.2f} | "
                         f"{r['audio_s_per_s']:,.0f} | {100 * r['data_wait']:.1f} % | "
                         f"{r['peak_gb']:.1f} | {ratio:.2f} |")
        print(lines[-2] + "\n" + lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
