"""What a training run depends on: TrainConfig, and the command line that fills it.

train_328.py and train_syncnet.py parse one shared set of options
(build_parser); they differ only in their defaults (the user guide's: the U-Net
ones are TrainConfig's, SyncNet's are SYNCNET_*) and in the U-Net's loss
options. Both turn the parsed arguments into ``TrainConfig.from_args(args)``;
latest.pth stores ``config.as_dict()`` so a resumed run knows what it was.
"""
import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from data_utils.dataset import DEFAULT_VAL_FRACTION
from data_utils.layout import checkpoint_dir, chosen_dataset_dir
from data_utils.timebase import ASR_CHOICES
from lipsync.core.devices import DEVICES
from lipsync.core.errors import UserError
from lipsync.core.options import Options, as_typed
from lipsync.train.objective import SYNC_BALANCES
from models.perceptual import PERCEPTUAL_MODES
from models.unet_328 import (AUDIO_STAGES, DEFAULT_MODEL_SIZE, DOWNSAMPLINGS, HEAD_LEVELS, LIP_CODE_DIMS,
                             MASK_TO_EDGES, MODEL_SIZES, WIDTHS,
                             OPTIONS_BEFORE_THEY_EXISTED as UNET_OPTIONS_BEFORE_THEY_EXISTED)

# The U-Net objective's defaults (lipsync/train/objective.py), chosen by the ablation in
# benchmarks/RESULTS.md ("The training objective").
SYNC_WEIGHT = 10.0              # SyncTalk_2D's fixed weight; with adaptive balance, the cap
SYNC_BALANCE = "adaptive"
SYNC_RATIO = 3.0                # sync gradient on the picture / reconstruction gradient
SYNC_WARMUP_EPOCHS = 2
LIP_WEIGHT = 4.0                # the lips' box counts 4 times in L1 (before 2026-12-02: 1, every pixel alike)
REFERENCE_FRAMES = 1            # reference crops the U-Net sees (SyncTalk_2D's one)
EMA_DECAY = 0.0                 # the averaged weights (weight_average.py); 0: the last step's weights
TWIN_AUDIO_SHARE = 0.0          # chance a training sample hears a lip twin's audio (data_utils/lip_twins.py)
LIP_CODE_WEIGHT = 1.0           # the audio's lip-code prediction: its mean squared error's weight
# --lr_schedule step: halve the LR every 50 epochs (the user guide's StepLR).
STEP_LR_EPOCHS = 50
STEP_LR_GAMMA = 0.5
LR_SCHEDULES = ("none", "step", "cosine")
# What a resumed run must keep: changing one mid-run silently mixes two trainings.
RESUME_FIXED_OPTIONS = ("asr", "model_size", "widths", "batch_size", "lr", "lr_schedule", "grad_accum", "augment",
                        "val_fraction", "seed", "use_syncnet", "sync_weight", "sync_balance", "sync_ratio",
                        "sync_warmup_epochs", "lip_weight", "reference_frames", "audio_stages", "mask_to_edges",
                        "perceptual", "ema_decay", "twin_audio_share", "lip_code_dims", "lip_code_weight",
                        "head_levels")
# Options of the sync loss: compared on --resume only when both runs use it.
SYNC_LOSS_OPTIONS = ("sync_weight", "sync_balance", "sync_ratio", "sync_warmup_epochs")
# What a run saved before these options existed trained with (the objective was L1 + 10 x sync).
OPTION_VALUES_BEFORE_THEY_EXISTED = {"widths": None, "sync_balance": "fixed", "sync_warmup_epochs": 0, "lip_weight": 1.0,
                                     "ema_decay": 0.0, "twin_audio_share": 0.0, "lip_code_weight": LIP_CODE_WEIGHT,
                                     **UNET_OPTIONS_BEFORE_THEY_EXISTED}
# SyncNet sees one small mouth band per sample: bigger batches, more epochs than the U-Net.
SYNCNET_BATCH_SIZE = 32
SYNCNET_LR = 1e-4
SYNCNET_EPOCHS = 50
SYNCNET_SAVE_INTERVAL = 10
PATH_FIELDS = ("dataset_dir", "save_dir", "syncnet_checkpoint", "vgg_weights")


@dataclass
class TrainConfig(Options):
    """Everything a training run depends on; defaults follow the user guide (the U-Net's)."""
    dataset_dir: Path
    save_dir: Path
    asr: str = "ave"
    model_size: str = DEFAULT_MODEL_SIZE
    widths: Optional[List[int]] = None      # U-Net only: channel widths instead of model_size's
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
    val_fraction: float = DEFAULT_VAL_FRACTION
    patience: int = 0                       # 0: never stop early
    max_minutes: float = 0.0                # 0: no time limit; else stop after the epoch that crosses it
    see_res: bool = False
    resume: bool = False
    resume_from: Optional[str] = None       # an epoch number or a .pth: its weights and epoch counter
    accept_changed_options: bool = False    # --resume with other values of RESUME_FIXED_OPTIONS
    overwrite: bool = False
    seed: int = 0
    # U-Net only
    use_syncnet: bool = False
    syncnet_checkpoint: Optional[Path] = None
    sync_weight: float = SYNC_WEIGHT
    sync_balance: str = SYNC_BALANCE
    sync_ratio: float = SYNC_RATIO
    sync_warmup_epochs: int = SYNC_WARMUP_EPOCHS
    lip_weight: float = LIP_WEIGHT
    reference_frames: int = REFERENCE_FRAMES
    audio_stages: int = AUDIO_STAGES
    mask_to_edges: bool = MASK_TO_EDGES
    ema_decay: float = EMA_DECAY
    twin_audio_share: float = TWIN_AUDIO_SHARE
    lip_code_dims: int = LIP_CODE_DIMS
    lip_code_weight: float = LIP_CODE_WEIGHT
    head_levels: int = HEAD_LEVELS
    perceptual: str = "auto"                # auto | on | off
    vgg_weights: Optional[Path] = None
    show_progress: bool = True

    def __post_init__(self):
        # Command lines give strings; the run works with paths.
        for name in PATH_FIELDS:
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))

    def as_dict(self) -> Dict[str, Any]:
        """Plain values (paths as strings), as latest.pth stores them."""
        return {key: (str(value) if isinstance(value, Path) else value)
                for key, value in super().as_dict().items()}

    def check(self) -> None:
        for name in ("batch_size", "epochs", "save_interval", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        for name in ("sync_weight", "sync_ratio", "sync_warmup_epochs"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} cannot be negative, got {getattr(self, name)}")
        if self.widths is not None and (len(self.widths) != DOWNSAMPLINGS or min(self.widths) < 1):
            raise UserError(f"--widths takes {DOWNSAMPLINGS} channel counts of at least 1, got "
                            f"{as_typed(self.widths)}")
        if self.reference_frames < 1:
            raise UserError(f"--reference_frames must be at least 1, got {self.reference_frames}")
        if not 0 <= self.audio_stages <= DOWNSAMPLINGS:
            raise UserError(f"--audio_stages counts decoder stages: 0 to {DOWNSAMPLINGS}, got {self.audio_stages}")
        if self.lip_weight < 1:
            raise UserError(f"--lip_weight counts the lips' pixels that many times; it must be at least 1, "
                            f"got {self.lip_weight:g}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"--ema_decay is the share of the averaged weights kept at each step: at least 0 "
                            f"(no average) and below 1, got {self.ema_decay:g}")
        if not 0 <= self.twin_audio_share <= 1:
            raise UserError(f"--twin_audio_share is a chance: 0 to 1, got {self.twin_audio_share:g}")
        if self.lip_code_dims < 0 or self.lip_code_weight < 0:
            raise UserError(f"--lip_code_dims and --lip_code_weight cannot be negative, got {self.lip_code_dims} "
                            f"and {self.lip_code_weight:g}")
        if not 1 <= self.head_levels <= DOWNSAMPLINGS:
            raise UserError(f"--head_levels counts decoder stages: 1 to {DOWNSAMPLINGS}, got {self.head_levels}")
        if self.sync_balance not in SYNC_BALANCES:
            raise UserError(f"--sync_balance must be one of {', '.join(SYNC_BALANCES)}")
        if self.num_workers < 0 or self.patience < 0:
            raise UserError("--num_workers and --patience cannot be negative")
        if self.max_minutes < 0:
            raise UserError(f"--max_minutes cannot be negative, got {self.max_minutes:g}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"--lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.resume_from is not None and (self.resume or self.overwrite):
            raise UserError("--resume_from continues from a numbered checkpoint: give it without --resume "
                            "or --overwrite")

    def unet_options(self) -> Dict:
        """The U-Net's options besides its ASR, audio shape and widths (LipSyncUNet's keyword arguments)."""
        return {name: getattr(self, name) for name in UNET_OPTIONS_BEFORE_THEY_EXISTED}

    def unet_widths(self) -> Tuple[int, ...]:
        """The U-Net's channel widths: --widths when given, else --model_size's."""
        return tuple(self.widths) if self.widths is not None else WIDTHS[self.model_size]

    def changed_since(self, stored: Dict) -> List[str]:
        """The options whose value differs from ``stored`` (a resumed run's saved as_dict()) and must not.

        --epochs may grow (train longer) unless the cosine schedule spreads itself over them.
        A run saved before an option existed trained with OPTION_VALUES_BEFORE_THEY_EXISTED;
        the sync loss's own options count only when both runs use it.
        """
        fixed = RESUME_FIXED_OPTIONS + (("epochs",) if self.lr_schedule == "cosine" else ())
        current = self.as_dict()
        both_sync = self.use_syncnet and stored.get("use_syncnet", False)
        changed = []
        for name in fixed:
            if name in SYNC_LOSS_OPTIONS and not both_sync:
                continue
            if stored_value(name, stored, missing=current[name]) != current[name]:
                changed.append(name)
        return changed

    def how_to_keep(self, name: str, stored: Dict) -> str:
        """What to type so that --resume keeps the stored value of ``name``."""
        before = stored_value(name, stored)
        default = type(self).__dataclass_fields__[name].default
        if isinstance(before, bool):
            # A switch that is on by default is turned off with --no-NAME (argparse.BooleanOptionalAction).
            typed = f"--{name}" if not default else f"--no-{name}"
            return f"drop {typed}" if before == default else f"add {typed}"
        if before == default:
            return f"drop --{name} {as_typed(getattr(self, name))}"
        return f"use --{name} {as_typed(before)}"


def stored_value(name: str, stored: Dict, missing: Any = None) -> Any:
    """What a saved run's as_dict() ``stored`` trained with for option ``name``: its value, the
    value of the time before the option existed, else ``missing``."""
    return stored.get(name, OPTION_VALUES_BEFORE_THEY_EXISTED.get(name, missing))


# --------------------------------------------------------------------------- command lines

def build_parser(description: str, *, batch_size: int, lr: float, epochs: int,
                 save_interval: int) -> argparse.ArgumentParser:
    """The options train_328.py and train_syncnet.py share (these four defaults differ per script)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_argument_group("data and checkpoints")
    where.add_argument("--name", help="person: reads dataset/NAME, writes checkpoint/NAME")
    where.add_argument("--dataset_dir", help="processed dataset folder (instead of --name)")
    where.add_argument("--save_dir", help="checkpoint folder (default: from --name or the dataset folder name)")
    where.add_argument("--asr", choices=ASR_CHOICES, default=TrainConfig.asr,
                       help=f"audio features (default {TrainConfig.asr})")
    where.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION,
                       help=f"held-out tail of the recording for validation (default {DEFAULT_VAL_FRACTION:g})")
    run = parser.add_argument_group("training")
    run.add_argument("--model_size", choices=MODEL_SIZES, default=TrainConfig.model_size,
                     help=f"channel widths (default {TrainConfig.model_size})")
    run.add_argument("--batch_size", type=int, default=batch_size, help=f"default {batch_size}")
    run.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr:g})")
    run.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")
    run.add_argument("--save_interval", type=int, default=save_interval,
                     help=f"write EPOCH.pth every this many epochs (default {save_interval})")
    run.add_argument("--lr_schedule", choices=LR_SCHEDULES, default=TrainConfig.lr_schedule,
                     help=f"none | step (x{STEP_LR_GAMMA} every {STEP_LR_EPOCHS} epochs) | cosine")
    run.add_argument("--augment", action="store_true", help="brightness/contrast/colour jitter (off by default)")
    run.add_argument("--patience", type=int, default=TrainConfig.patience,
                     help=f"stop when the held-out score has not improved for N epochs "
                          f"(default {TrainConfig.patience}: never)")
    run.add_argument("--max_minutes", type=float, default=TrainConfig.max_minutes,
                     help="stop after the epoch that crosses M minutes of training (counted from this "
                          "invocation's first epoch); its checkpoint and latest.pth are written, so --resume "
                          "continues (default 0: no limit)")
    run.add_argument("--seed", type=int, default=TrainConfig.seed)
    speed = parser.add_argument_group("speed")
    speed.add_argument("--device", choices=DEVICES, default=TrainConfig.device,
                       help=f"default {TrainConfig.device}: cuda when available")
    speed.add_argument("--amp", action="store_true", help="mixed precision (float16 on GPU, bfloat16 on CPU)")
    speed.add_argument("--grad_accum", type=int, default=TrainConfig.grad_accum,
                       help=f"micro-batches per optimizer step (default {TrainConfig.grad_accum})")
    speed.add_argument("--num_workers", type=int, default=TrainConfig.num_workers,
                       help=f"data-loader processes; pinned memory on GPU (default {TrainConfig.num_workers})")
    state = parser.add_argument_group("resume")
    state.add_argument("--resume", action="store_true",
                       help="continue from latest.pth in the checkpoint folder (starts fresh if there is none)")
    state.add_argument("--resume_from", metavar="EPOCH_OR_PTH",
                       help="continue from a numbered checkpoint (e.g. 120, or a .pth): its weights and epoch; "
                            "the optimizer starts afresh, the LR schedule continues at that epoch")
    state.add_argument("--accept_changed_options", action="store_true",
                       help="--resume with other values of options the run was trained with (lr, batch size, "
                            "schedule, ...): they apply from the resumed epoch on, the LR schedule recomputed "
                            "for them as if the run had used them from the start")
    state.add_argument("--overwrite", action="store_true",
                       help="discard an existing run in the checkpoint folder and start again")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def build_unet_parser(description: str) -> argparse.ArgumentParser:
    """train_328.py's command line: the shared options with TrainConfig's defaults, and the losses."""
    parser = build_parser(description, batch_size=TrainConfig.batch_size, lr=TrainConfig.lr,
                          epochs=TrainConfig.epochs, save_interval=TrainConfig.save_interval)
    losses = parser.add_argument_group("losses and outputs")
    losses.add_argument("--use_syncnet", action="store_true",
                        help="add the frozen SyncNet's sync loss (weighted by --sync_balance)")
    losses.add_argument("--sync_balance", choices=SYNC_BALANCES, default=SYNC_BALANCE,
                        help=f"adaptive: each batch, weight the sync loss so that its gradient on the drawn "
                             f"picture is --sync_ratio times the reconstruction's (at most --sync_weight); "
                             f"fixed: weight it --sync_weight (default {SYNC_BALANCE})")
    losses.add_argument("--sync_ratio", type=float, default=SYNC_RATIO,
                        help=f"adaptive balance: sync gradient / reconstruction gradient (default {SYNC_RATIO:g}; "
                             "lower it if the mouth smudges, raise it if it moves too little)")
    losses.add_argument("--sync_weight", type=float, default=SYNC_WEIGHT,
                        help=f"fixed balance: the sync loss's weight against L1; adaptive: its cap "
                             f"(default {SYNC_WEIGHT:g}, SyncTalk_2D's)")
    losses.add_argument("--sync_warmup_epochs", type=int, default=SYNC_WARMUP_EPOCHS,
                        help=f"train this many epochs on reconstruction alone before the sync loss joins "
                             f"(default {SYNC_WARMUP_EPOCHS})")
    losses.add_argument("--twin_audio_share", type=float, default=TWIN_AUDIO_SHARE,
                        help="the chance that a training sample hears the audio of a frame, half a second or more "
                             "away, whose lips have the same shape (its lip twin), so the U-Net cannot tie a mouth "
                             f"to its own frame's exact audio (default {TWIN_AUDIO_SHARE:g})")
    losses.add_argument("--lip_weight", type=float, default=LIP_WEIGHT,
                        help=f"count the lips' box this many times in the L1 loss (default {LIP_WEIGHT:g}; "
                             "1: every pixel alike)")
    losses.add_argument("--widths", type=int, nargs=DOWNSAMPLINGS, metavar="C",
                        help=f"the U-Net's channel widths (stem and encoder stages, {DOWNSAMPLINGS} counts) instead "
                             f"of --model_size's, e.g. {as_typed(WIDTHS['tiny'])} for tiny; the "
                             f"checkpoint records them")
    losses.add_argument("--reference_frames", type=int, default=REFERENCE_FRAMES,
                        help=f"reference crops (random other frames) the U-Net sees beside the masked target "
                             f"(default {REFERENCE_FRAMES}); inference adds fixed frames spread over the recording")
    losses.add_argument("--audio_stages", type=int, default=AUDIO_STAGES,
                        help=f"decoder stages, from the 20 x 20 one up, whose channels the audio scales and shifts "
                             f"besides its fusion at the bottleneck (0-{DOWNSAMPLINGS}; default {AUDIO_STAGES})")
    losses.add_argument("--mask_to_edges", action=argparse.BooleanOptionalAction, default=MASK_TO_EDGES,
                        help="black the masked target out from the mask's top to the crop's bottom and side edges, "
                             "where the jaw and its shadow show the mouth's opening (default: on; --no-mask_to_edges "
                             "hides only the repainted region, as before 2026-12-06); the checkpoint records it")
    losses.add_argument("--lip_code_dims", type=int, default=LIP_CODE_DIMS,
                        help="tell the U-Net's bottleneck this many numbers of the lips' shape (their principal "
                             "components, data_utils/lip_codes.py): in training the target's own, which the audio "
                             "learns to predict, at inference the prediction (default %d: none; 2: opening and "
                             "width); the checkpoint records it" % LIP_CODE_DIMS)
    losses.add_argument("--lip_code_weight", type=float, default=LIP_CODE_WEIGHT,
                        help=f"weight of the audio's lip-code prediction error in the loss (default "
                             f"{LIP_CODE_WEIGHT:g}; used with --lip_code_dims)")
    losses.add_argument("--head_levels", type=int, default=HEAD_LEVELS,
                        help=f"decoder stages, from the full-resolution one down, whose outputs the colour head "
                             f"reads, the coarser upsampled (1-{DOWNSAMPLINGS}, 1: the full-resolution one alone; "
                             f"default {HEAD_LEVELS}); the checkpoint records it")
    losses.add_argument("--ema_decay", type=float, default=EMA_DECAY,
                        help=f"validate and save an exponential moving average of the weights over the optimizer "
                             f"steps, each step keeping this share of it (e.g. 0.995: about the last 200 steps); "
                             f"training itself is unchanged (default {EMA_DECAY:g}: the last step's weights)")
    losses.add_argument("--syncnet_checkpoint",
                        help="SyncNet .pth (default: checkpoint/NAME/syncnet/best.pth)")
    losses.add_argument("--perceptual", choices=PERCEPTUAL_MODES, default=TrainConfig.perceptual,
                        help="VGG19 perceptual loss: auto (if the torchvision weights are cached, "
                             "else a warning) | on (error without them) | off")
    losses.add_argument("--vgg_weights", help="VGG19 IMAGENET1K_V1 .pth (default: torch's hub cache)")
    losses.add_argument("--see_res", action="store_true",
                        help="write samples/epoch_N.png: reference | masked | prediction | truth")
    return parser


def build_syncnet_parser(description: str) -> argparse.ArgumentParser:
    """train_syncnet.py's command line: the shared options with SyncNet's defaults."""
    return build_parser(description, batch_size=SYNCNET_BATCH_SIZE, lr=SYNCNET_LR, epochs=SYNCNET_EPOCHS,
                        save_interval=SYNCNET_SAVE_INTERVAL)


def paths_from_args(args, subdir: Optional[str] = None):
    """Fill args.dataset_dir / args.save_dir from --name (or the dataset folder's name)."""
    dataset_dir = chosen_dataset_dir(args.name, args.dataset_dir, "train")
    save_dir = Path(args.save_dir) if args.save_dir else checkpoint_dir(args.name or dataset_dir.name)
    if subdir and not args.save_dir:
        save_dir = save_dir / subdir
    args.dataset_dir, args.save_dir = dataset_dir, save_dir
    args.show_progress = not args.quiet
    return args
