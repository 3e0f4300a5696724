"""A small CNN that reads how far the mouth is open from the lips' box of a 320 crop.

It is fitted on the person's own training crops, to the inner-lip gap their landmarks
give (lipsync/train/opening_fit.py), and then frozen: the training objective compares
what it reads on the drawn mouth with what it reads on the true one (--opening_weight).
Landmark detectors are not differentiable; this reader is, and it knows one face only,
which is all the U-Net draws.
"""
import torch
import torch.nn.functional as F
from torch import nn

from data_utils import crop

# The lips' box (data_utils.crop.LIP_*, 120 x 180 of the 320 crop) at half resolution.
READER_DOWNSCALE = 2
# Gaps are ~0-0.1 face widths; the reader works in tenths so its outputs are ~0-1.
GAP_SCALE = 10.0
READER_WIDTHS = (16, 32, 64, 64)
READER_HIDDEN = 64


def lips_box(image_rgb_320: torch.Tensor) -> torch.Tensor:
    """(B, 3, 320, 320) -> (B, 3, 120, 180): the lips' box."""
    return image_rgb_320[:, :, crop.LIP_TOP:crop.LIP_BOTTOM, crop.LIP_LEFT:crop.LIP_RIGHT]


class MouthOpeningReader(nn.Module):
    """(B, 3, 320, 320) RGB in [0, 1] -> (B,) inner-lip gap in tenths of a face width."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for width in READER_WIDTHS:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        # 60 x 90 halved four times (rounding up): 4 x 6. Flattened, not pooled: where the
        # lips are in the box is what the gap is.
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * 4 * 6, READER_HIDDEN), nn.ReLU(inplace=True),
                                  nn.Linear(READER_HIDDEN, 1))

    def forward(self, image_rgb_320: torch.Tensor) -> torch.Tensor:
        return self.read_box(lips_box(image_rgb_320))

    def read_box(self, box: torch.Tensor) -> torch.Tensor:
        """(B, 3, 120, 180) lips' boxes -> (B,) gaps in tenths of a face width."""
        return self.head(self.features(F.avg_pool2d(box, READER_DOWNSCALE))).squeeze(1)
