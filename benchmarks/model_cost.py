"""What each U-Net size costs: parameters and multiply-add work of one 320x320 frame.

    python benchmarks/model_cost.py           # one line per size: SIZE PARAMS_M GFLOP (* = the default)
    python benchmarks/model_cost.py --frames_per_second [--device cuda] [--batch_size 8]
                                              # ... and the measured model-only frames/s: SIZE PARAMS_M GFLOP FPS

GFLOP are torch.utils.flop_counter's count of one forward pass at batch 1 with the ave
features' audio window (32, 16, 16); SyncTalk_2D's published unet_328 (channels 32-512,
expansion 2) costs 9.8 GFLOP and 12.2 M parameters counted the same way (issue 11).
"""
import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from data_utils.crop import INNER_SIZE  # noqa: E402
from data_utils.timebase import FEATURE_SPECS  # noqa: E402
from lipsync.train.options import TrainConfig  # noqa: E402
from models.unet_328 import INPUT_CHANNELS, WIDTHS, LipSyncUNet  # noqa: E402

ASR = "ave"
TIMED_CALLS = 3                 # after one warm-up call; the fastest counts (least disturbed on a shared machine)


def model_cost(size: str):
    """(parameters in millions, GFLOP of one frame) of the U-Net of width ``size``."""
    audio_shape = FEATURE_SPECS[ASR].window_shape()
    model = LipSyncUNet(ASR, audio_shape, WIDTHS[size]).eval()
    parameters = sum(parameter.numel() for parameter in model.parameters()) / 1e6
    image = torch.zeros(1, INPUT_CHANNELS, INNER_SIZE, INNER_SIZE)
    audio = torch.zeros(1, *audio_shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(image, audio)
    return parameters, counter.get_total_flops() / 1e9


def frames_per_second(size: str, device: str, batch_size: int) -> float:
    """Model-only eager frames/s of the U-Net of width ``size`` (random weights: speed does not depend on them)."""
    audio_shape = FEATURE_SPECS[ASR].window_shape()
    model = LipSyncUNet(ASR, audio_shape, WIDTHS[size]).eval().to(device)
    image = torch.rand(batch_size, INPUT_CHANNELS, INNER_SIZE, INNER_SIZE, device=device)
    audio = torch.randn(batch_size, *audio_shape, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(TIMED_CALLS + 1):
            started = time.perf_counter()
            model(image, audio)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return batch_size / min(times[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames_per_second", action="store_true", help="also time each size's forward pass")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch_size", type=int, default=8, help="frames per timed call (default 8)")
    args = parser.parse_args(argv)
    if args.frames_per_second:
        print(f"# model-only eager torch on {args.device}, batch {args.batch_size}, {torch.get_num_threads()} "
              "threads: SIZE PARAMS_M GFLOP FRAMES_PER_S", flush=True)
    rows = []
    for size in WIDTHS:
        parameters, gflop = model_cost(size)
        marker = " *" if size == TrainConfig.model_size else ""
        speed = f" {frames_per_second(size, args.device, args.batch_size):.1f}" if args.frames_per_second else ""
        rows.append((size, parameters, gflop))
        print(f"{size} {parameters:.2f} {gflop:.2f}{speed}{marker}", flush=True)
    return rows


if __name__ == "__main__":
    main()
