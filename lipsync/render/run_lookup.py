"""Finding a trained person: dataset/NAME plus a checkpoint of checkpoint/NAME, and where its
renders go (result/<NAME>_<audio stem>_<epoch>.mp4). One clear error for each missing piece."""
from pathlib import Path
from typing import List, Optional, Tuple

from data_utils.layout import CHECKPOINT_ROOT, DATASET_ROOT, RESULT_ROOT, DatasetLayout, checkpoint_dir
from lipsync.core.checkpoints import read_checkpoint, resolve_checkpoint
from lipsync.core.commands import shell_command, train_command
from lipsync.core.errors import UserError

NAMED_CHECKPOINTS = ("best", "latest")      # besides epoch numbers and .pth paths


def trained_names(checkpoint_root=CHECKPOINT_ROOT) -> List[str]:
    """Names under checkpoint/ that hold at least one .pth."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    return sorted(path.name for path in root.iterdir() if path.is_dir() and any(path.glob("*.pth")))


def _train_command(name: str) -> str:
    return (f"{train_command(name, '--asr', 'ave')} (or the whole path: "
            f"{shell_command('bash', 'training_328.sh', name, 0)})")


def locate_run(name: Optional[str], dataset_dir=None, checkpoint=None, dataset_root=DATASET_ROOT,
               checkpoint_root=CHECKPOINT_ROOT) -> Tuple[DatasetLayout, Path]:
    """(dataset layout, checkpoint file) for ``name``; one clear UserError for each missing piece.

    ``checkpoint``: None (newest epoch), an epoch number, "best"/"latest", or a .pth path.
    """
    if name is None and dataset_dir is None:
        raise UserError("give the person's --name (dataset/NAME and checkpoint/NAME)")
    layout = DatasetLayout(Path(dataset_dir)) if dataset_dir is not None else \
        DatasetLayout.for_name(name, dataset_root)
    name = name or layout.name
    runs = checkpoint_dir(name, checkpoint_root)
    explicit_file = checkpoint is not None and not str(checkpoint).isdigit() and \
        str(checkpoint) not in NAMED_CHECKPOINTS
    if explicit_file:
        checkpoint_path = resolve_checkpoint(runs, checkpoint)
    else:
        if not layout.root.exists() and not runs.exists():
            names = trained_names(checkpoint_root)
            have = ", ".join(names) if names else f"none yet (train one: {_train_command('NAME')})"
            raise UserError(f"unknown name {name!r}: neither {layout.root} nor {runs} exists — "
                            f"trained names in {Path(checkpoint_root)}/: {have}")
        if not runs.is_dir() or not any(runs.glob("*.pth")):
            raise UserError(f"{name} has a dataset ({layout.root}) but no trained checkpoint in {runs} — "
                            f"train it first: {_train_command(name)}")
        checkpoint_path = resolve_checkpoint(runs, checkpoint)
    # Inference reads only the crop boxes and the frames (not the audio track).
    layout.require_processed(why=f"inference paints the mouth into the processed frames of {name}'s recording; "
                                 f"put it at {layout.source_video()} and",
                             needed=(layout.crop_boxes, layout.frames_dir))
    return layout, checkpoint_path


def checkpoint_label(checkpoint_path) -> str:
    """The epoch a checkpoint holds, for output names: "120" for 120.pth, else its stored epoch."""
    path = Path(checkpoint_path)
    if path.stem.isdigit():
        return path.stem
    epoch = read_checkpoint(path).get("epoch")
    return str(epoch) if epoch is not None else path.stem


def default_output_path(name: str, audio_path, label: str, result_root=RESULT_ROOT) -> Path:
    """result/<NAME>_<audio stem>_<epoch>.mp4"""
    return Path(result_root) / f"{name}_{Path(audio_path).stem}_{label}.mp4"


def free_output_path(path) -> Path:
    """``path`` if nothing is there yet, else the first free ``<stem>_2<suffix>``, ``_3``, ...: a finished
    result is never replaced unless the user asks (--overwrite)."""
    path = Path(path)
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
    return candidate
