"""Evaluation of frozen encoders: probes on clip embeddings, their metrics and baselines.

One small module per concern, each readable in one sitting:

- :mod:`~trainer.evaluation.labels`: label strings (``"a;b"`` tag lists) -> task, classes,
  encoded targets; the one place that parses them;
- :mod:`~trainer.evaluation.splits`: store splits, grouped (stratified) K-fold, carved
  validation sets, coverage checks;
- :mod:`~trainer.evaluation.metrics`: scikit-learn's metrics as report dicts, the batched
  rank ROC-AUC, chance and majority figures;
- :mod:`~trainer.evaluation.grid`: the whole (lr, weight decay) grid trained as one batched
  model, with :class:`~trainer.evaluation.grid.GridAdamW`;
- :mod:`~trainer.evaluation.aggregate`: means over folds, mean ± std over seeds, JSON;
- :mod:`~trainer.evaluation.protocol`: :class:`ProbeConfig`, :func:`plan_probe`,
  :func:`run_probe`, :class:`ProbeResult`.

>>> from trainer.evaluation import ProbeConfig, run_probe
>>> result = run_probe(X, labels, splits, groups, ProbeConfig(seeds=3))   # doctest: +SKIP
"""

from trainer.evaluation.aggregate import (
    label_only_baseline,
    mean_or_none,
    mean_over_folds,
    summarise_seeds,
    to_plain,
)
from trainer.evaluation.grid import GridAdamW, GridFit, grid_forward, grid_logits, train_grid
from trainer.evaluation.labels import (
    TAG_SEPARATOR,
    EncodedLabels,
    encode_labels,
    encode_targets,
    has_several_tags,
    is_tag_list,
    resolve_task,
    split_tags,
)
from trainer.evaluation.metrics import (
    MAIN_METRIC,
    SCALAR_METRICS,
    chance_classification,
    chance_metrics,
    chance_tagging,
    classification_metrics,
    majority_metrics,
    roc_auc,
    tagging_metrics,
    task_metrics,
)
from trainer.evaluation.protocol import (
    CLASSIFIERS,
    TASKS,
    ProbeConfig,
    ProbePlan,
    ProbeResult,
    check_store,
    fit_split,
    plan_probe,
    run_probe,
)
from trainer.evaluation.splits import (
    SPLIT_ALIASES,
    carve_valid,
    check_coverage,
    group_keys,
    make_folds,
    normalise_splits,
)

__all__ = [
    "CLASSIFIERS",
    "MAIN_METRIC",
    "SCALAR_METRICS",
    "SPLIT_ALIASES",
    "TAG_SEPARATOR",
    "TASKS",
    "EncodedLabels",
    "GridAdamW",
    "GridFit",
    "ProbeConfig",
    "ProbePlan",
    "ProbeResult",
    "carve_valid",
    "chance_classification",
    "chance_metrics",
    "chance_tagging",
    "check_coverage",
    "check_store",
    "classification_metrics",
    "encode_labels",
    "encode_targets",
    "fit_split",
    "grid_forward",
    "grid_logits",
    "group_keys",
    "has_several_tags",
    "is_tag_list",
    "label_only_baseline",
    "majority_metrics",
    "make_folds",
    "mean_or_none",
    "mean_over_folds",
    "normalise_splits",
    "plan_probe",
    "resolve_task",
    "roc_auc",
    "run_probe",
    "split_tags",
    "summarise_seeds",
    "tagging_metrics",
    "task_metrics",
    "to_plain",
    "train_grid",
]
