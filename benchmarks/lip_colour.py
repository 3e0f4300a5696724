"""How red the lips a U-Net run draws are, epoch by epoch, against the truth.

    python benchmarks/lip_colour.py --name talker_a --checkpoint_dir RUN [--epochs 4 8 12]

The landmark detector reads pale, skin-coloured lips around a dark line as a mouth barely
open, so a run that cannot draw the lips' red scores a narrow opening whatever its timing
(benchmarks/RESULTS.md, "Lip codes, and the colour head"). This draws the recording's held-out
tail (the frames training validates on, each with a fixed reference from the tail, as validation
draws them) with each chosen checkpoint and prints the lips' redness: over the lips' box
(data_utils.crop.LIP_*), the mean R - G (colours in [0, 1]) of each frame's reddest tenth of
pixels (lipsync/core/lip_colour.py), averaged over the frames; the true crops' figure comes
first. Seconds per checkpoint on a CPU at the tiny widths.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

from data_utils.dataset import DEFAULT_VAL_FRACTION, LipSyncDataset, open_person  # noqa: E402
from data_utils.layout import chosen_dataset_dir  # noqa: E402
from data_utils.model_input import model_input_batch  # noqa: E402
from lipsync.core import checkpoints as ckpt  # noqa: E402
from lipsync.core.errors import UserError, exit_on_user_error  # noqa: E402
from lipsync.core.lip_colour import lip_redness  # noqa: E402

BATCH = 10


def redness(images: torch.Tensor) -> np.ndarray:
    """(B,) lipsync.core.lip_colour.lip_redness of a batch, as numbers."""
    return lip_redness(images).numpy()


@torch.no_grad()
def tail_redness(person, checkpoints: Dict[int, Path], val_fraction: float, seed: int) -> Dict[str, float]:
    """{"truth": ..., "epoch N": ...}: the held-out tail's lip redness, true and drawn by each checkpoint."""
    _, tail = person.split(val_fraction)
    if not len(tail):
        raise UserError(f"--val_fraction {val_fraction:g} leaves no held-out tail to draw")
    models = {epoch: ckpt.load_unet(path, asr=person.asr)[0] for epoch, path in checkpoints.items()}
    reference_counts = {model.reference_frames for model in models.values()}
    figures = {"truth": [], **{f"epoch {epoch}": [] for epoch in models}}
    for count in sorted(reference_counts):
        samples = LipSyncDataset(person, tail, tail, seed, count)
        for start in range(0, len(samples), BATCH):
            batch = torch.utils.data.default_collate([samples[item] for item in
                                                      range(start, min(start + BATCH, len(samples)))])
            image6, truth = model_input_batch(batch["target"], batch["reference"])
            if count == min(reference_counts):
                figures["truth"].extend(redness(truth))
            for epoch, model in models.items():
                if model.reference_frames == count:
                    figures[f"epoch {epoch}"].extend(redness(model(image6, batch["audio"])))
    return {name: float(np.mean(values)) for name, values in figures.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="dataset/NAME (or --dataset_dir)")
    parser.add_argument("--dataset_dir")
    parser.add_argument("--checkpoint_dir", type=Path, required=True, help="a U-Net run's folder (N.pth per epoch)")
    parser.add_argument("--epochs", type=int, nargs="+", help="which epochs (default: every one saved)")
    parser.add_argument("--asr", default="ave")
    parser.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help=f"the held-out tail the run was trained with (default {DEFAULT_VAL_FRACTION:g})")
    parser.add_argument("--seed", type=int, default=0, help="draws the tail's references")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] = None) -> int:
    options = build_parser().parse_args(argv)
    saved = ckpt.numbered_epochs(options.checkpoint_dir)
    wanted = options.epochs or sorted(saved)
    missing = [epoch for epoch in wanted if epoch not in saved]
    if not saved or missing:
        raise UserError(f"{options.checkpoint_dir} has no checkpoint of epoch "
                        f"{', '.join(map(str, missing)) if missing else 'any'} — pick from "
                        f"{sorted(saved) or 'a trained run'}")
    person = open_person(chosen_dataset_dir(options.name, options.dataset_dir, "measure"), options.asr,
                         show_progress=False)
    figures = tail_redness(person, {epoch: saved[epoch] for epoch in wanted}, options.val_fraction, options.seed)
    print("drawn by | lips' redness (reddest tenth of the lips' box, R - G)")
    for name, value in figures.items():
        print(f"{name} | {value:.3f}")
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
