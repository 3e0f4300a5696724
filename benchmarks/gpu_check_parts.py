"""The parts of the GPU check (benchmarks/gpu_check.py): each runs the project's own scripts
in subprocesses, within the seconds it is given, and returns its figures or raises
PartFailed with a one-line reason (and whatever figures it had).

Every command is an argument list run from the repository root; its output goes to
OUTPUT_DIR/logs/LABEL.log. Mode says what differs between the GPU check and the CPU smoke
check: the device, the width, each benchmark's options.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from data_utils.layout import DatasetLayout
from lipsync.core import checkpoints as ckpt

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_SERVE = REPO_ROOT / "benchmarks" / "bench_serve.py"
SERVE_PACKAGES = ("aiortc", "av", "aiohttp")      # what bench_serve.py and the server import
REASON_CHARS = 240               # a failure's one line, at most
MIN_PART_SECONDS = 20            # a part with less time left is skipped, not started to be killed
STARTUP_SECONDS = 30             # a training process before its first epoch: imports, CUDA, data
MIN_TRAIN_MINUTES = 0.1          # --max_minutes never below this: at least one epoch
EPOCH_OVERHEAD = 1.5             # an epoch against its compute: data loading, validation, checkpoints
FALLBACK_EPOCH_SECONDS = 30      # when the throughput part gave no figure
EVALUATION_SHARE, SYNCNET_SHARE = 0.25, 0.3    # of the training part's time; the U-Net gets the rest
EVALUATION_SECONDS = (60, 120)   # the evaluation's share, clamped
# A folder holding mediapipe and the protobuf 4.25 it needs (gpu_check.sh installs it): only the
# steps that measure landmarks get it on their PYTHONPATH, as it breaks onnx (newer protobuf) elsewhere.
LANDMARKS_SITE_ENV = "LIPSYNC_LANDMARKS_SITE"
READOUT_SECONDS = 90             # the audio read-out beside it: the truth's landmarks, one model's embeddings
# bench_inference.py's end-to-end backends under the names
END_TO_END_NAMES = {"torch": "torch fp32", "torch fp16": "torch fp16", "onnx": "onnxruntime"}
# The measures of the evaluation, and the others reported beside them.
EVALUATION_METRICS = ("mouth_psnr", "lmd", "opening_correlation", "opening_offset", "opening_ratio")
OTHER_METRICS = ("psnr", "mouth_ssim", "lse_d", "lse_c")


@dataclass(frozen=True)
class Mode:
    """What the check runs: the GPU check, or the CPU smoke version of every part."""
    name: str
    device: str
    model_size: str                       # the training part's (and inference's) width
    planned_seconds: Dict[str, float]     # the most each part may take, before the budget cuts it
    throughput_args: tuple
    inference_args: tuple
    training_args: tuple                  # extra options of both trainings
    fixed_max_minutes: Optional[float]    # smoke: a limit that stops after the first epoch
    serve_args: tuple                     # (option, value, ...) groups, passed when bench_serve.py has the option
    environment: Dict[str, str] = field(default_factory=dict)    # of every subprocess


GPU = Mode("gpu", "cuda", "full",
           {"cuda_tests": 150, "throughput": 100, "inference": 100, "serve": 90},
           ("--devices", "cuda", "--gpu_sizes", "full", "base", "mobile", "--gpu_steps", "20", "--perceptual",
            "--loader_samples", "100"),
           ("--devices", "cuda", "--model_size", "full", "--model_batch_sizes", "1", "8", "32", "--seconds", "4",
            "--repeats", "20"),
           ("--amp",), None,
           (("--device", "cuda"), ("--model_size", "full"), ("--backend", "torch"), ("--sessions", "1", "4"),
            ("--seconds", "8")))
# One thread per process: the smoke check shares its CPU with whatever else runs, and
# OpenMP threads spinning against other processes make tiny models 5-10x slower.
SMOKE = Mode("smoke", "cpu", "tiny",
             {"cuda_tests": 60, "throughput": 60, "inference": 90, "serve": 60},
             ("--devices", "cpu", "--cpu_sizes", "tiny", "--cpu_amp", "--cpu_batch_size", "2", "--steps", "1",
              "--loader_samples", "8", "--threads", "1"),
             ("--devices", "cpu", "--model_size", "tiny", "--model_batch_sizes", "1", "4", "--seconds", "0.5",
              "--repeats", "1", "--skip_pipeline_ceiling", "--threads", "1"),
             ("--epochs", "2", "--batch_size", "4", "--num_workers", "0"), 0.001,
             (("--device", "cpu"), ("--model_size", "tiny")),
             {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


class PartFailed(Exception):
    """A part (or a step of it) failed; the message is its one-line reason."""


def failure_reason(error: Exception) -> str:
    """A PartFailed's one-line reason; any other exception's type and message."""
    if isinstance(error, PartFailed) and error.args:
        return str(error.args[0])
    return f"{type(error).__name__}: {error}"[:REASON_CHARS]


@dataclass
class Check:
    """Everything the parts share: what to check, how, and where to write."""
    name: str
    mode: Mode
    dataset_dir: Path
    output_dir: Path
    heldout_audio: Optional[Path]
    truth_video: Optional[Path]
    val_fraction: float
    asr: str = "ave"

    @property
    def logs(self) -> Path:
        return self.output_dir / "logs"

    @property
    def run_dir(self) -> Path:         # the check's own training run, never checkpoint/NAME
        return self.output_dir / "checkpoint" / self.name


# --------------------------------------------------------------------------- subprocesses

def one_line(text: str) -> str:
    """The line of a failed command's output that says why: its last error line, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for marker in ("error: ", "Error", "FAILED", "failed"):
        hits = [line for line in lines if marker in line]
        if hits:
            return hits[-1][:REASON_CHARS]
    return (lines[-1] if lines else "no output")[:REASON_CHARS]


def step_environment(check: Check, landmarks: bool = False) -> Dict[str, str]:
    """A step's environment: this process's, the mode's, and with ``landmarks`` the landmark
    site (LANDMARKS_SITE_ENV) first on PYTHONPATH where gpu_check.sh installed one."""
    environment = {**os.environ, **check.mode.environment}
    site = os.environ.get(LANDMARKS_SITE_ENV)
    if landmarks and site:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, (site, environment.get("PYTHONPATH"))))
    return environment


def run_step(check: Check, label: str, command: List, seconds: float, ok_codes=(0,), landmarks: bool = False) -> str:
    """Run ``command`` (an argument list) from the repository root for at most ``seconds``;
    its output goes to logs/LABEL.log and is returned. PartFailed on a timeout or an exit code
    outside ``ok_codes``. ``landmarks``: the step measures face landmarks (step_environment)."""
    if seconds < MIN_PART_SECONDS:
        raise PartFailed(f"{label}: only {seconds:.0f} s of the budget left")
    check.logs.mkdir(parents=True, exist_ok=True)
    log_path = check.logs / f"{label}.log"
    command = [str(part) for part in command]
    print(f"  [{label}] up to {seconds:.0f} s: {' '.join(command[1:4])} ...", flush=True)
    # A session of its own, so that a timeout ends what the command started too (torchrun's
    # workers, bench_serve's server), not only the command, and frees the GPU for the next part.
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", env=step_environment(check, landmarks),
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        kill_process_group(process)
        output, _ = process.communicate()
        log_path.write_text(output or "")
        raise PartFailed(f"{label}: stopped after {seconds:.0f} s (its share of the budget); see {log_path}") from None
    finally:
        kill_process_group(process)          # whatever it left running
    log_path.write_text(output)
    if process.returncode not in ok_codes:
        raise PartFailed(f"{label}: exit {process.returncode}: {one_line(output)}")
    return output


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL to every process of ``process``'s group (its own session), if any is left."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def python_script(*arguments) -> List:
    return [sys.executable, *arguments]


# --------------------------------------------------------------------------- the parts

def cuda_tests(check: Check, seconds: float) -> Dict:
    """pytest -m cuda tests/test_cuda.py: each test's outcome, from pytest's JUnit XML."""
    report = check.output_dir / "cuda_tests.xml"
    report.unlink(missing_ok=True)
    output = run_step(check, "cuda_tests", python_script("-m", "pytest", "-q", "-m", "cuda", "-rs",
                                                         "-p", "no:cacheprovider", "--junitxml", report,
                                                         REPO_ROOT / "tests" / "test_cuda.py"),
                      seconds, ok_codes=(0, 1))
    if not report.is_file():
        raise PartFailed(f"pytest wrote no report: {one_line(output)}")
    tests = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "skipped" if child.tag == "skipped" else "failed"
                reason = one_line(child.get("message") or child.text or child.tag)
        tests[case.get("name")] = {"outcome": outcome, "reason": reason, "seconds": float(case.get("time") or 0)}
    if not tests:
        raise PartFailed(f"no CUDA tests were collected: {one_line(output)}")
    failed = [name for name, test in tests.items() if test["outcome"] == "failed"]
    figures = {"tests": tests, "torch_compile": "not used by the project: nothing to check"}
    if failed:
        raise PartFailed(f"{len(failed)} of {len(tests)} failed: " +
                         "; ".join(f"{name}: {tests[name]['reason']}" for name in failed), figures)
    if all(test["outcome"] == "skipped" for test in tests.values()):
        figures["skipped"] = next(iter(tests.values()))["reason"] or "skipped"
    return figures


def throughput(check: Check, seconds: float) -> Dict:
    """bench_train.py on the dataset: samples/s per width and AMP setting, hours for 200 x 5 min."""
    result = check.output_dir / "throughput.json"
    result.unlink(missing_ok=True)
    run_step(check, "throughput", python_script(REPO_ROOT / "benchmarks" / "bench_train.py", "--dataset_dir",
                                                check.dataset_dir, "--asr", check.asr, *check.mode.throughput_args,
                                                "--json", result), seconds)
    figures = json.loads(result.read_text())
    rows = [{key: row[key] for key in ("device_name", "model_size", "amp", "batch_size", "samples_per_s",
                                       "seconds_per_step", "peak_memory_mb", "hours_5min_200_epochs", "perceptual")}
            for row in figures["steps"]]
    if not rows:
        raise PartFailed("bench_train.py timed nothing")
    return {"rows": rows, "loader_cache_samples_per_s": figures["loader"]["cache_samples_per_s"],
            "recording_frames": figures["frames"]}


def inference(check: Check, seconds: float) -> Dict:
    """bench_inference.py on the dataset: end to end and model-only frames/s."""
    result = check.output_dir / "inference.json"
    result.unlink(missing_ok=True)
    failure = None
    try:
        run_step(check, "inference", python_script(REPO_ROOT / "benchmarks" / "bench_inference.py",
                                                   "--dataset_dir", check.dataset_dir, *check.mode.inference_args,
                                                   "--json", result), seconds)
    except PartFailed as error:        # the figures measured before the failure still count
        failure = str(error)
    if not result.is_file():
        raise PartFailed(failure or "bench_inference.py wrote no figures")
    figures = json.loads(result.read_text())
    rows = figures["rows"]
    end_to_end = {END_TO_END_NAMES.get(row["backend"], row["backend"]):
                  {"frames_per_second": row["frames_per_second"], "note": row["note"]}
                  for row in rows if row["what"] == "end to end"}
    if check.mode.device != "cuda":
        end_to_end["torch fp16"] = {"frames_per_second": None, "note": "not applicable: fp16 runs on CUDA only"}
    model_only = {}
    for row in rows:
        if row["what"] == "model only":
            model_only.setdefault(str(row["batch_size"]), {})[row["backend"]] = \
                {"frames_per_second": row["frames_per_second"], "note": row["note"]}
    summary = {"end_to_end": end_to_end, "model_only": model_only, "model_size": figures["model_size"],
               "onnxruntime_providers": figures["onnxruntime_providers"],
               "onnxruntime_cuda": onnxruntime_on_cuda(check, figures)}
    if failure:
        raise PartFailed(failure, summary)
    return summary


def onnxruntime_on_cuda(check: Check, figures: Dict) -> str:
    """Whether onnxruntime ran the U-Net on the GPU, in words."""
    if check.mode.device != "cuda":
        return "not checked: the smoke check runs on the CPU"
    if "CUDAExecutionProvider" not in figures["onnxruntime_providers"]:
        return "not present (onnxruntime CPU build): its end-to-end figure is the CPU's, model only n/a"
    on_gpu = [row for row in figures["rows"] if row["backend"] == "onnxruntime" and row["device"] == "cuda"
              and row["frames_per_second"] is not None]
    return "used" if on_gpu else "listed, but no CUDA session could be made: onnxruntime ran on the CPU"


def serve(check: Check, seconds: float) -> Dict:
    """bench_serve.py with the GPU options it has (--help says which), when it exists.

    The smoke check only makes sure it starts (--help): the live-serving benchmark has its own
    CPU tests, and its sessions would take the suite's minute several times over.
    """
    if not BENCH_SERVE.is_file():
        return {"status": "not present"}
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:         # the WebRTC stack is big (PyAV alone ~35 MB) and rarely fits the 64 MiB that travel
        return {"skipped": f"{', '.join(missing)} not installed: live serving is not measured "
                           f"(pip install -r requirements.txt where a package index is reachable)"}
    started = time.monotonic()
    help_text = run_step(check, "serve_help", python_script(BENCH_SERVE, "--help"), min(seconds, 60))
    if check.mode.device != "cuda":
        return {"skipped": "smoke check: bench_serve.py is present and starts (--help); it runs in the GPU check"}
    result = check.output_dir / "serve.json"
    result.unlink(missing_ok=True)
    groups = [*check.mode.serve_args, ("--dataset_dir", check.dataset_dir), ("--json", result)]
    arguments = [value for group in groups if group[0] in help_text for value in group]
    output = run_step(check, "serve", python_script(BENCH_SERVE, *arguments), seconds - (time.monotonic() - started))
    figures = {"arguments": [str(value) for value in arguments], "output_tail": output.strip().splitlines()[-12:]}
    if result.is_file():
        figures["figures"] = json.loads(result.read_text())
    return figures


def training(check: Check, seconds: float, epoch_seconds: float) -> Dict:
    """SyncNet, the U-Net with the sync loss, each stopped by --max_minutes, then the evaluation."""
    started = time.monotonic()
    evaluation_seconds = min(max(EVALUATION_SHARE * seconds, EVALUATION_SECONDS[0]), EVALUATION_SECONDS[1])
    with_truth = check.heldout_audio is not None and check.truth_video is not None
    readout_seconds = READOUT_SECONDS if with_truth else 0
    training_seconds = seconds - evaluation_seconds - readout_seconds
    figures, failures = {"device": check.mode.device, "model_size": check.mode.model_size}, []
    shutil.rmtree(check.run_dir, ignore_errors=True)
    common = ["--dataset_dir", check.dataset_dir, "--asr", check.asr, "--model_size", check.mode.model_size,
              "--device", check.mode.device, "--val_fraction", check.val_fraction, "--quiet",
              *check.mode.training_args]
    syncnet_dir = ckpt.syncnet_dir(check.run_dir)
    try:
        share = SYNCNET_SHARE * training_seconds
        figures["syncnet"] = train_stage(check, "train_syncnet", [REPO_ROOT / "train_syncnet.py", *common,
                                                                   "--save_dir", syncnet_dir], share, epoch_seconds)
    except Exception as error:       # a surprise in one stage keeps the figures of the others
        failures.append(failure_reason(error))
    use_syncnet = (syncnet_dir / ckpt.BEST).is_file()
    try:
        share = training_seconds - (time.monotonic() - started)
        arguments = [REPO_ROOT / "train_328.py", *common, "--save_dir", check.run_dir]
        figures["unet"] = train_stage(check, "train_unet", arguments + (["--use_syncnet"] if use_syncnet else []),
                                      share, epoch_seconds)
        figures["unet"]["use_syncnet"] = use_syncnet
        figures["evaluation"] = evaluate(check, figures["unet"]["checkpoint"],
                                         seconds - (time.monotonic() - started) - readout_seconds)
        if with_truth:
            try:
                figures["audio_readout"] = audio_readout(check, figures["unet"]["checkpoint"],
                                                         max(seconds - (time.monotonic() - started), MIN_PART_SECONDS))
            except Exception as error:     # the read-out explains the scores; failing, it must not cost them
                figures["audio_readout"] = {"failed": failure_reason(error)}
        missing = figures["evaluation"]["missing"]
        if missing:             # the check exists to report these: without them it has not done its job
            said = "; ".join(figures["evaluation"]["warnings"]) or f"see {check.logs / 'evaluate.log'}"
            failures.append(f"evaluate: measured no {', '.join(missing)} ({said})"[:REASON_CHARS])
    except Exception as error:       # a surprise in one stage keeps the figures of the others
        failures.append(failure_reason(error))
    if failures:
        raise PartFailed("; ".join(failures), figures)
    return figures


def train_stage(check: Check, label: str, arguments: List, seconds: float, epoch_seconds: float) -> Dict:
    """One training script with --max_minutes chosen so that it ends inside ``seconds``."""
    minutes = check.mode.fixed_max_minutes
    if minutes is None:
        minutes = max((seconds - STARTUP_SECONDS - epoch_seconds) / 60, MIN_TRAIN_MINUTES)
    run_step(check, label, python_script(*arguments, "--max_minutes", f"{minutes:.3f}"), seconds)
    save_dir = Path(arguments[arguments.index("--save_dir") + 1])
    latest = ckpt.read_checkpoint(save_dir / ckpt.LATEST)
    history = latest.get("history") or []
    if not history:
        raise PartFailed(f"{label}: {save_dir / ckpt.LATEST} has no finished epoch")
    last = history[-1]
    return {"max_minutes": round(minutes, 3), "epochs": int(latest["epoch"]),
            "stopped_by": "epochs" if latest.get("finished") else "max_minutes",
            "checkpoint": str(ckpt.epoch_path(save_dir, int(latest["epoch"]))),
            "samples_per_s": last.get("samples_per_s"), "seconds_per_epoch": last.get("seconds"),
            "last": {key: value for key, value in last.items() if key.startswith(("train_", "val_"))}}


def evaluate(check: Check, checkpoint: str, seconds: float) -> Dict:
    """evaluate_328.py on the held-out audio against its true video (else the held-out tail)."""
    output_dir = check.output_dir / "evaluation"
    shutil.rmtree(output_dir, ignore_errors=True)
    arguments = ["--dataset_dir", check.dataset_dir, "--checkpoint_dir", check.run_dir, "--checkpoint", checkpoint,
                 "--device", check.mode.device, "--no_select", "--no_video", "--quiet", "--output_dir", output_dir]
    encoder = DatasetLayout(check.dataset_dir).ave_encoder
    if check.asr == "ave" and encoder.is_file():
        arguments += ["--ave_checkpoint", encoder]
    against = "the held-out tail of the recording (no --heldout_audio)"
    if check.heldout_audio is not None:
        arguments += ["--audio_path", check.heldout_audio]
        against = f"{check.heldout_audio.name}, no true video"
        if check.truth_video is not None:
            arguments += ["--truth_video", check.truth_video]
            against = f"{check.heldout_audio.name} against {check.truth_video.name}"
    output = run_step(check, "evaluate", python_script(REPO_ROOT / "evaluate_328.py", *arguments), seconds,
                      landmarks=True)
    report = json.loads((output_dir / "scores.json").read_text())
    scores = report["checkpoints"][0]["scores"]
    return {"against": against, "frames": report["frames"]["count"],
            "scores": {name: scores.get(name) for name in EVALUATION_METRICS + OTHER_METRICS},
            "missing": [name for name in EVALUATION_METRICS if scores.get(name) is None],
            "warnings": [line.strip() for line in output.splitlines()
                         if any(marker in line.lower() for marker in ("warning", "not installed"))][:3],
            "table": str(output_dir / "table.md")}


def audio_readout(check: Check, checkpoint: str, seconds: float) -> Dict:
    """benchmarks/audio_readout.py on the trained checkpoint: how much of the unseen speech's opening its
    audio embedding holds, to set beside what its drawn mouth shows (the evaluation)."""
    output = check.output_dir / "audio_readout.json"
    output.unlink(missing_ok=True)
    run_step(check, "audio_readout", python_script(
        REPO_ROOT / "benchmarks" / "audio_readout.py", "--dataset_dir", check.dataset_dir, "--checkpoints", checkpoint,
        "--heldout_audio", check.heldout_audio, "--truth_video", check.truth_video,
        "--val_fraction", check.val_fraction, "--json", output), seconds, landmarks=True)
    result = json.loads(output.read_text())[0]
    return {name: result[name] for name in ("opening_correlation", "opening_offset", "opening_ratio")}


def predicted_epoch_seconds(check: Check, throughput_figures: Optional[Dict]) -> float:
    """An epoch of the training part, from the throughput part's full-width AMP figure."""
    boxes = DatasetLayout(check.dataset_dir).crop_boxes
    frames = len(np.load(boxes)) if boxes.is_file() else 0
    for row in (throughput_figures or {}).get("rows", []):
        if row["model_size"] == check.mode.model_size and row["amp"] and row["samples_per_s"]:
            return EPOCH_OVERHEAD * frames * (1 - check.val_fraction) / row["samples_per_s"]
    return FALLBACK_EPOCH_SECONDS
