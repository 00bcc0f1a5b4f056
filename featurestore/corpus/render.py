"""Note events to audio: General-MIDI soundfonts through tinysoundfont or fluidsynth.

Two renderers, one input (:class:`Note` events on MIDI channels, a program per channel):

* :class:`Renderer` (``tinysoundfont``, ``.sf2`` only): a fresh synthesiser per clip,
  in process, far faster than real time. The demo corpus uses it with the soundfont that
  ``pretty_midi`` ships (``TimGM6mb.sf2``).
* :func:`render_fluidsynth`: many clips of one soundfont laid one after another in one
  MIDI file and rendered offline by one ``fluidsynth`` process (``.sf2`` or ``.sf3``,
  reverb and chorus off), then cut apart. The dev benchmark uses it when fluidsynth is
  on ``PATH``.

:func:`finish` turns a raw render into the int16 PCM that is written: 5 ms fade-in,
20 ms fade-out, peak-normalised to -3 dBFS, ``None`` when the render is silent.

``tinysoundfont``, ``mido`` and ``soundfile`` are imported lazily.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
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

Programs = Mapping[int, int | None]
"""MIDI channel to 0-based General-MIDI program; ``None`` selects the drum kit."""


class RenderError(RuntimeError):
    """A synthesiser failed or wrote something other than what was asked."""


@dataclass(frozen=True)
class Note:
    """One note event: times in seconds from the start of the clip.

    Parameters
    ----------
    start, end : float
        Note-on and note-off times in seconds.
    key : int
        MIDI key (69 = A4 = 440 Hz).
    velocity : int
        MIDI velocity (clamped to 1-127 when rendered).
    channel : int
        MIDI channel (9 is the drum kit).
    """

    start: float
    end: float
    key: int
    velocity: int
    channel: int


@dataclass(frozen=True)
class Clip:
    """One clip to render: note events, a program per channel and a length.

    Parameters
    ----------
    notes : tuple of Note
        Events; a note is cut at ``seconds``.
    programs : tuple of (int, int or None)
        ``(channel, program)`` pairs, sorted by channel; ``None`` is the drum kit.
    seconds : float
        Length of the rendered clip.
    """

    notes: tuple[Note, ...]
    programs: tuple[tuple[int, int | None], ...]
    seconds: float


def bundled_soundfont_path() -> Path:
    """Path of the General-MIDI soundfont that ``pretty_midi`` ships (``TimGM6mb.sf2``)."""
    return Path(str(resources.files(SOUNDFONT_PACKAGE).joinpath(SOUNDFONT_FILE)))


def soundfont_bytes() -> bytes:
    """The contents of ``pretty_midi``'s bundled ``TimGM6mb.sf2``."""
    return resources.files(SOUNDFONT_PACKAGE).joinpath(SOUNDFONT_FILE).read_bytes()


def _import_tinysoundfont() -> Any:
    try:
        import tinysoundfont
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rendering needs tinysoundfont: pip install --no-deps tinysoundfont "
            "(its pyaudio dependency is only for live playback)"
        ) from exc
    return tinysoundfont


class Renderer:
    """Renders note events with one ``.sf2`` soundfont, a fresh synthesiser per clip.

    Parameters
    ----------
    sample_rate : int
        Output sample rate in Hz.
    soundfont : str or Path, optional
        An ``.sf2`` file; default ``pretty_midi``'s ``TimGM6mb.sf2``.
    """

    def __init__(self, sample_rate: int = 16000, soundfont: str | Path | None = None) -> None:
        self.sample_rate = int(sample_rate)
        self._tsf = _import_tinysoundfont()
        self._sf2 = soundfont_bytes() if soundfont is None else Path(soundfont).read_bytes()

    def render(self, notes: Iterable[Note], programs: Programs, seconds: float) -> np.ndarray:
        """Render notes to a mono float64 signal (not normalised).

        Parameters
        ----------
        notes : iterable of Note
            Events; a note is cut at ``seconds``.
        programs : mapping of int to int or None
            Channel to 0-based GM program; ``None`` selects the drum kit.
        seconds : float
            Length of the output.

        Returns
        -------
        numpy.ndarray
            ``[round(seconds * sample_rate)]`` float64, the mean of the two channels.
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

    def render_clip(self, clip: Clip) -> np.ndarray:
        """:meth:`render` of a :class:`Clip`."""
        return self.render(clip.notes, dict(clip.programs), clip.seconds)

    @staticmethod
    def _generate(synth: Any, n: int) -> np.ndarray:
        block = np.frombuffer(synth.generate(n), dtype=np.float32).reshape(-1, 2)
        return block[:n]


def finish(
    audio: np.ndarray, sample_rate: int, *, min_peak: float = MIN_RAW_PEAK
) -> np.ndarray | None:
    """Fade, peak-normalise to :data:`PEAK` and quantise to int16.

    Parameters
    ----------
    audio : numpy.ndarray
        A mono render.
    sample_rate : int
        Its sample rate (for the fade lengths).
    min_peak : float
        A render whose peak is below this, before or after the fades, is silent.

    Returns
    -------
    numpy.ndarray or None
        int16 samples with peak ``round(PEAK * 32767)``; None when silent or not finite.
    """
    audio = np.asarray(audio, dtype=np.float64)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not math.isfinite(peak) or peak < min_peak:
        return None
    audio = audio.copy()
    n_in = min(audio.size, round(FADE_IN_S * sample_rate))
    n_out = min(audio.size, round(FADE_OUT_S * sample_rate))
    if n_in:
        audio[:n_in] *= np.linspace(0.0, 1.0, n_in, endpoint=False)
    if n_out:
        audio[audio.size - n_out :] *= np.linspace(1.0, 0.0, n_out)
    peak = float(np.max(np.abs(audio)))
    if peak < min_peak:
        return None
    return np.round(audio * (PEAK / peak * 32767.0)).astype(np.int16)


def render_note(
    program: int,
    key: int,
    *,
    velocity: int = 100,
    seconds: float = 1.0,
    hold: float | None = None,
    sample_rate: int = 16000,
) -> np.ndarray:
    """Render one note of a GM program with the bundled soundfont, peak-normalised.

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
        Mono float64 in ``[-1, 1]`` with peak :data:`PEAK`.

    Raises
    ------
    RenderError
        The render is silent.
    """
    hold = 0.8 * seconds if hold is None else hold
    audio = Renderer(sample_rate).render([Note(0.0, hold, key, velocity, 0)], {0: program}, seconds)
    pcm = finish(audio, sample_rate)
    if pcm is None:
        raise RenderError(f"program {program} key {key}: silent render")
    return pcm.astype(np.float64) / 32767.0


def write_wav(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    """Write int16 samples as a 16-bit mono WAV file, creating its folder."""
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), pcm, sample_rate, subtype="PCM_16", format="WAV")


# --------------------------------------------------------------------------- fluidsynth
def midi_messages(clips: Sequence[Clip], ticks_per_second: int) -> tuple[list[Any], list[float]]:
    """All clips in one MIDI track, each in its own slot of whole seconds.

    Every slot starts with "reset all controllers" and its programs on every channel
    and ends with "all sound off" and "all notes off", so that nothing rings into the
    next clip. The first slot starts at 1 s; a slot lasts ``ceil(seconds + 0.75)``.

    Parameters
    ----------
    clips : sequence of Clip
        Clips to lay out.
    ticks_per_second : int
        MIDI ticks per second of the track.

    Returns
    -------
    (list of mido.Message, list of float)
        Messages with delta times, and the start of each clip's slot in seconds.
    """
    import mido

    events: list[tuple[int, int, Any]] = []
    starts: list[float] = []
    t = 1.0
    for clip in clips:
        starts.append(t)
        base = round(t * ticks_per_second)
        end = base + round(clip.seconds * ticks_per_second)
        for channel in range(16):
            events.append((base, 0, mido.Message("control_change", channel=channel, control=121)))
        for channel, program in clip.programs:
            if program is not None and channel != DRUM_CHANNEL:
                events.append(
                    (base, 1, mido.Message("program_change", channel=channel, program=program))
                )
        for note in clip.notes:
            on = base + round(note.start * ticks_per_second)
            off = min(base + round(note.end * ticks_per_second), end)
            if off <= on:
                continue
            velocity = int(min(127, max(1, note.velocity)))
            ch, key = note.channel, note.key
            events.append((on, 3, mido.Message("note_on", channel=ch, note=key, velocity=velocity)))
            events.append((off, 2, mido.Message("note_off", channel=ch, note=key)))
        for channel in range(16):
            events.append((end, 4, mido.Message("control_change", channel=channel, control=120)))
            events.append((end, 4, mido.Message("control_change", channel=channel, control=123)))
        t += math.ceil(clip.seconds + 0.75)
    events.sort(key=lambda e: (e[0], e[1]))
    messages = []
    last = 0
    for tick, _, message in events:
        messages.append(message.copy(time=tick - last))
        last = tick
    return messages, starts


def render_fluidsynth(
    soundfont: str | Path, clips: Sequence[Clip], sample_rate: int, workdir: Path, name: str
) -> tuple[list[Path], Callable[[], list[np.ndarray]]]:
    """Start fluidsynth on all clips of one soundfont; return a function that collects.

    The clips are laid out by :func:`midi_messages` in one MIDI file, rendered offline
    by one process (reverb and chorus off, gain 0.5) and cut apart. Several soundfonts
    render in parallel when every process is started before any is collected.

    Parameters
    ----------
    soundfont : str or Path
        The soundfont (``.sf2`` or ``.sf3``).
    clips : sequence of Clip
        Clips to render.
    sample_rate : int
        Output sample rate.
    workdir : Path
        Folder for the temporary MIDI and WAV files.
    name : str
        Stem of the temporary files (distinct per concurrent process).

    Returns
    -------
    (list of Path, callable)
        The temporary files, and a function that waits for the process and returns one
        float64 mono signal per clip; it raises :class:`RenderError` when fluidsynth fails.
    """
    import mido

    tps = 960  # 480 ticks per beat at the default 120 beats per minute
    messages, starts = midi_messages(clips, tps)
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks.append(mido.MidiTrack(messages))
    mid_path = workdir / f"{name}.mid"
    wav_path = workdir / f"{name}.wav"
    midi.save(str(mid_path))
    command = [
        "fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5",
        "-o", "synth.dynamic-sample-loading=1", "-O", "float", "-T", "wav",
        "-F", str(wav_path), "-r", str(sample_rate), str(soundfont), str(mid_path),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def collect() -> list[np.ndarray]:
        import soundfile

        _, err = proc.communicate()
        if proc.returncode != 0 or not wav_path.is_file():
            raise RenderError(f"fluidsynth failed on {soundfont}: {err.decode()[-500:]}")
        audio, rate = soundfile.read(str(wav_path), dtype="float64", always_2d=True)
        if rate != sample_rate:
            raise RenderError(f"fluidsynth wrote {rate} Hz, asked for {sample_rate}")
        mono = audio.mean(axis=1)
        out = []
        for clip, start in zip(clips, starts, strict=True):
            a = round(start * sample_rate)
            n = round(clip.seconds * sample_rate)
            piece = mono[a : a + n]
            out.append(np.pad(piece, (0, n - piece.size)))
        return out

    return [mid_path, wav_path], collect
