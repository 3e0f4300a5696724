"""The mouth discriminator's own training, beside the U-Net's (--gan_ratio > 0).

After every U-Net micro-batch the discriminator takes one Adam step on the
batch's true crops ("real") and the U-Net's drawings of them ("drawn",
detached): binary cross-entropy per patch. It trains from the first epoch, so
that when the U-Net's adversarial term joins after the warm-up it already
tells a person's mouth from a blur. Outside that step its weights are frozen:
the U-Net's backward pass flows through it to the picture without touching
it. Always float32 (it is small; spectral norm's power iteration is not
something to run in float16). Under torchrun it is wrapped in
DistributedDataParallel (one forward over real and drawn together, so one
gradient all-reduce per step), which also gives every rank rank 0's start.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from models.discriminator import MouthDiscriminator

ADAM_BETAS = (0.5, 0.999)           # the usual GAN momentum: a discriminator chasing a moving target


class Adversary:
    """The discriminator, its optimizer and its training step; ``state_dict`` for latest.pth."""

    def __init__(self, model_size: str, lr: float):
        self.discriminator = MouthDiscriminator(model_size)
        self.lr = lr
        self.optimizer = None
        self.train_module: nn.Module = self.discriminator

    def to(self, device, dist=None) -> "Adversary":
        self.discriminator.to(device)
        if dist is not None and dist.enabled:
            self.train_module = nn.parallel.DistributedDataParallel(
                self.discriminator, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=ADAM_BETAS)
        self.discriminator.requires_grad_(False)
        return self

    def train_step(self, real: torch.Tensor, drawn: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One step on a batch of true crops and the U-Net's (detached) drawings of them."""
        self.discriminator.requires_grad_(True)
        try:
            with torch.autocast(real.device.type, enabled=False):
                logits = self.train_module(torch.cat([real.float(), drawn.detach().float()]))
            count = len(real)
            targets = torch.cat([torch.ones_like(logits[:count]), torch.zeros_like(logits[count:])])
            loss = F.binary_cross_entropy_with_logits(logits, targets)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)      # frozen between steps: no stale gradients either
        finally:
            self.discriminator.requires_grad_(False)
        correct = torch.cat([logits[:count] > 0, logits[count:] < 0]).float().mean()
        return {"discriminator": loss.detach(), "discriminator_accuracy": correct.detach()}

    def state_dict(self) -> Dict:
        return {"model": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        self.discriminator.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
