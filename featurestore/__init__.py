"""featurestore: every worker target of every clip, computed once into HDF5 stores.

>>> import featurestore
>>> report = featurestore.build("music/", "stores/music.h5")        # doctest: +SKIP
>>> store = featurestore.open_store("stores/music.h5")              # doctest: +SKIP
>>> store.targets["chroma"].shape                                    # doctest: +SKIP
(180000, 12)
"""

from featurestore.build import BuildReport, build
from featurestore.errors import FeatureStoreError
from featurestore.manifest import Clip
from featurestore.sources import load_manifest
from featurestore.store import Store, open_store, open_stores, verify
from featurestore.targets import REGISTRY, resolve

__version__ = "0.1.0"

__all__ = [
    "REGISTRY", "BuildReport", "Clip", "FeatureStoreError", "Store", "build", "load_manifest",
    "open_store", "open_stores", "resolve", "verify",
]
