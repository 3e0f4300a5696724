"""The lips' redness: how red the reddest part of the lips' box is.

At the tiny width a U-Net run could end unable to draw the lips' red, and the landmark
detector reads pale lips around a dark line as a mouth barely open (benchmarks/RESULTS.md,
"Lip codes, and the colour head"). This is the measure of that colour benchmarks/lip_colour.py
reports.
"""
import torch

from data_utils.crop import LIP_BOTTOM, LIP_LEFT, LIP_RIGHT, LIP_TOP

REDDEST_SHARE = 0.1              # the reddest tenth of the lips' box: the lips, not the skin around them


def lip_redness(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 320, 320) RGB in [0, 1] -> (B,) the mean R - G of each image's reddest tenth of the lips' box.

    Differentiable: its gradient reaches the pixels of that tenth."""
    box = images[:, :, LIP_TOP:LIP_BOTTOM, LIP_LEFT:LIP_RIGHT].float()
    red_minus_green = (box[:, 0] - box[:, 1]).flatten(1)
    count = max(1, int(round(REDDEST_SHARE * red_minus_green.shape[1])))
    return red_minus_green.topk(count, dim=1).values.mean(dim=1)
