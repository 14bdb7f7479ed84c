"""Decoded clips kept on disk as .npy files, keyed by the video's bytes, the span and
the preprocessing, so later epochs and later runs read them back (memory-mapped, never
all at once) instead of decoding again."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

import numpy as np

from actionstream.training.clip_decode import decode_counted
from actionstream.training.clips import CacheError, Clip, ClipRef, DatasetError, Preprocessing

# Bump when decoding or resampling changes, so old cache entries are not reused (4: entries
# keep decoding's notes, a cut-short video's warning among them; 5: a span that ends well
# past its video's end is refused, not cached, and each video's frame rate is noted).
_CACHE_VERSION = "5"


class ClipCache:
    """Decoded clips on disk, one .npy per (video bytes, span, preprocessing).

    A video's bytes are known by their SHA-256, which costs a read of the whole file:
    it is noted under `digests/` by the file's path, size, modification time and inode,
    so a video read once is not read again for it, however many runs and spans use it.
    Its frame rate is noted under `rates/` by that SHA-256 when it is decoded.
    """

    def __init__(self, root: Path, prep: Preprocessing) -> None:
        self.root = root
        self.prep = prep
        self._digests: dict[str, str] = {}  # this process's, by the note's name
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(
                _cache_problem(root, "cannot make the frame cache folder", e)
            ) from None

    def load(self, ref: ClipRef) -> Clip:
        """The clip, decoded now or read from the cache; raises DatasetError if unreadable."""
        try:
            digest = self._digest(ref.path)
        except OSError as e:
            if ref.path.is_symlink() and not ref.path.exists():
                raise DatasetError(
                    f"{ref.describe()}: a link to {os.readlink(ref.path)}, which does not exist"
                ) from None
            raise DatasetError(f"{ref.describe()}: cannot read ({e.strerror})") from None
        parts = (_CACHE_VERSION, digest, self.prep.size, self.prep.fps, ref.start_s, ref.end_s)
        key = hashlib.sha256("|".join(map(repr, parts)).encode()).hexdigest()[:32]
        path = self.root / f"{key}.npy"
        notes_path = path.with_suffix(".notes")
        cached = _read_cached(path)
        if cached is not None:
            return Clip(ref, cached, digest, _read_notes(notes_path), self._rate(digest))
        notes: list[str] = []
        taken = decode_counted(ref, self.prep, notes.append)
        frames = taken.frames
        self._note_rate(digest, taken.fps)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            # The notes before the frames: an entry is found by its frames, and then
            # carries its notes, or none where decoding had none.
            if notes:
                notes_tmp = notes_path.with_name(f".{notes_path.name}.{os.getpid()}.tmp")
                notes_tmp.write_text("".join(f"{line}\n" for line in notes))
                notes_tmp.replace(notes_path)
            else:
                notes_path.unlink(missing_ok=True)
            with tmp.open("wb") as f:
                np.save(f, frames)
            tmp.replace(path)  # whole or absent: a killed run leaves no half entry
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise CacheError(_cache_problem(self.root, "cannot write the frame cache", e)) from None
        return Clip(ref, np.load(path, mmap_mode="r"), digest, tuple(notes), taken.fps)

    def _rate(self, digest: str) -> float | None:
        """The frame rate noted for the video of SHA-256 `digest`; None if none is."""
        with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
            return float((self.root / "rates" / digest).read_text())
        return None

    def _note_rate(self, digest: str, fps: float) -> None:
        """Notes the video's frame rate under `rates/` by its bytes, for the runs that read
        its clips back; a note that cannot be written leaves the rate unknown to them."""
        note = self.root / "rates" / digest
        with contextlib.suppress(OSError):
            note.parent.mkdir(exist_ok=True)
            tmp = note.with_name(f".{digest}.{os.getpid()}.tmp")
            tmp.write_text(repr(fps))
            tmp.replace(note)

    def _digest(self, video: Path) -> str:
        """`video`'s SHA-256, from its note when the file is as it was then."""
        st = video.stat()
        identity = (str(video.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        name = hashlib.sha256(repr(identity).encode()).hexdigest()[:32]
        if name in self._digests:
            return self._digests[name]
        note = self.root / "digests" / name
        with contextlib.suppress(OSError, UnicodeDecodeError):
            noted = note.read_text()
            if re.fullmatch("[0-9a-f]{64}", noted):
                self._digests[name] = noted
                return noted
        digest = file_digest(video)
        self._digests[name] = digest
        # A note that cannot be written costs only the next run a read.
        with contextlib.suppress(OSError):
            note.parent.mkdir(exist_ok=True)
            tmp = note.with_name(f".{name}.{os.getpid()}.tmp")
            tmp.write_text(digest)
            tmp.replace(note)
        return digest


def _read_cached(path: Path) -> np.ndarray | None:
    """The cached frames; None when absent or damaged (cut short by a full disk, say):
    then they are decoded again and the entry rewritten."""
    if not path.exists():
        return None
    try:
        frames = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return None
    return frames if frames.ndim == 4 and frames.dtype == np.uint8 else None


def _read_notes(path: Path) -> tuple[str, ...]:
    """A cache entry's notes (see Clip); none when it has no notes file."""
    try:
        return tuple(line for line in path.read_text().splitlines() if line)
    except (OSError, UnicodeDecodeError):
        return ()


def _cache_problem(root: Path, what: str, e: OSError) -> str:
    return f"{root}: {what} ({e.strerror or e}); give --cache a folder that can be written"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
