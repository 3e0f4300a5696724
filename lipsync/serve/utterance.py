"""One piece of speech of one session: audio in, rendered frames with their own sound out.

Audio arrives whole (an uploaded file, a text-to-speech result) or in chunks
(a WebSocket stream) on the server's event loop; the engine's worker thread
feeds it to a RenderStream in pieces of one batch and hands back the frames;
the session shows them, one per 40 ms slot. Frame j of an utterance carries
samples j x 640 .. (j + 1) x 640 of its audio (the last frame is padded with
silence), so picture and sound of a slot always belong together.
The worker renders only while fewer than ``queue_frames`` frames wait: the
model runs ahead of playback, but never more than that.
"""
import threading
from collections import deque
from typing import Deque, List, Optional, Tuple

import numpy as np

from data_utils.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, frame_count_for_samples

SOURCES = ("file", "stream", "text")


class Utterance:
    """Thread-safe: ``add_audio``/``finish_input`` on the event loop, ``take_piece``/``deliver``
    in the engine's worker, ``ready_to_start``/``pop`` in the session's slot decisions."""

    def __init__(self, number: int, source: str, first_audio_time: float, queue_frames: int,
                 preroll_frames: int):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
        self.number = number
        self.source = source
        self.first_audio_time = first_audio_time     # monotonic seconds: the first audio byte arrived
        self.queue_frames = max(1, int(queue_frames))
        self.preroll_frames = max(1, int(preroll_frames))
        self._lock = threading.Lock()
        self._pending: Deque[np.ndarray] = deque()   # audio not yet given to the renderer
        self._unpaired = np.zeros(0, np.float32)     # audio given to the renderer, not yet on a frame
        self._ready: Deque[Tuple[np.ndarray, np.ndarray]] = deque()   # (frame BGR, its 640 samples)
        self.samples_in = 0
        self.input_finished = False
        self.render_finished = False
        self.cancelled = False
        self.error: Optional[str] = None
        self.frames_rendered = 0
        self.frames_shown = 0
        self.started_at: Optional[float] = None      # monotonic seconds: its first frame was sent
        self.stream = None                           # the RenderStream; the engine's worker owns it
        self.start_frame = 0                         # recording frame (ping-pong position) of frame 0

    # ------------------------------------------------------------------ audio in (event loop)

    def add_audio(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        with self._lock:
            if self.input_finished:
                raise RuntimeError("audio added after finish_input()")
            if samples.size:
                self._pending.append(samples)
                self.samples_in += samples.size

    def finish_input(self) -> None:
        with self._lock:
            self.input_finished = True

    @property
    def total_frames(self) -> Optional[int]:
        """Frames of the whole utterance, once its audio has ended."""
        return frame_count_for_samples(self.samples_in) if self.input_finished else None

    @property
    def seconds(self) -> float:
        return self.samples_in / SAMPLE_RATE

    # ------------------------------------------------------------------ rendering (worker)

    def wants_rendering(self) -> bool:
        """Audio is waiting (or has ended) and the queue has room."""
        with self._lock:
            if self.cancelled or self.render_finished or len(self._ready) >= self.queue_frames:
                return False
            return bool(self._pending) or self.input_finished

    def take_piece(self, max_samples: int) -> Optional[np.ndarray]:
        """Up to ``max_samples`` of the waiting audio (None when none waits); it joins the unpaired audio."""
        with self._lock:
            if not self._pending:
                return None
            taken, count = [], 0
            while self._pending and count < max_samples:
                head = self._pending.popleft()
                room = max_samples - count
                if head.size > room:
                    self._pending.appendleft(head[room:])
                    head = head[:room]
                taken.append(head)
                count += head.size
            piece = np.concatenate(taken)
            self._unpaired = np.concatenate([self._unpaired, piece])
            return piece

    @property
    def input_drained(self) -> bool:
        """Every sample has been given to the renderer and no more will come."""
        with self._lock:
            return self.input_finished and not self._pending

    def deliver(self, frames: List[np.ndarray], final: bool) -> None:
        """Rendered ``frames`` (in order), each paired with its 640 samples; ``final``: the last of them."""
        with self._lock:
            needed = len(frames) * SAMPLES_PER_FRAME
            if self._unpaired.size < needed:         # the last frame's partial 40 ms: pad with silence
                self._unpaired = np.concatenate([self._unpaired,
                                                 np.zeros(needed - self._unpaired.size, np.float32)])
            for index, frame in enumerate(frames):
                sound = self._unpaired[index * SAMPLES_PER_FRAME:(index + 1) * SAMPLES_PER_FRAME]
                self._ready.append((frame, sound))
            self._unpaired = self._unpaired[needed:]
            self.frames_rendered += len(frames)
            if final:
                self.render_finished = True

    def fail(self, message: str) -> None:
        with self._lock:
            self.error = message
            self.render_finished = True

    # ------------------------------------------------------------------ playback (event loop)

    @property
    def ready_frames(self) -> int:
        return len(self._ready)

    def ready_to_start(self, render_fps: float) -> bool:
        """Enough is rendered that playback can begin.

        A stream starts after ``preroll_frames``. When the whole audio is known,
        playback waits until the frames ready now plus those the renderer makes
        (at ``render_fps``) while they play cover the rest, so a slow machine
        pays once in latency instead of stalling mid-word, as far as the
        queue allows.
        """
        with self._lock:
            if self.cancelled:
                return False
            ready = len(self._ready)
            if self.render_finished:
                return ready > 0
            if ready >= self.queue_frames:
                return True
            if ready < self.preroll_frames:
                return False
            if not self.input_finished:
                return True
            remaining = frame_count_for_samples(self.samples_in) - self.frames_shown
            shortfall = remaining * max(0.0, 1.0 - render_fps / FPS)
            return ready >= shortfall

    def pop(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        with self._lock:
            if not self._ready:
                return None
            self.frames_shown += 1
            return self._ready.popleft()

    @property
    def done(self) -> bool:
        """Everything was rendered and shown (or it failed or was interrupted)."""
        with self._lock:
            return self.cancelled or (self.render_finished and not self._ready)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            self._ready.clear()
            self._pending.clear()
