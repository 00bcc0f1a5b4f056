"""Layout adapters: turn a data set on disk into a manifest (a list of :class:`Clip`).

A *layout* is the way a data set arranges its audio files and annotations. Each adapter
is a pure function ``adapter(root: Path) -> list[Clip]`` registered in :data:`LAYOUTS`; it
only lists files and reads annotation files, it never decodes audio. Use
:func:`load_manifest` to pick an adapter (by name or by auto-detection) and validate its
output.

Known layouts: ``folder``, ``csv``, ``gtzan``, ``nsynth``, ``mtat``, ``fma``.

The GTZAN split lists shipped in ``featurestore/data/gtzan_filtered_*.txt`` are the
fault-filtered, artist-disjoint split of Kereliuk, Sturm & Larsen, "Deep Learning and
Music Adversaries" (2015): 443 train, 197 valid and 290 test excerpts, as published in
github.com/jongpillee/music_dataset_split (MIT licence), stored as one file stem per line.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path

from featurestore.errors import FeatureStoreError
from featurestore.manifest import Clip, check_manifest
from featurestore.store import TAG_SEPARATOR, split_tags

__all__ = [
    "AUDIO_EXTENSIONS",
    "LAYOUTS",
    "detect_layout",
    "gtzan_filtered_splits",
    "load_manifest",
    "register_layout",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
"""File extensions treated as audio (matched case-insensitively)."""

Adapter = Callable[[Path], list[Clip]]

LAYOUTS: dict[str, Adapter] = {}
"""Registry of layout adapters, by layout name."""


def register_layout(name: str) -> Callable[[Adapter], Adapter]:
    """Register the decorated function in :data:`LAYOUTS` under ``name``.

    Parameters
    ----------
    name : str
        Layout name, as passed to :func:`load_manifest`.

    Returns
    -------
    callable
        A decorator returning the function unchanged.
    """

    def decorate(func: Adapter) -> Adapter:
        if name in LAYOUTS:
            raise ValueError(f"layout {name!r} is already registered")
        LAYOUTS[name] = func
        return func

    return decorate


def load_manifest(source: str | os.PathLike[str], layout: str = "auto") -> list[Clip]:
    """Read a data set into a validated manifest.

    Parameters
    ----------
    source : str or path-like
        A folder or a CSV file.
    layout : str, default "auto"
        A name in :data:`LAYOUTS`, or ``"auto"`` to detect it with :func:`detect_layout`.

    Returns
    -------
    list of Clip
        Non-empty, unique ids, paths absolute.

    Raises
    ------
    FeatureStoreError
        The source does not exist, the layout is unknown, an annotation file is malformed,
        or the manifest fails :func:`~featurestore.manifest.check_manifest`.
    """
    root = _absolute(Path(source))
    if layout != "auto" and layout not in LAYOUTS:
        known = ", ".join(sorted(LAYOUTS))
        raise FeatureStoreError(f"unknown layout {layout!r}; known layouts: auto, {known}")
    if not root.exists():
        raise FeatureStoreError(f"{source}: no such file or directory")
    name = detect_layout(root) if layout == "auto" else layout
    try:
        clips = LAYOUTS[name](root)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        # Adapters report the problems they anticipate themselves; this is the safety net
        # for unreadable files, so that a user never sees a traceback for bad input.
        raise FeatureStoreError(f"{source}: cannot read {name} layout: {exc}") from exc
    return check_manifest(clips, str(source))


def detect_layout(path: Path) -> str:
    """Guess the layout of ``path`` from marker files.

    Parameters
    ----------
    path : Path
        An existing file or folder.

    Returns
    -------
    str
        ``"csv"`` for a ``.csv`` file; for a folder ``"nsynth"`` (an ``examples.json``
        beside ``audio/``, or ``nsynth-{train,valid,test}/`` holding them), ``"mtat"``
        (``annotations_final.csv``), ``"fma"`` (``fma_metadata/tracks.csv``), ``"gtzan"``
        (``genres/``, ``genres_original/`` or the genres folder itself, holding files named
        ``<genre>.NNNNN.<ext>`` in ``<genre>/``), else ``"folder"``.

    Raises
    ------
    FeatureStoreError
        ``path`` is a file that is not a ``.csv``.
    """
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise FeatureStoreError(
            f"{path}: cannot detect the layout of a {path.suffix or 'extension-less'} file; "
            f"pass a folder or a .csv manifest"
        )
    if _nsynth_split_dirs(path):
        return "nsynth"
    if (path / "annotations_final.csv").is_file():
        return "mtat"
    if (path / "fma_metadata" / "tracks.csv").is_file():
        return "fma"
    if _gtzan_genres_dir(path) is not None:
        return "gtzan"
    return "folder"


# --------------------------------------------------------------------------- helpers


def _absolute(path: Path) -> Path:
    """``path`` made absolute and normalised, without resolving symbolic links."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def _is_audio(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS)


def _strip_ext(rel: str) -> str:
    """``a/b/c.wav`` -> ``a/b/c`` (only the last extension, never a folder's dot)."""
    head, _, tail = rel.rpartition("/")
    stem = tail.rsplit(".", 1)[0] if "." in tail.lstrip(".") else tail
    return f"{head}/{stem}" if head else stem


def _walk_audio(root: Path) -> Iterator[Path]:
    """All non-hidden audio files under ``root``, following links but never a loop."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and _is_audio(name):
                yield Path(dirpath) / name


def _read_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeatureStoreError(f"{path}: cannot read JSON: {exc}") from exc


def _read_table(path: Path, delimiter: str) -> list[list[str]]:
    """All rows of a delimited text file (blank lines dropped) as lists of strings."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return [row for row in csv.reader(f, delimiter=delimiter) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FeatureStoreError(f"{path}: cannot read: {exc}") from exc


# --------------------------------------------------------------------------- folder


@register_layout("folder")
def folder_layout(root: Path) -> list[Clip]:
    """Every audio file under a folder, recursively, unlabeled.

    Expected layout: any tree of audio files (``.wav``, ``.flac``, ``.ogg``, ``.mp3``, in
    any letter case), for example ``root/a.wav``, ``root/live/2019/b.flac``. Files and
    folders whose names start with ``"."`` are skipped, as is every other file.

    Parameters
    ----------
    root : Path
        The folder.

    Returns
    -------
    list of Clip
        Sorted by relative path. ``id`` is the path relative to ``root`` with ``"/"``
        separators and without its extension (``live/2019/b``); ``label``, ``split`` and
        ``group`` are empty. Two files differing only by extension get the same id, which
        :func:`load_manifest` rejects.
    """
    root = _absolute(root)
    if not root.is_dir():
        raise FeatureStoreError(f"{root}: not a folder")
    rels = sorted(p.relative_to(root).as_posix() for p in _walk_audio(root))
    return [Clip(id=_strip_ext(rel), path=str(root / rel)) for rel in rels]


# --------------------------------------------------------------------------- csv

_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "test": "test",
    "": "",
}


def _normalise_labels(value: str) -> str:
    return TAG_SEPARATOR.join(split_tags(value))


@register_layout("csv")
def csv_layout(root: Path) -> list[Clip]:
    """A comma-separated manifest with a header row.

    Expected layout: a UTF-8 ``.csv`` file whose header names the columns, in any order,
    matched case-insensitively after stripping whitespace:

    - ``path`` (required): the audio file, relative to the CSV's folder, or absolute;
    - ``label`` (optional): one label, or several joined by ``";"`` (whitespace around
      each label is stripped, empty labels dropped);
    - ``split`` (optional): ``train``/``training``, ``valid``/``validation``/``val``,
      ``test`` (any case) or empty;
    - ``group`` (optional): artist, album or any grouping key;
    - ``id`` (optional): the clip id; when absent or empty, the path relative to the
      CSV's folder without its extension, with ``"/"`` separators (for a file outside
      that folder, its absolute path without extension).

    Every other column is kept, verbatim, in ``meta`` under its (stripped) header name.
    Blank lines are ignored.

    Parameters
    ----------
    root : Path
        The CSV file.

    Returns
    -------
    list of Clip
        One clip per row, in file order.

    Raises
    ------
    FeatureStoreError
        No ``path`` column, duplicate column names, a row with the wrong number of
        fields, an empty path or an unknown split value (naming the file and line).
    """
    root = _absolute(root)
    if not root.is_file():
        raise FeatureStoreError(f"{root}: not a file")
    try:
        with open(root, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise FeatureStoreError(f"{root}: empty file (expected a header row)")
            names = [h.strip() for h in header]
            keys = [n.lower() for n in names]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise FeatureStoreError(f"{root}: duplicate column(s) {', '.join(dupes)}")
            if "path" not in keys:
                raise FeatureStoreError(f"{root}: no 'path' column (header: {', '.join(names)})")
            clips = []
            for row in reader:
                if row:
                    where = f"{root}: line {reader.line_num}"
                    if len(row) != len(names):
                        raise FeatureStoreError(
                            f"{where}: {len(row)} fields, the header has {len(names)}"
                        )
                    clips.append(_csv_clip(dict(zip(names, row, strict=True)), root.parent, where))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FeatureStoreError(f"{root}: cannot read: {exc}") from exc
    return clips


_CSV_COLUMNS = ("path", "label", "split", "group", "id")


def _csv_clip(record: dict[str, str], base: Path, where: str) -> Clip:
    """One clip from a CSV record (header name -> raw value)."""
    known = {k.lower(): v.strip() for k, v in record.items() if k.lower() in _CSV_COLUMNS}
    value = known["path"]
    if not value:
        raise FeatureStoreError(f"{where}: empty path")
    given = Path(os.path.expanduser(value))
    path = Path(os.path.abspath(given if given.is_absolute() else base / given))
    split = known.get("split", "")
    if split.lower() not in _SPLIT_NAMES:
        raise FeatureStoreError(
            f"{where}: unknown split {split!r}; expected train, valid, test or empty"
        )
    clip_id = known.get("id", "")
    if not clip_id:
        try:
            clip_id = _strip_ext(path.relative_to(base).as_posix())
        except ValueError:
            clip_id = _strip_ext(path.as_posix())
    return Clip(
        id=clip_id,
        path=str(path),
        label=_normalise_labels(known.get("label", "")),
        split=_SPLIT_NAMES[split.lower()],
        group=known.get("group", ""),
        meta={k: v for k, v in record.items() if k.lower() not in _CSV_COLUMNS},
    )


# --------------------------------------------------------------------------- gtzan

_GTZAN_GENRES = (
    "blues", "classical", "country", "disco", "hiphop",
    "jazz", "metal", "pop", "reggae", "rock",
)
_GTZAN_NAME = re.compile(r"^([a-z]+)\.(\d{5})\.[A-Za-z0-9]+$")
_GTZAN_EXTENSIONS = (*AUDIO_EXTENSIONS, ".au")


@lru_cache(maxsize=1)
def gtzan_filtered_splits() -> dict[str, str]:
    """The fault-filtered GTZAN split (Kereliuk, Sturm & Larsen 2015).

    Returns
    -------
    dict of str to str
        File stem (``"blues.00000"``) to ``"train"``, ``"valid"`` or ``"test"``;
        443, 197 and 290 entries. Excerpts not listed are absent.
    """
    data = resources.files(__package__ or "featurestore").joinpath("data")
    splits: dict[str, str] = {}
    for split in ("train", "valid", "test"):
        text = data.joinpath(f"gtzan_filtered_{split}.txt").read_text(encoding="utf-8")
        for line in text.splitlines():
            stem = line.strip()
            if stem:
                splits[stem] = split
    return splits


def _gtzan_genres_dir(root: Path) -> Path | None:
    """The folder holding ``<genre>/<genre>.NNNNN.<ext>``, or None."""
    candidates = [
        root / "genres",
        root / "genres_original",
        root / "Data" / "genres_original",
        root,
    ]
    for cand in candidates:
        for genre in _GTZAN_GENRES:
            sub = cand / genre
            if sub.is_dir() and any(
                m is not None and m.group(1) == genre
                for m in (_GTZAN_NAME.match(p.name) for p in sub.iterdir())
            ):
                return cand
    return None


@register_layout("gtzan")
def gtzan_layout(root: Path) -> list[Clip]:
    """GTZAN genre collection (Tzanetakis & Cook 2002).

    Expected layout: ``root/genres/<genre>/<genre>.NNNNN.wav`` for the ten genres
    ``blues classical country disco hiphop jazz metal pop reggae rock``. Also accepted:
    ``root`` being the ``genres`` folder itself, the Kaggle variant
    ``root/genres_original/`` (or ``root/Data/genres_original/``), and the original
    ``.au`` files besides the usual audio extensions. Every non-hidden sub-folder of the
    genres folder is a genre; its audio files are its excerpts.

    Parameters
    ----------
    root : Path
        The data set folder.

    Returns
    -------
    list of Clip
        Sorted by genre then file name. ``label`` is the genre folder, ``id`` the file
        stem (``blues.00000``), ``group`` empty (GTZAN has no artist metadata), and
        ``split`` the fault-filtered split of :func:`gtzan_filtered_splits` (empty for
        the 70 excerpts that split leaves out).

    Raises
    ------
    FeatureStoreError
        No genres folder found.
    """
    root = _absolute(root)
    genres_dir = _gtzan_genres_dir(root)
    if genres_dir is None:
        raise FeatureStoreError(
            f"{root}: not a GTZAN layout (expected genres/<genre>/<genre>.NNNNN.wav)"
        )
    splits = gtzan_filtered_splits()
    clips = []
    for genre_dir in sorted(genres_dir.iterdir()):
        if not genre_dir.is_dir() or genre_dir.name.startswith("."):
            continue
        for f in sorted(genre_dir.iterdir()):
            if f.name.startswith(".") or not f.name.lower().endswith(_GTZAN_EXTENSIONS):
                continue
            stem = f.name.rsplit(".", 1)[0]
            clips.append(Clip(
                id=stem,
                path=str(f),
                label=genre_dir.name,
                split=splits.get(stem, ""),
            ))
    return clips


# --------------------------------------------------------------------------- nsynth

_NSYNTH_SPLITS = ("train", "valid", "test")


def _nsynth_split_dirs(root: Path) -> list[tuple[str, Path]]:
    """``(split, folder)`` for each NSynth split folder found at or under ``root``."""
    found = [
        (split, root / f"nsynth-{split}")
        for split in _NSYNTH_SPLITS
        if (root / f"nsynth-{split}" / "examples.json").is_file()
    ]
    if not found and (root / "examples.json").is_file() and (root / "audio").is_dir():
        m = re.fullmatch(r"nsynth-(train|valid|test)", root.name)
        found = [(m.group(1) if m else "", root)]
    return found


@register_layout("nsynth")
def nsynth_layout(root: Path) -> list[Clip]:
    """NSynth (Engel et al. 2017), json/wav release.

    Expected layout: ``root/nsynth-{train,valid,test}/`` (one or more of them), each with
    ``examples.json`` (an object mapping each ``note_str`` to its record with at least
    ``instrument_family_str``, ``instrument_str``, ``instrument_source_str``, ``pitch``,
    ``velocity``, ``qualities_str``) and ``audio/<note_str>.wav``. ``root`` may also be
    one of the split folders itself (its split is then taken from its name, or left
    empty if the name is not ``nsynth-<split>``).

    The manifest is built from ``examples.json``: a note whose wav file is missing is
    still listed, so that the build records the missing file as an error row rather
    than the data set silently shrinking. Audio files absent from ``examples.json`` are
    ignored.

    Parameters
    ----------
    root : Path
        The data set folder.

    Returns
    -------
    list of Clip
        Sorted by split (train, valid, test) then id. ``id`` is the ``note_str``,
        ``label`` the ``instrument_family_str``, ``group`` the ``instrument_str``, and
        ``meta`` holds ``pitch``, ``velocity``, ``instrument_source_str`` and
        ``qualities`` (``qualities_str`` joined by ``";"``).

    Raises
    ------
    FeatureStoreError
        No split folder, unreadable ``examples.json``, or a record missing a field.
    """
    root = _absolute(root)
    split_dirs = _nsynth_split_dirs(root)
    if not split_dirs:
        raise FeatureStoreError(
            f"{root}: not an NSynth layout (expected nsynth-<split>/examples.json)"
        )
    clips = []
    for split, folder in split_dirs:
        json_path = folder / "examples.json"
        examples = _read_json(json_path)
        if not isinstance(examples, dict):
            raise FeatureStoreError(f"{json_path}: expected an object of note records")
        for note in sorted(examples):
            rec = examples[note]
            if not isinstance(rec, dict):
                raise FeatureStoreError(f"{json_path}: note {note!r}: not an object")
            try:
                qualities = rec["qualities_str"]
                clips.append(Clip(
                    id=note,
                    path=str(folder / "audio" / f"{note}.wav"),
                    label=str(rec["instrument_family_str"]),
                    split=split,
                    group=str(rec["instrument_str"]),
                    meta={
                        "pitch": str(rec["pitch"]),
                        "velocity": str(rec["velocity"]),
                        "instrument_source_str": str(rec["instrument_source_str"]),
                        "qualities": ";".join(str(q) for q in qualities),
                    },
                ))
            except KeyError as exc:
                raise FeatureStoreError(
                    f"{json_path}: note {note!r}: missing field {exc.args[0]!r}"
                ) from exc
    return clips


# --------------------------------------------------------------------------- mtat

_MTAT_TOP = 50
_MTAT_SPLIT_BY_DIR = {
    **{c: "train" for c in "0123456789ab"},
    "c": "valid",
    **{c: "test" for c in "def"},
}


def _mtat_audio_dir(root: Path) -> Path:
    """``root/mp3`` if the 0..f folders live there, else ``root``."""
    sub = root / "mp3"
    if sub.is_dir() and any((sub / c).is_dir() for c in _MTAT_SPLIT_BY_DIR):
        return sub
    return root


def _mtat_groups(path: Path) -> dict[str, str]:
    """clip_id -> album (artist when the album is empty) from ``clip_info_final.csv``."""
    rows = _read_table(path, "\t")
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    for needed in ("clip_id", "artist", "album"):
        if needed not in header:
            raise FeatureStoreError(f"{path}: no {needed!r} column")
    i_id, i_artist, i_album = (header.index(k) for k in ("clip_id", "artist", "album"))
    groups = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise FeatureStoreError(f"{path}: row {n}: {len(row)} fields, expected {len(header)}")
        groups[row[i_id].strip()] = row[i_album].strip() or row[i_artist].strip()
    return groups


@register_layout("mtat")
def mtat_layout(root: Path) -> list[Clip]:
    """MagnaTagATune (Law et al. 2009), with the usual top-50 tags and split.

    Expected layout: ``root/annotations_final.csv``, tab-separated despite its name (the
    fields may be double-quoted), header ``clip_id``, the 188 tag columns, ``mp3_path``;
    tag values ``0``/``1``; ``mp3_path`` like ``f/artist-album-01-title-30-59.mp3``,
    relative to the folder holding the sixteen mp3 folders ``0`` .. ``f`` (``root`` or
    ``root/mp3``). Optionally ``root/clip_info_final.csv`` (tab-separated, with
    ``clip_id``, ``artist`` and ``album`` among its columns) for groups.

    Rows with an empty ``mp3_path`` are skipped. The top-50 tags are the 50 tags set on
    the most listed clips, ties broken by column order.

    Parameters
    ----------
    root : Path
        The data set folder.

    Returns
    -------
    list of Clip
        In file order. ``id`` is ``clip_id``; ``label`` the clip's top-50 tags in column
        order joined by ``";"`` (possibly empty); ``meta["tags_all"]`` all of its tags,
        likewise; ``split`` from the first character of ``mp3_path``: ``0``-``b`` train,
        ``c`` valid, ``d``-``f`` test; ``group`` the album (the artist when the album is
        empty) from ``clip_info_final.csv``, or empty without that file.

    Raises
    ------
    FeatureStoreError
        Missing ``annotations_final.csv``, missing columns, ragged rows, a tag value other
        than 0/1, or an ``mp3_path`` outside the folders ``0`` .. ``f``.
    """
    root = _absolute(root)
    ann = root / "annotations_final.csv"
    if not ann.is_file():
        raise FeatureStoreError(f"{root}: not an MTAT layout (no annotations_final.csv)")
    rows = _read_table(ann, "\t")
    if not rows:
        raise FeatureStoreError(f"{ann}: empty file")
    header = [h.strip() for h in rows[0]]
    if "clip_id" not in header or "mp3_path" not in header:
        raise FeatureStoreError(f"{ann}: expected 'clip_id' and 'mp3_path' columns")
    i_id, i_mp3 = header.index("clip_id"), header.index("mp3_path")
    tag_cols = [i for i in range(len(header)) if i not in (i_id, i_mp3)]

    kept: list[tuple[str, str, list[int]]] = []  # clip_id, mp3_path, tag columns set
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise FeatureStoreError(f"{ann}: row {n}: {len(row)} fields, expected {len(header)}")
        mp3 = row[i_mp3].strip()
        if not mp3:
            continue
        on = []
        for i in tag_cols:
            v = row[i].strip()
            if v == "1":
                on.append(i)
            elif v != "0":
                raise FeatureStoreError(
                    f"{ann}: row {n}: tag {header[i]!r} has value {v!r}, expected 0 or 1"
                )
        if mp3[0] not in _MTAT_SPLIT_BY_DIR or mp3[1:2] != "/":
            raise FeatureStoreError(f"{ann}: row {n}: mp3_path {mp3!r} is not under 0..f/")
        kept.append((row[i_id].strip(), mp3, on))

    counts = dict.fromkeys(tag_cols, 0)
    for _, _, on in kept:
        for i in on:
            counts[i] += 1
    ranked = sorted(tag_cols, key=lambda i: (-counts[i], i))
    top = set(ranked[:_MTAT_TOP])

    info = root / "clip_info_final.csv"
    groups = _mtat_groups(info) if info.is_file() else {}
    audio = _mtat_audio_dir(root)
    return [
        Clip(
            id=clip_id,
            path=str(audio / mp3),
            label=TAG_SEPARATOR.join(header[i] for i in on if i in top),
            split=_MTAT_SPLIT_BY_DIR[mp3[0]],
            group=groups.get(clip_id, ""),
            meta={"tags_all": TAG_SEPARATOR.join(header[i] for i in on)},
        )
        for clip_id, mp3, on in kept
    ]


# --------------------------------------------------------------------------- fma

_FMA_SUBSETS = ("small", "medium", "large", "full")
_FMA_SPLITS = {"training": "train", "validation": "valid", "test": "test"}


@register_layout("fma")
def fma_layout(root: Path) -> list[Clip]:
    """Free Music Archive (Defferrard et al. 2017).

    Expected layout: ``root/fma_metadata/tracks.csv`` as released (comma-separated, a
    three-line header written by pandas: top-level names such as ``album``, ``artist``,
    ``set``, ``track``; sub-names such as ``genre_top``, ``split``, ``subset``, ``id``;
    then ``track_id`` and empty fields), and one or more audio folders
    ``root/fma_{small,medium,large,full}/NNN/NNNNNN.mp3`` (six-digit zero-padded track
    id; ``NNN`` its first three digits).

    The first audio folder present in the order small, medium, large, full is used, and
    every track whose ``(set, subset)`` is included in that folder's subset is listed
    (small within medium within large; ``full`` holds every track), whether or not its
    mp3 is on disk: a missing file becomes an error row of the build.

    Parameters
    ----------
    root : Path
        The data set folder.

    Returns
    -------
    list of Clip
        In file order. ``id`` is the track id (no zero padding); ``label`` the
        ``(track, genre_top)`` (empty for many medium/large tracks); ``split`` from
        ``(set, split)``: training, validation, test -> train, valid, test; ``group`` the
        ``(artist, id)``; ``meta["subset"]`` the track's subset.

    Raises
    ------
    FeatureStoreError
        No ``tracks.csv`` or audio folder, a missing column, a ragged row, or an unknown
        split or subset value.
    """
    root = _absolute(root)
    tracks = root / "fma_metadata" / "tracks.csv"
    if not tracks.is_file():
        raise FeatureStoreError(f"{root}: not an FMA layout (no fma_metadata/tracks.csv)")
    chosen = next((s for s in _FMA_SUBSETS if (root / f"fma_{s}").is_dir()), None)
    if chosen is None:
        raise FeatureStoreError(
            f"{root}: no audio folder (expected one of "
            + ", ".join(f"fma_{s}" for s in _FMA_SUBSETS) + ")"
        )
    audio = root / f"fma_{chosen}"
    rank = {s: i for i, s in enumerate(_FMA_SUBSETS)}
    limit = rank["large"] if chosen == "full" else rank[chosen]

    rows = _read_table(tracks, ",")
    if len(rows) < 3:
        raise FeatureStoreError(f"{tracks}: expected a three-line header")
    top_names, sub_names = rows[0], rows[1]
    if len(top_names) != len(sub_names):
        raise FeatureStoreError(f"{tracks}: the first two header lines differ in length")
    pairs = [(t.strip(), s.strip()) for t, s in zip(top_names, sub_names, strict=True)]

    def column(top: str, sub: str) -> int:
        try:
            return pairs.index((top, sub))
        except ValueError:
            raise FeatureStoreError(f"{tracks}: no ({top}, {sub}) column") from None

    i_genre = column("track", "genre_top")
    i_split = column("set", "split")
    i_subset = column("set", "subset")
    i_artist = column("artist", "id")

    clips = []
    for n, row in enumerate(rows[3:], start=4):
        if len(row) != len(pairs):
            raise FeatureStoreError(
                f"{tracks}: record {n}: {len(row)} fields, expected {len(pairs)}"
            )
        track_id = row[0].strip()
        if not track_id.isdigit():
            raise FeatureStoreError(f"{tracks}: record {n}: bad track id {track_id!r}")
        subset = row[i_subset].strip()
        if subset not in rank or subset == "full":
            raise FeatureStoreError(f"{tracks}: record {n}: unknown subset {subset!r}")
        if rank[subset] > limit:
            continue
        split = row[i_split].strip()
        if split not in _FMA_SPLITS:
            raise FeatureStoreError(f"{tracks}: record {n}: unknown split {split!r}")
        padded = f"{int(track_id):06d}"
        clips.append(Clip(
            id=str(int(track_id)),
            path=str(audio / padded[:3] / f"{padded}.mp3"),
            label=row[i_genre].strip(),
            split=_FMA_SPLITS[split],
            group=row[i_artist].strip(),
            meta={"subset": subset},
        ))
    return clips
