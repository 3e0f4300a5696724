"""Preprocess a recording into a training-ready dataset folder.

    python data_utils/process.py --input_video dataset/May/May.mp4 --output_dir dataset/May
    python data_utils/process.py dataset/May/May.mp4          # same thing
"""
import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipsync.core.errors import UserError, exit_on_user_error  # noqa: E402
from data_utils.landmarks import BACKENDS  # noqa: E402
from data_utils.preprocess import (MAX_MISSING_FACE_FRACTION, MAX_MISSING_FACE_SECONDS,  # noqa: E402
                                   process_video)
from data_utils.timebase import ASR_CHOICES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", help="the recording (same as --input_video)")
    parser.add_argument("--input_video", help="the recording, e.g. dataset/May/May.mp4")
    parser.add_argument("--output_dir", help="dataset folder (default: the video's folder)")
    parser.add_argument("--asr", choices=ASR_CHOICES, default=None,
                        help="also compute audio features for this encoder (default: none)")
    parser.add_argument("--landmarks", choices=BACKENDS, default="mediapipe",
                        help="landmark detector (face_alignment needs its weights already downloaded)")
    parser.add_argument("--ave_checkpoint", help="pretrained AVE weights (otherwise learned from the recording)")
    parser.add_argument("--hubert_model", help="HuBERT model: local folder or hub id")
    parser.add_argument("--wenet_model", help="WeNet encoder exported to ONNX")
    parser.add_argument("--device", default="cpu", help="device for audio features: cpu | cuda (default cpu)")
    parser.add_argument("--max_missing_fraction", type=float, default=MAX_MISSING_FACE_FRACTION,
                        help="stop if more than this fraction of frames has no face (default %(default)s)")
    parser.add_argument("--max_missing_seconds", type=float, default=MAX_MISSING_FACE_SECONDS,
                        help="stop if the face is missing longer than this in a row (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="redo every stage")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


@exit_on_user_error
def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.video and args.input_video and Path(args.video) != Path(args.input_video):
        raise UserError("give the video once: either as the argument or as --input_video")
    video = args.video or args.input_video
    if not video:
        raise UserError("no video given — usage: python data_utils/process.py dataset/NAME/NAME.mp4")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    feature_options = {key: getattr(args, key) for key in ("ave_checkpoint", "hubert_model", "wenet_model")
                       if getattr(args, key)}
    if args.asr:
        feature_options["device"] = args.device
    report = process_video(video, args.output_dir, asr=args.asr, landmarks_backend=args.landmarks,
                           force=args.force, feature_options=feature_options,
                           show_progress=not args.quiet, max_missing_fraction=args.max_missing_fraction,
                           max_missing_seconds=args.max_missing_seconds)
    missing = report["missing_face"]
    print(f"dataset ready: {Path(args.output_dir or Path(video).parent)} — {report['frames']} frames "
          f"({report['duration_s']:.2f} s at {report['fps']} fps), faces interpolated in "
          f"{missing['count']} frames; report: process_report.json")
    if not args.quiet:
        print(json.dumps(report["stage_seconds"]))
    return report


if __name__ == "__main__":
    main()
