"""What a rendered video is scored on: pure functions on frames, landmarks,
mouth-opening tracks, SyncNet embeddings and audio samples.

Frames are (H, W, 3) uint8 BGR, as cv2 and the dataset's full_body_img/ give
them; generated and real frame k show the same instant. Landmarks are
(frames, points, 2) float arrays in frame pixels (mediapipe face mesh or
iBUG-68, data_utils/crop.py names their points) with NaN rows where no face
was found. Nothing here renders, detects or loads a model: evaluation.py
renders, landmark_track.py and sync_embedding.py detect and embed, and
clip_scorer.py, reference.py and evaluation.py call these.

Conventions shared by every offset in this module: a positive offset k means
the generated video is k frames *late*, i.e. generated frame t matches
reference frame (or audio frame) t - k. 0 is in sync.

The metrics (README "Evaluation" explains how to read them):
- image quality: PSNR and SSIM, over the full frame and over the mouth region
  (the box around the real frame's lip landmarks, ``mouth_boxes``);
- lip shape: LMD, the mean distance between generated and real lip landmarks
  in face widths (``lip_distance``);
- sync: the inner-lip gap per frame (``mouth_opening``), its correlation with
  the real video's and the offset that maximises it (``offset_correlation``),
  and SyncNet distance / confidence in the manner of LSE-D / LSE-C
  (``sync_confidence``);
- stability: frame-to-frame change of the mouth region against the real
  video's (``mouth_change``, ``stability``);
- without ground truth: sync confidence, and the correlation of the mouth
  opening with the audio's loudness (``audio_energy``).
"""
from typing import Dict, Optional, Sequence

import numpy as np

from data_utils.crop import face_width, scheme_for
from data_utils.timebase import SAMPLES_PER_FRAME

PIXEL_MAX = 255.0
# Identical images have infinite PSNR; capping keeps averages and JSON finite.
MAX_PSNR_DB = 100.0

# SSIM of Wang et al. (2004): 11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
# computed per colour channel and averaged.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * PIXEL_MAX) ** 2
SSIM_C2 = (0.03 * PIXEL_MAX) ** 2

# The mouth region: the bounding box of the real frame's lip landmarks, grown on
# every side by this fraction of the face width, so the lips, their shadow and
# the teeth are inside whatever shape the mouth takes.
MOUTH_MARGIN_FACE_WIDTHS = 0.1

# Offsets searched for the best sync, in frames either way: +-15 frames (0.6 s),
# the range SyncNet's LSE evaluation searches. Short clips search at most a third
# of their length, so every offset still compares two thirds of the frames.
MAX_SYNC_OFFSET_FRAMES = 15
MIN_OVERLAP_FRACTION = 2 / 3
MIN_CORRELATION_FRAMES = 3          # fewer finite pairs than this: no correlation (NaN)

# Loudness per video frame: RMS over two frames (80 ms) centred on the frame's
# instant; one syllable's energy, not a single pitch period.
ENERGY_WINDOW_SAMPLES = 2 * SAMPLES_PER_FRAME


# --------------------------------------------------------------------------- image quality

def _region(image: np.ndarray, box=None) -> np.ndarray:
    if box is None:
        return image
    x0, y0, x1, y1 = [int(value) for value in box]
    return image[y0:y1, x0:x1]


def _check_pair(generated: np.ndarray, real: np.ndarray) -> None:
    if generated.shape != real.shape:
        raise ValueError(f"generated frame {generated.shape} and real frame {real.shape} differ in size")


def psnr(generated: np.ndarray, real: np.ndarray, box=None) -> float:
    """PSNR in dB of two uint8 images (inside ``box`` = (x0, y0, x1, y1) if given), capped at MAX_PSNR_DB."""
    _check_pair(generated, real)
    difference = _region(generated, box).astype(np.float64) - _region(real, box).astype(np.float64)
    mse = float(np.mean(difference ** 2))
    if mse == 0:
        return MAX_PSNR_DB
    return float(min(10 * np.log10(PIXEL_MAX ** 2 / mse), MAX_PSNR_DB))


def ssim(generated: np.ndarray, real: np.ndarray, box=None) -> float:
    """Mean SSIM of two uint8 images (inside ``box`` if given): 1 for identical images."""
    import cv2

    _check_pair(generated, real)
    a = _region(generated, box).astype(np.float64)
    b = _region(real, box).astype(np.float64)

    def blur(image):
        return cv2.GaussianBlur(image, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA,
                                borderType=cv2.BORDER_REFLECT)

    mean_a, mean_b = blur(a), blur(b)
    var_a = blur(a * a) - mean_a ** 2
    var_b = blur(b * b) - mean_b ** 2
    covariance = blur(a * b) - mean_a * mean_b
    numerator = (2 * mean_a * mean_b + SSIM_C1) * (2 * covariance + SSIM_C2)
    denominator = (mean_a ** 2 + mean_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return float(np.mean(numerator / denominator))


def mouth_boxes(landmarks: np.ndarray, frame_shape: Sequence[int],
                margin: float = MOUTH_MARGIN_FACE_WIDTHS) -> np.ndarray:
    """(N, 4) int32 (x0, y0, x1, y1) mouth regions of (N, points, 2) real-frame landmarks.

    The box around the scheme's lip points (data_utils/crop.py), grown by
    ``margin`` face widths on every side and clipped to the frame
    (``frame_shape`` = (height, width, ...)).
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    scheme = scheme_for(landmarks)
    lips = landmarks[:, list(scheme.lips)]
    pad = margin * face_width(landmarks)[:, None]
    low = np.floor(lips.min(axis=1) - pad)
    high = np.ceil(lips.max(axis=1) + pad)
    height, width = int(frame_shape[0]), int(frame_shape[1])
    x0 = np.clip(low[:, 0], 0, width - 1)
    y0 = np.clip(low[:, 1], 0, height - 1)
    x1 = np.clip(high[:, 0], x0 + 1, width)
    y1 = np.clip(high[:, 1], y0 + 1, height)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int32)


# --------------------------------------------------------------------------- stability

def mouth_change(previous: np.ndarray, current: np.ndarray, box) -> float:
    """Mean absolute change (grey levels, 0-255) inside ``box`` from one frame to the next."""
    _check_pair(previous, current)
    return float(np.mean(np.abs(_region(current, box).astype(np.float32)
                                - _region(previous, box).astype(np.float32))))


def stability(generated_changes: Sequence[float], real_changes: Sequence[float]) -> Dict[str, float]:
    """Frame-to-frame change of the generated mouth against the real one's.

    ``ratio`` 1 moves as much as the real video; above 1 is flicker or jitter
    (excess change), well below 1 a mouth that hardly moves.
    """
    generated = float(np.mean(generated_changes)) if len(generated_changes) else float("nan")
    real = float(np.mean(real_changes)) if len(real_changes) else float("nan")
    ratio = generated / real if real > 0 else float("nan")
    return {"generated_change": generated, "real_change": real, "change_ratio": ratio}


# --------------------------------------------------------------------------- lips

def lip_distance(generated_landmarks: np.ndarray, real_landmarks: np.ndarray) -> np.ndarray:
    """(N,) mean distance between corresponding lip landmarks, in real-frame face widths.

    NaN for frames where either side has no face. The per-frame values'
    mean is LMD.
    """
    generated = np.asarray(generated_landmarks, dtype=np.float64)
    real = np.asarray(real_landmarks, dtype=np.float64)
    if generated.shape != real.shape:
        raise ValueError(f"landmark arrays differ: {generated.shape} vs {real.shape}")
    lips = list(scheme_for(real).lips)
    distances = np.linalg.norm(generated[:, lips] - real[:, lips], axis=-1).mean(axis=1)
    return distances / face_width(real)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """(N,) inner-lip gap (upper to lower inner lip centre) in face widths; NaN without a face.

    0 is a closed mouth; a wide-open one is around 0.1.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    scheme = scheme_for(landmarks)
    gap = np.linalg.norm(landmarks[:, scheme.lower_inner_lip] - landmarks[:, scheme.upper_inner_lip], axis=-1)
    return gap / face_width(landmarks)


# --------------------------------------------------------------------------- correlation and offsets

def correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation over the pairs where both are finite.

    0 when either side does not vary (a mouth that never moves carries no
    sync); NaN with fewer than MIN_CORRELATION_FRAMES pairs.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"tracks differ in length: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < MIN_CORRELATION_FRAMES:
        return float("nan")
    a, b = a[keep] - a[keep].mean(), b[keep] - b[keep].mean()
    scale = np.sqrt(np.sum(a * a) * np.sum(b * b))
    if scale <= 1e-12 * max(len(a), 1):
        return 0.0
    return float(np.clip(np.sum(a * b) / scale, -1.0, 1.0))


def max_offset_for(length: int, max_offset: int = MAX_SYNC_OFFSET_FRAMES) -> int:
    """Largest offset searched for ``length`` frames: overlaps keep MIN_OVERLAP_FRACTION of them."""
    return int(max(0, min(max_offset, np.floor(length * (1 - MIN_OVERLAP_FRACTION)))))


def shifted_pairs(generated: np.ndarray, reference: np.ndarray, offset: int):
    """The overlapping parts of two equally long tracks with generated[t] against reference[t - offset]."""
    length = len(generated)
    if offset >= 0:
        return generated[offset:], reference[:length - offset]
    return generated[:length + offset], reference[-offset:]


def offset_correlation(generated: Sequence[float], reference: Sequence[float],
                       max_offset: int = MAX_SYNC_OFFSET_FRAMES) -> Dict[str, float]:
    """How well a generated track follows a reference track, and at which delay.

    Returns ``correlation`` (at offset 0), ``best_offset`` (frames; positive:
    the generated video is late) and ``best_correlation`` at that offset. The
    best offset is the one with the highest correlation; ties go to the
    smallest delay.
    """
    generated = np.asarray(generated, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if generated.shape != reference.shape:
        raise ValueError(f"tracks differ in length: {generated.shape} vs {reference.shape}")
    limit = max_offset_for(len(generated), max_offset)
    offsets = sorted(range(-limit, limit + 1), key=abs)
    values = {offset: correlation(*shifted_pairs(generated, reference, offset)) for offset in offsets}
    finite = {offset: value for offset, value in values.items() if np.isfinite(value)}
    if not finite:
        return {"correlation": values.get(0, float("nan")), "best_offset": float("nan"),
                "best_correlation": float("nan")}
    best = max(finite, key=lambda offset: (finite[offset], -abs(offset)))
    return {"correlation": values[0], "best_offset": int(best), "best_correlation": finite[best]}


def lip_sync_scores(generated_landmarks: np.ndarray, real_landmarks: np.ndarray,
                    max_offset: int = MAX_SYNC_OFFSET_FRAMES) -> Dict[str, float]:
    """LMD and the mouth-opening comparison of a generated clip with the real one.

    ``lmd`` in face widths (0 = the same lips); ``opening_correlation`` at 0
    offset, ``opening_offset`` (frames, positive = generated late) and its
    ``opening_best_correlation``; ``opening_ratio`` = mean generated inner-lip
    gap / mean real gap (1 = opens as wide); ``face_found`` = fraction of
    generated frames where a face was detected at all.
    """
    per_frame = lip_distance(generated_landmarks, real_landmarks)
    generated_opening = mouth_opening(generated_landmarks)
    found = np.isfinite(generated_opening)
    return {
        "lmd": float(np.nanmean(per_frame)) if np.isfinite(per_frame).any() else float("nan"),
        **opening_scores(generated_opening, mouth_opening(real_landmarks), max_offset),
        "face_found": float(found.mean()) if len(found) else float("nan"),
    }


def opening_scores(generated_opening: np.ndarray, real_opening: np.ndarray,
                   max_offset: int = MAX_SYNC_OFFSET_FRAMES) -> Dict[str, float]:
    """How a track of mouth openings (any source: landmarks, a read-out) follows the real one.

    ``opening_correlation`` at 0 offset, ``opening_offset`` (frames, positive = late),
    ``opening_best_correlation`` there, ``opening_ratio`` = mean opening / the real mean.
    """
    track = offset_correlation(generated_opening, real_opening, max_offset)
    real_mean = float(np.nanmean(real_opening)) if np.isfinite(real_opening).any() else float("nan")
    generated_mean = (float(np.nanmean(generated_opening)) if np.isfinite(generated_opening).any()
                      else float("nan"))
    return {
        "opening_correlation": track["correlation"],
        "opening_offset": track["best_offset"],
        "opening_best_correlation": track["best_correlation"],
        "opening_ratio": generated_mean / real_mean if real_mean > 0 else float("nan"),
    }


# --------------------------------------------------------------------------- SyncNet (LSE-D / LSE-C)

def sync_confidence(face_embeddings: np.ndarray, audio_embeddings: np.ndarray,
                    max_offset: int = MAX_SYNC_OFFSET_FRAMES) -> Dict[str, float]:
    """SyncNet distance and confidence in the manner of LSE-D / LSE-C.

    ``face_embeddings`` (N, E) of frames 0..N-1 and ``audio_embeddings`` (N, E)
    of the audio windows of the same frames, both L2-normalised. For every
    offset the mean distance between face t and audio t - offset is taken;
    ``lse_d`` is the smallest mean distance (lower = better in sync),
    ``lse_c`` the median of the mean distances minus the smallest (higher =
    more confident that there is one clear sync point), ``sync_offset`` the
    offset of the smallest (frames, positive = video late).
    """
    face = np.asarray(face_embeddings, dtype=np.float64)
    audio = np.asarray(audio_embeddings, dtype=np.float64)
    if face.shape != audio.shape or face.ndim != 2:
        raise ValueError(f"embeddings must both be (N, E), got {face.shape} and {audio.shape}")
    limit = max_offset_for(len(face), max_offset)
    offsets = list(range(-limit, limit + 1))
    means = []
    for offset in offsets:
        face_part, audio_part = shifted_pairs(face, audio, offset)
        means.append(float(np.linalg.norm(face_part - audio_part, axis=1).mean()))
    means = np.asarray(means)
    best = int(np.argmin(np.where(np.isclose(means, means.min()), np.abs(offsets), np.inf)))
    return {"lse_d": float(means[best]), "lse_c": float(np.median(means) - means[best]),
            "sync_offset": int(offsets[best])}


# --------------------------------------------------------------------------- audio

def audio_energy(samples: np.ndarray, frame_count: Optional[int] = None,
                 window: int = ENERGY_WINDOW_SAMPLES) -> np.ndarray:
    """(frame_count,) RMS loudness of 16 kHz mono ``samples`` around each 25 fps frame's instant.

    Frame i's instant is sample i * SAMPLES_PER_FRAME (data_utils/timebase.py);
    audio past either end counts as silence.
    """
    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    if frame_count is None:
        frame_count = int(np.ceil(len(samples) / SAMPLES_PER_FRAME))
    half = window // 2
    padded = np.concatenate([np.zeros(half), samples, np.zeros(window + frame_count * SAMPLES_PER_FRAME)])
    squares = np.concatenate([[0.0], np.cumsum(padded ** 2)])
    starts = np.arange(frame_count) * SAMPLES_PER_FRAME          # index of (instant - half) in padded
    return np.sqrt((squares[starts + window] - squares[starts]) / window)


def opening_energy_scores(opening: Sequence[float], energy: Sequence[float],
                          max_offset: int = MAX_SYNC_OFFSET_FRAMES) -> Dict[str, float]:
    """Does the mouth open when the voice is loud? Correlation of the mouth-opening
    track with the audio's loudness at offset 0, and the offset (frames,
    positive = mouth late) where it peaks. Real speech scores clearly above 0
    near offset 0; a mouth that ignores the audio scores about 0."""
    track = offset_correlation(opening, energy, max_offset)
    return {"energy_correlation": track["correlation"], "energy_offset": track["best_offset"],
            "energy_best_correlation": track["best_correlation"]}
