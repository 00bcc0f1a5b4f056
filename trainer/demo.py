"""The main job on the embedded demo corpus, end to end, with no network:

1. render the demo corpus (``featurestore.corpus.demo``: General-MIDI instrument notes labeled by
   family, music21 scores labeled by composer, and an hour of unlabeled music);
2. build one feature store per part with the default targets (one local Dask cluster);
3. pre-train with the project's recipe (the ``cpu-small`` preset on a CPU, ``gpu`` on a
   GPU) on the unlabeled part only, so that no clip of a probe task is ever seen;
4. probe the frozen encoder on instrument family and composer, next to the random-weights,
   MFCC-statistics and default-target-statistics baselines, over several probe seeds;
5. print the comparison table and say in plain words whether pre-training helped, by how
   much and on which task, and which spread the ± is.

Every step is skipped when its result exists, so an interrupted demo resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import PretrainConfig, load_preset
from trainer.sweep import Run, Sweep, run_sweep

#: Pre-training steps of the demo: the preset's recipe, shortened to keep the whole main
#: job under 10 minutes on two CPU cores (the dev benchmark's runs take the preset's own).
DEMO_STEPS = {"cpu": 1000, "cuda": 3000}

#: The probe's learning-rate grid in the demo: 3 points (no weight decay) instead of the
#: protocol's 15, for every encoder and baseline alike. On the demo's stores it gives the
#: same verdicts in a fifth of the time (the 8 probes from a fresh clone on 2 idle cores:
#: 101 s against 516 s; the 1,900 statistics of ``targets-stats`` on composers alone took
#: 300 s with the 15 points).
DEMO_PROBE_GRID = {"lrs": [1e-4, 1e-3, 1e-2], "weight_decays": [0.0]}


def main_job(out: str | Path = "runs/demo", *, device: str = "auto", scale: float = 1.0,
             steps: int | None = None, seeds: int = 5, seed: int = 0, progress: bool = True,
             echo: Callable[[str], None] = print) -> Path:
    """Run the demo; returns the path of ``comparison.md``.

    Parameters
    ----------
    out : path-like
        Folder for the corpus, the stores, the run and the reports.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``: the ``cpu-small`` preset on a CPU, the
        ``gpu`` preset on CUDA.
    scale : float
        Size of the demo corpus (1.0: about 93 minutes of audio, 64 of them unlabeled).
    steps : int, optional
        Pre-training steps (default :data:`DEMO_STEPS`).
    seeds : int
        Probe seeds (mean and spread are reported).
    seed : int
        Seed of the demo corpus and of pre-training.

    Raises
    ------
    ValueError
        Checked before anything is rendered or built: a device this machine lacks
        (:class:`trainer.device.DeviceError`), ``scale <= 0``, ``steps < 1``,
        ``seeds < 1``, ``out`` naming a file, or ``out`` holding a demo run with other
        options (its steps would be skipped as done: resume it with the same options or
        use another folder).
    """
    import featurestore
    from featurestore.corpus.demo import make_demo_data
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
    preset = "gpu" if dev.type == "cuda" else "cpu-small"
    steps = steps or DEMO_STEPS[dev.type]
    _claim(out, {"seed": seed, "scale": scale, "preset": preset, "steps": steps,
                 "seeds": seeds})
    clock = _Clock(echo)
    echo(f"1/4 demo corpus -> {out / 'data'}")
    csvs = _demo_data(out / "data", seed, scale, make_demo_data)
    clock.lap("demo corpus")
    echo("2/4 feature stores (default targets)")
    stores = {name: out / "stores" / f"{name}.h5" for name in csvs}
    todo = [n for n, p in stores.items() if not p.exists()]
    if todo:
        with featurestore.dask_executor() as executor:
            for name in todo:
                report = featurestore.build(csvs[name], stores[name], executor=executor,
                                            progress=progress)
                echo("    " + report.summary().splitlines()[0])
    clock.lap("feature stores")
    options: dict[str, Any] = {
        **load_preset(preset), "store": [str(stores["pretrain"])],
        "out": str(out / "runs" / preset), "steps": steps,
        "eval_every": 10**9, "seed": seed, "device": str(dev),
    }
    base = PretrainConfig.from_dict(options, f"preset {preset}")
    sweep = Sweep(
        pretrain_stores=base.store,
        # Composer excerpts are few: grouped 5-fold over works instead of one small test
        # set (pre-training never sees a composer excerpt, so every fold is clean).
        probe_stores={"instruments": str(stores["instruments"]),
                      "composers": {"path": str(stores["composers"]), "folds": 5}},
        runs=[Run(preset, base)],
        probe={"seeds": seeds, "classifier": "mlp", "pooling": "mean+std", **DEMO_PROBE_GRID},
        baselines=["random", "mfcc-stats", "targets-stats"],
    )
    echo(f"3/4 pre-training: preset {preset}, {base.encoder}, {base.steps} steps on {dev}; "
         "4/4 probes")
    table = run_sweep(sweep, out, device=str(dev), progress=progress,
                      echo=lambda s: echo("    " + s))
    clock.lap("pre-training and probes")
    verdict = plain_words(out, preset)
    (out / "verdict.md").write_text(verdict + "\n")
    echo("")
    echo(table.read_text())
    echo(verdict)
    echo(f"report: {table} (per-probe reports under {out / 'reports'})")
    return table


def _claim(out: Path, options: dict[str, Any]) -> None:
    """Record the demo's options in ``out/demo.json``, or refuse a folder whose run had
    other ones (every step found there would be skipped as done)."""
    marker = out / "demo.json"
    if marker.exists():
        held = json.loads(marker.read_text())
        if held != options:
            differ = ", ".join(f"{k} {held.get(k)!r} (asked {v!r})" for k, v in options.items()
                               if held.get(k) != v)
            raise ValueError(f"--out {out}: holds a demo run with {differ}; resume it with the "
                             "same options, or use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(options))


class _Clock:
    """Wall time of each step of the demo, echoed as it ends (a step skipped because its
    result exists reads about 0 s)."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.t0 = time.perf_counter()

    def lap(self, what: str) -> None:
        now = time.perf_counter()
        self.echo(f"    {what}: {now - self.t0:.0f} s")
        self.t0 = now


def _demo_data(folder: Path, seed: int, scale: float, make: Callable[..., dict[str, Path]]
               ) -> dict[str, Path]:
    marker = folder / "demo.json"
    wanted = {"seed": seed, "scale": scale}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return {n: folder / f"{n}.csv" for n in ("pretrain", "instruments", "composers")}
    csvs = make(folder, seed=seed, scale=scale)
    marker.write_text(json.dumps(wanted))
    return {n: Path(p) for n, p in csvs.items()}


def plain_words(out: Path, run: str) -> str:
    """The verdict, one paragraph per probe store: did pre-training help, by how much, and
    against what.

    Pre-training *helped* on a task when the pre-trained encoder beats the same network
    with random weights by more than the two spreads together; otherwise it *did not
    help* (within the spread, or worse). The comparison with MFCC statistics and with the
    statistics of the default targets (what the workers teach, without any network)
    follows, with the differences in points. Every figure is mean ± std over the probe
    seeds of one pre-training run (the demo does not vary the pre-training seed; the
    spread over pre-training seeds is measured on the dev benchmark). Chance is the
    expected score of a guess from the training label prior; the label-only floor is
    the higher of chance and the majority class.
    """
    from trainer.evaluation import label_only_baseline  # scikit-learn: not at CLI start-up

    lines = []
    for store_dir in sorted((out / "reports" / run).glob("*")):
        store = store_dir.name
        found = {}
        for name in (run, f"random-{run}", "mfcc-stats", "targets-stats"):
            path = out / "reports" / name / store / "result.json"
            if path.exists():
                found[name] = json.loads(path.read_text())
        if run not in found:
            continue
        res = found[run]
        metric = "accuracy" if res["task"] == "classification" else "roc_auc_macro"
        pre = res["summary"][metric]
        seeds = len(res.get("per_seed", [])) or "the"
        folds = f", each its own {res['folds']}-fold assignment," if res.get("folds") else ""
        head = (f"{store} ({metric.replace('_', ' ')}, mean ± std over {seeds} probe seeds"
                f"{folds} of one pre-training run): pre-trained {_pct(pre)}")
        compared = []
        for name, label in ((f"random-{run}", "random weights of the same network"),
                            ("mfcc-stats", "MFCC statistics"),
                            ("targets-stats", "default-target statistics")):
            if name in found:
                other = found[name]["summary"][metric]
                head += f", {label} {_pct(other)}"
                compared.append((name, label, other))
        chance = res.get("chance", {}).get(metric)
        majority = res.get("majority", {}).get(metric)
        if chance is not None:
            head += f", chance {100 * chance:.1f} %"
        if majority is not None:
            head += f", majority class {100 * majority:.1f} %"
        sentences = [head + "."]
        for name, label, other in compared:
            gap = 100 * (pre["mean"] - other["mean"])
            spread = 100 * (pre["std"] + other["std"])
            if name.startswith("random-"):
                if gap > spread:
                    sentences.append(f"Pre-training helped: {gap:+.1f} points over {label}, "
                                     f"more than the spread ({spread:.1f}).")
                elif gap < -spread:
                    sentences.append(f"Pre-training did not help: {gap:+.1f} points against "
                                     f"{label}, worse by more than the spread "
                                     f"({spread:.1f}).")
                else:
                    sentences.append(f"Pre-training did not help measurably: {gap:+.1f} "
                                     f"points against {label}, within the spread "
                                     f"({spread:.1f}).")
            elif gap > spread:
                sentences.append(f"It beats {label} by {gap:.1f} points.")
            elif gap < -spread:
                sentences.append(f"It is {-gap:.1f} points below {label}.")
            else:
                sentences.append(f"It is within the spread of {label} ({gap:+.1f} points).")
        floor = label_only_baseline(res.get("chance", {}), res.get("majority", {}), metric)
        if floor is not None and pre["mean"] - pre["std"] <= floor:
            sentences.append(f"It is not above the label-only floor ({100 * floor:.1f} %, the "
                             "higher of chance and majority).")
        lines.append(" ".join(sentences))
    return "\n".join(lines)


def _pct(summary: dict[str, float]) -> str:
    return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f} %"
