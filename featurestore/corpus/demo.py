"""The embedded demo data set: a small real-audio music corpus built offline in seconds.

``make_demo_data(out_dir)`` (or ``python -m featurestore.corpus OUT_DIR``) writes three
CSV sources in the format ``featurestore build`` reads like any user data (columns
``path`` relative to the CSV's folder, ``label``, ``split``, ``group``, further columns
kept as metadata) next to folders of 16-bit mono WAV files. Everything is synthesised
from what pip packages ship: the General-MIDI soundfont bundled with ``pretty_midi``
(rendered by :class:`~featurestore.corpus.render.Renderer`) and the score corpus bundled
with ``music21`` (read by :mod:`featurestore.corpus.scores`). No network, no download.

The three parts (sizes at ``scale=1.0``; ``scale`` multiplies the number of clips):

``instruments.csv`` (folder ``instruments/``)
    Single notes (1-2.5 s) and short phrases (1.5-3 s) of the 44 General-MIDI programs
    of :data:`~featurestore.corpus.synth.FAMILIES`, labelled by instrument *family* as
    NSynth does (11 families x 4 programs; eight clips per program: 352 clips, about
    11.7 minutes). ``group`` is the program (``violin``). Splits are by group: in every
    family one program is ``test``, one ``valid`` and two ``train`` (drawn from
    ``seed``), so the probe must generalise from a family's other instruments. Metadata:
    ``program`` (0-based GM number), ``kind`` (``note`` or ``phrase``), ``pitch`` (MIDI
    key of a single note, empty for a phrase), ``notes`` (all MIDI keys, space
    separated), ``velocity``, ``seconds``.

``composers.csv`` (folder ``composers/``)
    Excerpts (6-8 s, each starting on a bar line) of real scores, labelled by composer:
    bach (chorales), palestrina (Kyries of different masses), monteverdi (madrigals),
    mozart and beethoven (one string-quartet movement per quartet); thirty clips per
    composer spread over its works (150 clips, about 17.4 minutes). ``group`` is the work;
    one work per composer is ``test``, one ``valid``, the rest ``train``. Each excerpt is
    played by an ensemble drawn from ``seed`` out of a pool shared by all composers, so
    that timbre does not give the composer away. Tempo: the score's first metronome
    mark, else a per-composer default, jittered by up to 8 %. Tied notes are joined by
    music21; repeats are not expanded. Metadata: ``source`` (corpus file), ``ensemble``,
    ``start_quarter``, ``qpm``, ``seconds``.

``pretrain.csv`` (folder ``pretrain/``)
    Unlabelled audio for pre-training (empty ``label``, split ``train``): 100 generated
    pieces (:func:`~featurestore.corpus.synth.generated_piece`, 20-30 s) and 50 excerpts
    of further music21 works that the composer part does not use, on random programs
    (about 64 minutes). Metadata: ``source`` (``generated`` or the corpus file),
    ``programs`` (GM numbers, ``d`` for the drum kit), ``qpm``, ``seconds``.

Every file is peak-normalised to -3 dBFS with a 5 ms fade-in and a 20 ms fade-out; an
instrument render whose raw peak is below ``1e-3`` is redrawn, and a silent score
excerpt or generated piece raises ``RuntimeError``. The output is deterministic byte for
byte for a given ``seed``, ``scale`` and ``sample_rate``: every clip has its own random
stream derived from ``seed`` and its index and is rendered by a fresh synthesiser.
Nothing is cached outside ``out_dir`` (importing music21 creates its empty scratch
folder ``<tempdir>/music21``).
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from featurestore.corpus.render import Note, Renderer, finish, write_wav
from featurestore.corpus.scores import (
    Score,
    corpus_dir,
    ensemble_programs,
    excerpt_starts,
    parse_score,
    part_channel,
    score_notes,
)
from featurestore.corpus.synth import (
    ENSEMBLES,
    FAMILIES,
    Program,
    generated_piece,
    instrument_notes,
    melodic_programs,
)

SPLITS_BY_RANK = ("test", "valid")  # the rest of the groups go to "train"
BASE_COLUMNS = ("path", "label", "split", "group")

# Stream identifiers: each part of the corpus draws from its own random streams.
_INSTRUMENTS, _COMPOSERS, _PRETRAIN = 1, 2, 3

INSTRUMENT_CLIPS_PER_PROGRAM = 8
NOTE_SECONDS = (1.0, 2.5)
PHRASE_SECONDS = (1.5, 3.0)


@dataclass(frozen=True)
class Work:
    """A score of the music21 corpus.

    Parameters
    ----------
    group : str
        The work as a whole (``"mozart/k155"``): clips of one group share a split.
    source : str
        Path of the file inside music21's ``corpus`` folder.
    """

    group: str
    source: str


# Per composer, works in order of preference (cheapest to parse first); the first
# ``n`` that exist in the installed music21 are used. Measured with music21 10.5:
# every file here parses in under 1 s, most in under 0.2 s.
COMPOSER_WORKS: dict[str, tuple[Work, ...]] = {
    "bach": tuple(
        Work(f"bach/{bwv}", f"bach/{bwv}.mxl")
        for bwv in (
            "bwv66.6", "bwv10.7", "bwv101.7", "bwv104.6", "bwv110.7", "bwv1.6", "bwv102.7",
            "bwv108.6", "bwv11.6",
        )
    ),
    "palestrina": tuple(
        Work(f"palestrina/mass_{n}", f"palestrina/Kyrie_{n}.krn")
        for n in ("00", "02", "07", "10", "04", "11", "09")
    ),
    "monteverdi": tuple(
        Work(f"monteverdi/{m}", f"monteverdi/{m}.mxl")
        for m in (
            "madrigal.4.2", "madrigal.3.4", "madrigal.5.2", "madrigal.3.1", "madrigal.3.2",
            "madrigal.5.1", "madrigal.4.1", "madrigal.3.3",
        )
    ),
    "mozart": (
        Work("mozart/k545", "mozart/k545/movement1_exposition.mxl"),
        Work("mozart/k156", "mozart/k156/movement4.mxl"),
        Work("mozart/k458", "mozart/k458/movement2.mxl"),
        Work("mozart/k80", "mozart/k80/movement3.mxl"),
        Work("mozart/k155", "mozart/k155/movement2.mxl"),
    ),
    "beethoven": (
        Work("beethoven/opus18no1", "beethoven/opus18no1/movement3.mxl"),
        Work("beethoven/opus59no3", "beethoven/opus59no3/movement3.mxl"),
        Work("beethoven/opus59no2", "beethoven/opus59no2/movement3.mxl"),
        Work("beethoven/opus59no1", "beethoven/opus59no1/movement3.mxl"),
    ),
}
"""Composer label to candidate works (one movement per quartet or mass)."""

COMPOSER_QPM: dict[str, float] = {
    "bach": 76.0,
    "palestrina": 132.0,
    "monteverdi": 120.0,
    "mozart": 112.0,
    "beethoven": 132.0,
}
"""Default tempo (quarter notes per minute) of scores without a metronome mark."""

COMPOSER_CLIPS = 30
EXCERPT_SECONDS = (6.0, 8.0)

PRETRAIN_WORKS: tuple[Work, ...] = (
    Work("corelli/opus3no1", "corelli/opus3no1/1grave.xml"),
    Work("handel/rinaldo", "handel/rinaldo/Lascia_chio_pianga.mxl"),
    Work("bach/bwv103.6", "bach/bwv103.6.mxl"),
    Work("chopin/mazurka06-2", "chopin/mazurka06-2.krn"),
    Work("joplin/maple_leaf_rag", "joplin/maple_leaf_rag.mxl"),
)
"""Further scores, not used by ``composers.csv``, rendered for the unlabelled part."""

PRETRAIN_GENERATED = 100
PRETRAIN_SCORES = 50
PRETRAIN_SECONDS = (20.0, 30.0)


# --------------------------------------------------------------------------- helpers
def _write_csv(path: Path, rows: Sequence[dict[str, str]], extra: Sequence[str]) -> None:
    columns = [*BASE_COLUMNS, *extra]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *stream])


def _split_by_rank(groups: Sequence[str], rng: np.random.Generator) -> dict[str, str]:
    """Shuffle groups; the first is test, the second valid, the rest train."""
    order = rng.permutation(len(groups))
    return {
        groups[i]: SPLITS_BY_RANK[rank] if rank < len(SPLITS_BY_RANK) else "train"
        for rank, i in enumerate(order)
    }


def _count(base: int, scale: float, minimum: int) -> int:
    return max(minimum, round(base * scale))


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _available(works: Sequence[Work]) -> list[Work]:
    root = corpus_dir()
    return [w for w in works if (root / w.source).is_file()]


def _program_text(programs: dict[int, int | None]) -> str:
    return " ".join("d" if p is None else str(p) for _, p in sorted(programs.items()))


def _render_excerpt(
    renderer: Renderer, score: Score, start_q: float, qpm: float, seconds: float,
    programs: dict[int, int | None], rng: np.random.Generator,
) -> np.ndarray | None:  # fmt: skip
    notes = score_notes(score, start_q, qpm, seconds, rng)
    channels = {part_channel(part): prog for part, prog in programs.items()}
    return finish(renderer.render(notes, channels, seconds), renderer.sample_rate)


# --------------------------------------------------------------------------- parts
def _instrument_clip(
    kind: str, program: Program, rng: np.random.Generator
) -> tuple[list[Note], float, int]:
    """Draw (notes, seconds, velocity) of a note or phrase, in the demo's draw order."""
    velocity = int(rng.integers(60, 121))
    seconds = round(float(rng.uniform(*(NOTE_SECONDS if kind == "note" else PHRASE_SECONDS))), 2)
    return instrument_notes(kind, program, seconds, velocity, rng), seconds, velocity


def _make_instruments(
    out_dir: Path, renderer: Renderer, seed: int, scale: float
) -> list[dict[str, str]]:
    per_program = _count(INSTRUMENT_CLIPS_PER_PROGRAM, scale, 1)
    rows: list[dict[str, str]] = []
    for f_index, (family, programs) in enumerate(FAMILIES.items()):
        splits = _split_by_rank(
            [p.name for p in programs], _rng(seed, _INSTRUMENTS, f_index, 10**6)
        )
        for program in programs:
            for j in range(per_program):
                kind = "note" if j % 2 == 0 else "phrase"
                rng = _rng(seed, _INSTRUMENTS, program.number, j)
                for _attempt in range(8):
                    notes, seconds, velocity = _instrument_clip(kind, program, rng)
                    audio = renderer.render(notes, {0: program.number}, seconds)
                    pcm = finish(audio, renderer.sample_rate)
                    if pcm is not None:
                        break
                else:  # pragma: no cover - every program in FAMILIES renders
                    raise RuntimeError(f"{program.name}: silent renders")
                rel = f"instruments/{family}-{program.name}-{j:03d}.wav"
                write_wav(out_dir / rel, pcm, renderer.sample_rate)
                rows.append(
                    {
                        "path": rel,
                        "label": family,
                        "split": splits[program.name],
                        "group": program.name,
                        "program": str(program.number),
                        "kind": kind,
                        "pitch": str(notes[0].key) if kind == "note" else "",
                        "notes": " ".join(str(n.key) for n in notes),
                        "velocity": str(velocity),
                        "seconds": _fmt(seconds),
                    }
                )
    return rows


def _make_composers(
    out_dir: Path, renderer: Renderer, seed: int, scale: float
) -> list[dict[str, str]]:
    n_clips = _count(COMPOSER_CLIPS, scale, 3)
    ensembles = sorted(ENSEMBLES)
    rows: list[dict[str, str]] = []
    for c_index, (composer, candidates) in enumerate(COMPOSER_WORKS.items()):
        works = _available(candidates)[:n_clips]
        if len(works) < 3:
            raise RuntimeError(
                f"music21's corpus has fewer than 3 of the {composer} works the demo uses"
            )
        splits = _split_by_rank([w.group for w in works], _rng(seed, _COMPOSERS, c_index))
        for w_index, work in enumerate(works):
            count = len(range(w_index, n_clips, len(works)))
            score = parse_score(work.source)
            rng = _rng(seed, _COMPOSERS, c_index, w_index)
            qpm = (score.qpm or COMPOSER_QPM[composer]) * float(rng.uniform(0.92, 1.08))
            seconds = [round(float(rng.uniform(*EXCERPT_SECONDS)), 2) for _ in range(count)]
            starts = excerpt_starts(score, max(seconds) * qpm / 60.0, count, rng)
            for e_index, (start_q, secs) in enumerate(zip(starts, seconds, strict=True)):
                ensemble = ensembles[int(rng.integers(len(ensembles)))]
                programs = ensemble_programs(score, *ENSEMBLES[ensemble])
                pcm = _render_excerpt(renderer, score, start_q, qpm, secs, programs, rng)
                if pcm is None:  # pragma: no cover - excerpts start on a bar with notes
                    raise RuntimeError(f"{work.source}: silent excerpt at {start_q}")
                rel = f"composers/{work.group.replace('/', '-')}-{e_index:02d}.wav"
                write_wav(out_dir / rel, pcm, renderer.sample_rate)
                rows.append(
                    {
                        "path": rel,
                        "label": composer,
                        "split": splits[work.group],
                        "group": work.group,
                        "source": work.source,
                        "ensemble": ensemble,
                        "start_quarter": _fmt(start_q),
                        "qpm": _fmt(qpm),
                        "seconds": _fmt(secs),
                    }
                )
    return rows


def _make_pretrain(
    out_dir: Path, renderer: Renderer, seed: int, scale: float
) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for i in range(_count(PRETRAIN_GENERATED, scale, 1)):
        notes, programs, seconds, qpm = generated_piece(_rng(seed, _PRETRAIN, 0, i),
                                                        PRETRAIN_SECONDS)  # fmt: skip
        pcm = finish(renderer.render(notes, programs, seconds), renderer.sample_rate)
        if pcm is None:  # pragma: no cover - the bass plays on every bar
            raise RuntimeError("silent generated piece")
        rel = f"pretrain/generated-{i:03d}.wav"
        write_wav(out_dir / rel, pcm, renderer.sample_rate)
        rows.append(
            {
                "path": rel,
                "label": "",
                "split": "train",
                "group": f"generated-{i:03d}",
                "source": "generated",
                "programs": _program_text(programs),
                "qpm": _fmt(qpm),
                "seconds": _fmt(seconds),
            }
        )
    works = _available(PRETRAIN_WORKS)
    melodic = melodic_programs()
    parsed: dict[str, Score] = {}
    for i in range(_count(PRETRAIN_SCORES, scale, 1) if works else 0):
        work = works[i % len(works)]
        if work.source not in parsed:
            parsed[work.source] = parse_score(work.source)
        score = parsed[work.source]
        rng = _rng(seed, _PRETRAIN, 1, i)
        qpm = (score.qpm or 100.0) * float(rng.uniform(0.92, 1.08))
        seconds = round(float(rng.uniform(*PRETRAIN_SECONDS)), 2)
        start_q = excerpt_starts(score, seconds * qpm / 60.0, 1, rng)[0]
        programs: dict[int, int | None] = {
            part: int(rng.choice(melodic)) for part in range(score.n_parts)
        }
        pcm = _render_excerpt(renderer, score, start_q, qpm, seconds, programs, rng)
        if pcm is None:  # pragma: no cover
            raise RuntimeError(f"{work.source}: silent excerpt")
        rel = f"pretrain/{work.group.replace('/', '-')}-{i:03d}.wav"
        write_wav(out_dir / rel, pcm, renderer.sample_rate)
        rows.append(
            {
                "path": rel,
                "label": "",
                "split": "train",
                "group": work.group,
                "source": work.source,
                "programs": _program_text(programs),
                "qpm": _fmt(qpm),
                "seconds": _fmt(seconds),
            }
        )
    return rows


# --------------------------------------------------------------------------- entry points
def make_demo_data(
    out_dir: str | Path,
    *,
    seed: int = 0,
    scale: float = 1.0,
    sample_rate: int = 16000,
) -> dict[str, Path]:
    """Build the demo corpus (see the module docstring) into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write into (created if missing). Files of an earlier build with the
        same names are overwritten; other files are left alone.
    seed : int
        Seed of every random choice; the output is byte-identical for equal arguments.
    scale : float
        Multiplies the number of clips of every part (each part keeps the minimum it
        needs for every label and split to appear).
    sample_rate : int
        Sample rate of the WAV files, in Hz.

    Returns
    -------
    dict of str to Path
        ``{"instruments": ..., "composers": ..., "pretrain": ...}``: the CSV files.

    Raises
    ------
    ValueError
        ``scale`` is not positive.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    renderer = Renderer(sample_rate)
    parts = {
        "instruments": (
            _make_instruments(out, renderer, seed, scale),
            ("program", "kind", "pitch", "notes", "velocity", "seconds"),
        ),
        "composers": (
            _make_composers(out, renderer, seed, scale),
            ("source", "ensemble", "start_quarter", "qpm", "seconds"),
        ),
        "pretrain": (
            _make_pretrain(out, renderer, seed, scale),
            ("source", "programs", "qpm", "seconds"),
        ),
    }
    paths: dict[str, Path] = {}
    for name, (rows, extra) in parts.items():
        paths[name] = out / f"{name}.csv"
        _write_csv(paths[name], rows, extra)
    return paths


@click.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of every random choice.")
@click.option("--scale", default=1.0, show_default=True,
              help="Multiplies the number of clips (1.0: about 93 minutes of audio).")
@click.option("--sample-rate", default=16000, show_default=True, help="Sample rate in Hz.")
def demo_data(out_dir: str, seed: int, scale: float, sample_rate: int) -> None:
    """Render the embedded demo corpus into OUT_DIR as CSV sources (no network)."""
    t0 = time.perf_counter()
    try:
        paths = make_demo_data(out_dir, seed=seed, scale=scale, sample_rate=sample_rate)
    except (ImportError, ValueError, RuntimeError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    wall = time.perf_counter() - t0
    total = 0.0
    for name, path in paths.items():
        with open(path, newline="", encoding="utf-8") as fh:
            seconds = sum(float(r["seconds"]) for r in csv.DictReader(fh))
        total += seconds
        click.echo(f"{name:<12} {path}  ({seconds / 60:.2f} min)")
    click.echo(f"total {total / 60:.2f} min of audio, rendered in {wall:.1f} s")
    click.echo(f"build a store: featurestore build {paths['instruments']} "
               "-o stores/instruments.h5")  # fmt: skip
