"""Does the --mouth_scale the held-out tail suggests put the mouth right on speech the model never heard?

    python benchmarks/mouth_scale_calibration.py --name talker_a \\
        --syncnet_checkpoint checkpoint/talker_a/syncnet/best.pth \\
        --heldout_audio ../shared/fixtures/talker_a/heldout_a.wav \\
        --truth_video ../shared/fixtures/talker_a/heldout_a_truth.mp4 \\
        --runs default_s0=benchmarks/ablation_out/edges_s0/adaptive_r3_lips4_edges/run ...

evaluate_328.py judges a run's mouth motion against the truth (lipsync/evaluate/motion_check.py):
on the recording's held-out tail, a run that times the mouth but opens it too wide or too little is
told the --mouth_scale that would have matched the truth there. This measures whether that scale,
found on the person's own tail, carries over to new speech. For each run, the mean over its last
--score_last epochs: the tail's r and opening ratio and the suggestion; then the new speech scored
against its true video at scale 1 and at the suggested scale (opening r and ratio, mouth PSNR, LMD).
A run made by benchmarks/ablate_objective.py has its scale-1 scores of that speech beside it
(RUN/../evaluation/scores.json, same audio, default rendering); they are reused, not re-rendered.
Prints a markdown table and writes OUT/calibration.json.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks.ablate_objective import evaluation_arguments, summary  # noqa: E402
from data_utils.layout import chosen_dataset_dir  # noqa: E402
from lipsync.core import checkpoints as ckpt  # noqa: E402
from lipsync.core.atomic import write_json_atomic  # noqa: E402
from lipsync.core.console import configure_console_logging  # noqa: E402
from lipsync.core.errors import UserError, exit_on_user_error  # noqa: E402
from lipsync.evaluate.evaluation import evaluate  # noqa: E402
from lipsync.evaluate.options import EvalOptions  # noqa: E402
from lipsync.evaluate.options import build_parser as evaluation_parser  # noqa: E402
from lipsync.evaluate.results import finite_or_none  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "calibration_out"
DEFAULT_SCORE_LAST = 3          # as the ablation harness: one epoch's motion swings as much as a change of objective
SHOWN = ("opening_correlation", "opening_ratio", "mouth_psnr", "lmd")


def scores_of(report: Dict) -> Dict:
    """The scored epochs' mean, or the one epoch's scores (as the ablation harness reads them)."""
    return summary(report)[0]


def evaluation(options, run_dir: Path, output_dir: Path, new_speech: bool, mouth_scale: float = 1.0) -> Dict:
    argv = evaluation_arguments(options, run_dir, output_dir, new_speech) + ["--mouth_scale", str(mouth_scale)]
    if not new_speech and options.val_fraction is not None:
        argv += ["--val_fraction", str(options.val_fraction)]
    return evaluate(EvalOptions.from_args(evaluation_parser().parse_args(argv)))


def harness_scores(run_dir: Path, audio: Path, score_last: int) -> Optional[Dict]:
    """The ablation harness's own scale-1 scoring of this run on ``audio``, when it made one."""
    try:
        report = json.loads((run_dir.parent / "evaluation" / "scores.json").read_text())
    except (OSError, ValueError):
        return None
    scored = [entry.get("epoch") for entry in report.get("checkpoints", [])]
    same = (Path(report.get("audio", "")).resolve() == audio.resolve() and not report.get("render_options")
            and report.get("truth") and scored == sorted(ckpt.numbered_epochs(run_dir))[-score_last:])
    return report if same else None


def calibrate(label: str, run_dir: Path, options) -> Dict:
    out = options.output_dir / label
    tail = evaluation(options, run_dir, out / "tail", new_speech=False)
    row = {"run": label, "checkpoints": str(run_dir), "tail": {name: scores_of(tail).get(name) for name in SHOWN},
           "motion_check": tail["motion_check"]}
    unscaled = harness_scores(run_dir, options.heldout_audio, options.score_last)
    row["unscaled_reused"] = unscaled is not None
    if unscaled is None:
        unscaled = evaluation(options, run_dir, out / "new_speech_scale_1", new_speech=True)
    row["new_speech"] = {name: scores_of(unscaled).get(name) for name in SHOWN}
    scale = (tail["motion_check"] or {}).get("suggested_mouth_scale")
    row["suggested_mouth_scale"] = scale
    if scale is not None:
        scaled = evaluation(options, run_dir, out / f"new_speech_scale_{scale:g}", new_speech=True, mouth_scale=scale)
        row["new_speech_scaled"] = {name: scores_of(scaled).get(name) for name in SHOWN}
    return row


def cell(value, digits: int = 2) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def table(rows: List[Dict]) -> str:
    lines = ["| run | tail r | tail ratio | suggested --mouth_scale | new speech r | ratio | mouth PSNR | LMD "
             "| scaled: r | ratio | mouth PSNR | LMD |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        tail, new, scaled = row["tail"], row["new_speech"], row.get("new_speech_scaled") or {}
        lines.append(" | ".join([
            f"| {row['run']}", cell(tail["opening_correlation"]), cell(tail["opening_ratio"]),
            cell(row["suggested_mouth_scale"]) if row["suggested_mouth_scale"] else "none",
            cell(new["opening_correlation"]), cell(new["opening_ratio"]), cell(new["mouth_psnr"]),
            cell(new["lmd"], 4), cell(scaled.get("opening_correlation")), cell(scaled.get("opening_ratio")),
            cell(scaled.get("mouth_psnr")), cell(scaled.get("lmd"), 4)]) + " |")
    return "\n".join(lines)


def labelled_run(text: str):
    label, separator, path = text.partition("=")
    if not separator or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=RUN_DIR, got {text!r}")
    return label, Path(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="the person: dataset/NAME")
    parser.add_argument("--dataset_dir", type=Path, help="processed recording (default: dataset/NAME)")
    parser.add_argument("--syncnet_checkpoint", type=Path, required=True)
    parser.add_argument("--heldout_audio", type=Path, required=True, help="speech none of the runs trained on")
    parser.add_argument("--truth_video", type=Path, required=True, help="the person really speaking it")
    parser.add_argument("--runs", type=labelled_run, nargs="+", required=True, metavar="LABEL=RUN_DIR",
                        help="training runs (folders of numbered epoch checkpoints)")
    parser.add_argument("--score_last", type=int, default=DEFAULT_SCORE_LAST,
                        help=f"epochs scored per run, their mean reported (default {DEFAULT_SCORE_LAST})")
    parser.add_argument("--val_fraction", type=float,
                        help="the held-out tail the scale is found on (default: what each run was trained with)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    return parser


@exit_on_user_error
def main(argv=None) -> List[Dict]:
    options = build_parser().parse_args(argv)
    options.dataset_dir = chosen_dataset_dir(options.name, options.dataset_dir, "calibrate")
    for path in (options.heldout_audio, options.truth_video, options.syncnet_checkpoint,
                 *(run for _, run in options.runs)):
        if not path.exists():
            raise UserError(f"{path} does not exist")
    configure_console_logging()
    torch.set_num_threads(options.threads)
    rows = []
    for label, run_dir in options.runs:
        rows.append(calibrate(label, run_dir, options))
        write_json_atomic(options.output_dir / "calibration.json", finite_or_none(rows))    # a finished run stays
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
