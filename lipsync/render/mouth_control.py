"""What the renderer does to each frame's generated mouth before paste-back
(issue 7). Three controls, applied in this order by ``MouthControls.apply``:

1. Frames without a face pass through untouched. Preprocessing marks the
   frames where it found no face (dataset/NAME/face_found.npy) and
   interpolates their landmarks. A mouth painted there would land on a hand, a
   profile or an empty background. Those frames are written exactly as
   recorded. The generated mouth fades out over ``faceless_fade`` frames
   before such a stretch and fades back in after it (raised cosine).
   ``paint_faceless`` turns this off: the mouth is painted on the
   interpolated landmarks, for recordings where the detector merely missed a
   visible face now and then.
2. ``mouth_scale`` opens the generated mouth wider (> 1) or less (< 1). The
   face mesh finds the generated lips in the composed frame (static image
   mode, so every frame is measured on its own). A smooth warp in crop space
   then moves the lower lip and the jaw along the mouth's own vertical axis,
   so that the inner-lip gap becomes ``mouth_scale`` times the generated one.
   The upper lip, which sits on the skull, stays where it is; the lower lip
   and the chin move as one. What is stretched or squeezed is the gap
   between the lips (with a quarter of its height on each side: the
   uncertainty of the detected lip edges) and the skin below the chin. The
   warp acts frame by frame on what the model drew, so the timing (the lip
   sync) is the model's. It fades to nothing before the feathered edge of
   the repainted region, so paste-back stays seamless.
3. The silence hold (weights from lipsync/render/silence.py) cross-fades the
   generated mouth to the person's own closed mouth. That mouth is the frame
   of the recording whose audio is silent (same detector) and whose
   inner-lip gap is the smallest. It is placed into each background frame
   with a similarity transform between the two frames' stable landmarks
   (face contour at cheek height, nose bridge, nose tip; smoothed over time
   like the crop boxes), so it follows the head. The hold replaces pixels
   after the model, so frames outside pauses are exactly what the model
   made, and it works as well with a barely trained model as with a good one.
"""

import logging
from typing import Callable, Optional

import numpy as np

from data_utils import crop as crop_geometry
from data_utils.layout import DatasetLayout
from lipsync.core.errors import UserError
from lipsync.render.face_geometry import blend
from lipsync.render.faceless import DEFAULT_FACELESS_FADE_FRAMES, load_face_found, presence_weights
from lipsync.render.frames import DEFAULT_FEATHER_PX
from lipsync.render.mouth_scale import MouthScaler, check_mouth_scale
from lipsync.render.neutral_mouth import NeutralMouth
from lipsync.render.silence import SilenceHold

log = logging.getLogger(__name__)


class MouthControls:
    """Per-frame mouth controls of one renderer (one recording).

    ``silence_hold``: cross-fade to the person's closed mouth in pauses
    (``vad``: the detector, lipsync/render/silence.py); ``mouth_scale``: opening
    factor; ``paint_faceless``: paint frames without a face too;
    ``faceless_fade``: frames over which the mouth fades out before them.
    """

    def __init__(self, layout: DatasetLayout, boxes: np.ndarray, *, silence_hold: bool = True,
                 vad: Optional[str] = None, mouth_scale: float = 1.0, paint_faceless: bool = False,
                 faceless_fade: int = DEFAULT_FACELESS_FADE_FRAMES, feather_px: float = DEFAULT_FEATHER_PX):
        self.boxes = boxes
        self.face_found = load_face_found(layout, len(boxes))
        if paint_faceless:
            self.presence = np.ones(len(boxes), np.float32)
        else:
            self.presence = presence_weights(self.face_found, faceless_fade)
            if not self.face_found.all():
                log.info("%d recording frames without a face pass through untouched",
                         int((~self.face_found).sum()))
        if not self.face_found.any():
            raise UserError(f"{layout.face_found} says no frame of {layout.root} has a face — "
                            "re-record with the face visible")
        self.vad = vad
        self.neutral = None
        if silence_hold:
            self.neutral = NeutralMouth.from_dataset(layout, boxes, self.face_found, vad)
        self.scaler = MouthScaler(mouth_scale, feather_px) if float(mouth_scale) != 1.0 else None
        if self.scaler is None:
            check_mouth_scale(mouth_scale)

    def new_silence_hold(self):
        """A SilenceHold for one audio stream, or None when the hold is off."""
        return SilenceHold(self.vad) if self.neutral is not None else None

    def apply(self, frame: np.ndarray, crop_328: np.ndarray, generated: np.ndarray, recording_frame: int,
              hold_weight: float, compose: Callable) -> np.ndarray:
        """The output frame: ``compose(frame, crop_328, generated, box)`` pastes a square back.

        ``frame`` is returned unchanged (the same array, bit for bit) when the
        recording frame has no face.
        """
        presence = float(self.presence[recording_frame])
        if presence <= 0:
            return frame
        box = self.boxes[recording_frame]
        if self.scaler is not None and hold_weight < 1:
            preview = compose(frame.copy(), crop_328, generated, box)
            generated = self.scaler.scale(generated, preview, box)
        if self.neutral is not None and hold_weight > 0:
            generated = self.neutral.hold(generated, recording_frame, hold_weight)
        if presence < 1:
            generated = blend(crop_328[crop_geometry.INNER, crop_geometry.INNER], generated, presence)
        return compose(frame, crop_328, generated, box)

    def close(self) -> None:
        if self.scaler is not None:
            if self.scaler.frames_scaled or self.scaler.frames_unchanged:
                log.info("mouth scale %g: %d frames scaled, %d left as drawn (closed mouth, or the face mesh "
                         "found no lips)", self.scaler.factor, self.scaler.frames_scaled, self.scaler.frames_unchanged)
            self.scaler.close()
