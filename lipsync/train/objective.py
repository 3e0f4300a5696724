"""The U-Net's training objective: what each term measures and how much it weighs.

    total = reconstruction + w_sync x sync + w_adv x adversarial

    reconstruction = L1 over the crop
                   + 0.01 x VGG19 perceptual (when its weights are at hand)
    sync           = binary cross-entropy of the frozen SyncNet saying "in sync" for the
                     drawn mouth and its audio window

    adversarial    = binary cross-entropy of the mouth discriminator (models/discriminator.py,
                     trained beside the U-Net by lipsync/train/adversary.py) saying "real"
                     for the drawn mouth band (--gan_ratio > 0)

w_sync and w_adv are 0 for the first --sync_warmup_epochs epochs (SyncNet's verdict on a
picture that is not yet a face is noise, and so is a discriminator's). Then, with --sync_balance fixed, it is --sync_weight
(SyncTalk_2D's 10). With --sync_balance adaptive it is chosen every batch so that the
sync term's gradient on the drawn picture is --sync_ratio times the reconstruction's,
never above --sync_weight: the sync term steers the mouth without outshouting the
picture (with a fixed 10 its gradient was ~2000x L1's, and the mouth smudged;
benchmarks/RESULTS.md, "The training objective", which also measured a lip-weighted L1
and a SyncNet face-feature loss: neither helped, so neither is here). w_adv is balanced
the same way, every batch: its gradient on the picture is --gan_ratio times the
reconstruction's, at most ADVERSARIAL_WEIGHT_CAP.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

L1_WEIGHT = 1.0
PERCEPTUAL_WEIGHT = 0.01                 # VGG19 term (SyncTalk_2D's recipe)
SYNC_BALANCES = ("adaptive", "fixed")
GRADIENT_EPS = 1e-12                     # a zero gradient (SyncNet saturated) gives the cap, not inf
ADVERSARIAL_WEIGHT_CAP = 1.0             # w_adv never outweighs L1 itself, whatever the gradients say


@dataclass(frozen=True)
class ObjectiveSettings:
    """The objective's options: TrainConfig's fields of the same names (their defaults live there)."""
    sync_balance: str
    sync_ratio: float
    sync_weight: float
    sync_warmup_epochs: int
    gan_ratio: float

    @classmethod
    def from_config(cls, config) -> "ObjectiveSettings":
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


class UNetObjective:
    """``objective(prediction, truth, audio)`` -> the loss terms (and "total") of one batch."""

    def __init__(self, settings: ObjectiveSettings, perceptual: Optional[nn.Module] = None,
                 syncnet: Optional[nn.Module] = None, discriminator: Optional[nn.Module] = None):
        self.settings, self.perceptual, self.syncnet = settings, perceptual, syncnet
        self.discriminator = discriminator
        self.epoch = 0

    def to(self, device):
        for module in (self.perceptual, self.syncnet, self.discriminator):
            if module is not None:
                module.to(device)
        return self

    def set_epoch(self, epoch: int) -> None:
        """0-based epoch about to be trained (the warm-up counts these)."""
        self.epoch = epoch

    @property
    def warmed_up(self) -> bool:
        return self.epoch >= self.settings.sync_warmup_epochs

    @property
    def sync_active(self) -> bool:
        return self.syncnet is not None and self.warmed_up

    @property
    def adversarial_active(self) -> bool:
        return self.discriminator is not None and self.settings.gan_ratio > 0 and self.warmed_up

    def sync_weight(self, reconstruction: "PictureGradient", sync: torch.Tensor, prediction: torch.Tensor) -> float:
        """w_sync for this batch (module docstring); the gradients are taken on the picture only."""
        settings = self.settings
        if settings.sync_balance == "fixed" or not prediction.requires_grad:
            return settings.sync_weight
        return balanced_weight(reconstruction, sync, prediction, settings.sync_ratio, settings.sync_weight)

    def adversarial_weight(self, reconstruction: "PictureGradient", adversarial: torch.Tensor,
                           prediction: torch.Tensor) -> float:
        if not prediction.requires_grad:
            return 0.0
        return balanced_weight(reconstruction, adversarial, prediction, self.settings.gan_ratio,
                               ADVERSARIAL_WEIGHT_CAP)

    def __call__(self, prediction: torch.Tensor, truth: torch.Tensor, audio: torch.Tensor) -> Dict[str, torch.Tensor]:
        prediction, truth = prediction.float(), truth.float()
        terms = {"l1": F.l1_loss(prediction, truth)}
        reconstruction = L1_WEIGHT * terms["l1"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(prediction, truth)
            reconstruction = reconstruction + PERCEPTUAL_WEIGHT * terms["perceptual"]
        total = reconstruction
        reconstruction_gradient = PictureGradient(reconstruction, prediction)
        if self.sync_active:
            logits = self.syncnet(prediction, audio).float()
            terms["sync"] = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            weight = self.sync_weight(reconstruction_gradient, terms["sync"], prediction)
            terms["sync_weight"] = torch.tensor(weight)
            total = total + weight * terms["sync"]
        if self.adversarial_active:
            with torch.autocast(prediction.device.type, enabled=False):       # the discriminator is float32
                logits = self.discriminator(prediction)
            terms["adversarial"] = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            weight = self.adversarial_weight(reconstruction_gradient, terms["adversarial"], prediction)
            terms["adversarial_weight"] = torch.tensor(weight)
            total = total + weight * terms["adversarial"]
        terms["total"] = total
        return terms


def picture_gradient_norm(term: torch.Tensor, prediction: torch.Tensor) -> float:
    gradient, = torch.autograd.grad(term, prediction, retain_graph=True)
    return float(gradient.norm())


class PictureGradient:
    """The norm of a term's gradient on the drawn picture, taken once, when first asked for."""

    def __init__(self, term: torch.Tensor, prediction: torch.Tensor):
        self.term, self.prediction, self._norm = term, prediction, None

    @property
    def norm(self) -> float:
        if self._norm is None:
            self._norm = picture_gradient_norm(self.term, self.prediction)
        return self._norm


def balanced_weight(reconstruction: PictureGradient, term: torch.Tensor, prediction: torch.Tensor,
                    ratio: float, cap: float) -> float:
    """The weight that makes ``term``'s gradient on ``prediction`` ``ratio`` times the reconstruction's (<= cap)."""
    weight = ratio * reconstruction.norm / (picture_gradient_norm(term, prediction) + GRADIENT_EPS)
    return 0.0 if math.isnan(weight) else min(weight, cap)      # NaN (an fp16 overflow): skip this batch
