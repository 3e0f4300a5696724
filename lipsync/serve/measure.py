"""A/V sync and pacing from what a viewer received (lipsync/serve/client.py records it).

Per video frame the viewer keeps its arrival time, its RTP timestamp and how
much the mouth region differs from the idle face; per 20 ms audio frame its
arrival time, timestamp and loudness. From these:

- ``av_offsets``: for each utterance, when the mouth leaves the idle face minus
  when the sound starts, both on the stream's own timestamps (what a player
  that lines up the tracks by timestamps shows). Within one frame (40 ms)
  means in sync.
- ``lag_series``: arrival time minus media time per track. Paced by the wall
  clock, it stays flat; its robust slope (ms per minute) is the drift, and
  the gap between the audio's and the video's lag must not grow (``soak_summary``).
- ``frame_rate``: video frames per second of arrival.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

VIDEO_CLOCK_RATE = 90000
OPUS_CLOCK_RATE = 48000
SOUND_RMS = 0.01                 # full scale; decoded digital silence stays far below
QUIET_AUDIO_FRAMES = 10          # 200 ms of silence before a sound counts as an onset
IDLE_VIDEO_FRAMES = 5            # 200 ms of idle face before a mouth change counts as an onset
MAX_PAIRING_SECONDS = 0.5        # a mouth onset this far from any sound onset belongs to none


@dataclass
class VideoSample:
    arrival: float               # monotonic seconds
    pts: int                     # 90 kHz
    mouth_change: float          # mean absolute luma difference from the idle face in the mouth region


@dataclass
class AudioSample:
    arrival: float
    pts: int                     # 48 kHz (Opus)
    rms: float                   # full scale 1.0


def media_times(samples: Sequence, rate: int) -> np.ndarray:
    """Seconds since the track's first sample, from its timestamps (32-bit wrap-around undone)."""
    pts = np.array([sample.pts for sample in samples], dtype=np.int64)
    if not len(pts):
        return np.zeros(0)
    steps = np.diff(pts) % (1 << 32)
    return np.concatenate([[0], np.cumsum(steps)]) / rate


def onsets(active: np.ndarray, quiet_before: int) -> List[int]:
    """Indices where ``active`` turns on after at least ``quiet_before`` inactive samples."""
    found, quiet = [], quiet_before       # the stream's start counts as quiet
    for index, on in enumerate(active):
        if on and quiet >= quiet_before:
            found.append(index)
        quiet = 0 if on else quiet + 1
    return found


def mouth_threshold(video: Sequence[VideoSample]) -> float:
    """Midway between the idle face's own variation and the changes speech makes."""
    changes = np.array([sample.mouth_change for sample in video])
    if not len(changes):
        return np.inf
    low, high = np.percentile(changes, 10), np.percentile(changes, 99)
    return low + (high - low) / 2


def av_offsets(video: Sequence[VideoSample], audio: Sequence[AudioSample],
               mouth_change_threshold: Optional[float] = None) -> List[Tuple[float, float]]:
    """(media time of the sound onset, mouth onset minus sound onset) per utterance, seconds."""
    threshold = mouth_threshold(video) if mouth_change_threshold is None else mouth_change_threshold
    video_times, audio_times = media_times(video, VIDEO_CLOCK_RATE), media_times(audio, OPUS_CLOCK_RATE)
    mouth = onsets(np.array([sample.mouth_change > threshold for sample in video]), IDLE_VIDEO_FRAMES)
    sound = onsets(np.array([sample.rms > SOUND_RMS for sample in audio]), QUIET_AUDIO_FRAMES)
    pairs = []
    mouth_times = video_times[mouth] if mouth else np.zeros(0)
    for index in sound:
        if not len(mouth_times):
            break
        nearest = mouth_times[np.argmin(np.abs(mouth_times - audio_times[index]))]
        if abs(nearest - audio_times[index]) <= MAX_PAIRING_SECONDS:
            pairs.append((float(audio_times[index]), float(nearest - audio_times[index])))
    return pairs


def lag_series(samples: Sequence, rate: int) -> Tuple[np.ndarray, np.ndarray]:
    """(media time, arrival minus media time) in seconds, the lag relative to the first sample's."""
    times = media_times(samples, rate)
    arrivals = np.array([sample.arrival for sample in samples], dtype=np.float64)
    if not len(arrivals):
        return times, arrivals
    lag = arrivals - arrivals[0] - times
    return times, lag - lag.min()


def window_median(times: np.ndarray, values: np.ndarray, start: float, stop: float) -> float:
    inside = (times >= start) & (times < stop)
    return float(np.median(values[inside])) if inside.any() else float("nan")


def frame_rate(video: Sequence[VideoSample], start: Optional[float] = None, stop: Optional[float] = None) -> float:
    """Video frames per second of arrival between ``start`` and ``stop`` (default: all)."""
    arrivals = np.array([sample.arrival for sample in video])
    if start is not None:
        arrivals = arrivals[arrivals >= start]
    if stop is not None:
        arrivals = arrivals[arrivals < stop]
    if len(arrivals) < 2:
        return 0.0
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


SUMMARY_WINDOW_SECONDS = 1.0     # lags are summarised per second of media time (median): jitter averages out
WARM_UP_SECONDS = 10.0           # connection start-up (catching up on the first frames) is not drift
EDGE_SECONDS = 60.0              # "first minute" and "last minute"


def per_second_medians(times: np.ndarray, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    if not len(times):
        return times, values
    bins = np.floor(times / SUMMARY_WINDOW_SECONDS).astype(np.int64)
    keys = np.unique(bins)
    return keys * SUMMARY_WINDOW_SECONDS, np.array([np.median(values[bins == key]) for key in keys])


def robust_drift_ms_per_minute(times: np.ndarray, values: np.ndarray) -> float:
    """Theil-Sen slope (the median of all pairwise slopes) in ms per minute: a stall or a
    burst at one moment does not tilt it, a steady drift does."""
    if len(times) < 2:
        return 0.0
    first, second = np.triu_indices(len(times), k=1)
    spans = times[second] - times[first]
    keep = spans > 0
    slopes = (values[second] - values[first])[keep] / spans[keep]
    return float(np.median(slopes) * 1000 * 60) if len(slopes) else 0.0


def _edge_change_ms(times: np.ndarray, values: np.ndarray, start: float, stop: float) -> Tuple[float, float]:
    """(median of the first minute, median of the last minute) after ``start``, in ms."""
    return (1000 * window_median(times, values, start, start + EDGE_SECONDS),
            1000 * window_median(times, values, stop - EDGE_SECONDS, stop + 1))


def soak_summary(video: Sequence[VideoSample], audio: Sequence[AudioSample]) -> Dict:
    """A/V offset per utterance and how both tracks' timing moved over a long session (milliseconds)."""
    offsets = av_offsets(video, audio)
    video_times, video_lag = per_second_medians(*lag_series(video, VIDEO_CLOCK_RATE))
    audio_times, audio_lag = per_second_medians(*lag_series(audio, OPUS_CLOCK_RATE))
    common = np.intersect1d(video_times, audio_times)
    gap = audio_lag[np.isin(audio_times, common)] - video_lag[np.isin(video_times, common)]
    duration = float(common[-1]) if len(common) else 0.0

    offset_times = np.array([start for start, _ in offsets])
    offset_ms = np.array([offset for _, offset in offsets]) * 1000
    first = offset_times < EDGE_SECONDS
    last = offset_times >= duration - EDGE_SECONDS
    summary = {
        "minutes": round(duration / 60, 2),
        "utterances_measured": len(offsets),
        "av_offset_ms_median": float(np.median(offset_ms)) if len(offsets) else float("nan"),
        "av_offset_ms_max_abs": float(np.max(np.abs(offset_ms))) if len(offsets) else float("nan"),
        "av_offset_ms_first_minute": float(np.median(offset_ms[first])) if first.any() else float("nan"),
        "av_offset_ms_last_minute": float(np.median(offset_ms[last])) if last.any() else float("nan"),
        "received_fps": frame_rate(video),
    }
    for name, times, values in (("video_lag", video_times, video_lag), ("audio_lag", audio_times, audio_lag),
                                ("track_gap", common, gap)):
        keep = times >= WARM_UP_SECONDS
        begin, end = _edge_change_ms(times[keep], values[keep], WARM_UP_SECONDS, duration)
        summary[f"{name}_drift_ms_per_minute"] = robust_drift_ms_per_minute(times[keep], values[keep])
        summary[f"{name}_ms_first_minute"], summary[f"{name}_ms_last_minute"] = begin, end
        summary[f"{name}_change_ms"] = end - begin
    return summary
