"""The mouth discriminator: does this mouth band look like one of the person's real frames?

A patch discriminator (every output logit judges one patch of the band, so it
learns what smudged teeth and grey lips look like rather than which frame it
is) on the same mouth band SyncNet judges: the upper 160 rows of the repainted
lower face, at full resolution, because a smudge is texture. Spectral norm on
every convolution keeps its gradient on the picture bounded, which is what the
U-Net's adversarial term (lipsync/train/objective.py) is balanced against. No
normalisation layers: one forward over real and drawn bands together must not
let either half's statistics leak into the other's verdict.
"""
from typing import Dict, Tuple

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models.syncnet import face_band

# Per U-Net size: the discriminator grows with the picture it has to judge.
DISCRIMINATOR_WIDTHS: Dict[str, Tuple[int, ...]] = {
    "full": (32, 64, 128, 256),
    "base": (32, 64, 128, 256),
    "mobile": (16, 32, 64, 128),
    "tiny": (8, 16, 32, 64),
}
KERNEL = 4                       # stride-2 4x4 convolutions: 160 x 320 band -> 10 x 20 patch verdicts
LEAK = 0.2


class MouthDiscriminator(nn.Module):
    """(B, 3, 320, 320) inner crops in [0, 1] -> (B, 1, 10, 20) "real" logits, one per patch."""

    def __init__(self, model_size: str = "base"):
        super().__init__()
        widths = DISCRIMINATOR_WIDTHS[model_size]
        layers = []
        in_channels = 3
        for width in widths:
            layers += [spectral_norm(nn.Conv2d(in_channels, width, KERNEL, 2, 1)), nn.LeakyReLU(LEAK)]
            in_channels = width
        layers.append(spectral_norm(nn.Conv2d(in_channels, 1, 3, 1, 1)))
        self.layers = nn.Sequential(*layers)
        self.model_size = model_size

    def forward(self, image_rgb_320: torch.Tensor) -> torch.Tensor:
        return self.layers(face_band(image_rgb_320) * 2 - 1)
