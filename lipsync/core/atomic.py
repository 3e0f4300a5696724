"""Writes that never leave a half-finished file a re-run could mistake for done.

Every file is written to a temporary sibling and moved into place with
``os.replace`` (atomic on one filesystem); folders are filled under a temporary
name and renamed when complete.
"""
import contextlib
import json
import os
import shutil
from pathlib import Path

from lipsync.core.errors import UserError


def temporary_sibling(path: Path) -> Path:
    """A name next to ``path`` that no finished output ever has."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; it becomes ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    # Keep the suffix so libraries that pick a format by extension still work.
    temporary = temporary.with_name(temporary.name + path.suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_file_atomic(path, write) -> None:
    """``write(handle)`` into a temporary file, synced to disk, that then becomes ``path``."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())


def write_bytes_atomic(path, data: bytes) -> None:
    write_file_atomic(path, lambda handle: handle.write(data))


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_numpy_atomic(path, array) -> None:
    import numpy as np

    write_file_atomic(path, lambda handle: np.save(handle, array))


def write_png_atomic(path, image_bgr) -> Path:
    """A BGR uint8 picture as PNG at ``path``, atomically; returns the path."""
    import cv2  # OpenCV is heavy and only pictures need it

    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:
        raise UserError(f"could not encode {Path(path).name} as PNG")
    write_bytes_atomic(path, encoded.tobytes())
    return Path(path)


def save_torch_atomic(path, obj) -> None:
    """torch.save through a temporary file: a crash never leaves a truncated .pth."""
    import torch

    write_file_atomic(path, lambda handle: torch.save(obj, handle))


@contextlib.contextmanager
def atomic_directory(path):
    """Yield an empty temporary folder; it replaces ``path`` only if the block succeeds.

    A folder left behind by an interrupted run is wiped first, so a stage that
    was cut off is always redone from the start.
    """
    path = Path(path)
    temporary = temporary_sibling(path)
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(temporary, path)
