"""The pixels of an output frame: which recording frame is the background, and how the
generated mouth square goes back into it (colour matching, feathered paste-back).

- background order: the processed recording played forward and backward from
  ``start_frame`` (ping-pong), so audio longer than the recording never jumps
  back to its first frame;
- paste-back: the generated 320 square replaces the 328 crop's centre and is
  blended into the frame through data_utils.crop.paste_crop's feathered mask
  (no hard rectangle), optionally after matching its colours to the frame.
"""
import functools

import numpy as np

from data_utils import crop as crop_geometry

DEFAULT_FEATHER_PX = 12.0        # crop pixels over which the generated region fades into the frame
# Colour matching: per-channel gain is limited so a dark or flat patch cannot blow up the colours.
COLOUR_GAIN_LIMITS = (0.5, 2.0)
COLOUR_STD_FLOOR = 1.0


def pingpong_index(position: int, frame_count: int) -> int:
    """Recording frame shown at ``position`` when playing 0 .. N-1, N-2 .. 0, 1 .. (no frame doubled)."""
    if frame_count <= 1:
        return 0
    period = 2 * (frame_count - 1)
    phase = position % period
    return phase if phase < frame_count else period - phase


def pingpong_indices(start_frame: int, count: int, frame_count: int) -> np.ndarray:
    """Recording frames for ``count`` output frames starting at recording frame ``start_frame``."""
    return np.array([pingpong_index(start_frame + k, frame_count) for k in range(count)], dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _kept_region() -> np.ndarray:
    """(320, 320) uint8, 255 where the model does not repaint the inner crop (an OpenCV mask)."""
    return np.where(crop_geometry.inner_mask() == 0, 255, 0).astype(np.uint8)


def match_colours(generated: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``generated`` (320, 320, 3) uint8 with its colours matched to ``original``.

    The model redraws the whole square but only its repainted region is
    pasted; outside that region it should reproduce the real frame exactly, so
    any colour cast shows there, free of the mouth's own change. A per-channel
    gain and offset that maps the generated statistics of that area onto the
    real ones is applied to the whole square (as a lookup table: uint8 in, uint8 out).
    """
    import cv2

    kept = _kept_region()
    generated_mean, generated_std = (value.ravel() for value in cv2.meanStdDev(generated, mask=kept))
    original_mean, original_std = (value.ravel() for value in cv2.meanStdDev(original, mask=kept))
    gain = np.clip(np.maximum(original_std, COLOUR_STD_FLOOR) / np.maximum(generated_std, COLOUR_STD_FLOOR),
                   *COLOUR_GAIN_LIMITS)
    levels = np.arange(256, dtype=np.float64)[:, None]
    table = np.clip((levels - generated_mean) * gain + original_mean + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(generated, table[None])             # (1, 256, 3): one table per channel


def compose_frame(frame: np.ndarray, crop_328: np.ndarray, generated_320: np.ndarray, box,
                  feather_px: float = DEFAULT_FEATHER_PX, colour_match: bool = False) -> np.ndarray:
    """Paste the generated (320, 320, 3) BGR square into ``frame`` (changed in place and returned).

    ``crop_328`` is the frame's own 328 crop (cut_crop with ``box``); its
    centre is replaced by the generated square and the result is blended back
    through the feathered repainted-region mask, so pixels outside that region
    keep their exact values and the edge ramps over ``feather_px`` crop pixels.
    """
    inner = crop_328[crop_geometry.INNER, crop_geometry.INNER]
    if colour_match:
        generated_320 = match_colours(generated_320, inner)
    patched = crop_328.copy()
    patched[crop_geometry.INNER, crop_geometry.INNER] = generated_320
    return crop_geometry.paste_crop(frame, patched, box, feather_px)
