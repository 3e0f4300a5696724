"""What evaluation shows a person: side-by-side frames (truth | generated) and PNG strips of crops.

A strip is a row of STRIP_COLUMNS evenly spaced frames' 328 model crops; a
checkpoint's strip has the truth's row above its own, and the run's strip.png
stacks the truth once and every checkpoint's row below it.
"""
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from data_utils import crop
from lipsync.core.atomic import write_png_atomic

STRIP_COLUMNS = 6                  # frames shown in a strip
STRIP_TILE_PX = 160                # each frame's 328 crop, shown at this size
SIDE_BY_SIDE_MAX_HEIGHT = 720      # taller recordings are scaled down in the comparison video
LABEL_SCALE = 0.6
LABEL_MARGIN_PX = 8
LABEL_SCALE_HEIGHT_PX = 512        # labels grow with frames taller than this
LABEL_LINE_PX = 20                 # baseline of the label below the margin, at scale 1
# Outlined text: a thick black stroke under a thin white one is readable on any background.
LABEL_STROKES = (((0, 0, 0), 4), ((255, 255, 255), 1))


def _label(image: np.ndarray, text: str) -> np.ndarray:
    import cv2

    height = image.shape[0]
    scale = LABEL_SCALE * max(1.0, height / LABEL_SCALE_HEIGHT_PX)
    position = (LABEL_MARGIN_PX, LABEL_MARGIN_PX + int(LABEL_LINE_PX * scale))
    for colour, thickness in LABEL_STROKES:
        cv2.putText(image, text, position, cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                    max(1, int(thickness * scale)), cv2.LINE_AA)
    return image


def side_by_side(left: np.ndarray, right: np.ndarray, left_label: str, right_label: str) -> np.ndarray:
    """Two frames next to each other, labelled, scaled to at most SIDE_BY_SIDE_MAX_HEIGHT."""
    import cv2

    pair = np.concatenate([_label(left.copy(), left_label), _label(right.copy(), right_label)], axis=1)
    if pair.shape[0] > SIDE_BY_SIDE_MAX_HEIGHT:
        scale = SIDE_BY_SIDE_MAX_HEIGHT / pair.shape[0]
        size = (int(round(pair.shape[1] * scale / 2)) * 2, SIDE_BY_SIDE_MAX_HEIGHT)
        pair = cv2.resize(pair, size, interpolation=cv2.INTER_AREA)
    return pair


def side_by_side_size(frame_width: int, frame_height: int) -> tuple:
    """(width, height) of the side-by-side picture of two frames of this size (the video's size)."""
    blank = np.zeros((frame_height, frame_width, 3), np.uint8)
    height, width = side_by_side(blank, blank, "", "").shape[:2]
    return width, height


def strip_tile(frame: np.ndarray, box) -> np.ndarray:
    """The frame's 328 model crop at STRIP_TILE_PX: the face from the nose down."""
    import cv2

    return cv2.resize(crop.cut_crop(frame, box), (STRIP_TILE_PX, STRIP_TILE_PX), interpolation=cv2.INTER_AREA)


def strip_picks(count: int, columns: int = STRIP_COLUMNS) -> List[int]:
    """Evenly spaced frame positions for a strip."""
    return sorted(set(np.linspace(0, count - 1, min(columns, count)).round().astype(int).tolist()))


def strip_row(tiles: Sequence[np.ndarray], label: str) -> np.ndarray:
    return _label(np.concatenate(list(tiles), axis=1), label)


def write_strip(path: Path, generated_tiles: Sequence[np.ndarray], label: str,
                truth_tiles: Sequence[np.ndarray] = ()) -> Path:
    """One checkpoint's strip: the truth's row (when there is a truth) above the generated row."""
    rows = []
    if truth_tiles:
        rows.append(strip_row(truth_tiles, "truth"))
    rows.append(strip_row(generated_tiles, label))
    return write_png_atomic(path, np.concatenate(rows, axis=0))


def write_combined_strip(path: Path, strips: Sequence[Optional[Path]], has_truth: bool) -> Optional[Path]:
    """Every checkpoint's strip in one picture, the truth's row once at the top; None when
    no strip could be read or they differ in width."""
    import cv2

    rows = []
    for strip in strips:
        if strip is None or not Path(strip).is_file():
            continue
        image = cv2.imread(str(strip))
        if image is None:
            continue
        if has_truth:
            half = image.shape[0] // 2
            if not rows:
                rows.append(image[:half])
            rows.append(image[half:])
        else:
            rows.append(image)
    if not rows or len({row.shape[1] for row in rows}) != 1:
        return None
    return write_png_atomic(path, np.concatenate(rows, axis=0))
