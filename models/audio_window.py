"""The audio branch shared by the U-Net and SyncNet: one frame's feature window
(C, H, W) from data_utils.timebase.model_audio_input -> one embedding vector.

The (C, H, W) grid is only a reshape of WINDOW_FRAMES consecutive feature
frames of ``per_frame`` values each (timebase.py), so the branch undoes it and
convolves along time, where neighbouring rows really are neighbours. The
layers follow from the encoder's window shape (AVE/WeNet 512 values a frame,
HuBERT 2 x 1024), which makes one branch per encoder without per-encoder code.
"""
import math

import torch
from torch import nn

from data_utils.timebase import WINDOW_FRAMES

# Temporal downsampling 16 -> 8 -> 4 feature frames before the vector head:
# 4 steps of 40 ms keep the order of sounds inside the window.
AUDIO_TIME_STEPS_KEPT = 4


def _conv1d_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm1d(out_channels),
        nn.ReLU(inplace=True),
    )


class AudioWindowEncoder(nn.Module):
    """(B, C, H, W) feature window -> (B, out_dim) embedding."""

    def __init__(self, audio_shape, hidden: int, out_dim: int):
        super().__init__()
        self.audio_shape = tuple(int(value) for value in audio_shape)
        total = math.prod(self.audio_shape)
        if total % WINDOW_FRAMES:
            raise ValueError(f"audio window {self.audio_shape} does not hold {WINDOW_FRAMES} frames")
        self.per_frame = total // WINDOW_FRAMES
        layers = [_conv1d_block(self.per_frame, hidden, stride=1)]
        steps = WINDOW_FRAMES
        while steps > AUDIO_TIME_STEPS_KEPT:
            layers.append(_conv1d_block(hidden, hidden, stride=2))
            steps = (steps + 1) // 2
        self.temporal = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(hidden * steps, out_dim),
            nn.ReLU(inplace=True),
            nn.Linear(out_dim, out_dim),
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, per_frame, WINDOW_FRAMES): time becomes the conv axis.
        frames = audio.reshape(-1, WINDOW_FRAMES, self.per_frame).transpose(1, 2)
        return self.head(self.temporal(frames))
