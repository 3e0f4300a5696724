"""Score a person's checkpoints and pick the best one.

    python evaluate_328.py --name May                  # every checkpoint on the held-out tail -> best.pth
    python evaluate_328.py --name May --checkpoint 120 --audio_path other_speaker.wav

Held-out tail (default): each checkpoint re-renders the last --val_fraction of
the recording (the part training held out) from its own audio, and is compared
with the real frames: PSNR/SSIM (frame and mouth), LMD, mouth-opening
correlation and offset, SyncNet distance/confidence, stability. When every
checkpoint was scored, checkpoint/NAME/best.pth becomes the winner by
--select_by (inference_328.py --checkpoint best).
New audio (--audio_path): no ground truth, so SyncNet distance/confidence and
mouth opening against loudness only, unless --truth_video is a real video of
the person speaking that audio (framed like the recording).

Tables, JSON, side-by-side videos and PNG strips go to
checkpoint/NAME/evaluation/. The work lives in lipsync/evaluate/evaluation.py.
"""
import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipsync.core.errors import exit_on_user_error  # noqa: E402
from lipsync.evaluate.evaluation import (DEFAULT_BATCH_SIZE, DEFAULT_SELECT_BY, SELECTION_METRICS,  # noqa: E402
                                   EvalOptions, evaluate)
from data_utils.layout import CHECKPOINT_ROOT, DATASET_ROOT  # noqa: E402

DEVICES = ("auto", "cpu", "cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="the person: dataset/NAME and checkpoint/NAME")
    parser.add_argument("--dataset_dir", help="processed recording (default: dataset/NAME)")
    parser.add_argument("--checkpoint_dir", help="the run's checkpoints (default: checkpoint/NAME)")
    parser.add_argument("--checkpoint", help="score only this one: an epoch number, best, latest or a .pth path "
                                             "(default: every numbered epoch, and best.pth is chosen)")
    parser.add_argument("--audio_path", help="new audio without ground truth (default: the held-out tail)")
    parser.add_argument("--truth_video", help="a 25 fps video of the person really speaking --audio_path, framed "
                                              "like the recording: every held-out measure is made against it")
    parser.add_argument("--start_frame", type=int, default=0, help="recording frame --audio_path starts from")
    parser.add_argument("--val_fraction", type=float,
                        help="held-out tail of the recording (default: what the run was trained with, else 0.05)")
    parser.add_argument("--select_by", choices=tuple(SELECTION_METRICS), default=DEFAULT_SELECT_BY,
                        help=f"metric best.pth is chosen by (default {DEFAULT_SELECT_BY})")
    parser.add_argument("--no_select", action="store_true", help="score only; leave best.pth as it is")
    parser.add_argument("--syncnet_checkpoint",
                        help="SyncNet for LSE-D/LSE-C (default: checkpoint/NAME/syncnet/best.pth when it exists)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="frames per model call")
    render = parser.add_argument_group("rendering (as inference_328.py; scores the video those options give)")
    render.add_argument("--no_silence_hold", action="store_true", help="keep painting the mouth during pauses")
    render.add_argument("--mouth_scale", type=float, default=1.0, help="> 1 opens the mouth wider, < 1 less")
    render.add_argument("--colour_match", "--color_match", dest="colour_match", action="store_true",
                        help="match the generated region's colours to the frame before pasting")
    parser.add_argument("--output_dir", help="where tables, videos and strips go "
                                             "(default: checkpoint/NAME/evaluation/heldout or audio_STEM)")
    parser.add_argument("--no_video", action="store_true", help="no side-by-side videos (faster)")
    parser.add_argument("--force", action="store_true", help="re-score checkpoints whose scores are cached")
    parser.add_argument("--ave_checkpoint", help="AVE encoder for --asr ave (default: the one training used)")
    parser.add_argument("--hubert_model", help="HuBERT folder or hub id (default: the one training used)")
    parser.add_argument("--wenet_model", help="WeNet encoder ONNX (default: the one training used)")
    parser.add_argument("--dataset_root", default=str(DATASET_ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint_root", default=str(CHECKPOINT_ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def options_from_args(args) -> EvalOptions:
    def path(value):
        return Path(value) if value else None

    render_options = {}
    if args.no_silence_hold:
        render_options["silence_hold"] = False
    if args.mouth_scale != 1.0:
        render_options["mouth_scale"] = args.mouth_scale
    if args.colour_match:
        render_options["colour_match"] = True
    return EvalOptions(
        name=args.name, dataset_dir=path(args.dataset_dir), checkpoint_dir=path(args.checkpoint_dir),
        checkpoint=args.checkpoint, audio_path=path(args.audio_path), truth_video=path(args.truth_video),
        start_frame=args.start_frame,
        val_fraction=args.val_fraction, select_by=args.select_by, select=not args.no_select,
        syncnet_checkpoint=path(args.syncnet_checkpoint), device=args.device, batch_size=args.batch_size,
        render_options=render_options,
        output_dir=path(args.output_dir), write_video=not args.no_video, force=args.force,
        ave_checkpoint=path(args.ave_checkpoint), hubert_model=args.hubert_model,
        wenet_model=path(args.wenet_model), dataset_root=Path(args.dataset_root),
        checkpoint_root=Path(args.checkpoint_root), show_progress=not args.quiet)


@exit_on_user_error
def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    report = evaluate(options_from_args(args))
    print()
    print(report["table"])
    print()
    print(f"scores: {Path(report['output_dir']) / 'scores.json'} (table: table.md)")
    if report.get("strip"):
        print(f"frames: {report['strip']}")
    videos = [entry["side_by_side"] for entry in report["checkpoints"] if entry.get("side_by_side")]
    if videos:
        print(f"side-by-side videos: {videos[-1]}" + (f" and {len(videos) - 1} more" if len(videos) > 1 else ""))
    if report.get("best"):
        print(f"best.pth: epoch {report['best']['epoch']} -> {report['best']['path']}")
    return report


if __name__ == "__main__":
    main()
