"""Tests of the embedded demo corpus (featurestore.corpus.demo): real renders, exact layout."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from featurestore.corpus import demo, render, synth

SCALE = 0.04  # the smallest corpus with every label and split: 1 clip per program
EXTRA_COLUMNS = {
    "instruments": ["program", "kind", "pitch", "notes", "velocity", "seconds"],
    "composers": ["source", "ensemble", "start_quarter", "qpm", "seconds"],
    "pretrain": ["source", "programs", "qpm", "seconds"],
}


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _peak_hz(x: np.ndarray, sample_rate: int) -> float:
    """Frequency of the largest spectral peak between 25 Hz and 6 kHz."""
    n = 1 << 18
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size), n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spec[(freqs < 25.0) | (freqs > 6000.0)] = 0.0
    return float(freqs[int(np.argmax(spec))])


def _lowest_strong_peak_hz(x: np.ndarray, sample_rate: int, fraction: float = 0.2) -> float:
    """Frequency of the lowest local spectral maximum above ``fraction`` of the largest."""
    n = 1 << 18
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size), n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spec[(freqs < 25.0) | (freqs > 6000.0)] = 0.0
    s = spec
    strong = (s[1:-1] >= fraction * s.max()) & (s[1:-1] > s[:-2]) & (s[1:-1] >= s[2:])
    return float(freqs[int(np.flatnonzero(strong)[0]) + 1])


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Path]]]:
    out = {}
    for name, seed in (("a", 0), ("c", 1)):
        root = tmp_path_factory.mktemp(f"demo_{name}")
        out[name] = (root, demo.make_demo_data(root, seed=seed, scale=SCALE))
    # the same seed again, in a fresh interpreter (another hash seed, nothing shared)
    root = tmp_path_factory.mktemp("demo_b")
    code = (
        "import sys; from featurestore.corpus.demo import make_demo_data; "
        f"make_demo_data(sys.argv[1], seed=0, scale={SCALE})"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(root)],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    out["b"] = (root, {n: root / f"{n}.csv" for n in out["a"][1]})
    return out


@pytest.fixture(scope="module")
def tables(builds: dict[str, tuple[Path, dict[str, Path]]]) -> dict[str, list[dict[str, str]]]:
    _, paths = builds["a"]
    return {name: _read(path)[1] for name, path in paths.items()}


def test_returns_the_three_csvs(builds: dict[str, tuple[Path, dict[str, Path]]]) -> None:
    root, paths = builds["a"]
    assert set(paths) == {"instruments", "composers", "pretrain"}
    for name, path in paths.items():
        assert path == root / f"{name}.csv"
        assert path.is_file()


def test_same_seed_is_byte_identical(builds: dict[str, tuple[Path, dict[str, Path]]]) -> None:
    a, b = _digests(builds["a"][0]), _digests(builds["b"][0])
    assert len(a) > 60
    assert a == b


def test_other_seed_differs(builds: dict[str, tuple[Path, dict[str, Path]]]) -> None:
    a, c = _digests(builds["a"][0]), _digests(builds["c"][0])
    wavs = [p for p in a if p.endswith(".wav")]
    differing = [p for p in wavs if a[p] != c.get(p)]
    assert len(differing) >= 0.9 * len(wavs)
    for name in ("instruments.csv", "composers.csv", "pretrain.csv"):
        assert a[name] != c[name]


def test_csv_columns_and_relative_paths(builds: dict[str, tuple[Path, dict[str, Path]]]) -> None:
    root, paths = builds["a"]
    for name, path in paths.items():
        header, rows = _read(path)
        assert header == ["path", "label", "split", "group", *EXTRA_COLUMNS[name]]
        assert rows
        for row in rows:
            rel = Path(row["path"])
            assert not rel.is_absolute() and ".." not in rel.parts
            assert (path.parent / rel).is_file()
            assert rel.parts[0] == name
            assert row["group"]
        listed = {row["path"] for row in rows}
        on_disk = {p.relative_to(root).as_posix() for p in (root / name).glob("*.wav")}
        assert listed == on_disk


def test_wavs_are_16k_mono_int16_normalised_and_not_silent(
    builds: dict[str, tuple[Path, dict[str, Path]]],
    tables: dict[str, list[dict[str, str]]],
) -> None:
    root, _ = builds["a"]
    peak = round(render.PEAK * 32767)
    for rows in tables.values():
        for row in rows:
            info = sf.info(str(root / row["path"]))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (
                16000,
                1,
                "WAV",
                "PCM_16",
            )
            assert info.frames == round(float(row["seconds"]) * 16000)
            x, _ = sf.read(str(root / row["path"]), dtype="int16")
            assert int(np.abs(x.astype(np.int32)).max()) == peak  # headroom, no clipping
            rms = float(np.sqrt(np.mean((x / 32767.0) ** 2)))
            assert rms > 0.01, row["path"]


def test_label_sets(tables: dict[str, list[dict[str, str]]]) -> None:
    assert {r["label"] for r in tables["instruments"]} == set(synth.FAMILIES)
    assert len(synth.FAMILIES) >= 8
    assert {r["label"] for r in tables["composers"]} == set(demo.COMPOSER_WORKS)
    assert {r["label"] for r in tables["pretrain"]} == {""}
    for row in tables["instruments"]:
        programs = {p.name: p.number for p in synth.FAMILIES[row["label"]]}
        assert programs[row["group"]] == int(row["program"])


def test_splits_are_grouped(tables: dict[str, list[dict[str, str]]]) -> None:
    for name in ("instruments", "composers"):
        rows = tables[name]
        split_of: dict[str, str] = {}
        for row in rows:
            assert split_of.setdefault(row["group"], row["split"]) == row["split"], row
        for label in {r["label"] for r in rows}:
            assert {r["split"] for r in rows if r["label"] == label} == {
                "train",
                "valid",
                "test",
            }, (name, label)
    assert {r["split"] for r in tables["pretrain"]} <= {"train", "valid", "test", ""}


def test_pretrain_uses_other_works(tables: dict[str, list[dict[str, str]]]) -> None:
    used = {w.source for works in demo.COMPOSER_WORKS.values() for w in works}
    assert not used & {w.source for w in demo.PRETRAIN_WORKS}
    sources = {r["source"] for r in tables["pretrain"]}
    assert "generated" in sources and sources - {"generated"}
    assert not sources & {r["source"] for r in tables["composers"]}


@pytest.mark.parametrize("sample_rate", [16000, 22050])
def test_rendered_a4_is_440_hz(sample_rate: int) -> None:
    x = render.render_note(73, 69, seconds=1.0, sample_rate=sample_rate)  # flute, A4
    assert x.size == sample_rate
    assert abs(float(np.abs(x).max()) - render.PEAK) < 1e-4
    f = _peak_hz(x[: int(0.8 * sample_rate)], sample_rate)
    assert abs(f / 440.0 - 1.0) < 0.02, f


def test_corpus_notes_sound_at_their_pitch(
    builds: dict[str, tuple[Path, dict[str, Path]]],
    tables: dict[str, list[dict[str, str]]],
) -> None:
    # families whose fundamental is strong in this soundfont (GM organs add a 16' stop,
    # brass and reeds often peak on a harmonic): their notes must sound at the pitch
    # the CSV states, within 2 %
    root, _ = builds["a"]
    checked = 0
    for row in tables["instruments"]:
        if row["kind"] != "note" or row["label"] not in {"flute", "string", "bass", "mallet"}:
            continue
        x, sr = sf.read(str(root / row["path"]))
        held = x[int(0.05 * sr) : int(0.5 * float(row["seconds"]) * sr)]
        f0 = 440.0 * 2.0 ** ((int(row["pitch"]) - 69) / 12)
        f = _lowest_strong_peak_hz(held, sr)
        assert abs(f / f0 - 1.0) < 0.02, (row["path"], f, f0)
        checked += 1
    assert checked >= 8


def test_bad_scale_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        demo.make_demo_data(tmp_path, scale=0)


def test_demo_data_command_refuses_a_bad_scale_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(demo.demo_data, [str(tmp_path / "out"), "--scale", "0"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: scale must be positive, got 0.0"
    assert not (tmp_path / "out").exists()


def test_python_m_featurestore_corpus_is_the_demo_data_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "featurestore.corpus", "--help"],
        capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.stdout.startswith("Usage: python -m featurestore.corpus [OPTIONS] OUT_DIR")
    assert "--seed" in proc.stdout and "--scale" in proc.stdout
