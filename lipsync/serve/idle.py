"""The idle face: what a session shows when nobody speaks, made once and shared by every session.

The idle loop plays recording frames 0 .. K-1 forward and back (ping-pong,
lipsync/render/frames.py), each with the person's own closed mouth pasted in
exactly as the silence hold does in a pause (lipsync/render/mouth_control.py),
so silence never runs the model and the face at rest is the same one the
pauses inside speech show. The K frames are composed once at start and kept
in memory (K x width x height x 3 bytes), because every session at every
idle slot needs one. With --no_silence_hold the idle face is the recording
as it is.

``mouth_region`` says where in the frame the mouth is painted, for clients
that want to watch it (the page's status, the tests, the benchmark).
"""
import logging
from typing import List, Tuple

import numpy as np

from data_utils import crop as crop_geometry
from lipsync.render.frames import pingpong_index

log = logging.getLogger(__name__)

FULL_HOLD = 1.0                 # hold weight: all of the closed mouth, none of the model's


class IdleLoop:
    """``frame(phase)``: the idle frame at ping-pong position ``phase`` (any integer >= 0)."""

    def __init__(self, renderer, frame_count: int = 0):
        self.frame_count = renderer.frame_count if frame_count <= 0 else min(int(frame_count), renderer.frame_count)
        self.closed_mouth = renderer.controls.neutral is not None
        futures = [renderer.thread_pool.submit(self._compose, renderer, index) for index in range(self.frame_count)]
        self.frames: List[np.ndarray] = [future.result() for future in futures]
        for frame in self.frames:
            frame.flags.writeable = False        # shared by every session: nobody may paint on it
        megabytes = sum(frame.nbytes for frame in self.frames) / 2 ** 20
        log.info("idle loop: recording frames 0..%d back and forth, %s (%.0f MB)", self.frame_count - 1,
                 "with the closed mouth" if self.closed_mouth else "as recorded (no silence hold)", megabytes)

    def _compose(self, renderer, index: int) -> np.ndarray:
        frame, crop_328 = renderer.load_background(index)
        if not self.closed_mouth:
            return frame
        inner = crop_328[crop_geometry.INNER, crop_geometry.INNER].copy()
        return renderer.compose_output(frame, crop_328, inner, index, FULL_HOLD)

    def recording_frame(self, phase: int) -> int:
        return pingpong_index(phase, self.frame_count)

    def frame(self, phase: int) -> np.ndarray:
        return self.frames[self.recording_frame(phase)]

    def phase_near(self, recording_frame: int) -> int:
        """A phase whose frame is ``recording_frame``, or the loop's last frame when it lies beyond."""
        return min(int(recording_frame), self.frame_count - 1)


def mouth_region(boxes: np.ndarray, frame_size: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1) frame pixels inside the repainted region of the median crop box.

    The region the model paints (crop rows MASK_TOP..MASK_BOTTOM) minus a
    quarter of its size on each side, so head motion and the feathered edge
    stay outside and only the mouth and chin are inside.
    """
    x0, y0, x1, _ = np.median(np.asarray(boxes, dtype=np.float64), axis=0)
    scale = (x1 - x0) / crop_geometry.CROP_SIZE
    border = crop_geometry.CROP_BORDER
    left, right = crop_geometry.MASK_LEFT + border, crop_geometry.MASK_RIGHT + border
    top, bottom = crop_geometry.MASK_TOP + border, crop_geometry.MASK_BOTTOM + border
    inset_x, inset_y = (right - left) / 4, (bottom - top) / 4
    width, height = frame_size
    region = (x0 + (left + inset_x) * scale, y0 + (top + inset_y) * scale,
              x0 + (right - inset_x) * scale, y0 + (bottom - inset_y) * scale)
    clipped = (min(max(region[0], 0), width - 1), min(max(region[1], 0), height - 1),
               min(max(region[2], 1), width), min(max(region[3], 1), height))
    return tuple(int(round(value)) for value in clipped)
