"""What `evaluate` leaves in a run folder: this evaluation's report, nothing of an earlier one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from actionstream.training.report import write_report


def test_a_plot_this_evaluation_cannot_draw_is_not_left_from_the_last(tmp_path: Path) -> None:
    names = ["left", "right"]
    clips = {
        "confusion": [[3, 1], [0, 4]],
        "per_class_clip_accuracy": {"left": 0.75, "right": 1.0},
    }
    written = write_report(tmp_path, clips, names)
    assert sorted(p.name for p in written) == [
        "confusion.png",
        "evaluation.json",
        "per_class_accuracy.png",
    ]
    # Then one long video with per-frame labels: no clips, so no confusion matrix.
    frames = {"per_class_frame_accuracy": {"left": 0.5, "right": 0.9}}
    written = write_report(tmp_path, frames, names)
    assert (
        sorted(p.name for p in tmp_path.iterdir())
        == sorted(p.name for p in written)
        == [
            "evaluation.json",
            "per_class_accuracy.png",
        ]
    )
    assert json.loads((tmp_path / "evaluation.json").read_text()) == frames
    write_report(tmp_path, {}, names)
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation.json"]


def test_the_report_records_the_evaluation_that_produced_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The scores said nothing of what they were scores of: which run, data, labels and
    # seed. Given relative paths, as a user in that folder gives them, it records them
    # absolute, and a video's labels by default those beside it.
    pytest.importorskip("torch")
    from videogen import labelled_video

    from actionstream.cli import main
    from actionstream.contract import ModelConfig
    from actionstream.training.checkpoint import Checkpoint
    from actionstream.training.model import build_recognizer

    here = tmp_path.resolve()
    labels = ("down", "left", "right", "up")
    config = ModelConfig(num_classes=4, height=32, width=32, channels=(8, 16), embed=16, hidden=16)
    net = build_recognizer(config)
    Checkpoint(config, labels, 10.0, None, "t", net.state_dict()).save(
        here / "run" / "checkpoint.pt"
    )
    truth = labelled_video(here / "v.avi", labels, 1, seed=3)
    truth.rename(here / "truth.csv")
    monkeypatch.chdir(here)
    common = ["--cache", "cache", "--seed", "5"]
    assert main(["evaluate", "run", "--data", "v.avi", "--labels", "truth.csv", *common]) == 0
    report = json.loads((here / "run" / "evaluation.json").read_text())
    assert report == json.loads(capsys.readouterr().out)  # stdout is the report
    assert report["config"] == {
        "run": str(here / "run"),
        "data": str(here / "v.avi"),
        "labels": str(here / "truth.csv"),
        "cache": str(here / "cache"),
        "streams": 32,
        "seconds": 60.0,
        "seed": 5,
        "out": None,
    }
    (here / "truth.csv").rename(here / "v.csv")
    to_scores = ["--data", "v.avi", "--out", "scores", *common]
    assert main(["evaluate", "run/checkpoint.pt", *to_scores]) == 0
    recorded = json.loads((here / "scores" / "evaluation.json").read_text())["config"]
    assert (recorded["run"], recorded["labels"], recorded["out"]) == (
        str(here / "run" / "checkpoint.pt"),
        str(here / "v.csv"),
        str(here / "scores"),
    )


def test_a_video_without_labels_beside_it_is_told_of_labels(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # It said only "cannot read labels v.csv: No such file or directory", not how to
    # give the labels of a video that has none beside it.
    pytest.importorskip("torch")
    from videogen import labelled_video

    from actionstream.cli import main

    labels = _untrained_run(tmp_path / "run")
    video = tmp_path / "v.avi"
    labelled_video(video, labels, 1, seed=3).rename(tmp_path / "truth.csv")
    common = ["--data", str(video), "--cache", str(tmp_path / "cache")]
    assert main(["evaluate", str(tmp_path / "run"), *common]) == 1
    err = capfd.readouterr().err
    assert err.endswith(
        f"cannot read labels {tmp_path / 'v.csv'}: No such file or directory (looked for "
        f"beside {video}): give its labels with --labels FILE\n"
    ), err
    assert len(err.splitlines()) == 1, err
    # A --labels file that is not there is named as given, nothing more.
    assert main(["evaluate", str(tmp_path / "run"), *common, "--labels", "gone.csv"]) == 1
    err = capfd.readouterr().err
    assert err.endswith("cannot read labels gone.csv: No such file or directory\n"), err


def test_label_rows_past_the_videos_last_frame_are_told_in_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Rows for frames the video does not have were passed over without a word: a CSV of
    # a longer cut of the video scored as if it fitted.
    pytest.importorskip("torch")
    from videogen import labelled_video

    from actionstream.cli import main

    labels = _untrained_run(tmp_path / "run")
    video = tmp_path / "v.avi"
    truth = labelled_video(video, labels, 1, seed=3)
    last = len(truth.read_text().splitlines()) - 2  # the header, and frames from 0
    common = [str(tmp_path / "run"), "--data", str(video), "--cache", str(tmp_path / "cache")]
    assert main(["evaluate", *common]) == 0
    assert "past the last frame" not in capfd.readouterr().err  # a CSV that fits
    with truth.open("a") as f:
        f.write(f"{last + 1},left\n{last + 2},up\n{last + 7},up\n")
    assert main(["evaluate", *common]) == 0
    out, err = capfd.readouterr()
    assert [line for line in err.splitlines() if "past the last frame" in line] == [
        f"warning: {truth}: 3 row(s) past the last frame of {video} (frame {last}), from "
        f"frame {last + 1}, left out of the scores"
    ]
    assert json.loads(out)["frames"] == last + 1  # the scores, alone on stdout


def test_an_out_that_cannot_be_a_folder_is_refused_before_scoring(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A file as --out (or on its way) ended in a traceback from mkdir, after the whole
    # evaluation had run; train refuses one up front.
    pytest.importorskip("torch")
    from videogen import labelled_video

    from actionstream.cli import main

    labels = _untrained_run(tmp_path / "run")
    video = tmp_path / "v.avi"
    labelled_video(video, labels, 1, seed=3)
    afile = tmp_path / "afile"
    afile.write_text("")
    common = [str(tmp_path / "run"), "--data", str(video), "--cache", str(tmp_path / "cache")]
    for out in (afile, afile / "scores"):
        assert main(["evaluate", *common, "--out", str(out)]) == 1
        out_said, err = capfd.readouterr()
        assert err == (
            f"actionstream evaluate: --out {out}: cannot make the output folder ({afile} is a "
            "file, not a folder); give --out a folder path\n"
        )
        assert out_said == ""  # refused before any score
    assert not (tmp_path / "cache").exists()  # not a video decoded


def _untrained_run(run: Path) -> tuple[str, ...]:
    """A run folder holding an untrained four-label model; its labels."""
    from actionstream.contract import ModelConfig
    from actionstream.training.checkpoint import Checkpoint
    from actionstream.training.model import build_recognizer

    labels = ("down", "left", "right", "up")
    config = ModelConfig(num_classes=4, height=32, width=32, channels=(8, 16), embed=16, hidden=16)
    Checkpoint(config, labels, 10.0, None, "t", build_recognizer(config).state_dict()).save(
        run / "checkpoint.pt"
    )
    return labels
