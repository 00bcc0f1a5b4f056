"""What each target costs: CPU time per 30 s clip of real music, one thread.

For every registered target: alone (a fresh ``DecodedClip``, so it pays for its own STFT, mel
or CQT), in order (what ``extract`` pays running the default set in registry order) and
marginal (on a ``DecodedClip`` where every other default target has already run: the cost of
asking for it on top of the default set). Then the default set as a whole, decoding, the
shared intermediates, and library alternatives for chroma, F0, CQT, tempogram and
gammatone.

    python benchmarks/targets_speed.py                 # 1 warm-up + 10 timed clips
    python benchmarks/targets_speed.py --clips 8 --no-pyin --out /tmp/speed.md
    python benchmarks/targets_speed.py --prosody-ab    # prosody's two F0 trackers only

Times are CPU seconds of this process (``time.process_time``) with every numeric library
pinned to one thread; the figure is the median over the timed clips, after one warm-up
clip that pays numba's JIT and first-call set-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib  # before numpy: pins numeric libraries to one thread
import numpy as np
from benchlib import CLIP_SECONDS, HOP, SAMPLE_RATE, cpu_time, median, table, xrt

from featurestore.targets import REGISTRY, DecodedClip, Target, fit_frames, resolve
from featurestore.targets.base import essentia_standard

F0_MIN, F0_MAX = 40.0, 2000.0  # the prosody / pyin targets' range
CQT_FMIN, CQT_BINS = 32.703195662574764, 84


class RecordingClip(DecodedClip):
    """DecodedClip that remember which shared intermediates were asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[Hashable] = set()

    def memo(self, key: Hashable, make: Callable[[], Any]) -> Any:
        self.asked.add(key)
        return super().memo(key, make)


def fresh(y: np.ndarray) -> RecordingClip:
    return RecordingClip(y, SAMPLE_RATE, HOP)


def framed(y: np.ndarray, size: int, n_frames: int) -> np.ndarray:
    """Centred frames of ``y`` (zero padding, as librosa's ``center=True``), a view of
    shape (n_frames, size)."""
    ypad = np.pad(y, (size // 2, size // 2))
    return np.lib.stride_tricks.sliding_window_view(ypad, size)[::HOP][:n_frames]


# --- alternatives: (frames) -> array; they use the shared intermediates where they can ---

def yin_fft_loop(fr: DecodedClip, n_fft: int) -> np.ndarray:
    es = essentia_standard()
    tracker = es.PitchYinFFT(frameSize=n_fft, sampleRate=fr.sample_rate, minFrequency=F0_MIN,
                             maxFrequency=F0_MAX)
    cols = np.ascontiguousarray(fr.magnitude(n_fft).T)
    out = np.empty((fr.n_frames, 2), dtype=np.float32)
    for t in range(fr.n_frames):
        out[t] = tracker(cols[t])
    return out


def yin_time_loop(fr: DecodedClip, size: int) -> np.ndarray:
    es = essentia_standard()
    tracker = es.PitchYin(frameSize=size, sampleRate=fr.sample_rate, minFrequency=F0_MIN,
                          maxFrequency=F0_MAX)
    frames = framed(fr.y, size, fr.n_frames)
    out = np.empty((fr.n_frames, 2), dtype=np.float32)
    for t in range(fr.n_frames):
        out[t] = tracker(np.ascontiguousarray(frames[t]))
    return out


def yin_probabilistic(fr: DecodedClip) -> np.ndarray:
    es = essentia_standard()
    pitch, prob = es.PitchYinProbabilistic(frameSize=2048, hopSize=fr.hop,
                                           sampleRate=fr.sample_rate)(fr.y)
    return fit_frames(np.stack([pitch, prob], axis=1), fr.n_frames)


def librosa_yin(fr: DecodedClip) -> np.ndarray:
    import librosa

    f0 = librosa.yin(fr.y, fmin=F0_MIN, fmax=F0_MAX, sr=fr.sample_rate, frame_length=2048,
                     hop_length=fr.hop, center=True)
    return fit_frames(f0, fr.n_frames)


def essentia_chromagram(fr: DecodedClip) -> np.ndarray:
    es = essentia_standard()
    size = 16384  # what its ConstantQ demands at 16 kHz for 32.7 Hz
    chroma = es.Chromagram(sampleRate=fr.sample_rate, minFrequency=CQT_FMIN, numberBins=CQT_BINS,
                           binsPerOctave=12, normalizeType="unit_max")
    frames = framed(fr.y, size, fr.n_frames)
    out = np.empty((fr.n_frames, 12), dtype=np.float32)
    for t in range(fr.n_frames):
        out[t] = chroma(np.ascontiguousarray(frames[t]))
    return out


def nsg_cqt(fr: DecodedClip) -> np.ndarray:
    """essentia NSGConstantQ magnitude, resampled from its own time grid to ours."""
    es = essentia_standard()
    cq, _, _ = es.NSGConstantQ(
        inputSize=len(fr.y), minFrequency=CQT_FMIN,
        maxFrequency=CQT_FMIN * 2 ** ((CQT_BINS - 1) / 12), binsPerOctave=12,
        sampleRate=fr.sample_rate, rasterize="full", phaseMode="global", gamma=0,
        normalize="none", window="hannnsgcq",
    )(fr.y)
    cols = np.minimum(np.arange(fr.n_frames) * fr.hop * cq.shape[1] // len(fr.y),
                      cq.shape[1] - 1)
    return np.log(np.abs(cq[:, cols]) + 1e-6).T


def onset_env(fr: DecodedClip) -> np.ndarray:
    return REGISTRY["onset"]()(fr)[:, 0]


def fourier_tempogram(fr: DecodedClip, win: int = 192) -> np.ndarray:
    import librosa

    tg = librosa.feature.fourier_tempogram(onset_envelope=onset_env(fr), sr=fr.sample_rate,
                                           hop_length=fr.hop, win_length=win)
    return fit_frames(np.abs(tg), fr.n_frames, axis=1).T


def autocorr_tempogram(fr: DecodedClip) -> np.ndarray:
    import librosa

    return librosa.feature.tempogram(onset_envelope=onset_env(fr), sr=fr.sample_rate,
                                     hop_length=fr.hop, win_length=192).T


def gammatone_iir(fr: DecodedClip, n_bands: int = 40, fmin: float = 100.0, win: int = 2048):
    """Time-domain gammatone filterbank (scipy.signal.gammatone IIR filters, one
    ``lfilter`` per band), frame energy over ``win`` samples centred on each frame, log."""
    import scipy.signal

    from featurestore.targets.spectral import erb_space

    centres = erb_space(fmin, 0.9 * fr.sample_rate / 2.0, n_bands)
    ypad = np.pad(fr.y.astype(np.float64), (win // 2, win // 2))
    starts = np.arange(fr.n_frames) * fr.hop
    out = np.empty((n_bands, fr.n_frames))
    for k, fc in enumerate(centres):
        b, a = scipy.signal.gammatone(fc, "iir", fs=fr.sample_rate)
        x = scipy.signal.lfilter(b, a, ypad)
        c = np.concatenate([[0.0], np.cumsum(x * x)])
        out[k] = (c[starts + win] - c[starts]) / win
    return np.log(np.sqrt(out) + 1e-6).T


def gammatone_heeris(fr: DecodedClip) -> np.ndarray:
    """The ``gammatone`` package's ``gtgram`` (Slaney/Ellis ERB filterbank in the time
    domain, as PASE uses), 40 bands from 100 Hz, 128 ms windows, 10 ms hop."""
    from gammatone.gtgram import gtgram

    ypad = np.pad(fr.y, (1024, 1024))
    g = gtgram(ypad, fr.sample_rate, 2048 / fr.sample_rate, fr.hop / fr.sample_rate, 40, 100.0)
    return fit_frames(np.log(g + 1e-6), fr.n_frames, axis=1).T


@dataclass
class Alt:
    family: str
    name: str
    library: str
    fn: Callable[[DecodedClip], Any]
    note: str = ""
    needs: str = ""  # a module that must import
    target: str = ""  # a registered target: its per-target figures are reused

    def available(self) -> bool:
        if not self.needs:
            return True
        try:
            __import__(self.needs)
        except ImportError:
            return False
        return True


def alternatives(with_pyin: bool) -> list[Alt]:
    import librosa

    from featurestore.targets.pitch import yin_from_power

    sr = SAMPLE_RATE
    alts = [
        Alt("chroma", "chroma_stft(S=power 1024, tuning=0)", "librosa",
            lambda fr: librosa.feature.chroma_stft(S=fr.power(1024), sr=sr, tuning=0.0),
            "the `chroma` target"),
        Alt("chroma", "chroma_stft(S=power 1024), tuning estimated", "librosa",
            lambda fr: librosa.feature.chroma_stft(S=fr.power(1024), sr=sr)),
        Alt("chroma", "chroma_cqt(C=shared CQT)", "librosa",
            lambda fr: librosa.feature.chroma_cqt(
                C=fr.cqt(CQT_BINS, 12, CQT_FMIN), sr=sr, bins_per_octave=12)),
        Alt("chroma", "SpectralPeaks + HPCP on shared magnitude", "essentia", lambda fr: None,
            "the `hpcp` target", target="hpcp"),
        Alt("chroma", "Chromagram (constant-Q, 16384-sample frames)", "essentia",
            essentia_chromagram),
        Alt("F0", "librosa.yin (frame 2048)", "librosa", librosa_yin),
        Alt("F0", "PitchYinFFT on shared magnitude 1024", "essentia",
            lambda fr: yin_fft_loop(fr, 1024), "`prosody` with f0_method PitchYinFFT"),
        Alt("F0", "numpy YIN (`yin_from_power`) on shared power 1024", "numpy",
            lambda fr: yin_from_power(fr.power(1024), sr, F0_MIN, F0_MAX),
            "what `prosody` runs (f0_method yin): one batched DCT-I"),
        Alt("F0", "PitchYinFFT on magnitude 2048", "essentia", lambda fr: yin_fft_loop(fr, 2048)),
        Alt("F0", "PitchYin (time domain, frame 2048)", "essentia",
            lambda fr: yin_time_loop(fr, 2048), "O(frame^2) per frame"),
        Alt("F0", "PitchYinProbabilistic (frame 2048, hop 160)", "essentia", yin_probabilistic,
            "wrong pitches in this build: see f0_quality"),
        Alt("F0", "PredominantPitchMelodia (+ EqualLoudness)", "essentia", lambda fr: None,
            "the `melody` target", target="melody"),
        Alt("CQT", "librosa.cqt (84 bins, hop 160)", "librosa",
            lambda fr: fr.cqt(CQT_BINS, 12, CQT_FMIN), "the `cqt` target's intermediate"),
        Alt("CQT", "librosa.hybrid_cqt", "librosa",
            lambda fr: librosa.hybrid_cqt(fr.y, sr=sr, hop_length=HOP, fmin=CQT_FMIN,
                                          n_bins=CQT_BINS, tuning=0.0)),
        Alt("CQT", "librosa.pseudo_cqt", "librosa",
            lambda fr: librosa.pseudo_cqt(fr.y, sr=sr, hop_length=HOP, fmin=CQT_FMIN,
                                          n_bins=CQT_BINS, tuning=0.0)),
        Alt("CQT", "NSGConstantQ, resampled to hop 160", "essentia", nsg_cqt),
        Alt("tempogram", "tempogram (autocorrelation, 192 lags)", "librosa",
            autocorr_tempogram, "the `tempogram` target"),
        Alt("tempogram", "fourier_tempogram (win 192, 97 bins, magnitude)", "librosa",
            fourier_tempogram),
        Alt("tempogram", "fourier_tempogram (win 384, 193 bins, magnitude)", "librosa",
            lambda fr: fourier_tempogram(fr, 384)),
        Alt("gammatone", "gtn_long: gammatone weights on magnitude 2048 (FFT domain)", "numpy",
            lambda fr: None, "the `gtn_long` target", target="gtn_long"),
        Alt("gammatone", "scipy.signal.gammatone IIR, 40 lfilter bands (time domain)", "scipy",
            gammatone_iir),
        Alt("gammatone", "gammatone.gtgram (Slaney/Ellis, time domain)", "gammatone",
            gammatone_heeris, "`pip install --no-deps gammatone`", needs="gammatone"),
    ]
    if with_pyin:
        alts.insert(6, Alt("F0", "librosa.pyin (frame 2048)", "librosa", lambda fr: None,
                           "the `pyin` target", target="pyin"))
    return [a for a in alts if a.available() and (not a.target or a.target in REGISTRY)]


def run_defaults(fr: DecodedClip, default: list[Target], skip: str = "") -> None:
    for t in default:
        if t.name != skip:
            t(fr)


def prosody_ab(args: argparse.Namespace) -> None:
    """``prosody`` with each ``f0_method``, interleaved clip by clip in this process: the
    target alone, on top of the rest of the default set, and the whole default set."""
    clips, paths = benchlib.load_clips(args.clips + 1, args.files)
    methods = ("yin", "PitchYinFFT")
    default = resolve("default")
    variants: dict[str, list[Target]] = {}
    for m in methods:
        t = REGISTRY["prosody"]()
        t.params = dataclasses.replace(t.params, f0_method=m)  # type: ignore[misc]
        variants[m] = [t if d.name == "prosody" else d for d in default]
    rows = ("prosody alone", "prosody marginal on the default set", "default set")
    ms: dict[tuple[str, str], list[float]] = {(r, m): [] for r in rows for m in methods}
    loads = []
    for k, y in enumerate(clips):
        loads.append(benchlib.wait_until_quiet(args.quiet_wait))
        print(f"clip {k}/{len(clips) - 1}{' (warm-up)' if k == 0 else ''}: {paths[k]}",
              file=sys.stderr, flush=True)
        for m in (methods if k % 2 == 0 else methods[::-1]):  # alternate which goes first
            targets = variants[m]
            prosody = next(t for t in targets if t.name == "prosody")
            fr = fresh(y)
            alone = cpu_time(lambda fr=fr, t=prosody: t(fr))[0]
            fr = fresh(y)
            run_defaults(fr, targets, skip="prosody")
            marginal = cpu_time(lambda fr=fr, t=prosody: t(fr))[0]
            fr = fresh(y)
            whole = cpu_time(lambda fr=fr, ts=targets: run_defaults(fr, ts))[0]
            if k > 0:
                for row, sec in zip(rows, (alone, marginal, whole), strict=True):
                    ms[(row, m)].append(1000.0 * sec)
    text = "\n".join([
        "# targets_speed --prosody-ab", "", benchlib.machine_line(), "",
        f"{len(clips) - 1} timed clips of {CLIP_SECONDS:.0f} s (after 1 warm-up clip), CPU ms "
        "per clip, median (min-max); one thread; the two methods interleaved, alternating "
        f"which runs first. Other processes kept {min(loads):.2f}-{max(loads):.2f} cores busy "
        f"just before each clip (after waiting up to {args.quiet_wait:.0f} s for quiet).", "",
        table(["what", *[f"f0_method {m}" for m in methods], "x RT (yin)"],
              [[row, *[f"{median(ms[(row, m)]):.1f} ({min(ms[(row, m)]):.0f}-"
                       f"{max(ms[(row, m)]):.0f})" for m in methods],
                xrt(median(ms[(row, "yin")]))] for row in rows]),
        "", "Clips: " + ", ".join(Path(p).name for p in paths[1:]), "",
    ])
    benchlib.write_report(text, args.out)
    print(f"(written to {args.out})", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_clip_args(parser, 10)
    parser.add_argument("--no-pyin", action="store_true",
                        help="skip librosa.pyin (about 12 s per clip)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each clip, wait up to this many seconds for the machine's "
                             "other processes to drop below 0.3 busy cores")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the report here (default .benchmarks/targets_speed.md, "
                             "with --prosody-ab .benchmarks/targets_speed_prosody_ab.md)")
    parser.add_argument("--prosody-ab", action="store_true",
                        help="only prosody with f0_method yin vs PitchYinFFT, interleaved: "
                             "alone, marginal, and the whole default set")
    args = parser.parse_args(argv)
    if args.prosody_ab:
        args.out = args.out or benchlib.CACHE / "targets_speed_prosody_ab.md"
        prosody_ab(args)
        return
    args.out = args.out or benchlib.CACHE / "targets_speed.md"

    from featurestore.audio import decode
    from featurestore.extract import Moments, to_storage

    clips, paths = benchlib.load_clips(args.clips + 1, args.files)
    warm, timed = clips[0], clips[1:]
    everything = [t for t in resolve("all") if not (args.no_pyin and t.name == "pyin")]
    default = resolve("default")
    alts = alternatives(not args.no_pyin)

    alone: dict[str, list[float]] = {t.name: [] for t in everything}
    marginal: dict[str, list[float]] = {t.name: [] for t in everything}
    in_order: dict[str, list[float]] = {t.name: [] for t in default}
    shared_by: dict[str, bool] = {}
    totals: dict[str, list[float]] = {k: [] for k in (
        "default", "default+store", "fourier", "decode")}
    inter: dict[str, list[float]] = {}
    alt_alone: dict[str, list[float]] = {a.name: [] for a in alts}
    alt_marg: dict[str, list[float]] = {a.name: [] for a in alts}

    def intermediates(fr: DecodedClip) -> dict[str, Callable[[], Any]]:
        return {
            "STFT n_fft 1024 (complex)": lambda: fr.stft(1024),
            "magnitude 1024 (from STFT)": lambda: fr.magnitude(1024),
            "power 1024 (from magnitude)": lambda: fr.power(1024),
            "mel 80 (from power)": lambda: fr.mel_power(1024, 80, 0.0, None),
            "magnitude 2048 (own STFT)": lambda: fr.magnitude(2048),
            f"CQT {CQT_BINS} bins (librosa.cqt)": lambda: fr.cqt(CQT_BINS, 12, CQT_FMIN),
        }

    loads = []
    for k, y in enumerate([warm, *timed]):
        record = k > 0
        loads.append(benchlib.wait_until_quiet(args.quiet_wait))
        print(f"clip {k}/{len(timed)}{' (warm-up)' if not record else ''}: {paths[k]}",
              file=sys.stderr, flush=True)

        def keep(store: dict[str, list[float]], key: str, seconds: float,
                 _record: bool = record) -> None:
            if _record:
                store.setdefault(key, []).append(seconds * 1000.0)

        fr = fresh(y)
        for name, fn in intermediates(fr).items():
            keep(inter, name, cpu_time(fn)[0])
        # Each target alone, on a fresh DecodedClip.
        for t in everything:
            fr = fresh(y)
            keep(alone, t.name, cpu_time(lambda t=t, fr=fr: t(fr))[0])
            shared_by[t.name] = bool(fr.asked)
        # The default set in registry order, as extract runs it.
        fr = fresh(y)
        for t in default:
            keep(in_order, t.name, cpu_time(lambda t=t, fr=fr: t(fr))[0])
        # Marginal: every other default target first, then this one.
        for t in everything:
            if not shared_by[t.name]:
                keep(marginal, t.name, alone[t.name][-1] / 1000.0 if record else 0.0)
                continue
            fr = fresh(y)
            run_defaults(fr, default, skip=t.name)
            keep(marginal, t.name, cpu_time(lambda t=t, fr=fr: t(fr))[0])
        # The default set as a whole; with the store's cast and moments; with the
        # Fourier tempogram in place of the autocorrelation one.
        fr = fresh(y)
        keep(totals, "default", cpu_time(lambda fr=fr: run_defaults(fr, default))[0])

        def as_stored(fr: DecodedClip) -> None:
            for t in default:
                x = to_storage(t(fr), t.dtype)
                Moments.of(x)

        fr = fresh(y)
        keep(totals, "default+store", cpu_time(lambda fr=fr: as_stored(fr))[0])
        fr = fresh(y)
        keep(totals, "fourier", cpu_time(
            lambda fr=fr: (run_defaults(fr, default, skip="tempogram"), fourier_tempogram(fr)))[0])
        keep(totals, "decode", cpu_time(
            lambda k=k: next(decode(paths[k], SAMPLE_RATE, max_seconds=CLIP_SECONDS)))[0])
        # Alternatives: alone, and on top of the default set.
        for a in alts:
            if a.target:
                continue
            fr = fresh(y)
            keep(alt_alone, a.name, cpu_time(lambda a=a, fr=fr: a.fn(fr))[0])
            used_shared = bool(fr.asked)
            if used_shared:
                fr = fresh(y)
                run_defaults(fr, default)
                keep(alt_marg, a.name, cpu_time(lambda a=a, fr=fr: a.fn(fr))[0])
            elif record:
                alt_marg[a.name].append(alt_alone[a.name][-1])

    for a in alts:
        if a.target:
            alt_alone[a.name], alt_marg[a.name] = alone[a.target], marginal[a.target]
    med = {n: median(v) for n, v in alone.items()}
    mmed = {n: median(v) for n, v in marginal.items()}
    omed = {n: median(v) for n, v in in_order.items()}
    report = [
        "# targets_speed", "",
        benchlib.machine_line(), "",
        f"{len(timed)} timed clips of {CLIP_SECONDS:.0f} s at {SAMPLE_RATE} Hz, hop {HOP} "
        f"(after 1 warm-up clip), CPU ms per clip, median; one thread. x real time = "
        "audio-seconds per CPU-second per core. Other processes kept "
        f"{min(loads):.2f}-{max(loads):.2f} cores busy just before each clip "
        f"(after waiting up to {args.quiet_wait:.0f} s for quiet).", "",
        "## Per target", "",
        table(["target", "dims", "rate", "library", "default", "ms alone", "x RT alone",
               "ms in order (default run)", "ms marginal in default set", "x RT marginal"],
              [[f"`{t.name}`", t.dim, t.rate, t.library, "yes" if t.default else "",
                f"{med[t.name]:.1f}", xrt(med[t.name]),
                f"{omed[t.name]:.1f}" if t.name in omed else "",
                f"{mmed[t.name]:.1f}", xrt(mmed[t.name])] for t in everything]),
        "",
        "## Default set and decoding", "",
        table(["what", "ms per clip", "x real time", "spread (min-max ms)"],
              [[label, f"{median(totals[key]):.1f}", xrt(median(totals[key])),
                f"{min(totals[key]):.0f}-{max(totals[key]):.0f}"]
               for label, key in [
                   ("`resolve('default')` on one DecodedClip", "default"),
                   ("... plus cast to storage dtype and moments (what extract does)",
                    "default+store"),
                   ("default set with `fourier_tempogram` (win 192) instead of `tempogram`",
                    "fourier"),
                   ("decode first 30 s of the .ogg (libsndfile + soxr HQ to 16 kHz)",
                    "decode"),
               ]]),
        "",
        f"Sum of the in-order column: {sum(omed.values()):.1f} ms.", "",
        "## Shared intermediates (each on top of the ones above it)", "",
        table(["intermediate", "ms per clip"], [[k, f"{median(v):.1f}"] for k, v in inter.items()]),
        "",
        "## Library alternatives", "",
        "alone: a fresh DecodedClip (pays its own STFT/CQT/onset envelope); on top of default: "
        "the default set already computed on the same DecodedClip.", "",
        table(["family", "implementation", "library", "ms alone", "x RT alone",
               "ms on top of default", "note"],
              [[a.family, a.name, a.library, f"{median(alt_alone[a.name]):.1f}",
                xrt(median(alt_alone[a.name])), f"{median(alt_marg[a.name]):.1f}", a.note]
               for a in alts]),
        "",
        "Clips: " + ", ".join(Path(p).name for p in paths[1:]), "",
    ]
    text = "\n".join(report)
    benchlib.write_report(text, args.out)
    print(f"(written to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
