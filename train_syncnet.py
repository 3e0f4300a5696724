"""Train SyncNet, the judge of lip sync, on one person's processed recording.

    python train_syncnet.py --name May --asr ave     # dataset/May -> checkpoint/May/syncnet/best.pth

Each face is shown with its own audio window (in sync) and with the window of a
frame at least 5 frames away (off sync); held-out sync accuracy is logged every
epoch. train_328.py --use_syncnet then uses checkpoint/NAME/syncnet/best.pth.
The work lives in lipsync/train/trainer.py (SyncNetTask) and models/syncnet.py.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (also under torchrun): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipsync.core.checkpoints import SYNCNET_SUBDIR  # noqa: E402
from lipsync.core.errors import exit_on_user_error  # noqa: E402
from lipsync.train.trainer import (TrainConfig, build_parser, configure_console_logging,  # noqa: E402
                                 paths_from_args, train_syncnet)

# SyncNet sees one small mouth band per sample: bigger batches, more epochs than the U-Net.
SYNCNET_BATCH_SIZE = 32
SYNCNET_LR = 1e-4
SYNCNET_EPOCHS = 50
SYNCNET_SAVE_INTERVAL = 10


def parser():
    return build_parser(__doc__, batch_size=SYNCNET_BATCH_SIZE, lr=SYNCNET_LR, epochs=SYNCNET_EPOCHS,
                        save_interval=SYNCNET_SAVE_INTERVAL)


@exit_on_user_error
def main(argv=None, callbacks=()):
    args = paths_from_args(parser().parse_args(argv), subdir=SYNCNET_SUBDIR)
    configure_console_logging(args.quiet)
    return train_syncnet(TrainConfig.from_args(args), callbacks)


if __name__ == "__main__":
    main()
