"""How well the person's AVE encoder learns from a recording, for variants of its training.

    python benchmarks/bench_ave_learning.py --dataset_dir dataset/real_a [--variants default augment ...]
        [--seeds 0 1 2] [--folds 4] [--json out.json]

The dataset must be preprocessed (frames, crop boxes, aud.wav). The mel windows and mouth
crops are prepared once; each variant of AveTrainConfig then learns the encoder from the
training part with every seed, and the held-out tail's sync accuracy (the in-sync pair above
off-sync pairs; chance 0.5) is printed per seed with the mean, so that the spread between
seeds shows what a difference between variants is worth.

A short recording's tail is few frames (38 of a 10 s clip), so one held-out part says little.
--folds K holds out K parts in turn, from the start of the recording to its end (the recording is
reordered so that the part is the tail, the frames within HELDOUT_GAP after it left out as
before it; the two ends meet once inside the training part), and reports the mean over all.
"""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from data_utils.features.ave import ave_mel_windows  # noqa: E402
from data_utils.features.ave_training import (HELDOUT_GAP, AveTrainConfig, heldout_count,  # noqa: E402
                                              load_mouth_crops, train_sync_model)
from data_utils.features.dataset_audio import frame_aligned_samples, require_audio_and_frames  # noqa: E402
from data_utils.layout import DatasetLayout  # noqa: E402

VARIANTS = {
    "default": {},
    "augment": {"audio_augment": True},
    "steps_100": {"min_steps": 100, "max_steps": 100},
    "steps_900": {"min_steps": 900, "max_steps": 900},
    "augment_steps_900": {"audio_augment": True, "min_steps": 900, "max_steps": 900},
    "temperature_0.2": {"temperature": 0.2},
    "shift_6": {"mouth_shift_px": 6},
    "weight_decay_0.05": {"weight_decay": 0.05},
    "batch_48": {"batch_size": 48},
}


def fold_orders(frames: int, folds: int, heldout_fraction: float):
    """For each fold, (frame order whose tail is that fold's held-out part, the held-out fraction that
    makes train_sync_model hold out exactly that part)."""
    if folds == 1:
        return [(np.arange(frames), heldout_fraction)]
    held = heldout_count(frames - HELDOUT_GAP, heldout_fraction)
    orders = []
    for fold in range(folds):
        start = int(round(fold * (frames - held) / (folds - 1)))
        after = np.arange(min(start + held + HELDOUT_GAP, frames), frames)
        order = np.concatenate([after, np.arange(start), np.arange(start, start + held)])
        # ceil(len * fraction) == held exactly, whatever the rounding of the division
        orders.append((order, (held - 0.5) / len(order)))
    return orders


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, type=Path)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["default", "augment"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--folds", type=int, default=1,
                        help="hold out this many parts of the recording in turn (default 1: its tail)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    layout = DatasetLayout(args.dataset_dir)
    frames = require_audio_and_frames(layout)
    mel_windows = ave_mel_windows(frame_aligned_samples(layout, frames), frames)
    crops = load_mouth_crops(layout, frames, progress=False)
    rows = []
    for name in args.variants:
        accuracies, seconds, by_fold = [], [], []
        for seed in args.seeds:
            config = replace(AveTrainConfig(), seed=seed, **VARIANTS[name])
            per_fold = []
            for order, fraction in fold_orders(frames, args.folds, config.heldout_fraction):
                started = time.perf_counter()
                _, report = train_sync_model(mel_windows[order], crops[order],
                                             replace(config, heldout_fraction=fraction), progress=False)
                seconds.append(time.perf_counter() - started)
                per_fold.append(report["heldout_sync_accuracy"])
            accuracies.append(float(np.mean(per_fold)))
            by_fold.append(per_fold)
        row = {"variant": name, "changes": VARIANTS[name], "steps": report["steps"], "frames": frames,
               "train_frames": report["train_frames"], "heldout_frames": report["heldout_frames"],
               "accuracies": accuracies, "by_fold": by_fold, "mean": float(np.mean(accuracies)),
               "seconds": float(np.mean(seconds))}
        rows.append(row)
        print(f"{name}: held-out sync accuracy {' '.join(f'{value:.3f}' for value in accuracies)} "
              f"(mean {row['mean']:.3f}; {row['steps']} steps, {row['seconds']:.0f} s each; "
              f"{row['train_frames']} train / {row['heldout_frames']} held-out frames"
              + (f"; by fold {' '.join(f'{value:.2f}' for value in by_fold[-1])}" if args.folds > 1 else "")
              + ")", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
