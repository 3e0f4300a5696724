"""The lip-sync U-Net for 328 crops.

Input (B, 6, 320, 320) RGB in [0, 1]: channels 0-2 a reference crop of the
person, 3-5 the target crop with its lower face blacked out
(data_utils.model_input; with ``reference_frames`` K, K reference crops come
first: 3 (K + 1) channels). The 320 square is the centre of the
328 crop; the 4 px border (data_utils.crop.CROP_BORDER) is never generated, so
pasting back has real pixels to blend into. Output (B, 3, 320, 320) RGB in
[0, 1]: the whole target crop, mouth drawn from the audio window.

Shape of the network: a stem at full resolution, five stride-2 encoder stages
(320 -> 10) of MobileNetV2 inverted-residual blocks, the audio branch fused at
the 10 x 10 bottleneck, and five decoder stages that upsample by 2 and merge
the encoder output of the same resolution (skip connection). With
``audio_stages`` N > 0 the audio embedding also scales and shifts each channel
of the first N decoder stages' outputs (FiLM), so the audio reaches the
resolutions where the lips' edges are drawn and not only the 10 x 10 grid,
whose cells are a third of the mouth's width. With ``mask_to_edges`` the model
blacks the masked target out from the mask's top row to the crop's bottom and
side edges before it looks at it: the strips beside and below the repainted
region show the jaw and its shadow moving with the mouth. With ``lip_code_dims``
K > 0 the bottleneck is also told a lip code (data_utils/lip_codes.py: K numbers
for the lips' shape): in training the target's true one, otherwise the one the
audio branch predicts from its embedding, which training fits to the true one
(``forward(..., return_lip_code=True)`` returns the prediction for that loss).
With ``head_levels`` N > 1 the colour head reads the outputs of the last N decoder
stages, the coarser ones upsampled to full resolution: the colours come from wider
features than the stem's few full-resolution channels, as chroma is coded at a lower
resolution than luma in video (at the tiny width's 4 stem channels, whether a run could
draw the lips' red depended on the head's first weights; with N = 3, the default, every seed
measured drew it: benchmarks/RESULTS.md).
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from data_utils.crop import INNER_SIZE, shown_to_edges
from models.audio_window import AudioWindowEncoder

IMAGE_CHANNELS = 3
INPUT_CHANNELS = 2 * IMAGE_CHANNELS     # reference + masked target


def input_channels(reference_frames: int = 1) -> int:
    """Image channels of a U-Net with ``reference_frames`` references (+ the masked target)."""
    return IMAGE_CHANNELS * (int(reference_frames) + 1)

# Channel widths of the stem and the five encoder stages' first four outputs
# (stage 5 keeps the last width). "base", the default, is the widest that costs no more
# than SyncTalk_2D's unet_328 (9.7 GFLOP per 320x320 frame against its 9.8,
# benchmarks/model_cost.py). "full" has unet_328's channel widths but not its design, and
# costs 2.5x as much (24.3 GFLOP); "mobile" halves full's widths (6.3 GFLOP); "tiny" is for tests.
WIDTHS: Dict[str, Tuple[int, ...]] = {
    "full": (32, 64, 128, 256, 512),
    "base": (20, 40, 80, 160, 320),
    "mobile": (16, 32, 64, 128, 256),
    "tiny": (4, 8, 8, 16, 16),
}
MODEL_SIZES = tuple(WIDTHS)
DEFAULT_MODEL_SIZE = "base"

# Inverted-residual expansion: small at the two highest resolutions, where the
# expanded tensors dominate memory traffic; 4 further down (MobileNetV2 uses 6:
# 4 costs a third less compute for a decoder that paints one face).
EXPANSION_HIGH_RES = 2
EXPANSION_LOW_RES = 4
HIGH_RES_STAGES = 2
DOWNSAMPLINGS = 5
AUDIO_STAGES = 0                # decoder stages the audio modulates besides the bottleneck (the layout before: 0)
MASK_TO_EDGES = True            # black the masked target out to the crop's edges (the default since 2026-12-06; before: no)
LIP_CODE_DIMS = 0               # lip-code numbers the bottleneck is told (data_utils/lip_codes.py; before: none)
HEAD_LEVELS = 3                 # decoder stages the colour head reads (the default since 2026-12-07; before: 1)
BOTTLENECK_SIZE = INNER_SIZE >> DOWNSAMPLINGS        # 10
# The options a U-Net is built with besides its ASR, audio shape and widths: a checkpoint records
# them, and one saved before an option existed was built with the value given here.
OPTIONS_BEFORE_THEY_EXISTED = {"reference_frames": 1, "audio_stages": 0, "mask_to_edges": False,
                               "lip_code_dims": 0, "head_levels": 1}


CUSTOM_WIDTHS = "custom"        # the model size of widths no WIDTHS entry has (train_328.py --widths)


def width_name(widths) -> str:
    """The WIDTHS key of ``widths``, or CUSTOM_WIDTHS."""
    for name, value in WIDTHS.items():
        if tuple(widths) == value:
            return name
    return CUSTOM_WIDTHS


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise (stride 1 or 2), linear 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: int = 6):
        super().__init__()
        hidden = in_channels * expansion
        layers = []
        if expansion != 1:
            layers.append(ConvBNReLU(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU(hidden, hidden, kernel_size=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


def _stage(in_channels, out_channels, stride, expansion) -> nn.Sequential:
    return nn.Sequential(
        InvertedResidual(in_channels, out_channels, stride, expansion),
        InvertedResidual(out_channels, out_channels, 1, expansion),
    )


class UpStage(nn.Module):
    """x2 bilinear upsampling, concatenation with the skip, 1x1 merge, one inverted-residual block."""

    def __init__(self, in_channels, skip_channels, out_channels, expansion):
        super().__init__()
        self.merge = ConvBNReLU(in_channels + skip_channels, out_channels, kernel_size=1)
        self.blocks = InvertedResidual(out_channels, out_channels, 1, expansion)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.blocks(self.merge(torch.cat([x, skip], dim=1)))


class LipSyncUNet(nn.Module):
    """Reference + masked target + audio window -> the target crop with a mouth.

    ``asr`` and ``audio_shape`` (C, H, W) describe the audio input; ``widths``
    is one of WIDTHS (or any 5 increasing channel counts); ``reference_frames``
    how many reference crops come before the masked target; ``audio_stages`` how
    many decoder stages, from the 20 x 20 one up, the audio embedding modulates;
    ``mask_to_edges`` whether the masked target is blacked out below MASK_TOP to the edges;
    ``lip_code_dims`` how many lip-code numbers the bottleneck is told (0: none);
    ``head_levels`` how many decoder stages' outputs, from the full-resolution one down, the
    colour head reads (1: the full-resolution one alone).
    """

    def __init__(self, asr: str, audio_shape: tuple, widths=WIDTHS[DEFAULT_MODEL_SIZE], reference_frames: int = 1,
                 audio_stages: int = AUDIO_STAGES, mask_to_edges: bool = MASK_TO_EDGES,
                 lip_code_dims: int = LIP_CODE_DIMS, head_levels: int = HEAD_LEVELS):
        super().__init__()
        widths = tuple(int(value) for value in widths)
        if len(widths) != DOWNSAMPLINGS:
            raise ValueError(f"widths needs {DOWNSAMPLINGS} channel counts, got {widths}")
        self.asr = asr
        self.audio_shape = tuple(int(value) for value in audio_shape)
        self.widths = widths
        if int(reference_frames) < 1:
            raise ValueError(f"reference_frames must be at least 1, got {reference_frames}")
        self.reference_frames = int(reference_frames)
        if not 0 <= int(audio_stages) <= DOWNSAMPLINGS:
            raise ValueError(f"audio_stages must be 0..{DOWNSAMPLINGS}, got {audio_stages}")
        self.audio_stages = int(audio_stages)

        def expansion(level):
            return EXPANSION_HIGH_RES if level < HIGH_RES_STAGES else EXPANSION_LOW_RES

        self.stem = nn.Sequential(ConvBNReLU(INPUT_CHANNELS, widths[0]),
                                  InvertedResidual(widths[0], widths[0], 1, EXPANSION_HIGH_RES))
        # Encoder level k (k = 1..5) works at INNER_SIZE / 2^k with width widths[min(k, 4)].
        encoder_widths = list(widths) + [widths[-1]]
        self.down = nn.ModuleList(
            _stage(encoder_widths[level], encoder_widths[level + 1], 2, expansion(level + 1))
            for level in range(DOWNSAMPLINGS))

        bottleneck = encoder_widths[-1]
        self.audio = AudioWindowEncoder(self.audio_shape, hidden=bottleneck, out_dim=bottleneck)
        self.fuse = nn.Sequential(ConvBNReLU(2 * bottleneck, bottleneck, kernel_size=1),
                                  _stage(bottleneck, bottleneck, 1, EXPANSION_LOW_RES))

        # Decoder level k goes from resolution level k+1 to k, merging encoder output k.
        self.up = nn.ModuleList(
            UpStage(encoder_widths[level + 1], encoder_widths[level], encoder_widths[level],
                    expansion(level))
            for level in reversed(range(DOWNSAMPLINGS)))
        self.head = nn.Conv2d(widths[0], IMAGE_CHANNELS, kernel_size=1)
        if self.reference_frames > 1:
            self._widen_stem()
        self.audio_film = self._film_layers(bottleneck, encoder_widths)
        if int(lip_code_dims) < 0:
            raise ValueError(f"lip_code_dims cannot be negative, got {lip_code_dims}")
        self.lip_code_dims = int(lip_code_dims)
        self.lip_code_head, self.lip_code_in = self._lip_code_layers(bottleneck)
        if not 1 <= int(head_levels) <= DOWNSAMPLINGS:
            raise ValueError(f"head_levels must be 1..{DOWNSAMPLINGS}, got {head_levels}")
        self.head_levels = int(head_levels)
        self.coarse_head = self._coarse_head(encoder_widths)
        self.mask_to_edges = bool(mask_to_edges)
        keep = torch.from_numpy(shown_to_edges()).float()[None, None]
        # Not in the state dict: the flag (in the checkpoint's config) says whether it is used.
        self.register_buffer("target_keep", keep, persistent=False)

    def options(self) -> Dict:
        """What this U-Net was built with besides its ASR, audio shape and widths (the keyword
        arguments that build it again)."""
        return {name: getattr(self, name) for name in OPTIONS_BEFORE_THEY_EXISTED}

    def _film_layers(self, bottleneck: int, encoder_widths) -> nn.ModuleList:
        """One linear map per modulated decoder stage: embedding -> (scale, shift) per channel.

        Drawn after every other weight and set to zero, so that with the same seed the
        network starts exactly as the one without them (the modulation starts as the
        identity) and only what training makes of them differs.
        """
        layers = nn.ModuleList()
        for index in range(self.audio_stages):
            channels = encoder_widths[DOWNSAMPLINGS - 1 - index]
            layer = nn.Linear(bottleneck, 2 * channels)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
            layers.append(layer)
        return layers

    def _lip_code_layers(self, bottleneck: int):
        """The audio embedding -> predicted lip code, and a lip code -> what it adds to the embedding.

        Drawn after every other weight, the second set to zero: with the same seed the network
        starts as the one without lip codes, and only training makes the decoder listen to them.
        """
        if self.lip_code_dims == 0:
            return None, None
        head = nn.Linear(bottleneck, self.lip_code_dims)
        code_in = nn.Linear(self.lip_code_dims, bottleneck)
        nn.init.zeros_(code_in.weight)
        nn.init.zeros_(code_in.bias)
        return head, code_in

    def _coarse_head(self, encoder_widths) -> Optional[nn.Conv2d]:
        """The colour head's 1x1 convolution from the coarser decoder stages' outputs (None with one level).

        Drawn after every other weight and set to zero, so that with the same seed the network
        starts exactly as the one whose head reads the full-resolution stage alone.
        """
        if self.head_levels == 1:
            return None
        channels = sum(encoder_widths[level] for level in range(1, self.head_levels))
        layer = nn.Conv2d(channels, IMAGE_CHANNELS, kernel_size=1, bias=False)
        nn.init.zeros_(layer.weight)
        return layer

    def coarse_colour(self, coarse, size) -> torch.Tensor:
        """What the coarse head adds to the colours (0 without it): its 1x1 convolution of the coarser
        stages' outputs, upsampled to ``size``.

        Mixing channels and upsampling are both linear, so each stage's share is mixed down to 3
        channels at its own resolution and only those are upsampled: the same sum as mixing the upsampled
        stages, at a fraction of the work (at the base width 0.01 GFLOP a frame instead of 0.07)."""
        colour = 0
        first = 0
        for level in coarse:
            weight = self.coarse_head.weight[:, first:first + level.shape[1]]
            first += level.shape[1]
            colour = colour + F.interpolate(F.conv2d(level, weight), size=size, mode="bilinear",
                                            align_corners=False)
        return colour

    def _widen_stem(self) -> None:
        """Give the stem's first convolution the extra references' input channels.

        Drawn after every other weight, so that with the same seed the rest of the
        network (and the first reference's and the target's filters) starts exactly
        as the one-reference model does: the extra references are the only change.
        """
        first = self.stem[0][0]
        widened = nn.Conv2d(input_channels(self.reference_frames), first.out_channels, first.kernel_size,
                            first.stride, first.padding, bias=False)
        with torch.no_grad():
            widened.weight[:, :IMAGE_CHANNELS] = first.weight[:, :IMAGE_CHANNELS]
            widened.weight[:, -IMAGE_CHANNELS:] = first.weight[:, IMAGE_CHANNELS:]
        self.stem[0][0] = widened

    def seen_input(self, image6: torch.Tensor) -> torch.Tensor:
        """The input as the network sees it: with ``mask_to_edges`` the masked target (the last
        IMAGE_CHANNELS channels, after every reference) blacked out where data_utils.crop.shown_to_edges is not."""
        if not self.mask_to_edges:
            return image6
        return torch.cat([image6[:, :-IMAGE_CHANNELS], image6[:, -IMAGE_CHANNELS:] * self.target_keep], dim=1)

    def forward(self, image6: torch.Tensor, audio: torch.Tensor, lip_code: Optional[torch.Tensor] = None,
                return_lip_code: bool = False):
        """The drawn crop; with ``return_lip_code`` also the (B, lip_code_dims) lip code the audio
        predicts (None without lip codes). ``lip_code`` (B, lip_code_dims): the code the decoder is
        told instead of the predicted one (training's true codes)."""
        x = self.stem(self.seen_input(image6))
        skips = [x]
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        skips.pop()                                   # the bottleneck itself is not a skip
        # (B, bottleneck) audio embedding, the same at every bottleneck position.
        embedding = self.audio(audio)
        predicted_code = None
        told = embedding
        if self.lip_code_dims:
            predicted_code = self.lip_code_head(embedding)
            code = predicted_code if lip_code is None else lip_code.to(embedding.dtype)
            told = embedding + self.lip_code_in(code)
        audio_map = told[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        x = self.fuse(torch.cat([x, audio_map], dim=1))
        coarse = []
        for index, stage in enumerate(self.up):
            x = stage(x, skips.pop())
            if index < self.audio_stages:
                scale, shift = self.audio_film[index](embedding)[:, :, None, None].chunk(2, dim=1)
                x = x * (1 + scale) + shift
            if DOWNSAMPLINGS - self.head_levels <= index < DOWNSAMPLINGS - 1:
                coarse.append(x)
        drawn = torch.sigmoid(self.head(x) + self.coarse_colour(coarse, x.shape[-2:]))
        return (drawn, predicted_code) if return_lip_code else drawn
