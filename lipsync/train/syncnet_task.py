"""What one SyncNet training step computes: in-sync vs off-sync pairs.

Each face is scored with its own audio window (label 1) and with the window
of a frame at least 5 frames away (label 0), binary cross-entropy on both.
Held-out scores: the loss (chooses best.pth, drives --patience), the accuracy
of each judgement on its own, and how often the in-sync pair scores above the
off-sync one. The Trainer (trainer.py) runs it.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from data_utils.dataset import PersonData, SyncPairDataset
from data_utils.model_input import ColourJitter, inner_rgb_batch
from lipsync.core import checkpoints as ckpt
from lipsync.train.options import TrainConfig
from models.syncnet import SYNC_WIDTHS


class SyncNetTask:
    """SyncNet: each face with its own audio (label 1) and an off-sync window (label 0)."""
    kind = ckpt.SYNCNET_KIND
    score_name = "val_loss"

    def __init__(self, model: nn.Module, person: PersonData, config: TrainConfig):
        self.model, self.person, self.config = model, person, config
        self.augment = ColourJitter() if config.augment else None
        train_frames, val_frames = person.split(config.val_fraction)
        self.train_set = SyncPairDataset(person, train_frames, config.seed)
        self.val_set = SyncPairDataset(person, val_frames, config.seed, "held-out") if len(val_frames) else None

    def model_config(self) -> Dict:
        return ckpt.model_config(self.kind, self.config.asr, self.model.model_size,
                                 SYNC_WIDTHS[self.model.model_size], self.model.audio_shape,
                                 self.person.describe_features())

    def to(self, device):
        pass

    def set_epoch(self, epoch: int) -> None:
        self.train_set.set_epoch(epoch)

    def _logits(self, model, batch, device, train: bool):
        images = inner_rgb_batch(batch["target"].to(device, non_blocking=True))
        if train and self.augment is not None:
            (images,) = self.augment(images)
        audio = batch["audio"].to(device, non_blocking=True)
        offsync = batch["offsync_audio"].to(device, non_blocking=True)
        # One pass over faces: positives and negatives share the face embedding.
        both = model(torch.cat([images, images]), torch.cat([audio, offsync])).float()
        return both[:len(images)], both[len(images):]

    @staticmethod
    def _loss(positive, negative):
        return 0.5 * (F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive))
                      + F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative)))

    def losses(self, model, batch, device) -> Dict[str, torch.Tensor]:
        positive, negative = self._logits(model, batch, device, train=True)
        return {"total": self._loss(positive, negative)}

    @torch.no_grad()
    def validate(self, model, loader, device, autocast) -> Dict[str, float]:
        loss = correct = ranked = count = 0.0
        for batch in loader:
            with autocast():
                positive, negative = self._logits(model, batch, device, train=False)
            loss += float(self._loss(positive, negative)) * len(positive)
            correct += float((positive > 0).sum() + (negative < 0).sum())
            ranked += float((positive > negative).sum())
            count += len(positive)
        return {"val_loss": loss / count,
                "val_accuracy": correct / (2 * count),       # each pair judged on its own
                "val_pair_accuracy": ranked / count}         # in-sync scored above off-sync

    def samples(self, model, device, autocast):
        return None
