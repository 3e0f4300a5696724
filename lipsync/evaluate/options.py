"""Every option of an evaluation run (EvalOptions) and evaluate_328.py's parser.

The parser's ``dest`` names are EvalOptions' field names, so
``EvalOptions.from_args(args)`` reads them back; the rendering options
(--no_silence_hold, --mouth_scale, --colour_match) are inference_328.py's
RenderOptions fields and are collected into ``render_options``.
"""
import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from data_utils.dataset import DEFAULT_VAL_FRACTION
from data_utils.layout import CHECKPOINT_ROOT, DATASET_ROOT, DatasetLayout, checkpoint_dir
from lipsync.core.devices import DEVICES
from lipsync.core.errors import UserError
from lipsync.core.options import Options
from lipsync.evaluate.selection import DEFAULT_SELECT_BY, SELECTION_METRICS
from lipsync.render.options import DEFAULT_BATCH_SIZE, RenderOptions

# The RenderOptions fields evaluate_328.py takes. Only those that differ from
# RenderOptions' defaults go into ``render_options``: it is part of the cached
# scores' key, and a default render must keep one key however it was asked for.
RENDER_ARGUMENTS = ("silence_hold", "mouth_scale", "colour_match")


@dataclass
class EvalOptions(Options):
    """What to evaluate and how; evaluate_328.py fills it with ``EvalOptions.from_args(args)``."""
    name: Optional[str] = None
    dataset_dir: Optional[Path] = None
    checkpoint_dir: Optional[Path] = None      # default checkpoint/NAME
    checkpoint: Optional[str] = None           # None: every numbered epoch; else an epoch, best, latest or a path
    last: Optional[int] = None                 # only the newest this many numbered epochs
    audio_path: Optional[Path] = None          # new audio instead of the held-out tail
    truth_video: Optional[Path] = None         # the person really speaking audio_path, if filmed
    start_frame: int = 0                       # recording frame new audio starts from
    val_fraction: Optional[float] = None       # None: what the run was trained with
    select_by: str = DEFAULT_SELECT_BY
    select: bool = True                        # write best.pth when every checkpoint was scored
    syncnet_checkpoint: Optional[Path] = None  # default checkpoint/NAME/syncnet/best.pth
    device: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    # lipsync.render.options.RenderOptions fields (silence_hold, mouth_scale, colour_match, ...): score the
    # video exactly as inference_328.py would render it with the same options
    render_options: Dict = dataclasses.field(default_factory=dict)
    output_dir: Optional[Path] = None          # default checkpoint/NAME/evaluation/<heldout | audio_STEM>
    write_video: bool = True
    force: bool = False                        # re-score checkpoints whose scores are cached
    ave_checkpoint: Optional[Path] = None
    hubert_model: Optional[str] = None
    wenet_model: Optional[Path] = None
    dataset_root: Path = DATASET_ROOT
    checkpoint_root: Path = CHECKPOINT_ROOT
    show_progress: bool = True

    @classmethod
    def from_args(cls, args, **overrides) -> "EvalOptions":
        """The options in ``args``; the RenderOptions fields among them that differ from their defaults
        become ``render_options``."""
        given = vars(args) if not isinstance(args, dict) else args
        defaults = RenderOptions()
        chosen = {name: given[name] for name in RENDER_ARGUMENTS
                  if name in given and given[name] != getattr(defaults, name)}
        overrides.setdefault("render_options", chosen)
        return super().from_args(args, **overrides)

    def check(self) -> "EvalOptions":
        if self.name is None and self.dataset_dir is None:
            raise UserError("say which person to evaluate: --name NAME (dataset/NAME, checkpoint/NAME)")
        if self.select_by not in SELECTION_METRICS:
            raise UserError(f"--select_by {self.select_by!r} is not a metric — choose one of: "
                            f"{', '.join(SELECTION_METRICS)}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise UserError(f"--val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be at least 1, got {self.batch_size}")
        if self.last is not None and self.last < 1:
            raise UserError(f"--last must be at least 1, got {self.last}")
        if self.last is not None and self.checkpoint is not None:
            raise UserError("--last N scores the newest N numbered epochs, --checkpoint one file: give one of them")
        if self.truth_video is not None and self.audio_path is None:
            raise UserError("--truth_video is the person speaking --audio_path: give --audio_path too")
        return self

    @property
    def layout(self) -> DatasetLayout:
        if self.dataset_dir is not None:
            return DatasetLayout(Path(self.dataset_dir))
        return DatasetLayout.for_name(self.name, self.dataset_root)

    @property
    def run_dir(self) -> Path:
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir)
        return checkpoint_dir(self.name or self.layout.name, self.checkpoint_root)


def optional_path(value: str) -> Optional[Path]:
    """A path argument; an empty one means "not given" (the default)."""
    return Path(value) if value else None


def build_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """evaluate_328.py's options: EvalOptions fields (by ``dest``) and the rendering options it passes on."""
    defaults, render_defaults = EvalOptions(), RenderOptions()
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="the person: dataset/NAME and checkpoint/NAME")
    parser.add_argument("--dataset_dir", type=optional_path, help="processed recording (default: dataset/NAME)")
    parser.add_argument("--checkpoint_dir", type=optional_path,
                        help="the run's checkpoints (default: checkpoint/NAME)")
    parser.add_argument("--checkpoint", help="score only this one: an epoch number, best, latest or a .pth path "
                                             "(default: every numbered epoch, and best.pth is chosen)")
    parser.add_argument("--last", type=int, metavar="N",
                        help="score only the newest N numbered epochs (their mean is reported; best.pth is left "
                             "as it is): the end of a run without re-scoring its start")
    parser.add_argument("--audio_path", type=optional_path,
                        help="new audio without ground truth (default: the held-out tail)")
    parser.add_argument("--truth_video", type=optional_path,
                        help="a 25 fps video of the person really speaking --audio_path, framed "
                             "like the recording: every held-out measure is made against it")
    parser.add_argument("--start_frame", type=int, default=defaults.start_frame,
                        help="recording frame --audio_path starts from")
    parser.add_argument("--val_fraction", type=float,
                        help="held-out tail of the recording "
                             f"(default: what the run was trained with, else {DEFAULT_VAL_FRACTION:g})")
    parser.add_argument("--select_by", choices=tuple(SELECTION_METRICS), default=defaults.select_by,
                        help=f"metric best.pth is chosen by (default {defaults.select_by})")
    parser.add_argument("--no_select", dest="select", action="store_false",
                        help="score only; leave best.pth as it is")
    parser.add_argument("--syncnet_checkpoint", type=optional_path,
                        help="SyncNet for LSE-D/LSE-C (default: checkpoint/NAME/syncnet/best.pth when it exists)")
    parser.add_argument("--device", choices=DEVICES, default=defaults.device)
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size, help="frames per model call")
    render = parser.add_argument_group("rendering (as inference_328.py; scores the video those options give)")
    render.add_argument("--no_silence_hold", dest="silence_hold", action="store_false",
                        help="keep painting the mouth during pauses")
    render.add_argument("--mouth_scale", type=float, default=render_defaults.mouth_scale,
                        help="> 1 opens the mouth wider, < 1 less")
    render.add_argument("--colour_match", "--color_match", dest="colour_match", action="store_true",
                        help="match the generated region's colours to the frame before pasting")
    parser.add_argument("--output_dir", type=optional_path, help="where tables, videos and strips go "
                        "(default: checkpoint/NAME/evaluation/heldout or audio_STEM)")
    parser.add_argument("--no_video", dest="write_video", action="store_false",
                        help="no side-by-side videos (faster)")
    parser.add_argument("--force", action="store_true", help="re-score checkpoints whose scores are cached")
    parser.add_argument("--ave_checkpoint", type=optional_path,
                        help="AVE encoder for --asr ave (default: the one training used)")
    parser.add_argument("--hubert_model", help="HuBERT folder or hub id (default: the one training used)")
    parser.add_argument("--wenet_model", type=optional_path,
                        help="WeNet encoder ONNX (default: the one training used)")
    parser.add_argument("--dataset_root", type=Path, default=defaults.dataset_root, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint_root", type=Path, default=defaults.checkpoint_root, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", dest="show_progress", action="store_false", help="no progress bars")
    return parser
