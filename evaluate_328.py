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
the person speaking that audio (framed like the recording). With a truth, the
table shows the measures against it first; the SyncNet and loudness scores,
which need none, follow marked "(no truth)". Without mediapipe the landmark
measures (LMD, mouth opening) are n/a, the others are still made.

Tables, JSON, side-by-side videos and PNG strips go to
checkpoint/NAME/evaluation/. The work lives in lipsync/evaluate/ (evaluation.py runs it,
options.py holds EvalOptions and this parser); this script only parses options.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipsync.core.console import configure_console_logging  # noqa: E402
from lipsync.core.errors import exit_on_user_error  # noqa: E402
from lipsync.evaluate.evaluation import evaluate  # noqa: E402
from lipsync.evaluate.options import EvalOptions, build_parser  # noqa: E402


@exit_on_user_error
def main(argv=None) -> dict:
    args = build_parser(__doc__).parse_args(argv)
    configure_console_logging()
    report = evaluate(EvalOptions.from_args(args))
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
