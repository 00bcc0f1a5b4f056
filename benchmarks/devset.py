"""A dev benchmark rebuilt offline in one command: a pre-training pool and two probe tasks.

``python benchmarks/devset.py OUT_DIR [--seed 0]`` writes, in the project's CSV layout
(columns ``path``, ``label``, ``split``, ``group``, ``id``, further columns kept as
metadata; see ``featurestore.sources.csv_layout``):

``pool.csv``
    Unlabelled music for self-supervised pre-training (empty ``label``, split
    ``train``): every music file of the Debian game-music packages that libsndfile
    decodes (``supertux-data``, ``hedgewars-data``, ``supertuxkart-data``,
    ``widelands-data``; read in place under ``/usr/share/games``, absolute paths, byte
    duplicates dropped), plus scores of music21's corpus rendered through every
    *train* soundfont (each score from its start, at most ``POOL_SCORE_SECONDS``,
    on random GM programs), until ``--pool-score-hours`` of them. No music21 work of the
    composer task is ever rendered into the pool.
``instruments.csv``
    Single notes and short phrases (2-4 s) of 44 General-MIDI programs, labelled by
    NSynth-style family (11 families x 4 programs, ``featurestore.corpus.synth.FAMILIES``).
    ``group`` is ``soundfont:program``. Train and valid are rendered by the *train*
    soundfonts (FluidR3_GM and TimGM6mb), test by the *test* soundfont (MuseScore
    General): the probe must carry a family over to an unseen synthesiser. Within the
    train soundfonts, one program per family (drawn from the seed) is ``valid``.
``composers.csv``
    Excerpts (9-11 s, starting on a bar line) of music21 scores, labelled by composer
    or style (bach, palestrina, monteverdi, trecento, mozart, beethoven), played by an
    ensemble (``featurestore.corpus.synth.ENSEMBLES``) and a soundfont drawn per excerpt.
    ``group`` is the *work* (a mass, a quartet, a cantata as a whole): splits are by
    work, about 20 % of a composer's works ``test``, 15 % ``valid``, the rest ``train``.

Every row has a ``work`` column (the work id, ``game:<package>/<file>`` for game
music, empty for instrument notes) and a ``source`` column (the corpus or system file).
:func:`check_devset` asserts that the pool shares no work, no source file and no audio
file with any task, that every task's groups are split-disjoint and that the instrument
task's test soundfonts are not train/valid soundfonts; the builder runs it before it
writes the manifests.

Audio: 16 kHz mono 16-bit WAV under ``OUT_DIR/{pool,instruments,composers}/``, each
rendered clip peak-normalised to -3 dBFS with short fades. Rendering uses the
``fluidsynth`` command line (reverb and chorus off; one process per soundfont and part,
the clips laid one after another in one MIDI file, every channel silenced between
clips) or, without it, ``tinysoundfont`` (``.sf2`` only, a fresh synthesiser per clip).
``OUT_DIR/devset.json`` records counts, durations, soundfonts and packages (with their
dpkg versions), the synthesiser, the seed and the wall time.

Deterministic given ``--seed``: every random choice comes from streams derived from the
seed; the manifests are identical byte for byte across runs. A rerun into the same
``OUT_DIR`` reuses every WAV that is already there (and the parsed scores cached in
``OUT_DIR/.cache``); a rerun with another seed, configuration or score parser
(:data:`featurestore.corpus.scores.PARSER_VERSION`) into the same folder is
refused.

Nothing is downloaded: the data come from Debian packages, found with ``dpkg``::

    apt-get update && apt-get install -y --no-install-recommends fluidsynth \\
        fluid-soundfont-gm musescore-general-soundfont \\
        supertux-data hedgewars-data supertuxkart-data widelands-data

(about 1.5 GB of downloads). A missing package stops the build with that list.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.corpus.render import (
    Clip,
    Note,
    Renderer,
    RenderError,
    bundled_soundfont_path,
    finish,
    render_fluidsynth,
)
from featurestore.corpus.scores import (
    PARSER_VERSION,
    Score,
    corpus_dir,
    ensemble_programs,
    excerpt_starts,
    part_channel,
    score_notes,
)
from featurestore.corpus.scores import parse_score as read_corpus_score
from featurestore.corpus.synth import (
    ENSEMBLES,
    FAMILIES,
    Program,
    instrument_notes,
    melodic_programs,
)

SAMPLE_RATE = 16000
MIN_RAW_PEAK = 1e-4
BASE_COLUMNS = ("path", "label", "split", "group", "id")
AUDIO_EXTENSIONS = (".ogg", ".oga", ".flac", ".wav", ".mp3", ".opus", ".it", ".mod", ".s3m", ".xm")
SCORE_EXTENSIONS = (".mxl", ".xml", ".musicxml", ".krn")
MIN_TRACK_SECONDS = 5.0
POOL_SCORE_SECONDS = 150.0
INSTRUMENT_SECONDS = (2.0, 4.0)
EXCERPT_SECONDS = (9.0, 11.0)
TEST_FRACTION = 0.2
VALID_FRACTION = 0.15

GAME_PACKAGES = ("supertux-data", "hedgewars-data", "supertuxkart-data", "widelands-data")
"""Debian packages whose music goes into the pool (0ad-data, 1.4 GB, is left out)."""

RENDER_PACKAGES = ("fluidsynth", "fluid-soundfont-gm", "musescore-general-soundfont")

COMPOSER_DIRS: dict[str, tuple[str, ...]] = {
    "bach": ("bach",),
    "palestrina": ("palestrina",),
    "monteverdi": ("monteverdi",),
    "trecento": ("trecento",),
    "mozart": ("mozart",),
    "beethoven": ("beethoven",),
}
"""Composer (or style) label to the music21 corpus folders its works come from."""

POOL_DIRS: tuple[str, ...] = (
    "bach", "palestrina", "monteverdi", "trecento", "mozart", "beethoven", "haydn",
    "schumann_robert", "schumann_clara", "corelli", "handel", "chopin", "joplin",
    "cpebach", "schubert", "verdi", "weber", "josquin", "luca", "ciconia", "lusitano",
)  # fmt: skip
"""Corpus folders whose scores, minus the composer task's works, may enter the pool."""

COMPOSER_QPM: dict[str, float] = {
    "bach": 76.0,
    "palestrina": 132.0,
    "monteverdi": 120.0,
    "trecento": 100.0,
    "mozart": 112.0,
    "beethoven": 132.0,
}
"""Tempo (quarter notes per minute) of scores without a metronome mark."""

_INSTRUMENTS, _COMPOSERS, _POOL = 11, 12, 13


class DevsetError(RuntimeError):
    """The dev set cannot be built (missing packages) or fails its checks."""


@dataclass(frozen=True)
class Soundfont:
    """A General-MIDI soundfont used for rendering.

    Parameters
    ----------
    name : str
        Short name, used in file names, groups and the ``soundfont`` column.
    path : str
        The ``.sf2``/``.sf3`` file.
    package : str
        The Debian or pip package that ships it (for ``devset.json``).
    """

    name: str
    path: str
    package: str


@dataclass(frozen=True)
class Config:
    """What to build. The defaults are the documented dev set.

    Parameters
    ----------
    seed : int
        Seed of every random choice.
    train_soundfonts, test_soundfonts : tuple of Soundfont
        Instrument task: train/valid rendered by the first, test by the second. The
        pool and the composer task use both.
    music_dirs : tuple of (str, str)
        ``(package, folder)`` pairs of game music for the pool; the music files are
        those with an audio extension under a folder named ``music`` (any case) below
        ``folder`` (or, for a folder that is itself a music folder, all of them).
    instrument_clips : int
        Clips per (soundfont, program) group.
    composer_works : int
        At most this many works per composer.
    composer_excerpts : int
        Excerpts per composer, spread evenly over its works.
    composer_sources : dict of str to tuple of str, optional
        Composer to explicit corpus files (tests); default: every score of
        ``COMPOSER_DIRS``.
    pool_sources : tuple of str, optional
        Explicit corpus files for the pool (tests); default: every score of
        ``POOL_DIRS``.
    pool_score_hours : float
        Hours of rendered scores in the pool.
    min_pool_hours : float
        The build fails if the pool is shorter.
    synth : str
        ``"fluidsynth"``, ``"tinysoundfont"`` or ``"auto"`` (fluidsynth when on PATH).
    sample_rate : int
        Sample rate of the rendered WAV files.
    """

    seed: int = 0
    train_soundfonts: tuple[Soundfont, ...] = ()
    test_soundfonts: tuple[Soundfont, ...] = ()
    music_dirs: tuple[tuple[str, str], ...] = ()
    instrument_clips: int = 5
    composer_works: int = 14
    composer_excerpts: int = 40
    composer_sources: dict[str, tuple[str, ...]] | None = None
    pool_sources: tuple[str, ...] | None = None
    pool_score_hours: float = 1.0
    min_pool_hours: float = 4.0
    synth: str = "auto"
    sample_rate: int = SAMPLE_RATE
    packages: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A digest of everything that decides the output (not the package versions).

        It includes the score parser's version: the same configuration parsed by another
        parser gives other notes, other random draws after them, and other WAVs.
        """
        data = asdict(self)
        data.pop("packages")
        data["score_parser"] = PARSER_VERSION
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- packages
def dpkg_version(package: str) -> str | None:
    """The installed version of a Debian package, or None.

    Parameters
    ----------
    package : str
        Package name.

    Returns
    -------
    str or None
        ``dpkg-query``'s version string, None when not installed or without dpkg.
    """
    if shutil.which("dpkg-query") is None:
        return None
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}\t${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    status, _, version = proc.stdout.partition("\t")
    # "install ok installed"; a package dpkg has only heard of reads "unknown ok
    # not-installed", one removed "deinstall ok config-files"
    if proc.returncode != 0 or status.split()[-1:] != ["installed"]:
        return None
    return version


def dpkg_files(package: str) -> list[str]:
    """The files a Debian package installed (``dpkg -L``)."""
    proc = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True)
    return [line for line in proc.stdout.splitlines() if line]


def bundled_soundfont() -> Soundfont:
    """pretty_midi's bundled ``TimGM6mb.sf2`` (pip only; no apt package needed)."""
    return Soundfont("timgm6mb", str(bundled_soundfont_path()), "pretty_midi")


def _find_file(package: str, suffix: str) -> str | None:
    for path in dpkg_files(package):
        if path.endswith(suffix) and os.path.isfile(path):
            return path
    return None


def default_config(seed: int = 0, **overrides: Any) -> Config:
    """The documented dev set, from the Debian packages installed here.

    Parameters
    ----------
    seed : int
        Seed of every random choice.
    **overrides
        Further ``Config`` fields.

    Returns
    -------
    Config

    Raises
    ------
    DevsetError
        A package is missing; the message names the apt packages to install.
    """
    needed = (*RENDER_PACKAGES, *GAME_PACKAGES)
    versions = {p: dpkg_version(p) for p in needed}
    missing = [p for p, v in versions.items() if v is None]
    if missing or shutil.which("fluidsynth") is None:
        raise DevsetError(
            "the dev set reads Debian packages that are not installed: "
            f"{' '.join(missing) or 'fluidsynth'}. Install them (about 1.5 GB) with\n"
            "  apt-get update && apt-get install -y --no-install-recommends " + " ".join(needed)
        )
    fluid = _find_file("fluid-soundfont-gm", "FluidR3_GM.sf2")
    muse = _find_file("musescore-general-soundfont", ".sf3") or _find_file(
        "musescore-general-soundfont", ".sf2"
    )
    if fluid is None or muse is None:
        raise DevsetError("fluid-soundfont-gm or musescore-general-soundfont has no soundfont")
    music_dirs = []
    for package in GAME_PACKAGES:
        roots = sorted(
            {p for p in dpkg_files(package) if os.path.isdir(p) and Path(p).name.lower() == "music"}
        )
        music_dirs.extend((package, root) for root in roots)
    return Config(
        seed=seed,
        train_soundfonts=(Soundfont("fluidr3", fluid, "fluid-soundfont-gm"), bundled_soundfont()),
        test_soundfonts=(Soundfont("musescore", muse, "musescore-general-soundfont"),),
        music_dirs=tuple(music_dirs),
        packages={p: v for p, v in versions.items() if v is not None},
        **overrides,
    )


# --------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Job(Clip):
    """One clip to render (:class:`~featurestore.corpus.render.Clip`) and its WAV path."""

    rel: str


def render_tinysoundfont(
    soundfont: Soundfont, jobs: Sequence[Job], sample_rate: int
) -> list[np.ndarray]:
    """Render each job with a fresh tinysoundfont synthesiser (``.sf2`` only).

    Parameters
    ----------
    soundfont : Soundfont
        An ``.sf2`` soundfont.
    jobs : sequence of Job
        Clips to render.
    sample_rate : int
        Output sample rate.

    Returns
    -------
    list of numpy.ndarray
        One float64 mono signal per job.
    """
    renderer = Renderer(sample_rate, soundfont.path)
    return [renderer.render_clip(job) for job in jobs]


def _synth_name(config: Config) -> str:
    if config.synth == "auto":
        return "fluidsynth" if shutil.which("fluidsynth") else "tinysoundfont"
    return config.synth


def synth_version(name: str) -> str:
    """Version string of the synthesiser used."""
    if name == "fluidsynth":
        proc = subprocess.run(["fluidsynth", "--version"], capture_output=True, text=True)
        match = re.search(r"FluidSynth runtime version (\S+)", proc.stdout)
        return match.group(1) if match else proc.stdout.split("\n")[0]
    from importlib.metadata import version

    return version("tinysoundfont")


def render_missing(
    out_dir: Path, jobs_by_soundfont: Mapping[str, list[Job]], soundfonts: Mapping[str, Soundfont],
    config: Config,
) -> int:  # fmt: skip
    """Render every job whose WAV is not in ``out_dir`` yet; return how many were.

    Raises
    ------
    DevsetError
        fluidsynth failed, or a render came out silent.
    """
    import soundfile

    synth = _synth_name(config)
    todo = {
        name: [j for j in jobs if not (out_dir / j.rel).is_file()]
        for name, jobs in jobs_by_soundfont.items()
    }
    todo = {name: jobs for name, jobs in todo.items() if jobs}
    results: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="devset-") as tmp:
        if synth == "fluidsynth":
            collectors = {}
            for name, jobs in todo.items():  # the processes run in parallel
                _, collectors[name] = render_fluidsynth(
                    soundfonts[name].path, jobs, config.sample_rate, Path(tmp), name
                )
            for name, collect in collectors.items():
                try:
                    results[name] = collect()
                except RenderError as exc:
                    raise DevsetError(str(exc)) from None
        else:
            for name, jobs in todo.items():
                results[name] = render_tinysoundfont(soundfonts[name], jobs, config.sample_rate)
    for name, jobs in todo.items():
        for job, audio in zip(jobs, results[name], strict=True):
            pcm = finish(audio, config.sample_rate, min_peak=MIN_RAW_PEAK)
            if pcm is None:
                raise DevsetError(f"{job.rel}: silent render with {name}")
            path = out_dir / job.rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp_path = path.with_suffix(".tmp.wav")
            soundfile.write(str(tmp_path), pcm, config.sample_rate, subtype="PCM_16", format="WAV")
            os.replace(tmp_path, path)
    return sum(len(j) for j in todo.values())


# --------------------------------------------------------------------------- scores
def work_id(source: str) -> str:
    """The work a corpus file belongs to: what no two splits (nor pool and task) share.

    Movements of one quartet (``mozart/k458/movement2.mxl``), sections of one mass
    (``palestrina/Kyrie_07.krn``, ``palestrina/Gloria_07_b.krn``) and chorales of one
    cantata (``bach/bwv66.6.mxl``) are one work; Palestrina files without a mass number
    are all one work.

    Parameters
    ----------
    source : str
        Path inside music21's corpus folder, with ``/`` separators.

    Returns
    -------
    str
        ``"<composer folder>/<work>"``.
    """
    parts = source.split("/")
    folder = parts[0]
    if len(parts) >= 3:
        return f"{folder}/{parts[1]}"
    stem = parts[-1].rsplit(".", 1)[0]
    if folder == "palestrina":
        match = re.search(r"_(\d+)(?:_[a-z])?$", stem)
        return f"palestrina/mass_{match.group(1) if match else 'unnumbered'}"
    if folder == "bach":
        match = re.match(r"(bwv\d+)", stem)
        return f"bach/{match.group(1) if match else stem}"
    return f"{folder}/{stem}"


def corpus_scores(folders: Iterable[str]) -> list[str]:
    """Score files (MusicXML and Humdrum) under the given corpus folders, sorted."""
    root = corpus_dir()
    found = []
    for folder in folders:
        base = root / folder
        if base.is_dir():
            found.extend(
                p.relative_to(root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and p.suffix.lower() in SCORE_EXTENSIONS
            )
    return sorted(found)


def parse_score(source: str, cache_dir: Path | None = None) -> Score | None:
    """Parse a corpus file into note events (music21 joins tied notes); None if unusable.

    Parameters
    ----------
    source : str
        Path inside music21's corpus folder.
    cache_dir : Path, optional
        Folder where the events are cached as JSON (keyed on the source, music21's
        version and the parser's version), so that a rerun parses nothing.

    Returns
    -------
    Score or None
        None when music21 cannot read the file or it has no notes.
    """
    import music21

    cache = None
    if cache_dir is not None:
        key = f"{music21.__version__}:{PARSER_VERSION}:{source}"
        cache = cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"
        if cache.is_file():
            data = json.loads(cache.read_text())
            return None if data is None else Score.from_json(data)
    try:
        score: Score | None = read_corpus_score(source)
    except Exception:  # noqa: BLE001 - music21 raises many types on odd files
        score = None
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(None if score is None else asdict(score)))
    return score


def _score_job(
    rel: str, score: Score, start_q: float, qpm: float, seconds: float,
    programs: dict[int, int | None], rng: np.random.Generator,
) -> Job:  # fmt: skip
    notes = tuple(score_notes(score, start_q, qpm, seconds, rng))
    channels = tuple(sorted((part_channel(p), prog) for p, prog in programs.items()))
    return Job(notes=notes, programs=channels, seconds=seconds, rel=rel)


# --------------------------------------------------------------------------- helpers
def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *stream])


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _stable(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "little")


def split_groups(groups: Sequence[str], rng: np.random.Generator) -> dict[str, str]:
    """Shuffle groups: about 20 % test, 15 % valid (at least one each), the rest train.

    Parameters
    ----------
    groups : sequence of str
        Distinct groups (at least 3).
    rng : numpy.random.Generator
        Source of the shuffle.

    Returns
    -------
    dict of str to str
        Group to split.
    """
    n = len(groups)
    n_test = max(1, round(TEST_FRACTION * n))
    n_valid = max(1, round(VALID_FRACTION * n))
    order = [groups[i] for i in rng.permutation(n)]
    return {
        g: "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
        for i, g in enumerate(order)
    }


# --------------------------------------------------------------------------- instruments
def _instrument_notes(
    kind: str, program: Program, rng: np.random.Generator
) -> tuple[tuple[Note, ...], float]:
    """A note or a phrase of 2-4 s for ``program``."""
    seconds = round(float(rng.uniform(*INSTRUMENT_SECONDS)), 2)
    velocity = int(rng.integers(60, 121))
    return tuple(instrument_notes(kind, program, seconds, velocity, rng)), seconds


def plan_instruments(config: Config) -> tuple[list[dict[str, str]], dict[str, list[Job]]]:
    """Rows and render jobs of ``instruments.csv``.

    Returns
    -------
    (list of dict, dict of str to list of Job)
        Manifest rows, and the jobs per soundfont name.
    """
    rows: list[dict[str, str]] = []
    jobs: dict[str, list[Job]] = defaultdict(list)
    plan = [(sf, "train") for sf in config.train_soundfonts]
    plan += [(sf, "test") for sf in config.test_soundfonts]
    for f_index, (family, programs) in enumerate(FAMILIES.items()):
        held = int(_rng(config.seed, _INSTRUMENTS, f_index).integers(len(programs)))
        for p_index, program in enumerate(programs):
            for soundfont, role in plan:
                if role == "test":
                    split = "test"
                else:
                    split = "valid" if p_index == held else "train"
                for j in range(config.instrument_clips):
                    kind = "note" if j % 2 == 0 else "phrase"
                    rng = _rng(
                        config.seed, _INSTRUMENTS, _stable(soundfont.name), program.number, j
                    )
                    notes, seconds = _instrument_notes(kind, program, rng)
                    clip_id = f"instruments/{soundfont.name}-{family}-{program.name}-{j:02d}"
                    rel = f"{clip_id}.wav"
                    jobs[soundfont.name].append(
                        Job(notes=notes, programs=((0, program.number),), seconds=seconds, rel=rel)
                    )
                    rows.append(
                        {
                            "path": rel,
                            "label": family,
                            "split": split,
                            "group": f"{soundfont.name}:{program.name}",
                            "id": clip_id,
                            "work": "",
                            "source": "",
                            "soundfont": soundfont.name,
                            "program": str(program.number),
                            "kind": kind,
                            "notes": " ".join(str(n.key) for n in notes),
                            "seconds": _fmt(seconds),
                        }
                    )
    return rows, dict(jobs)


# --------------------------------------------------------------------------- composers
def select_composer_works(
    config: Config, cache_dir: Path | None
) -> dict[str, list[tuple[str, str, Score]]]:
    """Per composer, the works of the task: ``(work id, source file, parsed score)``.

    Candidate works are shuffled by the seed; the first ``composer_works`` whose file
    parses and lasts at least an excerpt are taken (one file per work).
    """
    chosen: dict[str, list[tuple[str, str, Score]]] = {}
    sources = config.composer_sources or {
        c: tuple(corpus_scores(dirs)) for c, dirs in COMPOSER_DIRS.items()
    }
    for c_index, (composer, files) in enumerate(sources.items()):
        by_work: dict[str, list[str]] = defaultdict(list)
        for source in files:
            by_work[work_id(source)].append(source)
        works = sorted(by_work)
        order = _rng(config.seed, _COMPOSERS, c_index).permutation(len(works))
        picked: list[tuple[str, str, Score]] = []
        for i in order:
            if len(picked) == config.composer_works:
                break
            work = works[int(i)]
            source = sorted(by_work[work], key=lambda s: (not s.endswith(".mxl"), s))[0]
            score = parse_score(source, cache_dir)
            qpm = score.qpm if score and score.qpm else COMPOSER_QPM.get(composer, 100.0)
            if score is None or score.length_q * 60.0 / qpm < EXCERPT_SECONDS[1] + 1.0:
                continue
            picked.append((work, source, score))
        if len(picked) < 3:
            raise DevsetError(f"music21's corpus has fewer than 3 usable {composer} works")
        chosen[composer] = picked
    return chosen


def plan_composers(
    config: Config, works: Mapping[str, list[tuple[str, str, Score]]]
) -> tuple[list[dict[str, str]], dict[str, list[Job]]]:
    """Rows and render jobs of ``composers.csv``."""
    soundfonts = [*config.train_soundfonts, *config.test_soundfonts]
    ensembles = sorted(ENSEMBLES)
    rows: list[dict[str, str]] = []
    jobs: dict[str, list[Job]] = defaultdict(list)
    for c_index, (composer, picked) in enumerate(works.items()):
        splits = split_groups([w for w, _, _ in picked], _rng(config.seed, _COMPOSERS, c_index, 1))
        for w_index, (work, source, score) in enumerate(picked):
            count = len(range(w_index, config.composer_excerpts, len(picked)))
            rng = _rng(config.seed, _COMPOSERS, c_index, 2, w_index)
            qpm = (score.qpm or COMPOSER_QPM.get(composer, 100.0)) * float(rng.uniform(0.92, 1.08))
            lengths = [round(float(rng.uniform(*EXCERPT_SECONDS)), 2) for _ in range(count)]
            starts = excerpt_starts(score, max(lengths, default=0.0) * qpm / 60.0, count, rng)
            for e_index, (start_q, seconds) in enumerate(zip(starts, lengths, strict=True)):
                ensemble = ensembles[int(rng.integers(len(ensembles)))]
                soundfont = soundfonts[int(rng.integers(len(soundfonts)))]
                clip_id = f"composers/{work.replace('/', '-')}-{e_index:02d}"
                rel = f"{clip_id}.wav"
                programs = ensemble_programs(score, *ENSEMBLES[ensemble])
                job = _score_job(rel, score, start_q, qpm, seconds, programs, rng)
                if not job.notes:
                    continue
                jobs[soundfont.name].append(job)
                rows.append(
                    {
                        "path": rel,
                        "label": composer,
                        "split": splits[work],
                        "group": work,
                        "id": clip_id,
                        "work": work,
                        "source": f"music21:{source}",
                        "soundfont": soundfont.name,
                        "ensemble": ensemble,
                        "start_quarter": _fmt(start_q),
                        "qpm": _fmt(qpm),
                        "seconds": _fmt(seconds),
                    }
                )
    return rows, dict(jobs)


# --------------------------------------------------------------------------- pool
def game_music(config: Config) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Pool rows of the game music that libsndfile decodes, byte duplicates dropped.

    Returns
    -------
    (list of dict, dict)
        Rows, and per package: files found, used, undecodable, duplicates, seconds.
    """
    import soundfile

    rows: list[dict[str, str]] = []
    stats: dict[str, Any] = {}
    seen: set[str] = set()
    for package, folder in config.music_dirs:
        st = stats.setdefault(
            package,
            {"version": config.packages.get(package, ""), "files": 0, "used": 0,
             "undecodable": 0, "duplicates": 0, "too_short": 0, "seconds": 0.0},
        )  # fmt: skip
        root = Path(folder)
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
            if not path.is_file():
                continue
            st["files"] += 1
            try:
                info = soundfile.info(str(path))
                with soundfile.SoundFile(str(path)) as fh:
                    fh.read(1024)
            except (RuntimeError, soundfile.LibsndfileError):
                st["undecodable"] += 1
                continue
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
            if digest in seen:
                st["duplicates"] += 1
                continue
            seen.add(digest)
            seconds = float(info.frames) / float(info.samplerate)
            if seconds < MIN_TRACK_SECONDS:
                st["too_short"] += 1
                continue
            rel = path.relative_to(root).with_suffix("").as_posix()
            st["used"] += 1
            st["seconds"] += seconds
            rows.append(
                {
                    "path": str(path.resolve()),
                    "label": "",
                    "split": "train",
                    "group": f"game:{package}",
                    "id": f"pool/game/{package}/{rel}",
                    "work": f"game:{package}/{rel}",
                    "source": str(path.resolve()),
                    "soundfont": "",
                    "sha1": digest,
                    "seconds": _fmt(seconds),
                }
            )
    return rows, stats


def plan_pool_scores(
    config: Config, exclude_works: set[str], cache_dir: Path | None
) -> tuple[list[dict[str, str]], dict[str, list[Job]]]:
    """Rows and jobs of the rendered scores of the pool (no work in ``exclude_works``)."""
    soundfonts = list(config.train_soundfonts)  # the instrument test synthesiser stays unheard
    melodic = melodic_programs()
    files = (
        list(config.pool_sources) if config.pool_sources is not None else corpus_scores(POOL_DIRS)
    )
    files = [f for f in files if work_id(f) not in exclude_works]
    order = _rng(config.seed, _POOL, 0).permutation(len(files))
    target = config.pool_score_hours * 3600.0
    total = 0.0
    rows: list[dict[str, str]] = []
    jobs: dict[str, list[Job]] = defaultdict(list)
    for i in order:
        if total >= target:
            break
        source = files[int(i)]
        score = parse_score(source, cache_dir)
        if score is None:
            continue
        rng = _rng(config.seed, _POOL, 1, _stable(source))
        qpm = (score.qpm or 100.0) * float(rng.uniform(0.92, 1.08))
        seconds = round(min(POOL_SCORE_SECONDS, score.length_q * 60.0 / qpm + 1.0), 2)
        if seconds < 10.0:
            continue
        if rng.random() < 0.5:
            ensemble = sorted(ENSEMBLES)[int(rng.integers(len(ENSEMBLES)))]
            programs = ensemble_programs(score, *ENSEMBLES[ensemble])
        else:
            programs = {p: int(rng.choice(melodic)) for p in range(score.n_parts)}
        soundfont = soundfonts[int(rng.integers(len(soundfonts)))]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", source.rsplit(".", 1)[0].replace("/", "-"))
        clip_id = f"pool/scores/{stem}"
        job = _score_job(f"{clip_id}.wav", score, 0.0, qpm, seconds, programs, rng)
        if not job.notes:
            continue
        jobs[soundfont.name].append(job)
        total += seconds
        rows.append(
            {
                "path": f"{clip_id}.wav",
                "label": "",
                "split": "train",
                "group": work_id(source),
                "id": clip_id,
                "work": work_id(source),
                "source": f"music21:{source}",
                "soundfont": soundfont.name,
                "sha1": "",
                "seconds": _fmt(seconds),
            }
        )
    return rows, dict(jobs)


# --------------------------------------------------------------------------- checks
def _audio_key(base: Path, path: str) -> str:
    p = Path(path)
    return os.path.realpath(p if p.is_absolute() else base / p)


def check_devset(
    pool: Sequence[Mapping[str, str]],
    tasks: Mapping[str, Sequence[Mapping[str, str]]],
    base: Path = Path("."),
    test_soundfonts: Iterable[str] | None = None,
) -> list[str]:
    """Every way the dev set could leak; an empty list when it is clean.

    Checks that the pool shares no work id, no source file and no audio file (resolved
    path, or sha1 where both rows have one) with any task row; that within every task no
    group, no work and no audio file is in two splits; and, for ``instruments``, that no
    soundfont renders both test and train/valid clips (and, when given, that the test
    clips are exactly those of ``test_soundfonts``, and that the pool renders nothing
    with them: the instrument test synthesiser is never heard in pre-training).

    Parameters
    ----------
    pool : sequence of mapping
        Rows of ``pool.csv``.
    tasks : mapping of str to sequence of mapping
        Task name to its rows (``instruments``, ``composers``, ...).
    base : Path
        Folder that relative paths are relative to.
    test_soundfonts : iterable of str, optional
        Soundfont names that must render exactly the instrument test clips.

    Returns
    -------
    list of str
        One line per problem.
    """
    problems: list[str] = []
    pool_works = {r["work"] for r in pool if r.get("work")}
    pool_sources = {r["source"] for r in pool if r.get("source")}
    pool_audio = {_audio_key(base, r["path"]) for r in pool}
    pool_sha = {r["sha1"] for r in pool if r.get("sha1")}
    for name, rows in tasks.items():
        for r in rows:
            where = f"{name}: {r['id'] or r['path']}"
            if r.get("work") and r["work"] in pool_works:
                problems.append(f"{where}: work {r['work']} is also in the pool")
            if r.get("source") and r["source"] in pool_sources:
                problems.append(f"{where}: source {r['source']} is also in the pool")
            if _audio_key(base, r["path"]) in pool_audio:
                problems.append(f"{where}: audio file {r['path']} is also in the pool")
            if r.get("sha1") and r["sha1"] in pool_sha:
                problems.append(f"{where}: the same bytes are in the pool")
        for column in ("group", "work"):
            splits: dict[str, set[str]] = defaultdict(set)
            for r in rows:
                if r.get(column):
                    splits[r[column]].add(r["split"])
            problems.extend(
                f"{name}: {column} {g} is in splits {', '.join(sorted(s))}"
                for g, s in sorted(splits.items())
                if len(s) > 1
            )
        audio_splits: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            audio_splits[_audio_key(base, r["path"])].add(r["split"])
        problems.extend(
            f"{name}: audio {p} is in splits {', '.join(sorted(s))}"
            for p, s in sorted(audio_splits.items())
            if len(s) > 1
        )
    instruments = tasks.get("instruments", [])
    if instruments:
        test_sf = {r["soundfont"] for r in instruments if r["split"] == "test"}
        train_sf = {r["soundfont"] for r in instruments if r["split"] != "test"}
        shared = sorted(test_sf & train_sf)
        if shared:
            problems.append(
                f"instruments: soundfont(s) {', '.join(shared)} in test and train/valid"
            )
        if test_soundfonts is not None and test_sf != set(test_soundfonts):
            problems.append(
                f"instruments: test clips rendered by {sorted(test_sf)}, "
                f"expected {sorted(set(test_soundfonts))}"
            )
        problems.extend(
            f"pool: {r['id'] or r['path']} is rendered by the instrument test soundfont "
            f"{r['soundfont']}"
            for r in pool
            if r.get("soundfont") and r["soundfont"] in test_sf
        )
    return problems


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Rows of a manifest CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def check_out_dir(out_dir: str | Path) -> list[str]:
    """:func:`check_devset` on the manifests of a built dev set."""
    out = Path(out_dir)
    pool = read_manifest(out / "pool.csv")
    tasks = {n: read_manifest(out / f"{n}.csv") for n in ("instruments", "composers")}
    info = json.loads((out / "devset.json").read_text())
    return check_devset(pool, tasks, out, info["instrument_test_soundfonts"])


# --------------------------------------------------------------------------- build
def _write_csv(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    extra: list[str] = []
    for r in rows:
        extra.extend(k for k in r if k not in BASE_COLUMNS and k not in extra)
    columns = [*BASE_COLUMNS, *extra]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r.get(c, "") for c in columns})
    os.replace(tmp, path)


def _summary(rows: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    seconds = [float(r["seconds"]) for r in rows]
    by_split = Counter(r["split"] for r in rows)
    return {
        "clips": len(rows),
        "seconds": round(sum(seconds), 3),
        "hours": round(sum(seconds) / 3600.0, 4),
        "splits": dict(sorted(by_split.items())),
        "labels": dict(sorted(Counter(r["label"] for r in rows if r["label"]).items())),
        "groups": len({r["group"] for r in rows}),
        "groups_per_split": {
            s: len({r["group"] for r in rows if r["split"] == s}) for s in sorted(by_split)
        },
        "works": len({r["work"] for r in rows if r.get("work")}),
    }


def build_devset(out_dir: str | Path, config: Config) -> dict[str, Any]:
    """Build the dev set into ``out_dir`` (see the module docstring).

    Parameters
    ----------
    out_dir : str or Path
        Output folder; WAVs already there are reused.
    config : Config
        What to build.

    Returns
    -------
    dict
        The contents of ``devset.json``.

    Raises
    ------
    DevsetError
        ``out_dir`` was built with another configuration, the pool is shorter than
        ``config.min_pool_hours``, a render is silent, or the checks find a leak.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / ".devset-config"
    fingerprint = config.fingerprint()
    if stamp.is_file() and stamp.read_text().strip() != fingerprint:
        raise DevsetError(
            f"{out} was built with another seed, configuration or score parser; "
            "use a new folder"
        )
    stamp.write_text(fingerprint + "\n")
    cache = out / ".cache" / "scores"
    synth = _synth_name(config)
    if synth == "tinysoundfont":
        for sf in (*config.train_soundfonts, *config.test_soundfonts):
            if not sf.path.endswith(".sf2"):
                raise DevsetError(f"tinysoundfont cannot read {sf.path}; install fluidsynth")
    names = [sf.name for sf in (*config.train_soundfonts, *config.test_soundfonts)]
    if len(set(names)) != len(names) or not config.test_soundfonts:
        raise DevsetError(f"soundfont names must be distinct and a test soundfont given: {names}")

    instruments, inst_jobs = plan_instruments(config)
    works = select_composer_works(config, cache)
    composers, comp_jobs = plan_composers(config, works)
    task_works = {w for picked in works.values() for w, _, _ in picked}
    game_rows, package_stats = game_music(config)
    score_rows, pool_jobs = plan_pool_scores(config, task_works, cache)
    pool = game_rows + score_rows
    t_plan = time.perf_counter() - t0

    problems = check_devset(
        pool, {"instruments": instruments, "composers": composers}, out,
        [sf.name for sf in config.test_soundfonts],
    )  # fmt: skip
    if problems:
        raise DevsetError("the dev set leaks:\n  " + "\n  ".join(problems[:20]))
    pool_hours = sum(float(r["seconds"]) for r in pool) / 3600.0
    if pool_hours < config.min_pool_hours:
        raise DevsetError(
            f"the pool has {pool_hours:.2f} h of music, fewer than {config.min_pool_hours} h: "
            f"install the game-music packages ({' '.join(GAME_PACKAGES)})"
        )

    soundfonts = {sf.name: sf for sf in (*config.train_soundfonts, *config.test_soundfonts)}
    by_sf: dict[str, list[Job]] = defaultdict(list)
    for part in (inst_jobs, comp_jobs, pool_jobs):
        for name, jobs in part.items():
            by_sf[name].extend(jobs)
    t1 = time.perf_counter()
    rendered = render_missing(out, by_sf, soundfonts, config)
    t_render = time.perf_counter() - t1

    _write_csv(out / "pool.csv", pool)
    _write_csv(out / "instruments.csv", instruments)
    _write_csv(out / "composers.csv", composers)
    import music21

    info: dict[str, Any] = {
        "seed": config.seed,
        "config_fingerprint": fingerprint,
        "sample_rate": config.sample_rate,
        "synth": {"name": synth, "version": synth_version(synth)},
        "music21": music21.__version__,
        "soundfonts": {
            sf.name: {
                "path": sf.path,
                "package": sf.package,
                "version": config.packages.get(sf.package, _pip_version(sf.package)),
                "role": "test" if sf in config.test_soundfonts else "train",
            }
            for sf in soundfonts.values()
        },
        "instrument_test_soundfonts": [sf.name for sf in config.test_soundfonts],
        "packages": dict(sorted(config.packages.items())),
        "game_music": package_stats,
        "pool": {
            **_summary(pool),
            "game_seconds": round(sum(float(r["seconds"]) for r in game_rows), 3),
            "score_seconds": round(sum(float(r["seconds"]) for r in score_rows), 3),
            "seconds_within_600s_per_file": round(
                sum(min(600.0, float(r["seconds"])) for r in pool), 3
            ),
        },
        "instruments": _summary(instruments),
        "composers": {
            **_summary(composers),
            "works_per_composer": {
                c: {
                    s: sum(1 for w, _, _ in p if _work_split(composers, w) == s)
                    for s in ("train", "valid", "test")
                }
                for c, p in works.items()
            },
        },
        "rendered_now": rendered,
        "seconds_planning": round(t_plan, 2),
        "seconds_rendering": round(t_render, 2),
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "devset.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _work_split(rows: Sequence[Mapping[str, str]], work: str) -> str:
    return next((r["split"] for r in rows if r["work"] == work), "")


def _pip_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the offline dev benchmark (pool + instrument + composer tasks)."
    )
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-score-hours", type=float, default=1.0)
    parser.add_argument("--min-pool-hours", type=float, default=4.0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        config = default_config(
            args.seed, pool_score_hours=args.pool_score_hours, min_pool_hours=args.min_pool_hours
        )
        info = build_devset(args.out_dir, config)
        problems = check_out_dir(args.out_dir)
    except DevsetError as exc:
        print(f"devset: {exc}", file=sys.stderr)
        return 1
    if problems:
        print("devset: leak check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    pool = info["pool"]
    print(
        f"pool         {pool['clips']:5d} files {pool['seconds'] / 3600:7.3f} h "
        f"({pool['game_seconds'] / 3600:.3f} h game music, "
        f"{pool['score_seconds'] / 3600:.3f} h rendered scores)"
    )
    for name in ("instruments", "composers"):
        part = info[name]
        print(
            f"{name:12s} {part['clips']:5d} clips {part['seconds'] / 60:7.2f} min, "
            f"{len(part['labels'])} labels, {part['groups']} groups, splits {part['splits']}"
        )
    print(f"leak check: clean; rendered {info['rendered_now']} clips now")
    print(f"built {args.out_dir} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
