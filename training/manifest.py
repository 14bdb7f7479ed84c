"""A CSV manifest's clips: a header `path,label[,start_s,end_s]`, then a clip a row, a
whole file (both span cells blank) or a labelled segment of a long untrimmed video, its
path relative to the CSV. A row that cannot be read, a misspelt column, a span with
one end (in the header or a row), spans of one video that share frames or a file that
is not there refuse the manifest, naming the line."""

from __future__ import annotations

import csv
import difflib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actionstream.training.clips import ClipRef, DatasetError, span_end

# A manifest's columns: a misspelt span column left out would train on whole videos.
MANIFEST_COLUMNS = ("path", "label", "start_s", "end_s")
# end_s for a span that runs to its video's end.
TO_THE_END = "end"
_EXPECTED = "expected columns path,label[,start_s,end_s] with a header row"

# A row as csv.DictReader gives it: fields past the header's are listed under None.
_Row = dict[str | Any, str | Any]


def read_manifest(manifest: Path, report: Callable[[str], None]) -> list[ClipRef]:
    """The clips `manifest` lists; raises DatasetError naming the line of the first
    problem. Columns of the user's own are named to `report`."""
    header, rows = _read_rows(manifest)
    _check_header(manifest, header, report)
    refs = [(line, _clip_of_row(manifest, line, row, len(header))) for line, row in rows]
    if not refs:
        raise DatasetError(f"{manifest}: the manifest lists no clips")
    _refuse_overlaps(manifest, refs)
    _refuse_missing_files(manifest, refs)
    return [ref for _, ref in refs]


def _read_rows(manifest: Path) -> tuple[list[str], list[tuple[int, _Row]]]:
    """The manifest's header (each name stripped) and its rows, each with its line."""
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark.
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in reader.fieldnames or ()]
            reader.fieldnames = header
            return header, [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{manifest}: cannot read the manifest ({e})") from None


def _check_header(manifest: Path, header: list[str], report: Callable[[str], None]) -> None:
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        # A spreadsheet saved with a semicolon or tab: one column named "path;label;...".
        raise DatasetError(
            f"{manifest}:1: the manifest must be comma-separated (its header reads "
            f"{header[0]!r}); {_EXPECTED}"
        )
    _check_columns(manifest, header, report)


def _clip_of_row(manifest: Path, line: int, row: _Row, columns: int) -> ClipRef:
    """The clip row `line` names, its path made absolute from the manifest's folder."""
    # DictReader keeps fields past the header's under None; empty ones (a trailing
    # comma, as spreadsheets write) say nothing.
    if any(str(extra).strip() for extra in row.get(None) or ()):
        raise DatasetError(
            f"{manifest}:{line}: more fields than the header's {columns}; quote a "
            "path or label that holds a comma"
        )
    try:
        path, label = row["path"].strip(), row["label"].strip()
        start_cell, end_cell = (str(row.get(k) or "").strip() for k in ("start_s", "end_s"))
        start = float(start_cell or 0.0)
        # `end`: to the video's end, which a number must not guess (one past it is refused).
        end = float(end_cell) if end_cell and end_cell.lower() != TO_THE_END else None
    except (KeyError, AttributeError, ValueError):
        raise DatasetError(f"{manifest}:{line}: {_EXPECTED}, and numbers in seconds") from None
    if not path or not label:
        raise DatasetError(f"{manifest}:{line}: path and label must not be empty")
    if bool(start_cell) != bool(end_cell):
        # A forgotten cell would label the video to its start or end: both blank is the
        # whole video, one blank a mistake.
        raise DatasetError(
            f"{manifest}:{line}: {'end_s' if start_cell else 'start_s'} is blank where "
            f"{'start_s' if start_cell else 'end_s'} is not; give both (end_s `{TO_THE_END}` "
            "for the video's end), or leave both blank for the whole video"
        )
    _check_span(f"{manifest}:{line}", start, end)
    return ClipRef((manifest.parent / path).resolve(), label, start, end, f"{manifest}:{line}")


def _check_span(where: str, start: float, end: float | None) -> None:
    # float() reads "nan" and "inf", and NaN fails every comparison: a span of them
    # would cover the whole file and pass the overlap check.
    if not math.isfinite(start) or (end is not None and not math.isfinite(end)):
        raise DatasetError(f"{where}: start_s and end_s must be finite numbers")
    if start < 0 or (end is not None and end <= start):
        raise DatasetError(f"{where}: need 0 <= start_s < end_s")


def _refuse_missing_files(manifest: Path, refs: list[tuple[int, ClipRef]]) -> None:
    for line, ref in refs:
        # Named on purpose, unlike a file a folder happens to hold: a typo, which
        # skipped would quietly train without the clip. (A link to nothing is left to
        # the loader, which says where it points.)
        if not os.path.lexists(ref.path):
            raise DatasetError(f"{manifest}:{line}: {ref.path}: no such file")
        if ref.path.is_dir():
            raise DatasetError(f"{manifest}:{line}: {ref.path} is a folder, not a video")


def _check_columns(manifest: Path, header: list[str], report: Callable[[str], None]) -> None:
    """Refuses a header that names a column of ours misspelt (`lable`, `Path`), or spans
    under names of its own (`start`, `from_s`, `onset`, `duration`) where ours are
    missing: left alone, those would train on whole videos. Other columns (notes, a
    source URL) are named and left alone, as is an empty one (a trailing comma)."""
    unknown = [name for name in header if name and name not in MANIFEST_COLUMNS]
    missing = [ours for ours in MANIFEST_COLUMNS if ours not in header]
    problems = []
    for name in unknown:
        meant = _meant(name, missing)
        if meant is not None:
            problems.append(f"{name!r} (for {meant!r}?)")
        elif ("start_s" in missing or "end_s" in missing) and _looks_like_time(name):
            problems.append(f"{name!r} (spans go in start_s,end_s, in seconds)")
    if problems:
        raise DatasetError(
            f"{manifest}:1: unknown column(s) {', '.join(problems)} in the header; {_EXPECTED}"
        )
    if "path" in missing or "label" in missing:
        raise DatasetError(f"{manifest}:1: no path,label in the header; {_EXPECTED}")
    if ("start_s" in missing) != ("end_s" in missing):
        # A span with one end: every row read to its video's start or end.
        raise DatasetError(
            f"{manifest}:1: {'end_s' if 'end_s' in missing else 'start_s'} is missing from "
            f"the header; a span needs both start_s and end_s; {_EXPECTED}"
        )
    if unknown:
        report(f"{manifest}: ignored column(s) {', '.join(map(repr, unknown))}")


def _meant(name: str, ours: list[str]) -> str | None:
    """The column of `ours` that `name` misspells: the same in another case, cut short
    (`start`), or one or two letters off (`lable`)."""
    lower = name.lower()
    for column in ours:
        if lower == column or (len(lower) >= 3 and column.startswith(lower)):
            return column
    close = difflib.get_close_matches(lower, ours, n=1, cutoff=0.8)
    return close[0] if close else None


_TIME_WORDS = frozenset(
    {"start", "end", "begin", "stop", "from", "to", "onset", "offset", "duration", "length"}
    | {"t0", "t1", "time"}
)


def _looks_like_time(name: str) -> bool:
    """A column name that reads as a time or a span bound: `from_s`, `clip_end`, `t0`."""
    words = name.lower().replace("-", "_").split("_")
    return bool(_TIME_WORDS & set(words)) or words[-1] in ("s", "sec", "secs", "ms", "seconds")


def _refuse_overlaps(manifest: Path, refs: list[tuple[int, ClipRef]]) -> None:
    """Refuses two rows that share frames of one video: a repeated row would be trained
    and scored twice over, and overlapping spans give one frame two labels."""
    by_video: dict[Path, list[tuple[int, ClipRef]]] = {}
    for line, ref in refs:
        by_video.setdefault(ref.path, []).append((line, ref))
    for spans in by_video.values():
        spans.sort(key=lambda lr: (lr[1].start_s, lr[0]))
        reach: tuple[int, ClipRef] | None = None  # the span that ends last so far
        for line, ref in spans:
            if reach is not None and ref.start_s < span_end(reach[1]):
                first, second = sorted((reach[0], line))
                if reach[1] == ref:
                    raise DatasetError(
                        f"{manifest}:{second}: repeats line {first} ({ref.describe()}, "
                        f"{ref.label}); list each clip once"
                    )
                raise DatasetError(
                    f"{manifest}:{second}: overlaps line {first} in {ref.path.name} "
                    f"({reach[1].describe()} {reach[1].label}, {ref.describe()} {ref.label}); "
                    "spans of one video must not share frames"
                )
            if reach is None or span_end(ref) > span_end(reach[1]):
                reach = (line, ref)
