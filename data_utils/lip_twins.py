"""Lip twins: training frames, half a second or more apart, whose lips have the same shape.

The audio of a frame's twin was spoken with the mouth that frame shows, so it is another true
input for the same target (train_328.py --twin_audio_share). A U-Net that sees every mouth with
several windows of audio cannot key a training frame's mouth to the exact features of its own
window, which is how a run can follow its training audio at full gain and unseen speech at half
(benchmarks/RESULTS.md, "Noise at the seeds that work, L1 alone at seeds 1 and 2, and lip twins").

A lip shape is the lips' landmarks around their own centre, in face widths: where the head is in
the frame does not count, how the lips are shaped does.
"""
from typing import Sequence

import numpy as np

from data_utils.crop import face_width, scheme_for

# 12 frames = 0.48 s: another stretch of speech, not the same syllable's neighbour.
TWIN_MIN_GAP_FRAMES = 12
TWINS_PER_FRAME = 8
NO_TWIN = -1
_ROWS_PER_BLOCK = 512            # distances in blocks of rows: all of a 5-minute recording's would take GBs


def lip_shapes(landmarks: np.ndarray) -> np.ndarray:
    """(N, 2 x lip points) float32: each frame's lips around their centre, in face widths."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    lips = landmarks[:, list(scheme_for(landmarks).lips)]
    centred = lips - lips.mean(axis=1, keepdims=True)
    width = np.maximum(face_width(landmarks), 1e-6)[:, None, None]
    return (centred / width).reshape(len(landmarks), -1).astype(np.float32)


def lip_twins(landmarks: np.ndarray, frames: Sequence[int], count: int = TWINS_PER_FRAME,
              min_gap: int = TWIN_MIN_GAP_FRAMES) -> np.ndarray:
    """(len(frames), count) frame indices: for each of ``frames`` its nearest lip shapes among
    ``frames`` at least ``min_gap`` frames away, nearest first, NO_TWIN where there are fewer.

    A twin must also be nearer than the recording's median change of lip shape from one frame to
    the next among ``frames``: closer than a typical 40 ms of speech moves the lips.
    """
    frames = np.asarray(frames, dtype=np.int64)
    shapes = lip_shapes(landmarks)[frames]
    twins = np.full((len(frames), count), NO_TWIN, dtype=np.int64)
    if len(frames) < 2:
        return twins
    consecutive = np.flatnonzero(np.diff(frames) == 1)
    steps = np.linalg.norm(shapes[consecutive + 1] - shapes[consecutive], axis=1)
    limit = float(np.median(steps)) if len(steps) else np.inf
    squares = (shapes.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, len(frames), _ROWS_PER_BLOCK):
        block = slice(start, start + _ROWS_PER_BLOCK)
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: one matrix product instead of a (rows, N, points) difference.
        squared = squares[block, None] + squares[None, :] - 2.0 * (shapes[block].astype(np.float64) @ shapes.T)
        distances = np.sqrt(np.maximum(squared, 0.0))
        distances[np.abs(frames[block, None] - frames[None, :]) < min_gap] = np.inf
        distances[distances > limit] = np.inf
        kept = min(count, distances.shape[1])
        nearest = np.argpartition(distances, kept - 1, axis=1)[:, :kept]
        order = np.argsort(np.take_along_axis(distances, nearest, axis=1), axis=1, kind="stable")
        nearest = np.take_along_axis(nearest, order, axis=1)
        found = np.isfinite(np.take_along_axis(distances, nearest, axis=1))
        twins[block, :kept] = np.where(found, frames[nearest], NO_TWIN)
    return twins
