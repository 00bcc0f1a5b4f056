"""F0 trackers on soundfont renders with known pitch: gross pitch error, octave errors,
voicing accuracy, and speed.

Notes of several General-MIDI instruments are rendered from pretty_midi's bundled
soundfont (TimGM6mb.sf2) with tinysoundfont at 16 kHz, 0.8 s on and 0.7 s off:
monophonic, then with an accompanying note (string ensemble, velocity 80 under the
melody's 110, a fourth to a tenth below). The ground truth is the melody note's
equal-tempered frequency, on the store's frame grid (hop 160, frames centred on
``t * hop``).

    pip install --no-deps tinysoundfont     # once; its pyaudio dependency is not needed
    python benchmarks/f0_quality.py                      # every tracker
    python benchmarks/f0_quality.py --no-pyin --out /tmp/f0.md
    python benchmarks/f0_quality.py --only prosody PitchYinFFT    # trackers by name

Metrics (pooled over all instruments and notes):
- voiced frames: centre at least 70 ms inside a melody note; unvoiced frames: at least
  70 ms outside every note and 40 dB below the loudest frame (release tails fading out,
  and silence); other frames only count for pitch, never for voicing. Renders peak at
  0.5, so the loudest frame is near -20 dBFS RMS and "unvoiced" is below about -60 dBFS:
  the ``prosody`` target's -60 dBFS level gate sits near that line, so its voicing figures
  are an upper bound; YIN confidence alone does not look at level at all.
- GPE: share of frames voiced in truth and in the estimate whose estimate is more than
  50 cents from the truth; octave: share of the same frames within 50 cents of a whole
  number (not 0) of octaves from the truth.
- V-recall / V-false-alarm / voicing accuracy (VA) over voiced and unvoiced truth frames;
  "voiced & right": share of truth-voiced frames the tracker calls voiced within 50 cents.
- accomp.: share of polyphonic voiced frames within 50 cents of the accompanying note.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import benchlib  # before numpy: pins numeric libraries to one thread
import numpy as np
from benchlib import HOP, SAMPLE_RATE, cpu_time, table

from featurestore.targets import REGISTRY, DecodedClip, fit_frames
from featurestore.targets.base import essentia_standard

SR = SAMPLE_RATE
NOTE_ON, NOTE_OFF = 0.8, 0.7  # seconds
MARGIN = 0.07  # seconds kept clear of note boundaries in the ground truth
F0_MIN, F0_MAX = 40.0, 2000.0

# General-MIDI program, name, lowest and highest MIDI key used.
INSTRUMENTS = [
    (0, "acoustic grand piano", 40, 84),
    (24, "nylon guitar", 40, 76),
    (33, "electric bass (finger)", 40, 60),
    (40, "violin", 55, 88),
    (42, "cello", 40, 72),
    (52, "choir aahs", 48, 79),
    (56, "trumpet", 55, 82),
    (65, "alto sax", 49, 80),
    (71, "clarinet", 50, 86),
    (73, "flute", 60, 93),
    (80, "square lead", 40, 88),
]
ACCOMP_PROGRAM = 48  # string ensemble 1
ACCOMP_INTERVALS = (7, 9, 12, 16, 5)  # semitones below the melody, in turn
NOTES_PER_INSTRUMENT = 8


def soundfont_path() -> str:
    import pretty_midi

    path = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: pretty_midi ships it; reinstall pretty_midi")
    return path


def hz(key: float) -> float:
    return 440.0 * 2.0 ** ((key - 69) / 12.0)


@dataclass
class Render:
    """A rendered sequence and its frame-level ground truth."""

    instrument: str
    y: np.ndarray
    f0: np.ndarray  # melody Hz per frame (0 where not voiced in truth)
    accomp: np.ndarray  # accompanying note Hz per frame (0 where none)
    voiced: np.ndarray  # bool: truth voiced
    unvoiced: np.ndarray  # bool: truth silent


def render(program: int, lo: int, hi: int, poly: bool, sf2: str) -> tuple[np.ndarray, list]:
    """Render the instrument's notes; returns mono audio and (start, end, key, accomp)."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=SR)
    sfid = synth.sfload(sf2)
    synth.program_select(0, sfid, 0, program)
    synth.program_select(1, sfid, 0, ACCOMP_PROGRAM)
    keys = np.round(np.linspace(lo, hi, NOTES_PER_INSTRUMENT)).astype(int)
    chunks, notes = [], []
    lead = 0.3
    chunks.append(synth.generate(round(lead * SR)))
    t = lead
    for i, key in enumerate(keys):
        below = int(key) - ACCOMP_INTERVALS[i % len(ACCOMP_INTERVALS)] if poly else None
        synth.noteon(0, int(key), 110)
        if below is not None:
            synth.noteon(1, below, 80)
        chunks.append(synth.generate(round(NOTE_ON * SR)))
        synth.noteoff(0, int(key))
        if below is not None:
            synth.noteoff(1, below)
        chunks.append(synth.generate(round(NOTE_OFF * SR)))
        notes.append((t, t + NOTE_ON, int(key), below))
        t += NOTE_ON + NOTE_OFF
    stereo = np.concatenate([np.frombuffer(c, dtype=np.float32).reshape(-1, 2) for c in chunks])
    y = stereo.mean(axis=1)
    return (0.5 * y / max(float(np.abs(y).max()), 1e-9)).astype(np.float32), notes


def make_render(program: int, name: str, lo: int, hi: int, poly: bool, sf2: str) -> Render:
    y, notes = render(program, lo, hi, poly, sf2)
    n = len(y) // HOP
    centre = np.arange(n) * HOP / SR
    f0 = np.zeros(n)
    accomp = np.zeros(n)
    near_note = np.zeros(n, dtype=bool)
    for start, end, key, below in notes:
        inside = (centre >= start + MARGIN) & (centre <= end - MARGIN)
        f0[inside] = hz(key)
        if below is not None:
            accomp[inside] = hz(below)
        near_note |= (centre >= start - MARGIN) & (centre <= end + MARGIN)
    ypad = np.pad(y, (512, 512))
    rms = np.sqrt(np.lib.stride_tricks.sliding_window_view(ypad, 1024)[::HOP][:n] ** 2).mean(1)
    quiet = rms < rms.max() * 10 ** (-40 / 20)
    return Render(name, y, f0, accomp, f0 > 0, ~near_note & quiet)


# --- trackers: y -> (f0 Hz per frame, voiced flags or None) ---

Tracker = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def yin_fft(n_fft: int, threshold: float = 0.5, gate_dbfs: float | None = None) -> Tracker:
    """essentia PitchYinFFT on the shared magnitude; voiced where confidence >= threshold
    (and, with ``gate_dbfs``, where the frame's RMS is at least that many dB full scale)."""
    def run(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        es = essentia_standard()
        fr = DecodedClip(y, SR, HOP)
        tracker = es.PitchYinFFT(frameSize=n_fft, sampleRate=SR, minFrequency=F0_MIN,
                                 maxFrequency=F0_MAX)
        cols = np.ascontiguousarray(fr.magnitude(n_fft).T)
        out = np.array([tracker(c) for c in cols], dtype=np.float64)
        voiced = (out[:, 1] >= threshold) & (out[:, 0] > 0)
        if gate_dbfs is not None:
            import librosa

            rms = librosa.feature.rms(S=fr.magnitude(n_fft), frame_length=n_fft)[0]
            voiced &= 20 * np.log10(rms + 1e-12) >= gate_dbfs
        return out[:, 0], voiced
    return run


def yin_time(size: int, threshold: float = 0.5) -> Tracker:
    def run(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        es = essentia_standard()
        n = len(y) // HOP
        tracker = es.PitchYin(frameSize=size, sampleRate=SR, minFrequency=F0_MIN,
                              maxFrequency=F0_MAX)
        frames = np.lib.stride_tricks.sliding_window_view(
            np.pad(y, (size // 2, size // 2)), size)[::HOP][:n]
        out = np.array([tracker(np.ascontiguousarray(f)) for f in frames], dtype=np.float64)
        return out[:, 0], (out[:, 1] >= threshold) & (out[:, 0] > 0)
    return run


def prosody_target(f0_method: str | None = None) -> Tracker:
    """The registered ``prosody`` target as stored (its own ``f0_method``, or the one
    given): exp(log-F0) and its voiced flag."""
    target = REGISTRY["prosody"]()
    if f0_method is not None:
        target.params = dataclasses.replace(target.params, f0_method=f0_method)  # type: ignore[misc]

    def run(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = target(DecodedClip(y, SR, HOP))
        return np.exp(x[:, 0].astype(np.float64)), x[:, 1] > 0.5
    return run


def librosa_yin(y: np.ndarray) -> tuple[np.ndarray, None]:
    import librosa

    f0 = librosa.yin(y, fmin=F0_MIN, fmax=F0_MAX, sr=SR, frame_length=2048, hop_length=HOP)
    return fit_frames(f0, len(y) // HOP), None


def librosa_pyin(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import librosa

    f0, flag, _ = librosa.pyin(y, fmin=F0_MIN, fmax=F0_MAX, sr=SR, frame_length=2048,
                               hop_length=HOP)
    n = len(y) // HOP
    return fit_frames(np.nan_to_num(f0), n), fit_frames(flag, n)


def yin_probabilistic(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    es = essentia_standard()
    pitch, _ = es.PitchYinProbabilistic(frameSize=2048, hopSize=HOP, sampleRate=SR)(y)
    pitch = fit_frames(np.asarray(pitch, dtype=np.float64), len(y) // HOP)
    return np.abs(pitch), pitch > 0


def melodia(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    es = essentia_standard()
    y = es.EqualLoudness(sampleRate=SR)(y)
    pitch, _ = es.PredominantPitchMelodia(frameSize=2048, hopSize=HOP, sampleRate=SR,
                                          minFrequency=80.0, maxFrequency=F0_MAX)(y)
    pitch = fit_frames(np.asarray(pitch, dtype=np.float64), len(y) // HOP)
    return pitch, pitch > 0


def trackers(with_pyin: bool) -> dict[str, Tracker]:
    out: dict[str, Tracker] = {}
    if "prosody" in REGISTRY and REGISTRY["prosody"].dim == 12:
        # the default first, then the essentia tracker it replaced, both as stored
        # (1024-sample frame, confidence >= 0.5, RMS >= -60 dBFS)
        default = REGISTRY["prosody"].params.f0_method
        out[f"`prosody` target (f0_method {default}, the default)"] = prosody_target()
        for method in ("yin", "PitchYinFFT"):
            if method != default:
                out[f"`prosody` target (f0_method {method})"] = prosody_target(method)
    out.update({
        "essentia PitchYinFFT 1024 (conf >= 0.5)": yin_fft(1024),
        "essentia PitchYinFFT 2048 (conf >= 0.5)": yin_fft(2048),
        "essentia PitchYin time domain 2048 (conf >= 0.5)": yin_time(2048),
        "librosa.yin 2048 (no voicing)": librosa_yin,
    })
    if with_pyin:
        out["librosa.pyin 2048"] = librosa_pyin
    out["essentia PitchYinProbabilistic 2048"] = yin_probabilistic
    out["essentia PredominantPitchMelodia (80-2000 Hz)"] = melodia
    return out


def short_name(name: str) -> str:
    """A column title: the tracker's name without library and with its settings terse."""
    for word in ("essentia ", "`", " target", ", the default"):
        name = name.replace(word, "")
    return (name.replace(" (conf >= 0.5)", "").replace(" (no voicing)", "")
            .replace(" (f0_method ", " (").replace(" (80-2000 Hz)", "")
            .replace("PitchYin time domain", "PitchYin").replace("PredominantPitch", ""))


def cents(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return 1200.0 * np.log2(np.maximum(est, 1e-9) / ref)


@dataclass
class Score:
    voiced_total: int = 0
    unvoiced_total: int = 0
    both_voiced: int = 0
    gross: int = 0
    octave: int = 0
    recall: int = 0
    false_alarm: int = 0
    right: int = 0
    accomp_frames: int = 0
    on_accomp: int = 0
    cpu: float = 0.0
    audio: float = 0.0

    def add(self, r: Render, f0: np.ndarray, voiced: np.ndarray | None, cpu: float) -> None:
        est_v = (f0 > 0) if voiced is None else (voiced & (f0 > 0))
        both = r.voiced & est_v
        c = cents(f0[both], r.f0[both])
        wrong = np.abs(c) > 50
        k = np.round(c / 1200.0)
        self.voiced_total += int(r.voiced.sum())
        self.unvoiced_total += int(r.unvoiced.sum())
        self.both_voiced += int(both.sum())
        self.gross += int(wrong.sum())
        self.octave += int((wrong & (k != 0) & (np.abs(c - 1200.0 * k) <= 50)).sum())
        self.recall += int(both.sum())
        self.false_alarm += int((r.unvoiced & est_v).sum())
        self.right += int((~wrong).sum())
        acc = both & (r.accomp > 0)
        self.accomp_frames += int((r.voiced & (r.accomp > 0)).sum())
        self.on_accomp += int((np.abs(cents(f0[acc], r.accomp[acc])) <= 50).sum())
        self.cpu += cpu
        self.audio += len(r.y) / SR

    def row(self, has_voicing: bool) -> list[str]:
        def pct(a: int, b: int) -> str:
            return f"{100.0 * a / b:.1f}%" if b else "n/a"

        va = pct(self.recall + self.unvoiced_total - self.false_alarm,
                 self.voiced_total + self.unvoiced_total)
        return [
            pct(self.gross, self.both_voiced), pct(self.octave, self.both_voiced),
            pct(self.recall, self.voiced_total) if has_voicing else "(all)",
            pct(self.false_alarm, self.unvoiced_total) if has_voicing else "(all)",
            va if has_voicing else "n/a",
            pct(self.right, self.voiced_total),
            pct(self.on_accomp, self.accomp_frames) if self.accomp_frames else "",
            f"{self.audio / max(self.cpu, 1e-9):,.0f}x",
        ]


def pure_tones(track: dict[str, Tracker]) -> list[list[str]]:
    """Median voiced estimate for 3 s sine tones (amplitude 0.5)."""
    rows = []
    t = np.arange(3 * SR) / SR
    for name, fn in track.items():
        cells = [name]
        for f in (55.0, 110.0, 440.0, 1000.0):
            f0, voiced = fn((0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32))
            v = (f0 > 0) if voiced is None else (voiced & (f0 > 0))
            cells.append(f"{np.median(f0[v]):.1f} ({100 * v.mean():.0f}% voiced)"
                         if v.any() else "never voiced")
        rows.append(cells)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-pyin", action="store_true", help="skip librosa.pyin (slow)")
    parser.add_argument("--only", nargs="+", metavar="WORD",
                        help="only the trackers whose name contains one of these words")
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "f0_quality.md")
    args = parser.parse_args(argv)
    try:
        import tinysoundfont  # noqa: F401
    except ImportError:
        sys.exit("tinysoundfont is missing: pip install --no-deps tinysoundfont")
    sf2 = soundfont_path()
    track = trackers(not args.no_pyin)
    if args.only:
        track = {n: fn for n, fn in track.items() if any(w in n for w in args.only)}
        if not track:
            sys.exit(f"no tracker's name contains any of {args.only}")
    voicing = {name: name != "librosa.yin 2048 (no voicing)" for name in track}
    # Warm-up (numba JIT, first-call set-up) on a short render.
    warm = make_render(0, "warm-up", 60, 64, False, sf2)
    for fn in track.values():
        fn(warm.y[: 2 * SR])

    sections = []
    per_instrument: dict[str, dict[str, Score]] = {}
    for poly in (False, True):
        scores = {name: Score() for name in track}
        for program, name, lo, hi in INSTRUMENTS:
            r = make_render(program, name, lo, hi, poly, sf2)
            print(f"{'poly' if poly else 'mono'} {name}: {len(r.y) / SR:.1f} s", file=sys.stderr,
                  flush=True)
            for tname, fn in track.items():
                cpu, (f0, voiced) = cpu_time(lambda fn=fn, r=r: fn(r.y))
                scores[tname].add(r, f0, voiced, cpu)
                key = f"{'poly' if poly else 'mono'}|{name}"
                per_instrument.setdefault(key, {}).setdefault(tname, Score()).add(
                    r, f0, voiced, cpu)
        label = ("Polyphonic: melody + string-ensemble note 5-16 semitones below"
                 if poly else "Monophonic")
        header = ["tracker", "GPE (>50 c)", "octave errors", "V-recall", "V-false-alarm", "VA",
                  "voiced & right", "on accomp. note" if poly else "", "x real time"]
        rows = [[name, *s.row(voicing[name])] for name, s in scores.items()]
        if not poly:
            header.pop(7)
            rows = [r[:7] + r[8:] for r in rows]
        s0 = next(iter(scores.values()))
        sections += [f"## {label}", "",
                     f"{len(INSTRUMENTS)} instruments x {NOTES_PER_INSTRUMENT} notes, "
                     f"{s0.voiced_total} voiced and {s0.unvoiced_total} silent truth frames.",
                     "", table(header, rows), ""]

    inst_names = list(track)
    sections += ["## GPE per instrument (monophonic / polyphonic)", "",
                 table(["instrument", *[short_name(n) for n in inst_names]],
                       [[name, *[
                           "{} / {}".format(*[
                               per_instrument[f"{m}|{name}"][t].row(True)[0]
                               for m in ("mono", "poly")])
                           for t in inst_names]] for _, name, _, _ in INSTRUMENTS]), ""]
    sections += ["## Pure sine tones: median voiced estimate (Hz)", "",
                 table(["tracker", "55 Hz", "110 Hz", "440 Hz", "1000 Hz"], pure_tones(track)),
                 ""]
    text = "\n".join(["# f0_quality", "", benchlib.machine_line(), "", *sections])
    benchlib.write_report(text, args.out)
    print(f"(written to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
