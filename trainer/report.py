"""Reports of probe results: a JSON record, a plain-language summary, figures, and tables.

:func:`write_report` writes one probe run to a folder::

    result.json     everything, one JSON object: ``format``, ``meta`` (encoder, store,
                    pooling, probe config, the encoder's pre-training config) and the
                    fields of :class:`ProbeResult` at the top level (``task``,
                    ``summary``, ``per_seed`` with every seed's metrics, ``majority``,
                    ``chance``, ...)
    summary.md      the task, the clip counts, mean ± std over seeds against chance and
                    the majority baseline
    confusion.png   row-normalised confusion matrix (classification only)
    per_class.png   per-class F1 (classification) or ROC-AUC (tagging), mean ± std over seeds
    projection.png  2-D PCA (or t-SNE) of the clip embeddings coloured by label (if given)

:func:`compare` turns several ``result.json`` files into one Markdown table in the style of
the paper's tables: one row per run, grouped by store, best first; runs of one
pre-training recipe that differ only in the pre-training seed become one row, mean ± std
over pre-training seeds (probes of one ``random:`` encoder over initialisation seeds
likewise), and every row says which spread its ± is.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.evaluation import (
    MAIN_METRIC,
    SCALAR_METRICS,
    ProbeResult,
    is_tag_list,
    split_tags,
    to_plain,
)

__all__ = ["RESULT_FORMAT", "aggregate_seeds", "compare", "load_result", "pretrain_recipe",
           "write_report"]

RESULT_FORMAT = "trainer-probe-result/1"
_METRIC_NAMES = {
    "accuracy": "Accuracy",
    "macro_f1": "Macro-F1",
    "roc_auc_macro": "ROC-AUC",
    "pr_auc_macro": "PR-AUC",
}
_METRIC_PHRASE = {"accuracy": "an accuracy", "roc_auc_macro": "a macro ROC-AUC"}
_METRIC_ORDER = ("accuracy", "macro_f1", "roc_auc_macro", "pr_auc_macro")
_MAX_POINTS = 5000  # clips drawn in the projection (a seeded subsample beyond)


def _run_name(meta: dict[str, Any], fallback: str) -> str:
    """The name a run goes by in tables: ``name``, else the encoder spec, else ``fallback``."""
    for key in ("name", "encoder_spec", "encoder", "spec"):
        value = meta.get(key)
        if isinstance(value, dict):
            value = value.get("spec") or value.get("name")
        if value:
            return str(value)
    return fallback


def _store_name(meta: dict[str, Any]) -> str:
    for key in ("store_name", "store", "store_path"):
        if meta.get(key):
            return str(meta[key])
    return "?"


# --------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _plot_confusion(result: ProbeResult, path: Path, title: str) -> None:
    """Confusion counts summed over seeds, each row divided by its total."""
    plt = _pyplot()
    counts = np.sum([s["test"]["confusion"] for s in result.per_seed], axis=0).astype(float)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(result.classes)
    size = min(4 + 0.45 * n, 24)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), result.classes, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), result.classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\nconfusion (rows normalised), {len(result.per_seed)} seed(s)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_class_scores(result: ProbeResult) -> tuple[str, list[str], np.ndarray, np.ndarray]:
    """Per-class test score (F1 for classification, ROC-AUC for tagging) over seeds.

    Returns
    -------
    key : str
        ``"f1"`` or ``"roc_auc"``.
    names : list of str
        The classes that have a score (ROC-AUC is undefined for a tag absent from test).
    mean : np.ndarray, shape (n,)
        Mean over seeds, in [0, 1].
    err : np.ndarray, shape (2, n)
        Lower and upper error-bar lengths: the std over seeds, clipped so that the bar
        stays inside [0, 1].
    """
    key = "f1" if result.task == "classification" else "roc_auc"
    names, means, stds = [], [], []
    for c in result.classes:
        values = [s["test"]["per_class"][c][key] for s in result.per_seed]
        values = [v for v in values if v is not None]
        if values:
            names.append(c)
            means.append(float(np.mean(values)))
            stds.append(float(np.std(values)))
    mean, std = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
    err = np.stack([np.minimum(std, mean), np.minimum(std, 1.0 - mean)]) if len(mean) else (
        np.zeros((2, 0)))
    return key, names, mean, err


def _plot_per_class(result: ProbeResult, path: Path, title: str) -> None:
    """Horizontal bars: per-class F1 or ROC-AUC, mean over seeds with std error bars inside
    [0, 1]; every bar is outlined and labelled, so a score of zero is a visible bar."""
    plt = _pyplot()
    key, names, mean, err = per_class_scores(result)
    metric = "ROC-AUC" if key == "roc_auc" else "F1"
    fig, ax = plt.subplots(figsize=(7, min(2 + 0.3 * max(len(names), 1), 30)))
    y = np.arange(len(names))
    ax.barh(y, mean, xerr=err, color="tab:blue", alpha=0.8, capsize=2, edgecolor="tab:blue",
            linewidth=1.5)
    for yi, m in zip(y, mean, strict=True):
        ax.text(min(m, 0.9) + 0.01, yi, f"{m:.2f}", va="center", fontsize=7)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    if key == "roc_auc":
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.legend(loc="lower right")
    ax.set_xlabel(metric)
    ax.set_title(f"{title}\nper-class {metric} on test (mean ± std over "
                 f"{len(result.per_seed)} seed(s))")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def projection_2d(X: np.ndarray, method: str, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """2-D coordinates of the z-scored rows of ``X`` by PCA or t-SNE, with axis labels.

    Parameters
    ----------
    X : np.ndarray, shape (n, D)
    method : {"pca", "tsne"}
    seed : int
        t-SNE's random state.

    Returns
    -------
    coords : np.ndarray, shape (n, 2)
    axes : list of str
        ``"PC 1 (34.2 % of variance)"``, ``"PC 2 (...)"`` for PCA (the share of the
        z-scored data's total variance); ``"t-SNE 1"``, ``"t-SNE 2"`` for t-SNE.
    """
    X = np.asarray(X, dtype=np.float64)
    std = X.std(axis=0)
    X = (X - X.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(X) - 1) / 3)))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca",
                      random_state=seed).fit_transform(X)
        return coords, ["t-SNE 1", "t-SNE 2"]
    _, sv, vt = np.linalg.svd(X, full_matrices=False)
    coords = X @ vt[:2].T
    total = float(np.sum(sv**2))
    shares = [float(v**2) / total if total > 0 else 0.0 for v in sv[:2]]
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        shares += [0.0] * (2 - len(shares))
    return coords, [f"PC {k + 1} ({100 * v:.1f} % of variance)" for k, v in enumerate(shares)]


def class_colours(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct colours: tab10 up to 10 classes, tab20 up to 20, else evenly spaced
    hues of the 'turbo' map."""
    plt = _pyplot()
    if n <= 10:
        return [plt.get_cmap("tab10")(k) for k in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(k) for k in range(n)]
    return [plt.get_cmap("turbo")(v) for v in np.linspace(0.0, 1.0, n)]


def _plot_projection(
    X: np.ndarray, labels: Sequence[str], path: Path, method: str, title: str
) -> None:
    plt = _pyplot()
    X = np.asarray(X)
    labels = [str(v).strip() for v in labels]
    if X.ndim != 2 or len(X) != len(labels):
        raise ValueError(f"embeddings: X {X.shape} does not match {len(labels)} labels")
    idx = np.arange(len(X))
    if len(idx) > _MAX_POINTS:
        idx = np.sort(np.random.default_rng(0).choice(len(X), _MAX_POINTS, replace=False))
    # multi-label clips are coloured by their first tag
    multilabel = any(is_tag_list(labels[i]) for i in idx)
    if multilabel:
        title += " (multi-label clips by their first tag)"
    empty = "(no tag)" if multilabel else "(unlabeled)"
    shown = [(split_tags(labels[i]) or [empty])[0] for i in idx]
    coords, axes = projection_2d(X[idx], method)
    fig, ax = plt.subplots(figsize=(9, 6.5))
    groups = sorted(set(shown), key=lambda s: (s.startswith("("), s))
    named = [g for g in groups if not g.startswith("(")]
    colours = dict(zip(named, class_colours(len(named)), strict=True))
    for name in groups:
        mask = np.array([s == name for s in shown])
        ax.scatter(coords[mask, 0], coords[mask, 1], s=8, alpha=0.7,
                   color=colours.get(name, "lightgrey"), label=f"{name} ({int(mask.sum())})")
    ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              ncol=1 + len(groups) // 30)
    ax.set_title(title)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- text


def _pct(stats: dict[str, float] | None) -> str:
    if not stats:
        return "—"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def _pct1(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _versus_baseline(stats: dict[str, float], base: float | None) -> str:
    """One sentence: the probe's mean against the higher of chance and majority, with its
    seed spread."""
    if base is None:
        return ""
    mean, std = stats["mean"], stats["std"]
    where = f"the label-only baseline (the higher of chance and majority, {_pct1(base)} %)"
    if mean - std > base:
        return f"That is above {where}."
    if mean + std < base:
        return f"That is below {where}: the embeddings carry no usable label information."
    return f"That is within the seed spread of {where}."


def _summary_md(result: ProbeResult, meta: dict[str, Any], name: str) -> str:
    n_seeds = len(result.per_seed)
    metrics = SCALAR_METRICS[result.task]
    main = MAIN_METRIC[result.task]
    if result.task == "classification":
        what = f"single-label classification into {len(result.classes)} classes"
        baseline = "always predicting the most frequent training class"
        chance_what = "a class guessed from the training label frequencies"
    else:
        what = f"multi-label tagging with {len(result.classes)} tags"
        baseline = "scoring every clip with the training tag frequencies"
        chance_what = "random scores: ROC-AUC 0.5, PR-AUC the tag's positive rate"
    cfg = result.config
    lines = [f"# Probe: {name}", ""]
    lines.append(f"- **Task**: {what}.")
    for label, key in (
        ("Encoder", "encoder"),
        ("Encoder key", "encoder_key"),
        ("Store", "store"),
        ("Store hash", "store_hash"),
        ("Pooling", "pooling"),
    ):
        value = meta.get(key)
        if key == "store" and not value:
            value = meta.get("store_path")
        if value:
            lines.append(f"- **{label}**: `{value}`")
    if result.folds:
        lines.append(
            f"- **Clips**: {result.n_test} labeled clips in a grouped {result.folds}-fold "
            f"cross-validation (per fold about {result.n_train} train and {result.n_valid} "
            "validation clips); every clip is tested once per seed."
        )
    else:
        lines.append(
            f"- **Clips**: {result.n_train} train, {result.n_valid} validation, "
            f"{result.n_test} test."
        )
    if cfg:
        n_lr, n_wd = len(cfg.get("lrs", [])), len(cfg.get("weight_decays", []))
        lines.append(
            f"- **Probe**: {cfg.get('classifier')} on frozen embeddings; a grid of {n_lr} "
            f"learning rate(s) x {n_wd} weight decay(s), model chosen on validation "
            f"{_METRIC_PHRASE[main].split(' ', 1)[1]}, scored once on test; {n_seeds} seed(s)."
        )
    lines += [
        "",
        "| Metric | Probe, mean ± std over seeds (%) | Chance (%) | Majority baseline (%) |",
        "|---|---|---|---|",
    ]
    for m in metrics:
        lines.append(
            f"| {_METRIC_NAMES[m]} | {_pct(result.summary.get(m))} | "
            f"{_pct1(result.chance.get(m))} | {_pct1(result.majority.get(m))} |"
        )
    s = result.summary.get(main)
    if s:
        base = result.majority.get(main)
        chance = result.chance.get(main)
        against = f"against {_pct1(base)} % for {baseline}"
        if chance is not None:
            against = (f"against a chance level of {_pct1(chance)} % ({chance_what}) and "
                       f"{_pct1(base)} % for {baseline}")
        lines += [
            "",
            (
                f"In plain words: the probe reaches {_METRIC_PHRASE[main]} of "
                f"{100 * s['mean']:.1f} % (± {100 * s['std']:.1f} over {n_seeds} seed(s)), "
                f"{against}. {_versus_baseline(s, result.baseline(main))}"
            ).rstrip(),
        ]
    chosen = [s.get("chosen") for s in result.per_seed if s.get("chosen")]
    if chosen:
        lines += [
            "",
            "Chosen points: "
            + "; ".join(
                f"seed {s['seed']}: lr {s['chosen']['lr']:g}, weight decay "
                f"{s['chosen']['weight_decay']:g}, epoch {s['chosen']['epochs']}"
                for s in result.per_seed
            )
            + ".",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- public API


def write_report(
    out_dir: str | os.PathLike[str],
    result: ProbeResult,
    *,
    meta: dict[str, Any],
    embeddings: Any = None,
    projection: str = "pca",
) -> Path:
    """Write a probe result as JSON, Markdown and figures into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Created if missing; files in it with the same names are replaced.
    result : ProbeResult
    meta : dict
        What was probed. Recognised keys (all optional, all kept in ``result.json``):
        ``name`` (the run's name in tables), ``encoder`` (the encoder spec), ``encoder_key``
        (its key or hash), ``store`` (the store path), ``store_hash``, ``store_created``,
        ``pooling``, ``store_name`` (the store's short name in tables, else ``store``).
        The probe configuration is added as ``probe_config`` unless given; when
        ``encoder`` is an ``encoder.pt`` written by ``trainer pretrain``, its pre-training
        config (with the pre-training ``seed``) is added as ``pretrain`` unless given
        (:func:`pretrain_recipe`), which :func:`compare` groups seeds by.
    embeddings : tuple (X, labels) or object with ``X`` and ``labels``, optional
        Clip embeddings ``(n, D)`` and their label strings; when given, ``projection.png``
        shows them in two dimensions coloured by label (multi-label clips by their first
        tag), at most 5000 clips.
    projection : {"pca", "tsne"}
        The 2-D projection method (t-SNE from scikit-learn is slower).

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    if projection not in ("pca", "tsne"):
        raise ValueError(f"projection must be 'pca' or 'tsne', got {projection!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    meta.setdefault("probe_config", result.config)
    if "pretrain" not in meta:
        recipe = pretrain_recipe(meta.get("encoder"))
        if recipe is not None:
            meta["pretrain"] = recipe
    name = _run_name(meta, out.name)

    payload = {"format": RESULT_FORMAT, "meta": meta, **result.to_dict()}
    text = json.dumps(to_plain(payload), indent=2, allow_nan=False)
    tmp = out / "result.json.tmp"
    tmp.write_text(text + "\n")
    tmp.replace(out / "result.json")

    (out / "summary.md").write_text(_summary_md(result, meta, name))
    title = f"{name} on {_store_name(meta)}"
    if result.task == "classification":
        _plot_confusion(result, out / "confusion.png", title)
    _plot_per_class(result, out / "per_class.png", title)
    if embeddings is not None:
        if isinstance(embeddings, tuple | list):
            X, labels = embeddings
        else:
            X, labels = embeddings.X, embeddings.labels
        _plot_projection(
            X,
            labels,
            out / "projection.png",
            projection,
            f"{title}: clip embeddings ({'PCA' if projection == 'pca' else 't-SNE'})",
        )
    return out


def load_result(path: str | os.PathLike[str]) -> tuple[ProbeResult, dict[str, Any]]:
    """Read a ``result.json`` written by :func:`write_report` (or the folder holding it).

    Returns
    -------
    (ProbeResult, dict)
        The result and its meta.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    data = json.loads(path.read_text())
    if data.get("format") != RESULT_FORMAT:
        raise ValueError(f"{path}: not a probe result of format {RESULT_FORMAT}")
    return ProbeResult.from_dict(data), data.get("meta", {})


#: Pre-training options that do not change what is learned (where it ran, how often it
#: logged), left out when runs are matched as one recipe.
_NOT_RECIPE = ("seed", "out", "device", "compile", "cache", "log_every", "eval_every",
               "save_every", "valid_store", "valid_batches", "prefetch", "max_nan_steps",
               "diagnostics", "diag_clips", "diag_dead_ratio", "probe_store", "probe_every",
               "probe_c")
#: Probe meta keys that must agree for runs to be aggregated into one row.
_PROBE_KEYS = ("store_name", "store", "pooling", "crop_seconds")


def pretrain_recipe(spec: Any) -> dict[str, Any] | None:
    """The pre-training config recorded in an encoder file, or ``None``.

    Parameters
    ----------
    spec : Any
        An encoder spec as probed (a path to an ``encoder.pt``); ``random:``,
        ``mfcc-stats`` and anything that is not a readable encoder file give ``None``.

    Returns
    -------
    dict or None
        The file's ``pretrain`` entry (:meth:`trainer.config.PretrainConfig.to_dict`),
        which holds the pre-training ``seed``.
    """
    if not isinstance(spec, str | os.PathLike) or not os.path.isfile(spec):
        return None
    from trainer.encoder_file import read_encoder_file

    try:
        config = read_encoder_file(spec, mmap=True).get("pretrain")
    except (ValueError, FileNotFoundError):
        return None
    return to_plain(config) if isinstance(config, dict) else None


def _probe_identity(result: ProbeResult, meta: dict[str, Any]) -> str:
    config = {k: v for k, v in (meta.get("probe_config") or result.config or {}).items()
              if k != "device"}
    return json.dumps([result.task, sorted(result.classes), result.folds, config,
                       {k: meta.get(k) for k in _PROBE_KEYS}], sort_keys=True, default=str)


def _seed_group(result: ProbeResult, meta: dict[str, Any]) -> tuple[str, str, int] | None:
    """``(key, kind, seed)``: runs with equal keys differ only in their seed, the
    pre-training seed of a pre-trained encoder or the initialisation seed of a ``random:``
    one (``None``: neither recorded, never grouped)."""
    recipe = meta.get("pretrain")
    if isinstance(recipe, dict) and "seed" in recipe:
        kept = {k: v for k, v in recipe.items() if k not in _NOT_RECIPE}
        key = json.dumps([kept, _probe_identity(result, meta)], sort_keys=True, default=str)
        return key, "pre-training", int(recipe["seed"])
    if "init_seed" in meta:
        key = json.dumps([meta.get("encoder"), meta.get("encoder_kwargs"),
                          _probe_identity(result, meta)], sort_keys=True, default=str)
        return key, "initialisation", int(meta["init_seed"])
    return None


def _group_name(names: list[str], seeds: list[int], kind: str) -> str:
    """``run-s*`` for ``run-s0``, ``run-s1``; else the first name; with the seeds."""
    import re

    stems = {re.sub(rf"[-_]s{seed}$", "", name) for name, seed in zip(names, seeds,
                                                                         strict=True)}
    stem = stems.pop() if len(stems) == 1 else names[0]
    return f"{stem} ({kind} seeds {', '.join(str(s) for s in sorted(seeds))})"


def aggregate_seeds(results: Sequence[ProbeResult]) -> tuple[dict[str, dict[str, float]],
                                                             dict[str, float | None],
                                                             dict[str, float | None]]:
    """Mean ± std over runs (one per pre-training seed) of their mean over probe seeds.

    Parameters
    ----------
    results : sequence of ProbeResult
        One per pre-training seed of a recipe, of one task.

    Returns
    -------
    summary : dict
        Metric -> ``{"mean", "std", "n"}``: the mean and the standard deviation
        (``ddof=1``; 0 for one run) over runs of each run's mean over probe seeds, and
        the number of runs that have the metric.
    chance, majority : dict
        The runs' chance and majority figures, averaged (they differ only if the runs
        saw different splits).
    """
    task = results[0].task
    summary: dict[str, dict[str, float]] = {}
    for m in (*SCALAR_METRICS[task], f"valid_{MAIN_METRIC[task]}"):
        values = np.array([r.summary[m]["mean"] for r in results if m in r.summary])
        if len(values):
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary[m] = {"mean": float(values.mean()), "std": std, "n": len(values)}

    def mean_of(dicts: list[dict[str, Any]]) -> dict[str, float | None]:
        out = {}
        for m in SCALAR_METRICS[task]:
            kept = [d[m] for d in dicts if d.get(m) is not None]
            out[m] = float(np.mean(kept)) if kept else None
        return out

    return (summary, mean_of([r.chance for r in results]),
            mean_of([r.majority for r in results]))


def compare(result_paths: Sequence[str | os.PathLike[str]], *,
            group_seeds: bool = True) -> str:
    """One Markdown table across probe runs, grouped by store, best run first.

    Parameters
    ----------
    result_paths : sequence of path-like
        ``result.json`` files (or folders holding one).
    group_seeds : bool
        Aggregate runs of one pre-training recipe that differ only in the pre-training
        seed (``meta["pretrain"]`` equal but for ``seed`` and options that do not change
        what is learned, such as ``out`` and ``device``; the same store, task, classes,
        folds, pooling and probe config) into one row: the mean ± std over pre-training
        seeds of every run's mean over probe seeds. Probes of one ``random:`` encoder
        (the same spec and ``meta["encoder_kwargs"]``) that differ only in
        ``meta["init_seed"]`` (``trainer probe --init-seed``) are grouped the same way,
        over initialisation seeds. ``False``: one row per result.

    Returns
    -------
    str
        A Markdown table: one row per run (named by ``meta["name"]``, else the encoder
        spec, else the folder name) or per group of pre-training seeds (``<name without
        its -s<seed> suffix> (pre-training seeds 0, 1, 2)``, or ``(initialisation seeds
        ...)``), columns Store, Run, then mean ± std in % of the metrics of the runs'
        tasks (Accuracy and Macro-F1 for classification, ROC-AUC and PR-AUC for tagging;
        "—" where a run's task has no such metric), then the majority baseline's and
        chance's main metric (chance: the expected score of a guess from the training
        label prior, see :class:`trainer.evaluation.ProbeResult`; "—" for results written
        without it), then Spread: what the ± is (``± over N probe seeds``, ``± over N pre-training
        seeds`` or ``± over N initialisation seeds``). Runs are grouped by store
        (``meta["store_name"]``, else ``meta["store"]``), stores in the order first given,
        and sorted within a store by their main metric (accuracy or ROC-AUC), best first.
    """
    loaded = []
    for i, p in enumerate(result_paths):
        result, meta = load_result(p)
        path = Path(p)
        fallback = (path if path.is_dir() else path.parent).name or f"run {i}"
        loaded.append((result, meta, _run_name(meta, fallback), i))
    if not loaded:
        raise ValueError("compare() needs at least one result")

    # rows: (store, name, task, summary, chance, majority, spread, order)
    # key -> [(item, kind of seed, seed)]
    groups: dict[str, list[tuple[tuple[ProbeResult, dict[str, Any], str, int], str, int]]] = {}
    rows = []
    for item in loaded:
        result, meta, name, i = item
        group = _seed_group(result, meta) if group_seeds else None
        if group is None:
            spread = f"± over {len(result.per_seed)} probe seeds" if result.per_seed else ""
            rows.append((_store_name(meta), name, result.task, result.summary,
                         result.chance, result.majority, spread, i))
        else:
            key, kind, seed = group
            groups.setdefault(key, []).append((item, kind, seed))
    for grouped in groups.values():
        members = [item for item, _, _ in grouped]
        kind = grouped[0][1]  # one kind per key: the two kinds' keys differ in length
        seeds = [seed for _, _, seed in grouped]
        result, meta, name, i = members[0]
        if len(members) == 1 or len(set(seeds)) < len(seeds):
            for result, meta, name, i in members:  # a lone run, or repeats of one seed
                spread = f"± over {len(result.per_seed)} probe seeds" if result.per_seed else ""
                rows.append((_store_name(meta), name, result.task, result.summary,
                             result.chance, result.majority, spread, i))
            continue
        summary, chance, majority = aggregate_seeds([m[0] for m in members])
        rows.append((_store_name(meta), _group_name([m[2] for m in members], seeds, kind),
                     result.task, summary, chance, majority,
                     f"± over {len(members)} {kind} seeds", i))

    present = {m for r in rows for m in SCALAR_METRICS[r[2]]}
    columns = [m for m in _METRIC_ORDER if m in present]
    store_order = {s: k for k, s in reversed(list(enumerate(r[0] for r in sorted(
        rows, key=lambda r: r[7]))))}

    def main_of(row: tuple) -> float:
        return row[3].get(MAIN_METRIC[row[2]], {}).get("mean", -math.inf)

    rows.sort(key=lambda r: (store_order[r[0]], -main_of(r), r[7]))

    header = ["Store", "Run", *(f"{_METRIC_NAMES[m]} (%)" for m in columns), "Majority (%)",
              "Chance (%)", "Spread"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    previous = None
    for store, name, task, summary, chance, majority, spread, _ in rows:
        cells = [store if store != previous else "", name]
        for m in columns:
            cells.append(_pct(summary.get(m)) if m in SCALAR_METRICS[task] else "—")
        main = MAIN_METRIC[task]
        cells.append(f"{_pct1(majority.get(main))} ({_METRIC_NAMES[main]})")
        cells.append(_pct1(chance.get(main)))
        cells.append(spread)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        previous = store
    return "\n".join(lines) + "\n"
