"""The one definition of the face crop: which landmarks bound it, how it is
smoothed over time, how a frame becomes a 328x328 model crop, which part of the
crop the model repaints, and how a crop maps back into its frame.

Training, inference and evaluation all import from here; nothing else knows a
landmark index or a crop margin.

Geometry (frame pixels): the crop is a square whose side is the face width
(left to right face contour at cheek height), horizontally centred on the face
and starting just below the eyes at the nose bridge. It covers the nose, mouth,
jaw and chin with room for a wide-open mouth.
"""
from dataclasses import dataclass
from typing import Dict

import numpy as np

CROP_SIZE = 328                 # model crop, with a 4 px border around the 320 centre
CROP_SHAPE = (CROP_SIZE, CROP_SIZE, 3)      # one crop as stored: BGR uint8
CROP_BORDER = 4
INNER_SIZE = CROP_SIZE - 2 * CROP_BORDER   # 320: what the U-Net sees and paints
INNER = slice(CROP_BORDER, CROP_SIZE - CROP_BORDER)

# Part of the 320 inner crop that the model repaints (rows/cols, in inner pixels).
# The top rows keep the nose visible so the model sees the head pose; everything
# from above the upper lip to below the chin is hidden and regenerated.
# (The crop's top is the nose bridge and its side the face width, so the upper
# lip sits near row 80 and the resting chin near row 215.)
MASK_TOP = 64
MASK_BOTTOM = 295               # below the chin of a wide-open jaw; the neck stays real
MASK_LEFT = 5
MASK_RIGHT = 315

# The lips' box inside the 320 inner crop (rows/cols, inner pixels): upper lip to the
# lower lip of a wide-open mouth, corner to corner with room for a smile. Training may
# count it more than the rest of the crop (--lip_weight).
LIP_TOP = 60
LIP_BOTTOM = 180
LIP_LEFT = 70
LIP_RIGHT = 250

# Temporal smoothing of the crop box: a zero-phase Gaussian over frames removes
# landmark jitter without making the box lag behind head motion.
CROP_SMOOTHING_SIGMA_FRAMES = 2.0

# Faces narrower than this (frame pixels) hold too little detail for a 320 crop.
MIN_FACE_WIDTH_PX = 80


@dataclass(frozen=True)
class LandmarkScheme:
    """Named landmark indices of one landmark detector's layout."""
    name: str
    count: int
    face_left: int        # face contour at cheek height, image left
    face_right: int       # face contour at cheek height, image right
    nose_bridge: int      # just below the eyes: top edge of the crop
    nose_tip: int
    chin: int
    upper_inner_lip: int  # centre of the upper lip's inner edge
    lower_inner_lip: int  # centre of the lower lip's inner edge
    mouth_left: int       # mouth corners
    mouth_right: int
    lips: tuple = ()      # all lip contour points, for lip-shape metrics


MEDIAPIPE = LandmarkScheme(
    name="mediapipe", count=478,
    face_left=234, face_right=454, nose_bridge=195, nose_tip=1, chin=152,
    upper_inner_lip=13, lower_inner_lip=14, mouth_left=78, mouth_right=308,
    lips=(0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146,
          178, 181, 185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318,
          321, 324, 375, 402, 405, 409, 415),
)

# The 68-point iBUG layout of the face-alignment package.
IBUG68 = LandmarkScheme(
    name="ibug68", count=68,
    face_left=1, face_right=15, nose_bridge=29, nose_tip=30, chin=8,
    upper_inner_lip=62, lower_inner_lip=66, mouth_left=60, mouth_right=64,
    lips=tuple(range(48, 68)),
)

SCHEMES: Dict[int, LandmarkScheme] = {MEDIAPIPE.count: MEDIAPIPE, IBUG68.count: IBUG68}


def scheme_for(landmarks: np.ndarray) -> LandmarkScheme:
    """The scheme of a (count, 2) or (frames, count, 2) landmark array, from its count."""
    count = landmarks.shape[-2]
    if count not in SCHEMES:
        raise ValueError(f"no landmark scheme has {count} points (known: {sorted(SCHEMES)})")
    return SCHEMES[count]


def face_width(landmarks: np.ndarray) -> np.ndarray:
    """Face width in pixels for (count, 2) or (frames, count, 2) landmarks."""
    scheme = scheme_for(landmarks)
    return np.linalg.norm(landmarks[..., scheme.face_right, :] - landmarks[..., scheme.face_left, :],
                          axis=-1)


def raw_crop_boxes(landmarks: np.ndarray) -> np.ndarray:
    """Unsmoothed crop squares as (frames, 3) rows of (centre_x, top_y, side) floats."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.ndim == 2:
        landmarks = landmarks[None]
    scheme = scheme_for(landmarks)
    left = landmarks[:, scheme.face_left]
    right = landmarks[:, scheme.face_right]
    side = np.linalg.norm(right - left, axis=-1)
    centre_x = (left[:, 0] + right[:, 0]) / 2
    top_y = landmarks[:, scheme.nose_bridge, 1]
    return np.stack([centre_x, top_y, side], axis=1)


def smooth_over_time(values: np.ndarray, sigma: float = CROP_SMOOTHING_SIGMA_FRAMES) -> np.ndarray:
    """Zero-phase Gaussian smoothing along axis 0, edges extended by reflection."""
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or len(values) < 2:
        return values.copy()
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(values, [(radius, radius)] + [(0, 0)] * (values.ndim - 1), mode="reflect"
                    if len(values) > radius else "edge")
    smoothed = np.empty_like(values)
    for column in np.ndindex(values.shape[1:]):
        index = (slice(None),) + column
        smoothed[index] = np.convolve(padded[index], kernel, mode="valid")
    return smoothed


def crop_boxes(landmarks: np.ndarray, sigma: float = CROP_SMOOTHING_SIGMA_FRAMES) -> np.ndarray:
    """Smoothed integer crop squares for a landmark track.

    Returns (frames, 4) int32 rows of (x0, y0, x1, y1) in frame pixels with
    x1 - x0 == y1 - y0; a box may reach past the frame edge (see ``cut_crop``).
    """
    centre_x, top_y, side = smooth_over_time(raw_crop_boxes(landmarks), sigma).T
    side = np.round(side)
    x0 = np.round(centre_x - side / 2)
    y0 = np.round(top_y)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int32)


def _frame_to_crop_matrix(box, size: int) -> np.ndarray:
    x0, y0, x1, _ = [float(value) for value in box]
    scale = size / (x1 - x0)
    return np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]], dtype=np.float64)


def frame_to_crop_matrix(box, size: int = CROP_SIZE) -> np.ndarray:
    """(2, 3) affine map from frame pixels to the pixels of ``cut_crop(frame, box, size)``."""
    return _frame_to_crop_matrix(box, size)


def cut_crop(frame: np.ndarray, box, size: int = CROP_SIZE) -> np.ndarray:
    """The ``size`` x ``size`` model crop of ``frame`` for ``box`` (x0, y0, x1, y1).

    Parts of the box outside the frame are filled by replicating the edge, so a
    face near the border still gives a full crop.
    """
    import cv2

    matrix = _frame_to_crop_matrix(box, size)
    side = box[2] - box[0]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.warpAffine(frame, matrix, (size, size), flags=interpolation,
                          borderMode=cv2.BORDER_REPLICATE)


def lip_box_mask() -> np.ndarray:
    """(320, 320) float32: 1 inside the lips' box (LIP_*), 0 elsewhere."""
    mask = np.zeros((INNER_SIZE, INNER_SIZE), np.float32)
    mask[LIP_TOP:LIP_BOTTOM, LIP_LEFT:LIP_RIGHT] = 1.0
    return mask


def inner_mask(feather_px: float = 0.0) -> np.ndarray:
    """(320, 320) float32 mask of the repainted region: 1 inside, 0 outside.

    With ``feather_px`` > 0 the edge ramps smoothly over that many pixels
    inside the region, so pasting a generated crop leaves no visible seam.
    """
    rows = np.arange(INNER_SIZE, dtype=np.float32)[:, None]
    cols = np.arange(INNER_SIZE, dtype=np.float32)[None, :]
    distance = np.minimum.reduce([
        np.broadcast_to(rows - MASK_TOP, (INNER_SIZE, INNER_SIZE)),
        np.broadcast_to(MASK_BOTTOM - 1 - rows, (INNER_SIZE, INNER_SIZE)),
        np.broadcast_to(cols - MASK_LEFT, (INNER_SIZE, INNER_SIZE)),
        np.broadcast_to(MASK_RIGHT - 1 - cols, (INNER_SIZE, INNER_SIZE)),
    ])
    if feather_px <= 0:
        return (distance >= 0).astype(np.float32)
    return np.clip((distance + 1) / feather_px, 0.0, 1.0).astype(np.float32)


def shown_to_edges() -> np.ndarray:
    """(320, 320) bool: what the masked target still shows when it is blacked out from MASK_TOP to the
    crop's bottom and side edges (the U-Net's mask_to_edges): the rows above the mask, True."""
    shown = np.zeros((INNER_SIZE, INNER_SIZE), bool)
    shown[:MASK_TOP] = True
    return shown


def mask_lower_face(inner_crop: np.ndarray) -> np.ndarray:
    """A copy of a (320, 320, C) or (..., C, 320, 320)-agnostic HWC crop with the
    repainted region blacked out: the model must draw the mouth from audio."""
    masked = inner_crop.copy()
    masked[MASK_TOP:MASK_BOTTOM, MASK_LEFT:MASK_RIGHT] = 0
    return masked


def paste_crop(frame: np.ndarray, crop: np.ndarray, box, feather_px: float = 12.0) -> np.ndarray:
    """Blend a generated 328 crop back into ``frame`` (in place, also returned).

    Only the repainted region of the inner 320 square is blended, through a
    feathered mask, so the seam between generated and real pixels is invisible.
    """
    import cv2

    x0, y0, x1, y1 = [int(value) for value in box]
    height, width = frame.shape[:2]
    left, top = max(x0, 0), max(y0, 0)
    right, bottom = min(x1, width), min(y1, height)
    if right <= left or bottom <= top:
        return frame
    full_mask = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    full_mask[INNER, INNER] = inner_mask(feather_px)
    side = x1 - x0
    # Inverse of cut_crop: resize the whole crop to the box, then keep the in-frame part.
    resized = cv2.resize(crop, (side, side), interpolation=cv2.INTER_LINEAR)
    resized_mask = cv2.resize(full_mask, (side, side), interpolation=cv2.INTER_LINEAR)
    region = (slice(top - y0, bottom - y0), slice(left - x0, right - x0))
    alpha = resized_mask[region][..., None]
    target = frame[top:bottom, left:right]
    blended = target.astype(np.float32) * (1 - alpha) + resized[region].astype(np.float32) * alpha
    frame[top:bottom, left:right] = np.clip(blended + 0.5, 0, 255).astype(frame.dtype)
    return frame
