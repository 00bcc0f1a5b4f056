"""The one place that turns a device name into a ``torch.device``.

Every command with ``--device`` and every function with a ``device`` argument resolves it
here, first, before it loads a store or builds a model, so that a device this machine does
not have is a one-line error naming what was asked and what torch sees:

>>> resolve_device("auto")   # CUDA when torch sees a GPU, else the CPU  # doctest: +SKIP
device(type='cpu')
>>> resolve_device("cuda")   # on a machine without CUDA                 # doctest: +SKIP
Traceback (most recent call last):
DeviceError: --device cuda: this torch (2.13.0+cpu) sees no CUDA device; use --device cpu or auto

Accepted names: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` and, with a torch built with MPS,
``mps`` (case and surrounding blanks do not matter). ``auto`` never picks MPS.
"""

from __future__ import annotations

import re

import torch

from featurestore.errors import FeatureStoreError

__all__ = ["DeviceError", "device_names", "resolve_device"]

_CUDA = re.compile(r"cuda(?::(\d+))?")


class DeviceError(FeatureStoreError, ValueError):
    """A device name that is unknown, or names a device this machine's torch does not see.

    A :class:`~featurestore.errors.FeatureStoreError` (the command line prints it as one
    ``error:`` line and exits with status 1) and a ``ValueError`` (a bad argument value).
    """


def _has_mps() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_built())


def device_names() -> str:
    """The accepted device names, in words: ``"auto, cpu, cuda or cuda:N"`` (with
    ``mps`` on a torch built with MPS)."""
    names = ["auto", "cpu", "cuda", "cuda:N"] + (["mps"] if _has_mps() else [])
    return f"{', '.join(names[:-1])} or {names[-1]}"


def resolve_device(spec: str | torch.device = "auto", *, option: str = "--device"
                   ) -> torch.device:
    """The ``torch.device`` that ``spec`` names, checked against what torch sees.

    Parameters
    ----------
    spec : str or torch.device
        ``auto`` (``cuda`` when torch sees a CUDA device, else ``cpu``), ``cpu``,
        ``cuda``, ``cuda:N``, or ``mps`` (a torch built with MPS); a ``torch.device`` is
        checked by its name.
    option : str
        How the caller's user gave ``spec``: the start of every error message (``--device``,
        or e.g. ``run r1: device`` for a config file's entry).

    Returns
    -------
    torch.device
        ``cpu``, ``cuda`` (no index: the current CUDA device), ``cuda:N`` or ``mps``.

    Raises
    ------
    DeviceError
        An unknown name (``--device gpu: unknown device; expected auto, cpu, cuda or
        cuda:N``), CUDA without a CUDA device (``--device cuda: this torch (2.13.0+cpu)
        sees no CUDA device; use --device cpu or auto``), an index past the visible
        devices (``--device cuda:3: only 1 CUDA device(s) visible (cuda:0)``), or MPS
        that this torch lacks.
    """
    given = str(spec) if isinstance(spec, str | torch.device) else repr(spec)
    name = given.strip().lower()
    instead = f"use {option} cpu or auto" if option.startswith("--") else "use cpu or auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _has_mps():
            raise DeviceError(f"{option} {given}: this torch ({torch.__version__}) is built "
                              f"without MPS; {instead}")
        if not torch.backends.mps.is_available():
            raise DeviceError(f"{option} {given}: this torch ({torch.__version__}) sees no "
                              f"MPS device; {instead}")
        return torch.device("mps")
    match = _CUDA.fullmatch(name)
    if match is None:
        raise DeviceError(f"{option} {given}: unknown device; expected {device_names()}")
    if not torch.cuda.is_available():
        raise DeviceError(f"{option} {given}: this torch ({torch.__version__}) sees no CUDA "
                          f"device; {instead}")
    if match.group(1) is None:
        return torch.device("cuda")
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        visible = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise DeviceError(f"{option} {given}: only {count} CUDA device(s) visible ({visible})")
    return torch.device("cuda", index)
