"""One clock for a session's video and audio: where frame n sits in time, and its timestamps.

Both tracks count from the same start time (the moment the first of them asks
for media). Video frame n (40 ms at 25 fps) is due at start + n / 25 s and
carries pts n x 3600 on the 90 kHz RTP video clock; audio frame k (20 ms,
320 samples at 16 kHz) is due at start + k / 50 s and carries pts k x 320.
Audio frames 2n and 2n + 1 are the sound of video frame n (slot n), so a
receiver that lines the tracks up by their sender reports, as browsers do,
shows each mouth with its own sound. Due times are computed from the start
and the index, never by adding up sleeps, so nothing accumulates: after ten
minutes frame 15000 is due exactly 600 s after the start.
"""
import fractions
import math
import time
from typing import Callable, Optional

from data_utils.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

VIDEO_CLOCK_RATE = 90000                            # RTP's video clock
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
VIDEO_PTS_PER_FRAME = VIDEO_CLOCK_RATE // FPS       # 3600
AUDIO_FRAMES_PER_SLOT = 2                           # WebRTC audio travels in 20 ms packets
AUDIO_SAMPLES_PER_FRAME = SAMPLES_PER_FRAME // AUDIO_FRAMES_PER_SLOT   # 320
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
AUDIO_FRAME_SECONDS = AUDIO_SAMPLES_PER_FRAME / SAMPLE_RATE           # 0.02


class MediaClock:
    """Due times and timestamps of one session's slots (``now``: seconds, monotonic)."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self.now = now
        self.start: Optional[float] = None

    def begin(self) -> float:
        """The start time, fixed by the first call."""
        if self.start is None:
            self.start = self.now()
        return self.start

    @property
    def started(self) -> bool:
        return self.start is not None

    def video_due(self, frame: int) -> float:
        return self.begin() + frame / FPS

    def audio_due(self, audio_frame: int) -> float:
        return self.begin() + audio_frame * AUDIO_FRAME_SECONDS

    def current_slot(self) -> int:
        """The slot (video frame) whose 40 ms contain now."""
        return max(0, math.floor((self.now() - self.begin()) * FPS))

    @staticmethod
    def video_pts(frame: int) -> int:
        return frame * VIDEO_PTS_PER_FRAME

    @staticmethod
    def audio_pts(audio_frame: int) -> int:
        return audio_frame * AUDIO_SAMPLES_PER_FRAME

    @staticmethod
    def slot_of_audio_frame(audio_frame: int) -> int:
        return audio_frame // AUDIO_FRAMES_PER_SLOT
