"""Per-frame weights that count the recording's rarer mouth openings more (--opening_balance).

Why: on audio it has not heard the U-Net is unsure how wide the mouth opens, and L1 draws the
median of what it is unsure between. Most frames of speech show a small opening and few a
wide one, so that median sits below the wide ones: the mouth opens too little (benchmarks/
RESULTS.md measured 0.7 of the truth's opening). Weighting each frame by the inverse of how
common its opening is in the recording (the reweighting of imbalanced regression, on a
smoothed histogram) evens the openings out in the loss.

    weight(frame) = density(opening(frame)) ** -strength, scaled to mean 1 over the frames

strength 0 counts every frame alike; 1 counts every opening alike; 0.5 (the inverse square
root) is between. Weights are capped at MAX_WEIGHT times the mean so that a handful of
extreme frames cannot take over the loss.
"""
import numpy as np

from data_utils.layout import DatasetLayout
from lipsync.core.errors import UserError
from lipsync.evaluate.metrics import mouth_opening

OPENING_BINS = 16              # histogram bins over the recording's openings
SMOOTHING_BINS = 1.0           # Gaussian smoothing of the histogram (sigma, in bins)
MAX_WEIGHT = 5.0               # a frame counts at most this many times the mean frame


def smoothed_density(values: np.ndarray, bins: int = OPENING_BINS, sigma: float = SMOOTHING_BINS) -> np.ndarray:
    """The share of ``values`` near each value: a histogram smoothed with a Gaussian, read at each value."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.ones_like(values)
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = np.arange(bins)
    distance = centres[:, None] - centres[None, :]
    kernel = np.exp(-0.5 * (distance / sigma) ** 2) if sigma > 0 else (distance == 0).astype(float)
    # Normalised as on an unbounded line, so a bin at the edge keeps the share of its own count that an
    # inner bin keeps: each group of equal openings is thinned alike wherever it lies.
    whole_line = np.arange(-bins, bins + 1)
    kernel = kernel / (np.exp(-0.5 * (whole_line / sigma) ** 2).sum() if sigma > 0 else 1.0)
    smoothed = kernel @ counts
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    return smoothed[which] / len(values)


def balance_weights(openings: np.ndarray, strength: float, max_weight: float = MAX_WEIGHT) -> np.ndarray:
    """(N,) weights, mean 1, for frames of these openings (NaN: weight 1, the mean)."""
    openings = np.asarray(openings, dtype=np.float64)
    weights = np.ones(len(openings))
    known = np.isfinite(openings)
    if strength == 0 or known.sum() < 2:
        return weights
    raw = smoothed_density(openings[known]) ** -strength
    raw = raw / raw.mean()
    # Capping lowers the mean; repeat until the capped weights' mean is 1 again.
    for _ in range(20):
        raw = np.minimum(raw, max_weight)
        raw = raw / raw.mean()
        if raw.max() <= max_weight + 1e-9:
            break
    weights[known] = raw
    return weights


def frame_weights(layout: DatasetLayout, frames: np.ndarray, strength: float) -> np.ndarray:
    """(frame count,) weights indexed by frame number, balanced over ``frames`` (the training frames)."""
    path = layout.landmarks_array
    if not path.is_file():
        raise UserError(f"--opening_balance needs the recording's landmarks, {path} is missing — re-run "
                        f"preprocessing (python data_utils/process.py {layout.root}) or use --opening_balance 0")
    landmarks = np.load(path)
    weights = np.ones(len(landmarks), dtype=np.float32)
    frames = np.asarray(frames)
    weights[frames] = balance_weights(mouth_opening(landmarks[frames]), strength)
    return weights
