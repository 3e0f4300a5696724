"""The one place that maps audio time to video frames.

Video runs at 25 fps and audio at 16 kHz mono, so one video frame is 640
samples. Audio feature frame i belongs to video frame i (time i / 25 s) for
every encoder; a training video with N frames has exactly N feature frames.
The model's audio input for frame i is the window of WINDOW_FRAMES feature
frames around it (i - 8 .. i + 7), zero-padded past either end, reshaped per
encoder to the grid in FEATURE_SPECS. Nothing else re-derives any of this.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS          # 640
WINDOW_FRAMES = 16
WINDOW_BEFORE = WINDOW_FRAMES // 2              # frames i-8 .. i-1 come before frame i
WINDOW_AFTER = WINDOW_FRAMES - WINDOW_BEFORE    # frames i .. i+7


DATASET_AUDIO_STEM = "aud"      # dataset/NAME/aud.wav: its features are aud_<suffix>.npy


@dataclass(frozen=True)
class FeatureSpec:
    """Per-encoder feature layout."""
    asr: str
    filename: str               # written next to aud.wav in dataset/NAME/
    per_frame_shape: Tuple[int, ...]   # values per video frame for the released model size
    grid: Tuple[int, int]       # (H, W) of the reshaped window; channels follow from the size

    def filename_for(self, audio_path) -> str:
        """Features of ``audio_path`` are named after it: aud.wav -> aud_ave.npy, new.wav -> new_ave.npy."""
        return Path(audio_path).stem + self.filename[len(DATASET_AUDIO_STEM):]

    def window_shape(self, per_frame_shape=None) -> Tuple[int, int, int]:
        """(C, H, W) of one frame's model input for features of ``per_frame_shape``."""
        per_frame = int(np.prod(per_frame_shape or self.per_frame_shape))
        total = WINDOW_FRAMES * per_frame
        height, width = self.grid
        if total % (height * width):
            raise ValueError(f"{self.asr}: a window of {WINDOW_FRAMES} x {per_frame} values "
                             f"does not fill a {height}x{width} grid")
        return total // (height * width), height, width


FEATURE_SPECS: Dict[str, FeatureSpec] = {
    # 512 values per frame -> (32, 16, 16)
    "ave": FeatureSpec("ave", "aud_ave.npy", (512,), (16, 16)),
    # two 50 Hz hidden states of 1024 (hubert-large) per frame -> (32, 32, 32)
    "hubert": FeatureSpec("hubert", "aud_hu.npy", (2, 1024), (32, 32)),
    # one 25 Hz encoder output of 512 (WeNet conformer, 4x subsampled 10 ms fbank) -> (32, 16, 16)
    "wenet": FeatureSpec("wenet", "aud_wenet.npy", (512,), (16, 16)),
}
ASR_CHOICES = tuple(FEATURE_SPECS)


def frame_count_for_samples(num_samples: int) -> int:
    """Video frames covered by ``num_samples`` of 16 kHz audio (a partial last frame counts)."""
    return int(np.ceil(num_samples / SAMPLES_PER_FRAME))


def frame_time(frame_index) -> float:
    """Start time in seconds of video frame ``frame_index``."""
    return frame_index / FPS


def audio_window(features: np.ndarray, frame_index: int) -> np.ndarray:
    """The WINDOW_FRAMES feature frames around ``frame_index``, zeros past the ends.

    ``features`` is (N, *per_frame); returns (WINDOW_FRAMES, *per_frame).
    """
    count = len(features)
    start = frame_index - WINDOW_BEFORE
    stop = frame_index + WINDOW_AFTER
    window = np.zeros((WINDOW_FRAMES,) + features.shape[1:], dtype=features.dtype)
    source_start, source_stop = max(start, 0), min(stop, count)
    if source_stop > source_start:
        window[source_start - start:source_stop - start] = features[source_start:source_stop]
    return window


def model_audio_input(features: np.ndarray, frame_index: int, asr: str) -> np.ndarray:
    """The encoder-shaped (C, H, W) float32 audio input for ``frame_index``."""
    spec = FEATURE_SPECS[asr]
    window = audio_window(features, frame_index)
    return window.reshape(spec.window_shape(features.shape[1:])).astype(np.float32)
