"""A processed dataset's audio as every encoder gets it: exactly frames x 640 samples.

Feature row i belongs to the extracted frame full_body_img/i.jpg, so the
number of rows is the number of frames there, and aud.wav is padded with
silence or cut to that many 640-sample stretches (data_utils.audio.fit_to_frames).
"""
from pathlib import Path

import numpy as np

from data_utils.audio import as_samples, fit_to_frames
from data_utils.layout import DatasetLayout, process_command
from lipsync.core.errors import UserError


def count_video_frames(frames_dir: Path) -> int:
    """Number of i.jpg frames in a processed dataset's full_body_img/."""
    return sum(1 for path in Path(frames_dir).glob("*.jpg") if path.stem.isdigit())


def require_audio_and_frames(layout: DatasetLayout) -> int:
    """The number of extracted frames of a dataset that has its aud.wav; otherwise a UserError naming the fix."""
    if not layout.audio_wav.exists():
        raise UserError(f"{layout.audio_wav} does not exist — run: {process_command(layout)}")
    frames = count_video_frames(layout.frames_dir)
    if frames == 0:
        raise UserError(f"{layout.frames_dir} has no frames — run: {process_command(layout)}")
    return frames


def frame_aligned_samples(layout: DatasetLayout, frames: int) -> np.ndarray:
    """(frames * 640,) float32 samples of aud.wav, one 640-sample stretch per extracted frame."""
    return fit_to_frames(as_samples(layout.audio_wav), frames, layout.audio_wav)
