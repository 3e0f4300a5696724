"""The two WebRTC tracks of a session (aiortc): 25 fps video and 20 ms audio from one clock.

Each ``recv`` sleeps until its frame is due on the session's MediaClock (the
wall clock, counted from one start time) and then reads the session's slot
for that moment, so both tracks are paced by the wall clock against the same
start and carry the same slot at the same timestamp. A video track that falls
more than a frame behind (a slow encoder) skips to the current slot: its
timestamps say which slot each frame is, so nothing shifts. The audio track
never skips: the Opus encoder numbers audio by samples sent, so every 20 ms
must be sent for its timestamps to stay on the wall clock; it catches up by
sending the missed frames at once.
"""
import asyncio

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from data_utils.timebase import SAMPLE_RATE
from lipsync.serve.media_clock import (AUDIO_FRAMES_PER_SLOT, AUDIO_SAMPLES_PER_FRAME, AUDIO_TIME_BASE,
                                       VIDEO_TIME_BASE, MediaClock)

LATE_VIDEO_FRAMES = 1            # further behind than this, the video track skips to the current slot


class SlotVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, session):
        super().__init__()
        self.session = session
        self._next = 0

    async def recv(self) -> VideoFrame:
        if self.readyState != "live" or self.session.closed:
            raise MediaStreamError
        clock: MediaClock = self.session.clock
        index = self._next
        delay = clock.video_due(index) - clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        elif index > 0 and clock.current_slot() - index > LATE_VIDEO_FRAMES:
            index = clock.current_slot()      # (frame 0 is always sent: it anchors the timestamps)
        slot = self.session.slot(index)
        frame = VideoFrame.from_ndarray(slot.image, format="bgr24")
        frame.pts = MediaClock.video_pts(index)
        frame.time_base = VIDEO_TIME_BASE
        self._next = index + 1
        self.session.on_video_sent(slot)
        return frame


class SlotAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, session):
        super().__init__()
        self.session = session
        self._next = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live" or self.session.closed:
            raise MediaStreamError
        clock: MediaClock = self.session.clock
        index = self._next
        delay = clock.audio_due(index) - clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        slot = self.session.slot(MediaClock.slot_of_audio_frame(index))
        half = index % AUDIO_FRAMES_PER_SLOT
        pcm = slot.pcm16[half * AUDIO_SAMPLES_PER_FRAME:(half + 1) * AUDIO_SAMPLES_PER_FRAME]
        frame = AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES_PER_FRAME)
        frame.planes[0].update(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
        frame.sample_rate = SAMPLE_RATE
        frame.pts = MediaClock.audio_pts(index)
        frame.time_base = AUDIO_TIME_BASE
        self._next = index + 1
        return frame
