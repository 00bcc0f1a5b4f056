"""The main job on the embedded demo corpus, end to end, with no network:

1. render the demo corpus (``featurestore.demo``: General-MIDI instrument notes labeled by
   family, music21 scores labeled by composer, an unlabeled part);
2. build one feature store per part with the default targets (one local Dask cluster);
3. pre-train PASE+ with the default workers and equal weighting on the unlabeled audio and
   the labeled parts' training clips;
4. probe the frozen encoder on instrument family and composer, next to the MFCC-statistics,
   default-target-statistics and random-weights baselines, over several seeds;
5. print the comparison table and say in plain words whether pre-training helped.

Every step is skipped when its result exists, so an interrupted demo resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from trainer.config import PretrainConfig
from trainer.probe import label_only_baseline
from trainer.sweep import Run, Sweep, run_sweep

# A PASE+ of the reference design, narrowed to train in minutes on two CPU cores.
CPU_PASE = {"channels": [32, 64, 64, 128, 128, 256, 256], "dim": 128, "rnn_hidden": 64,
            "sinc_filters": 32}


def main_job(out: str | Path = "runs/demo", *, device: str = "auto", scale: float = 1.0,
             steps: int | None = None, seeds: int = 3, seed: int = 0, progress: bool = True,
             echo: Callable[[str], None] = print) -> Path:
    """Run the demo; returns the path of ``comparison.md``.

    Parameters
    ----------
    out : path-like
        Folder for the corpus, the stores, the run and the reports.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. On CUDA the full-size PASE+ trains
        longer.
    scale : float
        Size of the demo corpus (1.0: about 10 minutes of audio).
    steps : int, optional
        Pre-training steps (default 400 on CPU, 3000 on CUDA).
    seeds : int
        Probe seeds (mean and spread are reported).

    Raises
    ------
    ValueError
        Checked before anything is rendered or built: a device this machine lacks
        (:class:`trainer.device.DeviceError`), ``scale <= 0``, ``steps < 1``,
        ``seeds < 1``, or ``out`` naming a file.
    """
    import featurestore
    from featurestore.build import dask_executor
    from featurestore.demo import make_demo_data
    from trainer.device import resolve_device

    dev = resolve_device(device)
    if not scale > 0:
        raise ValueError(f"--scale {scale}: must be positive")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps {steps}: must be at least 1")
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: must be at least 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")
    cuda = dev.type == "cuda"
    echo(f"1/4 demo corpus -> {out / 'data'}")
    csvs = _demo_data(out / "data", seed, scale, make_demo_data)
    echo("2/4 feature stores (default targets)")
    stores = {name: out / "stores" / f"{name}.h5" for name in csvs}
    todo = [n for n, p in stores.items() if not p.exists()]
    if todo:
        with dask_executor() as executor:
            for name in todo:
                report = featurestore.build(csvs[name], stores[name], executor=executor,
                                            progress=progress)
                echo("    " + report.summary().splitlines()[0])
    base = PretrainConfig(
        store=[str(stores[n]) for n in ("pretrain", "instruments", "composers")],
        splits=["train", ""], out=str(out / "runs" / "pase-default-equal"),
        encoder="pase+", encoder_kwargs={} if cuda else dict(CPU_PASE),
        workers=["default"], weighting="equal", crop_seconds=1.0,
        batch_size=64 if cuda else 16, steps=steps or (3000 if cuda else 400),
        lr=1e-3 if cuda else 2e-3, warmup_steps=50, log_every=10, save_every=100,
        eval_every=10**9, seed=seed, device=str(dev),
    )
    sweep = Sweep(
        pretrain_stores=base.store,
        # Composer excerpts are few: grouped 5-fold over works instead of one small test set.
        probe_stores={"instruments": str(stores["instruments"]),
                      "composers": {"path": str(stores["composers"]), "folds": 5}},
        runs=[Run("pase-default-equal", base)],
        probe={"seeds": seeds, "classifier": "mlp", "pooling": "mean+std"},
        baselines=["mfcc-stats", "targets-stats", "random"], pretrain_splits=["train", ""],
    )
    echo(f"3/4 pre-training PASE+ ({base.steps} steps, {dev}) and 4/4 probes")
    table = run_sweep(sweep, out, device=str(dev), progress=progress,
                      echo=lambda s: echo("    " + s))
    verdict = plain_words(out)
    (out / "verdict.md").write_text(verdict + "\n")
    echo("")
    echo(table.read_text())
    echo(verdict)
    echo(f"report: {table} (per-probe reports under {out / 'reports'})")
    return table


def _demo_data(folder: Path, seed: int, scale: float, make: Callable[..., dict[str, Path]]
               ) -> dict[str, Path]:
    marker = folder / "demo.json"
    wanted = {"seed": seed, "scale": scale}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return {n: folder / f"{n}.csv" for n in ("pretrain", "instruments", "composers")}
    csvs = make(folder, seed=seed, scale=scale)
    marker.write_text(json.dumps(wanted))
    return {n: Path(p) for n, p in csvs.items()}


def plain_words(out: Path) -> str:
    """One sentence per probe store: pre-trained vs random weights vs MFCC statistics vs
    the statistics of the default targets vs chance and the majority class, with the
    spread over seeds.

    Chance is the expected score of a guess from the training label prior (it stays
    meaningful under grouped folds, where a fold's test part may lack the training
    majority class and the majority figure falls to 0); the label-only baseline the
    encoder must beat is the higher of chance and majority.
    """
    lines = []
    for store_dir in sorted((out / "reports" / "pase-default-equal").glob("*")):
        store = store_dir.name
        found = {}
        for name in ("pase-default-equal", "random-pase-default-equal", "mfcc-stats",
                     "targets-stats"):
            path = out / "reports" / name / store / "result.json"
            if path.exists():
                found[name] = json.loads(path.read_text())
        if "pase-default-equal" not in found:
            continue
        res = found["pase-default-equal"]
        metric = "accuracy" if res["task"] == "classification" else "roc_auc_macro"

        def fmt(r: dict, metric: str = metric) -> str:
            s = r["summary"][metric]
            return f"{s['mean']:.3f} ± {s['std']:.3f}"

        pre = res["summary"][metric]["mean"]
        parts = [f"{store}: pre-trained {fmt(res)}"]
        verdicts = []
        for name, label in (("random-pase-default-equal", "random weights"),
                            ("mfcc-stats", "MFCC statistics"),
                            ("targets-stats", "default-target statistics")):
            if name in found:
                parts.append(f"{label} {fmt(found[name])}")
                other = found[name]["summary"][metric]
                spread = res["summary"][metric]["std"] + other["std"]
                if pre > other["mean"] + spread:
                    verdicts.append(f"beats {label}")
                elif pre < other["mean"] - spread:
                    verdicts.append(f"is worse than {label}")
                else:
                    verdicts.append(f"is within the seed spread of {label}")
        chance = res.get("chance", {}).get(metric)
        majority = res.get("majority", {}).get(metric)
        if chance is not None:
            parts.append(f"chance {chance:.3f}")
        if majority is not None:
            parts.append(f"majority class {majority:.3f}")
        floor = label_only_baseline(res.get("chance", {}), res.get("majority", {}), metric)
        if floor is not None:
            spread = res["summary"][metric]["std"]
            what = f"the label-only baseline ({floor:.3f}, the higher of chance and majority)"
            if pre - spread > floor:
                verdicts.append(f"beats {what}")
            elif pre + spread < floor:
                verdicts.append(f"is below {what}")
            else:
                verdicts.append(f"is within the seed spread of {what}")
        lines.append(f"{', '.join(parts)} ({metric}, mean ± std over seeds). "
                     f"Pre-training {', '.join(verdicts) or 'has no baseline to compare'}.")
    return "\n".join(lines)
