"""SyncNet: does this mouth belong to this audio window?

A face encoder on the mouth band of the 320 inner crop and an audio encoder on
the frame's feature window each give an L2-normalised embedding; their cosine
similarity, scaled by a learned temperature, is the logit of "in sync".
Trained on real pairs and on off-sync pairs (the same face with the audio of a
frame elsewhere in the recording, lipsync.train.trainer.SyncNetTask); frozen, it
gives the U-Net a sync loss on the mouths it draws.
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from data_utils.crop import INNER_SIZE, MASK_TOP
from models.audio_window import AudioWindowEncoder

# The crop (data_utils/crop.py) starts at the nose bridge, so its lower face is
# the repainted region below MASK_TOP; its upper 160 rows hold the lips, jaw
# and chin (the rest is neck). SyncNet judges exactly what the U-Net paints.
FACE_ROWS = slice(MASK_TOP, MASK_TOP + INNER_SIZE // 2)
FACE_DOWNSAMPLE = 2            # 160 x 320 band seen at 80 x 160: lip shape, not skin texture

SYNC_WIDTHS: Dict[str, Tuple[int, ...]] = {
    "full": (32, 64, 128, 256, 512),
    "base": (24, 48, 96, 192, 384),
    "mobile": (16, 32, 64, 128, 256),
    "tiny": (8, 16, 16, 32, 32),
}
EMBEDDING_SIZE = {"full": 256, "base": 192, "mobile": 128, "tiny": 32}
INITIAL_LOGIT_SCALE = 5.0
LAYERS_PER_STAGE = 6           # conv, BN, ReLU, conv, BN, ReLU      # cosine in [-1, 1] -> logits in [-5, 5] at the start


def face_band(image_rgb_320: torch.Tensor) -> torch.Tensor:
    """(B, 3, 320, 320) inner crop -> (B, 3, 160, 320) mouth band SyncNet looks at."""
    return image_rgb_320[:, :, FACE_ROWS, :]


class FaceEncoder(nn.Module):
    def __init__(self, widths, embedding: int):
        super().__init__()
        layers = []
        in_channels = 3
        for width in widths:              # five stride-2 stages: 80 x 160 -> 3 x 5
            layers += [nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True),
                       nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, embedding)

    def forward(self, band):
        band = F.avg_pool2d(band, FACE_DOWNSAMPLE)
        return self.head(self.features(band).mean(dim=(2, 3)))


class SyncNet(nn.Module):
    """``forward(image_rgb_320, audio)`` -> (B,) logits of "mouth and audio are in sync"."""

    def __init__(self, asr: str, audio_shape: tuple, model_size: str = "full"):
        super().__init__()
        self.asr = asr
        self.audio_shape = tuple(int(value) for value in audio_shape)
        self.model_size = model_size
        widths = SYNC_WIDTHS[model_size]
        embedding = EMBEDDING_SIZE[model_size]
        self.face = FaceEncoder(widths, embedding)
        self.audio = AudioWindowEncoder(self.audio_shape, hidden=widths[-1], out_dim=embedding)
        self.log_scale = nn.Parameter(torch.tensor(float(INITIAL_LOGIT_SCALE)).log())
        self.bias = nn.Parameter(torch.zeros(()))

    def embeddings(self, image_rgb_320, audio):
        face = F.normalize(self.face(face_band(image_rgb_320)), dim=1)
        voice = F.normalize(self.audio(audio), dim=1)
        return face, voice

    def forward(self, image_rgb_320: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        face, voice = self.embeddings(image_rgb_320, audio)
        cosine = (face * voice).sum(dim=1)
        return cosine * self.log_scale.exp() + self.bias
