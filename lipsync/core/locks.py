"""One run at a time per folder: a dataset being preprocessed, a checkpoint folder being
trained into. A second run stops at once with one line instead of corrupting the first's
files; the lock goes with the process (flock), so a killed run never leaves it stuck. And a
short step that any run may do but only one at a time (waiting_lock)."""
import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path

from lipsync.core.atomic import ensure_folder, output_error
from lipsync.core.errors import UserError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder, activity: str, option: str = ""):
    """Hold ``folder``'s lock while ``activity`` ("preprocessing", "training") runs; UserError if taken.

    The folder is created if needed; one that cannot be (a file in the way, no permission, a
    read-only disk) is a UserError naming ``option``, the command-line option that chose it.
    """
    folder = ensure_folder(folder, option)
    path = folder / LOCK_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise UserError(f"{folder} is in use: {holder} — wait for that run to finish (or stop it) and "
                            "run this again; two at once would corrupt its files") from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{activity} by pid {os.getpid()} since {started} "
                              f"({Path(sys.argv[0]).name})".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def waiting_lock(path):
    """Hold the lock file ``path`` (created if needed), waiting while another process holds it."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise output_error(path, error) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)          # closing releases the lock
