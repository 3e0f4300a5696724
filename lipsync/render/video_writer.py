"""Streaming BGR frames into an H.264 + AAC mp4, one frame at a time.

FFmpeg reads raw ``bgr24`` frames from its stdin and the audio from a file and
encodes both in one pass, so no intermediate video file (upstream wrote an
MJPG .avi first) and no array of all frames ever exists: memory stays at a few
frames however long the audio is. A background thread feeds the pipe so the
encoder works while the caller renders the next batch.

The result is written under a temporary name next to the output and moved into
place only when FFmpeg finished cleanly: an interrupted render never leaves a
truncated mp4 that looks finished.
"""
import collections
import logging
import os
import queue
import subprocess
import threading
import wave
from pathlib import Path
from typing import Optional

import numpy as np

from data_utils.audio import load_audio
from data_utils.ffmpeg import ffmpeg_available, ffmpeg_binary
from data_utils.timebase import FPS, SAMPLE_RATE
from lipsync.core.atomic import temporary_sibling
from lipsync.core.errors import UserError

log = logging.getLogger(__name__)

VIDEO_CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"         # what every player decodes; needs even width and height
DEFAULT_CRF = 18                 # visually lossless for faces; larger = smaller file
DEFAULT_PRESET = "veryfast"      # x264 speed/size trade-off: keeps encoding ahead of a GPU render
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
AUDIO_CODEC = "aac"
AUDIO_BITRATE = "128k"
QUEUED_FRAMES = 8                # frames waiting for the encoder: bounds memory, absorbs jitter
STDERR_LINES_KEPT = 20
PCM16_SCALE = 32767


def check_output_writable(path) -> Path:
    """Fail early, with one line, when ``path``'s folder cannot be created or written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--output {path} is a folder — give a file name such as {path / 'result.mp4'}")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the output folder {folder} ({error.strerror}) — "
                        "choose another --output") from None
    probe = folder / f".{path.name}.write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"the output folder {folder} is not writable ({error.strerror}) — "
                        "choose another --output or fix its permissions") from None
    return path


def write_wav(path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """16-bit mono PCM wav of float samples in [-1, 1] (to mux audio given as an array)."""
    pcm = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    pcm = np.round(pcm * PCM16_SCALE).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
    return Path(path)


class _FinishedOrDiscarded:
    """Both writers' promise: leaving the block normally finishes the file, an exception discards it
    (the unfinished file, written under a temporary name, never appears under the final one)."""

    def _check_frame(self, frame: np.ndarray) -> None:
        """A frame may be written: the writer is open and the frame is (height, width, 3) uint8."""
        if self._closed:
            raise RuntimeError("write() after close()")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be ({self.height}, {self.width}, 3) uint8, "
                             f"got {frame.shape} {frame.dtype}")

    def _remove_temporary(self) -> None:
        self._temporary.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class VideoWriter(_FinishedOrDiscarded):
    """Write (H, W, 3) BGR uint8 frames at ``fps`` to an mp4, with ``audio`` muxed in.

    ``audio``: a file FFmpeg reads (its first audio track is encoded as AAC, as
    long as it is), or None for a silent video. Use as a context manager:
    leaving the block normally finishes the file, an exception discards it.
    """

    def __init__(self, path, width: int, height: int, audio=None, fps: int = FPS,
                 crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET, queued_frames: int = QUEUED_FRAMES):
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.frames_written = 0
        self._temporary = temporary_sibling(self.path).with_suffix(".mp4")
        command = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                   "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{self.width}x{self.height}",
                   "-framerate", str(fps), "-i", "pipe:0"]
        if audio is not None:
            command += ["-i", str(audio)]
        command += ["-map", "0:v:0"]
        if audio is not None:
            command += ["-map", "1:a:0", "-c:a", AUDIO_CODEC, "-b:a", AUDIO_BITRATE]
        if self.width % 2 or self.height % 2:
            # yuv420p halves chroma resolution, so H.264 needs even sizes: add one
            # black row/column rather than rescaling the person's frames.
            log.warning("frame size %dx%d is odd; padding to even for H.264", self.width, self.height)
            command += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
        command += ["-c:v", VIDEO_CODEC, "-preset", preset, "-crf", str(crf), "-pix_fmt", PIXEL_FORMAT,
                    "-r", str(fps), "-movflags", "+faststart", "-f", "mp4", str(self._temporary)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE)
        except OSError as error:
            raise UserError(f"cannot start ffmpeg ({error}) — run: pip install -r requirements.txt") from None
        self._stderr = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self._queue: "queue.Queue[Optional[np.ndarray]]" = queue.Queue(maxsize=max(1, queued_frames))
        self._feed_error: Optional[BaseException] = None
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()
        self._closed = False

    # ------------------------------------------------------------------ threads

    def _drain_stderr(self) -> None:
        for line in iter(self._process.stderr.readline, b""):
            text = line.decode("utf-8", "replace").strip()
            if text:
                self._stderr.append(text)

    def _feed(self) -> None:
        stdin = self._process.stdin
        while True:
            frame = self._queue.get()
            if frame is None:
                break
            if self._feed_error is not None:
                continue                      # keep draining so write() never blocks forever
            try:
                stdin.write(memoryview(frame).cast("B"))
            except (BrokenPipeError, OSError) as error:
                self._feed_error = error
        try:
            stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def _ffmpeg_message(self) -> str:
        self._stderr_thread.join(timeout=5)
        return self._stderr[-1] if self._stderr else "no message"

    # ------------------------------------------------------------------ API

    def write(self, frame: np.ndarray) -> None:
        """Queue one (height, width, 3) BGR uint8 frame for encoding."""
        self._check_frame(frame)
        if self._feed_error is not None:
            self._fail()
        self._queue.put(np.ascontiguousarray(frame))
        self.frames_written += 1

    def _fail(self) -> None:
        self.abort()
        raise UserError(f"{self.path}: ffmpeg stopped while writing the video ({self._ffmpeg_message()}) — "
                        "check free disk space and the audio file")

    def close(self) -> Path:
        """Finish encoding and move the mp4 into place; returns its path."""
        if self._closed:
            return self.path
        self._queue.put(None)
        self._feeder.join()
        self._closed = True
        return_code = self._process.wait()
        if return_code != 0 or self._feed_error is not None:
            message = self._ffmpeg_message()
            self._remove_temporary()
            raise UserError(f"{self.path}: ffmpeg could not write the video ({message}) — "
                            "check free disk space and the audio file")
        if self.frames_written == 0:
            self._remove_temporary()
            raise UserError(f"{self.path}: no frames were rendered, so no video was written")
        os.replace(self._temporary, self.path)
        return self.path

    def abort(self) -> None:
        """Stop FFmpeg and delete the unfinished file."""
        if not self._closed:
            self._closed = True
            self._feed_error = self._feed_error or RuntimeError("aborted")
            try:
                self._process.kill()
            except OSError:
                pass
            self._queue.put(None)
            self._feeder.join(timeout=10)
            self._process.wait()
        self._remove_temporary()



OPENCV_FOURCC = "mp4v"     # what opencv-python's own FFmpeg may encode (its wheels carry no H.264 encoder)


class OpenCVVideoWriter(_FinishedOrDiscarded):
    """VideoWriter's stand-in where there is no ffmpeg (an offline GPU server): OpenCV encodes
    MPEG-4 Part 2 video without sound, and the sound is written beside it as ``<name>.wav``.

    Same interface and the same promise: an unfinished file never appears under ``path``.
    """

    def __init__(self, path, width: int, height: int, audio=None, fps: int = FPS, **unused_encoder_options):
        import cv2

        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.audio = audio
        self.frames_written = 0
        self._temporary = temporary_sibling(self.path).with_suffix(".mp4")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = cv2.VideoWriter(str(self._temporary), cv2.VideoWriter_fourcc(*OPENCV_FOURCC), fps,
                                       (self.width, self.height))
        if not self._writer.isOpened():
            raise UserError(f"{self.path}: there is no ffmpeg here and OpenCV cannot write mp4 video — "
                            "install ffmpeg (or the imageio-ffmpeg wheel)")
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        self._check_frame(frame)
        self._writer.write(np.ascontiguousarray(frame))
        self.frames_written += 1

    def sound_path(self) -> Path:
        return self.path.with_suffix(".wav")

    def close(self) -> Path:
        if self._closed:
            return self.path
        self._closed = True
        self._writer.release()
        if self.frames_written == 0:
            self._remove_temporary()
            raise UserError(f"{self.path}: no frames were rendered, so no video was written")
        if self.audio is not None:
            write_wav(self.sound_path(), load_audio(self.audio))
            log.warning("no ffmpeg here: %s has no sound (MPEG-4 video by OpenCV); its sound is %s — "
                        "mux them where ffmpeg exists: ffmpeg -i %s -i %s -c:v libx264 -c:a aac out.mp4",
                        self.path, self.sound_path(), self.path, self.sound_path())
        os.replace(self._temporary, self.path)
        return self.path

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.release()
        self._remove_temporary()



def open_video_writer(path, width: int, height: int, audio=None, **options):
    """The mp4 writer this machine can run: FFmpeg's H.264 + AAC, else OpenCV's (see OpenCVVideoWriter)."""
    if ffmpeg_available():
        return VideoWriter(path, width, height, audio=audio, **options)
    return OpenCVVideoWriter(path, width, height, audio=audio, **options)
