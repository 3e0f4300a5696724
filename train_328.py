"""Train the 328 lip-sync U-Net on one person's processed recording.

    python train_328.py --name May --asr ave                 # dataset/May -> checkpoint/May/10.pth, ...
    python train_328.py --name May --asr ave --use_syncnet   # + sync loss from checkpoint/May/syncnet/best.pth
    torchrun --nproc_per_node 4 train_328.py --name May --asr ave   # several GPUs
    python train_328.py --name May --asr ave --resume        # continue an interrupted run

The work lives in lipsync/train/trainer.py (Trainer, losses, checkpoints) and
models/unet_328.py (the network).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (also under torchrun): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipsync.core.errors import exit_on_user_error  # noqa: E402
from lipsync.train.trainer import (SYNC_WEIGHT, TrainConfig, build_parser, configure_console_logging,  # noqa: E402
                                 paths_from_args, train_unet)
from models.perceptual import PERCEPTUAL_MODES  # noqa: E402


def parser():
    result = build_parser(__doc__, batch_size=8, lr=1e-4, epochs=200, save_interval=10)
    losses = result.add_argument_group("losses and outputs")
    losses.add_argument("--use_syncnet", action="store_true",
                        help="add the SyncNet sync loss (x --sync_weight)")
    losses.add_argument("--sync_weight", type=float, default=SYNC_WEIGHT,
                        help=f"weight of the sync loss against L1 (default {SYNC_WEIGHT:g}, as in SyncTalk_2D; "
                             "lower it if the mouth region gets smudged)")
    losses.add_argument("--syncnet_checkpoint",
                        help="SyncNet .pth (default: checkpoint/NAME/syncnet/best.pth)")
    losses.add_argument("--perceptual", choices=PERCEPTUAL_MODES, default="auto",
                        help="VGG19 perceptual loss: auto (if the torchvision weights are cached, "
                             "else a warning) | on (error without them) | off")
    losses.add_argument("--vgg_weights", help="VGG19 IMAGENET1K_V1 .pth (default: torch's hub cache)")
    losses.add_argument("--see_res", action="store_true",
                        help="write samples/epoch_N.png: reference | masked | prediction | truth")
    return result


@exit_on_user_error
def main(argv=None, callbacks=()):
    args = paths_from_args(parser().parse_args(argv))
    configure_console_logging(args.quiet)
    return train_unet(TrainConfig.from_args(args), callbacks)


if __name__ == "__main__":
    main()
