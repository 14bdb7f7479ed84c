"""`actionstream`: one console script, a subcommand per job, each built from its config.

Every subcommand is a config dataclass (its flags, help and checks) and a
function that runs it (actionstream/command.py joins the two). Handlers
import their stage lazily: `--help` and bad values never load torch, and the
service install (no torch) runs `serve`, `stream`, `watch`, `health`, `synth` and
`demo`, and says how to get the rest.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import click
from click.core import ParameterSource

from actionstream.command import config_command
from actionstream.demo_config import DemoConfig
from actionstream.service.config import (
    ENV_PREFIX,
    HealthConfig,
    ServeConfig,
    StreamConfig,
    WatchConfig,
)
from actionstream.training.config import (
    EvaluateConfig,
    ExportConfig,
    SynthVideoConfig,
    TrainConfig,
)
from actionstream.training.run_files import CHECKPOINT, PROGRESS, best_epoch

PROG = "actionstream"
TRAIN_EXTRA_HINT = (
    "this command needs the training extra (torch); install it with: "
    "pip install 'actionstream[train]' (for a CPU-only torch, install it first: "
    "pip install torch --index-url https://download.pytorch.org/whl/cpu)"
)


def _needs_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise click.ClickException(TRAIN_EXTRA_HINT) from None


def synth(cfg: SynthVideoConfig) -> int:
    from actionstream.training.synth import SynthConfig, render_stream, write_video

    look = SynthConfig(size=cfg.size, fps=cfg.fps)
    frames, labels = render_stream(int(cfg.seconds * cfg.fps), cfg.seed, look)
    try:
        csv_path = write_video(frames, labels, Path(cfg.out), cfg.fps)
    except FileExistsError as e:  # mkdir's word for a file where a folder must go
        raise click.ClickException(f"cannot write {cfg.out}: {e.filename} is a file") from None
    except OSError as e:
        raise click.ClickException(f"cannot write {cfg.out}: {e.strerror or e}") from None
    print(f"wrote {cfg.out} ({len(frames)} frames at {cfg.fps:g} fps) and labels {csv_path}")
    return 0


def train(cfg: TrainConfig) -> int:
    _needs_torch()
    from actionstream.training.allocator import keep_freed_memory
    from actionstream.training.run_folder import resume_config
    from actionstream.training.train import TrainingError
    from actionstream.training.train import main as train_main

    keep_freed_memory()

    given = _given_on_command_line()
    if cfg.split and "val_fraction" in given:
        # The split file decides alone: a fraction beside it would be silently ignored.
        raise click.ClickException(
            "--val-fraction and --split both choose the held-out videos; give one of them"
        )
    previous = _stop_on_sigterm()
    try:
        if cfg.resume:  # the run's own settings, but for what this command line sets
            train_main(resume_config(cfg, given))
        else:
            train_main(cfg)
    except TrainingError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt as e:
        print(f"{PROG} train: {_where_it_stopped(Path(cfg.out))}", file=sys.stderr)
        # The shell's codes for the two signals, as a container runtime reports them.
        return 143 if isinstance(e, _Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`docker stop`, `timeout`, a scheduler), taken as Ctrl-C is."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _stop_on_sigterm() -> signal.Handlers | Callable[..., object] | int | None:
    """Makes SIGTERM stop training as Ctrl-C does, with the same word on how to go on
    (by default it would end the process without one); returns the handler it replaced,
    or None where none could be set (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _where_it_stopped(out: Path) -> str:
    """What a stopped run left: how to resume it, and the best epoch so far to use."""
    if not (out / PROGRESS).is_file():
        if (out / CHECKPOINT).is_file():  # stopped between an epoch's two saves
            return (
                f"interrupted; {out / CHECKPOINT} holds its first epoch to evaluate or "
                f"export, but nothing to resume from: delete {out} to train again"
            )
        return "interrupted; no epoch had finished, so there is nothing to resume"
    said = (
        f"interrupted; `{PROG} train --out {shlex.quote(str(out))} --resume` goes on from "
        "the last epoch it finished"
    )
    epoch = best_epoch(out)
    if epoch is None:
        return said
    best = out / CHECKPOINT
    return f"{said}; {best} holds the best epoch so far ({epoch}) to evaluate or export"


def _given_on_command_line() -> set[str]:
    """The current command's settings that were set, not left at their defaults."""
    ctx = click.get_current_context()
    unset = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    return {name for name in ctx.params if ctx.get_parameter_source(name) not in unset}


def evaluate(cfg: EvaluateConfig) -> int:
    _needs_torch()
    from actionstream.training.allocator import keep_freed_memory
    from actionstream.training.checkpoint import CheckpointError
    from actionstream.training.clips import DatasetError
    from actionstream.training.errors import TrainingError
    from actionstream.training.evaluate import main as evaluate_main

    keep_freed_memory()

    try:
        evaluate_main(cfg)
    except (CheckpointError, DatasetError, TrainingError) as e:
        raise click.ClickException(str(e)) from None
    return 0


def export(cfg: ExportConfig) -> int:
    interrupts = _Interrupts()
    previous = interrupts.install()
    out = Path(cfg.out)
    before = _identity(out)
    try:
        return _export(cfg)
    except BaseException as e:
        # Ctrl-C inside torch.export's lazy imports came out as a chain of three other
        # errors ("module 'torch._dynamo' has no attribute 'exc'"): after a SIGINT, any
        # error is the interruption.
        if not (interrupts.seen or isinstance(e, KeyboardInterrupt)):
            raise
        done = (
            f"after writing {out} and its card"
            if _identity(out) != before
            else f"{out} was not written"
        )
        print(f"{PROG} export: interrupted; {done}", file=sys.stderr)
        return 130
    finally:
        # None: the handler before was set from C; Python's own is the nearest to it.
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


class _Interrupts:
    """SIGINT raising KeyboardInterrupt as Python's own handler does, and noted: code that
    catches it halfway (an interrupted import) fails with another error instead."""

    seen = False

    def install(self) -> signal.Handlers | Callable[..., object] | int | None:
        """Installs itself for SIGINT; returns the handler it replaced, or None where it
        cannot (not the main thread, or SIGINT ignored, as in a background job)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            return None
        return signal.signal(signal.SIGINT, self._interrupted)

    def _interrupted(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` is now (inode, change time), None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


def _export(cfg: ExportConfig) -> int:
    _needs_torch()
    from actionstream.training.checkpoint import Checkpoint, CheckpointError
    from actionstream.training.export import ExportError, export_onnx, refuse_overwriting

    try:
        refuse_overwriting(Path(cfg.run), Path(cfg.out))
        ckpt = Checkpoint.load(Path(cfg.run))
        out = export_onnx(ckpt, Path(cfg.out), cfg)
    except (CheckpointError, ExportError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        # Which path failed: the model's folder, the model, or its card.
        at = f"{e.filename}: " if e.filename and str(e.filename) != cfg.out else ""
        raise click.ClickException(f"cannot write {cfg.out}: {at}{e.strerror or e}") from None
    # Flushed: a Ctrl-C once SIGINT's default is back would lose a line still buffered.
    print(f"wrote {out} and {out.with_suffix('.json')} (parity with PyTorch checked)", flush=True)
    return 0


def serve(cfg: ServeConfig) -> int:
    from actionstream.service.endpoint.launch import run

    return run(cfg)


def stream(cfg: StreamConfig) -> int:
    from actionstream.service.clients.stream import run_stream

    return run_stream(cfg)


def watch(cfg: WatchConfig) -> int:
    from actionstream.service.clients.watch import run_watch

    return run_watch(cfg)


def health(cfg: HealthConfig) -> int:
    from actionstream.service.clients.health import check

    serving, seen = check(cfg)
    print(seen)
    return 0 if serving else 1


def demo(cfg: DemoConfig) -> int:
    from actionstream.demo import run_demo

    return run_demo(cfg)


def build_cli() -> click.Group:
    cli = click.Group(
        PROG,
        help="Live action recognition for camera streams: train a CNN-GRU on video, export "
        "it as an ONNX step model, serve it over gRPC, stream cameras and files to it.",
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    cli = click.version_option(package_name="actionstream", prog_name=PROG)(cli)
    for command in (
        config_command(
            "synth",
            SynthVideoConfig,
            synth,
            "Render a labelled synthetic video (MJPG .avi + per-frame label .csv).",
        ),
        config_command(
            "train",
            TrainConfig,
            train,
            "Train a CNN-GRU with truncated BPTT; writes a checkpoint and its config.",
        ),
        config_command(
            "evaluate",
            EvaluateConfig,
            evaluate,
            "Score a checkpoint on held-out streams and clips: synthetic, or your videos (--data).",
        ),
        config_command(
            "export",
            ExportConfig,
            export,
            "Export a checkpoint as the ONNX step model the service runs (parity-checked).",
        ),
        config_command(
            "serve",
            ServeConfig,
            serve,
            "Serve a model over gRPC, with Prometheus metrics on their own port.\n\n"
            "Every option is also read from the ACTIONSTREAM_* variable shown beside it; "
            "a flag on the command line wins.",
            env_prefix=ENV_PREFIX,
        ),
        config_command(
            "stream",
            StreamConfig,
            stream,
            "Stream a video file, camera index or URL to a server; print its predictions.",
        ),
        config_command(
            "watch",
            WatchConfig,
            watch,
            "Have a server watch a camera, file or URL itself (WatchSource); print its "
            "predictions.\n\n"
            "The server must run with --allow-sources, and opens the source itself: paths "
            "and URLs are the server's.",
        ),
        config_command(
            "health",
            HealthConfig,
            health,
            "Ask a server's gRPC health service whether it is SERVING (exit 0 if so).\n\n"
            "The host and port read ACTIONSTREAM_HOST and ACTIONSTREAM_PORT like `serve`, "
            "so that a container's health check asks the server beside it.",
            env_prefix=ENV_PREFIX,
            env_fields=("host", "port"),
        ),
        config_command(
            "demo",
            DemoConfig,
            demo,
            "Serve the bundled model and stream a labelled synthetic feed through it.",
        ),
    ):
        cli.add_command(command)
    return cli


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; usage errors and refusals are one line on stderr, never a trace."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = build_cli().main(args, prog_name=PROG, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        print(e.ctx.get_help() if e.ctx else str(e))
        return 2
    except click.UsageError as e:
        print(f"{e.ctx.command_path if e.ctx else PROG}: {e.format_message()}", file=sys.stderr)
        return e.exit_code
    except click.ClickException as e:
        print(e.format_message(), file=sys.stderr)  # already names its command
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        return 130
    # With standalone_mode off, click hands back what the callback returned; --help gives 0.
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
