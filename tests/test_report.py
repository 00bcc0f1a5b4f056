"""Probe reports: result.json round-trip, summary, valid PNG figures, comparison tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.evaluation import ProbeConfig, ProbeResult, run_probe
from trainer.report import compare, load_result, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ProbeConfig(
    lrs=(1e-3, 1e-2), weight_decays=(0.0,), epochs=15, patience=5, hidden=32, seeds=2
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def classification() -> tuple[ProbeResult, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 240)
    X = np.eye(3)[y] @ rng.normal(size=(3, 12)) * 3 + rng.normal(size=(240, 12))
    labels = [["blues", "jazz", "rock"][k] for k in y]
    splits = ["train"] * 140 + ["valid"] * 50 + ["test"] * 50
    return run_probe(X, labels, splits, None, FAST), X, labels


@pytest.fixture(scope="module")
def tagging() -> tuple[ProbeResult, np.ndarray, list[str]]:
    rng = np.random.default_rng(1)
    Y = rng.random((240, 4)) < 0.35
    X = Y @ rng.normal(size=(4, 12)) * 2 + rng.normal(size=(240, 12))
    names = ["drums", "guitar", "piano", "vocal"]
    labels = [";".join(t for t, on in zip(names, row, strict=True) if on) for row in Y]
    splits = ["train"] * 140 + ["valid"] * 50 + ["test"] * 50
    return run_probe(X, labels, splits, None, FAST), X, labels


META = {
    "name": "pase+ equal",
    "encoder": "runs/pase/encoder.pt",
    "encoder_key": "ab12cd",
    "store": "stores/gtzan.h5",
    "store_hash": "ffee01",
    "store_created": "2026-01-01",
    "pooling": "mean",
}


def assert_png(path: Path, min_bytes: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) >= min_bytes, (path, len(data))
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 200 and height >= 200


def test_classification_report_files(tmp_path: Path, classification) -> None:
    result, X, labels = classification
    out = write_report(tmp_path / "run", result, meta=META, embeddings=(X, labels))
    assert out == tmp_path / "run"
    for name in ("result.json", "summary.md", "confusion.png", "per_class.png", "projection.png"):
        assert (out / name).is_file(), name
    for name in ("confusion.png", "per_class.png", "projection.png"):
        assert_png(out / name)
    summary = (out / "summary.md").read_text()
    assert "classification into 3 classes" in summary
    assert "140 train, 50 validation, 50 test" in summary
    mean = 100 * result.summary["accuracy"]["mean"]
    assert f"{mean:.1f} ±" in summary
    assert f"{100 * result.majority['accuracy']:.1f}" in summary
    assert "most frequent training class" in summary


def test_result_json_round_trips_with_every_seed(tmp_path: Path, classification) -> None:
    result, _, _ = classification
    write_report(tmp_path, result, meta=META)
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["meta"]["store_hash"] == "ffee01"
    assert data["meta"]["probe_config"]["lrs"] == [1e-3, 1e-2]
    assert data["task"] == "classification"  # the result's fields sit at the top level
    per_seed = data["per_seed"]
    assert len(per_seed) == 2
    for seed in per_seed:
        assert {"accuracy", "macro_f1", "confusion", "per_class"} <= set(seed["test"])
        assert set(seed["chosen"]) == {"lr", "weight_decay", "epochs"}
    assert set(data["summary"]) >= {"accuracy", "macro_f1"}
    assert "accuracy" in data["majority"]
    loaded, meta = load_result(tmp_path)
    assert loaded.to_dict() == result.to_dict()
    assert meta["name"] == "pase+ equal"
    assert not (tmp_path / "projection.png").exists()


def test_tagging_report_has_no_confusion(tmp_path: Path, tagging) -> None:
    result, X, labels = tagging
    write_report(tmp_path, result, meta={"name": "tagger"}, embeddings=(X, labels))
    assert not (tmp_path / "confusion.png").exists()
    assert_png(tmp_path / "per_class.png")
    assert_png(tmp_path / "projection.png")
    summary = (tmp_path / "summary.md").read_text()
    assert "tagging with 4 tags" in summary and "ROC-AUC" in summary and "PR-AUC" in summary


def test_projection_accepts_an_embeddings_object_and_tsne(tmp_path: Path, classification) -> None:
    result, X, labels = classification

    class Embeddings:
        def __init__(self) -> None:
            self.X, self.labels = X[:120], labels[:120]

    write_report(tmp_path, result, meta=META, embeddings=Embeddings(), projection="tsne")
    assert_png(tmp_path / "projection.png")


def fake_result(path: Path, name: str, store: str, task: str, main: float) -> Path:
    if task == "classification":
        summary = {
            "accuracy": {"mean": main, "std": 0.01},
            "macro_f1": {"mean": main - 0.05, "std": 0.02},
        }
        majority = {"accuracy": 0.1, "macro_f1": 0.02}
        metric = "accuracy"
    else:
        summary = {
            "roc_auc_macro": {"mean": main, "std": 0.004},
            "pr_auc_macro": {"mean": main / 2, "std": 0.01},
        }
        majority = {"roc_auc_macro": 0.5, "pr_auc_macro": 0.05}
        metric = "roc_auc_macro"
    result = ProbeResult(
        task=task,
        classes=["a", "b"],
        metric=metric,
        per_seed=[],
        summary=summary,
        majority=majority,
        n_train=8,
        n_valid=2,
        n_test=2,
    )
    path.mkdir(parents=True)
    (path / "result.json").write_text(
        json.dumps(
            {
                "format": "trainer-probe-result/1",
                "meta": {"name": name, "store": store},
                **result.to_dict(),
            }
        )
    )
    return path / "result.json"


def test_compare_orders_runs_by_main_metric(tmp_path: Path) -> None:
    worse = fake_result(tmp_path / "a", "melcnn", "stores/gtzan.h5", "classification", 0.712)
    better = fake_result(tmp_path / "b", "pase+", "stores/gtzan.h5", "classification", 0.834)
    table = compare([worse, better])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Store | Run | Accuracy (%) | Macro-F1 (%) | Majority")
    assert len(lines) == 4
    assert "pase+" in lines[2] and "83.4 ± 1.0" in lines[2] and "78.4 ± 2.0" in lines[2]
    assert "melcnn" in lines[3] and "71.2 ± 1.0" in lines[3]
    assert "10.0" in lines[2]
    assert table.index("pase+") < table.index("melcnn")


def test_compare_groups_by_store(tmp_path: Path) -> None:
    paths = [
        fake_result(tmp_path / "1", "melcnn", "stores/mtat.h5", "tagging", 0.85),
        fake_result(tmp_path / "2", "melcnn", "stores/gtzan.h5", "classification", 0.70),
        fake_result(tmp_path / "3", "pase+", "stores/mtat.h5", "tagging", 0.89),
        fake_result(tmp_path / "4", "pase+", "stores/gtzan.h5", "classification", 0.80),
    ]
    lines = compare(paths).strip().splitlines()
    assert "ROC-AUC (%)" in lines[0] and "Accuracy (%)" in lines[0]
    body = lines[2:]
    assert [line.split("|")[2].strip() for line in body] == ["pase+", "melcnn"] * 2
    assert body[0].split("|")[1].strip() == "stores/mtat.h5"
    assert body[1].split("|")[1].strip() == ""  # store named once per group
    assert body[2].split("|")[1].strip() == "stores/gtzan.h5"
    assert "89.0 ± 0.4" in body[0] and "—" in body[0]


def test_summary_shows_chance_next_to_majority(tmp_path: Path, classification) -> None:
    result, _, _ = classification
    summary = (write_report(tmp_path, result, meta=META) / "summary.md").read_text()
    chance, majority = result.chance["accuracy"], result.majority["accuracy"]
    assert "| Metric | Probe, mean ± std over seeds (%) | Chance (%) | Majority baseline (%) |" \
        in summary
    row = next(line for line in summary.splitlines() if line.startswith("| Accuracy |"))
    assert row.endswith(f"| {100 * chance:.1f} | {100 * majority:.1f} |")
    assert f"against a chance level of {100 * chance:.1f} %" in summary
    base = 100 * max(chance, majority)
    assert f"the higher of chance and majority, {base:.1f} %" in summary
    assert json.loads((tmp_path / "result.json").read_text())["chance"] == result.chance


def seed_result(path: Path, name: str, accuracy: float, pretrain: dict | None,
                probe_seeds: int = 3, chance: float = 0.2, majority: float = 0.0,
                **extra: object) -> Path:
    """A synthetic result.json: ``accuracy`` is the mean over probe seeds."""
    result = ProbeResult(
        task="classification", classes=["a", "b"], metric="accuracy",
        per_seed=[{"seed": k} for k in range(probe_seeds)],
        summary={"accuracy": {"mean": accuracy, "std": 0.01},
                 "macro_f1": {"mean": accuracy - 0.1, "std": 0.02}},
        majority={"accuracy": majority, "macro_f1": 0.0},
        chance={"accuracy": chance, "macro_f1": chance / 2},
        n_train=8, n_valid=2, n_test=2, folds=5,
        config={"classifier": "mlp", "seeds": probe_seeds, "device": "cpu"},
    )
    meta: dict = {"name": name, "store": "stores/gtzan.h5", "pooling": "mean+std"}
    if pretrain is not None:
        meta["pretrain"] = pretrain
    meta.update(extra)
    path.mkdir(parents=True)
    (path / "result.json").write_text(json.dumps(
        {"format": "trainer-probe-result/1", "meta": meta, **result.to_dict()}))
    return path / "result.json"


def recipe(seed: int, weighting: str = "equal") -> dict:
    return {"encoder": "pase+", "workers": ["default"], "weighting": weighting,
            "steps": 1000, "seed": seed, "out": f"runs/w-{weighting}-s{seed}",
            "device": "cuda" if seed else "cpu"}


def test_compare_aggregates_pretraining_seeds(tmp_path: Path) -> None:
    paths = [
        seed_result(tmp_path / "0", "w-equal-s0", 0.70, recipe(0)),
        seed_result(tmp_path / "1", "w-equal-s1", 0.74, recipe(1)),
        seed_result(tmp_path / "2", "w-equal-s2", 0.78, recipe(2)),
        seed_result(tmp_path / "3", "w-dwa-s0", 0.76, recipe(0, "dwa")),
        seed_result(tmp_path / "4", "mfcc-stats", 0.50, None, probe_seeds=2),
    ]
    lines = compare(paths).strip().splitlines()
    assert lines[0] == ("| Store | Run | Accuracy (%) | Macro-F1 (%) | Majority (%) | "
                        "Chance (%) | Spread |")
    assert lines[2:] == [
        "| stores/gtzan.h5 | w-dwa-s0 | 76.0 ± 1.0 | 66.0 ± 2.0 | 0.0 (Accuracy) | 20.0 | "
        "± over 3 probe seeds |",
        "|  | w-equal (pre-training seeds 0, 1, 2) | 74.0 ± 4.0 | 64.0 ± 4.0 | "
        "0.0 (Accuracy) | 20.0 | ± over 3 pre-training seeds |",
        "|  | mfcc-stats | 50.0 ± 1.0 | 40.0 ± 2.0 | 0.0 (Accuracy) | 20.0 | "
        "± over 2 probe seeds |",
    ]
    ungrouped = compare(paths, group_seeds=False).strip().splitlines()
    assert len(ungrouped) == 2 + 5
    assert sum("± over 3 probe seeds" in line for line in ungrouped) == 4


def test_compare_aggregates_initialisation_seeds_of_random_weights(tmp_path: Path) -> None:
    spec = "random:runs/w-equal-s0/encoder.pt"
    paths = [seed_result(tmp_path / str(k), f"random-s{k}", acc, None, encoder=spec,
                         init_seed=k) for k, acc in enumerate([0.50, 0.56, 0.62])]
    other = seed_result(tmp_path / "x", "random-pase", 0.40, None, encoder="random:pase+",
                        init_seed=0)
    narrow = [seed_result(tmp_path / f"n{k}", f"random-narrow-s{k}", 0.30, None,
                          encoder="random:pase+", encoder_kwargs={"dim": 8}, init_seed=k)
              for k in (1, 2)]
    lines = compare([*paths, other, *narrow]).strip().splitlines()
    assert lines[2:] == [
        "| stores/gtzan.h5 | random (initialisation seeds 0, 1, 2) | 56.0 ± 6.0 | "
        "46.0 ± 6.0 | 0.0 (Accuracy) | 20.0 | ± over 3 initialisation seeds |",
        "|  | random-pase | 40.0 ± 1.0 | 30.0 ± 2.0 | 0.0 (Accuracy) | 20.0 | "
        "± over 3 probe seeds |",
        "|  | random-narrow (initialisation seeds 1, 2) | 30.0 ± 0.0 | 20.0 ± 0.0 | "
        "0.0 (Accuracy) | 20.0 | ± over 2 initialisation seeds |",
    ]


def test_compare_keeps_runs_apart_when_the_probe_differs(tmp_path: Path) -> None:
    a = seed_result(tmp_path / "a", "w-equal-s0", 0.70, recipe(0))
    b = seed_result(tmp_path / "b", "w-equal-s1", 0.74, recipe(1), probe_seeds=2)
    same_seed = seed_result(tmp_path / "c", "w-equal-s0-again", 0.72, recipe(0))
    table = compare([a, b, same_seed])
    assert "pre-training seeds" not in table
    assert table.count("± over 3 probe seeds") == 2 and table.count("± over 2 probe seeds") == 1


def test_write_report_records_the_pretraining_config(tmp_path: Path, classification) -> None:
    from stores import TINY_PASE

    from trainer.config import PretrainConfig
    from trainer.encoder_file import save_encoder
    from trainer.encoders import build_encoder

    encoder = build_encoder("pase+", **TINY_PASE)
    path = tmp_path / "encoder.pt"
    save_encoder(path, encoder, "pase+", PretrainConfig(seed=7, weighting="dwa").to_dict(), 10,
                 16000)
    result, _, _ = classification
    write_report(tmp_path / "r", result, meta={"encoder": str(path)})
    data = json.loads((tmp_path / "r" / "result.json").read_text())
    assert data["meta"]["pretrain"]["seed"] == 7
    assert data["meta"]["pretrain"]["weighting"] == "dwa"
    write_report(tmp_path / "m", result, meta={"encoder": "mfcc-stats"})
    assert "pretrain" not in json.loads((tmp_path / "m" / "result.json").read_text())["meta"]


def test_compare_command_groups_unless_per_seed(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trainer.cli import main as cli

    paths = [str(seed_result(tmp_path / str(s), f"w-equal-s{s}", 0.7, recipe(s)))
             for s in (0, 1)]
    grouped = CliRunner().invoke(cli, ["compare", *paths])
    assert grouped.exit_code == 0, grouped.output
    assert "| w-equal (pre-training seeds 0, 1) | 70.0 ± 0.0 |" in grouped.output
    assert "± over 2 pre-training seeds" in grouped.output
    apart = CliRunner().invoke(cli, ["compare", "--per-seed", *paths])
    assert apart.exit_code == 0 and apart.output.count("± over 3 probe seeds") == 2


def test_figures_name_the_run_and_the_store_and_label_the_projection_axes(
        tmp_path: Path, classification, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    figures: list = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    result, X, labels = classification
    write_report(tmp_path, result, meta=META, embeddings=(X, labels))
    confusion, per_class, projection = (f.axes[0] for f in figures)
    assert confusion.get_title().startswith("pase+ equal on stores/gtzan.h5\nconfusion")
    assert per_class.get_title().startswith("pase+ equal on stores/gtzan.h5\nper-class F1")
    assert projection.get_title() == "pase+ equal on stores/gtzan.h5: clip embeddings (PCA)"
    xlabel, ylabel = projection.get_xlabel(), projection.get_ylabel()
    assert xlabel.startswith("PC 1 (") and ylabel.startswith("PC 2 (")
    share = [float(a.split("(")[1].split(" %")[0]) for a in (xlabel, ylabel)]
    assert 100 >= share[0] >= share[1] > 0  # three clusters: two strong components


def test_projection_shares_are_the_variance_of_the_z_scored_data() -> None:
    from trainer.report import projection_2d

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3)) * [1.0, 1.0, 1.0]
    X[:, 1] = X[:, 0]  # two identical columns: PC 1 holds 2 of the 3 unit variances
    coords, axes = projection_2d(X, "pca")
    assert coords.shape == (500, 2)
    assert axes[0] == "PC 1 (66.7 % of variance)" and axes[1] == "PC 2 (33.3 % of variance)"


def test_every_class_of_eleven_gets_its_own_colour_and_no_class_is_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    from trainer.report import _plot_projection, class_colours

    figures: list = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    names = [f"family{k:02d}" for k in range(10)] + ["vocal"]
    labels = [names[k % 11] for k in range(220)]
    X = np.random.default_rng(0).normal(size=(220, 6))
    _plot_projection(X, labels, tmp_path / "p.png", "pca", "t")
    ax = figures[0].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"{n} (20)" for n in names]
    colours = {tuple(c.get_facecolor()[0][:3]) for c in ax.collections}
    assert len(colours) == 11
    assert len({tuple(c) for c in class_colours(25)}) == 25


def test_per_class_bars_keep_zero_scores_and_error_bars_inside_0_1() -> None:
    from types import SimpleNamespace

    from trainer.report import per_class_scores

    per_seed = [{"test": {"per_class": {"a": {"f1": f1a}, "b": {"f1": f1b}, "c": {"f1": 0.0}}}}
                for f1a, f1b in [(0.1, 1.0), (0.9, 0.9)]]
    result = SimpleNamespace(task="classification", classes=["a", "b", "c"], per_seed=per_seed)
    key, names, mean, err = per_class_scores(result)  # type: ignore[arg-type]
    assert (key, names) == ("f1", ["a", "b", "c"])
    np.testing.assert_allclose(mean, [0.5, 0.95, 0.0])
    np.testing.assert_allclose(err, [[0.4, 0.05, 0.0], [0.4, 0.05, 0.0]])
    assert np.all(mean - err[0] >= 0) and np.all(mean + err[1] <= 1)
