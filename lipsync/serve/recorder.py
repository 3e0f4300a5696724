"""A session's program (every slot's frame and sound, as sent) recorded to an mp4.

The picture streams into lipsync/render/video_writer.VideoWriter (H.264) as it
is decided and the sound into a 16-bit wav beside it, both on a thread of
their own so the event loop never waits for the encoder; ``finish`` muxes the
two into ``path`` (AAC audio) and only then does the mp4 appear. The
recording is the server's side of the session: 25 fps, no network losses,
repeated frames where rendering fell behind.
"""
import logging
import os
import queue
import tempfile
import threading
import wave
from pathlib import Path
from typing import Optional

import numpy as np

from data_utils.ffmpeg import run_ffmpeg
from data_utils.timebase import FPS, SAMPLE_RATE
from lipsync.core.atomic import atomic_path, ensure_folder
from lipsync.core.errors import UserError
from lipsync.render.video_writer import AUDIO_BITRATE, AUDIO_CODEC, VideoWriter

log = logging.getLogger(__name__)

QUEUED_SLOTS = 250               # 10 s of slots waiting for the encoder before the recording gives up
PCM_BYTES = 2                    # 16-bit samples


class Recorder:
    """``write(frame, pcm16)`` once per slot on the event loop; ``finish()`` -> the mp4's path."""

    def __init__(self, path, width: int, height: int):
        self.path = Path(path)
        ensure_folder(self.path.parent, "--record_dir")
        self.slots = 0
        self.failed: Optional[str] = None
        self._scratch = Path(tempfile.mkdtemp(prefix=".recording-", dir=self.path.parent))
        self._video = VideoWriter(self._scratch / "video.mp4", width, height)
        self._audio = wave.open(str(self._scratch / "audio.wav"), "wb")
        self._audio.setnchannels(1)
        self._audio.setsampwidth(PCM_BYTES)
        self._audio.setframerate(SAMPLE_RATE)
        self._queue: "queue.Queue" = queue.Queue(maxsize=QUEUED_SLOTS)
        self._thread = threading.Thread(target=self._write, name="recorder", daemon=True)
        self._thread.start()

    def write(self, frame: np.ndarray, pcm16: np.ndarray) -> bool:
        """Queue one slot; False (and the recording is abandoned) when the encoder fell 10 s behind."""
        if self.failed:
            return False
        try:
            self._queue.put_nowait((frame, pcm16))
        except queue.Full:
            self.failed = f"the encoder fell more than {QUEUED_SLOTS} frames behind"
            log.warning("recording %s stopped: %s", self.path, self.failed)
            return False
        self.slots += 1
        return True

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.failed:
                continue
            frame, pcm16 = item
            try:
                self._video.write(frame)
                self._audio.writeframes(np.asarray(pcm16, "<i2").tobytes())
            except (UserError, OSError, ValueError) as error:
                self.failed = str(error)

    def finish(self) -> Path:
        """Stop, mux picture and sound into ``path``; a UserError when nothing usable was recorded."""
        self._queue.put(None)
        self._thread.join()
        self._audio.close()
        try:
            if self.failed:
                self._video.abort()
                raise UserError(f"the recording {self.path} failed: {self.failed}")
            video = self._video.close()
            with atomic_path(self.path) as temporary:
                run_ffmpeg(["-i", str(video), "-i", str(self._scratch / "audio.wav"), "-map", "0:v:0",
                            "-map", "1:a:0", "-c:v", "copy", "-c:a", AUDIO_CODEC, "-b:a", AUDIO_BITRATE,
                            "-movflags", "+faststart", "-f", "mp4", str(temporary)], "mux the recording", self.path)
        finally:
            self._remove_scratch()
        log.info("recorded %s: %d frames (%.1f s)", self.path, self.slots, self.slots / FPS)
        return self.path

    def abort(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._audio.close()
        self._video.abort()
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        for child in self._scratch.glob("*"):
            child.unlink()
        os.rmdir(self._scratch)
