"""Train SyncNet, the judge of lip sync, on one person's processed recording.

    python train_syncnet.py --name May --asr ave     # dataset/May -> checkpoint/May/syncnet/best.pth

Each face is shown with its own audio window (in sync) and with the window of a
frame at least 5 frames away (off sync); held-out sync accuracy is logged every
epoch. train_328.py --use_syncnet then uses checkpoint/NAME/syncnet/best.pth.
The work lives in lipsync/train/ (run.py -> trainer.py's Trainer with
syncnet_task.py's pairs; options.py holds every option) and models/syncnet.py.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (also under torchrun): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipsync.core.checkpoints import SYNCNET_SUBDIR  # noqa: E402
from lipsync.core.commands import continue_training  # noqa: E402
from lipsync.core.console import configure_console_logging  # noqa: E402
from lipsync.core.errors import exit_on_user_error  # noqa: E402
from lipsync.train.options import TrainConfig, build_syncnet_parser, paths_from_args  # noqa: E402
from lipsync.train.run import train_syncnet  # noqa: E402


@exit_on_user_error(how_to_continue=continue_training("train_syncnet.py"))
def main(argv=None, callbacks=()):
    args = paths_from_args(build_syncnet_parser(__doc__).parse_args(argv), subdir=SYNCNET_SUBDIR)
    configure_console_logging(args.quiet)
    return train_syncnet(TrainConfig.from_args(args), callbacks)


if __name__ == "__main__":
    main()
