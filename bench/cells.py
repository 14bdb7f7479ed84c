"""What time adds, and which recurrence carries it: the seed's questions, measured.

    python bench/cells.py [--out build/bench/cells] [--device auto] [--scale 1.0]

1. Cells: GRU, LSTM, plain tanh RNN and the frame-only baseline (same CNN, no
   frame difference, no recurrence), each trained from scratch with the bundled
   model's recipe on the synthetic world (and the GRU once more seeing only the frame
   difference, as users' videos are trained by default); clip top-1, per-frame accuracy, settled
   accuracy, switch latency and training time, on held-out streams of the recipe's
   --val-frames (300 frames, 30 s at 10 fps; it trains on streams of 160) and of
   20 times the BPTT chunk (800 frames, 80 s).
2. Truncated BPTT at several chunk lengths against full BPTT over the whole
   training stream: accuracy, time, and peak memory (CUDA's allocator, so
   only where there is a GPU).
3. Gradients through time: the norm of d(logit at the last frame) / d(input
   features k frames earlier), for a GRU and a plain RNN at initialisation
   and trained, over k: the vanishing-gradient claim, plotted.

Prints markdown tables; writes results.json and gradient_norms.png to --out.
`--scale` shrinks the data and epochs for a quick look (0.1 runs in minutes on
a CPU); the README's table comes from a full run, with its device named.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actionstream.training.config import TrainConfig
from actionstream.training.data import SyntheticData, render_streams
from actionstream.training.data_loading import synthetic_data
from actionstream.training.model import ActionRecognizer, Recognizer, build_recognizer
from actionstream.training.scoring import (
    SETTLE_SECONDS,
    clip_accuracy,
    predict_streams,
    stream_metrics,
    switch_latency,
)
from actionstream.training.synth import LABELS, SynthConfig
from actionstream.training.train import main as train

CELLS = ("gru", "lstm", "rnn", "frame-only")
# The GRU again with the frame difference alone as input (the default for users' videos);
# its encoder is the one that ships as the starting point for them.
MOTION_ONLY = "gru, difference only"
CHUNKS = (10, 20, 40, 80, None)  # None: full BPTT over the whole training stream


def _trained(
    cfg: TrainConfig, data: SyntheticData, device: torch.device
) -> tuple[Recognizer, dict[str, Any]]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    ckpt = train(cfg, data)
    cost: dict[str, Any] = {"train_seconds": round(time.perf_counter() - start, 1)}
    # A process's peak RSS only ever rises, so it cannot tell runs apart: GPU only.
    cost["peak_memory_mb"] = (
        round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
    )
    return ckpt.build_model().to(device), cost


def _streams_score(net: Recognizer, streams: Any, fps: float) -> dict[str, Any]:
    preds = predict_streams(net, streams)
    settle = int(SETTLE_SECONDS * fps)
    m = stream_metrics(preds, streams.labels, LABELS, settle, streams.cuts)
    lat = switch_latency(preds, streams.labels, streams.cuts)
    settled = m.settled_frame_accuracy
    return {
        "frame_accuracy": round(m.frame_accuracy, 4),
        "settled_frame_accuracy": None if settled is None else round(settled, 4),
        "switch_latency_frames": lat.median_frames,
        "missed_switches": lat.missed,
    }


@torch.backends.cudnn.flags(enabled=False)  # cuDNN's RNN backward wants training mode
def gradient_norms(net: ActionRecognizer, frames: torch.Tensor, reach: int) -> list[float]:
    """||d logit_T / d feature_{T-k}|| for k = 0..reach-1, averaged over the batch."""
    net.eval()
    B, T = frames.shape[:2]
    with torch.no_grad():
        x = (frames.float() - net.cfg.mean) / net.cfg.std
        x = x.permute(0, 1, 4, 2, 3)  # (B, T, H, W, 3) -> (B, T, 3, H, W)
        before = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        seen = net.inputs(x, before)  # (B, T, C_in, H, W)
        feats = net.encoder(seen.flatten(0, 1)).view(B, T, -1)  # (B, T, embed)
    feats.requires_grad_(True)
    cell_state = net.initial_state(B)[:-1]  # the cell's state, not prev_frame
    out, _ = net.cell(feats, tuple(cell_state))
    logits = net.head(out[:, -1])  # (B, classes) at the last frame
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    grad = feats.grad  # (B, T, embed)
    assert grad is not None
    norms = grad.norm(dim=2).mean(dim=0)  # (T,)
    return [float(norms[T - 1 - k]) for k in range(reach)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("build/bench/cells"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--scale", type=float, default=1.0, help="data and epochs, 0 < s <= 1")
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        sys.exit("cells.py: --scale must be in (0, 1]")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("cells.py: --device cuda, and this torch has no CUDA device")
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if gpu else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    # A new folder for every training: train refuses to start a run over an earlier one,
    # so the BPTT runs shared one in vain, and a second bench stopped at its first cell.
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=args.out))
    base = TrainConfig(
        out=str(runs / "run"),
        device=device.type,
        # Every cell from scratch: `auto` started the difference-only GRU alone from the
        # shipped encoder, itself learnt from this synthetic world.
        init="scratch",
        appearance=True,  # the bundled model's recipe
        train_streams=max(64, int(1024 * args.scale)),
        epochs=max(2, round(12 * args.scale)),
        val_streams=max(8, int(32 * args.scale)),
    )
    synth = SynthConfig(size=base.size, fps=base.fps)
    long_frames = 20 * base.bptt
    long = render_streams(max(4, int(16 * args.scale)), long_frames, base.seed + 1, synth, True)
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "scale": args.scale}
    print(f"{name}: {base.train_streams} training streams, {base.epochs} epochs")

    # 1. Cells.
    data = synthetic_data(base)
    cells, nets = {}, {}
    for cell in (*CELLS, MOTION_ONLY):
        variant = {"cell": "gru", "appearance": False} if cell == MOTION_ONLY else {"cell": cell}
        folder = "run-gru-motion" if cell == MOTION_ONLY else f"run-{cell}"
        cfg = dataclasses.replace(base, out=str(runs / folder), **variant)
        nets[cell], cost = _trained(cfg, data, device)
        cells[cell] = {
            **cost,
            "clip_accuracy": _clips(nets[cell], data),
            "short": _streams_score(nets[cell], data.val_streams, cfg.fps),
            "long": _streams_score(nets[cell], long, cfg.fps),
        }
    results["cells"] = cells
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")  # so far

    # 2. Truncated BPTT against full BPTT.
    small = dataclasses.replace(
        base, train_streams=max(64, base.train_streams // 2), epochs=max(2, base.epochs // 2)
    )
    data = synthetic_data(small)
    chunks = {}
    for chunk in CHUNKS:
        cfg = dataclasses.replace(
            small, bptt=chunk or small.stream_frames, out=str(runs / f"run-bptt-{chunk or 'full'}")
        )
        net, cost = _trained(cfg, data, device)
        chunks[str(chunk or f"full ({small.stream_frames})")] = {
            **cost,
            "clip_accuracy": _clips(net, data),
            **_streams_score(net, data.val_streams, cfg.fps),
        }
    results["bptt"] = chunks
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")  # so far

    # 3. Gradients through time.
    grads = gradient_section(nets, long.frames, device)
    results["gradient_norms"] = grads
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(grads, args.out / "gradient_norms.png")
    shutil.rmtree(runs)  # only what they scored is kept (kept whole when a run fails)
    _print_tables(results, base, long_frames)


def gradient_section(
    nets: dict[str, Recognizer], long_frames: np.ndarray, device: torch.device, reach: int = 60
) -> dict[str, list[float]]:
    """Gradient norms over distance for the trained GRU and RNN, and both at initialisation."""
    frames = torch.from_numpy(long_frames[:8, :reach]).to(device)
    grads = {}
    for cell in ("gru", "rnn"):
        trained = nets[cell]
        torch.manual_seed(0)
        fresh = build_recognizer(trained.cfg).to(device)
        assert isinstance(fresh, ActionRecognizer) and isinstance(trained, ActionRecognizer)
        grads[f"{cell} at init"] = gradient_norms(fresh, frames, reach)
        grads[f"{cell} trained"] = gradient_norms(trained, frames, reach)
    return grads


def _clips(net: Recognizer, data: SyntheticData) -> float:
    return round(clip_accuracy(net, data.val_clips), 4)


def _plot(grads: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, norms in grads.items():
        ax.semilogy(range(len(norms)), norms, label=name, ls="-" if "trained" in name else "--")
    ax.set_xlabel("frames back from the prediction (k)")
    ax.set_ylabel("|d logit / d input features|")
    ax.set_title("how far back the gradient reaches")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _frames(x: float | None) -> str:
    """A median of whole frames: "1", or "1.5" between two."""
    return "n/a" if x is None else f"{x:g}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _print_tables(results: dict[str, Any], base: TrainConfig, long_frames: int) -> None:
    print(f"\n{results['device']}, torch {results['torch']}")
    print(
        f"held-out streams of {base.val_frames} frames (short) and {long_frames} "
        f"(long: 20x the {base.bptt}-frame BPTT chunk)\n"
    )
    print(
        _row(
            "cell",
            "clip top-1",
            "per frame, short",
            "settled, short",
            "per frame, long",
            "settled, long",
            "switch latency (median frames)",
            "training time",
        )
    )
    print(_row(*["---"] * 8))
    for cell, r in results["cells"].items():
        s, lg = r["short"], r["long"]
        print(
            _row(
                cell,
                _pct(r["clip_accuracy"]),
                _pct(s["frame_accuracy"]),
                _pct(s["settled_frame_accuracy"]),
                _pct(lg["frame_accuracy"]),
                _pct(lg["settled_frame_accuracy"]),
                _frames(s["switch_latency_frames"]),
                f"{r['train_seconds']:.0f} s",
            )
        )
    print()
    print(
        _row(
            "BPTT chunk (frames)",
            "clip top-1",
            "per frame",
            "settled",
            "training time",
            "peak GPU memory",
        )
    )
    print(_row(*["---"] * 6))
    for chunk, r in results["bptt"].items():
        memory = "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f} MB"
        print(
            _row(
                chunk,
                _pct(r["clip_accuracy"]),
                _pct(r["frame_accuracy"]),
                _pct(r["settled_frame_accuracy"]),
                f"{r['train_seconds']:.0f} s",
                memory,
            )
        )
    print()
    print(_row("gradient norm, k frames back", "k=1", "k=10", "k=30", "k=59"))
    print(_row(*["---"] * 5))
    for name, norms in results["gradient_norms"].items():
        print(_row(name, *(f"{norms[k]:.2e}" for k in (1, 10, 30, 59))))


if __name__ == "__main__":
    main()
