"""Layout adapters on tiny fixtures laid out exactly like the real data sets."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from featurestore.errors import FeatureStoreError
from featurestore.manifest import Clip
from featurestore.sources import (
    AUDIO_EXTENSIONS,
    LAYOUTS,
    detect_layout,
    gtzan_filtered_splits,
    load_manifest,
)

# --------------------------------------------------------------------------- builders


def write_wav(path: Path, seconds: float = 0.1, sr: int = 16000) -> Path:
    """A short 440 Hz sine, a valid WAV file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.1 * np.sin(2 * np.pi * 440.0 * t), sr)
    return path


def write_mp3_stub(path: Path) -> Path:
    """An empty file named ``.mp3``: the sources module lists files, it never decodes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


GTZAN_FILES = [
    "blues/blues.00000.wav",
    "blues/blues.00029.wav",
    "pop/pop.00015.wav",  # one of the 70 excerpts the filtered split leaves out
    "rock/rock.00000.wav",
    "classical/classical.00000.wav",
]


def make_gtzan(root: Path, genres_folder: str = "genres") -> Path:
    base = root / genres_folder if genres_folder else root
    for rel in GTZAN_FILES:
        write_wav(base / rel)
    write_text(base / "blues" / ".DS_Store", "")
    return root


NSYNTH_NOTES = {
    "train": [
        ("keyboard_electronic_001-021-127", "keyboard", "electronic", 21, 127, ["bright"]),
        ("bass_synthetic_033-022-050", "bass", "synthetic", 22, 50, ["dark", "distortion"]),
    ],
    "valid": [("guitar_acoustic_010-066-100", "guitar", "acoustic", 66, 100, [])],
    "test": [("brass_acoustic_046-101-050", "brass", "acoustic", 101, 50, ["fast_decay"])],
}
NSYNTH_MISSING_WAV = "bass_synthetic_033-022-050"
QUALITIES = [
    "bright", "dark", "distortion", "fast_decay", "long_release",
    "multiphonic", "nonlinear_env", "percussive", "reverb", "tempo-synced",
]


def make_nsynth(root: Path) -> Path:
    for split, notes in NSYNTH_NOTES.items():
        folder = root / f"nsynth-{split}"
        examples = {}
        for i, (note, family, source, pitch, velocity, quals) in enumerate(notes):
            instrument = note.rsplit("-", 2)[0]
            examples[note] = {
                "note": 201034 + i,
                "sample_rate": 16000,
                "pitch": pitch,
                "instrument_source": ["acoustic", "electronic", "synthetic"].index(source),
                "instrument_family_str": family,
                "instrument_str": instrument,
                "note_str": note,
                "qualities_str": quals,
                "instrument_source_str": source,
                "velocity": velocity,
                "instrument_family": 0,
                "instrument": 417,
                "qualities": [int(q in quals) for q in QUALITIES],
            }
            if note != NSYNTH_MISSING_WAV:
                write_wav(folder / "audio" / f"{note}.wav")
        write_text(folder / "examples.json", json.dumps(examples, indent=4))
    return root


# 55 real MagnaTagATune tag names, in the order of annotations_final.csv.
MTAT_TAGS = [
    "no voice", "singer", "duet", "plucking", "hard rock", "world", "bongos", "harpsichord",
    "female singing", "clasical", "sitar", "chorus", "female opera", "male vocal", "vocals",
    "clarinet", "heavy", "silence", "beats", "men", "woodwind", "funky", "no strings",
    "chimes", "foreign", "no piano", "horns", "classical", "female", "no voices",
    "soft rock", "eerie", "spacey", "jazz", "guitar", "quiet", "no beat", "banjo",
    "electric", "solo", "violins", "folk", "female voice", "wind", "happy", "ambient",
    "new age", "synth", "funk", "no singing", "middle eastern", "trumpet", "percussion",
    "drum", "airy",
]
# Counts over the listed clips: columns 0..47 twice, 52 three times, 49, 50 and 53 once
# (a tie at the 50th place, won by column 49), 48, 51, 54 never. Top-50 = 0..47, 49, 52.
MTAT_TOP50 = [*range(48), 49, 52]
MTAT_ROWS = [
    # clip_id, tag columns set, mp3_path
    ("2", [*range(48), 52, 53],
     "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3"),
    ("6", [*range(48), 52, 50],
     "c/bjorn_fogelberg-karooshi_porn_merged-01-karooshi_porn-88-117.mp3"),
    ("10", [52, 49],
     "0/american_baroque-dances_and_suites_of_rameau_and_couperin-25-le_petit_rien-88-117.mp3"),
    ("11", [48, 51, 54], ""),  # no audio: skipped, and does not count
    ("14", [], "b/philharmonia_baroque-beethoven_symphonies_no_3_eroica-02-adagio-0-29.mp3"),
]
MTAT_INFO = [
    # clip_id, artist, album
    ("2", "American Bach Soloists", "J.S. Bach Solo Cantatas"),
    ("6", "Bjorn Fogelberg", "Karooshi Porn Merged"),
    ("10", "American Baroque", ""),  # no album: falls back to the artist
]


def _tsv(rows: list[list[str]], quoted: bool = True) -> str:
    q = '"' if quoted else ""
    return "".join("\t".join(f"{q}{v}{q}" for v in row) + "\n" for row in rows)


def make_mtat(
    root: Path, mp3_subfolder: bool = False, with_info: bool = True, quoted: bool = True
) -> Path:
    header = ["clip_id", *MTAT_TAGS, "mp3_path"]
    rows = [header]
    for clip_id, on, mp3 in MTAT_ROWS:
        rows.append([clip_id, *("1" if i in on else "0" for i in range(len(MTAT_TAGS))), mp3])
    write_text(root / "annotations_final.csv", _tsv(rows, quoted))
    if with_info:
        info = [["clip_id", "track_number", "title", "artist", "album", "url",
                 "segmentStart", "segmentEnd", "original_url", "mp3_path"]]
        mp3_of = {c: m for c, _, m in MTAT_ROWS}
        for clip_id, artist, album in MTAT_INFO:
            info.append([clip_id, "1", "A Title", artist, album,
                         "http://www.magnatune.com/artists/x", "30", "59",
                         "http://he3.magnatune.com/all/x.mp3", mp3_of[clip_id]])
        write_text(root / "clip_info_final.csv", _tsv(info, quoted))
    audio = root / "mp3" if mp3_subfolder else root
    for _, _, mp3 in MTAT_ROWS:
        if mp3:
            write_mp3_stub(audio / mp3)
    return root


FMA_COLUMNS = {
    "album": ["comments", "date_created", "date_released", "engineer", "favorites", "id",
              "information", "listens", "producer", "tags", "title", "tracks", "type"],
    "artist": ["active_year_begin", "active_year_end", "associated_labels", "bio",
               "comments", "date_created", "favorites", "id", "latitude", "location",
               "longitude", "members", "name", "related_projects", "tags", "website",
               "wikipedia_page"],
    "set": ["split", "subset"],
    "track": ["bit_rate", "comments", "composer", "date_created", "date_recorded",
              "duration", "favorites", "genre_top", "genres", "genres_all", "information",
              "interest", "language_code", "license", "listens", "lyricist", "number",
              "publisher", "tags", "title"],
}
FMA_TRACKS = [
    # track_id, artist id, artist bio, genre_top, split, subset
    (2, 1, "<p>A Queens-based hip hop collective.</p>", "Hip-Hop", "training", "small"),
    (3, 1, "<p>A Queens-based hip hop collective.</p>", "Hip-Hop", "training", "medium"),
    (5, 1, "<p>A Queens-based hip hop collective.</p>", "Hip-Hop", "validation", "small"),
    (10, 6, "<p>Kurt Vile,\nbetter known\nas a guitarist.</p>", "Pop", "test", "small"),
    (20, 4, "", "", "training", "large"),
    (1024, 303, "", "Old-Time / Historic", "test", "medium"),
]


def make_fma(root: Path, audio_folders: tuple[str, ...] = ("fma_small",)) -> Path:
    top = [""] + [t for t, subs in FMA_COLUMNS.items() for _ in subs]
    sub = [""] + [s for subs in FMA_COLUMNS.values() for s in subs]
    index = {(t, s): i for i, (t, s) in enumerate(zip(top, sub, strict=True))}
    lines = [top, sub, ["track_id"] + [""] * (len(top) - 1)]
    for track_id, artist, bio, genre, split, subset in FMA_TRACKS:
        row = [""] * len(top)
        row[0] = str(track_id)
        row[index["artist", "id"]] = str(artist)
        row[index["artist", "bio"]] = bio
        row[index["artist", "name"]] = "AWOL" if artist == 1 else f"Artist {artist}"
        row[index["track", "genre_top"]] = genre
        row[index["track", "genres"]] = "[21]" if genre == "Hip-Hop" else "[]"
        row[index["track", "title"]] = "Food, with a comma"
        row[index["track", "bit_rate"]] = "256000"
        row[index["set", "split"]] = split
        row[index["set", "subset"]] = subset
        lines.append(row)
    path = root / "fma_metadata" / "tracks.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(lines)
    write_text(root / "fma_metadata" / "genres.csv", "genre_id,#tracks,parent,title,top_level\n")
    for folder in audio_folders:
        for track_id, *_ in FMA_TRACKS:
            padded = f"{track_id:06d}"
            write_mp3_stub(root / folder / padded[:3] / f"{padded}.mp3")
    return root


def ids(clips: list[Clip]) -> list[str]:
    return [c.id for c in clips]


# --------------------------------------------------------------------------- folder


def test_folder_recursive_sorted_audio_only(tmp_path: Path) -> None:
    root = tmp_path / "music"
    write_wav(root / "b.wav")
    write_wav(root / "A" / "z.WAV")
    write_wav(root / "a" / "c.flac")
    write_mp3_stub(root / "a" / "sub" / "d.mp3")
    write_wav(root / "a" / "e.ogg")
    write_text(root / "notes.txt", "not audio")
    write_wav(root / ".hidden.wav")
    write_wav(root / ".cache" / "f.wav")
    write_wav(root / "dir.v2" / "take.1.wav")

    clips = load_manifest(root)
    assert ids(clips) == ["A/z", "a/c", "a/e", "a/sub/d", "b", "dir.v2/take.1"]
    assert clips[0].path == str(root / "A" / "z.WAV")
    assert all(Path(c.path).is_absolute() for c in clips)
    assert all(c.label == "" and c.split == "" and c.group == "" for c in clips)
    assert load_manifest(root, layout="folder") == clips


def test_folder_is_deterministic_and_relative_source(tmp_path: Path, monkeypatch) -> None:
    write_wav(tmp_path / "x" / "1.wav")
    write_wav(tmp_path / "x" / "2.wav")
    monkeypatch.chdir(tmp_path)
    clips = load_manifest("x")
    assert ids(clips) == ["1", "2"]
    assert clips[0].path == str(tmp_path / "x" / "1.wav")


def test_folder_duplicate_ids_rejected(tmp_path: Path) -> None:
    write_wav(tmp_path / "song.wav")
    write_mp3_stub(tmp_path / "song.mp3")
    with pytest.raises(FeatureStoreError, match="duplicate clip id 'song'"):
        load_manifest(tmp_path)


def test_folder_without_audio(tmp_path: Path) -> None:
    write_text(tmp_path / "readme.txt", "")
    with pytest.raises(FeatureStoreError, match="no audio clips found"):
        load_manifest(tmp_path)


def test_audio_extensions() -> None:
    assert AUDIO_EXTENSIONS == (".wav", ".flac", ".ogg", ".mp3")


# --------------------------------------------------------------------------- csv


def test_csv_reordered_columns_extra_meta_multilabel(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_wav(data / "audio" / "a.wav")
    write_wav(data / "audio" / "b.wav")
    elsewhere = write_wav(tmp_path / "other" / "c.wav")
    write_text(data / "list.csv", (
        " Split ,Label, tempo ,PATH,Group\n"
        "Training, rock ; pop ;;,120,audio/a.wav,artist1\n"
        "val,jazz,90,audio/b.wav,\n"
        f"TEST,,100,{elsewhere},artist2\n"
        "\n"
        "validation,a;b,,audio/b.wav,x\n"
    ))
    with pytest.raises(FeatureStoreError, match="duplicate clip id 'audio/b'"):
        load_manifest(data / "list.csv")

    write_text(data / "list.csv", (
        " Split ,Label, tempo ,PATH,Group\n"
        "Training, rock ; pop ;;,120,audio/a.wav,artist1\n"
        "val,jazz,90,./audio/../audio/b.wav,\n"
        f"TEST,,100,{elsewhere},artist2\n"
    ))
    clips = load_manifest(data / "list.csv")
    assert clips == [
        Clip("audio/a", str(data / "audio" / "a.wav"), "rock;pop", "train", "artist1",
             {"tempo": "120"}),
        Clip("audio/b", str(data / "audio" / "b.wav"), "jazz", "valid", "", {"tempo": "90"}),
        Clip(str(elsewhere.with_suffix("")).replace("\\", "/"), str(elsewhere), "", "test",
             "artist2", {"tempo": "100"}),
    ]
    assert clips[0].labels == ["rock", "pop"]


def test_csv_id_column_and_missing_optional_columns(tmp_path: Path) -> None:
    write_wav(tmp_path / "x.wav")
    write_wav(tmp_path / "y.wav")
    write_text(tmp_path / "m.csv", "id,path\nclip-9,y.wav\n,x.wav\n")
    clips = load_manifest(tmp_path / "m.csv", layout="csv")
    assert ids(clips) == ["clip-9", "x"]  # file order, empty id falls back to the path
    assert [c.split for c in clips] == ["", ""]
    assert clips[0].meta == {}


def test_csv_bad_split_names_file_line_and_value(tmp_path: Path) -> None:
    write_text(tmp_path / "m.csv", "path,split\na.wav,train\nb.wav,dev\n")
    with pytest.raises(FeatureStoreError) as err:
        load_manifest(tmp_path / "m.csv")
    msg = str(err.value)
    assert str(tmp_path / "m.csv") in msg and "line 3" in msg and "'dev'" in msg


def test_csv_missing_path_column(tmp_path: Path) -> None:
    write_text(tmp_path / "m.csv", "file,label\na.wav,x\n")
    with pytest.raises(FeatureStoreError, match=r"m\.csv: no 'path' column"):
        load_manifest(tmp_path / "m.csv")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty file"),
        ("path,label\na.wav\n", "line 2: 1 fields"),
        ("path,label\n,x\n", "line 2: empty path"),
        ("path,Path\na.wav,b.wav\n", "duplicate column"),
    ],
)
def test_csv_malformed(tmp_path: Path, text: str, reason: str) -> None:
    write_text(tmp_path / "m.csv", text)
    with pytest.raises(FeatureStoreError, match=reason):
        load_manifest(tmp_path / "m.csv")


def test_csv_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b"path\n\xff\xfe\xfa.wav\n")
    with pytest.raises(FeatureStoreError, match=r"m\.csv: cannot read"):
        load_manifest(tmp_path / "m.csv")


# --------------------------------------------------------------------------- gtzan


def test_gtzan_embedded_filtered_split() -> None:
    splits = gtzan_filtered_splits()
    counts = {s: sum(v == s for v in splits.values()) for s in ("train", "valid", "test")}
    assert counts == {"train": 443, "valid": 197, "test": 290}
    # disjoint: no stem lost when the three files were merged into one mapping
    data = Path(__file__).parents[1] / "featurestore" / "data"
    lists = [
        (data / f"gtzan_filtered_{s}.txt").read_text().split() for s in ("train", "valid", "test")
    ]
    assert [len(x) for x in lists] == [443, 197, 290]
    assert len(set().union(*lists)) == 930 == len(splits)
    assert all(re.fullmatch(r"(blues|classical|country|disco|hiphop|jazz|metal|pop|reggae|rock)"
                            r"\.\d{5}", stem) for stem in splits)


@pytest.mark.parametrize("variant", ["genres", "genres_original", "Data/genres_original", "itself"])
def test_gtzan(tmp_path: Path, variant: str) -> None:
    root = tmp_path / "gtzan"
    if variant == "itself":
        make_gtzan(root, genres_folder="")  # root is the genres folder itself
    else:
        make_gtzan(root, genres_folder=variant)
    assert detect_layout(root) == "gtzan"
    clips = load_manifest(root)
    assert ids(clips) == [
        "blues.00000", "blues.00029", "classical.00000", "pop.00015", "rock.00000",
    ]
    assert [c.label for c in clips] == ["blues", "blues", "classical", "pop", "rock"]
    splits = gtzan_filtered_splits()
    assert [c.split for c in clips] == [
        splits["blues.00000"], splits["blues.00029"], splits["classical.00000"], "",
        splits["rock.00000"],
    ]
    assert [c.split for c in clips] == ["valid", "train", "valid", "", "train"]
    assert all(c.group == "" for c in clips)
    base = root if variant == "itself" else root / variant
    assert clips[0].path == str(base / "blues" / "blues.00000.wav")
    assert load_manifest(root, layout="gtzan") == clips


def test_gtzan_layout_on_wrong_folder(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav")
    with pytest.raises(FeatureStoreError, match="not a GTZAN layout"):
        load_manifest(tmp_path, layout="gtzan")


# --------------------------------------------------------------------------- nsynth


def test_nsynth(tmp_path: Path) -> None:
    root = make_nsynth(tmp_path / "nsynth")
    assert detect_layout(root) == "nsynth"
    clips = load_manifest(root)
    assert [(c.split, c.id) for c in clips] == [
        ("train", "bass_synthetic_033-022-050"),
        ("train", "keyboard_electronic_001-021-127"),
        ("valid", "guitar_acoustic_010-066-100"),
        ("test", "brass_acoustic_046-101-050"),
    ]
    bass = clips[0]
    assert bass == Clip(
        id="bass_synthetic_033-022-050",
        path=str(root / "nsynth-train" / "audio" / "bass_synthetic_033-022-050.wav"),
        label="bass",
        split="train",
        group="bass_synthetic_033",
        meta={"pitch": "22", "velocity": "50", "instrument_source_str": "synthetic",
              "qualities": "dark;distortion"},
    )
    assert not Path(bass.path).exists()  # listed anyway: the build records the error
    assert Path(clips[1].path).is_file()
    assert [c.label for c in clips] == ["bass", "keyboard", "guitar", "brass"]
    assert clips[2].meta["qualities"] == ""


def test_nsynth_split_folder_itself(tmp_path: Path) -> None:
    root = make_nsynth(tmp_path / "nsynth") / "nsynth-valid"
    assert detect_layout(root) == "nsynth"
    clips = load_manifest(root)
    assert [(c.id, c.split, c.group) for c in clips] == [
        ("guitar_acoustic_010-066-100", "valid", "guitar_acoustic_010"),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "cannot read JSON"),
        ("[1, 2]", "expected an object"),
        ('{"a-001-002": {"pitch": 1}}', "note 'a-001-002': missing field"),
    ],
)
def test_nsynth_malformed(tmp_path: Path, text: str, reason: str) -> None:
    write_text(tmp_path / "nsynth-test" / "examples.json", text)
    with pytest.raises(FeatureStoreError, match=reason) as err:
        load_manifest(tmp_path)
    assert "examples.json" in str(err.value)


# --------------------------------------------------------------------------- mtat


@pytest.mark.parametrize(("mp3_subfolder", "quoted"), [(False, True), (True, True), (True, False)])
def test_mtat(tmp_path: Path, mp3_subfolder: bool, quoted: bool) -> None:
    root = make_mtat(tmp_path / "mtat", mp3_subfolder=mp3_subfolder, quoted=quoted)
    assert detect_layout(root) == "mtat"
    clips = load_manifest(root)
    assert ids(clips) == ["2", "6", "10", "14"]
    assert [c.split for c in clips] == ["test", "valid", "train", "train"]
    assert [c.group for c in clips] == [
        "J.S. Bach Solo Cantatas", "Karooshi Porn Merged", "American Baroque", "",
    ]
    audio = root / "mp3" if mp3_subfolder else root
    assert [c.path for c in clips] == [str(audio / m) for _, _, m in MTAT_ROWS if m]
    assert all(Path(c.path).is_file() for c in clips)

    def tags(cols: list[int]) -> str:
        return ";".join(MTAT_TAGS[i] for i in sorted(cols))

    assert clips[0].label == tags([*range(48), 52])
    assert clips[0].meta == {"tags_all": tags([*range(48), 52, 53])}
    assert clips[1].label == tags([*range(48), 52])
    assert clips[1].meta == {"tags_all": tags([*range(48), 50, 52])}
    assert clips[2].label == "no singing;percussion"  # columns 49 and 52
    assert clips[2].meta == {"tags_all": "no singing;percussion"}
    assert clips[3].label == "" and clips[3].meta == {"tags_all": ""}
    top50 = {t for c in clips for t in c.labels}
    assert top50 == {MTAT_TAGS[i] for i in MTAT_TOP50}
    assert len(MTAT_TOP50) == 50


def test_mtat_without_clip_info(tmp_path: Path) -> None:
    root = make_mtat(tmp_path, with_info=False)
    assert [c.group for c in load_manifest(root)] == ["", "", "", ""]


def test_mtat_bad_tag_value(tmp_path: Path) -> None:
    write_text(tmp_path / "annotations_final.csv",
               '"clip_id"\t"guitar"\t"mp3_path"\n"2"\t"yes"\t"f/a-b-01-c-0-29.mp3"\n')
    with pytest.raises(FeatureStoreError, match=r"row 2: tag 'guitar' has value 'yes'"):
        load_manifest(tmp_path)


def test_mtat_missing_column(tmp_path: Path) -> None:
    write_text(tmp_path / "annotations_final.csv", '"clip_id"\t"guitar"\n"2"\t"1"\n')
    with pytest.raises(FeatureStoreError, match=r"annotations_final\.csv: expected 'clip_id'"):
        load_manifest(tmp_path)


# --------------------------------------------------------------------------- fma


def test_fma_small(tmp_path: Path) -> None:
    root = make_fma(tmp_path / "fma", audio_folders=("fma_small", "fma_large"))
    assert detect_layout(root) == "fma"
    clips = load_manifest(root)
    assert ids(clips) == ["2", "5", "10"]
    assert [c.label for c in clips] == ["Hip-Hop", "Hip-Hop", "Pop"]
    assert [c.split for c in clips] == ["train", "valid", "test"]
    assert [c.group for c in clips] == ["1", "1", "6"]
    assert clips[0].path == str(root / "fma_small" / "000" / "000002.mp3")
    assert all(Path(c.path).is_file() for c in clips)
    assert clips[0].meta == {"subset": "small"}


def test_fma_medium_and_full(tmp_path: Path) -> None:
    root = make_fma(tmp_path / "fma", audio_folders=("fma_medium",))
    clips = load_manifest(root)
    assert ids(clips) == ["2", "3", "5", "10", "1024"]
    assert clips[-1] == Clip("1024", str(root / "fma_medium" / "001" / "001024.mp3"),
                             "Old-Time / Historic", "test", "303", {"subset": "medium"})

    root = make_fma(tmp_path / "fma_f", audio_folders=("fma_full",))
    clips = load_manifest(root, layout="fma")
    assert ids(clips) == ["2", "3", "5", "10", "20", "1024"]
    assert clips[4] == Clip("20", str(root / "fma_full" / "000" / "000020.mp3"),
                            "", "train", "4", {"subset": "large"})


def test_fma_missing_column_and_audio(tmp_path: Path) -> None:
    root = make_fma(tmp_path / "a", audio_folders=())
    with pytest.raises(FeatureStoreError, match="no audio folder"):
        load_manifest(root)
    write_text(tmp_path / "b" / "fma_metadata" / "tracks.csv",
               ",track,set\n,title,split\ntrack_id,,\n2,Food,training\n")
    (tmp_path / "b" / "fma_small").mkdir()
    with pytest.raises(FeatureStoreError, match=r"tracks\.csv: no \(track, genre_top\) column"):
        load_manifest(tmp_path / "b")


# --------------------------------------------------------------------------- dispatch


def test_registry() -> None:
    assert set(LAYOUTS) == {"folder", "csv", "gtzan", "nsynth", "mtat", "fma"}
    for func in LAYOUTS.values():
        assert func.__doc__ and "Expected layout" in func.__doc__


def test_missing_source(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FeatureStoreError, match=re.escape(f"{missing}: no such file or directory")):
        load_manifest(missing)


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(FeatureStoreError) as err:
        load_manifest(tmp_path, layout="musdb")
    assert "'musdb'" in str(err.value)
    for name in LAYOUTS:
        assert name in str(err.value)


def test_auto_detects_csv_and_rejects_other_files(tmp_path: Path) -> None:
    write_text(tmp_path / "M.CSV", "path\na.wav\n")
    assert detect_layout(tmp_path / "M.CSV") == "csv"
    wav = write_wav(tmp_path / "a.wav")
    with pytest.raises(FeatureStoreError, match="cannot detect the layout"):
        load_manifest(wav)


def test_explicit_layout_overrides_detection(tmp_path: Path) -> None:
    root = make_gtzan(tmp_path)
    clips = load_manifest(root, layout="folder")
    assert ids(clips)[0] == "genres/blues/blues.00000"
    assert clips[0].label == ""
