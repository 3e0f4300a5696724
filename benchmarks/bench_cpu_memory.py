"""Freed memory kept in the process (lipsync.core.cpu_memory) against glibc's default, side by side.

    python benchmarks/bench_cpu_memory.py [--model_size tiny] [--batch_size 8] [--steps 10]

Each setting trains the same U-Net from the same seed for --steps steps (after 2 warm-up steps) in
a process of its own, one torch thread: CPU seconds per step (user, system), page faults per step
and peak memory, then the ratio; the two runs' losses must be identical (the allocator changes
where tensors live, never what is computed).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

AUDIO_SHAPE = (1, 32, 16)            # ave's window; the allocations are the images' anyway
WARM_UP_STEPS = 2


def measure(model_size: str, batch_size: int, steps: int, keep: bool) -> dict:
    """Run in this process: train ``steps`` steps, return the figures."""
    import resource

    import torch

    from lipsync.core.cpu_memory import keep_freed_memory
    from models.unet_328 import WIDTHS, LipSyncUNet

    kept = keep_freed_memory() if keep else False
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LipSyncUNet("ave", AUDIO_SHAPE, WIDTHS[model_size])
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    images, audio = torch.rand(batch_size, 6, 320, 320), torch.randn(batch_size, *AUDIO_SHAPE)
    truth = torch.rand(batch_size, 3, 320, 320)
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = (model(images, audio) - truth).abs().mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))

    for _ in range(WARM_UP_STEPS):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"kept": kept, "user_s_per_step": (after.ru_utime - before.ru_utime) / steps,
            "system_s_per_step": (after.ru_stime - before.ru_stime) / steps,
            "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
            "peak_rss_mb": after.ru_maxrss / 1024, "losses": losses}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_size", default="tiny")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--one", choices=("default", "kept"), help=argparse.SUPPRESS)   # a measuring child
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.model_size, args.batch_size, args.steps, args.one == "kept")))
        return 0
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    figures = {}
    for setting in ("default", "kept"):
        command = [sys.executable, __file__, "--model_size", args.model_size, "--batch_size", str(args.batch_size),
                   "--steps", str(args.steps), "--one", setting]
        finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
        figures[setting] = json.loads(finished.stdout.strip().splitlines()[-1])
    print(f"{args.model_size}, batch {args.batch_size}, {args.steps} steps, one thread")
    print("| freed memory | CPU s/step | user | system | page faults/step | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for setting, row in figures.items():
        total = row["user_s_per_step"] + row["system_s_per_step"]
        name = "kept (cpu_memory)" if setting == "kept" else "glibc default"
        print(f"| {name} | {total:.3f} | {row['user_s_per_step']:.3f} | {row['system_s_per_step']:.3f} | "
              f"{row['page_faults_per_step']:.0f} | {row['peak_rss_mb']:.0f} |")
    default, kept = (figures[name]["user_s_per_step"] + figures[name]["system_s_per_step"] for name in figures)
    print(f"ratio default / kept: {default / kept:.2f}x; took effect: {figures['kept']['kept']}; "
          f"identical losses: {figures['default']['losses'] == figures['kept']['losses']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
