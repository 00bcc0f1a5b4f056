"""The target registry: every worker target, declared once.

>>> from featurestore.targets import resolve
>>> [t.name for t in resolve("mfcc,chroma")]
['mfcc', 'chroma']

A family module per kind of feature (:mod:`.spectral`, :mod:`.pitch`, :mod:`.rhythm`,
:mod:`.tonal`) declares its targets with :func:`register`; adding a target is one class.
"""

from __future__ import annotations

import dataclasses
import importlib

import featurestore.jitcache  # noqa: F401 - makes numba's on-disk cache process-safe
from featurestore.errors import FeatureStoreError
from featurestore.targets.base import DecodedClip, NoParams, Target, deltas, fit_frames

REGISTRY: dict[str, type[Target]] = {}


def register(cls: type[Target]) -> type[Target]:
    """Class decorator: add a :class:`Target` subclass to :data:`REGISTRY`.

    Raises
    ------
    ValueError
        The name is taken.
    TypeError
        ``cls.params`` is not an instance of a frozen dataclass.
    """
    if cls.name in REGISTRY:
        raise ValueError(f"target {cls.name!r} is declared twice")
    params = cls.params
    if (not dataclasses.is_dataclass(params) or isinstance(params, type)
            or not type(params).__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"target {cls.name!r}: params must be an instance of a frozen "
                        f"dataclass, got {params!r}")
    REGISTRY[cls.name] = cls
    return cls


def resolve(names: str | list[str] | tuple[str, ...]) -> list[Target]:
    """Turn ``"default"``, ``"all"`` or names (a list or a comma-separated string) into
    target instances, in registry order, without duplicates.

    ``waveform`` is always stored and need not be named. Raises
    :class:`~featurestore.errors.FeatureStoreError` on an unknown name.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    wanted: set[str] = set()
    for name in names:
        if name == "default":
            wanted |= {n for n, t in REGISTRY.items() if t.default}
        elif name == "all":
            wanted |= set(REGISTRY)
        elif name in REGISTRY:
            wanted.add(name)
        else:
            known = ", ".join(REGISTRY)
            raise FeatureStoreError(
                f"unknown target {name!r}; known targets: default, all, {known}"
            )
    wanted.discard("waveform")
    return [REGISTRY[n]() for n in REGISTRY if n in wanted]


FAMILIES = ("spectral", "pitch", "tonal", "rhythm")
"""The family modules, imported in this order: it is the registry's (and the docs') order."""

for _family in FAMILIES:
    importlib.import_module(f"featurestore.targets.{_family}")

__all__ = [
    "FAMILIES", "REGISTRY", "DecodedClip", "NoParams", "Target", "deltas",
    "fit_frames", "register", "resolve",
]
