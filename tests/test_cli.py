"""The command line: info, verify, targets, --strict, and one-line errors (exit status 1,
no traceback) for the mistakes a user makes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MAIN_TARGETS, BadInputs, Corpus, DaskCluster, tone, write_wav

from featurestore import open_store
from featurestore.cli import main
from featurestore.store import SCHEMA_VERSION, format_bytes
from featurestore.targets import REGISTRY


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``featurestore`` command in a real process."""
    return subprocess.run(["featurestore", *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------- info


def test_info_text(bad_inputs: BadInputs) -> None:
    s = open_store(bad_inputs.store)
    result = CliRunner().invoke(main, ["info", str(bad_inputs.store)])
    assert result.exit_code == 0, result.output
    out = result.output
    hours = s.seconds / 3600
    assert f"11 clips, {hours:.3f} h ({s.seconds:.1f} s) of audio at 16000 Hz, hop 160" in out
    size = bad_inputs.store.stat().st_size
    assert f"size {format_bytes(size)}, {format_bytes(size / hours)} per audio-hour" in out
    lines = out.splitlines()
    for name in ["waveform", *s.targets]:
        x = s.waveform if name == "waveform" else s.targets[name]
        (row,) = [ln for ln in lines if ln.startswith(f"{name} ")]
        assert format_bytes(x.nbytes) in row and format_bytes(x.nbytes / hours) in row
    assert "errors: 5" in out
    for path, reason in s.errors:
        assert f"  {path}: {reason}" in lines
    assert "labels: none (unlabeled)" in out


def test_info_json(built_store: Path, corpus: Corpus) -> None:
    result = CliRunner().invoke(main, ["info", "--json", str(built_store)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    s = open_store(built_store)
    assert info["clips"] == len(corpus.rows) == s.n_clips
    assert info["hours"] == pytest.approx(s.seconds / 3600, rel=1e-12)
    assert info["bytes"] == built_store.stat().st_size
    assert info["bytes_per_audio_hour"] == pytest.approx(info["bytes"] / info["hours"])
    assert sorted(info["targets"]) == sorted(MAIN_TARGETS.split(","))
    for name, t in info["targets"].items():
        assert t["bytes"] == s.targets[name].nbytes
        assert t["dim"] == s.specs[name].dim and t["dtype"] == "float16"
    assert info["waveform_bytes"] == 2 * int(s.clips["n_samples"].sum())
    assert info["labels"] == {"tone": 3, "noise": 2, "loud": 1, "chord": 2}
    assert info["splits"] == {"train": 3, "valid": 2, "test": 2, "": 1}
    assert info["n_errors"] == 0 and info["errors"] == []
    assert info["schema_version"] == SCHEMA_VERSION
    assert info["source"] == str(corpus.csv)


def test_info_json_lists_errors(bad_inputs: BadInputs) -> None:
    info = json.loads(CliRunner().invoke(main, ["info", "--json", str(bad_inputs.store)]).output)
    assert info["n_errors"] == 5
    assert {e["path"] for e in info["errors"]} == {
        str(bad_inputs.files[k]) for k in ("corrupt", "truncated", "empty", "zero_length",
                                           "too_short")}


def test_targets_command() -> None:
    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0
    names = [ln.split()[0] for ln in result.output.splitlines()[1:] if not ln.startswith(" ")]
    assert names == list(REGISTRY)
    specs = json.loads(CliRunner().invoke(main, ["targets", "--json"]).output)
    assert [s["name"] for s in specs] == list(REGISTRY)
    assert {s["name"]: s["dim"] for s in specs}["mfcc"] == 60


def test_verify_several_stores(built_store: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    shutil.copyfile(built_store, broken)
    with h5py.File(broken, "r+") as f:
        f["targets"]["onset"][0, 0] = np.inf
    ok = run_cli("verify", str(built_store))
    assert ok.returncode == 0 and ok.stdout == f"{built_store}: ok\n"
    bad = run_cli("verify", str(built_store), str(broken))
    assert bad.returncode == 1
    assert bad.stdout == f"{built_store}: ok\n"
    assert f"{broken}: target onset: contains NaN or Inf" in bad.stderr
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- errors


def test_strict_makes_the_first_bad_input_fatal(tmp_path: Path,
                                                dask_cluster: DaskCluster) -> None:
    root = tmp_path / "audio"
    write_wav(root / "a_good.wav", tone(440.0, 1.0))
    bad = root / "b_bad.wav"
    bad.write_bytes(b"\x00" * 1000)
    out = tmp_path / "strict.h5"
    result = CliRunner().invoke(main, [
        "build", str(root), "-o", str(out), "--targets", "mfcc", "--strict", "--quiet",
        "--scheduler", dask_cluster.address, "--partition-size", "1"])
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {bad}: cannot decode: ")
    assert line.endswith(" (--strict)")
    assert not out.exists()
    # Without --strict the same input is an error row and the build finishes.
    again = CliRunner().invoke(main, [
        "build", str(root), "-o", str(out), "--targets", "mfcc", "--quiet",
        "--scheduler", dask_cluster.address, "--partition-size", "1"])
    assert again.exit_code == 0, again.output
    assert [p for p, _ in open_store(out).errors] == [str(bad)]


@pytest.fixture(scope="module")
def other_schema_store(built_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "old.h5"
    shutil.copyfile(built_store, path)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 0
    return path


@pytest.mark.parametrize("case", ["missing_source", "unknown_target",
                                  "schema_version", "not_h5", "info_missing"])
def test_user_errors_are_one_line(case: str, corpus: Corpus, other_schema_store: Path,
                                  tmp_path: Path) -> None:
    out = str(tmp_path / "s.h5")
    args, expect = {
        "missing_source": (["build", str(tmp_path / "nowhere"), "-o", out],
                           f"error: {tmp_path / 'nowhere'}: no such file or directory"),
        "unknown_target": (["build", str(corpus.csv), "-o", out, "--targets", "mfcc,bogus"],
                           "error: unknown target 'bogus'; known targets: default, all, "),
        "schema_version": (["build", str(corpus.csv), "-o", str(other_schema_store),
                            "--targets", "mfcc"],
                           f"error: {other_schema_store}: written with store schema version 0; "
                           f"this featurestore reads version {SCHEMA_VERSION}"),
        "not_h5": (["build", str(corpus.csv), "-o", str(tmp_path / "s.zarr")],
                   f"error: {tmp_path / 's.zarr'}: the store name must end in .h5"),
        "info_missing": (["info", str(tmp_path / "none.h5")],
                         f"error: {tmp_path / 'none.h5'}: no such store"),
    }[case]
    result = run_cli(*args)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(expect)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.h5").exists()


def test_an_unknown_layout_is_a_usage_error_naming_the_choices(corpus: Corpus,
                                                                tmp_path: Path) -> None:
    result = run_cli("build", str(corpus.csv), "-o", str(tmp_path / "s.h5"), "--layout",
                     "wav2vec")
    assert result.returncode == 2 and result.stdout == ""
    assert ("Invalid value for '--layout': 'wav2vec' is not one of 'auto', 'folder', 'csv', "
            "'gtzan', 'nsynth', 'mtat', 'fma'.") in result.stderr
    assert not (tmp_path / "s.h5").exists()
