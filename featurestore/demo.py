"""The embedded demo data set: a small real-audio music corpus built offline in seconds.

``make_demo_data(out_dir)`` writes three CSV sources (the format ``featurestore build``
reads like any user data: columns ``path`` relative to the CSV's folder, ``label``
with several labels joined by ``";"``, ``split``, ``group``, and further columns kept as
metadata) next to folders of 16-bit mono WAV files. Everything is synthesised from what
pip packages ship, so it works with no network and no data download:

* the General-MIDI soundfont bundled with ``pretty_midi`` (``TimGM6mb.sf2``, 6 MB),
  rendered with ``tinysoundfont`` (a sample-based SoundFont synthesiser; it renders far
  faster than real time), and
* the score corpus bundled with ``music21`` (Bach chorales, Palestrina masses, Monteverdi
  madrigals, Mozart and Beethoven string quartets, ...), turned into note events and
  rendered through the same soundfont.

The three parts (sizes at ``scale=1.0``; ``scale`` multiplies the number of clips):

``instruments.csv`` (folder ``instruments/``)
    Single notes (1-2.5 s) and short phrases (1.5-3 s) of 44 General-MIDI programs,
    labelled by instrument *family* as NSynth does: bass, brass, flute, guitar, keyboard,
    mallet, organ, reed, string, synth_lead, vocal (11 families x 4 programs; three
    clips per program: 132 clips, about 4.3 minutes). ``group`` is the program (for example
    ``violin``). Splits are by group: in every family one program is ``test``, one is
    ``valid`` and the other two are ``train`` (which ones are drawn from ``seed``), so an
    instrument heard in training is never in the test set: the probe must generalise
    from the family's other instruments. Pitch (within the instrument's real range),
    velocity, duration and the phrase are drawn from ``seed``. Metadata columns:
    ``program`` (0-based GM number), ``kind`` (``note`` or ``phrase``), ``pitch`` (MIDI
    key of a single note, empty for a phrase), ``notes`` (all MIDI keys, space
    separated), ``velocity``, ``seconds``.

``composers.csv`` (folder ``composers/``)
    Excerpts (6-8 s) of real scores, labelled by composer: bach (chorales), palestrina
    (Kyries of different masses), monteverdi (madrigals), mozart and beethoven (string
    quartet movements, one per quartet), twelve clips per composer spread over its works
    (60 clips, about 6.9 minutes). ``group`` is the work (a quartet or mass as a whole, so that two
    movements of one quartet can never straddle splits); splits are by group: one work
    per composer is ``test``, one ``valid``, the rest ``train``. Each excerpt starts on a
    bar line and is played by an ensemble drawn from ``seed`` (piano, organ, strings,
    choir, winds, brass) from a pool shared by all composers, so that timbre does not
    give the composer away; the highest part (by mean pitch) gets the ensemble's top
    instrument, the lowest its bass. Tempo: the score's first metronome mark where it
    has one, otherwise a per-composer default, jittered by up to 8 %. Ties are merged; repeats are
    not expanded; dynamics are a per-part velocity with a small random jitter.
    Metadata columns: ``source`` (corpus file), ``ensemble``, ``start_quarter``,
    ``qpm`` (quarter notes per minute), ``seconds``.

``pretrain.csv`` (folder ``pretrain/``)
    Unlabelled audio for self-supervised pre-training (empty ``label``): generated
    multi-instrument pieces (a diatonic chord progression with bass line, chords,
    melody and, in some, a drum kit, on random GM programs, random key, mode, metre and
    tempo; 20-30 s each) plus excerpts of further music21 works that the composer set
    does not use (Corelli, Handel, Chopin, ...) on random programs. Sixty files at
    ``scale=1.0`` (40 generated, 20 score excerpts; about 25 minutes, enough for a few
    thousand steps of one-second crops without repeating a crop), all in split
    ``train``. Metadata columns: ``source`` (``generated`` or the corpus file),
    ``programs`` (GM numbers, space separated, ``d`` for the drum kit), ``qpm``,
    ``seconds``.

Every file is peak-normalised to -3 dBFS (no clipping), with a 5 ms fade-in and a 20 ms
fade-out. No file is silent: an instrument render whose raw peak is below ``1e-3`` is
redrawn, and a silent score excerpt or generated piece raises ``RuntimeError``.
The output is deterministic byte for byte for a given ``seed``, ``scale`` and
``sample_rate``: every clip has its own random stream derived from ``seed`` and its
index, and every clip is rendered by a fresh synthesiser (the same bytes came out with
numpy 1.26/music21 9.1/tinysoundfont 0.3.1 and numpy 2.4/music21 10.5/tinysoundfont
0.3.7). Nothing is cached outside ``out_dir``: music21 is asked not to write its parse
cache (``forceSource=True``); importing music21 does create its empty scratch folder
(``<tempdir>/music21``).

Dependencies: ``numpy``, ``soundfile``, ``pretty_midi`` (for its soundfont only),
``tinysoundfont`` and ``music21``, imported lazily (``import featurestore.demo`` is
cheap). ``tinysoundfont`` declares a dependency on ``pyaudio``, used only for live
playback; install it with ``pip install --no-deps tinysoundfont``.

Run ``python -m featurestore.demo OUT_DIR [--seed N] [--scale X]`` to build it and print
the statistics and the wall time.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

SOUNDFONT_PACKAGE = "pretty_midi"
SOUNDFONT_FILE = "TimGM6mb.sf2"
PEAK_DBFS = -3.0
PEAK = 10.0 ** (PEAK_DBFS / 20.0)
MIN_RAW_PEAK = 1e-3
FADE_IN_S = 0.005
FADE_OUT_S = 0.02
DRUM_CHANNEL = 9
SPLITS_BY_RANK = ("test", "valid")  # the rest of the groups go to "train"
BASE_COLUMNS = ("path", "label", "split", "group")

# Stream identifiers: each part of the corpus draws from its own random streams.
_INSTRUMENTS, _COMPOSERS, _PRETRAIN = 1, 2, 3


@dataclass(frozen=True)
class Program:
    """A General-MIDI melodic program and the MIDI key range it is played in.

    Parameters
    ----------
    number : int
        0-based GM program number (0 = Acoustic Grand Piano).
    name : str
        Short name, used as the clip group in ``instruments.csv``.
    low, high : int
        Lowest and highest MIDI key drawn for this instrument (inclusive).
    """

    number: int
    name: str
    low: int
    high: int


FAMILIES: dict[str, tuple[Program, ...]] = {
    "bass": (
        Program(32, "acoustic_bass", 28, 55),
        Program(33, "fingered_bass", 28, 55),
        Program(35, "fretless_bass", 28, 55),
        Program(38, "synth_bass", 28, 55),
    ),
    "brass": (
        Program(56, "trumpet", 55, 82),
        Program(57, "trombone", 40, 70),
        Program(58, "tuba", 29, 55),
        Program(60, "french_horn", 41, 72),
    ),
    "flute": (
        Program(72, "piccolo", 74, 96),
        Program(73, "flute", 60, 93),
        Program(74, "recorder", 60, 86),
        Program(75, "pan_flute", 60, 86),
    ),
    "guitar": (
        Program(24, "nylon_guitar", 40, 76),
        Program(25, "steel_guitar", 40, 76),
        Program(26, "jazz_guitar", 40, 76),
        Program(27, "clean_guitar", 40, 76),
    ),
    "keyboard": (
        Program(0, "grand_piano", 36, 90),
        Program(4, "electric_piano", 36, 84),
        Program(6, "harpsichord", 36, 84),
        Program(7, "clavinet", 36, 84),
    ),
    "mallet": (
        Program(9, "glockenspiel", 72, 100),
        Program(11, "vibraphone", 53, 89),
        Program(12, "marimba", 48, 84),
        Program(13, "xylophone", 65, 96),
    ),
    "organ": (
        Program(16, "drawbar_organ", 36, 84),
        Program(17, "percussive_organ", 36, 84),
        Program(18, "rock_organ", 36, 84),
        Program(19, "church_organ", 36, 84),
    ),
    "reed": (
        Program(65, "alto_sax", 49, 77),
        Program(68, "oboe", 58, 86),
        Program(70, "bassoon", 34, 65),
        Program(71, "clarinet", 50, 84),
    ),
    "string": (
        Program(40, "violin", 55, 88),
        Program(41, "viola", 48, 76),
        Program(42, "cello", 36, 67),
        Program(43, "contrabass", 28, 52),
    ),
    "synth_lead": (
        Program(80, "square_lead", 48, 84),
        Program(81, "saw_lead", 48, 84),
        Program(84, "charang", 48, 84),
        Program(87, "bass_lead", 40, 76),
    ),
    "vocal": (
        Program(52, "choir_aahs", 48, 76),
        Program(53, "voice_oohs", 48, 76),
        Program(54, "synth_voice", 48, 76),
        Program(85, "solo_vox", 48, 76),
    ),
}
"""Instrument families (NSynth's names) to four GM programs each, with playable ranges."""

INSTRUMENT_CLIPS_PER_PROGRAM = 3
NOTE_SECONDS = (1.0, 2.5)
PHRASE_SECONDS = (1.5, 3.0)


@dataclass(frozen=True)
class Work:
    """A score of the music21 corpus used in ``composers.csv``.

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
            "bwv66.6",
            "bwv10.7",
            "bwv101.7",
            "bwv104.6",
            "bwv110.7",
            "bwv1.6",
            "bwv102.7",
            "bwv108.6",
            "bwv11.6",
        )
    ),
    "palestrina": tuple(
        Work(f"palestrina/mass_{n}", f"palestrina/Kyrie_{n}.krn")
        for n in ("00", "02", "07", "10", "04", "11", "09")
    ),
    "monteverdi": tuple(
        Work(f"monteverdi/{m}", f"monteverdi/{m}.mxl")
        for m in (
            "madrigal.4.2",
            "madrigal.3.4",
            "madrigal.5.2",
            "madrigal.3.1",
            "madrigal.3.2",
            "madrigal.5.1",
            "madrigal.4.1",
            "madrigal.3.3",
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

COMPOSER_CLIPS = 12
EXCERPT_SECONDS = (6.0, 8.0)

ENSEMBLES: dict[str, tuple[int, int, int]] = {
    "piano": (0, 0, 0),
    "organ": (19, 19, 19),
    "strings": (40, 41, 42),
    "choir": (52, 52, 52),
    "winds": (73, 71, 70),
    "brass": (56, 60, 57),
}
"""Ensembles for scores: GM programs of the (top, inner, bottom) parts."""

PRETRAIN_WORKS: tuple[Work, ...] = (
    Work("corelli/opus3no1", "corelli/opus3no1/1grave.xml"),
    Work("handel/rinaldo", "handel/rinaldo/Lascia_chio_pianga.mxl"),
    Work("bach/bwv103.6", "bach/bwv103.6.mxl"),
    Work("chopin/mazurka06-2", "chopin/mazurka06-2.krn"),
    Work("joplin/maple_leaf_rag", "joplin/maple_leaf_rag.mxl"),
)
"""Further scores, not used by ``composers.csv``, rendered for the unlabelled part."""

PRETRAIN_GENERATED = 40
PRETRAIN_SCORES = 20
PRETRAIN_SECONDS = (20.0, 30.0)

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (5, 3, 0, 4), (1, 4, 0, 5), (0, 5, 1, 4)),
    "minor": ((0, 3, 4, 0), (0, 5, 2, 6), (0, 6, 5, 4), (0, 3, 6, 2)),
}
_BASS_PROGRAMS = (32, 33, 35, 38, 43, 58, 70)
_CHORD_PROGRAMS = (0, 4, 6, 16, 19, 24, 46, 48, 49, 52, 89)
_LEAD_PROGRAMS = (11, 12, 22, 26, 40, 56, 65, 68, 71, 73, 75, 80, 81, 85)


# --------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Note:
    """One note event: times in seconds from the start of the clip."""

    start: float
    end: float
    key: int
    velocity: int
    channel: int


def soundfont_bytes() -> bytes:
    """The General-MIDI soundfont that ``pretty_midi`` ships (``TimGM6mb.sf2``).

    Returns
    -------
    bytes
        The SoundFont file's contents.
    """
    return resources.files(SOUNDFONT_PACKAGE).joinpath(SOUNDFONT_FILE).read_bytes()


def _import_tinysoundfont() -> Any:
    try:
        import tinysoundfont
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the demo data set needs tinysoundfont: pip install --no-deps tinysoundfont "
            "(its pyaudio dependency is only for live playback)"
        ) from exc
    return tinysoundfont


class Renderer:
    """Renders note events with the bundled soundfont, a fresh synthesiser per clip.

    Parameters
    ----------
    sample_rate : int
        Output sample rate in Hz.
    """

    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = int(sample_rate)
        self._tsf = _import_tinysoundfont()
        self._sf2 = soundfont_bytes()

    def render(
        self,
        notes: Iterable[Note],
        programs: dict[int, int | None],
        seconds: float,
    ) -> np.ndarray:
        """Render notes to a mono float64 signal (not normalised).

        Parameters
        ----------
        notes : iterable of Note
            Events; a note is cut at ``seconds``.
        programs : dict of int to int or None
            Channel to 0-based GM program; ``None`` selects the drum kit.
        seconds : float
            Length of the output.

        Returns
        -------
        numpy.ndarray
            ``[round(seconds * sample_rate)]`` float64.
        """
        n_samples = round(seconds * self.sample_rate)
        synth = self._tsf.Synth(samplerate=self.sample_rate)
        sfid = synth.sfload(self._sf2)
        for channel, program in sorted(programs.items()):
            if program is None:
                synth.program_select(channel, sfid, 128, 0, True)
            else:
                synth.program_select(channel, sfid, 0, program)
        actions: list[tuple[int, int, int, int, int]] = []
        for note in notes:
            on = round(note.start * self.sample_rate)
            off = min(round(note.end * self.sample_rate), n_samples)
            if on >= n_samples or off <= on:
                continue
            velocity = int(min(127, max(1, note.velocity)))
            actions.append((on, 1, note.channel, note.key, velocity))
            actions.append((off, 0, note.channel, note.key, 0))
        actions.sort()  # at one sample, note-offs (0) come before note-ons (1)
        out = np.zeros((n_samples, 2), dtype=np.float32)
        pos = 0
        for sample, is_on, channel, key, velocity in actions:
            if sample > pos:
                out[pos:sample] = self._generate(synth, sample - pos)
                pos = sample
            if is_on:
                synth.noteon(channel, key, velocity)
            else:
                synth.noteoff(channel, key)
        if pos < n_samples:
            out[pos:] = self._generate(synth, n_samples - pos)
        return out.mean(axis=1, dtype=np.float64)

    @staticmethod
    def _generate(synth: Any, n: int) -> np.ndarray:
        block = np.frombuffer(synth.generate(n), dtype=np.float32).reshape(-1, 2)
        return block[:n]


def render_note(
    program: int,
    key: int,
    *,
    velocity: int = 100,
    seconds: float = 1.0,
    hold: float | None = None,
    sample_rate: int = 16000,
) -> np.ndarray:
    """Render one note of a GM program, peak-normalised, as float64.

    Parameters
    ----------
    program : int
        0-based GM program number.
    key : int
        MIDI key (69 = A4 = 440 Hz).
    velocity : int
        MIDI velocity.
    seconds : float
        Length of the output.
    hold : float, optional
        Seconds before the note-off; default ``0.8 * seconds``.
    sample_rate : int
        Output sample rate in Hz.

    Returns
    -------
    numpy.ndarray
        Mono float64 in ``[-1, 1]`` with peak ``PEAK``.
    """
    hold = 0.8 * seconds if hold is None else hold
    audio = Renderer(sample_rate).render([Note(0.0, hold, key, velocity, 0)], {0: program}, seconds)
    pcm = _finish(audio, sample_rate)
    if pcm is None:
        raise RuntimeError(f"program {program} key {key}: silent render")
    return pcm.astype(np.float64) / 32767.0


def _finish(audio: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """Fade, peak-normalise to ``PEAK`` and quantise to int16; None if silent."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not math.isfinite(peak) or peak < MIN_RAW_PEAK:
        return None
    audio = audio.copy()
    n_in = min(audio.size, round(FADE_IN_S * sample_rate))
    n_out = min(audio.size, round(FADE_OUT_S * sample_rate))
    if n_in:
        audio[:n_in] *= np.linspace(0.0, 1.0, n_in, endpoint=False)
    if n_out:
        audio[audio.size - n_out :] *= np.linspace(1.0, 0.0, n_out)
    peak = float(np.max(np.abs(audio)))
    if peak < MIN_RAW_PEAK:
        return None
    return np.round(audio * (PEAK / peak * 32767.0)).astype(np.int16)


def _write_wav(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), pcm, sample_rate, subtype="PCM_16", format="WAV")


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


# --------------------------------------------------------------------------- instruments
def _instrument_notes(
    kind: str, program: Program, rng: np.random.Generator
) -> tuple[list[Note], float, int]:
    """Draw a note or phrase for ``program``: (notes, seconds, velocity)."""
    velocity = int(rng.integers(60, 121))
    if kind == "note":
        seconds = round(float(rng.uniform(*NOTE_SECONDS)), 2)
        key = int(rng.integers(program.low, program.high + 1))
        hold = seconds * float(rng.uniform(0.55, 0.8))
        return [Note(0.0, hold, key, velocity, 0)], seconds, velocity
    seconds = round(float(rng.uniform(*PHRASE_SECONDS)), 2)
    steps = _MAJOR if rng.random() < 0.5 else _MINOR
    n_notes = int(rng.integers(3, 9))
    tonic = int(rng.integers(program.low, max(program.low, program.high - 12) + 1))
    scale_keys = [tonic + 12 * octave + s for octave in range(-2, 4) for s in steps]
    scale_keys = [k for k in scale_keys if program.low <= k <= program.high]
    index = scale_keys.index(tonic)
    step_s = 0.85 * seconds / n_notes
    legato = float(rng.uniform(0.6, 0.95))
    notes = []
    for i in range(n_notes):
        if i:
            index = int(np.clip(index + rng.choice([-2, -1, 1, 1, 2]), 0, len(scale_keys) - 1))
        vel = int(np.clip(velocity + rng.integers(-10, 11), 1, 127))
        start = i * step_s
        notes.append(Note(start, start + legato * step_s, scale_keys[index], vel, 0))
    return notes, seconds, velocity


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
                    notes, seconds, velocity = _instrument_notes(kind, program, rng)
                    audio = renderer.render(notes, {0: program.number}, seconds)
                    pcm = _finish(audio, renderer.sample_rate)
                    if pcm is not None:
                        break
                else:  # pragma: no cover - every program in FAMILIES renders
                    raise RuntimeError(f"{program.name}: silent renders")
                rel = f"instruments/{family}-{program.name}-{j:03d}.wav"
                _write_wav(out_dir / rel, pcm, renderer.sample_rate)
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


# --------------------------------------------------------------------------- scores
@dataclass
class _Score:
    """A parsed score: note events in quarter notes, part by part."""

    events: list[tuple[float, float, int, int]]  # start_q, end_q, key, part
    n_parts: int
    bar_starts: list[float]
    length_q: float
    qpm: float | None


def _corpus_dir() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def _parse_score(source: str) -> _Score:
    """Parse a corpus file into note events, merging ties (no parse cache written)."""
    import music21

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = music21.converter.parse(str(_corpus_dir() / source), forceSource=True)
        if isinstance(parsed, music21.stream.Opus):
            parsed = parsed.scores[0]
        parts = list(parsed.parts) or [parsed]
        events: list[tuple[float, float, int, int]] = []
        for part_index, part in enumerate(parts):
            open_ties: dict[int, int] = {}  # key -> index in events
            for element in part.flatten().notes:
                start = float(element.offset)
                length = float(element.duration.quarterLength)
                if length <= 0.0:  # grace notes
                    continue
                members = element.notes if element.isChord else [element]
                for member in members:
                    if not hasattr(member, "pitch"):
                        continue
                    key = int(member.pitch.midi)
                    tie = member.tie if member.tie is not None else element.tie
                    tie_type = tie.type if tie is not None else None
                    held = open_ties.pop(key, None)
                    if held is not None and tie_type in ("stop", "continue"):
                        s, _, k, p = events[held]
                        events[held] = (s, start + length, k, p)
                        index = held
                    else:
                        events.append((start, start + length, key, part_index))
                        index = len(events) - 1
                    if tie_type in ("start", "continue"):
                        open_ties[key] = index
        first = parts[0]
        bar_starts = sorted(
            {float(m.getOffsetBySite(first)) for m in first.getElementsByClass("Measure")}
        )
        qpm = None
        for mark in parsed.flatten().getElementsByClass("MetronomeMark"):
            if mark.number is not None:
                qpm = float(mark.getQuarterBPM())
                break
    if not events:
        raise RuntimeError(f"{source}: no notes")
    length_q = max(end for _, end, _, _ in events)
    return _Score(sorted(events), len(parts), bar_starts or [0.0], length_q, qpm)


def _ensemble_programs(ensemble: str, score: _Score) -> dict[int, int | None]:
    """Programs of an ensemble by register: the highest part gets the top instrument."""
    top, inner, bottom = ENSEMBLES[ensemble]
    keys: dict[int, list[int]] = {part: [] for part in range(score.n_parts)}
    for _, _, key, part in score.events:
        keys[part].append(key)
    mean = {part: float(np.mean(k)) if k else 0.0 for part, k in keys.items()}
    order = sorted(mean, key=lambda part: (-mean[part], part))
    programs: dict[int, int | None] = {}
    for rank, part in enumerate(order):
        if rank == 0:
            programs[part] = top
        elif rank == len(order) - 1:
            programs[part] = bottom
        else:
            programs[part] = inner
    return programs


def _channel(part: int) -> int:
    """MIDI channel of a score part, skipping the drum channel."""
    return part if part < DRUM_CHANNEL else part + 1


def _excerpt_starts(
    score: _Score, need_q: float, count: int, rng: np.random.Generator
) -> list[float]:
    """Bar lines where an excerpt of ``need_q`` quarters fits, ``count`` of them."""
    fits = [b for b in score.bar_starts if b + need_q <= score.length_q] or [0.0]
    picks = rng.choice(len(fits), size=count, replace=count > len(fits))
    return [fits[int(i)] for i in picks]


def _score_notes(
    score: _Score,
    start_q: float,
    qpm: float,
    seconds: float,
    rng: np.random.Generator,
) -> list[Note]:
    sec_per_q = 60.0 / qpm
    base = {p: int(rng.integers(70, 101)) for p in range(score.n_parts)}
    notes = []
    for s, e, key, part in score.events:
        if s < start_q:
            continue
        t0 = (s - start_q) * sec_per_q
        if t0 >= seconds:
            break
        vel = base[part] + int(rng.integers(-8, 9))
        notes.append(Note(t0, min((e - start_q) * sec_per_q, seconds), key, vel, _channel(part)))
    return notes


def _render_excerpt(
    renderer: Renderer,
    score: _Score,
    start_q: float,
    qpm: float,
    seconds: float,
    programs: dict[int, int | None],
    rng: np.random.Generator,
) -> np.ndarray | None:
    notes = _score_notes(score, start_q, qpm, seconds, rng)
    channels = {_channel(part): prog for part, prog in programs.items()}
    audio = renderer.render(notes, channels, seconds)
    return _finish(audio, renderer.sample_rate)


def _available(works: Sequence[Work]) -> list[Work]:
    root = _corpus_dir()
    return [w for w in works if (root / w.source).is_file()]


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
            score = _parse_score(work.source)
            rng = _rng(seed, _COMPOSERS, c_index, w_index)
            qpm = (score.qpm or COMPOSER_QPM[composer]) * float(rng.uniform(0.92, 1.08))
            seconds = [round(float(rng.uniform(*EXCERPT_SECONDS)), 2) for _ in range(count)]
            starts = _excerpt_starts(score, max(seconds) * qpm / 60.0, count, rng)
            for e_index, (start_q, secs) in enumerate(zip(starts, seconds, strict=True)):
                ensemble = ensembles[int(rng.integers(len(ensembles)))]
                programs = _ensemble_programs(ensemble, score)
                pcm = _render_excerpt(renderer, score, start_q, qpm, secs, programs, rng)
                if pcm is None:  # pragma: no cover - excerpts start on a bar with notes
                    raise RuntimeError(f"{work.source}: silent excerpt at {start_q}")
                name = work.group.replace("/", "-")
                rel = f"composers/{name}-{e_index:02d}.wav"
                _write_wav(out_dir / rel, pcm, renderer.sample_rate)
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


# --------------------------------------------------------------------------- pretrain
def _chord_keys(tonic: int, steps: Sequence[int], degree: int) -> list[int]:
    """Triad on a scale degree, as pitch classes above ``tonic`` (may exceed 12)."""
    return [tonic + steps[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]


def _generated_piece(
    rng: np.random.Generator,
) -> tuple[list[Note], dict[int, int | None], float, float]:
    """A chord progression with bass, chords, melody and maybe drums."""
    mode = "major" if rng.random() < 0.6 else "minor"
    steps = _MAJOR if mode == "major" else _MINOR
    tonic = int(rng.integers(0, 12))
    qpm = float(rng.uniform(72.0, 140.0))
    beats = 3 if rng.random() < 0.3 else 4
    beat_s = 60.0 / qpm
    bar_s = beats * beat_s
    target = float(rng.uniform(*PRETRAIN_SECONDS))
    n_bars = max(2, int(target // bar_s))
    seconds = round(n_bars * bar_s + 1.0, 3)
    progression = _PROGRESSIONS[mode][int(rng.integers(len(_PROGRESSIONS[mode])))]
    drums = bool(rng.random() < 0.6)
    programs: dict[int, int | None] = {
        0: int(rng.choice(_BASS_PROGRAMS)),
        1: int(rng.choice(_CHORD_PROGRAMS)),
        2: int(rng.choice(_LEAD_PROGRAMS)),
    }
    if drums:
        programs[DRUM_CHANNEL] = None
    arpeggio = bool(rng.random() < 0.4)
    melody_keys = [k for k in range(62, 87) if (k - tonic) % 12 in steps]
    m_index = len(melody_keys) // 2
    notes: list[Note] = []
    for bar in range(n_bars):
        t_bar = bar * bar_s
        chord = _chord_keys(tonic, steps, progression[bar % len(progression)])
        root = 36 + (chord[0] % 12)
        # bass: root on the downbeat, fifth or root on the middle beat
        notes.append(Note(t_bar, t_bar + 0.95 * bar_s / 2, root, 95, 0))
        notes.append(Note(t_bar + bar_s / 2, t_bar + 0.95 * bar_s, root + 7 * (bar % 2), 85, 0))
        # chords: voiced between 55 and 76
        voiced = [55 + ((k - 55) % 12) for k in chord]
        if arpeggio:
            for b in range(beats):
                key = sorted(voiced)[b % 3]
                notes.append(Note(t_bar + b * beat_s, t_bar + (b + 0.9) * beat_s, key, 70, 1))
        else:
            notes.extend(Note(t_bar, t_bar + 0.97 * bar_s, k, 65, 1) for k in voiced)
        # melody: a random walk on the scale, chord tones on the downbeat
        t = 0.0
        while t < beats - 1e-9:
            length = 0.5 if rng.random() < 0.5 else 1.0
            if t == 0.0:
                tones = [i for i, k in enumerate(melody_keys) if k % 12 in {c % 12 for c in chord}]
                m_index = min(tones, key=lambda i: abs(i - m_index))
            else:
                m_index = int(np.clip(m_index + rng.integers(-2, 3), 0, len(melody_keys) - 1))
            if rng.random() > 0.12:
                start = t_bar + t * beat_s
                vel = int(rng.integers(80, 111))
                end = start + 0.9 * length * beat_s
                notes.append(Note(start, end, melody_keys[m_index], vel, 2))
            t += length
        if drums:
            for b in range(beats):
                start = t_bar + b * beat_s
                drum = 36 if b % 2 == 0 else 38
                notes.append(Note(start, start + 0.1, drum, 100, DRUM_CHANNEL))
                for half in (0.0, 0.5):
                    hat_t = start + half * beat_s
                    vel = int(rng.integers(50, 80))
                    notes.append(Note(hat_t, hat_t + 0.05, 42, vel, DRUM_CHANNEL))
    return notes, programs, seconds, qpm


def _program_text(programs: dict[int, int | None]) -> str:
    return " ".join("d" if p is None else str(p) for _, p in sorted(programs.items()))


def _make_pretrain(
    out_dir: Path, renderer: Renderer, seed: int, scale: float
) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for i in range(_count(PRETRAIN_GENERATED, scale, 1)):
        rng = _rng(seed, _PRETRAIN, 0, i)
        notes, programs, seconds, qpm = _generated_piece(rng)
        pcm = _finish(renderer.render(notes, programs, seconds), renderer.sample_rate)
        if pcm is None:  # pragma: no cover - the bass plays on every bar
            raise RuntimeError("silent generated piece")
        rel = f"pretrain/generated-{i:03d}.wav"
        _write_wav(out_dir / rel, pcm, renderer.sample_rate)
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
    melodic = sorted({p.number for programs in FAMILIES.values() for p in programs})
    parsed: dict[str, _Score] = {}
    for i in range(_count(PRETRAIN_SCORES, scale, 1) if works else 0):
        work = works[i % len(works)]
        if work.source not in parsed:
            parsed[work.source] = _parse_score(work.source)
        score = parsed[work.source]
        rng = _rng(seed, _PRETRAIN, 1, i)
        qpm = (score.qpm or 100.0) * float(rng.uniform(0.92, 1.08))
        seconds = round(float(rng.uniform(*PRETRAIN_SECONDS)), 2)
        start_q = _excerpt_starts(score, seconds * qpm / 60.0, 1, rng)[0]
        programs: dict[int, int | None] = {
            part: int(rng.choice(melodic)) for part in range(score.n_parts)
        }
        pcm = _render_excerpt(renderer, score, start_q, qpm, seconds, programs, rng)
        if pcm is None:  # pragma: no cover
            raise RuntimeError(f"{work.source}: silent excerpt")
        rel = f"pretrain/{work.group.replace('/', '-')}-{i:03d}.wav"
        _write_wav(out_dir / rel, pcm, renderer.sample_rate)
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


# --------------------------------------------------------------------------- entry point
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


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the featurestore demo corpus.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    paths = make_demo_data(
        args.out_dir, seed=args.seed, scale=args.scale, sample_rate=args.sample_rate
    )
    wall = time.perf_counter() - t0
    total = 0.0
    for name, path in paths.items():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        seconds = sum(float(r["seconds"]) for r in rows)
        total += seconds
        print(f"{name:12s} {len(rows):4d} clips {seconds / 60:6.2f} min  {path}")
    print(f"total {total / 60:.2f} min of audio, built in {wall:.2f} s")


if __name__ == "__main__":
    _main()
