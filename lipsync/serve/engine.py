"""The one loaded model, shared by every session: a worker thread renders ahead in batches.

Sessions queue audio (lipsync/serve/utterance.py); the worker goes round the
sessions and gives each, in turn, one batch of audio (batch_size x 40 ms) to
its utterance's RenderStream (lipsync/render/stream.py), as long as fewer than
the queue limit of its frames wait to be shown. So the model always works on
whole batches, no session starves another, and memory stays at the queue
limits. Idle sessions cost the model nothing: the idle face is made once
(lipsync/serve/idle.py). The worker measures how many frames per second it
renders, which decides how long a file waits before it starts playing and
what the log says when the machine cannot keep 25 fps.
"""
import logging
import secrets
import threading
import time
from typing import Dict, List

from data_utils.timebase import FPS, SAMPLES_PER_FRAME
from lipsync.core.errors import UserError
from lipsync.serve.idle import IdleLoop, mouth_region
from lipsync.serve.session import Session
from lipsync.serve.utterance import Utterance

log = logging.getLogger(__name__)

WORKER_IDLE_WAIT_SECONDS = 0.05   # the worker re-checks this often even when nobody wakes it
RATE_SMOOTHING = 0.2              # weight of the newest measurement in the frames/s average
SESSION_ID_BYTES = 9              # 12 URL-safe characters


class SessionLimitReached(Exception):
    """All --max_sessions sessions are open (the server answers 503)."""


class Engine:
    """Sessions plus the render worker. ``open_session``/``close_session`` on the event loop."""

    def __init__(self, renderer, *, max_sessions: int, queue_seconds: float, idle_frames: int):
        self.renderer = renderer
        self.max_sessions = int(max_sessions)
        self.queue_frames = max(renderer.options.batch_size, int(round(queue_seconds * FPS)))
        self.preroll_frames = int(renderer.options.batch_size)
        self.piece_samples = int(renderer.options.batch_size) * SAMPLES_PER_FRAME
        self.idle = IdleLoop(renderer, idle_frames)
        self.mouth_region = mouth_region(renderer.boxes, renderer.frame_size)
        self.sessions: Dict[str, Session] = {}
        self.render_fps = float(FPS)       # optimistic until measured
        self.frames_rendered = 0
        self.busy_seconds = 0.0            # time the worker spent rendering
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._turn = 0
        self._unmeasured_seconds = 0.0     # rendering time whose frames have not come out yet
        self._worker = threading.Thread(target=self._run, name="render-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ sessions

    def open_session(self) -> Session:
        if len(self.sessions) >= self.max_sessions:
            raise SessionLimitReached(f"all {self.max_sessions} sessions are in use — close one "
                                      "(DELETE /sessions/ID) or start the server with a larger --max_sessions")
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        session = Session(session_id, self.idle, self.renderer.frame_count, queue_frames=self.queue_frames,
                          preroll_frames=self.preroll_frames, render_rate=self.rate_per_speaking_session,
                          wake_worker=self._wake.set)
        self.sessions[session_id] = session
        log.info("session %s opened (%d of %d)", session_id, len(self.sessions), self.max_sessions)
        return session

    def session(self, session_id: str) -> Session:
        """The open session ``session_id``; KeyError when there is none."""
        return self.sessions[session_id]

    def close_session(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        session.close()
        log.info("session %s closed (%d open)", session_id, len(self.sessions))
        return True

    def rate_per_speaking_session(self) -> float:
        """Frames/s the worker can give one session while the others that speak get theirs."""
        speaking = sum(1 for session in list(self.sessions.values()) if session.queued)
        return self.render_fps / max(1, speaking)

    # ------------------------------------------------------------------ the worker

    def _jobs(self) -> List[Utterance]:
        sessions = list(self.sessions.values())
        if not sessions:
            return []
        self._turn = (self._turn + 1) % len(sessions)
        ordered = sessions[self._turn:] + sessions[:self._turn]
        jobs = []
        for session in ordered:
            utterance = session.next_render_job()
            if utterance is not None:
                if utterance.stream is None:
                    utterance.start_frame = session.start_frame_for(utterance)
                jobs.append(utterance)
        return jobs

    def _run(self) -> None:
        while not self._stop.is_set():
            jobs = self._jobs()
            if not jobs:
                self._wake.wait(WORKER_IDLE_WAIT_SECONDS)
                self._wake.clear()
                continue
            for utterance in jobs:          # one batch each, then look again
                self._render_step(utterance)

    def _render_step(self, utterance: Utterance) -> None:
        started = time.perf_counter()
        try:
            if utterance.stream is None:
                utterance.stream = self.renderer.stream(utterance.start_frame)
            piece = utterance.take_piece(self.piece_samples)
            if piece is not None:
                frames = list(utterance.stream.push(piece))
                final = False
            elif utterance.input_drained:
                frames = list(utterance.stream.finish())
                final = True
            else:
                return
            utterance.deliver(frames, final)
        except UserError as error:
            utterance.fail(str(error))
            return
        except Exception as error:                      # a bug: keep serving the other sessions
            log.exception("rendering utterance %d failed", utterance.number)
            utterance.fail(f"rendering failed ({error.__class__.__name__}: {error})")
            return
        seconds = time.perf_counter() - started
        self.busy_seconds += seconds
        self.frames_rendered += len(frames)
        # The first pushes of a stream only compute features (its look-ahead): their time counts
        # towards the frames that follow.
        self._unmeasured_seconds += seconds
        if frames and self._unmeasured_seconds > 0:
            measured = len(frames) / self._unmeasured_seconds
            self.render_fps += RATE_SMOOTHING * (measured - self.render_fps)
            self._unmeasured_seconds = 0.0

    def close(self) -> None:
        for session_id in list(self.sessions):
            self.close_session(session_id)
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=30)
