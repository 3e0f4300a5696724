"""The U-Net's training objective: what each term measures and how much it weighs.

    total = reconstruction + w_sync x sync

    reconstruction = L1 over the crop, the lips' box (data_utils.crop.LIP_*) counted
                     --lip_weight times
                   + 0.01 x VGG19 perceptual (when its weights are at hand)
                   + --face_feature_weight x L1 between the frozen SyncNet's face-encoder
                     activations of the prediction and of the truth (a perceptual loss
                     on lip shape that needs no downloaded weights)
    sync           = binary cross-entropy of the frozen SyncNet saying "in sync" for the
                     drawn mouth and its audio window

w_sync is 0 for the first --sync_warmup_epochs epochs (SyncNet's verdict on a picture
that is not yet a face is noise). Then, with --sync_balance fixed, it is --sync_weight
(SyncTalk_2D's 10). With --sync_balance adaptive it is chosen every batch so that the
sync term's gradient on the drawn picture is --sync_ratio times the reconstruction's,
never above --sync_weight: the sync term steers the mouth without outshouting the
picture (with a fixed 10 its gradient was ~2000x L1's, and the mouth smudged;
benchmarks/RESULTS.md, "The training objective").
"""
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
    face_feature_weight: float

    @classmethod
    def from_config(cls, config) -> "ObjectiveSettings":
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


def pixel_weights(lip_weight: float, device) -> torch.Tensor:
    """(1, 1, 320, 320): 1 outside the lips' box, ``lip_weight`` inside, scaled to mean 1.

    Mean 1 keeps the reconstruction term's size (and so the balance with the
    other terms) whatever the lip weight.
    """
    weights = 1.0 + (lip_weight - 1.0) * torch.from_numpy(crop.lip_box_mask())
    return (weights / weights.mean()).to(device)[None, None]


class UNetObjective:
    """``objective(prediction, truth, audio)`` -> the loss terms (and "total") of one batch."""

    def __init__(self, settings: ObjectiveSettings, perceptual: Optional[nn.Module] = None,
                 syncnet: Optional[nn.Module] = None):
        self.settings, self.perceptual, self.syncnet = settings, perceptual, syncnet
        self.epoch = 0
        self._weights = None

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

    def _pixel_weights(self, device) -> torch.Tensor:
        if self._weights is None or self._weights.device != device:
            self._weights = pixel_weights(self.settings.lip_weight, device)
        return self._weights

    def face_feature_distance(self, prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Mean over SyncNet's five face-encoder stages of the L1 between prediction's and truth's activations."""
        with torch.no_grad():
            wanted = self.syncnet.face_features(truth)
        drawn = self.syncnet.face_features(prediction)
        return torch.stack([F.l1_loss(mine.float(), theirs.float()) for mine, theirs in zip(drawn, wanted)]).mean()

    def sync_weight(self, reconstruction: torch.Tensor, sync: torch.Tensor, prediction: torch.Tensor) -> float:
        """w_sync for this batch (module docstring); the gradients are taken on the picture only."""
        settings = self.settings
        if settings.sync_balance == "fixed" or not prediction.requires_grad:
            return settings.sync_weight
        picture_reconstruction, = torch.autograd.grad(reconstruction, prediction, retain_graph=True)
        picture_sync, = torch.autograd.grad(sync, prediction, retain_graph=True)
        ratio = float(picture_reconstruction.norm()) / (float(picture_sync.norm()) + GRADIENT_EPS)
        weight = settings.sync_ratio * ratio
        return min(weight, settings.sync_weight) if weight == weight else 0.0   # NaN (an fp16 overflow): skip

    def __call__(self, prediction: torch.Tensor, truth: torch.Tensor, audio: torch.Tensor) -> Dict[str, torch.Tensor]:
        prediction, truth = prediction.float(), truth.float()
        l1 = ((prediction - truth).abs() * self._pixel_weights(prediction.device)).mean()
        terms = {"l1": l1}
        reconstruction = L1_WEIGHT * l1
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(prediction, truth)
            reconstruction = reconstruction + PERCEPTUAL_WEIGHT * terms["perceptual"]
        if self.syncnet is not None and self.settings.face_feature_weight > 0:
            terms["face_features"] = self.face_feature_distance(prediction, truth)
            reconstruction = reconstruction + self.settings.face_feature_weight * terms["face_features"]
        total = reconstruction
        if self.sync_active:
            logits = self.syncnet(prediction, audio).float()
            terms["sync"] = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            weight = self.sync_weight(reconstruction, terms["sync"], prediction)
            terms["sync_weight"] = torch.tensor(weight)
            total = total + weight * terms["sync"]
        terms["total"] = total
        return terms
