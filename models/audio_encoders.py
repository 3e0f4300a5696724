"""Audio-visual encoder (AVE) networks.

``AveAudioEncoder`` turns one (1, 80, 16) mel window (0.2 s of audio around a
video frame) into 512 values. Its conv stack is an ``nn.Sequential`` of
conv+batch-norm blocks laid out exactly like the released SyncTalk AVE audio
encoder, so that checkpoint (the conv stack's state dict: keys such as
``0.conv_block.0.weight``, no ``audio_encoder.`` prefix) loads as it is.
``width`` scales the hidden channels (1.0 = the released layout); the output
stays 512 wide.

``MouthEncoder`` is the small visual side used only while learning a person's
AVE: a stack of grayscale mouth crops around the same moment -> an embedding
that an in-sync mel window should match.
"""
from typing import List, Tuple

from torch import nn
from torch.nn import functional as F

AVE_FEATURES = 512              # values per video frame

# (in, out, kernel, stride, padding, residual) of the released conv stack at width 1.
# Mel axis 80 -> 27 -> 9 -> 3 -> 1, time axis 16 -> 16 -> 6 -> 3 -> 1.
_AVE_LAYOUT: List[Tuple[int, int, int, object, int, bool]] = [
    (1, 32, 3, 1, 1, False),
    (32, 32, 3, 1, 1, True),
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False),
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False),
    (256, 256, 3, 1, 1, True),
    (256, AVE_FEATURES, 3, 1, 0, False),
    (AVE_FEATURES, AVE_FEATURES, 1, 1, 0, False),
]
_FIXED_CHANNELS = {1, AVE_FEATURES}   # input and output sizes do not scale with width


class ConvBlock(nn.Module):
    """Conv -> batch norm (-> + input) -> ReLU; ``conv_block`` keeps the released key names."""

    def __init__(self, cin, cout, kernel_size, stride, padding, residual=False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding),
                                        nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x):
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return F.relu(out)


def _scaled(channels: int, width: float) -> int:
    return channels if channels in _FIXED_CHANNELS else max(1, int(round(channels * width)))


class AveAudioEncoder(nn.Module):
    """(B, 1, 80, 16) normalised mel windows -> (B, 512) features."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = float(width)
        self.conv_stack = nn.Sequential(*[
            ConvBlock(_scaled(cin, width), _scaled(cout, width), kernel, stride, padding, residual)
            for cin, cout, kernel, stride, padding, residual in _AVE_LAYOUT])

    def forward(self, mel_windows):
        return self.conv_stack(mel_windows).flatten(1)

    @staticmethod
    def width_of(conv_stack_state) -> float:
        """The width a conv-stack state dict was saved with (from its first layer's channels)."""
        first = conv_stack_state["0.conv_block.0.weight"]
        return first.shape[0] / _AVE_LAYOUT[0][1]


class MouthEncoder(nn.Module):
    """(B, frames, H, W) grayscale mouth crops in [-1, 1] -> (B, embed_dim).

    Only used while learning the AVE: it gives the contrastive loss something to
    match the audio against; its weights are saved for reference, not used later.
    """

    def __init__(self, frames: int, embed_dim: int, base_channels: int = 16):
        super().__init__()
        channels = [frames, base_channels, base_channels * 2, base_channels * 4, base_channels * 8]
        layers = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1], embed_dim)

    def forward(self, crops):
        pooled = self.features(crops).mean(dim=(2, 3))
        return self.head(pooled)


class SyncScorer(nn.Module):
    """The pair the contrastive stage trains: AVE audio encoder + projection, and mouth encoder.

    ``similarity(a, v)`` is the cosine similarity of the two embeddings: high
    for a mel window and mouth crops of the same moment.
    """

    def __init__(self, audio_width: float, mouth_frames: int, embed_dim: int):
        super().__init__()
        self.audio_encoder = AveAudioEncoder(audio_width)
        self.audio_head = nn.Linear(AVE_FEATURES, embed_dim)
        self.mouth_encoder = MouthEncoder(mouth_frames, embed_dim)

    def embed_audio(self, mel_windows):
        return F.normalize(self.audio_head(self.audio_encoder(mel_windows)), dim=1)

    def embed_mouth(self, crops):
        return F.normalize(self.mouth_encoder(crops), dim=1)
