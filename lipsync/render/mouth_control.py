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
import queue
import threading
from typing import Callable, Optional

import numpy as np

from data_utils import crop as crop_geometry
from data_utils.audio import load_audio
from data_utils.landmarks import MediapipeLandmarker
from data_utils.layout import DatasetLayout, process_command
from lipsync.core.errors import UserError
from lipsync.evaluate.metrics import mouth_opening
from lipsync.render.frames import DEFAULT_FEATHER_PX
from lipsync.render.silence import SilenceHold, detect_speech

log = logging.getLogger(__name__)

# --- Frames without a face -------------------------------------------------------
DEFAULT_FACELESS_FADE_FRAMES = 3      # 120 ms: the generated mouth fades out before a faceless stretch

# --- Mouth opening ---------------------------------------------------------------
MOUTH_SCALE_LIMITS = (0.5, 1.5)       # beyond these the warp stretches the chin more than a jaw can move
MIN_GAP_PX = 1.0                      # inner-crop pixels: a closed mouth stays closed at any scale
MIN_MOUTH_WIDTH_PX = 10.0             # corners closer than this: the mesh did not find real lips
JAW_SIDE_MARGIN = 0.25                # the jaw moves fully this far (mouth widths) beyond each corner
# Below the chin the shift fades out over at least this many inner-crop pixels,
# and never faster than FALLOFF_PER_SHIFT pixels per pixel of shift (keeps the map fold-free).
MIN_FALLOFF_PX = 12.0
FALLOFF_PER_SHIFT = 3.0
SIDE_FALLOFF_PX = 8.0                 # at least this much room between the jaw's core and the region's side
LIP_EDGE_MARGIN = 0.25               # of the gap, on each side: the face mesh's lip edges are this uncertain
WARP_ITERATIONS = 6                   # fixed-point steps inverting the warp: error halves per step or faster


# =============================================================================
# 1. Frames without a face
# =============================================================================

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


# =============================================================================
# Shared geometry
# =============================================================================

def blend(base: np.ndarray, top: np.ndarray, weight: float) -> np.ndarray:
    """uint8 (1 - weight) * base + weight * top, rounded."""
    if weight <= 0:
        return base
    if weight >= 1:
        return top
    mixed = base.astype(np.float32) * (1.0 - weight) + top.astype(np.float32) * weight
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def frame_to_inner_matrix(box) -> np.ndarray:
    """(2, 3) map from frame pixels to the generated 320 square's pixels for crop ``box``."""
    matrix = crop_geometry.frame_to_crop_matrix(box).copy()
    matrix[:, 2] -= crop_geometry.CROP_BORDER
    return matrix


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares rotation + uniform scale + shift taking ``source`` points onto ``target``."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    a, b = source - source_mean, target - target_mean
    # Complex-number form of the 2-D Procrustes fit: target ~ z * source.
    za = a[:, 0] + 1j * a[:, 1]
    zb = b[:, 0] + 1j * b[:, 1]
    z = np.vdot(za, zb) / max(np.vdot(za, za).real, 1e-12)
    rotation_scale = np.array([[z.real, -z.imag], [z.imag, z.real]])
    shift = target_mean - rotation_scale @ source_mean
    return np.concatenate([rotation_scale, shift[:, None]], axis=1)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer(inner(p)) for two (2, 3) affine maps."""
    return np.concatenate([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], axis=1)


def _stable_points(scheme) -> list:
    """Landmarks that do not move when the mouth opens: they place one frame's mouth into another."""
    return [scheme.face_left, scheme.face_right, scheme.nose_bridge, scheme.nose_tip]


# =============================================================================
# 3. The person's own closed mouth (silence hold)
# =============================================================================

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
        stable = _stable_points(crop_geometry.scheme_for(landmarks))
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


# =============================================================================
# 2. Mouth opening
# =============================================================================

def check_mouth_scale(factor: float) -> float:
    factor = float(factor)
    low, high = MOUTH_SCALE_LIMITS
    if not low <= factor <= high:
        raise UserError(f"--mouth_scale must be between {low:g} and {high:g}, got {factor:g}")
    return factor


def opening_warp_maps(upper, lower, left, right, chin, factor: float, feather_px: float,
                      size: int = crop_geometry.INNER_SIZE):
    """cv2.remap maps (map_x, map_y) that scale the inner-lip gap by ``factor``.

    Points are (x, y) in the generated square's pixels: inner-lip centres
    ``upper`` and ``lower``, mouth corners ``left`` and ``right``, ``chin``.
    Along the mouth's vertical axis v (perpendicular to the corner line),
    every point is shifted by D(v): 0 above the band from LIP_EDGE_MARGIN
    gaps above the upper inner lip to as far below the lower one, growing
    linearly across that band (which, with the gap, scales by ``factor``),
    constant over the lower lip and chin (the jaw moves as one), fading to 0
    along a raised cosine before the repainted region's feathered bottom. Across, the shift is full between the corners (plus a margin) and
    fades towards the region's sides. Returns None when there is nothing to
    do (closed mouth) or no room.
    """
    upper, lower, left, right, chin = (np.asarray(point, dtype=np.float64) for point in (upper, lower, left, right, chin))
    axis = right - left
    width = float(np.linalg.norm(axis))
    if width < MIN_MOUTH_WIDTH_PX:
        return None
    along = axis / width
    down = np.array([-along[1], along[0]])              # image y grows downwards
    centre = (left + right) / 2
    v_upper = float((upper - centre) @ down)
    v_lower = float((lower - centre) @ down)
    gap = v_lower - v_upper
    if gap < MIN_GAP_PX:
        return None
    # Stretch a little beyond the detected lip edges: wherever inside this band
    # the visible edges really are, the gap between them scales by ``factor``.
    margin = LIP_EDGE_MARGIN * gap
    v_upper, v_lower = v_upper - margin, v_lower + margin
    stretched = v_lower - v_upper
    shift = (factor - 1.0) * stretched
    # The region where pixels may move: the repainted square minus its feathered rim.
    top = crop_geometry.MASK_TOP + feather_px
    bottom = crop_geometry.MASK_BOTTOM - 1 - feather_px
    side_left = crop_geometry.MASK_LEFT + feather_px
    side_right = crop_geometry.MASK_RIGHT - 1 - feather_px
    if not (side_left < centre[0] < side_right and top < upper[1] and lower[1] < bottom):
        return None
    v_end = bottom - centre[1]
    falloff = max(MIN_FALLOFF_PX, FALLOFF_PER_SHIFT * abs(shift))
    v_jaw_end = min(float((chin - centre) @ down), v_end - falloff)
    if v_jaw_end < v_lower:
        return None                                      # the lower lip sits on the region's edge
    u_edge = min(centre[0] - side_left, side_right - centre[0])
    u_core = min(width / 2 * (1 + 2 * JAW_SIDE_MARGIN), u_edge - SIDE_FALLOFF_PX)
    if u_core <= 0:
        return None

    def displacement(u, v):
        """Shift along ``down`` of the point at mouth coordinates (u, v)."""
        profile = np.where(v <= v_upper, 0.0, np.where(
            v < v_lower, shift * (v - v_upper) / stretched, np.where(
                v <= v_jaw_end, shift, np.where(
                    v < v_end, shift * (0.5 + 0.5 * np.cos(np.pi * (v - v_jaw_end) / (v_end - v_jaw_end))),
                    0.0))))
        distance = np.abs(u)
        across = np.where(distance <= u_core, 1.0, np.where(
            distance < u_edge, 0.5 + 0.5 * np.cos(np.pi * (distance - u_core) / (u_edge - u_core)), 0.0))
        return profile * across

    map_y, map_x = np.mgrid[0:size, 0:size].astype(np.float64)
    rows = slice(int(np.floor(top)), int(np.ceil(bottom)) + 1)
    cols = slice(int(np.floor(side_left)), int(np.ceil(side_right)) + 1)
    x, y = map_x[rows, cols], map_y[rows, cols]
    u = (x - centre[0]) * along[0] + (y - centre[1]) * along[1]
    v = (x - centre[0]) * down[0] + (y - centre[1]) * down[1]
    # Output pixel at v shows the source pixel at s with s + D(s) = v: solve by fixed-point steps.
    source_v = v.copy()
    for _ in range(WARP_ITERATIONS):
        source_v = v - displacement(u, source_v)
    inside = (y >= top) & (y <= bottom) & (x >= side_left) & (x <= side_right)
    source_v = np.where(inside, source_v, v)
    map_x[rows, cols] = centre[0] + u * along[0] + source_v * down[0]
    map_y[rows, cols] = centre[1] + u * along[1] + source_v * down[1]
    return map_x.astype(np.float32), map_y.astype(np.float32)


class MouthScaler:
    """Scales the generated mouth's opening by ``factor`` (see ``opening_warp_maps``).

    Face-mesh detectors are made on demand, one per thread that needs one at
    a time, and reused; every frame is measured on its own (static mode).
    """

    def __init__(self, factor: float, feather_px: float):
        self.factor = check_mouth_scale(factor)
        self.feather_px = float(feather_px)
        self._idle: "queue.SimpleQueue" = queue.SimpleQueue()
        self._all = []
        self._lock = threading.Lock()
        self.frames_scaled = 0
        self.frames_unchanged = 0        # closed mouths, and frames where the mesh found no face

    def _detector(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        # Creation and the first detection silence native stderr through fd 2: one thread at a time.
        with self._lock:
            detector = MediapipeLandmarker(static_image_mode=True)
            detector.detect(np.zeros((64, 64, 3), np.uint8))
            self._all.append(detector)
        return detector

    def lips(self, frame: np.ndarray) -> Optional[np.ndarray]:
        """(upper, lower, left, right, chin) points in frame pixels, or None without a face."""
        detector = self._detector()
        try:
            points = detector.detect(frame)
        finally:
            self._idle.put(detector)
        if points is None:
            return None
        scheme = detector.scheme
        return points[[scheme.upper_inner_lip, scheme.lower_inner_lip, scheme.mouth_left, scheme.mouth_right,
                       scheme.chin]]

    def scale(self, generated: np.ndarray, preview_frame: np.ndarray, box) -> np.ndarray:
        """``generated`` (320, 320, 3) with its mouth opening scaled; ``preview_frame`` is the frame
        with ``generated`` pasted in, where the face mesh looks for the lips."""
        import cv2

        points = self.lips(preview_frame)
        maps = None
        if points is not None:
            inner = apply_affine(frame_to_inner_matrix(box), points)
            maps = opening_warp_maps(*inner, factor=self.factor, feather_px=self.feather_px)
        with self._lock:
            if maps is None:
                self.frames_unchanged += 1
            else:
                self.frames_scaled += 1
        if maps is None:
            return generated
        return cv2.remap(generated, maps[0], maps[1], interpolation=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)

    def close(self) -> None:
        for detector in self._all:
            detector.close()
        self._all.clear()


# =============================================================================
# All three, for the renderer
# =============================================================================

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
