"""Manifests: one plain row per clip, the only thing sources hand to the build."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from featurestore.errors import FeatureStoreError
from featurestore.store import Clip

__all__ = ["Clip", "Piece", "check_manifest", "invalid_utf8", "manifest_hash"]


@dataclass(frozen=True)
class Piece:
    """One unit of a build's work: one segment of a clip's file (usually its only one).

    A file longer than the store's ``max_seconds`` is planned as several pieces, one per
    segment, from its header; pieces, not files, are grouped into partitions, so that
    neither a task's memory nor its result grows with the length of a file.

    Parameters
    ----------
    clip : Clip
        The manifest row.
    segment : int
        The segment this piece decodes: output samples from ``segment * L`` on, ``L`` the
        segment length in samples at the store's rate.
    n_segments : int
        Segments the file is planned to keep (at least 1). More than one: the file's
        clips are stored as ``<id>@0000``, ``<id>@0001``, ...
    last : bool
        Whether this piece decodes on to the end of the file (the file's last piece): it
        drops a final segment shorter than ``min_seconds`` and checks the file's end.
    samples : int
        Samples at the store's rate this piece is planned to store (what partitions are
        budgeted by); 0 when the file cannot be used.
    content : str or None
        The file's content hash (:func:`featurestore.audio.content_hash`) when planned;
        None when it could not be read.
    """

    clip: Clip
    segment: int = 0
    n_segments: int = 1
    last: bool = True
    samples: int = 0
    content: str | None = None

    @property
    def path(self) -> str:
        """The audio file (the clip's)."""
        return self.clip.path


def invalid_utf8(clip: Clip) -> str | None:
    """Why ``clip`` cannot be stored as UTF-8 text (its path, or another field, holds a
    lone surrogate: a file name of bytes that are not UTF-8, as ``os.listdir`` returns
    them), or None when it can. The store's strings are UTF-8: such a clip can only be an
    error row."""

    def bad(text: str) -> bool:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    if bad(clip.path):
        return "file name is not valid UTF-8"
    fields = {"id": clip.id, "label": clip.label, "split": clip.split, "group": clip.group}
    fields.update({f"meta {k!a}": f"{k}{v}" for k, v in clip.meta.items()})
    for name, text in fields.items():
        if bad(text):
            return f"clip {name} is not valid UTF-8"
    return None


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
