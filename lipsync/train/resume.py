"""Resuming a run: from latest.pth (exactly where it stopped) or from a numbered checkpoint
(--resume_from: weights and epoch counter), refusing a changed hyperparameter unless
--accept_changed_options says what happens to the schedule. A mixin of the Trainer, whose
model, optimizer, scheduler and scaler it restores."""
import logging
import math
import warnings
from pathlib import Path
from typing import Dict, List

from lipsync.core import checkpoints as ckpt
from lipsync.core.errors import UserError
from lipsync.core.options import as_typed
from lipsync.train.distributed import seed_everything, set_rng_state
from lipsync.train.options import stored_value

log = logging.getLogger("training")

RESUMED_RANK_SEED_STEP = 1000    # seeds of ranks a resumed run had no saved state for, per epoch


class Resumable:
    """Trainer methods that bring a run back; the Trainer provides the state they fill."""

    def restore(self) -> bool:
        """Load latest.pth into this trainer; False when there is nothing to resume."""
        path = self.save_dir / ckpt.LATEST
        if not path.is_file():
            return False
        state = ckpt.load_torch_file(path, "cpu", what="resume state",
                                     advice=f"continue from a saved epoch instead: {self._resume_from_hint()}")
        if not isinstance(state, dict) or not {"model", "config", "optimizer", "epoch"} <= set(state):
            raise UserError(f"{path} is not a resume state of this project (no model/optimizer inside) — "
                            f"continue from a saved epoch instead: {self._resume_from_hint()}")
        self._check_compatible(path, state["config"])
        changed = self.config.changed_since(state.get("args") or {})
        if changed and not self.config.accept_changed_options:
            stored = state["args"]
            now = self.config.as_dict()
            differences = ", ".join(f"--{name} {as_typed(stored_value(name, stored))} (now {as_typed(now[name])})"
                                    for name in changed)
            fixes = "; ".join(self.config.how_to_keep(name, stored) for name in changed)
            raise UserError(f"{path} was trained with {differences} — --resume continues that run as it was: "
                            f"{fixes}; or add --accept_changed_options to use the new value from "
                            f"epoch {int(state['epoch']) + 1} on (the LR schedule is recomputed for it)")
        self._load_weights(state)
        self.optimizer.load_state_dict(state["optimizer"])
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
        self.resumed_from = path
        self.best_score = state.get("best_score", math.inf)
        self.epochs_without_improvement = state.get("epochs_without_improvement", 0)
        self.start_epoch = int(state["epoch"])
        if changed:
            log.warning("--accept_changed_options: %s from epoch %d on; the LR schedule is recomputed for them",
                        ", ".join(f"--{name} {state['args'][name]} -> {self.config.as_dict()[name]}"
                                  for name in changed), self.start_epoch + 1)
            self._schedule_from(self.start_epoch)
        elif self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        return True

    def restore_from_epoch(self, which) -> None:
        """--resume_from: the weights and epoch counter of a numbered checkpoint (or any .pth of this run).

        Numbered checkpoints keep no optimizer state: Adam starts its moment estimates afresh (the first
        steps move a little more), and the LR schedule continues at that epoch.
        """
        path = ckpt.resolve_checkpoint(self.save_dir, which)
        state = ckpt.read_checkpoint(path, "cpu")
        self._check_compatible(path, state["config"])
        self.model.load_state_dict(state["model"])
        if self.average is not None:        # numbered checkpoints hold the averaged weights: start from them
            self.average.reset(self.model)
        self.start_epoch = int(state["epoch"])
        self.history = self._history_until(self.start_epoch)
        self.resumed_from = path
        seed_everything(self.config.seed + self.dist.rank + RESUMED_RANK_SEED_STEP * self.start_epoch)
        self._schedule_from(self.start_epoch)
        if self.dist.is_main:
            log.warning("resuming from %s (epoch %d): weights and epoch counter; the optimizer starts afresh "
                        "(numbered checkpoints keep no optimizer state)", path, self.start_epoch)

    def _load_weights(self, state: Dict) -> None:
        """The live weights, and the average beside them, from latest.pth.

        With --ema_decay, latest.pth's ``model`` is the average and ``live_model`` the weights the
        optimizer steps; a run saved without an average (or resumed without one) has only ``model``.
        """
        live = state.get("live_model", state["model"])
        self.model.load_state_dict(live)
        if self.average is None:
            return
        if "weight_average" in state:
            self.average.load(state["model"], state["weight_average"])
        else:
            self.average.reset(self.model)

    def _check_compatible(self, path: Path, config: Dict) -> None:
        ckpt.check_config(path, config, self.task.kind, self.config.asr, self.task.model_config()["model_size"])
        if list(config["audio_shape"]) != list(self.task.model_config()["audio_shape"]):
            raise UserError(f"{path} was trained on audio windows {config['audio_shape']} but "
                            f"{self.config.dataset_dir} gives {list(self.task.model_config()['audio_shape'])}"
                            " — the features changed; train from scratch with --overwrite")

    def _schedule_from(self, epoch: int) -> None:
        """This run's learning rate and schedule, at ``epoch`` epochs done, for the current options."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.config.lr
        self.scheduler = self._make_scheduler()
        if self.scheduler is not None:
            with warnings.catch_warnings():       # stepping the schedule alone, before any optimizer step
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(epoch):
                    self.scheduler.step()

    def _history_until(self, epoch: int) -> List[Dict]:
        """The epochs up to ``epoch`` from latest.pth's history, when it can be read."""
        try:
            state = ckpt.load_torch_file(self.save_dir / ckpt.LATEST, "cpu")
        except UserError:
            return []
        return [entry for entry in state.get("history", []) if entry.get("epoch", 0) <= epoch] \
            if isinstance(state, dict) else []

    def _resume_from_hint(self) -> str:
        epochs = ckpt.numbered_epochs(self.save_dir)
        if not epochs:
            return "no numbered checkpoint is saved yet, so start again with --overwrite"
        listed = ", ".join(str(epoch) for epoch in epochs)
        return f"--resume_from {max(epochs)} instead of --resume (epochs saved: {listed})"
