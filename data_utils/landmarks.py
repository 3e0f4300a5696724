"""Face landmark detection on decoded frames, and repair of frames without a face.

Backends:
- ``mediapipe`` (default): the face mesh of mediapipe 0.10.21, whose wheel ships
  the model, so it works offline. Runs in video (tracking) mode: the face
  detector runs only when tracking is lost, which is what makes it fast.
- ``face_alignment``: the optional 68-point FAN detector. It downloads weights
  on first use, so it only works for users who have them cached.
"""
import contextlib
import os
import sys
from typing import List, Optional, Tuple

import numpy as np

from data_utils.crop import IBUG68, MEDIAPIPE
from lipsync.core.errors import UserError

BACKENDS = ("mediapipe", "face_alignment")

MEDIAPIPE_MIN_DETECTION_CONFIDENCE = 0.5
MEDIAPIPE_MIN_TRACKING_CONFIDENCE = 0.5
WARM_UP_SIZE = 64


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence C++ log lines (TFLite delegate, absl warnings) printed while mediapipe starts.

    They go straight to file descriptor 2, below Python's sys.stderr.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class MediapipeLandmarker:
    """478-point face mesh (refined lips, eyes and irises), in tracking mode unless
    ``static_image_mode``: then every image is searched afresh, so the result
    depends only on that image (frames may come in any order, from any thread)."""
    scheme = MEDIAPIPE

    def __init__(self, static_image_mode: bool = False):
        # mediapipe's C++ side logs to stderr unless told otherwise before import.
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            import mediapipe as mp
        except ImportError:
            raise UserError("mediapipe is not installed — run: pip install -r requirements.txt") from None
        with quiet_native_stderr():
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=static_image_mode, max_num_faces=1, refine_landmarks=True,
                min_detection_confidence=MEDIAPIPE_MIN_DETECTION_CONFIDENCE,
                min_tracking_confidence=MEDIAPIPE_MIN_TRACKING_CONFIDENCE)
            # The graph finishes starting on its own threads, which print as they go: one blank
            # frame waits for that while the output is still silenced (and finds no face, so the
            # tracking state stays empty).
            self._mesh.process(np.zeros((WARM_UP_SIZE, WARM_UP_SIZE, 3), np.uint8))

    def detect(self, frame_bgr: np.ndarray) -> Optional[np.ndarray]:
        """(478, 2) float32 pixel coordinates of the face in ``frame_bgr``, or None."""
        import cv2

        height, width = frame_bgr.shape[:2]
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        # The graph starts its models lazily (the face mesh only once a face is found), each printing
        # C++ warnings when it does: every call is run with the native stderr silenced.
        with quiet_native_stderr():
            result = self._mesh.process(rgb)
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        return np.array([(point.x * width, point.y * height) for point in points], dtype=np.float32)

    def close(self):
        self._mesh.close()


class FaceAlignmentLandmarker:
    """68-point FAN landmarks from the optional ``face-alignment`` package."""
    scheme = IBUG68

    def __init__(self, device: str = "cpu"):
        try:
            import face_alignment
        except ImportError:
            raise UserError("--landmarks face_alignment needs the optional package: "
                            "pip install face-alignment (or use the default --landmarks mediapipe)") from None
        landmarks_type = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        try:
            self._model = face_alignment.FaceAlignment(landmarks_type, device=device, flip_input=False)
        except Exception as error:  # its weights come from the internet on first use
            raise UserError(f"face-alignment could not load its weights ({type(error).__name__}) — "
                            "it downloads them on first use; run it once with internet access, "
                            "or use the default --landmarks mediapipe") from None

    def detect(self, frame_bgr: np.ndarray) -> Optional[np.ndarray]:
        faces = self._model.get_landmarks_from_image(frame_bgr[..., ::-1].copy())
        if not faces:
            return None
        largest = max(faces, key=lambda points: np.ptp(points[:, 0]))
        return np.asarray(largest[:, :2], dtype=np.float32)

    def close(self):
        pass


def create_landmarker(backend: str = "mediapipe"):
    if backend == "mediapipe":
        return MediapipeLandmarker()
    if backend == "face_alignment":
        return FaceAlignmentLandmarker()
    raise UserError(f"unknown landmark backend {backend!r} — choose one of: {', '.join(BACKENDS)}")


def missing_ranges(found: np.ndarray) -> List[Tuple[int, int]]:
    """Runs of frames without a face as (first, last) inclusive index pairs."""
    ranges = []
    start = None
    for index, present in enumerate(found):
        if not present and start is None:
            start = index
        elif present and start is not None:
            ranges.append((start, index - 1))
            start = None
    if start is not None:
        ranges.append((start, len(found) - 1))
    return ranges


def interpolate_missing(landmarks: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fill frames without a face from their nearest detected neighbours.

    ``landmarks`` is (N, P, 2) with arbitrary values where ``found`` is False.
    Gaps between two detections are interpolated linearly; gaps at the start
    or end repeat the nearest detection.
    """
    found = np.asarray(found, dtype=bool)
    if not found.any():
        raise ValueError("no frame has a face to interpolate from")
    filled = landmarks.astype(np.float32, copy=True)
    known = np.flatnonzero(found)
    unknown = np.flatnonzero(~found)
    if len(unknown) == 0:
        return filled
    flat = filled.reshape(len(filled), -1)
    for column in range(flat.shape[1]):
        flat[unknown, column] = np.interp(unknown, known, flat[known, column])
    return filled


def format_lms(points: np.ndarray) -> str:
    """The .lms text: one "x y" line per landmark, in frame pixels."""
    return "".join(f"{x:.2f} {y:.2f}\n" for x, y in points)


def parse_lms(text: str) -> np.ndarray:
    return np.array([[float(value) for value in line.split()] for line in text.splitlines() if line.strip()],
                    dtype=np.float32)
