"""How well the person's AVE encoder learns from a recording, for variants of its training.

    python benchmarks/bench_ave_learning.py --dataset_dir dataset/real_a [--variants default augment ...]
        [--seeds 0 1 2] [--json out.json]

The dataset must be preprocessed (frames, crop boxes, aud.wav). The mel windows and mouth
crops are prepared once; each variant of AveTrainConfig then learns the encoder from the
training part with every seed, and the held-out tail's sync accuracy (the in-sync pair above
off-sync pairs; chance 0.5) is printed per seed with the mean, so that the spread between
seeds shows what a difference between variants is worth.
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
from data_utils.features.ave_training import AveTrainConfig, load_mouth_crops, train_sync_model  # noqa: E402
from data_utils.features.dataset_audio import frame_aligned_samples, require_audio_and_frames  # noqa: E402
from data_utils.layout import DatasetLayout  # noqa: E402

VARIANTS = {
    "default": {},
    "augment": {"audio_augment": True},
    "steps_100": {"min_steps": 100, "max_steps": 100},
    "steps_900": {"min_steps": 900, "max_steps": 900},
    "augment_steps_900": {"audio_augment": True, "min_steps": 900, "max_steps": 900},
    "temperature_0.2": {"temperature": 0.2},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, type=Path)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["default", "augment"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    layout = DatasetLayout(args.dataset_dir)
    frames = require_audio_and_frames(layout)
    mel_windows = ave_mel_windows(frame_aligned_samples(layout, frames), frames)
    crops = load_mouth_crops(layout, frames, progress=False)
    rows = []
    for name in args.variants:
        accuracies, seconds = [], []
        for seed in args.seeds:
            config = replace(AveTrainConfig(), seed=seed, **VARIANTS[name])
            started = time.perf_counter()
            _, report = train_sync_model(mel_windows, crops, config, progress=False)
            seconds.append(time.perf_counter() - started)
            accuracies.append(report["heldout_sync_accuracy"])
        row = {"variant": name, "changes": VARIANTS[name], "steps": report["steps"], "frames": frames,
               "train_frames": report["train_frames"], "heldout_frames": report["heldout_frames"],
               "accuracies": accuracies, "mean": float(np.mean(accuracies)), "seconds": float(np.mean(seconds))}
        rows.append(row)
        print(f"{name}: held-out sync accuracy {' '.join(f'{value:.3f}' for value in accuracies)} "
              f"(mean {row['mean']:.3f}; {row['steps']} steps, {row['seconds']:.0f} s each; "
              f"{row['train_frames']} train / {row['heldout_frames']} held-out frames)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
