"""Manifests: one plain row per clip, the only thing sources hand to the build."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from featurestore.errors import FeatureStoreError


@dataclass(frozen=True)
class Clip:
    """One input clip.

    Parameters
    ----------
    id : str
        Unique within a manifest; stable across builds (the store's clip key).
    path : str
        Absolute path of the audio file.
    label : str
        Label(s); several labels are joined by ``";"``. Empty when unlabeled.
    split : str
        ``"train"``, ``"valid"``, ``"test"``, or empty when the source has no split.
    group : str
        Clips sharing a group (artist, album, instrument) never straddle train and test
        in grouped k-fold evaluation. Empty when unknown.
    meta : dict of str to str
        Any further columns of the source, kept verbatim.
    """

    id: str
    path: str
    label: str = ""
    split: str = ""
    group: str = ""
    meta: dict[str, str] = field(default_factory=dict, compare=True, hash=False)

    @property
    def labels(self) -> list[str]:
        """The labels as a list (empty when unlabeled)."""
        return [x for x in self.label.split(";") if x]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


SPLITS = ("train", "valid", "test", "")


def check_manifest(clips: Sequence[Clip], source: str) -> list[Clip]:
    """Validate a manifest: non-empty, unique ids, known split names.

    Raises
    ------
    FeatureStoreError
        Naming ``source`` and the first offending clip.
    """
    clips = list(clips)
    if not clips:
        raise FeatureStoreError(f"{source}: no audio clips found")
    seen: set[str] = set()
    for clip in clips:
        if clip.id in seen:
            raise FeatureStoreError(f"{source}: duplicate clip id {clip.id!r} ({clip.path})")
        seen.add(clip.id)
        if clip.split not in SPLITS:
            raise FeatureStoreError(
                f"{source}: clip {clip.id!r} has split {clip.split!r}; "
                f"expected one of train, valid, test or empty"
            )
    return clips


def manifest_hash(clips: Iterable[Clip], extra: object = None) -> str:
    """A SHA-1 over the rows (and any JSON-able ``extra``), used to recognise shards."""
    h = hashlib.sha1()
    for clip in clips:
        h.update(json.dumps(clip.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()
