"""`actionstream`: one console script, a subcommand per job.

Subcommands that need torch import it inside their handler, so the service
install (no torch) can still run `serve`, `stream`, `synth` and `demo`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from actionstream.dataclass_args import add_arguments, from_args

TRAIN_EXTRA_HINT = (
    "this command needs the training extra (torch); install it with: "
    "pip install 'actionstream[train]'"
)


def _needs_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit(f"actionstream: {TRAIN_EXTRA_HINT}") from None


def _synth(args: argparse.Namespace) -> int:
    from actionstream.training.synth import SynthConfig, render_stream, write_video

    if args.seconds <= 0 or args.fps <= 0 or args.size < 16:
        raise SystemExit("actionstream synth: --seconds and --fps must be positive, --size >= 16")
    cfg = SynthConfig(size=args.size, fps=args.fps)
    frames, labels = render_stream(int(args.seconds * args.fps), args.seed, cfg)
    csv_path = write_video(frames, labels, args.out, args.fps)
    print(f"wrote {args.out} ({len(frames)} frames at {args.fps:g} fps) and labels {csv_path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    _needs_torch()
    from actionstream.training.config import TrainConfig
    from actionstream.training.train import main as train_main

    train_main(from_args(TrainConfig, args))
    return 0


def _export(args: argparse.Namespace) -> int:
    _needs_torch()
    from actionstream.training.checkpoint import Checkpoint, CheckpointError
    from actionstream.training.export import export_onnx

    try:
        ckpt = Checkpoint.load(args.run)
    except CheckpointError as e:
        raise SystemExit(f"actionstream export: {e}") from None
    out = export_onnx(ckpt, args.out)
    print(f"wrote {out} and {out.with_suffix('.json')} (parity with PyTorch checked)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _needs_torch()
    from actionstream.training.checkpoint import CheckpointError
    from actionstream.training.evaluate import main as evaluate_main

    if args.streams < 1 or args.seconds <= 0:
        raise SystemExit("actionstream evaluate: --streams and --seconds must be positive")
    try:
        return evaluate_main(args.run, args.streams, args.seconds, args.seed)
    except CheckpointError as e:
        raise SystemExit(f"actionstream evaluate: {e}") from None


def _serve(args: argparse.Namespace) -> int:
    from actionstream.service.config import ServeConfig
    from actionstream.service.server import run

    return run(from_args(ServeConfig, args))


def _stream(args: argparse.Namespace) -> int:
    from actionstream.service.client import StreamConfig, run_stream

    return run_stream(from_args(StreamConfig, args))


def _health(args: argparse.Namespace) -> int:
    from actionstream.service.healthcheck import check

    serving, seen = check(args.target, timeout=args.timeout)
    print(seen)
    return 0 if serving else 1


def _demo(args: argparse.Namespace) -> int:
    from actionstream.demo import DemoConfig, run_demo

    return run_demo(from_args(DemoConfig, args))


def build_parser() -> argparse.ArgumentParser:
    from actionstream.demo import DemoConfig
    from actionstream.service.client import StreamConfig
    from actionstream.service.config import ServeConfig
    from actionstream.training.config import TrainConfig

    parser = argparse.ArgumentParser(
        prog="actionstream",
        description="Live action recognition for camera streams: "
        "train a CNN-GRU, export it, serve it over gRPC, stream video to it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_text: str, handler: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = command(
        "synth", "Render a labelled synthetic video (MJPG .avi + per-frame label .csv).", _synth
    )
    p.add_argument("--out", type=Path, required=True, help="output .avi path")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--seed", type=int, default=0)

    p = command("train", "Train a CNN-GRU with BPTT; writes a checkpoint and its config.", _train)
    add_arguments(p, TrainConfig)

    p = command(
        "evaluate", "Score a checkpoint on held-out synthetic streams, per frame.", _evaluate
    )
    p.add_argument("run", type=Path, help="run folder or checkpoint.pt")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=10_000)

    p = command("export", "Export a checkpoint to the ONNX step model (checks parity).", _export)
    p.add_argument("run", type=Path, help="run folder or checkpoint.pt")
    p.add_argument("--out", type=Path, required=True, help="output .onnx path")

    p = command(
        "serve", "Serve a model over gRPC, with Prometheus metrics on their own port.", _serve
    )
    add_arguments(p, ServeConfig, env_prefix="ACTIONSTREAM_")

    p = command(
        "stream",
        "Stream a video file, camera index or URL to a server; print predictions.",
        _stream,
    )
    add_arguments(p, StreamConfig)

    p = command(
        "health",
        "Ask a server's gRPC health service whether it is SERVING (exit 0 if so).",
        _health,
    )
    port = os.environ.get("ACTIONSTREAM_PORT", "50051")
    p.add_argument(
        "--target",
        default=f"127.0.0.1:{port}",
        help="HOST:PORT (default: 127.0.0.1:$ACTIONSTREAM_PORT)",
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")

    p = command(
        "demo", "Serve the bundled model and stream a labelled synthetic feed through it.", _demo
    )
    add_arguments(p, DemoConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
