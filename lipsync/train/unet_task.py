"""What one U-Net training step computes: the objective, held-out scores and sample grids.

The 328 U-Net repaints the lower face of a crop from a reference crop, the
masked target and the audio window. Its loss is objective.UNetObjective
(reconstruction + a balanced SyncNet term), and its held-out scores are L1
and PSNR over the repainted region (val_l1
chooses best.pth and drives --patience), plus the frozen SyncNet's accuracy
when --use_syncnet. The Trainer (trainer.py) runs it.
"""
import logging
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from data_utils import crop
from data_utils.dataset import LipSyncDataset, PersonData, load_lip_codes, load_lip_twins
from data_utils.lip_twins import NO_TWIN
from data_utils.model_input import ColourJitter, model_input_batch
from lipsync.core import checkpoints as ckpt
from lipsync.train.objective import ObjectiveSettings, UNetObjective
from lipsync.train.options import TrainConfig
from lipsync.train.pictures import sample_grid

log = logging.getLogger("training")

SAMPLE_GRID_ROWS = 4             # held-out frames shown per samples/epoch_N.png
EPS = 1e-10                      # keeps PSNR finite for a perfect prediction


def region_metrics(prediction: torch.Tensor, truth: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-image L1 and PSNR (dB) over the repainted region, the only pixels pasted back."""
    region = torch.from_numpy(crop.inner_mask()).to(prediction.device).bool()
    difference = (prediction.float() - truth.float())[:, :, region]
    l1 = difference.abs().mean(dim=(1, 2))
    mse = difference.pow(2).mean(dim=(1, 2))
    psnr = 10 * torch.log10(1.0 / (mse + EPS))
    return {"l1": l1, "psnr": psnr}


class UNetTask:
    """The 328 U-Net: reference + masked target + audio -> target crop."""
    kind = ckpt.UNET_KIND
    score_name = "val_l1"                 # lower is better; best.pth and --patience follow it

    def __init__(self, model: nn.Module, person: PersonData, config: TrainConfig,
                 perceptual: Optional[nn.Module] = None, syncnet: Optional[nn.Module] = None):
        self.model, self.person, self.config = model, person, config
        self.perceptual, self.syncnet = perceptual, syncnet
        self.objective = UNetObjective(ObjectiveSettings.from_config(config), perceptual, syncnet)
        self.augment = ColourJitter() if config.augment else None
        train_frames, val_frames = person.split(config.val_fraction)
        count = config.reference_frames
        twins = load_lip_twins(person, train_frames) if config.twin_audio_share > 0 else None
        if twins is not None:
            found = (twins != NO_TWIN).sum(axis=1)
            log.info("lip twins: %.0f %% of %d training frames have one (median %d); each sample hears one "
                     "with chance %g", 100 * np.mean(found > 0), len(found), int(np.median(found)),
                     config.twin_audio_share)
        codes = load_lip_codes(person, train_frames, config.lip_code_dims) if config.lip_code_dims else None
        self.train_set = LipSyncDataset(person, train_frames, train_frames, config.seed, count, twins,
                                        config.twin_audio_share, codes)
        self.val_set = (LipSyncDataset(person, val_frames, val_frames, config.seed, count, lip_codes=codes)
                        if len(val_frames) else None)

    def model_config(self) -> Dict:
        return ckpt.unet_config(self.model, self.person.describe_features())

    def to(self, device):
        self.objective.to(device)

    def set_epoch(self, epoch: int) -> None:
        self.train_set.set_epoch(epoch)
        self.objective.set_epoch(epoch)

    def inputs(self, batch, device, train: bool):
        target = batch["target"].to(device, non_blocking=True)
        reference = batch["reference"].to(device, non_blocking=True)
        audio = batch["audio"].to(device, non_blocking=True)
        image6, truth = model_input_batch(target, reference, self.augment if train else None)
        if device.type == "cuda":
            image6 = image6.contiguous(memory_format=torch.channels_last)
        return image6, truth, audio

    def losses(self, model, batch, device) -> Dict[str, torch.Tensor]:
        image6, truth, audio = self.inputs(batch, device, train=True)
        if "lip_code" not in batch:
            return self.objective(model(image6, audio), truth, audio)
        # The decoder is told the target's true lip code; the audio's prediction of it is scored.
        true_code = batch["lip_code"].to(device, non_blocking=True)
        drawn, predicted_code = model(image6, audio, lip_code=true_code, return_lip_code=True)
        return self.objective(drawn, truth, audio, predicted_code, true_code)

    @torch.no_grad()
    def validate(self, model, loader, device, autocast) -> Dict[str, float]:
        sums = {"val_l1": 0.0, "val_psnr": 0.0}
        count = 0
        in_sync = 0
        for batch in loader:
            image6, truth, audio = self.inputs(batch, device, train=False)
            with autocast():
                # As inference draws: the decoder is told the lip code the audio predicts.
                prediction, predicted_code = model(image6, audio, return_lip_code=True)
            if predicted_code is not None:
                code_error = (predicted_code.float() - batch["lip_code"].to(device)).pow(2).mean(dim=1)
                sums["val_lip_code_mse"] = sums.get("val_lip_code_mse", 0.0) + float(code_error.sum())
            metrics = region_metrics(prediction, truth)
            sums["val_l1"] += float(metrics["l1"].sum())
            sums["val_psnr"] += float(metrics["psnr"].sum())
            if self.syncnet is not None:
                with autocast():
                    in_sync += int((self.syncnet(prediction.float(), audio) > 0).sum())
            count += len(truth)
        result = {key: value / count for key, value in sums.items()}
        if self.syncnet is not None:
            result["val_sync_accuracy"] = in_sync / count
        return result

    @torch.no_grad()
    def samples(self, model, device, autocast) -> Optional[np.ndarray]:
        if self.val_set is None:
            return None
        picks = np.linspace(0, len(self.val_set) - 1, min(SAMPLE_GRID_ROWS, len(self.val_set))).round()
        batch = torch.utils.data.default_collate([self.val_set[int(item)] for item in picks])
        image6, truth, audio = self.inputs(batch, device, train=False)
        with autocast():
            prediction = model(image6, audio)
        return sample_grid(model.seen_input(image6), prediction, truth)
