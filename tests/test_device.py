"""Devices, stores, labels and encoders are checked before any work: ``resolve_device``
is the one place a device name becomes a ``torch.device``, and every trainer command
refuses a device this machine lacks, an unlabeled store or an unknown encoder with one
``error:`` line, exit status 1, no traceback and nothing written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from stores import TINY_PASE, build_store, tone_corpus

import trainer.embed
from featurestore.errors import FeatureStoreError
from trainer.cli import main
from trainer.config import PretrainConfig
from trainer.device import DeviceError, device_names, resolve_device
from trainer.pretrain import pretrain

TRAINER = Path(trainer.embed.__file__).parent
NO_CUDA = f"this torch ({torch.__version__}) sees no CUDA device; use --device cpu or auto"
UNKNOWN = "unknown device; expected auto, cpu, cuda or cuda:N"


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Torch sees no CUDA device (as on this CPU machine, and on a GPU machine too)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def gpus(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Torch sees ``n`` CUDA devices (nothing is ever put on them in these tests)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


# --------------------------------------------------------------------------- resolve_device


def test_auto_is_cuda_when_torch_sees_a_gpu_else_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda")


def test_names_are_read_without_case_or_blanks(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_cuda_device_says_what_torch_sees(spec: str, no_cuda: None) -> None:
    with pytest.raises(DeviceError) as e:
        resolve_device(spec)
    assert str(e.value) == f"--device {spec}: {NO_CUDA}"


def test_a_cuda_index_past_the_visible_devices_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 1)
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda:3")
    assert str(e.value) == "--device cuda:3: only 1 CUDA device(s) visible (cuda:0)"
    gpus(monkeypatch, 2)
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda:2")
    assert str(e.value) == "--device cuda:2: only 2 CUDA device(s) visible (cuda:0 to cuda:1)"
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "cuda:0:1", "", "meta", "cpu:0"])
def test_unknown_names_list_the_known_ones(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    with pytest.raises(DeviceError) as e:
        resolve_device(spec)
    assert str(e.value) == f"--device {spec}: {UNKNOWN}"


def test_mps_only_with_a_torch_built_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    assert device_names() == "auto, cpu, cuda or cuda:N"
    with pytest.raises(DeviceError) as e:
        resolve_device("mps")
    assert str(e.value) == (f"--device mps: this torch ({torch.__version__}) is built without "
                            "MPS; use --device cpu or auto")
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_names() == "auto, cpu, cuda, cuda:N or mps"
    with pytest.raises(DeviceError) as e:
        resolve_device("mps")
    assert str(e.value) == (f"--device mps: this torch ({torch.__version__}) sees no MPS "
                            "device; use --device cpu or auto")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")  # auto never picks MPS


def test_the_error_names_the_option_and_is_a_user_error(no_cuda: None) -> None:
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda", option="run r1: device")
    assert str(e.value) == (f"run r1: device cuda: this torch ({torch.__version__}) sees no "
                            "CUDA device; use cpu or auto")
    assert isinstance(e.value, FeatureStoreError) and isinstance(e.value, ValueError)


def test_device_resolution_lives_in_trainer_device_only() -> None:
    sources = {p.relative_to(TRAINER).as_posix(): p.read_text()
               for p in sorted(TRAINER.rglob("*.py"))}
    assert "device.py" in sources
    for name, text in sources.items():
        if name != "device.py":
            assert "cuda.is_available" not in text, name
            assert "def resolve_device" not in text and "def _device" not in text, name


# --------------------------------------------------------------------------- stores


def _write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One audio set of 24 1 s tones (six pitch classes, twelve groups) as three stores:
    ``labeled`` (labels, train/valid/test splits, groups), ``unlabeled`` (no label column)
    and ``unsplit`` (labels, no splits)."""
    root = tmp_path_factory.mktemp("device")
    source = tone_corpus(root / "audio", n_clips=24, seconds=1.0)
    with open(source, newline="") as fh:
        rows = list(csv.DictReader(fh))
    unlabeled = _write_csv(source.with_name("unlabeled.csv"), rows, ["path", "split", "group"])
    unsplit = _write_csv(source.with_name("unsplit.csv"), rows, ["path", "label", "group"])
    return {"labeled": build_store(source, root / "stores" / "labeled.h5", "mfcc"),
            "unlabeled": build_store(unlabeled, root / "stores" / "unlabeled.h5", "mfcc"),
            "unsplit": build_store(unsplit, root / "stores" / "unsplit.h5", "mfcc")}


@pytest.fixture
def never_embeds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if any clip embedding is computed."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("embeddings were computed")

    monkeypatch.setattr(trainer.embed, "_compute", refuse)
    yield


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def one_error_line(result: Result) -> str:
    """The command failed as a user error should: status 1, nothing on stdout, exactly
    one ``error:`` line on stderr, no traceback; returns that line."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args)


# --------------------------------------------------------------------------- every command


def _sweep_file(folder: Path, store: Path, extra: str = "") -> Path:
    path = folder / "s.toml"
    path.write_text(
        f'[stores]\npretrain = ["{store}"]\nprobe = {{ tones = "{store}" }}\n'
        '[pretrain]\nsteps = 2\nbatch_size = 8\ncrop_seconds = 0.5\n'
        f"[probe]\nseeds = 1\nbaselines = [\"mfcc-stats\"]\n{extra}"
        '[[study]]\nname = "w"\nworkers = { small = ["mfcc", "lim"] }\n')
    return path


def command(name: str, stores: dict[str, Path], tmp: Path) -> list[str]:
    """Arguments that would start real work (on the labeled store) for each command."""
    store = str(stores["labeled"])
    return {
        "pretrain": ["pretrain", "--store", store, "--workers", "mfcc,lim", "--steps", "2",
                     "--batch-size", "8", "--crop-seconds", "0.5", "--out", str(tmp / "out")],
        "embed": ["embed", "--encoder", "mfcc-stats", "--store", store],
        "probe": ["probe", "--encoder", "mfcc-stats", "--store", store, "--seeds", "1",
                  "--out", str(tmp / "out")],
        "probe-supervised": ["probe", "--encoder", "supervised:pase+", "--store", store,
                             "--steps", "1", "--seeds", "1", "--out", str(tmp / "out")],
        "sweep": ["sweep", str(_sweep_file(tmp, stores["labeled"])), "--out",
                  str(tmp / "out")],
        "demo": ["demo", "--out", str(tmp / "out"), "--steps", "1", "--seeds", "1"],
    }[name]


COMMANDS = ["pretrain", "embed", "probe", "probe-supervised", "sweep", "demo"]


@pytest.mark.parametrize("device, message", [("cuda", f"--device cuda: {NO_CUDA}"),
                                             ("gpu", f"--device gpu: {UNKNOWN}"),
                                             ("cuda:1", f"--device cuda:1: {NO_CUDA}")],
                         ids=["cuda", "gpu", "cuda:1"])
@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_refuses_a_missing_device_before_any_work(
        name: str, device: str, message: str, stores: dict[str, Path], tmp_path: Path,
        no_cuda: None, never_embeds: None) -> None:
    args = command(name, stores, tmp_path)
    before = files_under(tmp_path) | files_under(stores["labeled"].parent)
    started = time.perf_counter()
    result = invoke([*args, "--device", device])
    assert time.perf_counter() - started < 5.0
    assert one_error_line(result) == f"error: {message}"
    assert not (tmp_path / "out").exists()
    assert files_under(tmp_path) | files_under(stores["labeled"].parent) == before


def test_every_command_with_a_device_option_is_covered() -> None:
    with_device = sorted(name for name, cmd in main.commands.items()
                         if any(p.name == "device" for p in cmd.params))
    assert with_device == sorted({c.split("-")[0] for c in COMMANDS})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_real_process_prints_one_line_for_a_missing_device(stores: dict[str, Path],
                                                             tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "probe", "--encoder", "random:pase+", "--store",
         str(stores["labeled"]), "--out", str(tmp_path / "out"), "--device", "cuda"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"error: --device cuda: {NO_CUDA}\n"
    assert not (tmp_path / "out").exists()


def test_a_device_from_a_config_file_is_checked_before_the_run_folder(
        stores: dict[str, Path], tmp_path: Path, no_cuda: None) -> None:
    config = tmp_path / "run.toml"
    config.write_text(f'store = ["{stores["labeled"]}"]\nworkers = ["mfcc", "lim"]\n'
                      'device = "cuda"\nsteps = 1\nbatch_size = 8\n')
    result = invoke(["pretrain", "--config", str(config), "--out", str(tmp_path / "out")])
    assert one_error_line(result) == f"error: --device cuda: {NO_CUDA}"
    assert not (tmp_path / "out").exists()


def test_a_resumed_run_may_move_to_another_device_but_not_a_missing_one(
        stores: dict[str, Path], tmp_path: Path, no_cuda: None) -> None:
    run = pretrain(PretrainConfig(
        store=[str(stores["labeled"])], out=str(tmp_path / "run"), encoder="pase+",
        encoder_kwargs=TINY_PASE, workers=["mfcc", "lim"], batch_size=8, crop_seconds=0.5,
        steps=1, warmup_steps=1, device="cpu", distort=False), progress=False)
    saved = (run / "config.json").read_text()
    refused = invoke(["pretrain", "--resume", str(run), "--steps", "2", "--device", "gpu"])
    assert one_error_line(refused) == f"error: --device gpu: {UNKNOWN}"
    assert (run / "config.json").read_text() == saved
    moved = invoke(["pretrain", "--resume", str(run), "--steps", "2", "--device", "auto",
                    "--quiet"])
    assert moved.exit_code == 0, moved.output
    assert json.loads((run / "config.json").read_text())["device"] == "auto"


# --------------------------------------------------------------------------- probe checks


def test_probe_on_an_unlabeled_store_stops_before_embedding(
        stores: dict[str, Path], tmp_path: Path, never_embeds: None) -> None:
    store = stores["unlabeled"]
    for spec in ("mfcc-stats", "random:pase+"):
        started = time.perf_counter()
        result = invoke(["probe", "--encoder", spec, "--store", str(store), "--out",
                         str(tmp_path / "out"), "--device", "cpu"])
        assert time.perf_counter() - started < 5.0
        assert one_error_line(result) == (
            f"error: {store}: no labels: every clip is unlabeled (an unlabeled store?); a "
            "probe needs labels")
        assert not store.with_name(store.name + ".embeddings").exists()
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("store_name, options, reason", [
    ("labeled", ["--folds", "13"], "13 folds need at least 13 groups, found 12"),
    ("unsplit", [], "no labeled train clips in the splits; pass folds=K for a grouped K-fold "
                    "cross-validation instead"),
    ("labeled", [], None),  # control cases: the checks pass and the probe goes on
    ("labeled", ["--folds", "4"], None),
    ("unsplit", ["--folds", "4"], None),
])
def test_probe_checks_the_labels_suit_the_protocol_before_embedding(
        store_name: str, options: list[str], reason: str | None, stores: dict[str, Path],
        tmp_path: Path, never_embeds: None) -> None:
    store = stores[store_name]
    args = ["probe", "--encoder", "mfcc-stats", "--store", str(store), "--out",
            str(tmp_path / "out"), "--device", "cpu", *options]
    if reason is None:  # the checks pass, so the probe goes on to embed
        with pytest.raises(AssertionError, match="embeddings were computed"):
            CliRunner().invoke(main, args, catch_exceptions=False)
        return
    assert one_error_line(invoke(args)) == f"error: {store}: {reason}"
    assert not store.with_name(store.name + ".embeddings").exists()


def test_probe_names_a_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    result = invoke(["probe", "--encoder", "mfcc-stats", "--store", str(missing), "--out",
                     str(tmp_path / "out"), "--device", "cpu"])
    assert one_error_line(result) == f"error: {missing}: no such store"
    assert not (tmp_path / "out").exists()


def test_probe_checks_the_encoder_spec_before_embedding(
        stores: dict[str, Path], tmp_path: Path, never_embeds: None) -> None:
    store = stores["labeled"]
    not_an_encoder = tmp_path / "notes.pt"
    not_an_encoder.write_text("not a torch file")
    cases = {
        str(tmp_path / "missing.pt"): (
            f"error: {tmp_path / 'missing.pt'}: no such encoder file (expected an encoder.pt,"
            " 'random:<encoder>', 'mfcc-stats', 'targets-stats')"),
        "random:nope": ("error: 'random:nope': 'nope' is neither a known encoder (melcnn, "
                        "pase+, samplecnn) nor an encoder file"),
        "supervised:nope": ("error: 'supervised:nope': unknown encoder 'nope'; expected one of "
                            "melcnn, pase+, samplecnn"),
        str(not_an_encoder): f"error: {not_an_encoder}: not an encoder file (",
    }
    for spec, message in cases.items():
        result = invoke(["probe", "--encoder", spec, "--store", str(store), "--out",
                         str(tmp_path / "out"), "--device", "cpu"])
        line = one_error_line(result)
        assert line.startswith(message) if message.endswith("(") else line == message
        assert not store.with_name(store.name + ".embeddings").exists()
        assert not (tmp_path / "out").exists()


def test_probe_checks_encoder_arguments_before_embedding(
        stores: dict[str, Path], tmp_path: Path, never_embeds: None) -> None:
    for spec in ("random:pase+", "supervised:pase+"):
        result = invoke(["probe", "--encoder", spec, "--store", str(stores["labeled"]),
                         "--out", str(tmp_path / "out"), "--device", "cpu",
                         "--encoder-kwargs", '{"dimm": 8}'])
        assert one_error_line(result).startswith(
            "error: encoder 'pase+': got an unexpected keyword argument 'dimm'; its "
            "arguments: dim, ")
        assert not (tmp_path / "out").exists()


def test_supervised_probe_on_an_unlabeled_store_trains_nothing(
        stores: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.supervised

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was trained")

    monkeypatch.setattr(trainer.supervised, "train_supervised", refuse)
    store = stores["unlabeled"]
    result = invoke(["probe", "--encoder", "supervised:pase+", "--store", str(store),
                     "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert one_error_line(result) == (f"error: {store}: no labels: every clip is unlabeled; "
                                      "the supervised baseline needs labels")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- sweep and demo


@pytest.mark.parametrize("extra, probe_store, message", [
    ("", "unlabeled",
     "{store}: no labels: every clip is unlabeled (an unlabeled store?); a probe needs labels"),
    ("seedz = 2\n", "labeled", "probe store 'tones': unknown probe option(s) seedz"),
    ('device = "gpu"\n', "labeled", f"probe store 'tones': device gpu: {UNKNOWN}"),
])
def test_a_sweep_checks_its_probes_before_pre_training(
        extra: str, probe_store: str, message: str, stores: dict[str, Path], tmp_path: Path,
        no_cuda: None) -> None:
    plan = _sweep_file(tmp_path, stores["labeled"], extra)
    plan.write_text(plan.read_text().replace(f'tones = "{stores["labeled"]}"',
                                             f'tones = "{stores[probe_store]}"'))
    result = invoke(["sweep", str(plan), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert one_error_line(result) == "error: " + message.format(store=stores[probe_store])
    assert not (tmp_path / "out").exists()


def test_a_sweep_checks_each_runs_own_device(stores: dict[str, Path], tmp_path: Path,
                                             no_cuda: None) -> None:
    plan = _sweep_file(tmp_path, stores["labeled"])
    plan.write_text(plan.read_text().replace("[pretrain]\n", '[pretrain]\ndevice = "cuda"\n'))
    result = invoke(["sweep", str(plan), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert one_error_line(result) == (
        f"error: run w-paseplus-small-equal-s0: device cuda: this torch ({torch.__version__}) "
        "sees no CUDA device; use cpu or auto")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, message", [
    (["--scale", "0"], "--scale 0.0: must be positive"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--seeds", "0"], "--seeds 0: must be at least 1"),
])
def test_demo_checks_its_options_before_rendering(options: list[str], message: str,
                                                  tmp_path: Path) -> None:
    result = invoke(["demo", "--out", str(tmp_path / "out"), "--device", "cpu", *options])
    assert one_error_line(result) == f"error: {message}"
    assert not (tmp_path / "out").exists()


def test_demo_refuses_a_file_as_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "demo.txt"
    out.write_text("")
    result = invoke(["demo", "--out", str(out), "--device", "cpu"])
    assert one_error_line(result) == f"error: --out {out}: is a file, not a folder"
    assert files_under(tmp_path) == {out}
