"""Carry a processed dataset to a machine without network, mediapipe or FFmpeg.

    python data_utils/bundle.py pack dataset/May                # -> dataset/May.bundle.tar
    python data_utils/bundle.py pack dataset/May --crops_only   # -> dataset/May.crops.bundle.tar (328 crops only)
    python data_utils/bundle.py unpack May.bundle.tar           # -> dataset/May, ready to train

The bundle holds the 25 fps video, landmarks, crop boxes, face_found, aud.wav, the
audio features, ave.pth and the process report, with a checksum per file; unpack
decodes the frames again (FFmpeg, or OpenCV's decoder where there is no FFmpeg).
What travels is data_utils/bundling.py; the file format data_utils/bundle_format.py.
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_utils.bundling import pack, unpack  # noqa: E402
from data_utils.timebase import ASR_CHOICES  # noqa: E402
from lipsync.core.commands import shell_command  # noqa: E402
from lipsync.core.console import configure_console_logging  # noqa: E402
from lipsync.core.errors import exit_on_user_error  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{pack,unpack}")
    packing = commands.add_parser("pack", help="processed dataset folder -> one .bundle.tar")
    packing.add_argument("dataset_dir", help="processed dataset folder, e.g. dataset/May")
    packing.add_argument("--output", help="bundle file (default: DATASET_DIR.bundle.tar beside the folder)")
    packing.add_argument("--crops_only", action="store_true",
                         help="carry the 328x328 model crops instead of the full frames (small for any "
                              "resolution; inference then renders the crops, not the full frame)")
    packing.add_argument("--asr", choices=ASR_CHOICES, action="append",
                         help="features to carry (repeatable; default: every aud_<asr>.npy the folder has)")
    packing.add_argument("--quiet", action="store_true", help="no progress bars")
    unpacking = commands.add_parser("unpack", help=".bundle.tar -> dataset folder ready to train")
    unpacking.add_argument("bundle", help="the .bundle.tar file")
    unpacking.add_argument("--output_dir", help="dataset folder to create (default: dataset/NAME)")
    unpacking.add_argument("--force", action="store_true", help="replace an existing folder")
    unpacking.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    configure_console_logging(args.quiet)
    if args.command == "pack":
        bundle = pack(args.dataset_dir, args.output, crops_only=args.crops_only, asr=args.asr,
                      show_progress=not args.quiet)
        print(f"bundle ready: {bundle} ({bundle.stat().st_size / 1e6:.1f} MB) — on the training machine run: "
              f"{shell_command('python', 'data_utils/bundle.py', 'unpack', bundle.name)}")
        return bundle
    result = unpack(args.bundle, args.output_dir, force=args.force, show_progress=not args.quiet)
    if result.skipped:
        print(f"{result.dataset} is already unpacked from {Path(args.bundle).name} — skipping "
              "(--force unpacks it again)")
    else:
        kind = "328x328 crops" if result.crops_only else "frames"
        print(f"dataset ready: {result.dataset} — {result.frames} {kind} (decoded by {result.decoder}); "
              f"train: python train_328.py --dataset_dir {result.dataset}")
    return result


if __name__ == "__main__":
    main()
