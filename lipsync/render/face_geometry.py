"""The geometry the mouth controls share: maps between frame pixels and the generated 320
square, similarity fits between two frames' stable landmarks, and cross-fading pixels."""
import numpy as np

from data_utils import crop as crop_geometry


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


def stable_points(scheme) -> list:
    """Landmarks that do not move when the mouth opens: they place one frame's mouth into another."""
    return [scheme.face_left, scheme.face_right, scheme.nose_bridge, scheme.nose_tip]
