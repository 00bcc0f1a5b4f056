"""The target interface: a declaration (name, dims, rate, library, typed parameters) plus
one ``compute`` method, and :class:`DecodedClip`, a decoded clip with its memo of shared
intermediates.

Every frame-level target lives on one grid: a clip of ``n`` samples has ``n // hop``
frames, frame ``t`` describing the window centred on sample ``t * hop``. Libraries that
return one frame more or fewer are fitted to the grid in :func:`fit_frames`, here and
nowhere else.
"""

from __future__ import annotations

import dataclasses
import warnings
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
        """Constant-Q magnitude, shape (n_bins, n_frames), float32."""
        import librosa

        def make() -> np.ndarray:
            with warnings.catch_warnings():
                # Short clips: librosa warns that its low-octave FFT exceeds the signal.
                warnings.filterwarnings("ignore", message="n_fft=.* is too large")
                c = librosa.cqt(
                    self.y, sr=self.sample_rate, hop_length=self.hop, fmin=fmin, n_bins=n_bins,
                    bins_per_octave=bins_per_octave, tuning=0.0,
                )
            return fit_frames(np.abs(c).astype(np.float32), self.n_frames, axis=1)

        return self.memo(("cqt", n_bins, bins_per_octave, fmin), make)


def essentia_standard() -> Any:
    """``essentia.standard``, imported with its informational log lines switched off."""
    import essentia

    essentia.log.infoActive = False
    import essentia.standard

    return essentia.standard


def fit_frames(x: np.ndarray, n_frames: int, axis: int = 0) -> np.ndarray:
    """Trim or edge-pad ``x`` along ``axis`` to exactly ``n_frames`` frames.

    The single place where a library's frame count is fitted to the store's grid.
    """
    have = x.shape[axis]
    if have > n_frames:
        return np.take(x, np.arange(n_frames), axis=axis)
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
