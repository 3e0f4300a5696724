"""How much of the mouth's opening the U-Net's masked target still shows.

    python benchmarks/mask_leak.py --name talker_a

The U-Net sees each training frame with the repainted region blacked out and must draw the
mouth from the audio. If the pixels left visible (the nose band above the mask, the strips
beside it, the neck band below it) tell the mouth's opening, training can fit the mouth from
them instead of from the audio, and at inference, where those pixels come from a frame whose
mouth said something else, the drawn mouth follows neither. This measures that: a ridge
regression from each region's pixels (grey, downsampled) to the frame's mouth opening (its
landmarks' inner-lip gap), fitted on the recording's first part and scored (Pearson r) on a
later stretch it never saw, each region on its own and as the U-Net sees it with and without
--mask_to_edges. The repainted region itself is the ceiling; r near 0 means no leak. Neighbouring
frames are near-copies, so the scored stretch is separated from the fitted one by a gap.
Seconds on a CPU; no model involved.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

from data_utils.crop import (INNER, INNER_SIZE, MASK_BOTTOM, MASK_LEFT, MASK_RIGHT, MASK_TOP,  # noqa: E402
                             shown_to_edges)
from data_utils.crop_cache import build_crop_cache, open_crop_cache  # noqa: E402
from data_utils.dataset import load_crop_boxes  # noqa: E402
from data_utils.layout import DatasetLayout, chosen_dataset_dir  # noqa: E402
from lipsync.core.errors import UserError, exit_on_user_error  # noqa: E402
from lipsync.evaluate.metrics import mouth_opening  # noqa: E402

DOWNSAMPLE = 4                   # 320 -> 80 pixels a side: the regions' shapes, not their texture
SCORED_SHARE = 0.15              # the last 15 % of the recording is scored
GAP_FRAMES = 25                  # one second between the fitted and the scored frames
CHOSEN_SHARE = 0.15              # the fitted part's last 15 % chooses the ridge's strength
RIDGES = (1.0, 10.0, 100.0, 1000.0, 10000.0)
MIN_FRAMES = 200


def regions() -> Dict[str, np.ndarray]:
    """(320, 320) boolean masks of the crop's regions, in the U-Net's inner pixels."""
    def empty():
        return np.zeros((INNER_SIZE, INNER_SIZE), bool)
    repainted = empty()
    repainted[MASK_TOP:MASK_BOTTOM, MASK_LEFT:MASK_RIGHT] = True
    nose = shown_to_edges()                 # the band above the mask is all --mask_to_edges leaves
    neck = empty()
    neck[MASK_BOTTOM:] = True
    sides = ~(repainted | nose | neck)
    return {
        "nose band (above the mask)": nose,
        "side strips": sides,
        "neck band (below the mask)": neck,
        "all the masked target shows": ~repainted,
        "all it shows with --mask_to_edges": nose,
        "the repainted region (the ceiling)": repainted,
    }


def grey_small(crops) -> np.ndarray:
    """(N, 80, 80) float32: each crop's inner square, grey, block-averaged."""
    count = len(crops)
    side = INNER_SIZE // DOWNSAMPLE
    out = np.empty((count, side, side), np.float32)
    for index in range(count):
        grey = np.asarray(crops[index][INNER, INNER], np.float32).mean(axis=-1)
        out[index] = grey.reshape(side, DOWNSAMPLE, side, DOWNSAMPLE).mean(axis=(1, 3))
    return out


def held_out_r(pixels: np.ndarray, openings: np.ndarray) -> float:
    """Pearson r of a ridge read-out on the scored stretch; its strength chosen on the fitted part's end."""
    count = len(openings)
    scored_start = int(count * (1 - SCORED_SHARE))
    fitted_end = scored_start - GAP_FRAMES
    chosen_start = int(fitted_end * (1 - CHOSEN_SHARE))
    inner_end = chosen_start - GAP_FRAMES

    def fit(stop, ridge):
        rows = pixels[:stop]
        mean, scale = rows.mean(axis=0), rows.std(axis=0) + 1e-3
        inputs = (rows - mean) / scale
        targets = openings[:stop] - openings[:stop].mean()
        weights = np.linalg.solve(inputs.T @ inputs + ridge * np.eye(inputs.shape[1]), inputs.T @ targets)
        return lambda frames: ((frames - mean) / scale) @ weights

    def score(predict, start, stop):
        return float(np.corrcoef(predict(pixels[start:stop]), openings[start:stop])[0, 1])

    ridge = max(RIDGES, key=lambda value: score(fit(inner_end, value), chosen_start, fitted_end))
    return score(fit(fitted_end, ridge), scored_start, count)


def measure(layout: DatasetLayout) -> Dict[str, float]:
    boxes = load_crop_boxes(layout)
    if len(boxes) < MIN_FRAMES:
        raise UserError(f"{layout.root} has {len(boxes)} frames; the read-out needs at least {MIN_FRAMES}")
    build_crop_cache(layout, boxes, show_progress=True)
    crops = open_crop_cache(layout, len(boxes))
    openings = mouth_opening(np.load(layout.landmarks_array))
    small = grey_small(crops)
    results = {}
    for name, region in regions().items():
        kept = region[::DOWNSAMPLE, ::DOWNSAMPLE]
        results[name] = held_out_r(small[:, kept], openings)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="dataset/NAME (or --dataset_dir)")
    parser.add_argument("--dataset_dir")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] = None) -> int:
    options = build_parser().parse_args(argv)
    layout = DatasetLayout(chosen_dataset_dir(options.name, options.dataset_dir, "measure"))
    results = measure(layout)
    print("region | held-out r of the opening read from its pixels")
    for name, value in results.items():
        print(f"{name} | {value:.2f}")
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
