"""Frames without a face pass through untouched: which recording frames have one, and how
strongly the generated mouth is painted on each (it fades out over ``faceless_fade``
frames before a faceless stretch and back in after it, raised cosine)."""
import numpy as np

from data_utils.layout import DatasetLayout, process_command
from lipsync.core.errors import UserError

DEFAULT_FACELESS_FADE_FRAMES = 3      # 120 ms: the generated mouth fades out before a faceless stretch


def load_face_found(layout: DatasetLayout, frame_count: int) -> np.ndarray:
    """(frames,) bool from face_found.npy; all True for datasets processed before it existed."""
    path = layout.face_found
    if not path.is_file():
        return np.ones(frame_count, dtype=bool)
    try:
        found = np.load(path).astype(bool).reshape(-1)
    except (OSError, ValueError):
        raise UserError(f"{path} is damaged — run again: {process_command(layout)}") from None
    if len(found) != frame_count:
        raise UserError(f"{path} has {len(found)} frames but {layout.crop_boxes.name} has {frame_count} — "
                        f"run again: {process_command(layout)}")
    return found


def presence_weights(face_found: np.ndarray, fade_frames: int = DEFAULT_FACELESS_FADE_FRAMES) -> np.ndarray:
    """(frames,) float32 share of the generated mouth in each recording frame.

    0 where no face was found; a raised-cosine ramp over ``fade_frames``
    frames on either side of such a stretch; 1 elsewhere.
    """
    found = np.asarray(face_found, dtype=bool)
    count = len(found)
    if found.all():
        return np.ones(count, np.float32)
    missing = np.flatnonzero(~found)
    # Distance of every frame to the nearest faceless frame.
    positions = np.arange(count)
    after = np.searchsorted(missing, positions)
    nearest_after = np.abs(missing[np.minimum(after, len(missing) - 1)] - positions)
    nearest_before = np.abs(positions - missing[np.maximum(after - 1, 0)])
    distance = np.minimum(nearest_after, nearest_before).astype(np.float64)
    if fade_frames <= 0:
        return (distance > 0).astype(np.float32)
    weights = 0.5 - 0.5 * np.cos(np.pi * np.minimum(distance, fade_frames + 1) / (fade_frames + 1))
    return np.where(distance > fade_frames, 1.0, weights).astype(np.float32)
