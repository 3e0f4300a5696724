"""The recording as video: probing what can become a dataset, the constant-25-fps
conversion, streaming decoded frames out of FFmpeg (each frame decoded once) and
storing a frame as the dataset's JPEG."""
import subprocess
import tempfile
from pathlib import Path
from typing import List

import numpy as np

from data_utils.ffmpeg import (MediaInfo, ffmpeg_binary, is_constant_frame_rate, last_error_line, passthrough_timing,
                               probe)
from data_utils.timebase import FPS
from lipsync.core.atomic import atomic_path
from lipsync.core.errors import UserError
from lipsync.core.progress import progress_bar

CONVERSION_CRF = 17            # visually lossless: frames are training targets
CONVERSION_PRESET = "veryfast"
CONVERSION_AUDIO_BITRATE = "192k"
JPEG_QUALITY = 95              # dataset frames: full_body_img/i.jpg


def inspect_source(video_path: Path) -> MediaInfo:
    """Probe the recording and reject what cannot become a dataset."""
    info = probe(video_path)
    if not info.has_video:
        raise UserError(f"{video_path} has no video stream (it is an audio file) — "
                        "give the recording of the person talking, with picture and sound")
    if not info.has_audio:
        raise UserError(f"{video_path} has no audio track — the model learns lip sync from the "
                        "speech, so record or export the video with its sound")
    if not info.duration or info.duration <= 0:
        raise UserError(f"{video_path} reports no duration (damaged file?) — re-export the recording")
    return info


def needs_conversion(info: MediaInfo) -> bool:
    """Re-encode unless the file already is constant 25 fps with no rotation metadata.

    The container's reported frame rate is not trusted: packet timestamps are
    checked, since phone videos are variable-frame-rate behind a nominal fps.
    """
    if info.rotation % 360:
        return True
    if info.average_fps is None or abs(info.average_fps - FPS) > 0.01:
        return True
    return not is_constant_frame_rate(info.path, FPS)


def _run_with_progress(command: List[str], duration: float, description: str, subject: Path,
                       show_progress: bool = True) -> None:
    """Run ffmpeg showing its progress over ``duration`` seconds; errors become one line."""
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(command + ["-progress", "pipe:1", "-nostats"],
                                   stdout=subprocess.PIPE, stderr=stderr_file)
        try:
            with progress_bar(total=round(duration, 2), desc=description, unit="s", enabled=show_progress,
                           bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]") as bar:
                for raw_line in process.stdout:
                    key, _, value = raw_line.decode("utf-8", "replace").strip().partition("=")
                    if key == "out_time_us" and value.isdigit():
                        bar.n = min(int(value) / 1e6, bar.total)
                        bar.refresh()
            process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        if process.returncode != 0:
            stderr_file.seek(0)
            detail = last_error_line(stderr_file.read().decode("utf-8", "replace"))
            raise UserError(f"{subject}: ffmpeg could not convert it to 25 fps ({detail}) — "
                            "check that the file plays and is complete")


def convert_to_25fps(info: MediaInfo, output: Path, show_progress: bool = True) -> None:
    """Constant-25-fps H.264 copy of the recording with the rotation baked in.

    The ``fps`` filter picks frames by timestamp, which is what makes variable
    frame rate sources come out right; ffmpeg applies the rotation metadata
    while decoding, and the re-encoded stream carries none. Its timestamps go
    through unchanged (passthrough): a constant-rate muxer would fill a picture
    that starts after the sound with copies of the first frame (102 frames for
    4.00 s of picture); preprocessing lines the sound up with the first real
    frame instead (video.py's callers, "sound on the frames' clock").
    """
    with atomic_path(output) as temporary:
        command = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                   "-i", str(info.path), "-map", "0:v:0", "-map", "0:a:0",
                   "-vf", f"fps={FPS}", *passthrough_timing(),
                   "-c:v", "libx264", "-preset", CONVERSION_PRESET, "-crf", str(CONVERSION_CRF),
                   "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", CONVERSION_AUDIO_BITRATE,
                   "-movflags", "+faststart", "-f", "mp4", str(temporary)]
        _run_with_progress(command, info.duration, "convert to 25 fps", info.path, show_progress)


class FrameReader:
    """Decoded BGR frames of a video, streamed from ffmpeg (each frame decoded once).

    Every decoded frame once, in order, and nothing else: with passthrough timing ffmpeg
    never pads a picture that starts after the sound with copies of its first frame
    (some versions do so by default: 105 frames from 100), which would put every frame
    after them that many frames behind the sound.
    """

    def __init__(self, info: MediaInfo):
        self.info = info
        self.width, self.height = info.display_size
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(info.path),
             "-map", "0:v:0", *passthrough_timing(), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
            stdout=subprocess.PIPE, stderr=self._stderr)
        self.frames_read = 0

    def __iter__(self):
        frame_bytes = self.width * self.height * 3
        while True:
            buffer = bytearray(frame_bytes)
            view = memoryview(buffer)
            filled = 0
            while filled < frame_bytes:
                count = self._process.stdout.readinto(view[filled:])
                if not count:
                    break
                filled += count
            if filled < frame_bytes:
                return
            self.frames_read += 1
            yield np.frombuffer(buffer, dtype=np.uint8).reshape(self.height, self.width, 3)

    def close(self) -> str:
        """Stop ffmpeg (if still running); returns its error output. Safe to call twice."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if not self._stderr.closed:
            self._stderr.seek(0)
            self._errors = self._stderr.read().decode("utf-8", "replace")
            self._stderr.close()
        return self._errors


def encode_frame_jpeg(path: Path, frame: np.ndarray) -> bytes:
    """A dataset frame as JPEG bytes, as preprocessing stores it (``path`` names it in errors)."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise UserError(f"could not encode frame {path.name} as JPEG")
    return encoded.tobytes()


def write_frame_jpeg(path: Path, frame: np.ndarray) -> None:
    """Write a dataset frame (inside a stage's temporary folder, which is renamed when complete)."""
    path.write_bytes(encode_frame_jpeg(path, frame))
