"""The GPU check: does everything work on CUDA, and how fast is it? One command, under 9 minutes.

    bash benchmarks/gpu_check.sh NAME                    # dataset/NAME on the GPU box
    bash benchmarks/gpu_check.sh talker_a --heldout_audio heldout_a.wav --truth_video heldout_a_truth.mp4
    bash benchmarks/gpu_check.sh NAME --smoke            # no GPU: the same parts on the CPU, tiny, ~1 minute

Parts, run one after another, each a subprocess with a share of the time budget;
a part that fails is recorded with a one-line reason and the check goes on:

    cuda_tests  pytest -m cuda tests/test_cuda.py (AMP + GradScaler + accumulation,
                channels_last, fp16 against fp32, DDP + SyncBatchNorm on NCCL, resume)
    throughput  benchmarks/bench_train.py: training samples/s at full, base and mobile width,
                AMP off and on, and the hours 200 epochs of a 5-minute recording take
    inference   benchmarks/bench_inference.py: end to end frames/s for torch fp32,
                torch fp16 and onnxruntime; model-only frames/s at batch 1/8/32
    serve       benchmarks/bench_serve.py when the file exists ("not present" otherwise)
    training    train_syncnet.py, then train_328.py --use_syncnet at full width, each
                time-boxed with --max_minutes from what is left of the budget, then
                evaluate_328.py on the held-out audio against its true video
                (mouth PSNR, LMD, opening r, offset, opening ratio)

Training runs last so it gets whatever time the others left; the report lists the
parts in the issue's order. Writes OUTPUT_DIR/results.json and results.md
(default benchmarks/gpu_check_out/NAME), the logs of every subprocess in
OUTPUT_DIR/logs/, prints the table; exit status 0 only when no part failed.
"""
import argparse
import json
import os
import platform
import shutil
import sys
import tarfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.gpu_check_parts import (GPU, MIN_PART_SECONDS, REASON_CHARS, SMOKE, Check,
                                        PartFailed, cuda_tests, inference, predicted_epoch_seconds, serve,
                                        throughput, training)
from data_utils.dataset import DEFAULT_VAL_FRACTION
from data_utils.layout import DATASET_ROOT, DatasetLayout
from lipsync.core.errors import UserError, exit_on_user_error
from lipsync.evaluate.results import finite_or_none

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT_ROOT = REPO_ROOT / "benchmarks" / "gpu_check_out"
BUDGET_MINUTES = 8.5             # the whole check; the GPU box allows one command 9 minutes
PARTS_IN_ISSUE_ORDER = ("cuda_tests", "throughput", "training", "inference", "serve")
TRAINING_RESERVE_SECONDS = 240   # kept for the training part (last) whatever the others take


@dataclass
class Part:
    """One part's outcome as results.json keeps it."""
    name: str
    status: str = "not run"      # passed | failed | skipped | not present
    reason: str = ""
    seconds: float = 0.0
    figures: Dict = field(default_factory=dict)


class Budget:
    """The check's deadline; each part gets its planned time or what is left, whichever is less."""

    def __init__(self, minutes: float):
        self.deadline = time.monotonic() + 60 * minutes

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allow(self, planned: float, reserve: float = 0.0) -> float:
        """Seconds a part may take: ``planned``, or what is left after ``reserve``, whichever is less."""
        return max(0.0, min(planned, self.left() - reserve))


# --------------------------------------------------------------------------- the whole check

def run_part(check: Check, budget: Budget, name: str, work, planned: float, reserve: float = 0.0) -> Part:
    """``work(check, seconds)`` as part ``name``: its figures, or failed with its one-line reason."""
    part = Part(name)
    started = time.monotonic()
    seconds = budget.allow(planned, reserve)
    print(f"== {name} ({seconds:.0f} s of {budget.left():.0f} s left)", flush=True)
    try:
        if seconds < MIN_PART_SECONDS:
            raise PartFailed(f"only {seconds:.0f} s of the budget left")
        part.figures = work(check, seconds)
        part.status = part.figures.pop("status", None) or ("skipped" if "skipped" in part.figures else "passed")
        part.reason = part.figures.get("skipped", "")
    except PartFailed as error:
        part.status, part.reason = "failed", str(error.args[0])[:4 * REASON_CHARS]
        part.figures = error.args[1] if len(error.args) > 1 else {}
    except Exception as error:  # a bug or a surprise in one part must not cost the others their figures
        part.status, part.reason = "failed", f"{type(error).__name__}: {error}"[:REASON_CHARS]
        check.logs.mkdir(parents=True, exist_ok=True)
        (check.logs / f"{name}_error.log").write_text(traceback.format_exc())
    part.seconds = time.monotonic() - started
    print(f"   {name}: {part.status}" + (f" — {part.reason}" if part.reason else ""), flush=True)
    return part


def run_check(check: Check, budget: Budget) -> Dict[str, Part]:
    """Every part in turn, training last with what is left; returned in the issue's order."""
    mode, plan = check.mode, check.mode.planned_seconds
    parts: Dict[str, Part] = {}
    if mode.device == "cuda" and not torch.cuda.is_available():
        reason = (f"no CUDA device (torch {torch.__version__} built for CUDA {torch.version.cuda}, "
                  "torch.cuda.is_available() is False) — without a GPU run: bash benchmarks/gpu_check.sh NAME --smoke")
        return {name: Part(name, "failed", reason) for name in PARTS_IN_ISSUE_ORDER}
    for name, work in (("cuda_tests", cuda_tests), ("throughput", throughput), ("inference", inference),
                       ("serve", serve)):
        parts[name] = run_part(check, budget, name, work, plan[name], TRAINING_RESERVE_SECONDS)
    epoch_seconds = predicted_epoch_seconds(check, parts["throughput"].figures)
    parts["training"] = run_part(check, budget, "training", lambda c, s: training(c, s, epoch_seconds),
                                 budget.left())
    return {name: parts[name] for name in PARTS_IN_ISSUE_ORDER}


def machine() -> Dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu}


def number(value, pattern: str = "{:.1f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def markdown(results: Dict) -> str:
    """The results as markdown: one row per part, then each part's figures."""
    parts = results["parts"]
    lines = [f"# GPU check: {results['name']} ({results['mode']})", "",
             f"{results['machine']['gpu'] or 'no GPU'}; torch {results['machine']['torch']}; "
             f"{results['machine']['cpus']} CPUs; {results['seconds']:.0f} s in all", "",
             "| part | status | seconds | note |", "|---|---|---:|---|"]
    for name, part in parts.items():
        lines.append(f"| {name} | {part['status']} | {part['seconds']:.0f} | {part['reason'] or ''} |")
    tests = parts["cuda_tests"]["figures"].get("tests", {})
    if tests:
        lines += ["", "| CUDA test | outcome | note |", "|---|---|---|"]
        lines += [f"| {name} | {test['outcome']} | {test['reason']} |" for name, test in tests.items()]
    rows = parts["throughput"]["figures"].get("rows", [])
    if rows:
        lines += ["", "| training step | batch | AMP | samples/s | peak MB | hours, 200 epochs of 5 min |",
                  "|---|---:|---|---:|---:|---:|"]
        lines += [f"| {row['model_size']} on {row['device_name']} | {row['batch_size']} | "
                  f"{'on' if row['amp'] else 'off'} | {number(row['samples_per_s'])} | "
                  f"{number(row['peak_memory_mb'], '{:.0f}')} | {number(row['hours_5min_200_epochs'], '{:.2f}')} |"
                  for row in rows]
    trained = parts["training"]["figures"]
    stages = [(label, trained[key]) for label, key in (("SyncNet", "syncnet"), ("U-Net", "unet")) if key in trained]
    if stages:
        lines += ["", "| training | epochs | stopped by | samples/s | last held-out |", "|---|---:|---|---:|---|"]
        lines += [f"| {label} | {stage['epochs']} | {stage['stopped_by']} (--max_minutes {stage['max_minutes']}) | "
                  f"{number(stage['samples_per_s'])} | " +
                  ", ".join(f"{key} {value:.4f}" for key, value in stage["last"].items()
                            if key.startswith("val_") and value is not None) + " |" for label, stage in stages]
    if "evaluation" in trained:
        scores = trained["evaluation"]["scores"]
        lines += ["", f"Evaluation on {trained['evaluation']['against']} ({trained['evaluation']['frames']} frames):",
                  "", "| " + " | ".join(scores) + " |", "|" + "---:|" * len(scores),
                  "| " + " | ".join(number(value, "{:.4g}") for value in scores.values()) + " |"]
    readout = trained.get("audio_readout")
    if readout:
        said = readout.get("failed") or (
            f"opening r {number(readout['opening_correlation'], '{:.2f}')} at offset "
            f"{number(readout['opening_offset'], '{:+.0f}')}, ratio {number(readout['opening_ratio'], '{:.2f}')}")
        lines += ["", f"Read-out of the trained audio embedding (benchmarks/audio_readout.py): {said}"]
    served = parts["inference"]["figures"]
    if served.get("end_to_end") or served.get("model_only"):
        lines += ["", f"| inference ({served.get('model_size')}) | frames/s | note |", "|---|---:|---|"]
        lines += [f"| end to end, {backend} | {number(row['frames_per_second'])} | {row['note'] or ''} |"
                  for backend, row in served.get("end_to_end", {}).items()]
        lines += [f"| model only, batch {batch}, {backend} | {number(row['frames_per_second'])} | {row['note'] or ''} |"
                  for batch, backends in served.get("model_only", {}).items() for backend, row in backends.items()]
        lines += ["", f"onnxruntime CUDA provider: {served.get('onnxruntime_cuda')}"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the person: dataset/NAME (unpacked from its bundle)")
    parser.add_argument("--smoke", action="store_true", help="no GPU: every part on the CPU at tiny width (~1 min)")
    parser.add_argument("--dataset_dir", help="the processed dataset (default: dataset/NAME)")
    parser.add_argument("--heldout_audio", help="unseen speech of the person (default: the dataset's heldout*.wav)")
    parser.add_argument("--truth_video", help="the person really speaking --heldout_audio "
                                              "(default: <heldout stem>_truth.mp4 beside it)")
    parser.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help=f"held-out tail for both trainings (default {DEFAULT_VAL_FRACTION:g})")
    parser.add_argument("--output_dir", help="where results and logs go (default: benchmarks/gpu_check_out/NAME)")
    parser.add_argument("--budget_minutes", type=float, default=BUDGET_MINUTES,
                        help=f"time for the whole check (default {BUDGET_MINUTES:g})")
    parser.add_argument("--copy_results", metavar="DIR",
                        help="also put results.json, results.md and logs.tar.gz (every log, the evaluation's "
                             "table) in DIR: a folder that comes back from a lent machine")
    return parser


def copy_results(output_dir: Path, destination: Path) -> None:
    """results.json, results.md and one archive of the logs and the evaluation's table into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md"):
        shutil.copyfile(output_dir / name, destination / name)
    with tarfile.open(destination / "logs.tar.gz", "w:gz") as archive:
        for name in ("logs", "evaluation/table.md", "cuda_tests.xml"):
            if (output_dir / name).exists():
                archive.add(output_dir / name, arcname=name)


def find_heldout(dataset_dir: Path, audio: Optional[str], truth: Optional[str]):
    """(held-out audio, its true video) as given, else found beside the dataset: heldout*.wav + STEM_truth.mp4."""
    audio_path = Path(audio).resolve() if audio else None
    if audio_path is None:
        found = sorted(dataset_dir.glob("heldout*.wav"))
        audio_path = found[0] if len(found) == 1 else None
    truth_path = Path(truth).resolve() if truth else None
    if truth_path is None and audio_path is not None:
        candidate = audio_path.with_name(f"{audio_path.stem}_truth.mp4")
        truth_path = candidate if candidate.is_file() else None
    for path in (audio_path, truth_path):
        if path is not None and not path.is_file():
            raise UserError(f"{path} does not exist — check --heldout_audio / --truth_video")
    return audio_path, truth_path


@exit_on_user_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    dataset_dir = Path(args.dataset_dir or DATASET_ROOT / args.name).resolve()
    DatasetLayout(dataset_dir).require_processed(why="the GPU check trains on the unpacked dataset; unpack its "
                                                     "bundle (python data_utils/bundle.py unpack NAME.bundle.tar) or")
    heldout_audio, truth_video = find_heldout(dataset_dir, args.heldout_audio, args.truth_video)
    output_dir = Path(args.output_dir or OUTPUT_ROOT / args.name).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    mode = SMOKE if args.smoke else GPU
    check = Check(args.name, mode, dataset_dir, output_dir, heldout_audio, truth_video, args.val_fraction)
    print(f"GPU check of {dataset_dir} ({mode.name} mode, {args.budget_minutes:g} min budget) -> {output_dir}",
          flush=True)
    parts = run_check(check, Budget(args.budget_minutes))
    results = finite_or_none({"name": args.name, "mode": mode.name, "dataset": str(dataset_dir), "machine": machine(),
                      "seconds": time.monotonic() - started,
                      "all_passed": not any(part.status == "failed" for part in parts.values()),
                      "parts": {name: asdict(part) for name, part in parts.items()}})
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (output_dir / "results.md").write_text(table)
    print()
    print(table)
    print(f"results: {output_dir / 'results.json'} and results.md; logs: {check.logs}")
    if args.copy_results:
        copy_results(output_dir, Path(args.copy_results))
        print(f"copied to {args.copy_results}: results.json, results.md, logs.tar.gz")
    return 0 if results["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
