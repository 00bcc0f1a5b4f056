"""Pre-training end to end on a small store: learning, exact resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
from stores import TINY_PASE, build_store, tone_corpus

import trainer
from trainer.config import PretrainConfig, resolve_config
from trainer.pretrain import TrainingError, pretrain
from trainer.workers import Workers

WORKERS = ["mfcc", "chroma", "onset", "prosody", "tempo", "waveform", "lim", "gim"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    return build_store(tone_corpus(root / "audio", n_clips=18, seconds=3.0), root / "tones.h5",
                       "mfcc,chroma,onset,prosody,tempo")


def tiny(store: Path, out: Path, **overrides: object) -> PretrainConfig:
    base: dict[str, object] = dict(
        store=[str(store)], out=str(out), encoder="pase+", encoder_kwargs=TINY_PASE,
        workers=WORKERS, batch_size=8, crop_seconds=0.5, steps=120, lr=3e-3, warmup_steps=10,
        log_every=1, eval_every=1000, save_every=1000, device="cpu", distort=False,
    )
    base.update(overrides)
    return PretrainConfig(**base)  # type: ignore[arg-type]


def losses(run: Path, kind: str = "train") -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_a_tiny_pase_reduces_every_workers_loss(store: Path, tmp_path: Path) -> None:
    # 150 steps of a 0.1 M-parameter PASE+ on CPU: every worker must learn something (at
    # least 10% below its first steps), and the workers together clearly (30% on average).
    run = pretrain(tiny(store, tmp_path / "run", steps=150, batch_size=16, lr=1e-2),
                   progress=False)
    rows = losses(run)
    assert [r["step"] for r in rows] == list(range(1, 151))
    ratios = {}
    for name in WORKERS:
        first = sum(r["loss"][name] for r in rows[:10]) / 10
        last = sum(r["loss"][name] for r in rows[-20:]) / 20
        ratios[name] = last / first
    assert all(r < 0.9 for r in ratios.values()), ratios
    assert sum(ratios.values()) / len(ratios) < 0.7, ratios
    for r in rows:
        assert 0.0 <= r["data_wait"] <= 1.0 and r["audio_s_per_s"] > 0
        assert set(r["weight"]) == set(WORKERS)
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("kind,step,lr")
    saved = json.loads((run / "config.json").read_text())
    assert saved["workers"] == WORKERS and saved["steps"] == 150


def test_linear_heads_are_one_projection_per_regression_worker() -> None:
    from featurestore.targets import REGISTRY

    specs = {n: REGISTRY[n].spec() for n in ("mfcc", "chroma", "tempo")}
    heads = Workers(["mfcc", "chroma", "tempo", "lim"], specs, in_dim=32, hop=160, hidden=0)
    for name, dim in (("mfcc", 60), ("chroma", 12), ("tempo", 1)):
        net = heads.heads[name].net
        assert isinstance(net, torch.nn.Conv1d) and net.weight.shape == (dim, 32, 1)
    assert heads.heads["lim"].net[0].out_features == 256  # a discriminator stays an MLP
    h = torch.randn(2, 32, 50)
    assert heads.heads["mfcc"](h).shape == (2, 50, 60)
    assert heads.heads["tempo"](h).shape == (2, 1)


def test_the_saved_encoder_loads_with_one_call(store: Path, tmp_path: Path) -> None:
    run = pretrain(tiny(store, tmp_path / "run", steps=3), progress=False)
    enc = trainer.load_encoder(run / "encoder.pt")
    state = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    model_encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    for k, v in enc.state_dict().items():
        assert torch.equal(v, model_encoder[k]), k
    wave = torch.randn(2, 160 * 25) * 0.1
    assert enc(wave).shape == (2, 32, 25)
    assert (enc.hop, enc.dim, enc.sample_rate) == (160, 32, 16000)
    assert not enc.training


def _run_cli(args: list[str], **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _cli_args(store: Path, out: Path, steps: int) -> list[str]:
    cfg = tmp_config = out.with_suffix(".toml")
    tmp_config.write_text(
        f'store = ["{store}"]\nencoder = "pase+"\nworkers = {json.dumps(WORKERS)}\n'
        f"batch_size = 8\ncrop_seconds = 0.5\nsteps = {steps}\nlr = 3e-3\nwarmup_steps = 5\n"
        "log_every = 1\nsave_every = 4\ndevice = \"cpu\"\n"
        "[encoder_kwargs]\nchannels = [16, 16, 32, 32, 32, 32, 32]\ndim = 32\n"
        "rnn_hidden = 16\nsinc_filters = 16\n"
    )
    return ["pretrain", "--config", str(cfg), "--out", str(out), "--quiet"]


def test_resume_after_a_kill_gives_the_losses_of_a_straight_run(store: Path,
                                                                tmp_path: Path) -> None:
    steps = 40
    straight = _run_cli(_cli_args(store, tmp_path / "straight", steps))
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    killed = _run_cli(_cli_args(store, tmp_path / "killed", steps))
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    at = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < at < steps, "the run must be killed part-way"
    resumed = _run_cli(["pretrain", "--resume", str(tmp_path / "killed"), "--quiet"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert [r["step"] for r in b] == list(range(1, steps + 1))
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == rb["loss"], ra["step"]
        assert ra["lr"] == rb["lr"]


def test_two_process_ddp_with_gloo(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    args = _cli_args(store, out, 6)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "trainer", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = losses(out)
    assert [r["step"] for r in rows] == list(range(1, 7))
    enc = trainer.load_encoder(out / "encoder.pt")
    assert enc(torch.zeros(1, 160 * 10)).shape == (1, 32, 10)


def poison_chroma(monkeypatch: pytest.MonkeyPatch, value: float) -> None:
    """Every step from now on, the chroma worker's loss is multiplied by ``value``."""
    real = Workers.forward

    def poisoned(self: Workers, *args: object, **kw: object) -> dict[str, torch.Tensor]:
        out = real(self, *args, **kw)  # type: ignore[arg-type]
        out["chroma"] = out["chroma"] * value
        return out

    monkeypatch.setattr(Workers, "forward", poisoned)


def test_non_finite_losses_skip_the_step_then_stop_the_run(store: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    poison_chroma(monkeypatch, float("nan"))
    with pytest.warns(UserWarning, match="non-finite loss \\(chroma\\)"), \
            pytest.raises(TrainingError, match="5 consecutive steps with non-finite losses"):
        pretrain(tiny(store, tmp_path / "nan", max_nan_steps=5), progress=False)


def test_a_worker_the_store_lacks_is_a_one_line_error(store: Path, tmp_path: Path) -> None:
    proc = _run_cli(["pretrain", "--store", str(store), "--workers", "cqt,lim", "--steps", "1",
                     "--out", str(tmp_path / "x"), "--device", "cpu"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.startswith("error: unknown worker(s) cqt") and "Traceback" not in err


def test_an_incompatible_checkpoint_is_refused(store: Path, tmp_path: Path) -> None:
    run = pretrain(tiny(store, tmp_path / "run", steps=2), progress=False)
    cfg = json.loads((run / "config.json").read_text())
    cfg["encoder_kwargs"]["dim"] = 48
    with pytest.raises(TrainingError, match="incompatible with this run's config"):
        pretrain(PretrainConfig.from_dict(cfg), resume=True, progress=False)


def test_an_existing_run_folder_needs_resume(store: Path, tmp_path: Path) -> None:
    run = pretrain(tiny(store, tmp_path / "run", steps=1), progress=False)
    with pytest.raises(TrainingError, match="use --resume"):
        pretrain(tiny(store, run, steps=1), progress=False)


def test_config_file_then_command_line(tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text('[pretrain]\nstore = ["a.h5"]\nsteps = 50\nweighting = "dwa"\n'
                 "[pretrain.weighting_kwargs]\nperiod = 10\n")
    cfg = resolve_config(f, {"steps": 7, "batch_size": None, "workers": "mfcc,lim"})
    assert (cfg.steps, cfg.weighting, cfg.weighting_kwargs) == (7, "dwa", {"period": 10})
    assert cfg.workers == ["mfcc", "lim"] and cfg.batch_size == 128
    f.write_text("stepz = 3\n")
    with pytest.raises(ValueError, match="unknown option\\(s\\) stepz"):
        resolve_config(f, {})


@pytest.mark.parametrize("name", ["cpu-small", "gpu"])
def test_a_named_preset_is_the_base_of_the_config(name: str, tmp_path: Path) -> None:
    from trainer.config import load_preset, preset_names
    from trainer.encoders import build_encoder

    assert name in preset_names()
    preset = load_preset(name)
    cfg = resolve_config(None, {"store": "a.h5"}, preset=name)
    assert {k: getattr(cfg, k) for k in preset} == preset and cfg.store == ["a.h5"]
    with torch.device("meta"):
        build_encoder(cfg.encoder, **cfg.encoder_kwargs)
    # a config file names the preset and overrides it; the command line overrides both
    f = tmp_path / "run.toml"
    f.write_text(f'preset = "{name}"\nsteps = 9\nlr = 0.5\n')
    cfg = resolve_config(f, {"lr": 0.25})
    assert (cfg.steps, cfg.lr, cfg.encoder_kwargs) == (9, 0.25, preset.get("encoder_kwargs",
                                                                             {}))
    # another encoder does not inherit the preset's encoder arguments
    other = "samplecnn" if preset.get("encoder") != "samplecnn" else "melcnn"
    cfg = resolve_config(None, {"encoder": other}, preset=name)
    assert cfg.encoder == other and cfg.encoder_kwargs == {}


def test_an_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown preset 'tiny'; presets: cpu-small, gpu"):
        resolve_config(None, {}, preset="tiny")
    proc = subprocess.run([sys.executable, "-m", "trainer", "pretrain", "--preset", "tiny"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "'tiny' is not one of 'cpu-small', 'gpu'" in proc.stderr


def test_validation_losses_per_worker_on_a_held_out_store(store: Path, tmp_path: Path) -> None:
    run = pretrain(tiny(store, tmp_path / "run", steps=4, eval_every=2, valid_store=[str(store)],
                        workers=["mfcc", "lim"]), progress=False)
    rows = losses(run, "valid")
    assert [r["step"] for r in rows] == [0, 2, 4]  # step 0: the random initialisation
    for r in rows:
        assert set(r["valid"]) == {"mfcc", "lim"}
        assert all(v > 0 for v in r["valid"].values())
        assert set(r["r2"]) == {"mfcc"} and r["r2"]["mfcc"] <= 1.0  # regression workers
    plain = pretrain(tiny(store, tmp_path / "plain", steps=4, eval_every=2,
                          valid_store=[str(store)], workers=["mfcc", "lim"],
                          diagnostics=False), progress=False)
    assert [r["step"] for r in losses(plain, "valid")] == [2, 4]


def test_a_validation_store_computed_otherwise_is_refused(store: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    shutil.copyfile(store, other)
    with h5py.File(other, "r+") as f:  # prosody computed with the other F0 tracker
        spec = json.loads(f["targets/prosody"].attrs["spec"])
        spec["params"]["f0_method"] = "PitchYinFFT"
        f["targets/prosody"].attrs["spec"] = json.dumps(spec, sort_keys=True)
    with pytest.raises(TrainingError, match=r"other.h5: target 'prosody' was computed with "
                                             r"other parameters than in .*tones.h5"):
        pretrain(tiny(store, tmp_path / "run", steps=2, valid_store=[str(other)],
                      workers=["mfcc", "prosody"]), progress=False)
    pretrain(tiny(store, tmp_path / "ok", steps=2, valid_store=[str(other)],
                  workers=["mfcc"]), progress=False)  # the workers trained agree


def test_a_skipped_step_changes_no_weight(store: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Every step poisoned: the device-side skip (fused AdamW's found_inf) leaves the weights
    # exactly where a run with a zero learning rate leaves them (same forward passes, so the
    # same batch-norm statistics), and the skips are reported at the log steps.
    frozen = pretrain(tiny(store, tmp_path / "frozen", steps=4, lr=0.0, log_every=2,
                           workers=["mfcc", "chroma"]), progress=False)
    poison_chroma(monkeypatch, float("inf"))
    with pytest.warns(UserWarning) as record:
        run = pretrain(tiny(store, tmp_path / "nan", steps=4, log_every=2,
                            workers=["mfcc", "chroma"]), progress=False)
    assert [str(w.message) for w in record] == [
        f"steps {a}-{b}: 2 with a non-finite loss (chroma); skipped" for a, b in [(1, 2), (3, 4)]]
    assert [r["skipped"] for r in losses(run)] == [2, 2]
    a, b = (torch.load(p / "encoder.pt", weights_only=True)["state_dict"] for p in (frozen, run))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
