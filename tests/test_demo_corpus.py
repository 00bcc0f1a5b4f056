"""Tests of the corpus building blocks (featurestore.corpus.scores and .render).

The score parser is shared by the demo corpus and the dev benchmark: tied notes are
joined by music21 (``stripTies``), so a tied note is struck once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from featurestore.corpus import render, scores
from featurestore.corpus.render import Clip, Note

music21 = pytest.importorskip("music21")


def _note(name: str, quarters: float, tie: str | None = None) -> object:
    n = music21.note.Note(name, quarterLength=quarters)
    if tie is not None:
        n.tie = music21.tie.Tie(tie)
    return n


def _chord(names: str, quarters: float, tie: str | None = None) -> object:
    c = music21.chord.Chord(names.split(), quarterLength=quarters)
    if tie is not None:
        c.tie = music21.tie.Tie(tie)
        for member in c.notes:
            member.tie = music21.tie.Tie(tie)
    return c


def _score(*parts: list[object]) -> object:
    """A 4/4 score, one part per list of notes, barred by music21."""
    score = music21.stream.Score()
    for elements in parts:
        part = music21.stream.Part()
        part.append(music21.meter.TimeSignature("4/4"))
        for element in elements:
            part.append(element)
        score.insert(0, part.makeMeasures())
    return score


def _peak_hz(x: np.ndarray, sample_rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size), 1 << 17))
    freqs = np.fft.rfftfreq(1 << 17, 1.0 / sample_rate)
    spec[freqs < 50.0] = 0.0
    return float(freqs[int(np.argmax(spec))])


# --------------------------------------------------------------------------- ties
def test_two_tied_quarter_notes_are_one_half_note() -> None:
    score = scores.read_score(_score([_note("C4", 1, "start"), _note("C4", 1, "stop"),
                                      _note("D4", 2)]))  # fmt: skip
    assert score.events == [(0.0, 2.0, 60, 0), (2.0, 4.0, 62, 0)]
    notes = scores.score_notes(score, 0.0, 120.0, 2.0, np.random.default_rng(0))
    assert [(n.start, n.end, n.key) for n in notes] == [(0.0, 1.0, 60), (1.0, 2.0, 62)]


def test_a_note_tied_over_the_bar_line_is_struck_once() -> None:
    score = scores.read_score(_score([_note("G4", 4, "start"), _note("G4", 2, "stop"),
                                      _note("A4", 2)]))  # fmt: skip
    assert score.events == [(0.0, 6.0, 67, 0), (6.0, 8.0, 69, 0)]
    assert score.bar_starts == [0.0, 4.0]


def test_a_chain_of_ties_is_one_note() -> None:
    score = scores.read_score(_score([_note("E4", 1, "start"), _note("E4", 1, "continue"),
                                      _note("E4", 2, "stop")]))  # fmt: skip
    assert score.events == [(0.0, 4.0, 64, 0)]


def test_repeated_notes_without_a_tie_are_struck_again() -> None:
    score = scores.read_score(_score([_note("C4", 2), _note("C4", 2)]))
    assert score.events == [(0.0, 2.0, 60, 0), (2.0, 4.0, 60, 0)]


def test_a_tie_start_without_its_stop_mark_joins_the_next_note_of_that_pitch() -> None:
    # as in music21's Monteverdi madrigals, where the stop mark is often missing
    score = scores.read_score(_score([_note("D4", 4, "start"), _note("D4", 2),
                                      _note("C#4", 2)]))  # fmt: skip
    assert score.events == [(0.0, 6.0, 62, 0), (6.0, 8.0, 61, 0)]


def test_a_tied_chord_holds_every_member() -> None:
    score = scores.read_score(_score([_chord("C4 E4 G4", 2, "start"),
                                      _chord("C4 E4 G4", 2, "stop")]))  # fmt: skip
    assert score.events == [(0.0, 4.0, 60, 0), (0.0, 4.0, 64, 0), (0.0, 4.0, 67, 0)]


def test_a_member_tied_between_two_different_chords_is_struck_again() -> None:
    # music21 joins whole chords only: the held C4 of C4-E4 -> C4-G4 sounds twice
    first, second = _chord("C4 E4", 2), _chord("C4 G4", 2)
    first.notes[0].tie = music21.tie.Tie("start")
    second.notes[0].tie = music21.tie.Tie("stop")
    score = scores.read_score(_score([first, second]))
    assert score.events == [(0.0, 2.0, 60, 0), (0.0, 2.0, 64, 0), (2.0, 4.0, 60, 0),
                            (2.0, 4.0, 67, 0)]  # fmt: skip


def test_ties_are_joined_per_part() -> None:
    score = scores.read_score(_score(
        [_note("C5", 2, "start"), _note("C5", 2, "stop")],
        [_note("C3", 2), _note("C3", 2)],
    ))  # fmt: skip
    assert score.events == [(0.0, 2.0, 48, 1), (0.0, 4.0, 72, 0), (2.0, 4.0, 48, 1)]
    assert score.n_parts == 2


def test_a_score_of_rests_has_no_notes() -> None:
    with pytest.raises(scores.ScoreError, match="no notes"):
        scores.read_score(_score([music21.note.Rest(quarterLength=4)]), name="rests")


# --------------------------------------------------------------------------- corpus
def test_a_chorale_excerpt_comes_out_in_time_order_with_its_exact_pitches() -> None:
    # BWV 66.6, bar 0-1 (MusicXML): soprano C#5 B4 (eighths), A4 B4 C#5 E5 (quarters)
    score = scores.parse_score("bach/bwv66.6.mxl")
    assert (score.n_parts, score.qpm) == (4, None)
    assert score.bar_starts[:3] == [0.0, 1.0, 5.0]
    soprano = [(s, e, k) for s, e, k, part in score.events if part == 0 and s < 5.0]
    assert soprano == [(0.0, 0.5, 73), (0.5, 1.0, 71), (1.0, 2.0, 69), (2.0, 3.0, 71),
                       (3.0, 4.0, 73), (4.0, 5.0, 76)]  # fmt: skip
    assert score.events == sorted(score.events)
    notes = scores.score_notes(score, 1.0, 60.0, 2.0, np.random.default_rng(0))
    assert [n.start for n in notes] == sorted(n.start for n in notes)
    soprano_notes = [(n.start, n.end, n.key) for n in notes if n.channel == 0]
    assert soprano_notes == [(0.0, 1.0, 69), (1.0, 2.0, 71)]  # 60 qpm: a quarter is 1 s


def test_score_notes_leave_out_earlier_notes_and_cut_at_the_end() -> None:
    score = scores.Score([(0.0, 3.0, 60, 0), (1.0, 2.0, 62, 0), (2.0, 6.0, 64, 1)], 2,
                         [0.0], 6.0, None)  # fmt: skip
    notes = scores.score_notes(score, 1.0, 60.0, 2.5, np.random.default_rng(0))
    assert [(n.start, n.end, n.key, n.channel) for n in notes] == [
        (0.0, 1.0, 62, 0),
        (1.0, 2.5, 64, 1),
    ]
    assert all(62 <= n.velocity <= 108 for n in notes)


def test_parts_skip_the_drum_channel() -> None:
    assert [scores.part_channel(p) for p in (0, 8, 9, 14)] == [0, 8, 10, 15]


def test_ensembles_go_by_register() -> None:
    score = scores.Score([(0.0, 1.0, 48, 0), (0.0, 1.0, 72, 1), (0.0, 1.0, 60, 2)], 3,
                         [0.0], 1.0, None)  # fmt: skip
    assert scores.ensemble_programs(score, 40, 41, 42) == {1: 40, 2: 41, 0: 42}


def test_the_json_cache_round_trip_gives_the_same_score() -> None:
    import json
    from dataclasses import asdict

    score = scores.read_score(_score([_note("C4", 1, "start"), _note("C4", 1, "stop")]))
    assert scores.Score.from_json(json.loads(json.dumps(asdict(score)))) == score


# --------------------------------------------------------------------------- rendering
def test_finish_normalises_to_the_peak_and_refuses_silence() -> None:
    sr = 16000
    x = 0.1 * np.sin(2 * np.pi * 440.0 * np.arange(sr) / sr)
    pcm = render.finish(x, sr)
    assert pcm is not None and pcm.dtype == np.int16
    assert int(np.abs(pcm.astype(np.int32)).max()) == round(render.PEAK * 32767)
    assert pcm[0] == 0  # the fade-in starts from silence
    assert render.finish(np.zeros(sr), sr) is None
    assert render.finish(np.full(sr, 1e-4), sr) is None
    assert render.finish(np.full(sr, 1e-4), sr, min_peak=1e-5) is not None


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="needs the fluidsynth program")
def test_fluidsynth_renders_each_clip_in_its_own_slot(tmp_path: Path) -> None:
    sr = 16000
    clips = [
        Clip((Note(0.0, 0.8, 69, 100, 0),), ((0, 73),), 1.0),  # flute A4
        Clip((Note(0.1, 0.5, 76, 100, 1),), ((1, 73),), 0.7),  # flute E5
    ]
    files, collect = render.render_fluidsynth(
        render.bundled_soundfont_path(), clips, sr, tmp_path, "timgm6mb"
    )
    first, second = collect()
    assert (first.size, second.size) == (sr, round(0.7 * sr))
    assert all(f.is_file() for f in files)
    assert abs(_peak_hz(first[: int(0.8 * sr)], sr) / 440.0 - 1.0) < 0.02
    assert abs(_peak_hz(second[int(0.1 * sr) : int(0.5 * sr)], sr) / 659.26 - 1.0) < 0.02
    assert float(np.abs(second[: int(0.09 * sr)]).max()) < 1e-3  # nothing rings over
