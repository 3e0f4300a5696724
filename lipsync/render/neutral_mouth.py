"""The person's own closed mouth, for the silence hold: the recording frame whose audio is
silent and whose inner-lip gap is the smallest, placed into each background frame with a
similarity transform between the two frames' stable landmarks, so it follows the head."""
import logging
from typing import Optional

import numpy as np

from data_utils import crop as crop_geometry
from data_utils.audio import load_audio
from data_utils.layout import DatasetLayout, process_command
from lipsync.core.errors import UserError
from lipsync.evaluate.metrics import mouth_opening
from lipsync.render.face_geometry import (stable_points, blend, compose_affine, frame_to_inner_matrix,
                                          similarity_transform)
from lipsync.render.silence import detect_speech

log = logging.getLogger(__name__)


def choose_neutral_frame(landmarks: np.ndarray, face_found: np.ndarray, speech: np.ndarray) -> int:
    """The recording frame with the most closed mouth among silent frames with a face.

    The inner-lip gap is averaged with the neighbouring frames so that a
    frame caught in the middle of closing is not preferred to one at rest.
    Without any silent frame, every frame with a face is a candidate.
    """
    opening = mouth_opening(landmarks)
    padded = np.pad(opening, 1, mode="edge")
    settled = (padded[:-2] + padded[1:-1] + padded[2:]) / 3
    count = len(opening)
    silent = np.zeros(count, dtype=bool)
    silent[:min(count, len(speech))] = ~np.asarray(speech[:count], dtype=bool)
    candidates = face_found & silent
    if not candidates.any():
        log.info("no silent frame with a face in the recording: the closed mouth is the most closed one")
        candidates = face_found
    return int(np.flatnonzero(candidates)[np.argmin(settled[candidates])])


class NeutralMouth:
    """The person's closed mouth, placed into any recording frame's crop."""

    def __init__(self, image: np.ndarray, frame_index: int, landmarks: np.ndarray, boxes: np.ndarray):
        self.image = image
        self.frame_index = int(frame_index)
        self.boxes = boxes
        stable = stable_points(crop_geometry.scheme_for(landmarks))
        points = crop_geometry.smooth_over_time(np.asarray(landmarks, dtype=np.float64)[:, stable])
        source = points[self.frame_index]
        # Per recording frame: neutral frame pixels -> that frame's pixels.
        self._to_frame = np.stack([similarity_transform(source, target) for target in points])
        self.opening = float(mouth_opening(landmarks[self.frame_index:self.frame_index + 1])[0])

    @classmethod
    def from_dataset(cls, layout: DatasetLayout, boxes: np.ndarray, face_found: np.ndarray,
                     vad: Optional[str] = None) -> "NeutralMouth":
        import cv2

        for needed in (layout.landmarks_array, layout.audio_wav):
            if not needed.is_file():
                raise UserError(f"{layout.root} has no {needed.name}, which the silence hold needs to find the "
                                f"person's closed mouth — run again: {process_command(layout)} "
                                "(or render with --no_silence_hold)")
        landmarks = np.load(layout.landmarks_array)
        if len(landmarks) != len(boxes):
            raise UserError(f"{layout.landmarks_array} has {len(landmarks)} frames but {layout.crop_boxes.name} "
                            f"has {len(boxes)} — run again: {process_command(layout)}")
        speech = detect_speech(load_audio(layout.audio_wav), vad)
        index = choose_neutral_frame(landmarks, face_found, speech)
        image = cv2.imread(str(layout.frame_path(index)), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"{layout.frame_path(index)} is missing or unreadable — run again: "
                            f"{process_command(layout)}")
        mouth = cls(image, index, landmarks, boxes)
        log.info("silence hold: the closed mouth of frame %d (inner-lip gap %.3f face widths, %d of %d "
                 "recording frames silent)", index, mouth.opening, int((~speech).sum()), len(speech))
        return mouth

    def inner_crop(self, recording_frame: int) -> np.ndarray:
        """(320, 320, 3) uint8: the closed mouth where the generated square of ``recording_frame`` goes."""
        import cv2

        matrix = compose_affine(frame_to_inner_matrix(self.boxes[recording_frame]),
                                self._to_frame[recording_frame])
        size = crop_geometry.INNER_SIZE
        return cv2.warpAffine(self.image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)

    def hold(self, generated: np.ndarray, recording_frame: int, weight: float) -> np.ndarray:
        """``generated`` cross-faded towards the closed mouth by ``weight`` (0 .. 1)."""
        if weight <= 0:
            return generated
        return blend(generated, self.inner_crop(recording_frame), weight)
