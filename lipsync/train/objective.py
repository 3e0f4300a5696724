"""The U-Net's training objective: what each term measures and how much it weighs.

    total = reconstruction + w_sync x sync

    reconstruction = L1 over the crop, the lips' box (data_utils.crop.LIP_*) counted
                     --lip_weight times (default 4; the weights scaled to mean 1); with
                     --motion_weight S, S of the lips' weight follows where the truth's mouth
                     differs from the reference's (off by default)
                   + --edge_weight x L1 of the horizontal and vertical pixel differences,
                     weighted alike (off by default)
                   + 0.01 x VGG19 perceptual (when its weights are at hand)
    sync           = binary cross-entropy of the frozen SyncNet saying "in sync" for the
                     drawn mouth and its audio window

The lips are a fifth of the crop but nearly all of what the audio decides; counted 4 times,
they pull the U-Net onto the audio sooner: after the same 30 CPU minutes from the same start
the mouth opened 3x and 2x as wide as with every pixel alike, followed the truth better, and
the mouth's picture was 0.3-0.6 dB sharper (benchmarks/RESULTS.md, "The lips' weight").

w_sync is 0 for the first --sync_warmup_epochs epochs (SyncNet's verdict on a picture
that is not yet a face is noise). Then, with --sync_balance fixed, it is --sync_weight
(SyncTalk_2D's 10). With --sync_balance adaptive it is chosen every batch so that the
sync term's gradient on the drawn picture is --sync_ratio times the reconstruction's,
never above --sync_weight: the sync term steers the mouth without outshouting the
picture (with a fixed 10 its gradient was ~2000x L1's, and the mouth smudged;
benchmarks/RESULTS.md, "The training objective", which also measured a SyncNet
face-feature loss and a patch discriminator on the mouth band balanced the same way:
neither helped, so neither is here).

--motion_weight aims at the mouth drawn too closed: inside the lips' box, a pixel's weight is
(1 - S) + S x how much the truth differs there from the reference crop the U-Net was shown
(smoothed, scaled to mean 1 over the batch's boxes, capped). Those pixels are what the audio
decides; where the reference already shows the truth's mouth, copying it is right and cheap,
and weighing those pixels alike with the rest rewards a mouth that stays near the
reference's, that is near the average mouth.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from data_utils import crop

L1_WEIGHT = 1.0
PERCEPTUAL_WEIGHT = 0.01                 # VGG19 term (SyncTalk_2D's recipe)
SYNC_BALANCES = ("adaptive", "fixed")
GRADIENT_EPS = 1e-12                     # a zero sync gradient (SyncNet saturated) gives the cap, not inf
# --motion_weight: the truth-reference difference is averaged over this square (px) so that a
# one-pixel edge of the head's own motion does not outweigh the mouth, and capped at this many
# times its mean, so that a few pixels cannot take the whole weight.
MOTION_SMOOTHING_PX = 9
MOTION_CAP = 5.0
MOTION_EPS = 1e-6


@dataclass(frozen=True)
class ObjectiveSettings:
    """The objective's options: TrainConfig's fields of the same names (their defaults live there)."""
    sync_balance: str
    sync_ratio: float
    sync_weight: float
    sync_warmup_epochs: int
    lip_weight: float
    motion_weight: float = 0.0
    edge_weight: float = 0.0

    @classmethod
    def from_config(cls, config) -> "ObjectiveSettings":
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


def pixel_weights(lip_weight: float, device) -> torch.Tensor:
    """(1, 1, 320, 320): 1 outside the lips' box, ``lip_weight`` inside, scaled to mean 1.

    Mean 1 keeps the reconstruction term's size, and so its balance with the sync
    term, whatever the lip weight.
    """
    weights = 1.0 + (lip_weight - 1.0) * torch.from_numpy(crop.lip_box_mask())
    return (weights / weights.mean()).to(device)[None, None]


def motion_emphasis(truth: torch.Tensor, reference: torch.Tensor, box: torch.Tensor, strength: float) -> torch.Tensor:
    """(B, 1, H, W): ``(1 - strength) + strength x motion`` inside ``box`` (1, 1, H, W), 1 outside.

    motion is the truth's mean absolute difference from the reference over the colour channels,
    smoothed over MOTION_SMOOTHING_PX, scaled to mean 1 over every box of the batch (a frame
    whose mouth differs more from its reference weighs more than one whose mouth is the
    reference's) and capped at MOTION_CAP. No gradient flows through it.
    """
    with torch.no_grad():
        difference = (truth.float() - reference.float()).abs().mean(dim=1, keepdim=True)
        difference = F.avg_pool2d(difference, MOTION_SMOOTHING_PX, stride=1, padding=MOTION_SMOOTHING_PX // 2,
                                  count_include_pad=False)
        in_box = difference * box
        mean = in_box.sum() / (box.sum() * len(truth) + MOTION_EPS)
        motion = (in_box / (mean + MOTION_EPS)).clamp(max=MOTION_CAP)
        return 1.0 - box * strength + box * strength * motion


def difference_l1(prediction: torch.Tensor, truth: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted L1 between neighbouring pixels' differences (across and down) of two images.

    L1 on the pixels lets a blurred lip edge cost little where it is thin; on the differences
    the edge itself is what must match, so a mouth drawn soft costs what it hides.
    """
    across = (prediction[..., :, 1:] - prediction[..., :, :-1]) - (truth[..., :, 1:] - truth[..., :, :-1])
    down = (prediction[..., 1:, :] - prediction[..., :-1, :]) - (truth[..., 1:, :] - truth[..., :-1, :])
    return (across.abs() * weights[..., :, 1:]).mean() + (down.abs() * weights[..., 1:, :]).mean()


class UNetObjective:
    """``objective(prediction, truth, audio)`` -> the loss terms (and "total") of one batch."""

    def __init__(self, settings: ObjectiveSettings, perceptual: Optional[nn.Module] = None,
                 syncnet: Optional[nn.Module] = None):
        self.settings, self.perceptual, self.syncnet = settings, perceptual, syncnet
        self.epoch = 0
        self._weights: Optional[torch.Tensor] = None
        self._box: Optional[torch.Tensor] = None

    def to(self, device):
        for module in (self.perceptual, self.syncnet):
            if module is not None:
                module.to(device)
        return self

    def set_epoch(self, epoch: int) -> None:
        """0-based epoch about to be trained (the warm-up counts these)."""
        self.epoch = epoch

    @property
    def sync_active(self) -> bool:
        return self.syncnet is not None and self.epoch >= self.settings.sync_warmup_epochs

    def pixel_weights(self, prediction: torch.Tensor, truth: torch.Tensor,
                      reference: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The reconstruction's weights, (1 or B, 1, H, W) at mean 1; None for every pixel alike.

        ``reference`` (the first reference crop the U-Net saw, B x 3 x H x W) is needed with
        --motion_weight and ignored without it.
        """
        strength = self.settings.motion_weight
        if self.settings.lip_weight == 1 and strength == 0:
            return None
        if self._weights is None or self._weights.device != prediction.device:
            self._weights = pixel_weights(self.settings.lip_weight, prediction.device)
            self._box = torch.from_numpy(crop.lip_box_mask()).to(prediction.device)[None, None]
        weights = self._weights
        if strength > 0:
            if reference is None:
                raise ValueError("--motion_weight weighs the lips by their difference from the reference: "
                                 "pass the reference crops")
            weights = weights * motion_emphasis(truth, reference, self._box, strength)
            weights = weights / weights.mean()          # mean 1, as without it: the sync balance sees the same scale
        return weights

    def sync_weight(self, reconstruction: torch.Tensor, sync: torch.Tensor, prediction: torch.Tensor) -> float:
        """w_sync for this batch (module docstring); the gradients are taken on the picture only."""
        settings = self.settings
        if settings.sync_balance == "fixed" or not prediction.requires_grad:
            return settings.sync_weight
        picture_reconstruction, = torch.autograd.grad(reconstruction, prediction, retain_graph=True)
        picture_sync, = torch.autograd.grad(sync, prediction, retain_graph=True)
        ratio = float(picture_reconstruction.norm()) / (float(picture_sync.norm()) + GRADIENT_EPS)
        weight = settings.sync_ratio * ratio
        return 0.0 if math.isnan(weight) else min(weight, settings.sync_weight)   # NaN (an fp16 overflow): skip

    def __call__(self, prediction: torch.Tensor, truth: torch.Tensor, audio: torch.Tensor,
                 reference: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        prediction, truth = prediction.float(), truth.float()
        weights = self.pixel_weights(prediction, truth, reference)
        if weights is None:
            terms = {"l1": F.l1_loss(prediction, truth)}     # bit for bit the objective before the lips' weight
        else:
            terms = {"l1": ((prediction - truth).abs() * weights).mean()}
        reconstruction = L1_WEIGHT * terms["l1"]
        if self.settings.edge_weight > 0:
            alike = torch.ones_like(prediction[:1, :1]) if weights is None else weights
            terms["edge"] = difference_l1(prediction, truth, alike)
            reconstruction = reconstruction + self.settings.edge_weight * terms["edge"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(prediction, truth)
            reconstruction = reconstruction + PERCEPTUAL_WEIGHT * terms["perceptual"]
        total = reconstruction
        if self.sync_active:
            # In float32 even under --amp: the balance below takes the sync term's gradient on the picture
            # from the unscaled loss, and float16 gradients that small underflow to zero, which would
            # read as a weak sync gradient and push its weight to the cap (the smudging it exists to stop).
            with torch.autocast(prediction.device.type, enabled=False):
                logits = self.syncnet(prediction, audio.float()).float()
            terms["sync"] = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            weight = self.sync_weight(reconstruction, terms["sync"], prediction)
            terms["sync_weight"] = torch.tensor(weight)
            total = total + weight * terms["sync"]
        terms["total"] = total
        return terms
