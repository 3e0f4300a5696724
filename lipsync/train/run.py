"""One whole training run per script: train_328.py -> train_unet, train_syncnet.py -> train_syncnet.

Each joins the torchrun job (if any), seeds every rank differently, checks the
options and the dataset (rank 0 builds the crop cache, the others wait),
builds the network and its task, starts fresh / resumes / overwrites as asked,
trains, and leaves the process group.
"""
import contextlib
from pathlib import Path
from typing import Dict, List

import torch

from data_utils.dataset import PersonData, open_person
from lipsync.core import checkpoints as ckpt
from lipsync.core.commands import syncnet_command
from lipsync.core.cpu_memory import keep_freed_memory
from lipsync.core.errors import UserError
from lipsync.core.locks import folder_lock
from lipsync.train.distributed import Distributed, seed_everything, setup_distributed
from lipsync.train.options import TrainConfig
from lipsync.train.syncnet_task import SyncNetTask
from lipsync.train.trainer import Trainer, log    # what a run says goes to the Trainer's log
from lipsync.train.unet_task import UNetTask
from models.perceptual import build_perceptual_loss
from models.syncnet import SyncNet
from models.unet_328 import LipSyncUNet


def prepare_run(config: TrainConfig, dist: Distributed) -> PersonData:
    """Checks common to both trainings; the crop cache is built by rank 0 only."""
    config.check()
    if dist.is_main:
        latest = Path(config.save_dir) / ckpt.LATEST
        if latest.is_file() and not (config.resume or config.overwrite or config.resume_from is not None):
            raise UserError(f"{config.save_dir} already holds a training run ({latest.name}) — "
                            "add --resume to continue it, or --overwrite to start again from scratch")
        person = open_person(config.dataset_dir, config.asr, show_progress=config.show_progress)
    dist.barrier()
    if not dist.is_main:
        person = open_person(config.dataset_dir, config.asr, build_cache=False, show_progress=False)
    return person


def _start(trainer: Trainer, config: TrainConfig) -> None:
    if config.resume_from is not None:
        trainer.restore_from_epoch(config.resume_from)
    elif config.resume:
        if not trainer.restore() and trainer.dist.is_main:
            log.warning("--resume: no %s in %s yet, starting from epoch 0", ckpt.LATEST, config.save_dir)
    elif config.overwrite and trainer.dist.is_main:
        for path in ckpt.numbered_epochs(config.save_dir).values():
            path.unlink()
        for name in (ckpt.LATEST, ckpt.BEST, "training.log", "summary.json"):
            (Path(config.save_dir) / name).unlink(missing_ok=True)


def keep_cpu_memory(dist: Distributed) -> None:
    """On the CPU, freed activations stay in the process for the next step (lipsync.core.cpu_memory)."""
    if dist.device.type == "cpu":
        keep_freed_memory()


def run_lock(config: TrainConfig, dist: Distributed):
    """Rank 0 holds the checkpoint folder for the whole run: a second training into it stops at once."""
    return folder_lock(config.save_dir, "training", "--save_dir") if dist.is_main else contextlib.nullcontext()


def train_unet(config: TrainConfig, callbacks=()) -> List[Dict]:
    """The whole U-Net training of train_328.py."""
    dist = setup_distributed(config.device)
    keep_cpu_memory(dist)
    with run_lock(config, dist):
        return _train_unet(config, dist, callbacks)


def _train_unet(config: TrainConfig, dist: Distributed, callbacks) -> List[Dict]:
    seed_everything(config.seed + dist.rank)        # each rank its own augmentation draws
    person = prepare_run(config, dist)
    # The U-Net first: its initial weights follow from --seed alone, with or without the sync loss.
    model = LipSyncUNet(config.asr, person.audio_shape, config.unet_widths(), **config.unet_options())
    syncnet = None
    if config.use_syncnet:
        path = config.syncnet_checkpoint or ckpt.syncnet_dir(config.save_dir) / ckpt.BEST
        if not Path(path).is_file():
            raise UserError(f"--use_syncnet: no SyncNet checkpoint at {path} — train it first: "
                            f"{syncnet_command('--dataset_dir', config.dataset_dir, '--asr', config.asr)}"
                            f" (or pass --syncnet_checkpoint)")
        syncnet, _ = ckpt.load_syncnet(path, dist.device, config.asr, person.audio_shape)
    perceptual = build_perceptual_loss(config.perceptual, config.vgg_weights)
    task = UNetTask(model, person, config, perceptual, syncnet)
    trainer = Trainer(task, config, dist, callbacks)
    _start(trainer, config)
    return _fit_and_leave(trainer)


def train_syncnet(config: TrainConfig, callbacks=()) -> List[Dict]:
    """The whole SyncNet training of train_syncnet.py."""
    dist = setup_distributed(config.device)
    keep_cpu_memory(dist)
    with run_lock(config, dist):
        return _train_syncnet(config, dist, callbacks)


def _train_syncnet(config: TrainConfig, dist: Distributed, callbacks) -> List[Dict]:
    seed_everything(config.seed + dist.rank)        # each rank its own augmentation draws
    person = prepare_run(config, dist)
    model = SyncNet(config.asr, person.audio_shape, config.model_size)
    trainer = Trainer(SyncNetTask(model, person, config), config, dist, callbacks)
    _start(trainer, config)
    return _fit_and_leave(trainer)


def _fit_and_leave(trainer: Trainer) -> List[Dict]:
    """Train, then leave the torchrun process group (torch warns at exit otherwise), all ranks together:
    a rank that tore its gloo group down while another still had work in flight aborted at exit once
    (SIGABRT, "terminate called without an active exception", in the two-process CPU test)."""
    history = trainer.fit()
    if trainer.dist.enabled and torch.distributed.is_initialized():
        trainer.dist.barrier()
        torch.distributed.destroy_process_group()
    return history
