"""Pauses in the driving audio, frame by frame, and how strongly each output
frame holds the person's closed mouth (the silence hold of issue 7).

Voice activity (``--vad``):

- ``silero`` (default): the Silero VAD network (MIT licence). The silero-vad
  wheel ships the model, so nothing is downloaded. It runs through onnxruntime
  on the CPU, on 32 ms chunks taken in order from sample 0, with one recurrent
  state per audio stream. It tells speech from noise, so it keeps working on
  real recordings with room noise or hiss.
- ``energy``: a speech-band (100-4000 Hz) energy gate. The noise floor is
  the running minimum of the last 3 s of the audio itself, and the gate uses
  hysteresis (it opens 6 dB above the floor and closes below 3 dB). It needs no
  model and is exact on clean audio (TTS, studio speech). Under background
  noise it cuts into quiet speech, so it is only the fallback.

On the 40 s fixture with phoneme ground truth (benchmarks/bench_mouth_control.py
--fixture), both label about 97 % of frames correctly on clean speech. With
white noise 20 dB or pink noise 10 dB below the speech, Silero still labels
96 % / 95 % correctly and never holds the mouth during speech; the energy gate
drops to 91 % / 82 %, holds the mouth for up to 22 speech frames and misses
half of the pauses.

A video frame i stands for the 40 ms centred on its instant i / 25 s (the
window lipsync.evaluate.metrics.audio_energy uses too). Silero calls the frame
speech when the mean probability of the chunks that overlap this window is
at least 0.5. The gate calls it speech when at least half of its 10 ms hops
inside the window are open.

Hold weights go from 0 (the model's mouth) to 1 (the person's closed mouth).
A run of non-speech frames is a pause when it lasts at least 0.2 s. Shorter
gaps are stop closures and breaths inside speech, and the mouth keeps moving
through them. Inside a pause, the
hold starts one frame after the voice stops (the last sound still shapes the
mouth). It lets go two frames before the voice returns, because the mouth
opens about 80 ms ahead of the sound. It ramps up and down along a raised
cosine over four frames, so nothing pops.

Streaming: both detectors work on a fixed grid from sample 0, and a frame's
weight needs only LOOK_AHEAD frames of decisions after it. So audio fed in
pieces of any size gives the same weights as the whole file, and the hold adds
no latency to the render stream (its own window already looks 8 frames ahead).
"""
import importlib.util
import logging
import warnings
from collections import deque
from typing import List, Optional, Tuple

import numpy as np
import torch

from data_utils.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, frame_count_for_samples
from lipsync.core.errors import UserError

log = logging.getLogger(__name__)

VAD_CHOICES = ("silero", "energy")     # None: silero, or the energy gate when silero-vad is not installed

# A frame's audio: the 40 ms centred on its instant.
FRAME_HALF_WINDOW = SAMPLES_PER_FRAME // 2

# --- Silero -------------------------------------------------------------------------
SILERO_CHUNK = 512                  # samples per network step at 16 kHz (32 ms), fixed by the model
SILERO_SPEECH_PROBABILITY = 0.5     # the model authors' default threshold

# --- Energy gate -----------------------------------------------------------------
GATE_HOP = 160                      # 10 ms
GATE_WINDOW = 400                   # 25 ms Hann window centred on each hop's instant
GATE_BAND_HZ = (100.0, 4000.0)      # voice fundamentals and formants; hum and hiss stay out
GATE_OPEN_DB = 6.0                  # above the noise floor: the gate opens
GATE_CLOSE_DB = 3.0                 # below this it closes again (hysteresis)
GATE_FLOOR_SECONDS = 3.0            # the noise floor is the quietest hop of this much audio
# Until that much audio has been heard, the floor cannot be above this: audio
# that starts with speech must not take the speech for the noise floor.
GATE_PRIOR_FLOOR_DB = -70.0
GATE_ABSOLUTE_FLOOR_DB = -75.0      # digital silence: the floor never goes below this (dB full scale)
GATE_POWER_EPSILON = 1e-12

# --- Pauses and hold weights (frames at 25 fps) -------------------------------------
MIN_PAUSE_FRAMES = 5                # 0.2 s: shorter gaps are inside speech
MIN_SPEECH_FRAMES = 2               # a lone 40 ms "speech" frame in a pause is a click or a breath
HOLD_AFTER_SPEECH_FRAMES = 1        # the last sound still shapes the mouth
RELEASE_BEFORE_SPEECH_FRAMES = 2    # the mouth opens about 80 ms before the voice
RAMP_FRAMES = 4                     # raised-cosine ramp into and out of the hold
# How many frames of decisions around a frame fix its weight (see hold_weights):
# enough to see a whole ramp, a minimum pause and a click on either side.
LOOK_AHEAD_FRAMES = max(RAMP_FRAMES + RELEASE_BEFORE_SPEECH_FRAMES, MIN_PAUSE_FRAMES) + MIN_SPEECH_FRAMES
LOOK_BACK_FRAMES = max(RAMP_FRAMES + HOLD_AFTER_SPEECH_FRAMES, MIN_PAUSE_FRAMES) + MIN_SPEECH_FRAMES


# =============================================================================
# Detectors: values on a fixed grid of units from sample 0
# =============================================================================

def _load_silero():
    """The Silero VAD model (onnxruntime, CPU) from the silero-vad wheel."""
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from silero_vad import load_silero_vad

            return load_silero_vad(onnx=True)
    except ImportError:
        raise UserError("the silence hold's default detector needs the silero-vad package — run: "
                        "pip install -r requirements.txt (or use --vad energy, or --no_silence_hold)") from None
    finally:
        torch.set_num_threads(threads)   # importing silero_vad sets the whole process to one torch thread


def silero_available() -> bool:
    return importlib.util.find_spec("silero_vad") is not None


class SileroDetector:
    """Speech probability of each 512-sample chunk, chunks in order from sample 0."""

    name = "silero"

    def __init__(self):
        self._model = _load_silero()
        self._model.reset_states()
        self._pending = np.zeros(0, np.float32)

    def _run(self, samples: np.ndarray) -> List[float]:
        probabilities = []
        with torch.inference_mode():
            for start in range(0, len(samples) - SILERO_CHUNK + 1, SILERO_CHUNK):
                chunk = torch.from_numpy(np.ascontiguousarray(samples[start:start + SILERO_CHUNK]))
                probabilities.append(float(self._model(chunk, SAMPLE_RATE)))
        return probabilities

    def process(self, samples: np.ndarray) -> List[float]:
        data = np.concatenate([self._pending, samples])
        whole = len(data) - len(data) % SILERO_CHUNK
        self._pending = data[whole:]
        return self._run(data[:whole])

    def flush(self) -> List[float]:
        """The last partial chunk, padded with silence."""
        if not len(self._pending):
            return []
        padded = np.zeros(SILERO_CHUNK, np.float32)
        padded[:len(self._pending)] = self._pending
        self._pending = np.zeros(0, np.float32)
        return self._run(padded)

    @staticmethod
    def frame_units(frame: int) -> Tuple[int, int]:
        """Chunks [first, stop) that overlap frame ``frame``'s 40 ms."""
        low = max(0, frame * SAMPLES_PER_FRAME - FRAME_HALF_WINDOW)
        high = frame * SAMPLES_PER_FRAME + FRAME_HALF_WINDOW
        return low // SILERO_CHUNK, -(-high // SILERO_CHUNK)

    @staticmethod
    def is_speech(values) -> bool:
        return float(np.mean(values)) >= SILERO_SPEECH_PROBABILITY


class EnergyGate:
    """Open (1.0) or closed (0.0) for each 10 ms hop; hop k is centred on sample k * GATE_HOP."""

    name = "energy"

    def __init__(self):
        half = GATE_WINDOW // 2
        self._samples = np.zeros(half, np.float32)       # zeros before sample 0
        self._first_sample = -half                       # absolute index of _samples[0]
        self._next_hop = 0
        self._samples_in = 0
        self._window = np.hanning(GATE_WINDOW).astype(np.float64)
        frequencies = np.fft.rfftfreq(GATE_WINDOW, 1.0 / SAMPLE_RATE)
        self._band = (frequencies >= GATE_BAND_HZ[0]) & (frequencies <= GATE_BAND_HZ[1])
        # Mean square of the band-limited signal: one-sided spectrum, Hann window's energy.
        self._power_scale = 2.0 / (GATE_WINDOW * float(np.sum(self._window ** 2)))
        self._floor_hops = int(GATE_FLOOR_SECONDS * SAMPLE_RATE / GATE_HOP)
        self._recent: deque = deque()                    # (hop, level): increasing levels, for the running minimum
        self._open = False

    def _levels(self, first_hop: int, stop_hop: int) -> np.ndarray:
        """Band level in dB full scale of hops [first_hop, stop_hop)."""
        half = GATE_WINDOW // 2
        starts = np.arange(first_hop, stop_hop) * GATE_HOP - half - self._first_sample
        frames = self._samples[starts[:, None] + np.arange(GATE_WINDOW)[None, :]].astype(np.float64)
        spectrum = np.abs(np.fft.rfft(frames * self._window, axis=1)) ** 2
        power = spectrum[:, self._band].sum(axis=1) * self._power_scale
        return 10.0 * np.log10(power + GATE_POWER_EPSILON)

    def _gate(self, levels: np.ndarray) -> List[float]:
        states = []
        for level in levels:
            hop = self._next_hop
            while self._recent and self._recent[-1][1] >= level:
                self._recent.pop()
            self._recent.append((hop, level))
            while self._recent[0][0] <= hop - self._floor_hops:
                self._recent.popleft()
            floor = self._recent[0][1]
            if hop < self._floor_hops:
                floor = min(floor, GATE_PRIOR_FLOOR_DB)
            floor = max(floor, GATE_ABSOLUTE_FLOOR_DB)
            self._open = level > floor + (GATE_CLOSE_DB if self._open else GATE_OPEN_DB)
            states.append(1.0 if self._open else 0.0)
            self._next_hop += 1
        return states

    def _advance(self, stop_hop: int) -> List[float]:
        if stop_hop <= self._next_hop:
            return []
        states = self._gate(self._levels(self._next_hop, stop_hop))
        # Keep only the samples the next hop's window needs.
        keep_from = self._next_hop * GATE_HOP - GATE_WINDOW // 2 - self._first_sample
        self._samples = self._samples[keep_from:]
        self._first_sample += keep_from
        return states

    def process(self, samples: np.ndarray) -> List[float]:
        self._samples = np.concatenate([self._samples, samples.astype(np.float32)])
        self._samples_in += len(samples)
        # Hop k's window ends at sample k * HOP + WINDOW / 2.
        return self._advance((self._samples_in - GATE_WINDOW // 2) // GATE_HOP + 1
                             if self._samples_in >= GATE_WINDOW // 2 else 0)

    def flush(self) -> List[float]:
        """Hops centred inside the audio whose windows run past its end (padded with silence)."""
        stop_hop = -(-self._samples_in // GATE_HOP)
        self._samples = np.concatenate([self._samples, np.zeros(GATE_WINDOW, np.float32)])
        return self._advance(stop_hop)

    @staticmethod
    def frame_units(frame: int) -> Tuple[int, int]:
        """Hops [first, stop) centred inside frame ``frame``'s 40 ms."""
        low = frame * SAMPLES_PER_FRAME - FRAME_HALF_WINDOW
        high = frame * SAMPLES_PER_FRAME + FRAME_HALF_WINDOW
        return max(0, -(-low // GATE_HOP)), -(-high // GATE_HOP)

    @staticmethod
    def is_speech(values) -> bool:
        return float(np.mean(values)) >= 0.5


def make_detector(vad: Optional[str] = None):
    """A fresh detector (it keeps state across pieces of one audio stream).

    ``None``: Silero when silero-vad is installed, else the energy gate with a warning.
    """
    if vad is None:
        if silero_available():
            return SileroDetector()
        log.warning("silero-vad is not installed: pauses are found with the energy gate "
                    "(pip install silero-vad for noisy audio)")
        return EnergyGate()
    if vad not in VAD_CHOICES:
        raise UserError(f"unknown --vad {vad!r} — choose one of: {', '.join(VAD_CHOICES)}")
    return SileroDetector() if vad == "silero" else EnergyGate()


# =============================================================================
# Frames: speech or not
# =============================================================================

class VoiceActivity:
    """Speech or not for each 25 fps frame of audio that arrives in pieces.

    ``push(samples)`` takes the next 16 kHz mono samples; ``speech`` holds the
    frames decided so far (a frame is decided once the audio its 40 ms needs
    has arrived); ``finish()`` decides the rest.
    """

    def __init__(self, vad: Optional[str] = None):
        self.detector = make_detector(vad)
        self.samples_in = 0
        self.finished = False
        self._values: List[float] = []
        self._speech: List[bool] = []

    @property
    def speech(self) -> np.ndarray:
        return np.asarray(self._speech, dtype=bool)

    def speech_between(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._speech[start:stop], dtype=bool)

    @property
    def decided(self) -> int:
        return len(self._speech)

    def push(self, samples) -> None:
        if self.finished:
            raise RuntimeError("push() after finish()")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples_in += len(samples)
        self._values.extend(self.detector.process(samples))
        self._decide()

    def finish(self) -> None:
        if self.finished:
            return
        self._values.extend(self.detector.flush())
        self.finished = True
        self._decide()

    def _decide(self) -> None:
        total = frame_count_for_samples(self.samples_in) if self.finished else None
        while True:
            frame = len(self._speech)
            first, stop = self.detector.frame_units(frame)
            if self.finished:
                if frame >= total:
                    return
                stop = min(stop, len(self._values))
            elif stop > len(self._values):
                return
            values = self._values[first:stop]
            self._speech.append(bool(values) and self.detector.is_speech(values))


def detect_speech(samples, vad: Optional[str] = None) -> np.ndarray:
    """(frames,) bool: speech in each 25 fps frame of a whole recording."""
    activity = VoiceActivity(vad)
    activity.push(samples)
    activity.finish()
    return activity.speech


# =============================================================================
# Hold weights
# =============================================================================

def _runs(mask: np.ndarray) -> List[Tuple[int, int]]:
    """[start, stop) of every run of True values."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(changes[::2].tolist(), changes[1::2].tolist()))


def ramp(steps: np.ndarray) -> np.ndarray:
    """Raised cosine: the weight ``steps`` frames into a hold (1, 2, ...): 0 -> 1 over RAMP_FRAMES."""
    steps = np.asarray(steps, dtype=np.float64)
    rising = 0.5 - 0.5 * np.cos(np.pi * np.minimum(steps, RAMP_FRAMES + 1) / (RAMP_FRAMES + 1))
    return np.where(steps > RAMP_FRAMES, 1.0, rising)


def hold_weights(speech, starts_at_audio_start: bool = True, ends_at_audio_end: bool = True) -> np.ndarray:
    """(frames,) float32 hold weights for per-frame speech decisions.

    ``speech`` may be a stretch cut out of a longer audio. Then an edge that
    is not the audio's own start/end is open: a run touching it may go on
    beyond it. Frames at least LOOK_BACK_FRAMES / LOOK_AHEAD_FRAMES from such
    edges get exactly the weights the whole audio gives them.
    """
    speech = np.asarray(speech, dtype=bool).copy()
    count = len(speech)
    open_start, open_end = not starts_at_audio_start, not ends_at_audio_end
    for start, stop in _runs(speech):
        cut_off = (start == 0 and open_start) or (stop == count and open_end)
        if stop - start < MIN_SPEECH_FRAMES and not cut_off:
            speech[start:stop] = False           # a click, not a word
    weights = np.zeros(count, np.float64)
    for start, stop in _runs(~speech):
        after_speech, before_speech = start > 0, stop < count
        cut_off = (start == 0 and open_start) or (stop == count and open_end)
        if stop - start < MIN_PAUSE_FRAMES and not cut_off:
            continue                             # a gap inside speech: the mouth moves on
        first = start + (HOLD_AFTER_SPEECH_FRAMES if after_speech else 0)
        last = stop - (RELEASE_BEFORE_SPEECH_FRAMES if before_speech else 0)
        if last <= first:
            continue
        frames = np.arange(first, last)
        rising = frames - first + 1 if after_speech else np.full(len(frames), np.inf)
        falling = last - frames if before_speech else np.full(len(frames), np.inf)
        weights[first:last] = ramp(np.minimum(rising, falling))
    return weights.astype(np.float32)


class SilenceHold:
    """Hold weights of audio that arrives in pieces (one per render stream).

    ``push``/``finish`` feed it; ``ready_frames`` says how many frames have
    a final weight; ``weights(start, stop)`` returns them. Only the speech
    flags (one bool a frame) are kept, not the audio.
    """

    def __init__(self, vad: Optional[str] = None):
        self.activity = VoiceActivity(vad)

    @property
    def detector(self) -> str:
        return self.activity.detector.name

    def push(self, samples) -> None:
        self.activity.push(samples)

    def finish(self) -> None:
        self.activity.finish()

    @property
    def ready_frames(self) -> int:
        if self.activity.finished:
            return self.activity.decided
        return max(0, self.activity.decided - LOOK_AHEAD_FRAMES)

    def weights(self, start: int, stop: int) -> np.ndarray:
        if stop > self.ready_frames:
            raise ValueError(f"hold weights of frames up to {stop} asked for; only {self.ready_frames} are known")
        finished = self.activity.finished
        low = max(0, start - LOOK_BACK_FRAMES)
        high = self.activity.decided if finished else stop + LOOK_AHEAD_FRAMES
        weights = hold_weights(self.activity.speech_between(low, high), starts_at_audio_start=low == 0,
                               ends_at_audio_end=finished)
        return weights[start - low:stop - low]


def silence_hold_weights(samples, vad: Optional[str] = None) -> np.ndarray:
    """(frames,) hold weights of a whole recording (what the render stream computes piece by piece)."""
    return hold_weights(detect_speech(samples, vad))


def describe_pauses(weights: np.ndarray) -> str:
    """'3 pauses, 2.4 s held' for logs."""
    held = np.asarray(weights) > 0
    pauses = len(_runs(held))
    return f"{pauses} pause{'s' if pauses != 1 else ''}, {held.sum() / FPS:.1f} s held"
