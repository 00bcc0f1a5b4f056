"""Cheaper constant-Q transforms for the ``cqt`` target, measured against ``librosa.cqt``.

The ``cqt`` target is 84 bins from C1 (32.7 Hz), 12 per octave, on the store's grid (16 kHz,
hop 160, frame ``t`` centred on sample ``t * hop``). Every candidate computes that magnitude;
each is judged against ``librosa.cqt`` (``tuning=0``, librosa's defaults otherwise: what
the target computed before issue 12) on

- pure tones, one per bin from C1 to B7, on the bin and 25 and 50 cents above it: the
  argmax bin (of the mean over interior frames) must be librosa's;
- real music (30 s clips at 16 kHz): the log-CQT as the target stores it,
  ``log(|C| + 1e-6)``, correlated with librosa's per clip (r >= 0.99 to qualify), its
  mean and 99.9th-percentile absolute difference in log units, and the lag (frames) that
  best aligns its per-frame energy with librosa's (0: same grid).

Times are CPU ms per 30 s clip (``time.process_time``, one thread), the median over the
timed clips after one warm-up clip (which builds any cached filter bank); the candidates
run interleaved, in a rotating order, on each clip, so background load hits them alike.

    nice -n 5 python benchmarks/cqt_speed.py                   # 1 warm-up + 8 timed clips
    nice -n 5 python benchmarks/cqt_speed.py --clips 5 --no-pseudo --out /tmp/cqt.md
    nice -n 5 python benchmarks/cqt_speed.py --quiet-wait 45 --default-set  # + whole set A/B
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib  # before numpy: pins numeric libraries to one thread
import numpy as np
from benchlib import CLIP_SECONDS, HOP, SAMPLE_RATE, median, table, xrt

from featurestore.targets import REGISTRY, DecodedClip, fit_frames
from featurestore.targets.base import _cqt_octaves, _halve

PARAMS = REGISTRY["cqt"].params
FMIN, N_BINS, BPO = PARAMS.fmin, PARAMS.n_bins, PARAMS.bins_per_octave
FLOOR = 1e-6  # the target's log floor
TONE_SECONDS = 3.0
TONE_MARGIN = 60  # frames: C1's wavelet is ~8,000 samples (50 frames) long
OFFSETS_CENTS = (0, 25, 50)


# --------------------------------------------------------------------------- candidates


def librosa_cqt(**options: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``|librosa.cqt|`` with the target's parameters and the given overrides."""
    import librosa

    def run(y: np.ndarray) -> np.ndarray:
        c = librosa.cqt(y, sr=SAMPLE_RATE, hop_length=HOP, fmin=FMIN, n_bins=N_BINS,
                        bins_per_octave=BPO, tuning=0.0, **options)
        return np.abs(c)

    return run


def librosa_cqt_cached_basis() -> Callable[[np.ndarray], np.ndarray]:
    """``librosa.cqt`` with its per-octave filter FFT (``__vqt_filter_fft``) memoised.

    librosa caches it only through joblib on disk, and only when ``LIBROSA_CACHE_DIR`` is
    set; by default it rebuilds the whole filter bank on every call. This patches the
    module function for the duration of the call (returning copies: librosa scales the
    basis in place).
    """
    from librosa.core import constantq

    name = "__vqt_filter_fft"
    original = getattr(constantq, name)
    memo: dict[tuple[Any, ...], tuple[Any, int, np.ndarray]] = {}

    def cached(sr: float, freqs: np.ndarray, filter_scale: float, norm: Any, sparsity: float,
               hop_length: Any = None, window: Any = "hann", gamma: float = 0.0,
               dtype: Any = np.complex64, alpha: Any = None) -> tuple[Any, int, np.ndarray]:
        key = (sr, freqs.tobytes(), filter_scale, norm, sparsity, hop_length, str(window),
               gamma, np.dtype(dtype).str, None if alpha is None else alpha.tobytes())
        if key not in memo:
            memo[key] = original(sr, freqs, filter_scale, norm, sparsity, hop_length=hop_length,
                                 window=window, gamma=gamma, dtype=dtype, alpha=alpha)
        basis, n_fft, lengths = memo[key]
        return basis.copy(), n_fft, lengths.copy()

    plain = librosa_cqt()

    def run(y: np.ndarray) -> np.ndarray:
        setattr(constantq, name, cached)
        try:
            return plain(y)
        finally:
            setattr(constantq, name, original)

    return run


def librosa_other(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """``librosa.hybrid_cqt`` or ``librosa.pseudo_cqt`` (both return magnitudes)."""
    import librosa

    fn = getattr(librosa, kind)

    def run(y: np.ndarray) -> np.ndarray:
        return np.abs(fn(y, sr=SAMPLE_RATE, hop_length=HOP, fmin=FMIN, n_bins=N_BINS,
                         bins_per_octave=BPO, tuning=0.0))

    return run


def multires_stft() -> Callable[[np.ndarray], np.ndarray]:
    """Octave-wise STFT + constant-Q filter bank, cached: per octave, the real FFT of the
    (halved) signal's frames (box window, as librosa) times librosa's half-spectrum basis,
    a dense complex64 matrix recovered from the adopted time-domain kernels."""
    import scipy.fft

    factor, octaves = _cqt_octaves(SAMPLE_RATE, HOP, N_BINS, BPO, FMIN)
    bases = []
    for octave in octaves:
        n = octave.kernel.shape[0] // 2
        h = octave.kernel[:n].astype(np.float64) + 1j * octave.kernel[n:]
        bases.append(np.fft.ifft(h, axis=1)[:, : octave.n_fft // 2 + 1].astype(np.complex64))
    assert factor == 1  # no early down-sampling at the target's parameters

    def run(y: np.ndarray) -> np.ndarray:
        n_cols = 1 + len(y) // HOP
        out = np.empty((N_BINS, n_cols), dtype=np.float32)
        sig = y
        for octave, basis in zip(octaves, bases, strict=True):
            half = octave.n_fft // 2
            frames = np.lib.stride_tricks.sliding_window_view(np.pad(sig, (half, half)),
                                                              octave.n_fft)[:: octave.hop]
            spec = scipy.fft.rfft(frames[:n_cols], axis=1)
            out[octave.top - basis.shape[0]: octave.top] = np.abs(basis @ spec.T)
            if octave.halve_after:
                sig = _halve(sig)
        return out

    return run


def adopted(y: np.ndarray) -> np.ndarray:
    """What the ``cqt`` target now runs: ``DecodedClip.cqt`` (cached time-domain kernels)."""
    return DecodedClip(y, SAMPLE_RATE, HOP).cqt(N_BINS, BPO, FMIN)


def librosa_decoded_cqt(self: DecodedClip, n_bins: int, bins_per_octave: int,
                        fmin: float) -> np.ndarray:
    """``DecodedClip.cqt`` as it was before issue 12 (``librosa.cqt``), for the A/B."""
    def make() -> np.ndarray:
        c = librosa_cqt()(self.y)
        return fit_frames(c.astype(np.float32), self.n_frames, axis=1)

    assert (n_bins, bins_per_octave, fmin) == (N_BINS, BPO, FMIN)
    return self.memo(("cqt", n_bins, bins_per_octave, fmin), make)


def default_set_ab(clips: list[np.ndarray]) -> list[list[Any]]:
    """CPU ms per clip of ``resolve('default')`` on one ``DecodedClip``, with the adopted
    CQT and with ``librosa.cqt``, interleaved (alternating which runs first); clip 0 is the
    warm-up. Rows for :func:`benchlib.table`."""
    from featurestore.targets import resolve

    adopted_cqt = DecodedClip.cqt
    targets = list(resolve("default"))
    times: dict[str, list[float]] = {"adopted": [], "librosa.cqt": []}
    try:
        for i, y in enumerate(clips):
            for which in (("adopted", "librosa.cqt") if i % 2 else ("librosa.cqt", "adopted")):
                DecodedClip.cqt = adopted_cqt if which == "adopted" else librosa_decoded_cqt
                t0 = time.process_time()
                clip = DecodedClip(y, SAMPLE_RATE, HOP)
                for target in targets:
                    target(clip)
                if i > 0:
                    times[which].append(time.process_time() - t0)
    finally:
        DecodedClip.cqt = adopted_cqt
    rows = []
    for which, ts in times.items():
        ms = median(ts) * 1000
        rows.append([f"default set, `cqt` by {which}", f"{ms:.1f}", xrt(ms),
                     f"{min(ts) * 1000:.0f}-{max(ts) * 1000:.0f}"])
    return rows


def halving_only(y: np.ndarray) -> np.ndarray:
    """The six soxr halvings the adopted CQT does (a part of its cost, for the record)."""
    for _ in range(6):
        y = _halve(y)
    return y


@dataclass
class Candidate:
    name: str
    run: Callable[[np.ndarray], np.ndarray]
    note: str = ""
    judged: bool = True  # False: a cost breakdown row, not a CQT


def candidates(pseudo: bool) -> list[Candidate]:
    out = [
        Candidate("librosa.cqt (soxr_hq, sparsity 0.01): reference", librosa_cqt(),
                  "what the target ran before"),
        Candidate("librosa.cqt res_type=soxr_mq", librosa_cqt(res_type="soxr_mq")),
        Candidate("librosa.cqt res_type=soxr_lq", librosa_cqt(res_type="soxr_lq")),
        Candidate("librosa.cqt res_type=polyphase", librosa_cqt(res_type="polyphase")),
        Candidate("librosa.cqt res_type=fft", librosa_cqt(res_type="fft")),
        Candidate("librosa.cqt sparsity=0", librosa_cqt(sparsity=0.0)),
        Candidate("librosa.cqt sparsity=0.1", librosa_cqt(sparsity=0.1)),
        Candidate("librosa.cqt scale=False", librosa_cqt(scale=False),
                  "other values by design (no 1/sqrt(length))"),
        Candidate("librosa.cqt, filter FFT memoised", librosa_cqt_cached_basis(),
                  "librosa's algorithm, basis built once"),
        Candidate("librosa.hybrid_cqt", librosa_other("hybrid_cqt")),
    ]
    if pseudo:
        out.append(Candidate("librosa.pseudo_cqt", librosa_other("pseudo_cqt")))
    out += [
        Candidate("octave-wise STFT + CQ filter bank (cached, complex64)", multires_stft(),
                  "rfft per octave, dense product"),
        Candidate("time-domain kernels, cached, float32 (adopted)", adopted,
                  "one sgemm per octave"),
        Candidate("... of which: 6 soxr_hq halvings", halving_only,
                  "part of the row above", judged=False),
    ]
    return out


# --------------------------------------------------------------------------- quality


def log_cqt(c: np.ndarray, n_frames: int) -> np.ndarray:
    return np.log(fit_frames(np.asarray(c, dtype=np.float32), n_frames, axis=1) + FLOOR)


def tone(freq: float) -> np.ndarray:
    t = np.arange(round(TONE_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def tone_peaks(run: Callable[[np.ndarray], np.ndarray]) -> dict[int, np.ndarray]:
    """For each offset (cents), the argmax bin of every tone C1 + k semitones + offset."""
    out = {}
    n_frames = round(TONE_SECONDS * SAMPLE_RATE) // HOP
    for cents in OFFSETS_CENTS:
        peaks = []
        for k in range(N_BINS):
            freq = FMIN * 2 ** ((k + cents / 100) / BPO)
            c = fit_frames(run(tone(freq)), n_frames, axis=1)[:, TONE_MARGIN:-TONE_MARGIN]
            peaks.append(int(np.argmax(c.mean(axis=1))))
        out[cents] = np.array(peaks)
    return out


def best_lag(a: np.ndarray, b: np.ndarray, max_lag: int = 5) -> int:
    """The shift (frames) of ``a``'s per-frame energy that best matches ``b``'s."""
    ea, eb = a.mean(axis=0), b.mean(axis=0)
    n = len(ea)
    scores = {}
    for lag in range(-max_lag, max_lag + 1):
        x = ea[max_lag + lag: n - max_lag + lag]
        y = eb[max_lag: n - max_lag]
        scores[lag] = float(np.corrcoef(x, y)[0, 1])
    return max(scores, key=lambda k: scores[k])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_clip_args(parser, n_clips=8)
    parser.add_argument("--no-pseudo", action="store_true",
                        help="skip librosa.pseudo_cqt (~0.85 s per clip)")
    parser.add_argument("--default-set", action="store_true",
                        help="also time the whole default set with each CQT (interleaved)")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="before each clip, wait up to S seconds for the rest of the "
                             "machine to drop below 0.3 busy cores (default 0: don't wait)")
    parser.add_argument("--out", type=Path, default=benchlib.CACHE / "cqt_speed.md",
                        help="where to write the report (default .benchmarks/cqt_speed.md)")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    clips, paths = benchlib.load_clips(args.clips + 1, args.files)
    cands = candidates(pseudo=not args.no_pseudo)
    n_frames = clips[0].size // HOP
    times: dict[str, list[float]] = {c.name: [] for c in cands}
    r: dict[str, list[float]] = {c.name: [] for c in cands}
    mad: dict[str, list[float]] = {c.name: [] for c in cands}
    p999: dict[str, list[float]] = {c.name: [] for c in cands}
    lags: dict[str, set[int]] = {c.name: set() for c in cands}
    other_load = []
    for i, y in enumerate(clips):
        order = cands[i % len(cands):] + cands[: i % len(cands)]
        outputs = {}
        if args.quiet_wait > 0:
            benchlib.wait_until_quiet(args.quiet_wait)
        wall0, busy0, own0 = time.perf_counter(), benchlib.busy_cpu_seconds(), time.process_time()
        for cand in order:
            t0 = time.process_time()
            outputs[cand.name] = cand.run(y)
            if i > 0:  # clip 0 is the warm-up
                times[cand.name].append(time.process_time() - t0)
        wall = time.perf_counter() - wall0
        busy = benchlib.busy_cpu_seconds() - busy0 - (time.process_time() - own0)
        other_load.append(max(0.0, busy / wall))
        ref = log_cqt(outputs[cands[0].name], n_frames)
        for cand in cands:
            if not cand.judged:
                continue
            got = log_cqt(outputs[cand.name], n_frames)
            diff = np.abs(got - ref)
            r[cand.name].append(float(np.corrcoef(got.ravel(), ref.ravel())[0, 1]))
            mad[cand.name].append(float(diff.mean()))
            p999[cand.name].append(float(np.quantile(diff, 0.999)))
            lags[cand.name].add(best_lag(got, ref))
        print(f"clip {i}/{len(clips) - 1} {Path(paths[i]).name}: other load "
              f"{other_load[-1]:.2f} cores", flush=True)

    print("tones ...", flush=True)
    ref_peaks = tone_peaks(cands[0].run)
    expected = np.arange(N_BINS)
    rows = []
    base_ms = median(times[cands[0].name]) * 1000
    for cand in cands:
        ms = median(times[cand.name]) * 1000
        if cand.judged:
            peaks = ref_peaks if cand is cands[0] else tone_peaks(cand.run)
            agree = " / ".join(f"{int(np.sum(peaks[c] == ref_peaks[c]))}" for c in OFFSETS_CENTS)
            on_bin = int(np.sum(peaks[0] == expected))
            quality = [agree, on_bin, f"{min(r[cand.name]):.6f}",
                       f"{np.mean(mad[cand.name]):.2g}", f"{max(p999[cand.name]):.2g}",
                       ",".join(str(x) for x in sorted(lags[cand.name]))]
            ok = (all(np.array_equal(peaks[c], ref_peaks[c]) for c in OFFSETS_CENTS)
                  and min(r[cand.name]) >= 0.99 and lags[cand.name] == {0})
            verdict = "yes" if ok and ms * 1.5 <= base_ms else ("quality only" if ok else "no")
            verdict = "(reference)" if cand is cands[0] else verdict
        else:
            quality, verdict = ["", "", "", "", "", ""], ""
        rows.append([cand.name, f"{ms:.1f}", xrt(ms), f"{base_ms / ms:.2f}x", *quality, verdict,
                     cand.note])

    n_timed = len(clips) - 1
    extra = []
    if args.default_set:
        print("default set ...", flush=True)
        extra = ["Default set (`resolve('default')`, registry order, one `DecodedClip`), "
                 "CPU ms per clip, median (min-max):", "",
                 table(["what", "ms per clip", "x real time", "range ms"], default_set_ab(clips)),
                 ""]
    text = "\n".join([
        "# CQT alternatives (`cqt_speed.py`)", "",
        benchlib.machine_line(), "",
        f"Load average at start: {', '.join(f'{x:.2f}' for x in load_start)}; other processes "
        f"kept {median(other_load):.2f} cores busy (median over clips; "
        f"range {min(other_load):.2f}-{max(other_load):.2f}).",
        f"{n_timed} timed clips of {CLIP_SECONDS:.0f} s at {SAMPLE_RATE} Hz (after a warm-up "
        f"clip): {', '.join(Path(p).stem for p in paths[1:])}. CQT: {N_BINS} bins from "
        f"{FMIN:.3f} Hz, {BPO} per octave, hop {HOP}.",
        "",
        "Tones: one per bin C1..B7 (84) at +0 / +25 / +50 cents; 'argmax = librosa' counts the "
        "tones whose peak bin is librosa.cqt's, 'on bin' the +0 tones peaking at their own "
        "bin. Music: log(|C| + 1e-6) against librosa.cqt's; r = the lowest per-clip "
        "correlation; abs diff in log units (mean over clips of the mean; the largest "
        "per-clip 99.9th percentile); lag = frame shift that best aligns per-frame energy. "
        "'qualifies' = all tones agree, r >= 0.99, lag 0 and >= 1.5x cheaper.",
        "",
        table(["candidate", "ms per clip", "x real time", "speed-up", "argmax = librosa "
               "(+0/+25/+50 c, of 84)", "on bin (of 84)", "min r (log)", "mean abs diff",
               "p99.9 abs diff", "lag", "qualifies", "note"], rows),
        "",
        *extra,
    ])
    benchlib.write_report(text, args.out)
    print(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
