"""featurestore: every worker target of every clip, computed once into HDF5 stores.

>>> import featurestore
>>> report = featurestore.build("music/", "stores/music.h5")        # doctest: +SKIP
>>> store = featurestore.open_store("stores/music.h5")              # doctest: +SKIP
>>> store.targets["chroma"].shape                                    # doctest: +SKIP
(180000, 12)

The names below load on first use, so that ``import featurestore.store`` (what a reader
of stores needs) loads no other module of featurestore but :mod:`featurestore.errors`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BuildReport": "featurestore.build",
    "build": "featurestore.build",
    "dask_executor": "featurestore.build",
    "FeatureStoreError": "featurestore.errors",
    "Clip": "featurestore.store",
    "Store": "featurestore.store",
    "TargetSpec": "featurestore.store",
    "Stats": "featurestore.store",
    "open_store": "featurestore.store",
    "open_stores": "featurestore.store",
    "verify": "featurestore.store",
    "load_manifest": "featurestore.sources",
    "REGISTRY": "featurestore.targets",
    "resolve": "featurestore.targets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'featurestore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """The package, whose name ``build`` is the function :func:`featurestore.build.build`
    even after its submodule of that name is imported (the import system then binds the
    submodule here; it stays reachable as ``sys.modules["featurestore.build"]``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "build" and isinstance(value, types.ModuleType):
            value = value.build
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
