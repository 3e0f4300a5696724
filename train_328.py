"""Train the 328 lip-sync U-Net on one person's processed recording.

    python train_328.py --name May --asr ave                 # dataset/May -> checkpoint/May/10.pth, ...
    python train_328.py --name May --asr ave --use_syncnet   # + sync loss from checkpoint/May/syncnet/best.pth
    torchrun --nproc_per_node 4 train_328.py --name May --asr ave   # several GPUs
    python train_328.py --name May --asr ave --resume        # continue an interrupted run

The work lives in lipsync/train/ (run.py -> trainer.py's Trainer with
unet_task.py's losses; options.py holds every option) and models/unet_328.py
(the network).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (also under torchrun): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipsync.core.commands import continue_training  # noqa: E402
from lipsync.core.console import configure_console_logging  # noqa: E402
from lipsync.core.errors import exit_on_user_error  # noqa: E402
from lipsync.train.options import TrainConfig, build_unet_parser, paths_from_args  # noqa: E402
from lipsync.train.run import train_unet  # noqa: E402


@exit_on_user_error(how_to_continue=continue_training("train_328.py"))
def main(argv=None, callbacks=()):
    args = paths_from_args(build_unet_parser(__doc__).parse_args(argv))
    configure_console_logging(args.quiet)
    return train_unet(TrainConfig.from_args(args), callbacks)


if __name__ == "__main__":
    main()
