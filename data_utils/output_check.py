"""Cheap checks that a finished stage's outputs are still whole: a stage is done only when
its outputs verify, never merely because the files exist.

Each check returns None when the output is sound, else one phrase saying what is wrong
("has 99 of 100 frames (missing 41.jpg)"); callers log it and redo or repair the stage.
They read headers and markers, not whole files, so a re-run of preprocessing can afford
them every time.
"""
import wave
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

JPEG_START = b"\xff\xd8"
JPEG_END = b"\xff\xd9"
JPEG_TAIL_BYTES = 16          # encoders may pad after the end marker; look a little further back


def broken_jpeg_frames(frames_dir: Path, count: int) -> List[int]:
    """Indices 0..count-1 whose i.jpg is missing, empty or lacks the JPEG start/end markers."""
    broken = []
    for index in range(count):
        path = Path(frames_dir) / f"{index}.jpg"
        try:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                start = handle.read(2)
                handle.seek(max(0, size - JPEG_TAIL_BYTES))
                tail = handle.read()
        except OSError:
            broken.append(index)
            continue
        if start != JPEG_START or JPEG_END not in tail:
            broken.append(index)
    return broken


def frames_problem(frames_dir: Path, count: int) -> Optional[str]:
    if not Path(frames_dir).is_dir():
        return f"{Path(frames_dir).name}/ is missing"
    broken = broken_jpeg_frames(frames_dir, count)
    if broken:
        shown = ", ".join(f"{index}.jpg" for index in broken[:5]) + (" ..." if len(broken) > 5 else "")
        return f"{Path(frames_dir).name}/ has {len(broken)} missing or damaged of {count} frames ({shown})"
    return None


def npy_problem(path: Path, leading: Sequence[int]) -> Optional[str]:
    """A .npy whose header loads and whose data is all there, with shape starting ``leading``."""
    path = Path(path)
    try:
        array = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError) as error:  # truncated data or a damaged header
        return f"{path.name} is damaged ({error})"
    if tuple(array.shape[:len(leading)]) != tuple(leading):
        return f"{path.name} has shape {array.shape}, expected {tuple(leading)} first"
    return None


def wav_problem(path: Path, samples: int, sample_rate: int) -> Optional[str]:
    """A mono 16-bit wav of exactly ``samples`` samples at ``sample_rate``, data all present."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as reader:
            frames, rate, channels = reader.getnframes(), reader.getframerate(), reader.getnchannels()
        data_bytes = path.stat().st_size
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, EOFError, wave.Error) as error:
        return f"{path.name} is damaged ({error})"
    if (frames, rate, channels) != (samples, sample_rate, 1):
        return f"{path.name} has {frames} samples at {rate} Hz x {channels}, expected {samples} at {sample_rate} Hz mono"
    if data_bytes < 2 * samples:
        return f"{path.name} is truncated ({data_bytes} bytes for {samples} samples)"
    return None


def file_problem(path: Path) -> Optional[str]:
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    if path.stat().st_size == 0:
        return f"{path.name} is empty"
    return None
