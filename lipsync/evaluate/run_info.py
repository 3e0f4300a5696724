"""The training run being evaluated: which of its checkpoints are scored, their epochs,
and the held-out fraction it was trained with."""
import logging
from pathlib import Path
from typing import List, Optional, Tuple

from data_utils.dataset import DEFAULT_VAL_FRACTION
from lipsync.core.checkpoints import LATEST, numbered_epochs, read_checkpoint, resolve_checkpoint
from lipsync.core.commands import train_command
from lipsync.core.errors import UserError
from lipsync.evaluate.options import EvalOptions

log = logging.getLogger("evaluation")

# A requested fraction this much above the trained one is still "the same" (float noise of 0.05 vs 0.05).
FRACTION_TOLERANCE = 1e-9


def checkpoints_to_score(options: EvalOptions) -> Tuple[List[Path], bool]:
    """(checkpoint files, whether best.pth is chosen among them: every numbered epoch, not --last N)."""
    run_dir = options.run_dir
    if options.checkpoint is not None:
        return [resolve_checkpoint(run_dir, options.checkpoint)], False
    epochs = numbered_epochs(run_dir)
    if not epochs:
        name = options.name or options.layout.name
        where = f"{run_dir} does not exist" if not run_dir.is_dir() else f"{run_dir} holds no 10.pth, 20.pth, ..."
        raise UserError(f"nothing to evaluate: {where} — train first: {train_command(name)}, "
                        "or pick a file with --checkpoint PATH")
    if options.last is not None:        # a part of the run, by choice: best.pth is not chosen from it
        return list(epochs.values())[-options.last:], False
    return list(epochs.values()), True


def checkpoint_epoch(path: Path) -> int:
    """The epoch a checkpoint file holds: its name for 10.pth, else what it stores."""
    if Path(path).stem.isdigit():
        return int(Path(path).stem)
    return int(read_checkpoint(path).get("epoch", 0))


def trained_val_fraction(run_dir: Path) -> Optional[float]:
    """The --val_fraction the run in ``run_dir`` was trained with (from latest.pth), if recorded."""
    latest = Path(run_dir) / LATEST
    if not latest.is_file():
        return None
    try:
        args = read_checkpoint(latest).get("args") or {}
    except UserError:
        return None
    value = args.get("val_fraction")
    return float(value) if value else None


def heldout_fraction(requested: Optional[float], run_dir: Path) -> float:
    """The held-out tail to score: ``requested``, else what the run was trained with, else the default.

    A tail larger than the trained one includes frames training saw: allowed, with a warning.
    """
    trained = trained_val_fraction(run_dir)
    fraction = requested or trained or DEFAULT_VAL_FRACTION
    if trained is not None and fraction > trained + FRACTION_TOLERANCE:
        log.warning("--val_fraction %g is larger than the %g the run was trained with: the first "
                    "held-out frames were seen in training and score too well", fraction, trained)
    return fraction
