"""Ground truth for one untrimmed video: a `frame,label` CSV, as `actionstream synth`
writes it. One reader for both places that score by it (`stream --labels` and
`evaluate --labels`), so both take and refuse the same files. Pure Python: both sides
import it.
"""

from __future__ import annotations

import csv
from pathlib import Path


class LabelsError(ValueError):
    """A labels file that cannot be used, in one line naming it."""


def read_frame_labels(path: Path) -> dict[int, str]:
    """Label by source frame number (from 0); raises LabelsError."""
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, which
        # would otherwise be part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not {"frame", "label"} <= set(reader.fieldnames or ()):
                raise LabelsError(f"{path}: expected a CSV with columns frame,label")
            labels: dict[int, str] = {}
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                # Labels stripped, as a training manifest's are: "3, left" means left.
                frame, label = row["frame"], (row["label"] or "").strip()
                try:
                    number = int(frame)
                except (TypeError, ValueError):
                    number = -1
                if number < 0:
                    raise LabelsError(
                        f"{where}: frame {frame!r} is not a frame number (0, 1, 2, ...)"
                    )
                if not label:
                    raise LabelsError(f"{where}: frame {frame} has no label")
                if number in labels:
                    # Whichever row came last would quietly decide the score.
                    raise LabelsError(f"{where}: frame {number} is labelled a second time")
                labels[number] = label
            return labels
    except OSError as e:
        raise LabelsError(f"cannot read labels {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not a text CSV (frame,label)") from None
    except csv.Error as e:
        raise LabelsError(f"{path}: not a readable CSV ({e})") from None
