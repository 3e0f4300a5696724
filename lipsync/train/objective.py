"""The U-Net's training objective: what each term measures and how much it weighs.

    total = reconstruction + w_sync x sync + w_code x lip code

    reconstruction = L1 over the crop, the lips' box (data_utils.crop.LIP_*) counted
                     --lip_weight times (default 4; the weights scaled to mean 1)
                   + 0.01 x VGG19 perceptual (when its weights are at hand)
    sync           = binary cross-entropy of the frozen SyncNet saying "in sync" for the
                     drawn mouth and its audio window
    lip code       = mean squared error of the lip code the audio predicts (with --lip_code_dims;
                     data_utils/lip_codes.py), w_code = --lip_code_weight

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


@dataclass(frozen=True)
class ObjectiveSettings:
    """The objective's options: TrainConfig's fields of the same names (their defaults live there)."""
    sync_balance: str
    sync_ratio: float
    sync_weight: float
    sync_warmup_epochs: int
    lip_weight: float
    lip_code_weight: float

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


class UNetObjective:
    """``objective(prediction, truth, audio)`` -> the loss terms (and "total") of one batch."""

    def __init__(self, settings: ObjectiveSettings, perceptual: Optional[nn.Module] = None,
                 syncnet: Optional[nn.Module] = None):
        self.settings, self.perceptual, self.syncnet = settings, perceptual, syncnet
        self.epoch = 0
        self._weights: Optional[torch.Tensor] = None

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

    def reconstruction_l1(self, prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        if self.settings.lip_weight == 1:
            return F.l1_loss(prediction, truth)         # bit for bit the objective before the lips' weight
        if self._weights is None or self._weights.device != prediction.device:
            self._weights = pixel_weights(self.settings.lip_weight, prediction.device)
        return ((prediction - truth).abs() * self._weights).mean()

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
                 predicted_code: Optional[torch.Tensor] = None,
                 true_code: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        prediction, truth = prediction.float(), truth.float()
        terms = {"l1": self.reconstruction_l1(prediction, truth)}
        reconstruction = L1_WEIGHT * terms["l1"]
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
        if predicted_code is not None:
            terms["lip_code"] = F.mse_loss(predicted_code.float(), true_code.float())
            total = total + self.settings.lip_code_weight * terms["lip_code"]
        terms["total"] = total
        return terms
