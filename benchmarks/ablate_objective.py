"""The training objective's ablation: every arm trains the same U-Net for the same CPU budget,
then is scored on unseen audio against the true video of it.

    python benchmarks/ablate_objective.py --name talker_a \
        --syncnet_checkpoint checkpoint/talker_a/syncnet/best.pth \
        --heldout_audio ../shared/fixtures/talker_a/heldout_a.wav \
        --truth_video ../shared/fixtures/talker_a/heldout_a_truth.mp4 \
        --minutes 30 --parallel 2 [--arms l1 sync_fixed ...]

The U-Net's width is --model_size (tiny by default, as every table before 2026-12-06) or
--widths: 4 8 16 64 128 trains 9 epochs in the tiny width's 13 epochs' CPU time and draws a better
mouth at two seeds of three (benchmarks/RESULTS.md, "Wider low-resolution stages").

Each arm is train_328.py from scratch (--max_minutes M, one torch thread, no data-loader
workers) and evaluate_328.py on its last --score_last K epochs' checkpoints (default 3; the table
gives their mean, and the spread of the motion scores, because one epoch moves those as much as a
change of objective does), twice: as inference renders it, and with
--no_silence_hold ("own" columns: the motion the model itself draws, without the pauses'
closed mouth that rendering adds); with --parallel N the arms run N at a
time, each pinned to its own core (taskset) so that wall minutes are CPU minutes and every
arm sees the same machine. An arm with an LR schedule (l1_lips4_cosine) spreads it over
--budget_epochs, the epochs the clock holds on this machine (minutes / one L1 arm's seconds per
epoch, rounded up), so that it has decayed when the clock stops it. On a host whose speed
varies (a shared VM), the clock gives arms different numbers of epochs: --epochs N trains every
arm exactly N epochs instead, and --resume_arms continues the arms an OUTPUT_DIR already holds
from their latest.pth (to --epochs N), adding up their CPU minutes: from the ablation.json that
wrote them, or, for an arm whose sitting was killed before it wrote any, from the epoch seconds its
checkpoint's history holds (one pinned torch thread, so wall seconds stand for CPU seconds).
Writes OUT/ablation.json, OUT/ablation.md (the table) and OUT/strip.png (the truth's mouths above
every arm's, same frames).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

from data_utils.layout import DatasetLayout, chosen_dataset_dir  # noqa: E402
from lipsync.core import checkpoints as ckpt  # noqa: E402
from lipsync.core.errors import UserError, exit_on_user_error  # noqa: E402
from lipsync.core.options import as_typed  # noqa: E402
from lipsync.evaluate.pictures import LABEL_STROKES  # noqa: E402
from models.unet_328 import DOWNSAMPLINGS  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "ablation_out"
NO_EPOCH_LIMIT = 100000            # arms stop on the clock (--max_minutes), never on --epochs
DEFAULT_SCORE_LAST = 3             # epochs whose checkpoints are scored and averaged per arm
METRICS = ("mouth_psnr", "mouth_ssim", "lmd", "opening_correlation", "opening_offset", "opening_ratio",
           "psnr", "lse_d", "lse_c")
# The motion scores again for the render without the silence hold: what the model draws itself.
OWN_MOTION_METRICS = ("opening_correlation", "opening_offset", "opening_ratio")
OWN_PREFIX = "own_"
# Scores whose spread over the averaged epochs the table shows: the motion, which swings most.
SPREAD_SHOWN = ("opening_correlation", "opening_offset", "opening_ratio")


@dataclass(frozen=True)
class Arm:
    name: str
    says: str
    options: tuple
    uses_syncnet: bool = True
    # The LR schedule spreads over --budget_epochs (the epochs the clock lets every arm train),
    # so that it has decayed when the clock stops the arm.
    schedule_over_budget: bool = False


def sync_term(balance: str, warmup_epochs: int) -> tuple:
    return ("--sync_balance", balance, "--sync_warmup_epochs", str(warmup_epochs))


FIXED = sync_term("fixed", 0)
ADAPTIVE = sync_term("adaptive", 2)
# Half of the 30-minute budget's 10 epochs on reconstruction alone, so the mouth has learnt to open
# before SyncNet's verdict (which narrowed the opening after a 2-epoch warm-up) joins in.
ADAPTIVE_AFTER_5 = sync_term("adaptive", 5)
EVERY_PIXEL_ALIKE = ("--lip_weight", "1")     # the arms measured before the lips' weight became 4
LIPS_4 = ("--lip_weight", "4")
LIPS_2 = ("--lip_weight", "2")
LIPS_8 = ("--lip_weight", "8")
TWO_REFERENCES = ("--reference_frames", "2")
COSINE = ("--lr_schedule", "cosine")
ARMS = {arm.name: arm for arm in (
    Arm("l1", "L1 only", EVERY_PIXEL_ALIKE, uses_syncnet=False),
    Arm("l1_lips4", "L1 only, the lips' box counted 4 times (the default since 2026-12-02)", LIPS_4,
        uses_syncnet=False),
    Arm("l1_lips8", "L1 only, the lips' box counted 8 times", LIPS_8, uses_syncnet=False),
    Arm("l1_lips4_cosine", "L1 only, the lips' box counted 4 times, the LR decayed to 0 over the budget (cosine)",
        LIPS_4 + COSINE, uses_syncnet=False, schedule_over_budget=True),
    # Measured too, 2026-12-05 (benchmarks/RESULTS.md, "Where the mouth differs from the reference, and its
    # edges"), seed 0, 10 epochs, against l1_lips4: half the lips' weight where the truth differs from the
    # reference (--motion_weight 0.5, commit 5fab8a0) and 1 x L1 of the pixel differences (--edge_weight 1,
    # commit d930ac5). Neither opened the mouth wider; both lowered the mouth PSNR; both options are gone.
    # The same training as l1_lips4 (the optimizer steps the same weights), validated and scored on the
    # average of the weights over the last steps instead of the last step's.
    Arm("l1_lips4_ema995", "L1 only, the lips' box counted 4 times, weights averaged (--ema_decay 0.995)",
        LIPS_4 + ("--ema_decay", "0.995"), uses_syncnet=False),
    Arm("l1_lips4_ema999", "L1 only, the lips' box counted 4 times, weights averaged (--ema_decay 0.999)",
        LIPS_4 + ("--ema_decay", "0.999"), uses_syncnet=False),
    Arm("l1_lips4_ema990", "L1 only, the lips' box counted 4 times, weights averaged (--ema_decay 0.99)",
        LIPS_4 + ("--ema_decay", "0.99"), uses_syncnet=False),
    # Measured too, 2026-12-06 (benchmarks/RESULTS.md, "The learning rate, the batch, and rare openings"),
    # seed 0, 13 epochs, against l1_lips4: each frame's L1 weighted by how rare its mouth opening is in the
    # recording, its smoothed share to the power -0.5 and -1 (--opening_balance, commit 81b2fce). Neither
    # opened the mouth wider (0.65 and 0.52 of the truth's against 0.69); the option is gone. The harness's
    # --lr 2e-3 and --batch_size 4 with l1_lips4 fitted the held-out frames faster and moved the mouth less.
    # The audio embedding as the U-Net's bottleneck holds it already tells the unseen speech's opening
    # (a linear read-out: r 0.93, ratio 0.93 at seed 0, epoch 20) better than the drawn mouth shows it
    # (r 0.85, ratio 0.73): the loss is on the way down the decoder, so these let the audio modulate it.
    # Measured 2026-12-06 (RESULTS.md, "Where the motion is lost, and the audio in the decoder"), 13 epochs:
    # film1 met both motion targets at seed 0 and not at seed 1, the mouth a little sharper at both; film3
    # and film5 were worse. With the sync term at seeds 0-2 (RESULTS.md, "training_328.sh's objective with the
    # audio in the decoder"): r 0.86/0.86/0.81 against 0.83/0.87/0.78, opening 0.74/0.77/0.68 against
    # 0.64/0.82/0.94. --audio_stages stays an option (default 0).
    Arm("l1_lips4_film1", "L1 only, the lips' box counted 4 times, the audio modulating the 20 x 20 decoder stage",
        LIPS_4 + ("--audio_stages", "1"), uses_syncnet=False),
    Arm("l1_lips4_film3", "L1 only, the lips' box counted 4 times, the audio modulating 3 decoder stages",
        LIPS_4 + ("--audio_stages", "3"), uses_syncnet=False),
    Arm("l1_lips4_film5", "L1 only, the lips' box counted 4 times, the audio modulating every decoder stage",
        LIPS_4 + ("--audio_stages", "5"), uses_syncnet=False),
    # Measured 2026-12-06 (RESULTS.md, "The lips' squared error"), seeds 0 and 1, 13 epochs: 10 x the mean
    # squared error over the lips' box added to L1 (--lip_l2_weight, commit 5ec322e), the mean of what the
    # U-Net is unsure between instead of L1's median. The opening fell at both seeds (0.59, 0.69 against 0.69,
    # 0.84), LMD worse; the option is gone.
    Arm("l1_refs2", "L1 only, two reference frames", EVERY_PIXEL_ALIKE + TWO_REFERENCES, uses_syncnet=False),
    Arm("l1_lips4_refs2", "L1 only, the lips' box counted 4 times, two reference frames", LIPS_4 + TWO_REFERENCES,
        uses_syncnet=False),
    Arm("sync_fixed", "L1 + sync x 10 from the start (SyncTalk_2D's recipe)",
        FIXED + ("--sync_weight", "10") + EVERY_PIXEL_ALIKE),
    # Measured too, at commit e8dd2a8 (benchmarks/RESULTS.md): the lips' box x 4 in L1 with a SyncNet
    # face-feature loss x 0.1, at ratios 1 and 3 (from another start than L1 alone's). Neither helped; the
    # face-feature option is gone. At commit fb030a4: a spectral-norm patch discriminator on the mouth band
    # (--gan_ratio 1 and 0.3, balanced like the sync term) with ratio 3, two seeds at 1: mouth PSNR 0.36 and
    # 0.54 dB below L1 alone, the motion no better; gone.
    Arm("adaptive", "L1 + adaptive sync (ratio 1) after a 2-epoch warm-up",
        ADAPTIVE + ("--sync_ratio", "1") + EVERY_PIXEL_ALIKE),
    Arm("adaptive_r3", "adaptive, ratio 3, after a 2-epoch warm-up", ADAPTIVE + ("--sync_ratio", "3") + EVERY_PIXEL_ALIKE),
    Arm("adaptive_r1_lips4", "adaptive, ratio 1, after a 2-epoch warm-up, the lips' box counted 4 times",
        ADAPTIVE + ("--sync_ratio", "1") + LIPS_4),
    Arm("adaptive_r3_lips4", "adaptive, ratio 3, after a 2-epoch warm-up, the lips' box counted 4 times",
        ADAPTIVE + ("--sync_ratio", "3") + LIPS_4),
    # training_328.sh's training seen through the average of its weights (the live weights step alike).
    Arm("adaptive_r3_lips4_ema990", "adaptive, ratio 3, after a 2-epoch warm-up, the lips' box counted 4 times, "
        "weights averaged (--ema_decay 0.99)", ADAPTIVE + ("--sync_ratio", "3") + LIPS_4 + ("--ema_decay", "0.99")),
    Arm("adaptive_r3_lips2", "adaptive, ratio 3, after a 2-epoch warm-up, the lips' box counted 2 times",
        ADAPTIVE + ("--sync_ratio", "3") + LIPS_2),
    # Measured too, 2026-12-06 (RESULTS.md, "What narrows the wider stages' opening"), seed 0, widths 4 8 16 64 128:
    # the sync loss only where the drawn mouth convinced SyncNet less than the true frame did (--sync_target
    # truth, commit 70a9741), so that the balance stops pushing a mouth already as convincing as the truth's.
    # The opening stayed as wide (1.29 against 1.27), r and LMD the same; the option is gone.
    Arm("adaptive_r3_lips4_warm5", "adaptive, ratio 3, after a 5-epoch warm-up, the lips' box counted 4 times",
        ADAPTIVE_AFTER_5 + ("--sync_ratio", "3") + LIPS_4),
    Arm("adaptive_r3_lips4_refs2", "adaptive ratio 3 with the lips' box counted 4 times, two reference frames",
        ADAPTIVE + ("--sync_ratio", "3") + LIPS_4 + TWO_REFERENCES),
    Arm("adaptive_r3_lips4_film1", "adaptive ratio 3 with the lips' box counted 4 times, the audio modulating the "
        "20 x 20 decoder stage", ADAPTIVE + ("--sync_ratio", "3") + LIPS_4 + ("--audio_stages", "1")),
    # Measured too, 2026-12-06 (RESULTS.md, "What the masked target still shows"), seed 3, widths 4 8 16 64
    # 128, 9 epochs: the LR raised linearly from 0 over the first epoch (--lr_warmup_epochs 1) and the audio
    # embedding batch-normalised before the fusion (--audio_norm). Neither rescued the seed (r 0.69 and
    # 0.78, opening 0.36 and 0.62); both options were removed before they were committed.
    # --mask_to_edges is train_328.py's default since 2026-12-06 (RESULTS.md, "What the masked target still
    # shows"), so every arm trains with it; the rows measured before then hid only the repainted region, which
    # adaptive_r3_lips4_leaky repeats.
    Arm("adaptive_r3_lips4_edges", "adaptive ratio 3 with the lips' box counted 4 times, the masked target blacked "
        "out to the crop's edges", ADAPTIVE + ("--sync_ratio", "3") + LIPS_4 + ("--mask_to_edges",)),
    # Measured too, 2026-12-07 (RESULTS.md, "Choosing the epoch on the tail, ..."), seeds 0 and 3, 12 epochs:
    # training_328.sh's objective plus a frozen opening reader's term at gradient ratio 1 (commit 9abadda,
    # --opening_weight 1): seed 0 opened wider still (1.50 against 1.31), seed 3 stayed narrow (0.54); removed.
    Arm("adaptive_r3_lips4_leaky", "adaptive ratio 3 with the lips' box counted 4 times, only the repainted region "
        "blacked out (the model input before 2026-12-06)",
        ADAPTIVE + ("--sync_ratio", "3") + LIPS_4 + ("--no-mask_to_edges",)),
    # Measured too, 2026-12-07 (RESULTS.md, "L1 alone with the new input, drawn with another frame's
    # audio, and noise on the audio features"), seeds 0-3, widths 4 8 16 64 128, 7 epochs (the CPU time of
    # the default's 9): half of each batch drawn again with another frame's audio and judged by the sync
    # term alone (--other_audio_share 0.5). r 0.88 / 0.83 / 0.82 / 0.78, opening 1.01 / 0.92 / 1.22 / 0.41,
    # the mouth 0.17-0.28 dB softer than the default's at seeds 0-2: the option was removed.
    # Measured too, 2026-12-07 (the same section): noise on the training audio features (--audio_noise S,
    # Gaussian, S times each window's spread) and zeroing 30 % of their channels (--audio_dropout 0.3). S 0.25
    # at seeds 0/1/3: r 0.86/0.83/0.77, opening 1.30/1.04/0.53, the mouth -0.15/-0.11/+0.32 dB against the
    # default; S 1 at seed 3: r 0.63, opening 0.24; dropout at seed 3: r 0.74, opening 0.52. Both removed.
    Arm("adaptive_r3_lips4_twins", "adaptive ratio 3 with the lips' box counted 4 times, half the samples hearing "
        "a lip twin's audio", ADAPTIVE + ("--sync_ratio", "3") + LIPS_4 + ("--twin_audio_share", "0.5")),
    Arm("adaptive_r3_lips4_twins_quarter", "adaptive ratio 3 with the lips' box counted 4 times, a quarter of the "
        "samples hearing a lip twin's audio",
        ADAPTIVE + ("--sync_ratio", "3") + LIPS_4 + ("--twin_audio_share", "0.25")),
    Arm("l1_lips4_twins", "L1 only, the lips' box counted 4 times, half the samples hearing a lip twin's audio",
        LIPS_4 + ("--twin_audio_share", "0.5"), uses_syncnet=False),
    # The decoder told the target's lip code in training and the audio's prediction of it otherwise
    # (data_utils/lip_codes.py). Measured 2026-12-07 (RESULTS.md, "Lip codes, and the colour head"), seeds 0
    # and 3, 12 epochs: the mouth 0.20-0.24 dB sharper, each seed's opening unchanged (1.34, 0.54).
    Arm("adaptive_r3_lips4_code2", "adaptive ratio 3 with the lips' box counted 4 times, the bottleneck told a "
        "2-number lip code", ADAPTIVE + ("--sync_ratio", "3") + LIPS_4 + ("--lip_code_dims", "2")),
    Arm("l1_lips4_code2", "L1 only, the lips' box counted 4 times, the bottleneck told a 2-number lip code",
        LIPS_4 + ("--lip_code_dims", "2"), uses_syncnet=False),
    # Measured too, 2026-12-07 (RESULTS.md, "Lip codes, and the colour head"), seed 3, 12 epochs: the 1x1
    # colour head (4 channels -> RGB at this width) started at zero instead of its random draw (--head_init
    # zero, not committed). It fitted 2-3 epochs later and left the mouth narrow (r 0.80, opening 0.61), where
    # seed 3 with seed 0's random head and every other weight its own met the targets (and seed 0 with seed
    # 3's missed them); the option is gone.
    # The colour head reading the coarser decoder stages too (--head_levels), the lever the head transplant
    # above points at: colours from more channels than the stem's few, so that no draw of the head's first
    # weights leaves the lips pale.
    Arm("adaptive_r3_lips4_head2", "adaptive ratio 3 with the lips' box counted 4 times, the colour head reading "
        "the 160 x 160 decoder stage too", ADAPTIVE + ("--sync_ratio", "3") + LIPS_4 + ("--head_levels", "2")),
    Arm("adaptive_r3_lips4_head3", "adaptive ratio 3 with the lips' box counted 4 times, the colour head reading "
        "the 160 x 160 and 80 x 80 decoder stages too",
        ADAPTIVE + ("--sync_ratio", "3") + LIPS_4 + ("--head_levels", "3")),
    Arm("l1_lips4_head3", "L1 only, the lips' box counted 4 times, the colour head reading the 160 x 160 and "
        "80 x 80 decoder stages too", LIPS_4 + ("--head_levels", "3"), uses_syncnet=False),
    # A loss on the lips' colour itself (--lip_colour_weight), the other lever the head transplant
    # pointed at, was built beside --head_levels and removed unmeasured on 2026-12-07: the head had
    # fixed the colour first.
    Arm("adaptive_r10", "adaptive, ratio 10, after a 2-epoch warm-up",
        ADAPTIVE + ("--sync_ratio", "10") + EVERY_PIXEL_ALIKE),
    Arm("adaptive_r03", "adaptive, ratio 0.3, after a 2-epoch warm-up",
        ADAPTIVE + ("--sync_ratio", "0.3") + EVERY_PIXEL_ALIKE),
)}


def script(name: str, *arguments) -> List[str]:
    return [sys.executable, str(REPO_ROOT / name), *[str(part) for part in arguments]]


def pinned(command: List[str], core: Optional[int]) -> List[str]:
    return ["taskset", "-c", str(core), *command] if core is not None else command


# Options whose default changed after most arms were measured, at the value those arms trained with,
# so that each arm keeps training what its table row measured; an arm naming the option overrides it.
# (--head_levels 3 became the default on 2026-12-07.)
PINNED_OPTIONS = (("--head_levels", "1"),)


def train_command(arm: Arm, options, run_dir: Path, resume: bool = False) -> List[str]:
    # The budget is the clock (--minutes), or with --epochs a number of epochs: the same steps for
    # every arm, whatever else the host is running while it trains.
    budget = ("--epochs", options.epochs) if options.epochs else ("--epochs", NO_EPOCH_LIMIT,
                                                                  "--max_minutes", options.minutes)
    command = script("train_328.py", "--dataset_dir", options.dataset_dir, "--save_dir", run_dir,
                     "--asr", "ave", "--model_size", options.model_size, "--batch_size", options.batch_size,
                     "--lr", options.lr, *budget, "--save_interval", save_interval(options), "--num_workers", 0,
                     "--device", "cpu", "--perceptual", "off", "--see_res", "--seed", options.seed, "--quiet",
                     *arm.options)
    command += [part for flag, value in PINNED_OPTIONS if flag not in arm.options for part in (flag, value)]
    if options.widths:
        command += ["--widths", *map(str, options.widths)]
    if arm.schedule_over_budget:
        command += ["--epochs", str(options.budget_epochs)]     # after the budget's: the last one counts
    if arm.uses_syncnet:
        command += ["--use_syncnet", "--syncnet_checkpoint", str(options.syncnet_checkpoint)]
    if resume:
        command.append("--resume")
    return command


def save_interval(options) -> int:
    # Every epoch is kept when the last few are averaged; else only the last (written at the end).
    return 1 if options.score_last > 1 else NO_EPOCH_LIMIT


def evaluation_arguments(options, run_dir: Path, output_dir: Path, new_speech: bool = True) -> List[str]:
    """evaluate_328.py's arguments scoring a run's last --score_last epochs without choosing: on
    --heldout_audio (against --truth_video when given), or with ``new_speech`` off on the held-out tail."""
    arguments = ["--dataset_dir", options.dataset_dir, "--checkpoint_dir", run_dir, "--last", options.score_last,
                 "--device", "cpu", "--no_select", "--no_video", "--quiet", "--output_dir", output_dir,
                 "--syncnet_checkpoint", options.syncnet_checkpoint]
    encoder = DatasetLayout(options.dataset_dir).ave_encoder
    if encoder.is_file():
        arguments += ["--ave_checkpoint", encoder]
    if new_speech:
        arguments += ["--audio_path", options.heldout_audio]
        if options.truth_video:
            arguments += ["--truth_video", options.truth_video]
    return [str(argument) for argument in arguments]


def evaluate_command(options, run_dir: Path, output_dir: Path, silence_hold: bool = True) -> List[str]:
    command = script("evaluate_328.py", *evaluation_arguments(options, run_dir, output_dir))
    if not silence_hold:
        command.append("--no_silence_hold")
    return command


def run_arm(arm: Arm, options, core: Optional[int]) -> Dict:
    """Train and score one arm (both pinned to ``core``); its figures and CPU seconds."""
    arm_dir = options.output_dir / arm.name
    earlier = options.earlier.get(arm.name)
    resume = earlier is not None and trained_run(options.output_dir, arm.name).is_file()
    for stale in ([arm_dir / "evaluation", arm_dir / "evaluation_own_motion"] if resume else [arm_dir]):
        if stale.exists():
            shutil.rmtree(stale)
    arm_dir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    figures = {"arm": arm.name, "says": arm.says, "options": list(arm.options), "core": core}
    stages = (("train", train_command(arm, options, arm_dir / "run", resume)),
              ("evaluate", evaluate_command(options, arm_dir / "run", arm_dir / "evaluation")),
              ("evaluate_own", evaluate_command(options, arm_dir / "run", arm_dir / "evaluation_own_motion",
                                                silence_hold=False)))
    for stage, command in stages:
        with open(arm_dir / f"{stage}.log", "w") as log:
            started = time.monotonic()
            process = subprocess.Popen(pinned(command, core), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       env=environment)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        figures[f"{stage}_wall_min"] = (time.monotonic() - started) / 60
        figures[f"{stage}_cpu_min"] = (usage.ru_utime + usage.ru_stime) / 60
        if process.returncode != 0:
            figures["failed"] = f"{stage} exited {process.returncode}: see {arm_dir / (stage + '.log')}"
            return figures
    if resume:      # the earlier sittings' training counts towards this arm's budget
        figures["train_cpu_min"] += earlier["train_cpu_min"]
        figures["train_wall_min"] += earlier["train_wall_min"]
        figures["sittings"] = earlier.get("sittings", 1) + 1
        if "minutes_from" in earlier:
            figures["earlier_minutes_from"] = earlier["minutes_from"]
    history = training_history(arm_dir / "run")
    figures.update(epochs=len(history), last_epoch=history[-1] if history else {})
    report = json.loads((arm_dir / "evaluation" / "scores.json").read_text())
    own = json.loads((arm_dir / "evaluation_own_motion" / "scores.json").read_text())
    (scores, spread), (own_scores, own_spread) = summary(report), summary(own)
    figures["scored_epochs"] = [entry["epoch"] for entry in report["checkpoints"]]
    figures["scores"] = {name: scores.get(name) for name in METRICS}
    figures["scores"].update({OWN_PREFIX + name: own_scores.get(name) for name in OWN_MOTION_METRICS})
    figures["sd"] = {name: spread.get(name) for name in METRICS}
    figures["sd"].update({OWN_PREFIX + name: own_spread.get(name) for name in OWN_MOTION_METRICS})
    figures["scores_by_epoch"] = {entry["epoch"]: {name: entry["scores"].get(name) for name in METRICS}
                                  for entry in report["checkpoints"]}
    figures["strip"] = report["checkpoints"][-1].get("strip") or report.get("strip")      # the last epoch's
    return figures


def summary(report: Dict) -> tuple:
    """(scores, their standard deviations) of an evaluation: the mean over its checkpoints when it
    scored several, else the one checkpoint's scores (and no spread)."""
    if report.get("mean"):
        return report["mean"]["scores"], report["mean"]["sd"]
    return report["checkpoints"][-1]["scores"], {}


def trained_run(output_dir: Path, arm_name: str) -> Path:
    """The latest.pth an earlier run of this harness left for ``arm_name`` in ``output_dir``."""
    return output_dir / arm_name / "run" / ckpt.LATEST


def earlier_figures(output_dir: Path) -> Dict[str, Dict]:
    """Each finished arm's figures from an earlier run of this harness into ``output_dir``, by name."""
    try:
        results = json.loads((output_dir / "ablation.json").read_text())
    except (OSError, ValueError):
        return {}
    return {result["arm"]: result for result in results if "failed" not in result}


def figures_from_history(output_dir: Path, arm_name: str, recorded: Optional[Dict] = None) -> Dict:
    """An arm's training minutes before this sitting: ``recorded`` (its figures in ablation.json, which
    count its first ``epochs``) plus the seconds each later epoch logged, trained in a sitting killed before
    it wrote figures (the arm trains on one pinned torch thread, so wall is CPU). Without ``recorded``,
    every epoch's seconds."""
    history = training_history(trained_run(output_dir, arm_name).parent)
    counted = recorded.get("epochs", len(history)) if recorded else 0
    minutes = sum(epoch.get("seconds", 0.0) for epoch in history[counted:]) / 60
    if recorded is None:
        return {"arm": arm_name, "train_cpu_min": minutes, "train_wall_min": minutes, "minutes_from": "history"}
    if not minutes:
        return recorded
    return {**recorded, "train_cpu_min": recorded["train_cpu_min"] + minutes,
            "train_wall_min": recorded["train_wall_min"] + minutes,
            "minutes_from": f"figures for epochs 1-{counted}, history after"}


def training_history(run_dir: Path) -> List[Dict]:
    return ckpt.read_checkpoint(run_dir / ckpt.LATEST).get("history", [])


def run_all(arms: Sequence[Arm], options) -> List[Dict]:
    """The arms, ``options.parallel`` at a time, each on its own core when there are enough."""
    from concurrent.futures import ThreadPoolExecutor

    cores = options.cores or list(range(options.parallel))
    pin = shutil.which("taskset") is not None and options.parallel <= min(len(cores), os.cpu_count() or 1)
    results: List[Dict] = []
    for first in range(0, len(arms), options.parallel):
        group = arms[first:first + options.parallel]
        budget = f"{options.epochs} epochs" if options.epochs else f"{options.minutes:g} min"
        print(f"training {', '.join(arm.name for arm in group)} ({budget} each)", flush=True)
        with ThreadPoolExecutor(len(group)) as pool:
            results += list(pool.map(lambda item: run_arm(item[1], options, cores[item[0]] if pin else None),
                                     enumerate(group)))
        write_outputs(results, options)
    return results


def cell(value, name: str, spread=None) -> str:
    """A score as the table shows it; a mean over epochs with its spread as "MEAN ±SD"."""
    if value is None:
        return "n/a"
    name = name[len(OWN_PREFIX):] if name.startswith(OWN_PREFIX) else name
    if name == "opening_offset":
        text = f"{value:+.1f}" if spread is not None else f"{int(value):+d}"
    else:
        pattern = "{:.2f}" if name in ("mouth_psnr", "psnr", "opening_correlation", "opening_ratio") else "{:.4f}"
        text = pattern.format(value)
    if spread is not None and name in SPREAD_SHOWN:
        text += f" ±{spread:.2f}"
    return text


def table(results: Sequence[Dict], options) -> str:
    columns = METRICS + tuple(OWN_PREFIX + name for name in OWN_MOTION_METRICS)
    header = ["arm", "what", "CPU min", "epochs", "scored", "val PSNR", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        if "failed" in result:
            lines.append(f"| {result['arm']} | {result['says']} | failed: {result['failed']} |")
            continue
        last = result.get("last_epoch", {})
        row = [result["arm"], result["says"], f"{result['train_cpu_min']:.1f}", str(result["epochs"]),
               scored_span(result), f"{last.get('val_psnr', float('nan')):.2f}"]
        spreads = result.get("sd") or {}
        row += [cell(result["scores"].get(name), name, spreads.get(name)) for name in columns]
        lines.append("| " + " | ".join(row) + " |")
    per_arm = f"{options.epochs} epochs" if options.epochs else f"{options.minutes:g} min of training"
    scored = (f"each score the mean over the last {options.score_last} epochs' checkpoints (\"scored\"), "
              "± the standard deviation of the motion scores among them" if options.score_last > 1
              else "scored at the last epoch")
    budget = (f"Budget: {per_arm} per arm on one pinned core (one torch thread), "
              + (f"widths {as_typed(options.widths)}" if options.widths else f"{options.model_size} width")
              + f", batch {options.batch_size}, lr {options.lr:g}, seed {options.seed}; "
              f"scored on {Path(options.heldout_audio).name}"
              + (f" against {Path(options.truth_video).name}" if options.truth_video else " (no truth)")
              + f"; {scored}")
    return budget + "\n\n" + "\n".join(lines) + "\n"


def scored_span(result: Dict) -> str:
    """The epochs an arm's scores come from: "8-10", or "10" (arms scored before averaging: their last)."""
    epochs = result.get("scored_epochs") or [result["epochs"]]
    return f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])


def combined_strip(results: Sequence[Dict], path: Path) -> Optional[Path]:
    """The truth's row once, then every arm's generated row, labelled (each strip is truth above, arm below)."""
    import cv2

    rows = []
    for result in results:
        strip_path = result.get("strip")
        if not strip_path or not Path(strip_path).is_file():
            continue
        strip = cv2.imread(str(strip_path))
        half = strip.shape[0] // 2
        if not rows:
            rows.append(strip[:half])
        row = strip[half:].copy()
        for colour, thickness in LABEL_STROKES:          # evaluation's outlined labels
            cv2.putText(row, result["arm"], (8, row.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour,
                        thickness, cv2.LINE_AA)
        rows.append(row)
    if not rows:
        return None
    width = min(row.shape[1] for row in rows)
    cv2.imwrite(str(path), np.concatenate([row[:, :width] for row in rows], axis=0))
    return path


def write_outputs(results: Sequence[Dict], options) -> None:
    # With --resume_arms the folder's other arms stay in its table: only the arms run now are replaced.
    run_now = {result["arm"] for result in results}
    results = [figures for name, figures in options.earlier.items() if name not in run_now] + list(results)
    (options.output_dir / "ablation.json").write_text(json.dumps(list(results), indent=2, default=str))
    (options.output_dir / "ablation.md").write_text(table(results, options))
    combined_strip(results, options.output_dir / "strip.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="dataset/NAME (or --dataset_dir)")
    parser.add_argument("--dataset_dir")
    parser.add_argument("--syncnet_checkpoint", required=True, help="a trained SyncNet, shared by every sync arm")
    parser.add_argument("--heldout_audio", required=True, help="speech the recording does not contain")
    parser.add_argument("--truth_video", help="the person really saying --heldout_audio (framed like the recording)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["l1", "sync_fixed", "adaptive",
                                                                          "adaptive_r3"])
    parser.add_argument("--minutes", type=float, default=30.0, help="training minutes per arm (default 30)")
    parser.add_argument("--epochs", type=int,
                        help="train every arm exactly this many epochs instead of --minutes: the same steps for "
                             "every arm on a host whose speed varies (the CPU minutes each took are reported)")
    parser.add_argument("--resume_arms", action="store_true",
                        help="an arm this OUTPUT_DIR already holds continues from its latest.pth (to --epochs) "
                             "instead of starting over; its CPU minutes add up")
    parser.add_argument("--score_last", type=int, default=DEFAULT_SCORE_LAST, metavar="K",
                        help="score each arm's last K epochs' checkpoints and report their mean (default "
                             f"{DEFAULT_SCORE_LAST}; 1: the last epoch only)")
    parser.add_argument("--parallel", type=int, default=1, help="arms at a time, one core each (default 1)")
    parser.add_argument("--cores", type=int, nargs="+",
                        help="the cores to pin the arms to (default 0 .. --parallel - 1)")
    parser.add_argument("--model_size", default="tiny")
    parser.add_argument("--widths", type=int, nargs=DOWNSAMPLINGS, metavar="C",
                        help="the U-Net's channel widths instead of --model_size's (train_328.py --widths)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget_epochs", type=int,
                        help="the epochs --minutes holds on this machine (an arm stops after the first epoch that "
                             "ends past it): the length an arm's LR schedule spreads over; needed by "
                             + ", ".join(name for name, arm in ARMS.items() if arm.schedule_over_budget))
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    return parser


@exit_on_user_error
def main(argv=None):
    options = build_parser().parse_args(argv)
    options.dataset_dir = chosen_dataset_dir(options.name, options.dataset_dir, "train the arms on")
    if options.epochs is not None and options.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {options.epochs}")
    if options.score_last < 1:
        raise UserError(f"--score_last must be at least 1, got {options.score_last}")
    options.budget_epochs = options.budget_epochs or options.epochs     # an epoch budget is the schedule's
    scheduled = [name for name in options.arms if ARMS[name].schedule_over_budget]
    if scheduled and (options.budget_epochs or 0) < 1:
        raise UserError(f"{', '.join(scheduled)} need --budget_epochs: the epochs {options.minutes:g} minutes "
                        "hold on this machine (from an L1 arm's epoch time)")
    options.earlier = earlier_figures(options.output_dir) if options.resume_arms else {}
    if options.resume_arms:
        # An arm killed mid-sitting has epochs its figures do not count (all of them if it wrote none):
        # its history still knows their time.
        for name in options.arms:
            if trained_run(options.output_dir, name).is_file():
                options.earlier[name] = figures_from_history(options.output_dir, name, options.earlier.get(name))
    options.output_dir.mkdir(parents=True, exist_ok=True)
    results = run_all([ARMS[name] for name in options.arms], options)
    print(table(results, options))
    return results


if __name__ == "__main__":
    main()
