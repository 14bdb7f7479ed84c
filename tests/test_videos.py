"""Users' videos: found in folders or manifests, resampled by time, cached, refused clearly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from videogen import class_folders, labelled_video, motion_clip, write

from actionstream.training.clip_decode import decode_clip
from actionstream.training.clip_sources import find_clips
from actionstream.training.clips import Clip, ClipRef, DatasetError, Preprocessing
from actionstream.training.frame_cache import ClipCache, file_digest
from actionstream.training.splits import split
from actionstream.training.videos import VideoDataset, load_dataset

ROOT = Path(__file__).resolve().parents[1]


def _numbered_video(path: Path, n: int, fps: float) -> None:
    """Frame i is a flat grey of level 4*i, so a decoded frame says which it was."""
    frames = np.stack([np.full((48, 64, 3), 4 * i, np.uint8) for i in range(n)])
    write(frames, path, fps)


def _which(frames: np.ndarray) -> list[int]:
    return [round(float(f.mean()) / 4) for f in frames]


def test_class_folders_give_labels_from_folder_names(tmp_path: Path) -> None:
    class_folders(tmp_path, ("left", "right"), 2)
    (tmp_path / "right" / "notes.txt").write_text("not a video")
    (tmp_path / "right" / ".DS_Store").write_bytes(b"\0")  # hidden: never data, never named
    session = tmp_path / "left" / "session 2"
    session.mkdir()
    (tmp_path / "right" / "right_000.mp4").rename(session / "Clip.M4V")
    said: list[str] = []
    refs = find_clips(tmp_path, said.append)
    assert sorted((r.label, r.path.name) for r in refs) == [
        ("left", "Clip.M4V"),  # subfolders and other containers count, under their label
        ("left", "left_000.mp4"),
        ("left", "left_001.avi"),
        ("right", "right_001.avi"),
    ]
    assert said == [
        f"ignored 1 file(s) that are not videos by their name (.mp4|.m4v|.avi|"
        f".mkv|.webm|.mov|.mpg|.mpeg|.wmv|.ts): {Path('right', 'notes.txt')}"
    ]


def test_a_manifest_names_clips_and_segments_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    _numbered_video(tmp_path / "v" / "long.avi", 40, 10.0)
    manifest = tmp_path / "clips.csv"
    manifest.write_text("path,label,start_s,end_s\nv/long.avi,a,0,1.5\nv/long.avi,b,2,3.5\n")
    refs = find_clips(manifest)
    assert [(r.label, r.start_s, r.end_s) for r in refs] == [("a", 0.0, 1.5), ("b", 2.0, 3.5)]
    second = decode_clip(refs[1], Preprocessing(16, 10.0))
    assert _which(second) == list(range(20, 35))
    # Spans that meet, and one video listed under two spellings of its path, are fine.
    manifest.write_text("path,label,start_s,end_s\nv/long.avi,a,0,2\nv/../v/long.avi,b,2,4\n")
    assert len(find_clips(manifest)) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\nx.avi,a\n", "expected columns path,label"),
        ("path,label,start_s,end_s\nx.avi,a,soon,1\n", "numbers in seconds"),
        ("path,label,start_s,end_s\nx.avi,a,3,1\n", "need 0 <= start_s < end_s"),
        # NaN compares False with everything: it passed the check above and spanned the file.
        ("path,label,start_s,end_s\nx.avi,a,nan,2\n", "m.csv:2: start_s and end_s must be finite"),
        ("path,label,start_s,end_s\nx.avi,a,0,NaN\n", "m.csv:2: start_s and end_s must be finite"),
        ("path,label,start_s,end_s\nx.avi,a,1,inf\n", "m.csv:2: start_s and end_s must be finite"),
        ("path,label\n", "lists no clips"),
        (
            "path,label,start_s,end_s\nx.avi,a,0,2\ny.avi,a,,\nx.avi,a,0,2\n",
            r"m.csv:4: repeats line 2 \(.*x.avi \[0s-2s\], a\); list each clip once",
        ),
        (
            "path,label,start_s,end_s\nx.avi,a,0,2\nx.avi,b,2,4\nx.avi,c,1,3\n",
            r"m.csv:4: overlaps line 2 in x.avi \(.*x.avi \[0s-2s\] a, .*x.avi \[1s-3s\] c\); "
            "spans of one video must not share frames",
        ),
        ("path,label,start_s,end_s\nx.avi,a,3,4\n./x.avi,b,,\n", "m.csv:3: overlaps line 2"),
    ],
)
def test_a_bad_manifest_says_which_line(tmp_path: Path, text: str, message: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(DatasetError, match=message):
        find_clips(manifest)


def test_a_span_to_its_videos_end_is_written_end(tmp_path: Path) -> None:
    # With a blank end_s refused (a forgotten cell), a span to the end of a recording of
    # unknown length had no way to be written: a number past the end is skipped too.
    write(motion_clip("left", 1.0, 10.0, (32, 24), seed=1), tmp_path / "x.avi", 10.0)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,start_s,end_s\nx.avi,a,0,0.4\nx.avi,b,0.4,END\n")
    refs = find_clips(manifest)
    assert [(r.label, r.start_s, r.end_s) for r in refs] == [("a", 0.0, 0.4), ("b", 0.4, None)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # A misspelt span column used to be ignored: whole videos trained on, no word.
        (
            "path,label,start,end\nx.avi,a,0,1\n",
            r"m.csv:1: unknown column\(s\) 'start' \(for 'start_s'\?\), 'end' \(for 'end_s'\?\)",
        ),
        ("Path,Label\nx.avi,a\n", r"m.csv:1: unknown column\(s\) 'Path' \(for 'path'\?\)"),
        # Spans under names of their own, where ours are missing: whole videos, unsaid.
        ("path,label,from_s,to_s\nx.avi,a,0,1\n", r"'from_s' \(spans go in start_s,end_s"),
        ("path,label,start_s,duration\nx.avi,a,0,1\n", r"'duration' \(spans go in start_s"),
        ("path\nx.avi\n", r"m.csv:1: no path,label in the header"),
        # Blank lines still count: the line is the file's, not the row's.
        ("path,label,start_s,end_s\nx.avi,a,0,1\n\n\nx.avi,b,soon,2\n", "m.csv:5: expected"),
        # A span with one end was read to the video's start or end: a forgotten cell, or
        # column, labelled a whole multi-action recording.
        ("path,label,start_s\nx.avi,a,0\n", r"m.csv:1: end_s is missing from the header"),
        ("path,label,end_s\nx.avi,a,1\n", r"m.csv:1: start_s is missing from the header"),
        (
            "path,label,start_s,end_s\nx.avi,a,,\nx.avi,b,0.2,\n",
            r"m.csv:3: end_s is blank where start_s is not; give both \(end_s `end` for the "
            r"video's end\), or leave both blank",
        ),
        ("path,label,start_s,end_s\nx.avi,a, ,0.2\n", r"m.csv:2: start_s is blank where end_s"),
        # A row naming a file that is not there is a typo, not a clip to skip.
        ("path,label\nx.avi,a\nnothere.avi,b\n", r"m.csv:3: .*nothere.avi: no such file"),
        # A folder was only skipped ("Is a directory"), where a missing file is an error.
        ("path,label\nx.avi,a\nsub,b\n", r"m.csv:3: .*sub is a folder, not a video"),
        # Fields past the header's were kept under None and never looked at.
        ("path,label\nx.avi,a,extra\n", r"m.csv:2: more fields than the header's 2"),
        # ...but an empty one (a trailing comma, as spreadsheets write) is no field: line 2
        # passes, and line 3 is where it stops.
        ("path,label\nx.avi,a,\nnothere.avi,b,\n", r"m.csv:3: .*nothere.avi: no such file"),
        # A semicolon-separated file read as one column named 'path;label;...'.
        ("path;label\nx.avi;a\n", r"m.csv:1: the manifest must be comma-separated"),
    ],
)
def test_a_manifests_header_and_rows_are_checked_by_line(
    tmp_path: Path, text: str, message: str
) -> None:
    _numbered_video(tmp_path / "x.avi", 4, 10.0)
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(DatasetError, match=message):
        find_clips(manifest)


def test_a_span_well_past_the_videos_end_is_skipped_naming_its_line(tmp_path: Path) -> None:
    # Spans in milliseconds by mistake: the first row's span, 0 to 3000 "seconds", was
    # read to the end of the video and labelled all of it.
    for seed, name in enumerate(("long.avi", "ms.avi", "whole.avi")):
        write(motion_clip("left", 3.0, 10.0, (96, 72), seed=seed), tmp_path / name, 10.0)
    manifest = _manifest(
        tmp_path,
        [
            "long.avi,a,0,1.5",
            "long.avi,b,1.5,3.5",  # past its 3 s by less than the slack: to its end
            "ms.avi,a,0,3000",
            "whole.avi,b,,",  # both blank: the whole video
        ],
    )
    said: list[str] = []
    cache = ClipCache(tmp_path / "cache", Preprocessing(16, 10.0))
    dataset = load_dataset(find_clips(manifest), cache, 2, said.append)
    assert said == [
        f"skipped {manifest}:4: {tmp_path / 'ms.avi'} [0s-3000s]: the span ends at 3000 s, "
        "past the video's end at 3.0 s; start_s and end_s are in seconds (milliseconds given?)"
    ]
    assert [len(c) for c in dataset.clips] == [15, 15, 30]


def test_labels_that_differ_only_by_case_or_spaces_are_refused(tmp_path: Path) -> None:
    # They used to become two classes of one action, each with half its videos.
    _numbered_video(tmp_path / "x.avi", 4, 10.0)
    _numbered_video(tmp_path / "y.avi", 4, 10.0)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nx.avi, Down \ny.avi,Down\n")
    assert {r.label for r in find_clips(manifest)} == {"Down"}  # spaces stripped
    manifest.write_text("path,label\nx.avi, Down \ny.avi,down\n")
    with pytest.raises(DatasetError, match="labels 'Down' and 'down' differ only by case"):
        find_clips(manifest)
    folders = tmp_path / "folders"
    for name in ("Left", "left"):
        (folders / name).mkdir(parents=True)
        shutil.copy(tmp_path / "x.avi", folders / name / "x.avi")
    with pytest.raises(DatasetError, match="labels 'Left' and 'left' differ only by case"):
        find_clips(folders)


def test_a_class_folders_label_is_read_without_the_spaces_around_it(tmp_path: Path) -> None:
    # A folder "spaced " gave the label "spaced ", which no manifest or frame,label CSV
    # could name: they strip theirs. Two folders that differ only by such spaces are one
    # label, as subfolders of one are; a folder of spaces alone names no label.
    _numbered_video(tmp_path / "x.avi", 4, 10.0)
    _numbered_video(tmp_path / "y.avi", 6, 10.0)
    folders = tmp_path / "folders"
    for name, video in (("spaced ", "x.avi"), (" other", "x.avi"), ("other", "y.avi")):
        (folders / name).mkdir(parents=True)
        shutil.copy(tmp_path / video, folders / name / video)
    (folders / "empty ").mkdir()  # told as a folder without videos, by its name
    with pytest.raises(DatasetError, match=r"no video in class folder\(s\) empty "):
        find_clips(folders)
    (folders / "empty ").rmdir()
    refs = find_clips(folders)
    labels = {(r.path.parent.name, r.path.name): r.label for r in refs}
    assert labels == {
        ("spaced ", "x.avi"): "spaced",
        (" other", "x.avi"): "other",
        ("other", "y.avi"): "other",
    }
    # A folder beside "other" that has no videos leaves "other" with its videos.
    (folders / "other  ").mkdir()
    assert {r.label for r in find_clips(folders)} == {"spaced", "other"}
    blank = folders / "  "
    blank.mkdir()
    with pytest.raises(DatasetError) as refused:
        find_clips(folders)
    assert str(refused.value) == (
        f"{blank}: a class folder's name is its label, and '  ' is blank without the "
        "spaces around it; rename the folder"
    )


def test_a_manifests_other_columns_are_named_and_left_alone(tmp_path: Path) -> None:
    # Notes beside the clips, or a trailing comma, are no misspelt column of ours.
    _numbered_video(tmp_path / "x.avi", 4, 10.0)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,notes,status,labeler,\nx.avi,a,seen twice,ok,bo,\n")
    said: list[str] = []
    [ref] = find_clips(manifest, said.append)
    assert (ref.label, ref.start_s, ref.end_s) == ("a", 0.0, None)
    assert said == [f"{manifest}: ignored column(s) 'notes', 'status', 'labeler'"]
    manifest.write_text("path,label,start_s,end_s,fps\nx.avi,a,0,0.3,10\n")
    assert find_clips(manifest, said.append)[0].end_s == 0.3  # spans given: fps is a note


def test_csvs_from_a_spreadsheet_with_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" starts with U+FEFF, which used to make the first column unknown.
    from actionstream.frame_labels import read_frame_labels
    from actionstream.training.splits import split_from_file

    class_folders(tmp_path / "data", ("left", "right"), 1)
    bom = "\ufeff"
    rows = "".join(
        f"data/{r.path.parent.name}/{r.path.name},{r.label}\r\n"
        for r in find_clips(tmp_path / "data")
    )
    manifest = tmp_path / "m.csv"
    manifest.write_text(bom + "path,label\r\n" + rows, encoding="utf-8")
    refs = find_clips(manifest)
    assert sorted(r.label for r in refs) == ["left", "right"]
    dataset = load_dataset(
        refs, ClipCache(tmp_path / "cache", Preprocessing(16, 10.0)), 2, report=lambda _: None
    )
    sheet = tmp_path / "split.csv"
    lines = "".join(
        f"data/{c.ref.path.parent.name}/{c.ref.path.name},train\n" for c in dataset.clips
    )
    sheet.write_text(bom + "path,split\n" + lines, encoding="utf-8")
    assert split_from_file(dataset, sheet) == ([0, 1], [])
    sheet.write_text(bom + "path,split\n" + lines + "data/left\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"split\.csv:4: expected path,split"):
        split_from_file(dataset, sheet)
    labels = tmp_path / "labels.csv"
    labels.write_text(bom + "frame,label\n0,left\n1,right\n", encoding="utf-8")
    assert read_frame_labels(labels) == {0: "left", 1: "right"}


def test_a_data_folder_reached_through_dots_is_read(tmp_path: Path) -> None:
    # Only names below the data folder are dot files to leave out, not its own path.
    class_folders(tmp_path / ".datasets" / "videos", ("left", "right"), 1)
    (tmp_path / "runs").mkdir()
    via = tmp_path / "runs" / ".." / ".datasets" / "videos"
    assert sorted(r.label for r in find_clips(via)) == ["left", "right"]


def test_a_damaged_cache_entry_is_decoded_again(tmp_path: Path) -> None:
    # Cut short (a full disk, a copy interrupted): read back, it raised a traceback.
    _numbered_video(tmp_path / "v.avi", 12, 10.0)
    cache = ClipCache(tmp_path / "cache", Preprocessing(16, 10.0))
    whole = np.array(cache.load(ClipRef(tmp_path / "v.avi", "a")).frames)
    [entry] = (tmp_path / "cache").glob("*.npy")
    entry.write_bytes(entry.read_bytes()[:200])
    again = cache.load(ClipRef(tmp_path / "v.avi", "a"))
    assert np.array_equal(again.frames, whole)
    assert entry.stat().st_size > 200  # rewritten whole


def test_a_videos_digest_is_read_once_and_follows_the_file(tmp_path: Path) -> None:
    # Every span of a long recording hashed the whole file, on every run.
    video, root, prep = tmp_path / "v.avi", tmp_path / "cache", Preprocessing(16, 10.0)
    _numbered_video(video, 12, 10.0)
    spans = [ClipRef(video, "a", 0.0, 0.5), ClipRef(video, "b", 0.5, None)]
    assert [ClipCache(root, prep).load(span).digest for span in spans] == [file_digest(video)] * 2
    [note] = (root / "digests").iterdir()
    # Another run takes the noted digest rather than reading the video (a note made to
    # lie shows it)...
    note.write_text("0" * 64)
    assert ClipCache(root, prep).load(spans[0]).digest == "0" * 64
    # ... until the file changes.
    _numbered_video(video, 14, 10.0)
    assert ClipCache(root, prep).load(spans[0]).digest == file_digest(video) != "0" * 64
    assert len(list((root / "digests").iterdir())) == 2


def test_frames_are_resampled_by_timestamp(tmp_path: Path) -> None:
    _numbered_video(tmp_path / "fast.avi", 30, 30.0)  # 1 s at 30 fps
    _numbered_video(tmp_path / "mid.avi", 15, 15.0)  # 1 s at 15 fps
    _numbered_video(tmp_path / "slow.avi", 5, 5.0)  # 1 s at 5 fps
    prep = Preprocessing(16, 10.0)
    fast = decode_clip(ClipRef(tmp_path / "fast.avi", "x"), prep)
    assert _which(fast) == list(range(0, 30, 3))  # every third frame
    # 15 fps on a 100-ms grid with 25 ms of tolerance, as the server takes a camera's.
    mid = decode_clip(ClipRef(tmp_path / "mid.avi", "x"), prep)
    assert _which(mid) == [0, 2, 3, 5, 6, 8, 9, 11, 12, 14]
    slow = decode_clip(ClipRef(tmp_path / "slow.avi", "x"), prep)
    assert _which(slow) == [0, 1, 2, 3, 4]  # each frame once, as the server steps it
    assert fast.shape == (10, 16, 16, 3) and fast.dtype == np.uint8


def test_decoded_clips_are_cached_and_read_back_lazily(tmp_path: Path) -> None:
    class_folders(tmp_path / "data", ("left", "right"), 1)
    cache = ClipCache(tmp_path / "cache", Preprocessing(24, 10.0))
    refs = find_clips(tmp_path / "data")
    first = [cache.load(r) for r in refs]
    entries = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(entries) == 2
    stamps = [e.stat().st_mtime_ns for e in entries]
    again = [cache.load(r) for r in refs]
    assert [e.stat().st_mtime_ns for e in sorted((tmp_path / "cache").glob("*.npy"))] == stamps
    assert all(isinstance(c.frames, np.memmap) for c in again)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
    # Other preprocessing is another entry, not a stale hit.
    ClipCache(tmp_path / "cache", Preprocessing(32, 10.0)).load(refs[0])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3


def test_unreadable_videos_are_skipped_by_name(tmp_path: Path) -> None:
    class_folders(tmp_path / "data", ("left", "right"), 2)
    (tmp_path / "data" / "left" / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    (tmp_path / "data" / "right" / "empty.avi").write_bytes(b"")
    said: list[str] = []
    dataset = load_dataset(
        find_clips(tmp_path / "data"),
        ClipCache(tmp_path / "cache", Preprocessing(24, 10.0)),
        min_frames=2,
        report=said.append,
    )
    assert dataset.per_class() == {"left": 2, "right": 2}
    assert len(said) == 2
    assert any("broken.mp4" in line for line in said) and any("empty.avi" in line for line in said)


def test_a_copied_video_is_used_once_and_refused_under_another_label(tmp_path: Path) -> None:
    # Scraped and merged data sets hold copies: kept twice, a clip weighs double and may
    # be trained on in one copy and scored in the other.
    data = class_folders(tmp_path / "data", ("left", "right"), 3)
    shutil.copy(data / "left" / "left_000.mp4", data / "left" / "zz copy.mp4")
    cache = ClipCache(tmp_path / "cache", Preprocessing(16, 10.0))
    said: list[str] = []
    dataset = load_dataset(find_clips(data), cache, 2, report=said.append)
    assert dataset.per_class() == {"left": 3, "right": 3}
    assert said == [
        f"skipped {data / 'left' / 'zz copy.mp4'}: a copy of "
        f"{data / 'left' / 'left_000.mp4'} (the same bytes)"
    ]
    shutil.copy(data / "left" / "left_001.avi", data / "right" / "left_001.avi")
    with pytest.raises(DatasetError) as e:
        load_dataset(find_clips(data), cache, 2, report=lambda _: None)
    assert str(e.value) == (
        f"{data / 'right' / 'left_001.avi'}, labelled right, has the same bytes as "
        f"{data / 'left' / 'left_001.avi'}, labelled left, and shares its frames: "
        "delete or move the copy whose label is wrong"
    )
    # A copy too short to use is skipped for that alone, whatever its label.
    (data / "right" / "left_001.avi").unlink()
    write(np.zeros((1, 48, 64, 3), np.uint8), data / "left" / "blink.avi", 10.0)
    shutil.copy(data / "left" / "blink.avi", data / "right" / "blink.avi")
    said.clear()
    load_dataset(find_clips(data), cache, 2, report=said.append)
    assert [line.split(": ", 1)[1] for line in said if "blink" in line] == [
        "1 frame at 10 fps, need 2",
        "1 frame at 10 fps, need 2",
    ]


def _manifest(folder: Path, rows: list[str]) -> Path:
    manifest = folder / "m.csv"
    manifest.write_text("path,label,start_s,end_s\n" + "\n".join(rows) + "\n")
    return manifest


def test_copies_are_found_however_their_spans_are_written(tmp_path: Path) -> None:
    # A copy's span as the original's is used once; one that shares only some frames
    # with it, or carries another label, is refused in either order: the same frames
    # would count twice, or carry two labels.
    write(np.zeros((60, 48, 64, 3), np.uint8), tmp_path / "long.avi", 10.0)
    shutil.copy(tmp_path / "long.avi", tmp_path / "long copy.avi")
    for n, name in enumerate(("a", "b")):
        _numbered_video(tmp_path / f"{name}.avi", 10 + n, 10.0)
    cache = ClipCache(tmp_path / "cache", Preprocessing(16, 10.0))
    others = ["a.avi,left,,", "b.avi,right,,"]
    said: list[str] = []
    alike = _manifest(tmp_path, ["long.avi,left,0,6", "long copy.avi,left,0,6", *others])
    dataset = load_dataset(find_clips(alike), cache, 2, report=said.append)
    assert len(dataset.clips) == 3
    assert said == [
        f"skipped {tmp_path / 'long copy.avi'} [0s-6s]: a copy of "
        f"{tmp_path / 'long.avi'} [0s-6s] (the same bytes)"
    ]
    for rows in (
        ["long.avi,left,,", "long copy.avi,left,2,3"],
        ["long copy.avi,left,2,3", "long.avi,left,,"],
    ):
        with pytest.raises(DatasetError, match="must not share frames"):
            load_dataset(find_clips(_manifest(tmp_path, [*rows, *others])), cache, 2)
    for rows in (
        ["long.avi,left,0,4", "long copy.avi,right,2,6"],
        ["long copy.avi,left,0,1", "long copy.avi,right,2,6", "long.avi,left,2,6"],
        ["long.avi,left,2,6", "long copy.avi,left,0,1", "long copy.avi,right,2,6"],
    ):
        with pytest.raises(DatasetError, match=r"has the same bytes as .*shares its frames"):
            load_dataset(find_clips(_manifest(tmp_path, [*rows, *others])), cache, 2)


def test_spans_of_copies_of_one_video_are_held_out_together(tmp_path: Path) -> None:
    write(np.zeros((60, 48, 64, 3), np.uint8), tmp_path / "long.avi", 10.0)
    shutil.copy(tmp_path / "long.avi", tmp_path / "long copy.avi")
    for n, name in enumerate(("a", "b", "c")):
        _numbered_video(tmp_path / f"{name}.avi", 10 + n, 10.0)
    rows = ["long.avi,left,0,2", "long.avi,right,2,4", "long copy.avi,left,4,6"]
    rows += ["a.avi,left,,", "b.avi,right,,", "c.avi,right,,"]
    manifest = _manifest(tmp_path, rows)
    cache = ClipCache(tmp_path / "cache", Preprocessing(16, 10.0))
    dataset = load_dataset(find_clips(manifest), cache, 2, report=lambda _: None)
    assert len(dataset.clips) == 6  # another span of a copy is no repeat
    copies = {i for i, c in enumerate(dataset.clips) if c.ref.path.name.startswith("long")}
    for seed in range(20):
        train, val = split(dataset, 0.5, seed)
        assert copies <= set(train) or copies <= set(val), seed
    # A split file of the user's own that parts them is refused.
    from actionstream.training.splits import split_from_file

    sheet = tmp_path / "split.csv"
    sides = {"long.avi": "train", "long copy.avi": "val", "a.avi": "val"}
    sheet.write_text(
        "path,split\n"
        + "".join(
            f"{v},{sides.get(v, 'train')}\n"
            for v in ("long.avi", "long copy.avi", "a.avi", "b.avi", "c.avi")
        )
    )
    with pytest.raises(DatasetError) as e:
        split_from_file(dataset, sheet)
    assert str(e.value) == (
        f"{sheet}: {tmp_path / 'long copy.avi'} (val) has the same bytes as "
        f"{tmp_path / 'long.avi'} (train); a video's copies go on one side: mark them alike"
    )


def test_a_label_without_usable_video_is_refused_before_training(tmp_path: Path) -> None:
    class_folders(tmp_path / "data", ("left",), 2)
    (tmp_path / "data" / "right").mkdir()
    (tmp_path / "data" / "right" / "bad.mp4").write_bytes(b"junk")
    cache = ClipCache(tmp_path / "cache", Preprocessing(24, 10.0))
    with pytest.raises(DatasetError, match=r"no usable video for label\(s\) right"):
        load_dataset(find_clips(tmp_path / "data"), cache, 2, report=lambda _: None)
    (tmp_path / "data" / "right" / "bad.mp4").unlink()
    (tmp_path / "data" / "right").rmdir()
    with pytest.raises(DatasetError, match="need at least two labels"):
        load_dataset(find_clips(tmp_path / "data"), cache, 2, report=lambda _: None)


def test_videos_beside_the_class_folders_are_named_not_dropped(tmp_path: Path) -> None:
    # A class's videos copied to the top of --data, beside the class folders, were left
    # out without a word: a whole class could go missing from the model.
    data = class_folders(tmp_path / "data", ("left", "right"), 2)
    for video in (class_folders(tmp_path / "more", ("up",), 3) / "up").iterdir():
        video.rename(data / video.name)
    said: list[str] = []
    assert {ref.label for ref in find_clips(data, said.append)} == {"left", "right"}
    assert said == [
        f"ignored 3 video(s) directly in {data}, beside the class folders (a video's label "
        f"is the folder it is in): up_000.mp4, up_001.avi, up_002.mp4; move each into "
        f"{data}/<label>/ to train on it"
    ]


def test_a_class_folder_given_as_the_data_says_to_give_its_parent(tmp_path: Path) -> None:
    # `train --data videos/left` said "no videos found; expected videos/left/<label>/*.mp4"
    # of a folder full of videos.
    pytest.importorskip("torch")
    data = class_folders(tmp_path / "videos", ("left", "right"), 2)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "actionstream", "train", "--data", str(data / "left")),
            *("--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"actionstream train: {data / 'left'}: no videos in class folders, but 2 directly in "
        f"it: it looks like one class's folder; give --data its parent ({data}), the folder "
        "of class folders (one per label)\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_class_folder_without_videos_is_refused_by_name(tmp_path: Path) -> None:
    # Every folder is a label: a class not copied in yet, or in a format the list lacks,
    # would otherwise leave a model without it.
    class_folders(tmp_path, ("left", "right"), 2)
    (tmp_path / "up").mkdir()
    (tmp_path / "down").mkdir()
    (tmp_path / "down" / "clip.MTS").write_bytes(b"\0")
    said: list[str] = []
    with pytest.raises(DatasetError, match=r"no video in class folder\(s\) down, up; add its"):
        find_clips(tmp_path, said.append)
    assert said == [
        "ignored 1 file(s) that are not videos by their name (.mp4|.m4v|.avi|"
        f".mkv|.webm|.mov|.mpg|.mpeg|.wmv|.ts): {Path('down', 'clip.MTS')}"
    ]


def test_the_split_holds_out_every_label(tmp_path: Path) -> None:
    class_folders(tmp_path / "data", ("left", "right", "up"), 5)
    cache = ClipCache(tmp_path / "cache", Preprocessing(16, 10.0))
    dataset = load_dataset(find_clips(tmp_path / "data"), cache, 2)
    train, val = split(dataset, 0.2, seed=3)
    assert sorted(train + val) == list(range(15)) and not set(train) & set(val)
    assert sorted(dataset.targets[i] for i in val) == [0, 1, 2]
    assert split(dataset, 0.2, seed=3) == (train, val)


def test_train_on_bad_data_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    class_folders(tmp_path / "data", ("left",), 2)
    class_folders(tmp_path / "pairs", ("left", "right"), 2)
    for data, message in (
        (tmp_path / "missing", "no such folder or manifest"),
        (tmp_path / "data", "need at least two labels"),
        (
            tmp_path / "pairs",  # a fifth of two videos is none
            "no clip left to validate on: --val-fraction 0.2 held out no whole video (of "
            "each label's 2 clip(s) or fewer it rounds down to none, and a label keeps a "
            "video to train on); raise it, add videos, or name the held-out ones with --split",
        ),
    ):
        done = subprocess.run(
            [
                *(sys.executable, "-m", "actionstream", "train", "--data", str(data)),
                *("--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OPENCV_LOG_LEVEL": "ERROR"},
        )
        assert done.returncode == 1, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        # The refusal alone: "N clips to train on" said first read as if it would train.
        assert "clips to train on" not in done.stdout, done.stdout
        assert not (tmp_path / "run").exists()


def test_streams_join_clips_with_background_between_actions(tmp_path: Path) -> None:
    from actionstream.training.data import LabelledClip
    from actionstream.training.video_data import NO_AUGMENT, join_clips

    clips = [LabelledClip(np.full((5, 8, 8, 3), k, np.uint8), k) for k in (0, 1, 2)]
    rng = np.random.default_rng(0)
    frames, labels, cuts = join_clips(clips, [1, 2, 1], None, [0], rng, NO_AUGMENT, False)
    assert labels.tolist() == [1] * 5 + [0] * 5 + [2] * 5 + [0] * 5 + [1] * 5
    assert (frames[:, 0, 0, 0] == labels).all()  # frames and labels stay aligned
    assert np.flatnonzero(cuts).tolist() == [0, 5, 10, 15, 20]
    short, short_labels, short_cuts = join_clips(clips, [1], 12, [], rng, NO_AUGMENT, False)
    assert len(short) == 12 and short_labels.tolist() == [1] * 12
    assert np.flatnonzero(short_cuts).tolist() == [0, 5, 10]  # going round is a cut too


def test_a_cut_between_clips_of_one_label_starts_an_action(tmp_path: Path) -> None:
    # Two clips of one label side by side in a joined stream read as one action: frames
    # just after the cut were "settled", switch latency missed the cut, and the loss's
    # --boundary-ignore asked for the label right after it.
    pytest.importorskip("torch")
    from actionstream.training.data import frames_since_change, loss_targets
    from actionstream.training.scoring import stream_metrics, switch_latency
    from actionstream.training.video_data import NO_AUGMENT, VideoData, join_clips

    class_folders(tmp_path / "data", ("left", "right"), 4, seconds=1.0, fps=10.0)
    cache = ClipCache(tmp_path / "cache", Preprocessing(16, 10.0))
    dataset = load_dataset(find_clips(tmp_path / "data"), cache, 2)
    clips = dataset.labelled()
    right = [i for i, c in enumerate(clips) if c.label == 1]
    rng = np.random.default_rng(0)
    _, labels, cuts = join_clips(clips, right[:2], None, [], rng, NO_AUGMENT, False)
    assert len(labels) == 20 and (labels == 1).all()
    assert np.flatnonzero(cuts).tolist() == [0, 10]
    labels, cuts = labels[None], cuts[None]  # (T,) -> (1, T)
    assert frames_since_change(labels, cuts)[0].tolist() == [*range(10), *range(10)]
    ignored = [True] * 2 + [False] * 8
    assert (loss_targets(labels, 2, cuts)[0] < 0).tolist() == ignored * 2
    # The second clip is recognised 3 frames after the cut; an action of 10 frames
    # settles at none of them after 1 s (10 frames), where one of 20 did at 10.
    preds = labels.copy()
    preds[0, 10:13] = 0
    # No label to switch to at the cut: it is no switch (each would count 0 frames).
    assert switch_latency(preds, labels, cuts).changes == 0
    # Two clips of each of two labels, the model 4 frames late at the one real change.
    two = np.repeat([0, 1], 20)[None]  # (1, 40)
    four_cuts = np.isin(np.arange(40), [0, 10, 20, 30])[None]
    late = two.copy()
    late[0, 20:24] = 0
    assert switch_latency(late, two, four_cuts) == replace(switch_latency(late, two), changes=1)
    assert switch_latency(late, two, four_cuts).median_frames == 4.0
    assert stream_metrics(preds, labels, ("left", "right"), 10, cuts).settled_frame_accuracy is None
    # Where the labels alone are all that is known (one labelled video), as before: one
    # action of 20 frames, the 3 wrong ones among its settled 10.
    assert stream_metrics(preds, labels, ("left", "right"), 10).settled_frame_accuracy == 0.7
    assert switch_latency(preds, labels).changes == 0

    # Training streams and held-out streams carry where their clips meet.
    data = VideoData(dataset, list(range(8)), list(range(8)), None, 8, 40, 4, 40, seed=1)
    batch = next(data.batches(np.random.default_rng(2)))
    assert batch.cuts is not None and data.val_streams.cuts is not None
    for streams in (batch, data.val_streams):
        assert streams.cuts is not None and streams.cuts.shape == streams.labels.shape
        assert streams.cuts[:, 0].all()
        # Every clip is 10 frames at most (speeds up to 1.25x make it 13): no action is longer.
        assert frames_since_change(streams.labels, streams.cuts).max() < 13
    same = batch.cuts[:, 1:] & (batch.labels[:, 1:] == batch.labels[:, :-1])
    assert same.any()  # a same-label cut drawn, and the loss leaves out the frame after it
    assert (loss_targets(batch.labels, 1, batch.cuts)[:, 1:][same] < 0).all()


def test_augmentation_keeps_direction(tmp_path: Path) -> None:
    from actionstream.training.video_data import Augment, augment

    # A bright column sweeping left to right must still sweep left to right.
    frames = np.zeros((12, 32, 32, 3), np.uint8)
    for t in range(12):
        cv2.rectangle(frames[t], (2 + 2 * t, 0), (4 + 2 * t, 31), (255, 255, 255), -1)
    rng = np.random.default_rng(1)
    for _ in range(10):
        out = augment(frames, rng, Augment())
        xs = [float(np.argmax(f.astype(np.float32).mean(axis=(0, 2)))) for f in out]
        assert xs[-1] > xs[0]


@pytest.mark.slow
@pytest.mark.parametrize("size", [1, 2])
def test_videos_train_at_a_size_smaller_than_the_smallest_crop(tmp_path: Path, size: int) -> None:
    # The crop keeps at least 2 pixels a side: at --size 1 that was larger than the frame,
    # and the first stream drawn failed with "ValueError: high <= 0" in a traceback.
    pytest.importorskip("torch")
    from actionstream.training.config import TrainConfig
    from actionstream.training.train import main

    data = class_folders(tmp_path / "data", ("left", "right"), 5, seconds=1.0, size=(32, 24))
    cfg = TrainConfig(
        data=str(data),
        cache=str(tmp_path / "cache"),
        out=str(tmp_path / "run"),
        size=size,
        channels=(4,),
        embed=8,
        hidden=8,
        train_streams=8,
        stream_frames=16,
        bptt=8,
        batch_size=8,
        epochs=1,
        threads=1,
        init="scratch",
    )
    ckpt = main(cfg)
    assert ckpt.model_config.height == ckpt.model_config.width == size
    assert np.isfinite(ckpt.eval_metrics["frame_accuracy"])


def test_a_long_clip_is_cut_before_it_is_augmented() -> None:
    # The whole clip used to be copied to float32 and cropped frame by frame before the
    # entry point and the stream's length cut it: 16 frames of a long span cost it all.
    import tracemalloc

    from actionstream.training.data import LabelledClip
    from actionstream.training.video_data import Augment, join_clips

    frame = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    long = np.broadcast_to(frame, (20_000, 16, 16, 3))  # 15 MB as uint8, 61 MB as float32
    clips = [LabelledClip(long, 0), LabelledClip(long, 1)]
    tracemalloc.start()
    try:
        frames, labels, _ = join_clips(
            clips, [0, 1], 16, [], np.random.default_rng(0), Augment(), True
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert frames.shape == (16, 16, 16, 3) and (labels == 0).all()
    assert peak < 2_000_000, peak


def test_slowed_clips_never_repeat_a_frame() -> None:
    # Played slower by picking the frame before each position, a clip repeated frames:
    # their difference, all the motion-only network sees, was zero, labelled as an
    # action, where the server never repeats a frame.
    from actionstream.training.video_data import Augment, augment

    frames = np.zeros((20, 32, 32, 3), np.uint8)
    for t in range(20):
        cv2.rectangle(frames[t], (2 + t, 8), (6 + t, 20), (255, 255, 255), -1)
    rng = np.random.default_rng(0)
    for speed in [(0.8, 0.8), (0.9, 0.9), (0.8, 1.25), (0.8, 1.25), (0.8, 1.25)]:
        aug = Augment(speed=speed, noise=0.0)
        out = augment(frames, rng, aug).astype(np.int16)
        assert len(out) >= 16
        moved = np.abs(np.diff(out, axis=0)).reshape(len(out) - 1, -1).max(axis=1)
        assert (moved > 0).all(), speed


def test_spans_of_one_video_are_held_out_together() -> None:
    # A manifest naming spans of long videos: a span held out beside one trained on would
    # score frames next to ones the model saw.
    frames = np.zeros((1, 1, 1, 3), np.uint8)
    refs = [
        ClipRef(Path(f"/videos/{v}.mp4"), label, start, start + 2.0)
        for v in range(5)
        for start, label in ((0.0, "left"), (2.0, "right"), (4.0, "left"))
    ]
    labels = ("left", "right")
    dataset = VideoDataset(
        labels,
        tuple(Clip(ref, frames, str(ref.path)) for ref in refs),
        tuple(labels.index(ref.label) for ref in refs),
        (),
    )
    train, val = split(dataset, 0.2, seed=1)
    assert sorted(train + val) == list(range(15))
    held = {refs[i].path for i in val}
    assert held and not held & {refs[i].path for i in train}
    assert {refs[i].label for i in val} == {refs[i].label for i in train} == set(labels)


def test_a_split_file_fixes_the_held_out_videos(tmp_path: Path) -> None:
    from actionstream.training.splits import split_from_file

    class_folders(tmp_path / "data", ("left", "right"), 2)
    dataset = load_dataset(
        find_clips(tmp_path / "data"), ClipCache(tmp_path / "cache", Preprocessing(16, 10.0)), 2
    )
    names = [c.ref.path.name for c in dataset.clips]
    rows = [f"data/{c.ref.path.parent.name}/{c.ref.path.name}" for c in dataset.clips]
    sheet = tmp_path / "split.csv"
    sheet.write_text(
        "path,split\n"
        + "".join(
            f"{r},{'val' if n.endswith('_001.avi') else 'train'}\n"
            for r, n in zip(rows, names, strict=True)
        )
    )
    train, val = split_from_file(dataset, sheet)
    assert sorted(names[i] for i in val) == ["left_001.avi", "right_001.avi"]
    assert len(train) == 2
    sheet.write_text("path,split\n" + f"{rows[0]},test\n")
    with pytest.raises(DatasetError, match="split must be train or val"):
        split_from_file(dataset, sheet)
    sheet.write_text("path,split\n" + f"{rows[0]},val\n")
    with pytest.raises(DatasetError, match="no split for"):
        split_from_file(dataset, sheet)
    # A row for a video the data lacks (a typo) is refused by its line; one for a video
    # that was found but skipped as unreadable is not.
    every = "".join(f"{r},train\n" for r in rows)
    sheet.write_text("path,split\n" + every + "data/left/left_00l.avi,val\n")
    with pytest.raises(DatasetError, match=r"split.csv:6: .*left_00l.avi is not in the data set"):
        split_from_file(dataset, sheet)
    (tmp_path / "data" / "left" / "broken.mp4").write_bytes(b"not a video")
    with_broken = load_dataset(
        find_clips(tmp_path / "data"),
        ClipCache(tmp_path / "cache", Preprocessing(16, 10.0)),
        2,
        report=lambda _: None,
    )
    sheet.write_text("path,split\n" + every + "data/left/broken.mp4,val\n")
    assert split_from_file(with_broken, sheet) == ([0, 1, 2, 3], [])
    # A video listed twice is refused, not settled by its last row.
    sheet.write_text("path,split\n" + "".join(f"{r},train\n" for r in rows) + f"{rows[1]},val\n")
    with pytest.raises(DatasetError, match=f"line 6 lists .*{names[1]} a second time"):
        split_from_file(dataset, sheet)


def test_a_split_file_missing_many_videos_says_how_many(tmp_path: Path) -> None:
    # Only the first unlisted video was named: a split file missing many was fixed one
    # run at a time.
    from actionstream.training.splits import split_from_file

    class_folders(tmp_path / "data", ("left", "right"), 3)
    dataset = load_dataset(
        find_clips(tmp_path / "data"), ClipCache(tmp_path / "cache", Preprocessing(16, 10.0)), 2
    )
    sheet = tmp_path / "split.csv"
    sheet.write_text("path,split\ndata/left/left_000.mp4,val\n")
    unlisted = [c.ref.path for c in dataset.clips][1:4]
    with pytest.raises(DatasetError) as refused:
        split_from_file(dataset, sheet)
    assert str(refused.value) == (
        f"{sheet}: no split for 5 video(s) of the data set: {', '.join(map(str, unlisted))}, "
        "...; list every video, train or val"
    )


def test_a_split_that_leaves_a_label_untrained_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from actionstream.training.config import TrainConfig
    from actionstream.training.data_loading import load_data
    from actionstream.training.errors import TrainingError

    class_folders(tmp_path / "data", ("left", "right", "up"), 3)
    clips = sorted((tmp_path / "data").rglob("*_*.*"))
    sheet = tmp_path / "split.csv"

    def load(held_out: set[str]) -> list[str]:
        rows = [
            f"{p.relative_to(tmp_path)},{'val' if p.name in held_out else 'train'}" for p in clips
        ]
        sheet.write_text("path,split\n" + "\n".join(rows) + "\n")
        said: list[str] = []
        cfg = TrainConfig(data=str(tmp_path / "data"), split=str(sheet), cache=str(tmp_path / "c"))
        load_data(cfg, said.append)
        return said

    every_right = {f"right_00{i}.{'avi' if i % 2 else 'mp4'}" for i in range(3)}
    with pytest.raises(TrainingError, match=r"leaves no video to train on for label\(s\) right"):
        load(every_right)
    with pytest.raises(TrainingError, match="marks no usable video val"):
        load(set())
    # Every label trained, two unscored: training goes on and says so.
    said = load({"left_000.mp4"})
    assert any("no held-out video for label(s) right, up" in line for line in said), said


def test_a_labelled_videos_csv_is_read_as_a_manifest_is(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from actionstream.training.evaluate import _labelled_video

    video = tmp_path / "long.avi"
    csv_path = labelled_video(video, ("left", "right"), 1, seed=4)
    rows = csv_path.read_text().splitlines()
    spaced = [rows[0], *(row.replace(",", ", ") for row in rows[1:])]
    csv_path.write_text("\n".join(spaced) + "\n")  # "0, left": spaces are not the label's
    prep = Preprocessing(16, 10.0)
    streams = _labelled_video(video, csv_path, ["left", "right"], prep, beside=False)
    assert streams.labels.shape[1] == len(rows) - 1
    csv_path.write_text("\n".join([rows[0], *rows[1:], "0,right"]) + "\n")
    with pytest.raises(DatasetError, match=f", line {len(rows) + 1}: frame 0 is labelled a second"):
        _labelled_video(video, csv_path, ["left", "right"], prep, beside=False)
    csv_path.write_text("frame,label\n0,left\n1,go left\n")
    with pytest.raises(DatasetError, match="label\\(s\\) 'go left' are not the model's"):
        _labelled_video(video, csv_path, ["left", "right"], prep, beside=False)


def _split_before(dataset: VideoDataset, val_fraction: float, seed: int) -> list[int]:
    """The held-out clips as `split` chose them before it aimed at each label's target:
    what it must still choose when every video is one clip."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(dataset.targets)
    total = np.bincount(targets, minlength=len(dataset.labels))
    val: list[int] = []
    for k in range(len(dataset.labels)):
        clips = [int(i) for i in np.flatnonzero(targets == k)]
        rng.shuffle(clips)
        val += clips[: min(total[k] - 1, round(total[k] * val_fraction))]
    return sorted(val)


def test_a_split_of_one_clip_videos_is_what_it_always_was() -> None:
    # Class folders hold one clip a video: their held-out videos must not move.
    frames = np.zeros((1, 1, 1, 3), np.uint8)
    rng = np.random.default_rng(0)
    for case in range(900):
        n_labels = int(rng.integers(2, 7))
        labels = tuple(f"l{k}" for k in range(n_labels))
        refs = [
            ClipRef(Path(f"/v/{k}_{j}.mp4"), labels[k])
            for k in range(n_labels)
            for j in range(int(rng.integers(1, 30)))
        ]
        order = rng.permutation(len(refs))  # labels interleaved, as a folder walk gives them
        refs = [refs[i] for i in order]
        dataset = VideoDataset(
            labels,
            tuple(Clip(r, frames, str(r.path)) for r in refs),
            tuple(labels.index(r.label) for r in refs),
            (),
        )
        fraction, seed = float(rng.uniform(0.01, 0.99)), int(rng.integers(1000))
        train, val = split(dataset, fraction, seed)
        assert val == _split_before(dataset, fraction, seed), (case, fraction, seed)
        assert sorted(train + val) == list(range(len(refs)))


def test_a_long_video_of_many_spans_is_not_held_out_in_place_of_short_clips(
    tmp_path: Path,
) -> None:
    # One untrimmed recording cut into six spans, and one short clip a label: each label
    # wants one clip held out, which the short clips give; holding out the long video
    # would leave three clips to train on.
    pytest.importorskip("torch")
    from actionstream.training.config import TrainConfig
    from actionstream.training.data_loading import load_data

    write(np.zeros((120, 48, 64, 3), np.uint8), tmp_path / "long.avi", 10.0)
    for k, label in enumerate(("left", "right", "up")):
        write(np.full((10, 48, 64, 3), 40 * k, np.uint8), tmp_path / f"{label}_a.avi", 10.0)
    spans = [("left", 0), ("up", 2), ("right", 4), ("left", 6), ("right", 8), ("up", 10)]
    rows = [f"long.avi,{label},{s},{s + 2}" for label, s in spans]
    rows += [f"{label}_a.avi,{label},," for label in ("left", "right", "up")]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,start_s,end_s\n" + "\n".join(rows) + "\n")
    for seed in range(4):
        said: list[str] = []
        cfg = TrainConfig(data=str(manifest), cache=str(tmp_path / "cache"), seed=seed)
        data = load_data(cfg, said.append)
        assert said == [
            "6 clips to train on, 3 held out (held out of each label's clips: left 1 of 3, "
            "right 1 of 3, up 1 of 3)"
        ], seed
        assert {len(c.frames) for c in data.val_clips} == {10}  # the short clips


def test_linked_folders_are_read_and_a_dangling_link_is_named(tmp_path: Path) -> None:
    data = class_folders(tmp_path / "data", ("left", "up"), 2)
    extra = tmp_path / "extra"
    extra.mkdir()
    _numbered_video(extra / "far.avi", 10, 10.0)
    (data / "up" / "linked").symlink_to(extra)  # a folder of videos linked in
    (data / "up" / "again").symlink_to(extra)  # the same folder twice: read once
    (data / "left" / "loop").symlink_to(data / "left")  # a loop: read once
    (data / "up" / "dangling.mp4").symlink_to("nowhere.mp4")
    said: list[str] = []
    refs = find_clips(data, said.append)
    assert said == []
    up = sorted(str(r.path.relative_to(data)) for r in refs if r.label == "up")
    assert up == [
        str(Path("up", "again", "far.avi")),
        str(Path("up", "dangling.mp4")),
        str(Path("up", "up_000.mp4")),
        str(Path("up", "up_001.avi")),
    ]
    assert sum(r.label == "left" for r in refs) == 2
    dataset = load_dataset(
        refs, ClipCache(tmp_path / "cache", Preprocessing(16, 10.0)), 2, report=said.append
    )
    assert dataset.per_class() == {"left": 2, "up": 3}
    assert said == [
        f"skipped {data / 'up' / 'dangling.mp4'}: a link to nowhere.mp4, which does not exist"
    ]


def _cut(path: Path, keep: float) -> Path:
    """`path` cut to the first `keep` of its bytes, as a copy or download that stopped."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_a_video_cut_short_is_used_with_one_warning_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A user's trial: such a video trained on the frames it had, and all that said so was
    # FFmpeg's own "[mjpeg @ 0x55d0c3a1c2c0] overread 8" on the terminal.
    data = class_folders(tmp_path / "data", ("left", "right"), 2, seconds=3.0)  # 45 frames
    avi = _cut(data / "left" / "left_001.avi", 0.5)  # MJPG: its header counts 45 frames
    mp4 = _cut(data / "right" / "right_000.mp4", 0.5)  # mp4v: its index comes last, cut off
    prep = Preprocessing(16, 10.0)
    said: list[str] = []
    dataset = load_dataset(find_clips(data), ClipCache(tmp_path / "cache", prep), 2, said.append)
    assert dataset.per_class() == {"left": 2, "right": 1}  # the cut-short AVI is used
    warning, skipped = said
    prefix = f"warning: {avi}: cut short or damaged: its frames end at "
    assert warning.startswith(prefix), said
    read = int(warning.split(", after ")[1].split()[0])
    assert 10 < read < 30
    assert f"after {read} of the 45 its container declares (3.0 s at 15 fps); the decoder " in (
        warning
    )
    assert warning.endswith('"; using the frames it has')
    assert skipped.startswith(
        f'skipped {mp4}: OpenCV cannot open it as a video; the decoder said "'
    )
    # FFmpeg's raw lines are held back: what it said is in the lines that name the files.
    assert capfd.readouterr().err == ""
    # Every run says so, not only the one that decoded it: the cache keeps the note.
    again: list[str] = []
    load_dataset(find_clips(data), ClipCache(tmp_path / "cache", prep), 2, again.append)
    assert again == said
    assert len(list((tmp_path / "cache").glob("*.notes"))) == 1


def test_a_span_past_the_frames_of_a_cut_video_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    video = tmp_path / "long.avi"
    write(motion_clip("left", 3.0, 10.0, (96, 72), seed=1), video, 10.0)
    _cut(video, 0.7)  # its frames end at about 2 s of 3
    manifest = tmp_path / "clips.csv"
    rows = ["path,label,start_s,end_s", "long.avi,a,0,0.8", "long.avi,b,0.8,2.4"]
    manifest.write_text("\n".join([*rows, "long.avi,a,2.5,3.0"]) + "\n")
    said: list[str] = []
    cache = ClipCache(tmp_path / "cache", Preprocessing(16, 10.0))
    dataset = load_dataset(find_clips(manifest), cache, 2, said.append)
    assert len(dataset.clips[0]) == 8  # whole: the span ends before the frames do
    assert 4 <= len(dataset.clips[1]) < 16  # the frames it has of 0.8-2.4 s
    warning, skipped = said
    assert warning.startswith(f"warning: {video} [0.8s-2.4s]: cut short or damaged: its frames")
    assert " of the 30 its container declares (3.0 s at 10 fps)" in warning
    # Named by the manifest's line too, as a span that ends past the video is.
    assert skipped.startswith(
        f"skipped {manifest}:4: {video} [2.5s-3s]: the span starts after the video's last "
        "frame, at "
    )
    assert "; cut short or damaged: its frames end at " in skipped
    assert capfd.readouterr().err == ""


FFMPEG = shutil.which("ffmpeg")


def _ffmpeg(*args: str) -> None:
    assert FFMPEG is not None
    subprocess.run([FFMPEG, "-loglevel", "error", "-y", *args], check=True, timeout=60)


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg command")
def test_ffmpeg_made_videos_cut_short_are_told_and_whole_ones_are_not(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Where the container lists its frames (MP4, AVI), its count is exact; elsewhere
    # OpenCV estimates it from the file's duration, which a longer audio track or a
    # variable frame rate leaves above the frames there are: no warning for those. Nor
    # for an AVI whose repeated frames FFmpeg listed as empty entries (`-r 25` from a
    # 12-fps source: 36 frames, 74 listed), which a user's trial had warned of.
    source = ["-f", "lavfi", "-i", "testsrc=size=96x72:rate=25:duration=3"]
    sound = ["-f", "lavfi", "-i", "sine=duration=4"]
    slow = ["-f", "lavfi", "-i", "testsrc=size=96x72:rate=12:duration=3"]
    made = {
        "h264.mp4": [*source, "-c:v", "libx264", "-movflags", "+faststart"],
        "mpeg4.avi": [*source, "-c:v", "mpeg4"],
        "mjpeg.mkv": [*source, "-c:v", "mjpeg"],
        "sound.mkv": [*source, *sound, "-c:v", "mjpeg", "-c:a", "aac"],
        "vfr.mkv": [*source, "-vf", "select='lt(mod(n,10),4)'", "-fps_mode", "vfr"],
        "repeats.avi": [*slow, "-r", "25", "-c:v", "mpeg4"],
    }
    for name, args in made.items():
        _ffmpeg(*args, str(tmp_path / name))
        capfd.readouterr()
    prep = Preprocessing(16, 10.0)
    for name in ("sound.mkv", "vfr.mkv", "h264.mp4", "repeats.avi"):
        notes: list[str] = []
        decode_clip(ClipRef(tmp_path / name, "x"), prep, notes.append)
        assert notes == [], name
    for name in ("h264.mp4", "mpeg4.avi", "mjpeg.mkv"):
        cut = shutil.copy(tmp_path / name, tmp_path / f"cut-{name}")
        _cut(Path(cut), 0.5)
        notes = []
        frames = decode_clip(ClipRef(Path(cut), "x"), prep, notes.append)
        [note] = notes
        assert note.startswith("cut short or damaged: its frames end at "), note
        assert " of the 75 its container declares (3.0 s at 25 fps)" in note
        assert note.endswith("; using the frames it has") and 0 < len(frames) < 25
    assert capfd.readouterr().err == ""


@pytest.mark.slow
def test_train_and_evaluate_tell_a_cut_video_in_their_own_line(tmp_path: Path) -> None:
    # FFmpeg's raw lines reached the terminal of `train` and `evaluate` between theirs.
    pytest.importorskip("torch")
    data = class_folders(tmp_path / "data", ("left", "right"), 3, seconds=3.0)
    _cut(data / "left" / "left_001.avi", 0.5)
    video = tmp_path / "test.avi"
    labelled_video(video, ("left", "right"), 2, seed=5, seconds=2.0)
    _cut(video, 0.6)
    small = ["--size", "16", "--channels", "4,8", "--embed", "16", "--hidden", "16"]
    small += ["--train-streams", "16", "--stream-frames", "24", "--bptt", "12"]
    small += ["--batch-size", "8", "--epochs", "1", "--threads", "1"]
    run, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    for args in (
        ["train", "--data", str(data), "--out", run, "--cache", cache, *small],
        ["evaluate", run, "--data", str(video), "--out", str(tmp_path / "scores")],
    ):
        done = subprocess.run(  # stdout and stderr as a terminal shows them
            [sys.executable, "-m", "actionstream", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout
        cut = data / "left" / "left_001.avi" if args[0] == "train" else video
        lines = done.stdout.splitlines()
        warnings = [line for line in lines if line.startswith("warning: ")]
        # evaluate also tells the labels the cut left without frames.
        assert len(warnings) == (1 if args[0] == "train" else 2), done.stdout
        assert warnings[0].startswith(f"warning: {cut}: cut short or damaged: its frames end")
        if args[0] == "evaluate":
            csv = video.with_suffix(".csv")
            assert warnings[1].startswith(f"warning: {csv}: "), done.stdout
            assert f"row(s) past the last frame of {video}" in warnings[1]
        assert "the decoder said" in warnings[0]
        # FFmpeg's own lines ("[mjpeg @ 0x55d0c3a1c2c0] overread 8") are held back.
        assert not any(line.startswith("[") for line in lines), done.stdout
