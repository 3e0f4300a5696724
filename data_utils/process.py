"""Preprocess a recording into a training-ready dataset folder.

    python data_utils/process.py --input_video dataset/May/May.mp4 --output_dir dataset/May
    python data_utils/process.py dataset/May/May.mp4          # same thing
"""
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_utils.options import PreprocessOptions, build_parser  # noqa: E402
from data_utils.preprocess import process_video  # noqa: E402
from lipsync.core.console import configure_console_logging  # noqa: E402
from lipsync.core.errors import UserError, exit_on_user_error  # noqa: E402


@exit_on_user_error
def main(argv=None) -> dict:
    args = build_parser(__doc__).parse_args(argv)
    if args.video and args.input_video and Path(args.video) != Path(args.input_video):
        raise UserError("give the video once: either as the argument or as --input_video")
    video = args.video or args.input_video
    if not video:
        raise UserError("no video given — usage: python data_utils/process.py dataset/NAME/NAME.mp4")
    options = PreprocessOptions.from_args(args)
    configure_console_logging(options.quiet)
    report = process_video(video, args.output_dir, **options.process_video_arguments())
    missing = report["missing_face"]
    print(f"dataset ready: {Path(args.output_dir or Path(video).parent)} — {report['frames']} frames "
          f"({report['duration_s']:.2f} s at {report['fps']} fps), faces interpolated in "
          f"{missing['count']} frames; report: process_report.json")
    if not args.quiet:
        print(json.dumps(report["stage_seconds"]))
    return report


if __name__ == "__main__":
    main()
