"""Training loops for the 328 U-Net and SyncNet: one Trainer, two tasks.

The Trainer owns what both share: device and torchrun/DDP setup, the data
loaders (batches of uint8 crops from the memory-mapped cache, turned into model
inputs on the training device), mixed precision, gradient accumulation, LR
schedules, validation on the held-out tail, training.log / TensorBoard / loss
curve, checkpoints every --save_interval epochs, best.pth, latest.pth and exact
resume. A task says what one step computes:

    UNetTask     L1 + 0.01 x VGG19 perceptual + 10 x SyncNet loss; held-out
                 L1 and PSNR of the repainted region; sample grids
    SyncNetTask  in-sync vs off-sync pairs (binary cross-entropy); held-out
                 sync accuracy

Under torchrun every process trains on its DistributedSampler share; rank 0
alone builds the crop cache, validates, logs and writes files.
"""
import dataclasses
import datetime
import io
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from lipsync.core import checkpoints as ckpt
from data_utils import crop
from lipsync.core.atomic import write_bytes_atomic, write_json_atomic
from data_utils.dataset import (ColourJitter, LipSyncDataset, PersonData, SyncPairDataset,
                                inner_rgb_batch, model_input_batch, open_person)
from lipsync.core.errors import UserError

log = logging.getLogger("training")

# Loss weights of the U-Net objective (SyncTalk_2D's recipe).
L1_WEIGHT = 1.0
PERCEPTUAL_WEIGHT = 0.01
SYNC_WEIGHT = 10.0
# --lr_schedule step: halve the LR every 50 epochs (the user guide's StepLR).
STEP_LR_EPOCHS = 50
STEP_LR_GAMMA = 0.5
LR_SCHEDULES = ("none", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")
DISTRIBUTED_TIMEOUT = datetime.timedelta(hours=2)   # longest a rank waits for the others (cache build)
RESUMED_RANK_SEED_STEP = 1000    # seeds of ranks a resumed run had no saved state for, per epoch
SAMPLE_GRID_ROWS = 4
EPS = 1e-10
LOG_FORMAT = "%(asctime)s %(message)s"


# --------------------------------------------------------------------------- configuration

@dataclass
class TrainConfig:
    """Everything a training run depends on; defaults follow the user guide."""
    dataset_dir: Path
    save_dir: Path
    asr: str = "ave"
    model_size: str = "full"
    batch_size: int = 8
    lr: float = 1e-4
    epochs: int = 200
    save_interval: int = 10
    device: str = "auto"
    amp: bool = False
    grad_accum: int = 1
    num_workers: int = 4
    lr_schedule: str = "none"
    augment: bool = False
    val_fraction: float = 0.05
    patience: int = 0                       # 0: never stop early
    see_res: bool = False
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    # U-Net only
    use_syncnet: bool = False
    syncnet_checkpoint: Optional[Path] = None
    sync_weight: float = SYNC_WEIGHT
    perceptual: str = "auto"                # auto | on | off
    vgg_weights: Optional[Path] = None
    show_progress: bool = True

    @classmethod
    def from_args(cls, args) -> "TrainConfig":
        names = {item.name for item in dataclasses.fields(cls)}
        values = {key: value for key, value in vars(args).items() if key in names}
        for key in ("dataset_dir", "save_dir", "syncnet_checkpoint", "vgg_weights"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return cls(**values)

    def as_dict(self) -> Dict:
        return {key: (str(value) if isinstance(value, Path) else value)
                for key, value in dataclasses.asdict(self).items()}

    def check(self) -> None:
        for name in ("batch_size", "epochs", "save_interval", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.sync_weight < 0:
            raise UserError(f"--sync_weight cannot be negative, got {self.sync_weight}")
        if self.num_workers < 0 or self.patience < 0:
            raise UserError("--num_workers and --patience cannot be negative")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"--lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")


# --------------------------------------------------------------------------- processes and devices

@dataclass
class Distributed:
    """This process's place in a torchrun job (world size 1 without torchrun)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def syncs_batch_norm(self) -> bool:
        """Whether BatchNorm statistics are pooled over all GPUs of the job.

        Each GPU sees only its own few samples (batch 8 by default), so unsynced
        BatchNorm would normalise with noisier statistics than one GPU with the
        whole batch and the running averages would differ per rank. torch's
        SyncBatchNorm runs on GPUs only; gloo/CPU jobs keep per-process statistics.
        """
        return self.enabled and self.device.type == "cuda"

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def gather(self, value) -> List:
        """``value`` of every rank, in rank order (on every rank)."""
        if not self.enabled:
            return [value]
        values = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def broadcast(self, value):
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """--device auto|cpu|cuda -> a torch.device; cuda without a GPU is a UserError."""
    if requested not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but PyTorch sees no CUDA GPU "
                        f"(torch {torch.__version__}, CUDA build {torch.version.cuda}) — "
                        "use --device cpu, or check the driver and CUDA_VISIBLE_DEVICES")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def setup_distributed(requested_device: str) -> Distributed:
    """Read torchrun's environment; join the process group when there are several ranks."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # nccl between GPUs, gloo between CPU processes (tests, CPU-only machines). The other
        # ranks wait while rank 0 builds the crop cache on a first run, which can outlast
        # NCCL's 10-minute default.
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=DISTRIBUTED_TIMEOUT)
    return Distributed(rank, world_size, local_rank, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> Dict:
    """This process's random state; on a GPU only its own GPU's, so a run resumes on fewer GPUs."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    saved = state.get("cuda")
    if device.type == "cuda" and isinstance(saved, torch.Tensor):
        torch.cuda.set_rng_state(saved.cpu(), device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


# --------------------------------------------------------------------------- metrics and pictures

def region_metrics(prediction: torch.Tensor, truth: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-image L1 and PSNR (dB) over the repainted region, the only pixels pasted back."""
    region = torch.from_numpy(crop.inner_mask()).to(prediction.device).bool()
    difference = (prediction.float() - truth.float())[:, :, region]
    l1 = difference.abs().mean(dim=(1, 2))
    mse = difference.pow(2).mean(dim=(1, 2))
    psnr = 10 * torch.log10(1.0 / (mse + EPS))
    return {"l1": l1, "psnr": psnr}


def sample_grid(image6: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """BGR uint8 picture, one row per sample: reference | masked | prediction | truth."""
    columns = [image6[:, :3], image6[:, 3:], prediction, truth]
    rows = torch.cat([torch.cat(list(column), dim=2) for column in zip(*columns)], dim=1)
    picture = (rows.float().clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(picture[:, :, ::-1])


def write_png_atomic(path: Path, image_bgr: np.ndarray) -> None:
    import cv2

    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    write_bytes_atomic(path, encoded.tobytes())


def plot_history(history: List[Dict], path: Path, title: str) -> None:
    """Loss-curve PNG of the per-epoch history (train loss, held-out scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [entry["epoch"] for entry in history]
    figure, left = plt.subplots(figsize=(8, 4.5))
    left.plot(epochs, [entry["train_loss"] for entry in history], label="train loss")
    for key in ("val_l1", "val_loss"):
        values = [entry.get(key) for entry in history]
        if any(value is not None for value in values):
            left.plot(epochs, values, label=key.replace("_", " "))
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.set_yscale("log")
    right_key = "val_psnr" if any("val_psnr" in entry for entry in history) else "val_accuracy"
    if any(right_key in entry for entry in history):
        right = left.twinx()
        right.plot(epochs, [entry.get(right_key) for entry in history], color="tab:red",
                   label=right_key.replace("_", " "))
        right.set_ylabel("held-out PSNR (dB)" if right_key == "val_psnr" else "held-out sync accuracy")
        right.legend(loc="upper right")
    left.legend(loc="upper left")
    left.set_title(title)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------- tasks

class UNetTask:
    """The 328 U-Net: reference + masked target + audio -> target crop."""
    kind = ckpt.UNET_KIND
    score_name = "val_l1"                 # lower is better; best.pth and --patience follow it

    def __init__(self, model: nn.Module, person: PersonData, config: TrainConfig,
                 perceptual: Optional[nn.Module] = None, syncnet: Optional[nn.Module] = None):
        self.model, self.person, self.config = model, person, config
        self.perceptual, self.syncnet = perceptual, syncnet
        self.augment = ColourJitter() if config.augment else None
        train_frames, val_frames = person.split(config.val_fraction)
        self.train_set = LipSyncDataset(person, train_frames, train_frames, config.seed)
        self.val_set = LipSyncDataset(person, val_frames, val_frames, config.seed) if len(val_frames) else None

    def model_config(self) -> Dict:
        from models.unet_328 import width_name

        return ckpt.model_config(self.kind, self.config.asr, width_name(self.model.widths),
                                 self.model.widths, self.model.audio_shape,
                                 self.person.describe_features())

    def to(self, device):
        for module in (self.perceptual, self.syncnet):
            if module is not None:
                module.to(device)

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
        prediction = model(image6, audio)
        terms = {"l1": F.l1_loss(prediction, truth)}
        total = L1_WEIGHT * terms["l1"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(prediction, truth)
            total = total + PERCEPTUAL_WEIGHT * terms["perceptual"]
        if self.syncnet is not None:
            logits = self.syncnet(prediction, audio)
            terms["sync"] = F.binary_cross_entropy_with_logits(logits.float(), torch.ones_like(logits.float()))
            total = total + self.config.sync_weight * terms["sync"]
        terms["total"] = total
        return terms

    @torch.no_grad()
    def validate(self, model, loader, device, autocast) -> Dict[str, float]:
        sums = {"val_l1": 0.0, "val_psnr": 0.0}
        count = 0
        in_sync = 0
        for batch in loader:
            image6, truth, audio = self.inputs(batch, device, train=False)
            with autocast():
                prediction = model(image6, audio)
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
        return sample_grid(image6, prediction, truth)


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
        from models.syncnet import SYNC_WIDTHS

        return ckpt.model_config(self.kind, self.config.asr, self.model.model_size,
                                 SYNC_WIDTHS[self.model.model_size], self.model.audio_shape,
                                 self.person.describe_features())

    def to(self, device):
        pass

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


# --------------------------------------------------------------------------- the loop

class Trainer:
    """Runs a task for config.epochs epochs; see the module docstring."""

    def __init__(self, task, config: TrainConfig, dist: Optional[Distributed] = None,
                 callbacks: Sequence[Callable[["Trainer", int], None]] = ()):
        self.task, self.config = task, config
        self.dist = dist or Distributed(device=resolve_device(config.device))
        self.device = self.dist.device
        self.callbacks = list(callbacks)
        self.save_dir = Path(config.save_dir)
        self.history: List[Dict] = []
        self.best_score = math.inf
        self.epochs_without_improvement = 0
        self.start_epoch = 0
        self._other_ranks_rng: List[Dict] = []

        model = task.model.to(self.device)
        if self.dist.syncs_batch_norm:
            # SyncBatchNorm keeps BatchNorm's parameter and buffer names: checkpoints stay interchangeable.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            task.model = model
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        task.to(self.device)
        self.model = model
        self.train_model = model
        if self.dist.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.scheduler = self._make_scheduler()
        # float16 + loss scaling on GPUs; on CPU autocast uses bfloat16, which needs no scaling.
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp and self.device.type == "cuda")
        self.train_loader, self.val_loader = self._make_loaders()
        self.tensorboard = None

    # ----------------------------------------------------------------- setup pieces
    def _make_scheduler(self):
        if self.config.lr_schedule == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, STEP_LR_EPOCHS, STEP_LR_GAMMA)
        if self.config.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.config.epochs)
        return None

    def _make_loaders(self):
        config, dist = self.config, self.dist
        train_set = self.task.train_set
        needed = config.batch_size * dist.world_size
        if len(train_set) < needed:
            processes = f" x {dist.world_size} processes" if dist.enabled else ""
            raise UserError(f"--batch_size {config.batch_size}{processes} is larger than the "
                            f"{len(train_set)} training frames of {config.dataset_dir} — use "
                            f"--batch_size {max(len(train_set) // dist.world_size, 1)} or less, "
                            "or a longer recording")
        workers = min(config.num_workers, os.cpu_count() or 1)
        pin = self.device.type == "cuda"
        # The sampler shuffles with (seed, epoch): the same order after a resume, for any worker count.
        self.sampler = DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank,
                                          shuffle=True, seed=config.seed, drop_last=True)
        common = dict(num_workers=workers, pin_memory=pin)
        if workers:
            common["prefetch_factor"] = 4
        train = DataLoader(train_set, batch_size=config.batch_size, sampler=self.sampler,
                           drop_last=True, **common)
        val = None
        if self.task.val_set is not None and dist.is_main:
            val = DataLoader(self.task.val_set, batch_size=config.batch_size, shuffle=False, **common)
        return train, val

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.config.amp)

    # ----------------------------------------------------------------- checkpoints
    def _state(self, epoch: int) -> Dict:
        return {"model_state": self.model.state_dict(), "config": self.task.model_config(),
                "epoch": epoch}

    def save_epoch_files(self, epoch: int, metrics: Dict, improved: bool, final: bool) -> None:
        base = self._state(epoch)
        model_state, config = base["model_state"], base["config"]
        if epoch % self.config.save_interval == 0 or final:
            ckpt.save_checkpoint(ckpt.epoch_path(self.save_dir, epoch), model_state, config, epoch,
                                 metrics=metrics)
        if improved and not self._best_was_chosen_by_evaluation():
            ckpt.save_checkpoint(self.save_dir / ckpt.BEST, model_state, config, epoch, metrics=metrics)
        # latest.pth last: once it says epoch N, every file of epoch N exists.
        ckpt.save_checkpoint(
            self.save_dir / ckpt.LATEST, model_state, config, epoch, metrics=metrics,
            optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler else None,
            args=self.config.as_dict(), rng=[rng_state(self.device)] + self._other_ranks_rng[1:],
            history=self.history,
            best_score=self.best_score, epochs_without_improvement=self.epochs_without_improvement,
            finished=final)

    def _best_was_chosen_by_evaluation(self) -> bool:
        """evaluate_328.py's choice (a best.pth with a ``selection``) outranks the held-out L1.

        Training then leaves best.pth alone and says once that evaluation should
        be re-run to choose among the new checkpoints.
        """
        path = self.save_dir / ckpt.BEST
        if not path.is_file():
            return False
        try:
            chosen = "selection" in torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except Exception:
            return False
        if chosen and not getattr(self, "_told_about_evaluated_best", False):
            log.info("%s was chosen by evaluate_328.py: keeping it; re-run evaluate_328.py to choose "
                     "among the new checkpoints", path)
            self._told_about_evaluated_best = True
        return chosen

    def restore(self) -> bool:
        """Load latest.pth into this trainer; False when there is nothing to resume."""
        path = self.save_dir / ckpt.LATEST
        if not path.is_file():
            return False
        state = ckpt.read_checkpoint(path, "cpu")
        ckpt.check_config(path, state["config"], self.task.kind, self.config.asr,
                          self.task.model_config()["model_size"])
        if list(state["config"]["audio_shape"]) != list(self.task.model_config()["audio_shape"]):
            raise UserError(f"{path} was trained on audio windows {state['config']['audio_shape']} but "
                            f"{self.config.dataset_dir} gives {list(self.task.model_config()['audio_shape'])}"
                            " — the features changed; train from scratch with --overwrite")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        # one state per rank (a single dict in runs saved before ranks kept their own)
        rank_states = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if self.dist.rank < len(rank_states):
            set_rng_state(rank_states[self.dist.rank], self.device)
        else:       # a run saved with fewer processes: this rank continues from a fresh stream
            set_rng_state(rank_states[0], self.device)
            if self.dist.rank:
                seed_everything(self.config.seed + self.dist.rank + RESUMED_RANK_SEED_STEP * int(state["epoch"]))
        self.history = list(state.get("history", []))
        self.best_score = state.get("best_score", math.inf)
        self.epochs_without_improvement = state.get("epochs_without_improvement", 0)
        self.start_epoch = int(state["epoch"])
        return True

    # ----------------------------------------------------------------- logging
    def _open_logs(self):
        if not self.dist.is_main:
            return None
        self.save_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.save_dir / "training.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.save_dir / "tensorboard"))
        except ImportError:
            log.info("TensorBoard is not installed: metrics go to training.log and loss_curve.png only")
        return handler

    def _close_logs(self, handler):
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def _log_epoch(self, entry: Dict) -> None:
        parts = [f"epoch {entry['epoch']}/{self.config.epochs}", f"train_loss {entry['train_loss']:.5f}"]
        parts += [f"{key} {value:.5f}" for key, value in entry.items()
                  if key.startswith("train_") and key != "train_loss"]
        parts += [f"{key} {value:.4f}" for key, value in entry.items() if key.startswith("val_")]
        parts += [f"lr {entry['lr']:.2e}", f"{entry['seconds']:.1f} s",
                  f"{entry['samples_per_s']:.1f} samples/s", f"peak_mem {entry['peak_mem_mb']:.0f} MB"]
        log.info("  ".join(parts))
        if self.tensorboard is not None:
            for key, value in entry.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.tensorboard.add_scalar(key, value, entry["epoch"])

    # ----------------------------------------------------------------- steps
    def train_step(self, batch, micro_step: int, last_micro_step: bool) -> Dict[str, float]:
        """One micro-batch; the optimizer steps every --grad_accum micro-batches."""
        accumulate = self.config.grad_accum
        synchronise = last_micro_step or (micro_step + 1) % accumulate == 0
        context = (self.train_model.no_sync() if self.dist.enabled and not synchronise
                   else _null_context())
        with context:
            with self.autocast():
                terms = self.task.losses(self.train_model, batch, self.device)
            self.scaler.scale(terms["total"] / accumulate).backward()
        if synchronise:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        return {key: float(value.detach()) for key, value in terms.items()}

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        from tqdm import tqdm

        self.sampler.set_epoch(epoch)
        self.task.train_set.set_epoch(epoch)
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: Dict[str, float] = {}
        steps = len(self.train_loader)
        bar = tqdm(self.train_loader, total=steps, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                   disable=not (self.config.show_progress and self.dist.is_main),
                   dynamic_ncols=True, leave=False)
        for step, batch in enumerate(bar):
            terms = self.train_step(batch, step, step == steps - 1)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{terms['total']:.4f}")
        means = {key: self.dist.mean(value / steps) for key, value in sums.items()}
        result = {"train_loss": means.pop("total")}
        result.update({f"train_{key}": value for key, value in means.items()})
        return result

    # ----------------------------------------------------------------- the run
    def fit(self) -> List[Dict]:
        handler = self._open_logs()
        try:
            return self._fit()
        finally:
            self._close_logs(handler)

    def _fit(self) -> List[Dict]:
        config, dist = self.config, self.dist
        if dist.is_main:
            train_count = len(self.task.train_set)
            val_count = len(self.task.val_set) if self.task.val_set is not None else 0
            log.info("%s: %s, %d train frames, %d held-out frames (tail), device %s, %d process(es), "
                     "batch %d x %d accumulation, %d steps per epoch, amp %s",
                     self.task.kind, config.dataset_dir, train_count, val_count, self.device,
                     dist.world_size, config.batch_size, config.grad_accum, len(self.train_loader),
                     "on" if config.amp else "off")
        if self.start_epoch >= config.epochs:
            if dist.is_main:
                log.info("already trained to epoch %d of %d (%s): nothing to do", self.start_epoch,
                         config.epochs, self.save_dir / ckpt.LATEST)
            return self.history
        if self.start_epoch and dist.is_main:
            log.info("resuming after epoch %d from %s", self.start_epoch, self.save_dir / ckpt.LATEST)
        for epoch in range(self.start_epoch, config.epochs):
            started = time.time()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            entry = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            if self.scheduler is not None:
                self.scheduler.step()
            seconds = time.time() - started
            entry.update(lr=self.optimizer.param_groups[0]["lr"], seconds=seconds,
                         samples_per_s=len(self.train_loader) * config.batch_size * dist.world_size / seconds,
                         peak_mem_mb=peak_memory_mb(self.device))
            stop = False
            # every rank's random state goes into latest.pth (rank 0's is taken again after validating)
            self._other_ranks_rng = dist.gather(rng_state(self.device))
            if dist.is_main:
                stop = self._end_epoch_main(epoch + 1, entry)
            stop = dist.broadcast(stop)
            dist.barrier()
            for callback in self.callbacks:
                callback(self, epoch + 1)
            if stop:
                break
        return self.history

    def _end_epoch_main(self, epoch: int, entry: Dict) -> bool:
        """Validate, log, plot and checkpoint (rank 0); True when --patience says stop."""
        config = self.config
        self.model.eval()
        if self.val_loader is not None:
            entry.update(self.task.validate(self.model, self.val_loader, self.device, self.autocast))
        score = entry.get(self.task.score_name, entry["train_loss"])
        improved = score < self.best_score
        if improved:
            self.best_score, self.epochs_without_improvement = score, 0
        else:
            self.epochs_without_improvement += 1
        stop = bool(config.patience) and self.epochs_without_improvement >= config.patience
        self.history.append(entry)
        self._log_epoch(entry)
        if config.see_res:
            grid = self.task.samples(self.model, self.device, self.autocast)
            if grid is not None:
                write_png_atomic(self.save_dir / "samples" / f"epoch_{epoch:04d}.png", grid)
        plot_history(self.history, self.save_dir / "loss_curve.png",
                     f"{self.task.kind} — {Path(config.dataset_dir).name}")
        final = stop or epoch == config.epochs
        self.save_epoch_files(epoch, {key: value for key, value in entry.items() if key != "epoch"},
                              improved, final)
        if stop:
            log.info("stopping early: %s has not improved for %d epochs (best %.5f)",
                     self.task.score_name, config.patience, self.best_score)
        if final:
            write_json_atomic(self.save_dir / "summary.json",
                              {"epochs": epoch, "best": {self.task.score_name: self.best_score},
                               "last": entry})
        return stop


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------- entry points

def prepare_run(config: TrainConfig, dist: Distributed) -> PersonData:
    """Checks common to both trainings; the crop cache is built by rank 0 only."""
    config.check()
    if dist.is_main:
        latest = Path(config.save_dir) / ckpt.LATEST
        if latest.is_file() and not (config.resume or config.overwrite):
            raise UserError(f"{config.save_dir} already holds a training run ({latest.name}) — "
                            "add --resume to continue it, or --overwrite to start again from scratch")
        person = open_person(config.dataset_dir, config.asr, show_progress=config.show_progress)
    dist.barrier()
    if not dist.is_main:
        person = open_person(config.dataset_dir, config.asr, build_cache=False, show_progress=False)
    return person


def _start(trainer: Trainer, config: TrainConfig) -> None:
    if config.resume:
        if not trainer.restore() and trainer.dist.is_main:
            logging.getLogger("training").warning("--resume: no %s in %s yet, starting from epoch 0",
                                                  ckpt.LATEST, config.save_dir)
    elif config.overwrite and trainer.dist.is_main:
        for path in ckpt.numbered_epochs(config.save_dir).values():
            path.unlink()
        for name in (ckpt.LATEST, ckpt.BEST, "training.log", "summary.json"):
            (Path(config.save_dir) / name).unlink(missing_ok=True)


def train_unet(config: TrainConfig, callbacks=()) -> List[Dict]:
    """The whole U-Net training of train_328.py."""
    from models.perceptual import build_perceptual_loss
    from models.unet_328 import WIDTHS, LipSyncUNet

    dist = setup_distributed(config.device)
    seed_everything(config.seed + dist.rank)        # each rank its own augmentation draws
    person = prepare_run(config, dist)
    syncnet = None
    if config.use_syncnet:
        path = config.syncnet_checkpoint or ckpt.syncnet_dir(config.save_dir) / ckpt.BEST
        if not Path(path).is_file():
            raise UserError(f"--use_syncnet: no SyncNet checkpoint at {path} — train it first: "
                            f"python train_syncnet.py --dataset_dir {config.dataset_dir} --asr {config.asr}"
                            f" (or pass --syncnet_checkpoint)")
        syncnet, _ = ckpt.load_syncnet(path, dist.device, config.asr, person.audio_shape)
    perceptual = build_perceptual_loss(config.perceptual, config.vgg_weights)
    model = LipSyncUNet(config.asr, person.audio_shape, WIDTHS[config.model_size])
    task = UNetTask(model, person, config, perceptual, syncnet)
    trainer = Trainer(task, config, dist, callbacks)
    _start(trainer, config)
    return _fit_and_leave(trainer)


def train_syncnet(config: TrainConfig, callbacks=()) -> List[Dict]:
    """The whole SyncNet training of train_syncnet.py."""
    from models.syncnet import SyncNet

    dist = setup_distributed(config.device)
    seed_everything(config.seed + dist.rank)        # each rank its own augmentation draws
    person = prepare_run(config, dist)
    model = SyncNet(config.asr, person.audio_shape, config.model_size)
    trainer = Trainer(SyncNetTask(model, person, config), config, dist, callbacks)
    _start(trainer, config)
    return _fit_and_leave(trainer)


def _fit_and_leave(trainer: Trainer) -> List[Dict]:
    """Train, then leave the torchrun process group (torch warns at exit otherwise)."""
    history = trainer.fit()
    if trainer.dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return history


def configure_console_logging(quiet: bool = False) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format=LOG_FORMAT,
                            datefmt="%H:%M:%S")



# --------------------------------------------------------------------------- command lines

def build_parser(description: str, *, batch_size: int, lr: float, epochs: int, save_interval: int):
    """The options train_328.py and train_syncnet.py share (defaults differ per script)."""
    import argparse

    from data_utils.timebase import ASR_CHOICES
    from models.unet_328 import MODEL_SIZES

    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_argument_group("data and checkpoints")
    where.add_argument("--name", help="person: reads dataset/NAME, writes checkpoint/NAME")
    where.add_argument("--dataset_dir", help="processed dataset folder (instead of --name)")
    where.add_argument("--save_dir", help="checkpoint folder (default: from --name or the dataset folder name)")
    where.add_argument("--asr", choices=ASR_CHOICES, default="ave", help="audio features (default ave)")
    where.add_argument("--val_fraction", type=float, default=0.05,
                       help="held-out tail of the recording for validation (default 0.05)")
    run = parser.add_argument_group("training")
    run.add_argument("--model_size", choices=MODEL_SIZES, default="full", help="channel widths (default full)")
    run.add_argument("--batch_size", type=int, default=batch_size, help=f"default {batch_size}")
    run.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr:g})")
    run.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")
    run.add_argument("--save_interval", type=int, default=save_interval,
                     help=f"write EPOCH.pth every this many epochs (default {save_interval})")
    run.add_argument("--lr_schedule", choices=LR_SCHEDULES, default="none",
                     help=f"none | step (x{STEP_LR_GAMMA} every {STEP_LR_EPOCHS} epochs) | cosine")
    run.add_argument("--augment", action="store_true", help="brightness/contrast/colour jitter (off by default)")
    run.add_argument("--patience", type=int, default=0,
                     help="stop when the held-out score has not improved for N epochs (default 0: never)")
    run.add_argument("--seed", type=int, default=0)
    speed = parser.add_argument_group("speed")
    speed.add_argument("--device", choices=DEVICES, default="auto", help="default auto: cuda when available")
    speed.add_argument("--amp", action="store_true", help="mixed precision (float16 on GPU, bfloat16 on CPU)")
    speed.add_argument("--grad_accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    speed.add_argument("--num_workers", type=int, default=4,
                       help="data-loader processes; pinned memory on GPU (default 4)")
    state = parser.add_argument_group("resume")
    state.add_argument("--resume", action="store_true",
                       help="continue from latest.pth in the checkpoint folder (starts fresh if there is none)")
    state.add_argument("--overwrite", action="store_true",
                       help="discard an existing run in the checkpoint folder and start again")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def paths_from_args(args, subdir: Optional[str] = None):
    """Fill args.dataset_dir / args.save_dir from --name (or the dataset folder's name)."""
    from data_utils.layout import DATASET_ROOT, checkpoint_dir

    if args.name is None and args.dataset_dir is None:
        raise UserError("say which person to train: --name NAME (dataset/NAME) or --dataset_dir DIR")
    if args.name is not None and args.dataset_dir is not None:
        raise UserError("give either --name or --dataset_dir, not both")
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else DATASET_ROOT / args.name
    save_dir = Path(args.save_dir) if args.save_dir else checkpoint_dir(args.name or dataset_dir.name)
    if subdir and not args.save_dir:
        save_dir = save_dir / subdir
    args.dataset_dir, args.save_dir = dataset_dir, save_dir
    args.show_progress = not args.quiet
    return args
