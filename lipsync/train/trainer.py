"""The training loop both networks share: one Trainer runs a task for --epochs epochs.

The Trainer owns what both trainings share: the data loaders (batches of
uint8 crops from the memory-mapped cache, turned into model inputs on the
training device), DistributedDataParallel under torchrun, mixed precision,
gradient accumulation, LR schedules, validation on the held-out tail,
training.log / TensorBoard / loss curve, the averaged weights (--ema_decay,
weight_average.py: what is validated and saved for inference), checkpoints every
--save_interval epochs, best.pth, latest.pth and exact resume, and the two early stops
(--patience on the held-out score, --max_minutes on the clock). A task says what one step
computes and how the held-out part is scored:

    UNetTask     (unet_task.py)     the 328 U-Net's L1 + perceptual + sync loss
    SyncNetTask  (syncnet_task.py)  in-sync vs off-sync pairs

Under torchrun every process trains on its DistributedSampler share; rank 0
alone validates, logs and writes files. run.py builds a Trainer for each script.
"""
import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from lipsync.core import checkpoints as ckpt
from lipsync.core.atomic import write_json_atomic, write_png_atomic
from lipsync.core.console import LOG_FORMAT
from lipsync.core.devices import resolve_device
from lipsync.core.errors import UserError
from lipsync.train.distributed import Distributed, peak_memory_mb, rng_state
from lipsync.train.options import STEP_LR_EPOCHS, STEP_LR_GAMMA, TrainConfig
from lipsync.train.pictures import plot_history
from lipsync.train.resume import Resumable
from lipsync.train.weight_average import WeightAverage

log = logging.getLogger("training")

LOG_FILE_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"   # training.log: full dates, runs last days
PREFETCH_BATCHES = 4             # batches each data-loader worker prepares ahead


class Trainer(Resumable):
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
        self.resumed_from: Optional[Path] = None      # the file --resume / --resume_from continued
        self._training_started = None       # time.monotonic() at this invocation's first epoch (--max_minutes)
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
        # The averaged weights are validated and saved; the optimizer steps the live ones (self.model).
        self.average = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
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
            common["prefetch_factor"] = PREFETCH_BATCHES
        train = DataLoader(train_set, batch_size=config.batch_size, sampler=self.sampler,
                           drop_last=True, **common)
        val = None
        if self.task.val_set is not None and dist.is_main:
            val = DataLoader(self.task.val_set, batch_size=config.batch_size, shuffle=False, **common)
        return train, val

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.config.amp)

    @property
    def eval_model(self) -> nn.Module:
        """The weights validated and written for inference: the average when there is one."""
        return self.average.model if self.average is not None else self.model

    # ----------------------------------------------------------------- checkpoints
    def _state(self, epoch: int) -> Dict:
        return {"model_state": self.eval_model.state_dict(), "config": self.task.model_config(),
                "epoch": epoch}

    def _live_weights(self) -> Dict:
        """What latest.pth needs beside the averaged weights for an exact resume (nothing without them)."""
        if self.average is None:
            return {}
        return {"live_model": self.model.state_dict(), "weight_average": self.average.state()}

    def save_epoch_files(self, epoch: int, metrics: Dict, improved: bool, final: bool,
                         numbered: bool = False) -> None:
        """EPOCH.pth (every --save_interval, at the end, or when ``numbered``), best.pth, latest.pth."""
        base = self._state(epoch)
        model_state, config = base["model_state"], base["config"]
        if epoch % self.config.save_interval == 0 or final or numbered:
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
            finished=final, **self._live_weights())

    def _best_was_chosen_by_evaluation(self) -> bool:
        """evaluate_328.py's choice (a best.pth with a ``selection``) outranks the held-out L1.

        Training then leaves best.pth alone and says once that evaluation should
        be re-run to choose among the new checkpoints.
        """
        path = self.save_dir / ckpt.BEST
        if not path.is_file():
            return False
        try:
            state = ckpt.load_torch_file(path, "cpu")
        except UserError:           # unreadable: nobody chose it, training may replace it
            return False
        chosen = isinstance(state, dict) and "selection" in state
        if chosen and not getattr(self, "_told_about_evaluated_best", False):
            log.info("%s was chosen by evaluate_328.py: keeping it; re-run evaluate_328.py to choose "
                     "among the new checkpoints", path)
            self._told_about_evaluated_best = True
        return chosen

    # ----------------------------------------------------------------- logging
    def _open_logs(self):
        if not self.dist.is_main:
            return None
        self.save_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.save_dir / "training.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_FILE_DATE_FORMAT))
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
                   else contextlib.nullcontext())
        with context:
            with self.autocast():
                terms = self.task.losses(self.train_model, batch, self.device)
            self.scaler.scale(terms["total"] / accumulate).backward()
        if synchronise:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.average is not None:
                self.average.update(self.model)
        return {key: float(value.detach()) for key, value in terms.items()}

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        from tqdm import tqdm

        self.sampler.set_epoch(epoch)
        self.task.set_epoch(epoch)
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
                         config.epochs, self.resumed_from)
            return self.history
        if self.start_epoch and dist.is_main:
            log.info("resuming after epoch %d from %s", self.start_epoch, self.resumed_from)
        self._training_started = time.monotonic()
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

    def _time_is_up(self) -> bool:
        """Whether --max_minutes of training have passed in this invocation (never without a limit)."""
        limit = self.config.max_minutes
        return bool(limit) and (time.monotonic() - self._training_started) / 60 >= limit

    def _end_epoch_main(self, epoch: int, entry: Dict) -> bool:
        """Validate, log, plot and checkpoint (rank 0); True when --patience or --max_minutes says stop."""
        config = self.config
        model = self.eval_model
        model.eval()
        if self.val_loader is not None:
            entry.update(self.task.validate(model, self.val_loader, self.device, self.autocast))
        score = entry.get(self.task.score_name, entry["train_loss"])
        improved = score < self.best_score
        if improved:
            self.best_score, self.epochs_without_improvement = score, 0
        else:
            self.epochs_without_improvement += 1
        stop = bool(config.patience) and self.epochs_without_improvement >= config.patience
        # Rank 0's clock decides for every rank (broadcast with the patience decision).
        out_of_time = not stop and epoch < config.epochs and self._time_is_up()
        self.history.append(entry)
        self._log_epoch(entry)
        if config.see_res:
            grid = self.task.samples(model, self.device, self.autocast)
            if grid is not None:
                write_png_atomic(self.save_dir / "samples" / f"epoch_{epoch:04d}.png", grid)
        plot_history(self.history, self.save_dir / "loss_curve.png",
                     f"{self.task.kind} — {Path(config.dataset_dir).name}")
        final = stop or epoch == config.epochs
        # A run stopped by the clock is not finished: its epoch gets a numbered checkpoint and --resume continues.
        self.save_epoch_files(epoch, {key: value for key, value in entry.items() if key != "epoch"},
                              improved, final, numbered=out_of_time)
        if stop:
            log.info("stopping early: %s has not improved for %d epochs (best %.5f)",
                     self.task.score_name, config.patience, self.best_score)
        if out_of_time:
            minutes = (time.monotonic() - self._training_started) / 60
            log.info("stopping: --max_minutes %g reached after epoch %d of %d (%.1f min of training); "
                     "%s and %s are written — add --resume to continue", config.max_minutes, epoch,
                     config.epochs, minutes, ckpt.epoch_path(self.save_dir, epoch).name, ckpt.LATEST)
        if final:           # summary.json says "finished" (training_328.sh skips the stage): not after a time stop
            write_json_atomic(self.save_dir / "summary.json",
                              {"epochs": epoch, "best": {self.task.score_name: self.best_score},
                               "last": entry})
        return stop or out_of_time
