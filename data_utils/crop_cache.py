"""The crop cache: every frame's 328 crop (data_utils.crop.cut_crop with the smoothed crop
box) cut once into dataset/NAME/crops_328.u8, a raw uint8 (N, 328, 328, 3) BGR array that
training memory-maps, so the training loop never decodes a JPEG. ``JpegCrops`` is the slow
path it replaces (kept for the benchmark and as the reference the cache is checked against).
"""
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict

import numpy as np

from data_utils import crop
from data_utils.crop import CROP_SHAPE
from data_utils.layout import DatasetLayout, process_command
from lipsync.core.atomic import atomic_path, write_json_atomic
from lipsync.core.errors import UserError
from lipsync.core.locks import waiting_lock
from lipsync.core.progress import progress_bar

log = logging.getLogger("dataset")

CACHE_VERSION = 1
CROP_BYTES = int(np.prod(CROP_SHAPE))
CACHE_WRITER_THREADS = 4           # cv2 decodes and warps outside the GIL


class JpegCrops:
    """Crops cut on demand from full_body_img/i.jpg (decodes a JPEG per access)."""

    def __init__(self, layout: DatasetLayout, boxes: np.ndarray):
        self.layout, self.boxes = layout, boxes

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, index: int) -> np.ndarray:
        import cv2

        path = self.layout.frame_path(index)
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise UserError(f"{path} is missing or unreadable — run again: {process_command(self.layout)}")
        return crop.cut_crop(frame, self.boxes[index])


def cache_info_path(layout: DatasetLayout) -> Path:
    return layout.crop_cache.with_suffix(".json")


def _cache_key(boxes: np.ndarray) -> Dict:
    return {"version": CACHE_VERSION, "frames": int(len(boxes)), "shape": list(CROP_SHAPE),
            "crop_boxes_sha256": hashlib.sha256(np.ascontiguousarray(boxes).tobytes()).hexdigest()}


def build_lock_path(layout: DatasetLayout) -> Path:
    return layout.crop_cache.with_name(f".{layout.crop_cache.name}.lock")


def crop_cache_is_current(layout: DatasetLayout, boxes: np.ndarray) -> bool:
    info = cache_info_path(layout)
    if not (info.is_file() and layout.crop_cache.is_file()):
        return False
    try:
        recorded = json.loads(info.read_text())
    except (OSError, ValueError):
        return False
    return (recorded == _cache_key(boxes)
            and layout.crop_cache.stat().st_size == len(boxes) * CROP_BYTES)


def build_crop_cache(layout: DatasetLayout, boxes: np.ndarray, show_progress: bool = True) -> Path:
    """Cut every frame's 328 crop into crops_328.u8 (atomically); skip if already current."""
    if crop_cache_is_current(layout, boxes):
        return layout.crop_cache
    # The U-Net and SyncNet trained side by side both start by building the cache: two writers
    # would share its temporary file, and one truncating it under the other's memory map kills
    # that process with SIGBUS. The second waits, then finds the cache current.
    with waiting_lock(build_lock_path(layout)):
        if crop_cache_is_current(layout, boxes):      # another process built it while this one waited
            return layout.crop_cache
        return _write_crop_cache(layout, boxes, show_progress)


def _write_crop_cache(layout: DatasetLayout, boxes: np.ndarray, show_progress: bool) -> Path:
    info = cache_info_path(layout)
    if info.exists():
        info.unlink()                       # the old cache no longer matches: never trust it again
    source = JpegCrops(layout, boxes)
    log.info("cutting %d crops into %s (once; later runs reuse it)", len(boxes), layout.crop_cache)
    with atomic_path(layout.crop_cache) as temporary:
        array = np.memmap(temporary, dtype=np.uint8, mode="w+", shape=(len(boxes),) + CROP_SHAPE)

        def cut(index):
            array[index] = source[index]

        with ThreadPoolExecutor(CACHE_WRITER_THREADS) as pool:
            for _ in progress_bar(pool.map(cut, range(len(boxes))), total=len(boxes), desc="crop cache",
                                  enabled=show_progress):
                pass
        array.flush()
        del array
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
    write_json_atomic(info, _cache_key(boxes))
    return layout.crop_cache


def open_crop_cache(layout: DatasetLayout, frame_count: int) -> np.memmap:
    """The cache as a read-only (N, 328, 328, 3) uint8 memory map."""
    return np.memmap(layout.crop_cache, dtype=np.uint8, mode="r", shape=(frame_count,) + CROP_SHAPE)
