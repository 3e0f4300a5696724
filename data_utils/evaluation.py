"""Scoring checkpoints: render, detect, measure, compare, choose.

(So far: face-mesh landmark tracks of frame sequences, for data_utils/metrics.py.)
"""
from typing import Iterable, Optional

import numpy as np

from data_utils.landmarks import create_landmarker


class LandmarkTrack:
    """Face-mesh landmarks of one video, fed a frame at a time.

    A fresh detector per video: the detector tracks the face from frame to
    frame, so two videos scored with each other's tracking state would differ
    for that reason alone. Frames without a face get NaN rows.
    """

    def __init__(self, backend: str = "mediapipe"):
        self._detector = create_landmarker(backend)
        self._points = []
        self._count: Optional[int] = self._detector.scheme.count

    def add(self, frame_bgr: np.ndarray) -> None:
        found = self._detector.detect(frame_bgr)
        if found is None:
            found = np.full((self._count, 2), np.nan, dtype=np.float32)
        self._points.append(np.asarray(found, dtype=np.float32))

    def result(self) -> np.ndarray:
        """(frames, points, 2) float32, NaN where no face was found; closes the detector."""
        self._detector.close()
        if not self._points:
            return np.zeros((0, self._count, 2), dtype=np.float32)
        return np.stack(self._points)


def detect_landmarks(frames: Iterable[np.ndarray], backend: str = "mediapipe") -> np.ndarray:
    """(frames, points, 2) landmarks of a frame sequence, NaN rows where no face was found."""
    track = LandmarkTrack(backend)
    for frame in frames:
        track.add(frame)
    return track.result()
