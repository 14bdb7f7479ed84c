"""One training step on the CPU with glibc's default allocation and with freed memory
kept (training/allocator.py, what `actionstream train` and `evaluate` do), side by side.

    python bench/train_step.py [--batch 32] [--frames 40] [--size 64] [--steps 8] [--rounds 2]

Each setting runs in a process of its own (the allocator is set per process),
alternating, `--rounds` times, the one that goes first swapped every round: the
default network with the frame beside its difference (the bundled model's),
forward, backward and an AdamW step on random frames. Prints, per run, wall
seconds a step, user and system CPU seconds a step, page faults a step and peak
RSS; then the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _measure(batch: int, frames: int, size: int, steps: int, keep: bool) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from actionstream.contract import ModelConfig
    from actionstream.training.allocator import keep_freed_memory
    from actionstream.training.model import build_recognizer

    kept = keep_freed_memory() if keep else False
    torch.manual_seed(0)
    cfg = ModelConfig(
        num_classes=9, height=size, width=size, channels=(16, 32, 64, 64), appearance=True
    )
    net = build_recognizer(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8)
    y = torch.randint(0, 9, (batch, frames))

    def step() -> None:
        logits, *_ = net(x, *net.initial_state(batch))  # (B, T, classes)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: the first steps size the heap either way
        step()
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    after, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return {
        "kept": float(kept),
        "wall_s": (t1 - t0) / steps,
        "user_s": (after.ru_utime - before.ru_utime) / steps,
        "sys_s": (after.ru_stime - before.ru_stime) / steps,
        "faults": (after.ru_minflt - before.ru_minflt) / steps,
        "peak_rss_mib": after.ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--frames", type=int, default=40, help="frames a chunk (--bptt)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if min(args.batch, args.frames, args.steps, args.rounds) < 1 or args.size < 16:
        p.error("--batch, --frames, --steps and --rounds must be at least 1, --size at least 16")
    if args.child:
        result = _measure(args.batch, args.frames, args.size, args.steps, args.child == "kept")
        print(json.dumps(result))
        return

    shape = f"batch {args.batch} x {args.frames} frames of {args.size}x{args.size}"
    print(f"one training step, {shape}, {args.steps} steps a run")
    columns = ("wall s", 7), ("user s", 7), ("sys s", 7), ("faults", 9), ("peak MiB", 9)
    print(f"{'allocator':>10} " + " ".join(f"{name:>{width}}" for name, width in columns))
    walls: dict[str, list[float]] = {"default": [], "kept": []}
    for round_ in range(args.rounds):
        # Which runs first swaps every round: the machine's drift would favour one.
        order = ("default", "kept") if round_ % 2 == 0 else ("kept", "default")
        for child in order:
            flags = ["--batch", str(args.batch), "--frames", str(args.frames)]
            flags += ["--size", str(args.size), "--steps", str(args.steps), "--child", child]
            run = subprocess.run([sys.executable, __file__, *flags], capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"the {child} run failed (exit code {run.returncode}):\n{run.stderr}")
            r = json.loads(run.stdout.splitlines()[-1])
            if child == "kept" and not r["kept"]:
                sys.exit("glibc's mallopt is not available here: nothing to compare")
            walls[child].append(r["wall_s"])
            print(
                f"{child:>10} {r['wall_s']:7.3f} {r['user_s']:7.3f} {r['sys_s']:7.3f} "
                f"{r['faults']:9.0f} {r['peak_rss_mib']:9.0f}"
            )
    default, kept = statistics.median(walls["default"]), statistics.median(walls["kept"])
    print(f"median wall a step: default {default:.3f} s, kept {kept:.3f} s: {default / kept:.2f}x")


if __name__ == "__main__":
    main()
