"""Tests of the offline dev benchmark builder (benchmarks/devset.py).

They need pip packages only: pretty_midi's bundled soundfont (under three names, so the
train/test soundfont logic is exercised), a few music21 scores, tinysoundfont, and a
fake game-music folder of generated files. Tests that read the Debian packages skip
when those are not installed.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from featurestore.sources import csv_layout

pytest.importorskip("tinysoundfont")
pytest.importorskip("music21")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "devset.py"
_SPEC = importlib.util.spec_from_file_location("devset", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
devset: Any = importlib.util.module_from_spec(_SPEC)
sys.modules["devset"] = devset
_SPEC.loader.exec_module(devset)

TASK_BACH = ("bach/bwv66.6.mxl", "bach/bwv10.7.mxl", "bach/bwv101.7.mxl")
TASK_MONTEVERDI = (
    "monteverdi/madrigal.4.2.mxl",
    "monteverdi/madrigal.3.4.mxl",
    "monteverdi/madrigal.5.2.mxl",
)
# bwv66.6 is a task work: the builder must keep it out of the pool.
POOL_SOURCES = ("bach/bwv66.6.mxl", "bach/bwv104.6.mxl", "bach/bwv110.7.mxl")


def _fake_game_music(root: Path) -> Path:
    """A fake game package: two .ogg, a .wav, a byte duplicate and an undecodable .it."""
    music = root / "fakegame" / "music"
    music.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sr = 22050
    for i, ext in enumerate(("ogg", "ogg", "wav")):
        t = np.arange(int(sr * (6 + 2 * i))) / sr
        x = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.01 * rng.standard_normal(t.size)
        fmt = "OGG" if ext == "ogg" else "WAV"
        sub = "VORBIS" if ext == "ogg" else "PCM_16"
        sf.write(str(music / f"track{i}.{ext}"), x, sr, format=fmt, subtype=sub)
    (music / "copy_of_track0.ogg").write_bytes((music / "track0.ogg").read_bytes())
    (music / "module.it").write_bytes(b"IMPM" + bytes(200))
    return music


def _config(game: Path, seed: int = 0) -> Any:
    bundled = devset.bundled_soundfont()
    return devset.Config(
        seed=seed,
        train_soundfonts=(
            devset.Soundfont("sfa", bundled.path, "pretty_midi"),
            devset.Soundfont("sfb", bundled.path, "pretty_midi"),
        ),
        test_soundfonts=(devset.Soundfont("sfc", bundled.path, "pretty_midi"),),
        music_dirs=(("fakegame", str(game)),),
        instrument_clips=1,
        composer_works=3,
        composer_excerpts=3,
        composer_sources={"bach": TASK_BACH, "monteverdi": TASK_MONTEVERDI},
        pool_sources=POOL_SOURCES,
        pool_score_hours=0.005,
        min_pool_hours=0.0,
        synth="tinysoundfont",
    )


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (p.suffix in (".csv", ".wav"))
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("devset")
    game = _fake_game_music(root)
    out = root / "out"
    info = devset.build_devset(out, _config(game))
    return out, game, info


def test_build_is_clean_and_readable(built: tuple[Path, Path, dict[str, Any]]) -> None:
    out, _, info = built
    assert devset.check_out_dir(out) == []
    for name in ("pool", "instruments", "composers"):
        clips = csv_layout(out / f"{name}.csv")
        assert clips and all(Path(c.path).is_file() for c in clips)
        with open(out / f"{name}.csv", newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh))
        assert header[:5] == ["path", "label", "split", "group", "id"]
    assert info["instruments"]["clips"] == 44 * 3
    assert len(info["instruments"]["labels"]) == 11
    assert set(info["composers"]["labels"]) == {"bach", "monteverdi"}
    game = info["game_music"]["fakegame"]
    assert (game["used"], game["duplicates"], game["undecodable"]) == (3, 1, 1)


def test_pool_excludes_task_works(built: tuple[Path, Path, dict[str, Any]]) -> None:
    out, _, _ = built
    pool = devset.read_manifest(out / "pool.csv")
    composers = devset.read_manifest(out / "composers.csv")
    assert "bach/bwv66" in {r["work"] for r in composers}
    pool_works = {r["work"] for r in pool}
    assert "bach/bwv66" not in pool_works
    assert {"bach/bwv104", "bach/bwv110"} & pool_works
    assert not pool_works & {r["work"] for r in composers}


def test_splits_are_group_disjoint(built: tuple[Path, Path, dict[str, Any]]) -> None:
    out, _, _ = built
    for name in ("instruments", "composers"):
        rows = devset.read_manifest(out / f"{name}.csv")
        split_of: dict[str, str] = {}
        for r in rows:
            assert split_of.setdefault(r["group"], r["split"]) == r["split"], r["group"]
        assert {r["split"] for r in rows} == {"train", "valid", "test"}
    composers = devset.read_manifest(out / "composers.csv")
    for label in ("bach", "monteverdi"):
        splits = {r["split"] for r in composers if r["label"] == label}
        assert splits == {"train", "valid", "test"}


def test_instrument_train_and_test_soundfonts_differ(
    built: tuple[Path, Path, dict[str, Any]],
) -> None:
    out, _, _ = built
    rows = devset.read_manifest(out / "instruments.csv")
    test_sf = {r["soundfont"] for r in rows if r["split"] == "test"}
    train_sf = {r["soundfont"] for r in rows if r["split"] in ("train", "valid")}
    assert test_sf == {"sfc"}
    assert train_sf == {"sfa", "sfb"}
    for r in rows:
        assert r["group"].startswith(r["soundfont"] + ":")
    # every family keeps one held-out program for valid, in the train soundfonts only
    valid = {r["group"].split(":")[1] for r in rows if r["split"] == "valid"}
    assert len(valid) == 11


def test_leak_check_catches_planted_leaks(built: tuple[Path, Path, dict[str, Any]]) -> None:
    out, _, _ = built
    pool = devset.read_manifest(out / "pool.csv")
    tasks = {n: devset.read_manifest(out / f"{n}.csv") for n in ("instruments", "composers")}
    assert devset.check_devset(pool, tasks, out, ["sfc"]) == []

    test_clip = next(r for r in tasks["composers"] if r["split"] == "test")
    leaked_work = dict(pool[-1], work=test_clip["work"], path="pool/other.wav", source="x")
    problems = devset.check_devset([*pool, leaked_work], tasks, out)
    assert any("is also in the pool" in p and test_clip["work"] in p for p in problems)

    inst = tasks["instruments"][0]
    leaked_audio = dict(pool[-1], work="other", source="y", path=inst["path"])
    problems = devset.check_devset([*pool, leaked_audio], tasks, out)
    assert any("audio file" in p for p in problems)

    leaked_source = dict(pool[-1], work="other2", path="pool/z.wav", source=test_clip["source"])
    assert any("source" in p for p in devset.check_devset([*pool, leaked_source], tasks, out))

    straddle = [dict(r) for r in tasks["composers"]]
    straddle.append(dict(test_clip, split="train", path="composers/dup.wav", id="dup"))
    problems = devset.check_devset(pool, {"composers": straddle}, out)
    assert any("is in splits" in p for p in problems)

    mixed = [dict(r) for r in tasks["instruments"]]
    first_train = next(r for r in mixed if r["split"] == "train")
    first_train["soundfont"] = "sfc"
    problems = devset.check_devset(pool, {"instruments": mixed}, out, ["sfc"])
    assert any("in test and train/valid" in p for p in problems)

    scored = next(r for r in pool if r["soundfont"])
    heard = dict(scored, soundfont="sfc")
    problems = devset.check_devset([*pool, heard], tasks, out, ["sfc"])
    assert any("rendered by the instrument test soundfont sfc" in p for p in problems)


def test_deterministic_and_idempotent(
    built: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, game, _ = built
    again = tmp_path / "again"
    devset.build_devset(again, _config(game))
    assert _digests(out) == _digests(again)
    rerun = devset.build_devset(again, _config(game))
    assert rerun["rendered_now"] == 0
    assert _digests(out) == _digests(again)
    with pytest.raises(devset.DevsetError, match="another seed"):
        devset.build_devset(again, _config(game, seed=1))


def test_a_folder_built_by_another_score_parser_is_refused(
    built: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, game, _ = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(devset, "PARSER_VERSION", devset.PARSER_VERSION + 1)
    with pytest.raises(devset.DevsetError, match="score parser"):
        devset.build_devset(out, _config(game))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_work_ids() -> None:
    assert devset.work_id("mozart/k458/movement2.mxl") == "mozart/k458"
    assert devset.work_id("palestrina/Kyrie_07.krn") == "palestrina/mass_07"
    assert devset.work_id("palestrina/Gloria_07_b.krn") == "palestrina/mass_07"
    assert devset.work_id("palestrina/Agnus_II_12_a.krn") == "palestrina/mass_12"
    assert devset.work_id("bach/bwv66.6.mxl") == "bach/bwv66"
    assert devset.work_id("beethoven/opus132.mxl") == "beethoven/opus132"
    assert devset.work_id("monteverdi/madrigal.3.4.mxl") == "monteverdi/madrigal.3.4"


@pytest.mark.parametrize(("status", "expected"), [
    ("install ok installed\t1.0.2-6", "1.0.2-6"),
    ("unknown ok not-installed\t", None),
    ("deinstall ok config-files\t0.6.3-2", None),
])
def test_dpkg_version_is_none_unless_installed(monkeypatch: pytest.MonkeyPatch, status: str,
                                               expected: str | None) -> None:
    """dpkg-query knows packages that apt has only heard of ("not-installed") and packages
    removed with their configuration kept: neither is installed."""
    monkeypatch.setattr(devset.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(devset.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 0, stdout=status, stderr=""))
    assert devset.dpkg_version("hedgewars-data") == expected


def test_missing_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devset, "dpkg_version", lambda package: None)
    with pytest.raises(devset.DevsetError, match="apt-get install") as err:
        devset.default_config()
    assert "supertux-data" in str(err.value) and "musescore-general-soundfont" in str(err.value)


_APT = (*devset.RENDER_PACKAGES, *devset.GAME_PACKAGES)


@pytest.mark.skipif(
    any(devset.dpkg_version(p) is None for p in _APT),
    reason=f"needs the Debian packages {' '.join(_APT)} (apt-get install)",
)
def test_default_config_from_debian_packages() -> None:
    config = devset.default_config()
    train = {sf.path for sf in config.train_soundfonts}
    test = {sf.path for sf in config.test_soundfonts}
    assert not train & test
    assert all(Path(p).is_file() for p in train | test)
    assert {p for p, _ in config.music_dirs} == set(devset.GAME_PACKAGES)
