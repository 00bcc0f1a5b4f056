"""The target interface: a declaration (name, dims, rate, library, typed parameters) plus
one ``compute`` method, and :class:`DecodedClip`, a decoded clip with its memo of shared
intermediates.

Every frame-level target lives on one grid: a clip of ``n`` samples has ``n // hop``
frames, frame ``t`` describing the window centred on sample ``t * hop``. Libraries that
return one frame more or fewer are fitted to the grid in :func:`fit_frames`, here and
nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

import numpy as np

from featurestore.store import Loss, Rate, TargetSpec


class DecodedClip:
    """A decoded clip and a memo of intermediates shared between targets.

    Targets ask for intermediates with their own parameters (``clip.magnitude(1024)``);
    equal requests are computed once per clip, so ten targets on one STFT cost one STFT.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float32
        Mono audio in [-1, 1] at ``sample_rate``.
    sample_rate : int
        Samples per second of ``y``.
    hop : int
        Samples between frames; the clip has ``len(y) // hop`` frames.
    """

    def __init__(self, y: np.ndarray, sample_rate: int, hop: int) -> None:
        if y.ndim != 1:
            raise ValueError(f"expected mono audio of shape (n,), got {y.shape}")
        self.y = np.ascontiguousarray(y, dtype=np.float32)
        self.sample_rate = int(sample_rate)
        self.hop = int(hop)
        self.n_frames = len(self.y) // self.hop
        self._memo: dict[Hashable, Any] = {}

    def memo(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """Return ``make()``, computed once per clip for each ``key``."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def stft(self, n_fft: int, win_length: int | None = None) -> np.ndarray:
        """Complex STFT, shape (1 + n_fft // 2, n_frames), Hann window, centred."""
        import librosa

        def make() -> np.ndarray:
            spec = librosa.stft(
                self.y, n_fft=n_fft, hop_length=self.hop, win_length=win_length, center=True
            )
            return fit_frames(spec, self.n_frames, axis=1)

        return self.memo(("stft", n_fft, win_length), make)

    def magnitude(self, n_fft: int, win_length: int | None = None) -> np.ndarray:
        """STFT magnitude, shape (1 + n_fft // 2, n_frames), float32."""
        return self.memo(
            ("magnitude", n_fft, win_length),
            lambda: np.abs(self.stft(n_fft, win_length)).astype(np.float32),
        )

    def power(self, n_fft: int, win_length: int | None = None) -> np.ndarray:
        """STFT power ``|X|**2``, shape (1 + n_fft // 2, n_frames), float32."""
        return self.memo(
            ("power", n_fft, win_length), lambda: np.square(self.magnitude(n_fft, win_length))
        )

    def mel_power(self, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
        """Mel-band power from :meth:`power`, shape (n_mels, n_frames), float32."""
        import librosa

        def make() -> np.ndarray:
            basis = librosa.filters.mel(
                sr=self.sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax
            )
            return (basis @ self.power(n_fft)).astype(np.float32)

        return self.memo(("mel", n_fft, n_mels, fmin, fmax), make)

    def cqt(self, n_bins: int, bins_per_octave: int, fmin: float) -> np.ndarray:
        """Constant-Q magnitude, shape (n_bins, n_frames), float32.

        The values of ``librosa.cqt(y, sr=sample_rate, hop_length=hop, fmin=fmin,
        n_bins=n_bins, bins_per_octave=bins_per_octave, tuning=0.0)`` with librosa's other
        defaults (Hann wavelets, ``filter_scale=1``, ``norm=1``, ``sparsity=0.01``, ``soxr_hq``
        octave halving, ``scale=True``, zero padding), to float32 rounding, at about a fifth
        of its cost: see :func:`constant_q_magnitude`.
        """

        def make() -> np.ndarray:
            c = constant_q_magnitude(
                self.y, self.sample_rate, self.hop, n_bins, bins_per_octave, fmin
            )
            return fit_frames(c, self.n_frames, axis=1)

        return self.memo(("cqt", n_bins, bins_per_octave, fmin), make)


@dataclasses.dataclass(frozen=True, eq=False)
class _CqtOctave:
    """One octave of :func:`constant_q_magnitude`'s filter bank (see :func:`_cqt_octaves`)."""

    kernel: np.ndarray  # (2 * n_filters, n_fft) float32: real parts, then imaginary parts
    n_fft: int
    hop: int
    top: int  # the octave fills output rows [top - n_filters, top)
    halve_after: bool  # the signal is halved before the next octave


@functools.lru_cache(maxsize=16)
def _cqt_octaves(
    sample_rate: int, hop: int, n_bins: int, bins_per_octave: int, fmin: float
) -> tuple[int, tuple[_CqtOctave, ...]]:
    """librosa.cqt's filter bank as time-domain kernels, built once per process.

    Returns the early down-sampling factor (a power of two) and the octaves, top first.
    Every step follows ``librosa.core.constantq.vqt`` (librosa 0.11) with ``gamma=0``,
    ``tuning=0``: frequencies, relative bandwidths, wavelet lengths, the early down-sampling
    rule, each octave's wavelets (``librosa.filters.wavelet``, padded to a power of two),
    their FFT kept to the non-negative frequencies and sparsified at quantile 0.01, the
    ``sqrt(sr / octave_sr)`` gain and the ``1 / sqrt(length)`` scale. librosa applies that
    half-spectrum basis ``F`` to the STFT (box window) of each frame ``x``; the same linear
    map in the time domain is ``h @ x`` with ``h[b, n] = sum_k F[b, k] exp(-2 pi i k n / n_fft)``,
    i.e. ``h = fft(F zero-padded to n_fft)``, which is what is stored.
    """
    import librosa

    freqs = librosa.interval_frequencies(
        n_bins=n_bins, fmin=fmin, intervals="equal", bins_per_octave=bins_per_octave, sort=True
    )
    if n_bins == 1:
        alpha = np.full(1, (2.0 ** (2 / bins_per_octave) - 1) / (2.0 ** (2 / bins_per_octave) + 1))
    else:  # librosa.filters._relative_bandwidth
        logf = np.log2(freqs)
        local_bpo = np.empty_like(freqs)
        local_bpo[0] = 1 / (logf[1] - logf[0])
        local_bpo[-1] = 1 / (logf[-1] - logf[-2])
        local_bpo[1:-1] = 2 / (logf[2:] - logf[:-2])
        alpha = (2.0 ** (2 / local_bpo) - 1) / (2.0 ** (2 / local_bpo) + 1)
    wavelet = {"window": "hann", "filter_scale": 1, "gamma": 0}
    _, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=sample_rate, alpha=alpha, **wavelet)
    nyquist = sample_rate / 2.0
    if cutoff > nyquist:
        raise ValueError(
            f"a CQT with top frequency {freqs[-1]:.1f} Hz needs a band up to {cutoff:.1f} Hz, "
            f"above the Nyquist frequency {nyquist:.1f} Hz; use fewer bins"
        )
    n_octaves = int(np.ceil(n_bins / bins_per_octave))
    twos = (hop & -hop).bit_length() - 1
    early = min(
        max(0, int(np.ceil(np.log2(nyquist / cutoff)) - 1) - 1), max(0, twos - n_octaves + 1)
    )
    sr = sample_rate / 2**early
    my_sr, my_hop = sr, hop // 2**early
    lengths, _ = librosa.filters.wavelet_lengths(freqs=freqs, sr=sr, alpha=alpha, **wavelet)
    n_filters = min(bins_per_octave, n_bins)
    octaves = []
    for i in range(n_octaves):
        sl = slice(-n_filters, None) if i == 0 else slice(-n_filters * (i + 1), -n_filters * i)
        basis, lens = librosa.filters.wavelet(
            freqs=freqs[sl], sr=my_sr, norm=1, pad_fft=True, alpha=alpha[sl], **wavelet
        )
        n_fft = basis.shape[1]
        basis *= lens[:, np.newaxis] / float(n_fft)
        half = np.fft.fft(basis, n=n_fft, axis=1)[:, : n_fft // 2 + 1]
        half = librosa.util.sparsify_rows(half, quantile=0.01, dtype=np.complex64).toarray()
        half *= np.sqrt(sr / my_sr)
        padded = np.zeros((half.shape[0], n_fft), dtype=np.complex128)
        padded[:, : half.shape[1]] = half / np.sqrt(lengths[sl])[:, np.newaxis]
        h = np.fft.fft(padded, axis=1)
        halve = i < n_octaves - 1 and my_hop % 2 == 0
        octaves.append(_CqtOctave(
            kernel=np.ascontiguousarray(np.concatenate([h.real, h.imag]), dtype=np.float32),
            n_fft=n_fft, hop=my_hop, top=n_bins - n_filters * i, halve_after=halve,
        ))
        if halve:
            my_hop //= 2
            my_sr /= 2.0
    return 2**early, tuple(octaves)


def _halve(y: np.ndarray, factor: int = 2) -> np.ndarray:
    """``librosa.resample(y, orig_sr=factor, target_sr=1, res_type="soxr_hq", scale=True)``."""
    import soxr

    if len(y) == 0:
        return y
    out = soxr.resample(y, factor, 1, quality="soxr_hq")
    n = -(-len(y) // factor)
    out = out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))
    return (out * np.sqrt(factor)).astype(y.dtype, copy=False)


def constant_q_magnitude(
    y: np.ndarray, sample_rate: int, hop: int, n_bins: int, bins_per_octave: int, fmin: float,
    block: int = 2048,
) -> np.ndarray:
    """``abs(librosa.cqt(...))`` (``tuning=0``, its other defaults), computed with a cached
    time-domain filter bank.

    librosa's algorithm, octave by octave from the top: the top octave's filters at the
    signal's rate, then, while the hop is even, the signal and the hop are halved
    (soxr, ``soxr_hq``) and the next octave down uses the same short filters. librosa
    rebuilds its filter bank on every call and applies it as an STFT plus a sparse product;
    here each octave's filters are one float32 matrix (:func:`_cqt_octaves`, built once per
    process) applied to the octave's frames with one BLAS product. Same frames (frame ``t``
    centred on sample ``t * hop``, zero padding), same values to float32 rounding.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float32
        Mono audio.
    sample_rate : int
        Samples per second of ``y``.
    hop : int
        Samples between frames.
    n_bins, bins_per_octave : int
        Number of bins, and bins per octave (equal temperament).
    fmin : float
        Centre frequency of bin 0, Hz.
    block : int
        Frames per matrix product (bounds the temporary frame matrix on long clips).

    Returns
    -------
    np.ndarray, shape (n_bins, n_frames), float32
        Magnitudes; ``n_frames = 1 + n_samples // hop``, as librosa returns before
        :func:`fit_frames`.

    Raises
    ------
    ValueError
        If the top bins' filters would reach past the Nyquist frequency.
    """
    factor, octaves = _cqt_octaves(
        int(sample_rate), int(hop), int(n_bins), int(bins_per_octave), float(fmin)
    )
    y = np.asarray(y, dtype=np.float32)
    if factor > 1:
        y = _halve(y, factor)
    n_cols, n = 1 + len(y) // octaves[0].hop, len(y)
    for octave in octaves:  # librosa keeps the fewest frames any octave has
        n_cols = min(n_cols, 1 + n // octave.hop)
        n = -(-n // 2) if octave.halve_after else n
    out = np.empty((n_bins, n_cols), dtype=np.float32)
    for octave in octaves:
        half = octave.n_fft // 2
        frames = np.lib.stride_tricks.sliding_window_view(np.pad(y, (half, half)), octave.n_fft)
        frames = frames[:: octave.hop]
        n_filters = octave.kernel.shape[0] // 2
        rows = out[octave.top - n_filters : octave.top]
        with _one_blas_thread():
            for start in range(0, n_cols, block):
                stop = min(start + block, n_cols)
                z = octave.kernel @ np.ascontiguousarray(frames[start:stop]).T
                np.hypot(z[:n_filters], z[n_filters:], out=rows[:, start:stop])
        if octave.halve_after:
            y = _halve(y)
    return out


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's controller of the loaded BLAS, made once (making one scans the
    process's libraries: ~15 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """BLAS limited to one thread, as in featurestore's workers (Dask starts them with
    ``OPENBLAS_NUM_THREADS=1``). In a process that did not pin it, OpenBLAS threads spinning
    on the CQT's small products cost up to 6x the CPU time on a busy machine."""
    return _blas_controller().limit(limits=1, user_api="blas")


def essentia_standard() -> Any:
    """``essentia.standard``, imported with its informational log lines switched off."""
    import essentia

    essentia.log.infoActive = False
    import essentia.standard

    return essentia.standard


def fit_frames(x: np.ndarray, n_frames: int, axis: int = 0) -> np.ndarray:
    """Trim or edge-pad ``x`` along ``axis`` to exactly ``n_frames`` frames.

    The single place where a library's frame count is fitted to the store's grid. A trimmed
    or already fitting ``x`` comes back as a view, not a copy: a centred STFT has one frame
    more than the grid, and copying a 10-minute clip's (250 MB) to drop it cost 9 % of an
    extraction worker's time.
    """
    have = x.shape[axis]
    if have > n_frames:
        keep = [slice(None)] * x.ndim
        keep[axis] = slice(0, n_frames)
        return x[tuple(keep)]
    if have < n_frames:
        if have == 0:
            shape = list(x.shape)
            shape[axis] = n_frames
            return np.zeros(shape, dtype=x.dtype)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, n_frames - have)
        return np.pad(x, pad, mode="edge")
    return x


def deltas(x: np.ndarray, order: int) -> np.ndarray:
    """Append first (and second) time differences: shape (n, d) -> (n, d * (1 + order))."""
    import librosa

    if order == 0:
        return x
    n = x.shape[0]
    width = 9 if n >= 9 else (n if n % 2 == 1 else n - 1)
    if width < 3:
        return np.concatenate([x] + [np.zeros_like(x)] * order, axis=1)
    parts = [x] + [
        librosa.feature.delta(x, width=width, order=k, axis=0, mode="interp")
        for k in range(1, order + 1)
    ]
    return np.concatenate(parts, axis=1)


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The parameters of a target that has none."""


class Target:
    """A worker target, declared once.

    Subclasses set the class attributes and implement :meth:`compute`; their parameters
    are an instance of a frozen dataclass (``params = Params()``, with ``Params`` declared
    in the class), every field of which the computation reads. Everything else
    (extraction, the store schema, ``featurestore targets``, the trainer's worker heads)
    reads the declaration.

    Attributes
    ----------
    name : str
        Key in the store (``/targets/<name>``) and on the command line.
    dim : int
        Values per row, deltas included.
    rate : {"frame", "clip", "sample"}
        One row per frame (100 Hz at the defaults), one row per clip, or one per sample.
    library : str
        Which library computes it (``"librosa"``, ``"essentia"``, ``"numpy"``).
    loss : {"l1", "mse"}
        The regression loss a worker head uses on it.
    dtype : str
        Storage dtype in the store (computation is float32).
    params : frozen dataclass instance
        Parameters of the computation; recorded in the store with the values (the spec's
        ``params``, hence the partition hash, derive from it).
    deltas : int
        0, 1 or 2: how many orders of time differences :meth:`__call__` appends.
    default : bool
        Whether the target belongs to the default set.
    description : str
        One line for ``featurestore targets`` and the docs.
    """

    name: ClassVar[str]
    dim: ClassVar[int]
    rate: ClassVar[Rate] = "frame"
    library: ClassVar[str]
    loss: ClassVar[Loss] = "l1"
    dtype: ClassVar[str] = "float16"
    params: ClassVar[Any] = NoParams()
    deltas: ClassVar[int] = 0
    default: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def compute(self, clip: DecodedClip) -> np.ndarray:
        """Return the target, shape (n_frames, dim // (1 + deltas)) for frame rate,
        (base_dim,) for clip rate; any float dtype. Must be finite for any input."""
        raise NotImplementedError

    def __call__(self, clip: DecodedClip) -> np.ndarray:
        """Compute, fit to the frame grid, append deltas, check; float32 out.

        Returns
        -------
        np.ndarray
            float32, shape (n_frames, dim) for frame-rate targets, (1, dim) for clip rate,
            (n_samples, 1) for sample rate.
        """
        out = np.asarray(self.compute(clip), dtype=np.float32)
        if self.rate == "frame":
            out = deltas(fit_frames(out.reshape(out.shape[0], -1), clip.n_frames), self.deltas)
        elif self.rate == "sample":
            out = out.reshape(-1, 1)
        else:
            out = out.reshape(1, -1)
        if out.shape[1] != self.dim:
            raise RuntimeError(
                f"target {self.name}: computed {out.shape[1]} dims, declared {self.dim}"
            )
        if not np.isfinite(out).all():
            raise RuntimeError(f"target {self.name}: non-finite values")
        return out.astype(np.float32, copy=False)

    @classmethod
    def spec(cls) -> TargetSpec:
        """The declaration, as stored with the values."""
        return TargetSpec(
            name=cls.name, dim=cls.dim, rate=cls.rate, library=cls.library, loss=cls.loss,
            dtype=cls.dtype, params=dataclasses.asdict(cls.params), deltas=cls.deltas,
            description=cls.description, default=cls.default,
        )
