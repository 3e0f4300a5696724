"""One viewer: its queue of utterances, what each 40 ms slot shows and sounds like,
interrupt, speaking events and recording.

Slots are decided once each, in order, whichever track asks first; the video
track and the audio track both read the same decision, so a slot's picture and
its sound always go out together (lipsync/serve/media_clock.py). A slot is

- ``speaking``: the next rendered frame of the playing utterance and its 40 ms of sound;
- ``waiting``: the utterance has started but its next frame is not rendered yet
  (the machine is slower than 25 fps): the last picture again and 40 ms of
  silence. The speech resumes where it was, so mouth and sound stay together
  and the delay shows as a pause instead of drift; the log says so;
- ``idle``: nobody speaks: the idle loop's next frame (the person's own closed
  mouth, lipsync/serve/idle.py) and silence. The model does not run.

An utterance starts once enough of it is rendered (Utterance.ready_to_start);
until then the slots stay idle, and that wait is the latency from its first
audio byte to its first speaking frame, reported in ``speaking_started``.
``interrupt`` drops everything queued: the very next slot is idle again.
"""
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, Optional

import numpy as np

from data_utils.timebase import FPS, SAMPLES_PER_FRAME
from lipsync.render.frames import pingpong_index
from lipsync.render.video_writer import PCM16_SCALE
from lipsync.serve.events import EventChannel
from lipsync.serve.idle import IdleLoop
from lipsync.serve.media_clock import MediaClock
from lipsync.serve.recorder import Recorder
from lipsync.serve.utterance import Utterance

log = logging.getLogger(__name__)

IDLE, SPEAKING, WAITING = "idle", "speaking", "waiting"
SILENCE = np.zeros(SAMPLES_PER_FRAME, np.int16)
SILENCE.flags.writeable = False
KEPT_SLOTS = FPS                 # decided slots kept for the track that is behind (1 s of frames in memory)
LAG_REPORT_SECONDS = 5.0         # at most one "cannot keep 25 fps" line per session this often
RATE_WINDOW_SECONDS = 2.0        # frames/s sent, over this window


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    return np.round(np.clip(samples, -1.0, 1.0) * PCM16_SCALE).astype(np.int16)


@dataclass(frozen=True)
class Slot:
    index: int
    image: np.ndarray            # (H, W, 3) BGR uint8, the recording's size
    pcm16: np.ndarray            # (640,) int16: the slot's 40 ms of sound at 16 kHz
    state: str                   # IDLE, SPEAKING or WAITING
    utterance: Optional[int]     # the utterance it belongs to (None when idle)


class Session:
    """One viewer's program; see the module docstring. Runs on the event loop, except
    ``next_render_job``/``start_frame_for``, which the engine's worker calls."""

    def __init__(self, session_id: str, idle: IdleLoop, recording_frames: int, *, queue_frames: int,
                 preroll_frames: int, render_rate: Callable[[], float], wake_worker: Callable[[], None]):
        self.id = session_id
        self.idle = idle
        self.recording_frames = recording_frames
        self.queue_frames = queue_frames
        self.preroll_frames = preroll_frames
        self.render_rate = render_rate       # frames/s the worker can give this session now
        self.wake_worker = wake_worker
        self.clock = MediaClock()
        self.events = EventChannel()
        self.closed = False
        self._utterances: Deque[Utterance] = deque()
        self._numbers = 0
        self._playing: Optional[Utterance] = None
        self._slots: Dict[int, Slot] = {}
        self._last_decided = -1
        self._idle_phase = 0
        self._last_image = idle.frame(0)
        self._interrupt_requested: Optional[float] = None
        self.recorder: Optional[Recorder] = None
        # Figures for the status line and the benchmark.
        self.frames_sent = 0
        self.waiting_slots = 0
        self.speaking_slots = 0
        self.last_latency_ms: Optional[float] = None
        self.last_interrupt_ms: Optional[float] = None
        self._sent_times: Deque[float] = deque()
        self._lag_window_start = time.monotonic()
        self._lag_window_waiting = 0

    # ------------------------------------------------------------------ speech in

    def _new_utterance(self, source: str, first_audio_time: float) -> Utterance:
        self._numbers += 1
        utterance = Utterance(self._numbers, source, first_audio_time, self.queue_frames, self.preroll_frames)
        self._utterances.append(utterance)
        return utterance

    def speak(self, samples: np.ndarray, source: str, first_audio_time: float) -> Utterance:
        """Queue a whole audio (16 kHz mono float32) to be spoken after what is queued already."""
        utterance = self._new_utterance(source, first_audio_time)
        utterance.add_audio(samples)
        utterance.finish_input()
        self.wake_worker()
        return utterance

    def begin_stream(self, first_audio_time: float) -> Utterance:
        """An utterance whose audio follows in chunks (``add_audio``), until ``finish_input``."""
        utterance = self._new_utterance("stream", first_audio_time)
        self.wake_worker()
        return utterance

    def interrupt(self, requested_at: Optional[float] = None) -> int:
        """Drop the playing and queued utterances; the next slot is idle. Returns how many were dropped."""
        requested_at = time.monotonic() if requested_at is None else requested_at
        dropped = list(self._utterances)
        self._utterances.clear()
        for utterance in dropped:
            utterance.cancel()
            if utterance is self._playing:
                self.events.publish("speaking_ended", utterance=utterance.number, reason="interrupted",
                                    frames=utterance.frames_shown)
        self._leave(self._playing)
        if dropped:
            self._interrupt_requested = requested_at
        return len(dropped)

    @property
    def queued(self) -> int:
        return len(self._utterances)

    # ------------------------------------------------------------------ rendering (the engine's worker)

    def next_render_job(self) -> Optional[Utterance]:
        """The utterance to render next: the first one not fully rendered, if it wants work."""
        for utterance in list(self._utterances):
            if utterance.cancelled:
                continue
            if not utterance.render_finished:
                return utterance if utterance.wants_rendering() else None
        return None

    def start_frame_for(self, utterance: Utterance) -> int:
        """Ping-pong position its frame 0 shows: where the previous utterance ends, or the idle face now."""
        previous = None
        for candidate in list(self._utterances):
            if candidate is utterance:
                break
            if not candidate.cancelled:
                previous = candidate
        if previous is None:
            return self.idle.recording_frame(self._idle_phase)
        return pingpong_index(previous.start_frame + previous.frames_rendered, self.recording_frames)

    # ------------------------------------------------------------------ slots (the tracks)

    def slot(self, index: int) -> Slot:
        """Slot ``index``, deciding it (and any before it) on first request."""
        while self._last_decided < index:
            self._last_decided += 1
            decided = self._decide(self._last_decided)
            self._slots[decided.index] = decided
            self._slots.pop(decided.index - KEPT_SLOTS, None)
            if self.recorder is not None and not self.recorder.write(decided.image, decided.pcm16):
                self.events.publish("recording", recording=False, error=self.recorder.failed)
                self.recorder.abort()
                self.recorder = None
        found = self._slots.get(index)
        if found is None:                     # a track more than KEPT_SLOTS behind: it gets silence and rest
            return Slot(index, self._last_image, SILENCE, IDLE, None)
        return found

    def _decide(self, index: int) -> Slot:
        utterance = self._playing or self._start_next()
        if utterance is not None:
            item = utterance.pop()
            if item is not None:
                frame, sound = item
                self._last_image = frame
                self.speaking_slots += 1
                return Slot(index, frame, to_pcm16(sound), SPEAKING, utterance.number)
            if not utterance.done:
                self._note_waiting()
                return Slot(index, self._last_image, SILENCE, WAITING, utterance.number)
            self._finish(utterance)
        image = self.idle.frame(self._idle_phase)
        self._idle_phase += 1
        self._last_image = image
        return Slot(index, image, SILENCE, IDLE, None)

    def _start_next(self) -> Optional[Utterance]:
        while self._utterances:
            head = self._utterances[0]
            if head.cancelled or (head.render_finished and head.ready_frames == 0):
                self._utterances.popleft()
                if head.error:
                    self.events.publish("error", utterance=head.number, error=head.error)
                continue
            if head.ready_to_start(self.render_rate()):
                self._playing = head
                return head
            return None
        return None

    def _finish(self, utterance: Utterance) -> None:
        reason = "error" if utterance.error else "finished"
        data = {"error": utterance.error} if utterance.error else {}
        self.events.publish("speaking_ended", utterance=utterance.number, reason=reason,
                            frames=utterance.frames_shown, **data)
        if self._utterances and self._utterances[0] is utterance:
            self._utterances.popleft()
        self._leave(utterance)

    def _leave(self, utterance: Optional[Utterance]) -> None:
        """Back to the idle loop, from the recording frame the speech ended on."""
        if utterance is not None and utterance.frames_shown:
            last = pingpong_index(utterance.start_frame + utterance.frames_shown - 1, self.recording_frames)
            self._idle_phase = self.idle.phase_near(last) + 1
        self._playing = None
        self.wake_worker()

    def _note_waiting(self) -> None:
        self.waiting_slots += 1
        self._lag_window_waiting += 1
        now = time.monotonic()
        if now - self._lag_window_start >= LAG_REPORT_SECONDS:
            share = self._lag_window_waiting / ((now - self._lag_window_start) * FPS)
            log.warning("session %s: this machine cannot render 25 frames/s for it (%.0f%% of the last %.0f s "
                        "were repeated frames; rendering gives it %.1f frames/s) — speech pauses with the "
                        "picture, so sound and mouth stay in sync", self.id, 100 * share,
                        now - self._lag_window_start, self.render_rate())
            self._lag_window_start, self._lag_window_waiting = now, 0

    def on_video_sent(self, slot: Slot) -> None:
        """The video track sent ``slot``: latency bookkeeping and the frames/s figure."""
        now = time.monotonic()
        self.frames_sent += 1
        self._sent_times.append(now)
        while self._sent_times and self._sent_times[0] < now - RATE_WINDOW_SECONDS:
            self._sent_times.popleft()
        if slot.state == SPEAKING and self._playing is not None and self._playing.number == slot.utterance \
                and self._playing.started_at is None:
            self._playing.started_at = now
            self.last_latency_ms = round(1000 * (now - self._playing.first_audio_time), 1)
            self.events.publish("speaking_started", utterance=slot.utterance, latency_ms=self.last_latency_ms,
                                source=self._playing.source)
        if slot.state == IDLE and self._interrupt_requested is not None:
            self.last_interrupt_ms = round(1000 * (now - self._interrupt_requested), 1)
            self._interrupt_requested = None
            self.events.publish("interrupted", latency_ms=self.last_interrupt_ms)

    # ------------------------------------------------------------------ status, recording, close

    @property
    def state(self) -> str:
        if self._playing is None:
            return IDLE
        return SPEAKING if self._playing.ready_frames else WAITING

    def status(self) -> Dict:
        playing = self._playing
        sent_fps = (len(self._sent_times) - 1) / (self._sent_times[-1] - self._sent_times[0]) \
            if len(self._sent_times) > 1 and self._sent_times[-1] > self._sent_times[0] else 0.0
        return {"session": self.id, "state": self.state, "queued_utterances": len(self._utterances),
                "queue_frames": playing.ready_frames if playing else 0, "sent_fps": round(sent_fps, 2),
                "render_fps": round(self.render_rate(), 2), "frames_sent": self.frames_sent,
                "speaking_frames": self.speaking_slots, "repeated_frames": self.waiting_slots,
                "latency_ms": self.last_latency_ms, "interrupt_ms": self.last_interrupt_ms,
                "recording": self.recorder is not None}

    def start_recording(self, path, width: int, height: int) -> None:
        if self.recorder is None:
            self.recorder = Recorder(path, width, height)
            self.events.publish("recording", recording=True)

    def stop_recording(self):
        """The finished mp4's path (None when nothing was being recorded)."""
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return None
        path = recorder.finish()
        self.events.publish("recording", recording=False, path=str(path))
        return path

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for utterance in self._utterances:
            utterance.cancel()
        self._utterances.clear()
        self._playing = None
        if self.recorder is not None:
            self.recorder.abort()
            self.recorder = None
        self.events.close()
