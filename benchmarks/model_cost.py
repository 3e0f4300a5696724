"""What each U-Net size costs: parameters and multiply-add work of one 320x320 frame.

    python benchmarks/model_cost.py           # one line per size: SIZE PARAMS_M GFLOP (* = the default)

GFLOP are torch.utils.flop_counter's count of one forward pass at batch 1 with the ave
features' audio window (32, 16, 16); SyncTalk_2D's published unet_328 (channels 32-512,
expansion 2) costs 9.8 GFLOP and 12.2 M parameters counted the same way (issue 11).
"""
import argparse
import sys
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


def main(argv=None):
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    rows = []
    for size in WIDTHS:
        parameters, gflop = model_cost(size)
        marker = " *" if size == TrainConfig.model_size else ""
        rows.append((size, parameters, gflop))
        print(f"{size} {parameters:.2f} {gflop:.2f}{marker}")
    return rows


if __name__ == "__main__":
    main()
