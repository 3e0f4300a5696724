"""Decoded frames of a video with the decoder this machine has: FFmpeg, as preprocessing
decodes (data_utils.video.FrameReader), else OpenCV's own (opencv-python ships one),
so a machine without an ffmpeg binary still gets every frame, in order."""
import logging
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np

from data_utils.ffmpeg import ffmpeg_binary, probe
from data_utils.video import FrameReader
from lipsync.core.errors import UserError

log = logging.getLogger(__name__)

FFMPEG_DECODER = "ffmpeg"
OPENCV_DECODER = "opencv"


def _ffmpeg_frames(video: Path) -> Iterator[np.ndarray]:
    reader = FrameReader(probe(video))
    try:
        yield from reader
    finally:
        reader.close()


def _opencv_frames(video: Path) -> Iterator[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise UserError(f"OpenCV cannot open {video} and there is no ffmpeg here — install ffmpeg "
                        "(or the imageio-ffmpeg wheel: scripts/download_wheels.py --with_ffmpeg)")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def video_frames(video) -> Tuple[str, Iterator[np.ndarray]]:
    """(decoder name, BGR uint8 frames of ``video`` in presentation order).

    Both decoders apply the same YUV to BGR conversion of libswscale; with
    OpenCV's bundled FFmpeg libraries the frames are usually bit-identical.
    """
    video = Path(video)
    try:
        ffmpeg_binary()
    except UserError:
        log.info("no ffmpeg here: OpenCV decodes %s", video.name)
        return OPENCV_DECODER, _opencv_frames(video)
    return FFMPEG_DECODER, _ffmpeg_frames(video)
