"""The evaluation report as text: the markdown table (table.md, also printed), one
checkpoint's log line, and the line naming the machine the scores were made on.

With a truth (the held-out tail, or --truth_video) the measures against the
real frames come first: a model cannot please them without looking like the
person. The measures without truth (SyncNet distance/confidence, mouth
opening against loudness) follow, marked "(no truth)"; without a truth they
are all there is, and the table says so.
"""
import math
import os
import platform
from pathlib import Path
from typing import Dict

import torch

from data_utils.timebase import FPS
from lipsync.evaluate.landmark_track import LANDMARK_SCORES, LANDMARKS_MISSING_CELL
from lipsync.evaluate.sync_embedding import MIN_INFORMATIVE_LSE_C

# (key, heading, format) of the table columns; runs with and without a truth show different ones.
TRUTH_COLUMNS = (
    ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("mouth_psnr", "mouth PSNR", "{:.2f}"),
    ("mouth_ssim", "mouth SSIM", "{:.3f}"), ("lmd", "LMD", "{:.4f}"),
    ("opening_correlation", "open r", "{:.2f}"), ("opening_offset", "offset", "{:+d}"),
    ("opening_ratio", "open ratio", "{:.2f}"), ("change_ratio", "change ratio", "{:.2f}"),
    ("lse_d", "LSE-D", "{:.3f}"), ("lse_c", "LSE-C", "{:.3f}"), ("energy_correlation", "energy r", "{:.2f}"),
)
NO_TRUTH_COLUMNS = (
    ("lse_d", "LSE-D", "{:.3f}"), ("lse_c", "LSE-C", "{:.3f}"), ("sync_offset", "sync offset", "{:+d}"),
    ("energy_correlation", "energy r", "{:.2f}"), ("energy_offset", "energy offset", "{:+d}"),
    ("mouth_opening", "mean opening", "{:.3f}"), ("face_found", "face found", "{:.0%}"),
)
# Measures made without the real frames; in a table with a truth their headings say so.
NO_TRUTH_SCORES = {key for key, _, _ in NO_TRUTH_COLUMNS}
NO_TRUTH_MARK = " (no truth)"
# The recording compared with itself: its picture scores are perfect by definition, so not shown.
PICTURE_SCORES = ("psnr", "ssim", "mouth_psnr", "mouth_ssim")
MEAN_OFFSET_PATTERN, OFFSET_SPREAD_PATTERN = "{:+.1f}", "{:.1f}"


def describe_machine(device) -> str:
    """One line naming the machine the scores were made on (README tables need it)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, torch {torch.__version__}"
    if str(device).startswith("cuda"):
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


def _cell(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if "d}" in pattern:
        value = int(value)
    return pattern.format(value)


def format_scores(scores: Dict, has_truth: bool = True) -> str:
    """One checkpoint's scores on one line (the log line of each scored epoch)."""
    columns = TRUTH_COLUMNS if has_truth else NO_TRUTH_COLUMNS
    return "  ".join(f"{heading} {_cell(scores.get(key), pattern)}" for key, heading, pattern in columns)


def _heading(key: str, heading: str, has_truth: bool) -> str:
    return heading + NO_TRUTH_MARK if has_truth and key in NO_TRUTH_SCORES else heading


def format_table(report: Dict) -> str:
    """A markdown table: one row per checkpoint (the chosen one starred), the recording first."""
    heldout = report["mode"] == "heldout"
    has_truth = report.get("truth") is not None
    columns = TRUTH_COLUMNS if has_truth else NO_TRUTH_COLUMNS
    lines = ["| checkpoint | " + " | ".join(_heading(key, heading, has_truth) for key, heading, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    if has_truth and report.get("reference"):
        reference = report["reference"]
        cells = ["—" if key in PICTURE_SCORES else _cell(reference.get(key), pattern) for key, _, pattern in columns]
        lines.append("| recording (truth) | " + " | ".join(cells) + " |")
    best_epoch = report["best"]["epoch"] if report.get("best") else None
    for entry in report["checkpoints"]:
        name = f"{entry['epoch']}" + (" *" if entry["epoch"] == best_epoch else "")
        lines.append(f"| {name} | " + " | ".join(_cell(entry["scores"].get(key), pattern)
                                                for key, _, pattern in columns) + " |")
    mean = report.get("mean")
    if mean:
        span = f"{len(mean['epochs'])} epochs, {mean['epochs'][0]}-{mean['epochs'][-1]}"
        for label, values, offset_pattern in ((f"mean of {span}", mean["scores"], MEAN_OFFSET_PATTERN),
                                              ("± sd", mean["sd"], OFFSET_SPREAD_PATTERN)):
            # A mean offset is a fraction of a frame; so is its spread.
            lines.append(f"| {label} | " + " | ".join(_cell(values.get(key), offset_pattern if
                                                            key == "opening_offset" else pattern)
                                                      for key, _, pattern in columns) + " |")
    frames = report["frames"]
    length = f"{frames['count']} frames, {frames['count'] / FPS:.1f} s"
    if heldout:
        where = f"held-out tail, frames {frames['first']}-{frames['last']} ({length})"
    elif has_truth:
        where = f"{report['audio']} ({length}) against {report['truth']}"
    else:
        where = f"{report['audio']} ({length}), no ground truth"
    lines.append("")
    lines.append(f"{report['name']}: {where}; machine: {report['machine']}")
    if has_truth:
        truth_based = [heading for key, heading, _ in columns if key not in NO_TRUTH_SCORES]
        lines.append(f"against the true frames: {', '.join(truth_based)}; (no truth): SyncNet and loudness "
                     "scores, which a model can please without looking like the person")
    else:
        lines.append("no true video of this audio: only the scores without truth (SyncNet, loudness) — "
                     "give --truth_video VIDEO to score against the person really speaking it")
    if report.get("landmarks_missing"):
        lip = [heading for key, heading, _ in columns if key in LANDMARK_SCORES]
        lines.append(f"{', '.join(lip)}: {LANDMARKS_MISSING_CELL} — {report['landmarks_missing']}")
    if report.get("best"):
        best = report["best"]
        lines.append(f"* best: epoch {best['epoch']} by {best['metric']} = {best['value']:.4f} "
                     f"({best['better']} is better) -> {best['path']}")
    if report.get("syncnet") is None:
        lines.append("LSE-D/LSE-C: n/a without a trained SyncNet (python train_syncnet.py --name NAME)")
    else:
        accuracy = report.get("syncnet_pair_accuracy")
        note = f"LSE-D/LSE-C by {report['syncnet']}"
        if accuracy is not None:
            note += f" (held-out pair accuracy {accuracy:.0%})"
        real = (report.get("reference") or {}).get("lse_c")
        if real is not None and real < MIN_INFORMATIVE_LSE_C:
            note += f"; it finds no sync point in the real frames (LSE-C {real:.3f}), so its scores are not informative"
        lines.append(note)
    return "\n".join(lines)
