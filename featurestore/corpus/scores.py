"""Scores of music21's corpus as note events: one parser for the demo and the dev benchmark.

:func:`parse_score` reads a MusicXML or Humdrum file into a :class:`Score`: per part,
every sounding note as ``(start, end, MIDI key, part)`` in quarter notes, in time order;
the bar lines of the first part; the first metronome mark. Tied notes are joined by
music21 itself (``Stream.stripTies``): a note tied over a bar line is one event that
lasts as long as its tied members together, so the synthesiser strikes it once.
music21 joins notes tied within one voice, including a tie "start" whose partner
lacks its "stop" mark, and chords tied to an equal chord; a note tied from one chord into
a different chord is struck again (music21 joins whole chords only).

:func:`score_notes` turns an excerpt of a score into :class:`~featurestore.corpus.render.Note`
events in seconds at a tempo, one MIDI channel per part (skipping the drum channel).

``music21`` is imported lazily; parsing never writes music21's parse cache
(``forceSource=True``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.corpus.render import DRUM_CHANNEL, Note

PARSER_VERSION = 2
"""Changes when the same file parses to other events (2: ties joined by ``stripTies``)."""

MAX_PARTS = 15
"""Parts beyond this are dropped: 15 melodic MIDI channels, the drum channel skipped."""

Event = tuple[float, float, int, int]
"""``(start_quarter, end_quarter, MIDI key, part index)``."""


class ScoreError(RuntimeError):
    """A score has no usable notes."""


@dataclass
class Score:
    """A parsed score: note events in quarter notes, part by part.

    Parameters
    ----------
    events : list of (float, float, int, int)
        ``(start, end, key, part)``, sorted; keys 1-127.
    n_parts : int
        Number of parts kept (at most :data:`MAX_PARTS`).
    bar_starts : list of float
        Offsets of the first part's bar lines, sorted (``[0.0]`` without measures).
    length_q : float
        End of the last note.
    qpm : float or None
        Quarter notes per minute of the first metronome mark, if any.
    """

    events: list[Event]
    n_parts: int
    bar_starts: list[float]
    length_q: float
    qpm: float | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Score:
        """The inverse of ``dataclasses.asdict`` after a JSON round trip."""
        events = [(float(s), float(e), int(k), int(p)) for s, e, k, p in data["events"]]
        return cls(events, int(data["n_parts"]), [float(b) for b in data["bar_starts"]],
                   float(data["length_q"]), data["qpm"])  # fmt: skip


def corpus_dir() -> Path:
    """music21's bundled corpus folder."""
    import music21

    return Path(music21.__file__).parent / "corpus"


def parse_score(source: str | Path, *, max_parts: int = MAX_PARTS) -> Score:
    """Parse a score file into note events, tied notes joined (no parse cache written).

    Parameters
    ----------
    source : str or Path
        A path inside music21's corpus folder (``"bach/bwv66.6.mxl"``) or any file path.
    max_parts : int
        Parts beyond the first ``max_parts`` are dropped.

    Returns
    -------
    Score

    Raises
    ------
    ScoreError
        The score has no note with a duration and a MIDI key in 1-127.
    Exception
        Whatever music21 raises on a file it cannot read (many types).
    """
    import music21

    path = Path(source)
    if not path.is_absolute():
        path = corpus_dir() / path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = music21.converter.parse(str(path), forceSource=True)
        if isinstance(parsed, music21.stream.Opus):
            parsed = parsed.scores[0]
        return read_score(parsed, max_parts=max_parts, name=str(source))


def read_score(stream: Any, *, max_parts: int = MAX_PARTS, name: str = "score") -> Score:
    """Note events of a music21 score, part or stream, tied notes joined by music21.

    Parameters
    ----------
    stream : music21.stream.Stream
        A ``Score`` (its parts), or a single ``Part``/``Stream`` (one part). Ties are
        stripped in place.
    max_parts : int
        Parts beyond the first ``max_parts`` are dropped.
    name : str
        Named in the error message.

    Returns
    -------
    Score

    Raises
    ------
    ScoreError
        No note with a duration and a MIDI key in 1-127.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream.stripTies(inPlace=True)
        parts = list(stream.parts) if hasattr(stream, "parts") else []
        parts = parts or [stream]
        events: list[Event] = []
        for index, part in enumerate(parts[:max_parts]):
            for element in part.flatten().notes:
                start = float(element.offset)
                length = float(element.duration.quarterLength)
                if length <= 0.0:  # grace notes
                    continue
                for member in element.notes if element.isChord else [element]:
                    if hasattr(member, "pitch"):  # not an unpitched percussion note
                        events.append((start, start + length, int(member.pitch.midi), index))
        first = parts[0]
        bar_starts = sorted(
            {float(m.getOffsetBySite(first)) for m in first.getElementsByClass("Measure")}
        )
        qpm = None
        for mark in stream.flatten().getElementsByClass("MetronomeMark"):
            if mark.number is not None:
                qpm = float(mark.getQuarterBPM())
                break
    events = [e for e in events if 0 < e[2] < 128]
    if not events:
        raise ScoreError(f"{name}: no notes")
    length_q = max(end for _, end, _, _ in events)
    return Score(sorted(events), min(len(parts), max_parts), bar_starts or [0.0], length_q, qpm)


def part_channel(part: int) -> int:
    """MIDI channel of a score part, skipping the drum channel."""
    return part if part < DRUM_CHANNEL else part + 1


def ensemble_programs(score: Score, top: int, inner: int, bottom: int) -> dict[int, int | None]:
    """Programs by register: the highest part (by mean key) ``top``, the lowest ``bottom``.

    Parameters
    ----------
    score : Score
        The score.
    top, inner, bottom : int
        GM programs of the highest part, the middle parts and the lowest part.

    Returns
    -------
    dict of int to int
        Part index to program (a single part gets ``top``).
    """
    keys: dict[int, list[int]] = {part: [] for part in range(score.n_parts)}
    for _, _, key, part in score.events:
        keys[part].append(key)
    mean = {part: float(np.mean(k)) if k else 0.0 for part, k in keys.items()}
    order = sorted(mean, key=lambda part: (-mean[part], part))
    programs: dict[int, int | None] = {}
    for rank, part in enumerate(order):
        programs[part] = top if rank == 0 else bottom if rank == len(order) - 1 else inner
    return programs


def excerpt_starts(
    score: Score, need_q: float, count: int, rng: np.random.Generator
) -> list[float]:
    """``count`` bar lines where an excerpt of ``need_q`` quarters fits (drawn from ``rng``).

    Bar lines are drawn without replacement while there are enough of them; a score
    shorter than ``need_q`` gives its start.
    """
    fits = [b for b in score.bar_starts if b + need_q <= score.length_q] or [0.0]
    picks = rng.choice(len(fits), size=count, replace=count > len(fits))
    return [fits[int(i)] for i in picks]


def score_notes(
    score: Score, start_q: float, qpm: float, seconds: float, rng: np.random.Generator
) -> list[Note]:
    """The notes of an excerpt, in seconds from its start, in time order.

    A note that starts before ``start_q`` is left out (a note held over the excerpt's
    first bar line is not struck); one that outlasts the excerpt is cut at ``seconds``.
    Each part plays at a velocity drawn from 70-100, each note jittered by up to 8.

    Parameters
    ----------
    score : Score
        The score.
    start_q : float
        Start of the excerpt in quarter notes.
    qpm : float
        Tempo in quarter notes per minute.
    seconds : float
        Length of the excerpt.
    rng : numpy.random.Generator
        Source of the velocities.

    Returns
    -------
    list of Note
        On channel :func:`part_channel` of each note's part.
    """
    sec_per_q = 60.0 / qpm
    base = {p: int(rng.integers(70, 101)) for p in range(score.n_parts)}
    notes = []
    for s, e, key, part in score.events:
        if s < start_q:
            continue
        t0 = (s - start_q) * sec_per_q
        if t0 >= seconds:
            break
        velocity = base[part] + int(rng.integers(-8, 9))
        notes.append(
            Note(t0, min((e - start_q) * sec_per_q, seconds), key, velocity, part_channel(part))
        )
    return notes
