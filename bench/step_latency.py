"""Per-frame cost of one recurrent step: onnxruntime (what the service runs)
against PyTorch eager (what training runs), side by side in one process.

    python bench/step_latency.py [--model service/models/default.onnx] [--frames 300]

Prints ms/frame for each batch size and the torch/onnxruntime ratio. Needs the
train extra (torch) for the comparison column.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from actionstream.contract import INPUT_FRAMES, read_props

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "service" / "models" / "default.onnx"


def _time_per_frame(step: Callable[[], object], batch: int, frames: int) -> float:
    for _ in range(5):
        step()
    runs = max(3, frames // batch)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) / batch * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--frames", type=int, default=300, help="frames timed per batch size")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    args = parser.parse_args()
    if args.frames < 1 or args.threads < 0:
        parser.error("--frames must be at least 1, and --threads 0 (all cores) or more")
    if not args.model.is_file():
        parser.error(f"--model: no such model file: {args.model}")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
    spec = read_props(session.get_modelmeta().custom_metadata_map, str(args.model))

    torch_step = None
    try:
        import torch

        from actionstream.training.model import StepModule, build_recognizer

        if args.threads:
            torch.set_num_threads(args.threads)
        # The file's own architecture; the weights do not matter for timing.
        torch_step = StepModule(build_recognizer(spec.model)).eval()
    except ImportError:
        print("torch not installed: onnxruntime column only")

    threads = args.threads or "all"
    print(f"model {args.model.name}  input {spec.height}x{spec.width}  threads {threads}")
    print(f"{'batch':>5}  {'onnxruntime ms/frame':>21}  {'torch ms/frame':>15}  {'torch/ort':>9}")
    rng = np.random.default_rng(0)
    for batch in (1, 4, 16, 64):
        frames = rng.integers(0, 256, (batch, spec.height, spec.width, 3), dtype=np.uint8)
        feed = {
            INPUT_FRAMES: frames,
            **{s.input: np.zeros((batch, *s.shape), np.float32) for s in spec.states},
        }
        ort_ms = _time_per_frame(lambda feed=feed: session.run(None, feed), batch, args.frames)
        row = f"{batch:>5}  {ort_ms:>21.3f}"
        if torch_step is not None:
            tf = torch.from_numpy(frames)
            ts = [torch.from_numpy(feed[s.input]) for s in spec.states]

            def run_torch(tf: torch.Tensor = tf, ts: list = ts) -> object:
                with torch.inference_mode():
                    return torch_step(tf, tuple(ts))

            torch_ms = _time_per_frame(run_torch, batch, args.frames)
            row += f"  {torch_ms:>15.3f}  {torch_ms / ort_ms:>9.2f}"
        print(row)


if __name__ == "__main__":
    main()
