"""Writes that never leave a half-finished file a re-run could mistake for done.

Every file is written to a temporary sibling and moved into place with
``os.replace`` (atomic on one filesystem); folders are filled under a temporary
name and renamed when complete.
"""
import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from lipsync.core.errors import UserError


# Errors that mean "this place cannot take the file", not "the program is wrong".
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def output_error(path, error: OSError, option: str = "") -> UserError:
    """One line for an output that cannot be written, blaming the place, never the input."""
    choose = f"choose another {option} or " if option else ""
    if error.errno in NO_SPACE:
        return UserError(f"no space left on the disk of {path} while writing it — {choose}free some space and "
                         "run again (finished files are intact)")
    if error.errno in NOT_WRITABLE:
        return UserError(f"cannot write {path} ({error.strerror}) — {choose}fix the folder's permissions")
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        return UserError(f"cannot write {path}: a file stands where a folder must be — {choose}remove that file")
    return UserError(f"cannot write {path} ({error.strerror or error}) — {choose}check the disk")


def ensure_folder(path, option: str = "") -> Path:
    """``path`` as an existing, writable folder (created if needed), or one UserError naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a folder — " + (f"choose another {option}" if option
                                                                 else "remove it or choose another place"))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise output_error(path, error, option) from None
    return path


def temporary_sibling(path: Path) -> Path:
    """A name next to ``path`` that no finished output ever has."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; it becomes ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(path.parent, error) from None
    temporary = temporary_sibling(path)
    # Keep the suffix so libraries that pick a format by extension still work.
    temporary = temporary.with_name(temporary.name + path.suffix)
    try:
        yield temporary
        try:
            os.replace(temporary, path)
        except OSError as error:
            raise output_error(path, error) from None
    finally:
        if temporary.exists():
            temporary.unlink()


def write_file_atomic(path, write) -> None:
    """``write(handle)`` into a temporary file, synced to disk, that then becomes ``path``."""
    with atomic_path(path) as temporary:
        try:
            with open(temporary, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            if error.errno not in NO_SPACE + NOT_WRITABLE:
                raise
            raise output_error(path, error) from None


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


DISK_FULL_BYTES = 1 << 20      # below this much free space a failed write is a full disk


def save_torch_atomic(path, obj) -> None:
    """torch.save through a temporary file: a crash never leaves a truncated .pth."""
    import torch

    def write(handle):
        try:
            torch.save(obj, handle)
        except RuntimeError as error:     # torch's zip writer reports a full disk as a RuntimeError
            if "write" not in str(error).lower() or shutil.disk_usage(Path(path).parent).free > DISK_FULL_BYTES:
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None

    write_file_atomic(path, write)


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
