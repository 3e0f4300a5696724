"""Face-mesh landmark tracks of whole videos, and what evaluation can say without them.

Every lip measure (LMD, the mouth-opening track, its offset and ratio, the
opening against loudness, how often a face was found) comes from these tracks.
When the detector cannot start here (mediapipe missing, as on a bare GPU box)
those measures are n/a and ``landmarks_unavailable`` says why; the picture
and SyncNet measures do not need it.
"""
from typing import Iterable, Optional

import numpy as np

from data_utils.landmarks import create_landmarker
from lipsync.core.errors import UserError

LANDMARK_BACKEND = "mediapipe"
# The scores made from landmarks; without a detector they are NaN (null in JSON). Lip scores
# compare with the truth's landmarks; track scores need only the generated frames'.
LIP_SCORES = ("lmd", "opening_correlation", "opening_offset", "opening_best_correlation", "opening_ratio")
TRACK_SCORES = ("face_found", "mouth_opening", "energy_correlation", "energy_offset", "energy_best_correlation")
LANDMARK_SCORES = LIP_SCORES + TRACK_SCORES
LANDMARKS_MISSING_CELL = "n/a (mediapipe not installed)"


def landmarks_unavailable(backend: str = LANDMARK_BACKEND) -> Optional[str]:
    """None when the landmark detector starts here; else its one-line reason and fix
    ("mediapipe is not installed — run: pip install -r requirements.txt")."""
    try:
        create_landmarker(backend).close()
    except UserError as error:
        return str(error)
    except Exception as error:      # installed but broken (e.g. a numpy it was not built for): still one line
        return f"{backend} is installed but could not start ({type(error).__name__}: {error}) — {_repair(backend)}"
    return None


def _repair(backend: str) -> str:
    """What to do about a detector that is installed but does not start."""
    try:
        from google.protobuf import __version__ as protobuf_version
    except ImportError:
        protobuf_version = ""
    major = protobuf_version.split(".")[0]
    if backend == "mediapipe" and major.isdigit() and int(major) >= 5:
        return (f"mediapipe needs protobuf<5 (here {protobuf_version}): install scripts/download_wheels.py's "
                "wheels/landmarks into a folder of their own and put it first on PYTHONPATH for evaluation "
                "(docs/another_machine.md)")
    return "reinstall it"


class LandmarkTrack:
    """Face-mesh landmarks of one video, fed a frame at a time.

    A fresh detector per video: the detector tracks the face from frame to
    frame, so two videos scored with each other's tracking state would differ
    for that reason alone. Frames without a face get NaN rows.
    """

    def __init__(self, backend: str = LANDMARK_BACKEND):
        self._detector = create_landmarker(backend)
        self._points = []
        self._count = self._detector.scheme.count

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


def detect_landmarks(frames: Iterable[np.ndarray], backend: str = LANDMARK_BACKEND) -> np.ndarray:
    """(frames, points, 2) landmarks of a frame sequence, NaN rows where no face was found."""
    track = LandmarkTrack(backend)
    for frame in frames:
        track.add(frame)
    return track.result()
