"""Generated music: General-MIDI instrument families, single notes and phrases, and pieces.

* :data:`FAMILIES`: NSynth's instrument families, four GM programs each with the key
  range they are played in; :data:`ENSEMBLES`: programs for the top, inner and bottom
  parts of a score.
* :func:`instrument_notes`: one note or a short scale phrase of a program.
* :func:`generated_piece`: a multi-instrument piece (a diatonic chord progression with
  bass line, chords, melody and, in some, a drum kit) on random programs, key, mode,
  metre and tempo.

Every random choice is drawn from the ``numpy.random.Generator`` passed in, in a fixed
order, so that a seeded stream gives the same notes on every platform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featurestore.corpus.render import DRUM_CHANNEL, Note


@dataclass(frozen=True)
class Program:
    """A General-MIDI melodic program and the MIDI key range it is played in.

    Parameters
    ----------
    number : int
        0-based GM program number (0 = Acoustic Grand Piano).
    name : str
        Short name (used as a clip group).
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

ENSEMBLES: dict[str, tuple[int, int, int]] = {
    "piano": (0, 0, 0),
    "organ": (19, 19, 19),
    "strings": (40, 41, 42),
    "choir": (52, 52, 52),
    "winds": (73, 71, 70),
    "brass": (56, 60, 57),
}
"""Ensembles for scores: GM programs of the (top, inner, bottom) parts."""

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)

_PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (5, 3, 0, 4), (1, 4, 0, 5), (0, 5, 1, 4)),
    "minor": ((0, 3, 4, 0), (0, 5, 2, 6), (0, 6, 5, 4), (0, 3, 6, 2)),
}
_BASS_PROGRAMS = (32, 33, 35, 38, 43, 58, 70)
_CHORD_PROGRAMS = (0, 4, 6, 16, 19, 24, 46, 48, 49, 52, 89)
_LEAD_PROGRAMS = (11, 12, 22, 26, 40, 56, 65, 68, 71, 73, 75, 80, 81, 85)


def melodic_programs() -> list[int]:
    """Every GM program of :data:`FAMILIES`, sorted."""
    return sorted({p.number for programs in FAMILIES.values() for p in programs})


def instrument_notes(
    kind: str, program: Program, seconds: float, velocity: int, rng: np.random.Generator
) -> list[Note]:
    """A single note or a scale phrase of ``program`` on channel 0.

    Parameters
    ----------
    kind : str
        ``"note"``: one key drawn from the program's range, held for 55-80 % of
        ``seconds``. ``"phrase"``: 3-8 legato notes walking a major or minor scale from
        a tonic in the range, filling 85 % of ``seconds``.
    program : Program
        The instrument; every key lies in ``[program.low, program.high]``.
    seconds : float
        Length of the clip.
    velocity : int
        Velocity of a note, the centre of a phrase's velocities (jittered by up to 10).
    rng : numpy.random.Generator
        Source of every other choice.

    Returns
    -------
    list of Note
        In time order.
    """
    if kind == "note":
        key = int(rng.integers(program.low, program.high + 1))
        hold = seconds * float(rng.uniform(0.55, 0.8))
        return [Note(0.0, hold, key, velocity, 0)]
    steps = MAJOR if rng.random() < 0.5 else MINOR
    n_notes = int(rng.integers(3, 9))
    tonic = int(rng.integers(program.low, max(program.low, program.high - 12) + 1))
    keys = [tonic + 12 * octave + s for octave in range(-2, 4) for s in steps]
    keys = [k for k in keys if program.low <= k <= program.high]
    index = keys.index(tonic)
    step_s = 0.85 * seconds / n_notes
    legato = float(rng.uniform(0.6, 0.95))
    notes = []
    for i in range(n_notes):
        if i:
            index = int(np.clip(index + rng.choice([-2, -1, 1, 1, 2]), 0, len(keys) - 1))
        vel = int(np.clip(velocity + rng.integers(-10, 11), 1, 127))
        start = i * step_s
        notes.append(Note(start, start + legato * step_s, keys[index], vel, 0))
    return notes


def _chord_keys(tonic: int, steps: Sequence[int], degree: int) -> list[int]:
    """Triad on a scale degree, as pitch classes above ``tonic`` (may exceed 12)."""
    return [tonic + steps[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]


def generated_piece(
    rng: np.random.Generator, seconds_range: tuple[float, float] = (20.0, 30.0)
) -> tuple[list[Note], dict[int, int | None], float, float]:
    """A chord progression with bass, chords, melody and maybe drums.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every choice: mode (60 % major), tonic, tempo (72-140 quarter notes
        per minute), metre (30 % 3/4), length, progression, drums (60 %), programs,
        arpeggiated chords (40 %) and the melody's random walk.
    seconds_range : (float, float)
        Range of the piece's length before it is rounded to whole bars.

    Returns
    -------
    (list of Note, dict of int to int or None, float, float)
        Notes; channel to program (``None`` for the drum kit on channel 9); the length in
        seconds (whole bars plus 1 s of release); the tempo.
    """
    mode = "major" if rng.random() < 0.6 else "minor"
    steps = MAJOR if mode == "major" else MINOR
    tonic = int(rng.integers(0, 12))
    qpm = float(rng.uniform(72.0, 140.0))
    beats = 3 if rng.random() < 0.3 else 4
    beat_s = 60.0 / qpm
    bar_s = beats * beat_s
    target = float(rng.uniform(*seconds_range))
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
