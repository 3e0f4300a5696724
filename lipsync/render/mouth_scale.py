"""``--mouth_scale``: the generated mouth opened wider (> 1) or less (< 1). The face mesh
finds the generated lips in the composed frame; a smooth warp in crop space moves the lower
lip and the jaw along the mouth's own vertical axis so that the inner-lip gap becomes
``mouth_scale`` times the generated one (the upper lip, on the skull, stays)."""
import queue
import threading
from typing import Optional

import numpy as np

from data_utils import crop as crop_geometry
from data_utils.landmarks import MediapipeLandmarker
from lipsync.core.errors import UserError
from lipsync.render.face_geometry import apply_affine, frame_to_inner_matrix

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
