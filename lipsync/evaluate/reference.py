"""What generated frames are compared with: the real frames, their audio, and their own scores.

Held out: the recording's last ``val_fraction`` frames, their audio and audio
features. New audio: the frames the render pastes onto (ping-pong order from
--start_frame), the new audio's features, and, with --truth_video, that
video's frames as the truth. ``measure_recording`` measures the truth like a
checkpoint (the table's "recording" row, every measure's ceiling) and finds
the mouth regions the picture measures are taken in.
"""
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from data_utils.audio import fit_to_frames, load_audio
from data_utils.dataset import split_frames
from data_utils.frame_decoder import video_frames as decoded_frames
from data_utils.ffmpeg import probe
from data_utils.landmarks import interpolate_missing
from data_utils.layout import DatasetLayout, process_command
from data_utils.timebase import FPS, SAMPLES_PER_FRAME, frame_count_for_samples
from lipsync.core.errors import UserError
from lipsync.core.progress import progress_bar
from lipsync.evaluate import metrics
from lipsync.evaluate.landmark_track import LANDMARK_SCORES, LandmarkTrack
from lipsync.evaluate.sync_embedding import sync_embedder
from lipsync.render.frames import pingpong_indices

log = logging.getLogger("evaluation")

MIN_EVAL_FRAMES = 10               # fewer frames say nothing about sync
FPS_TOLERANCE = 0.01               # a truth video this close to 25 fps is 25 fps


@dataclass
class Reference:
    """What the scored frames are compared with: recording frames and their measurements."""
    frames: np.ndarray                  # recording frame index of each scored frame
    crop_boxes: np.ndarray              # (T, 4) the recording's smoothed crop boxes for them
    samples: np.ndarray                 # the audio of the scored frames, T x 640 samples
    energy: np.ndarray                  # (T,) loudness per frame
    features: Optional[np.ndarray]      # rows of the audio features SyncNet's windows come from
    feature_rows: np.ndarray            # row of each scored frame in ``features``
    landmarks: Optional[np.ndarray] = None      # (T, P, 2) of the real frames (held-out only)
    mouth_boxes: Optional[np.ndarray] = None
    real_changes: Optional[List[float]] = None  # frame-to-frame change of the real mouth
    scores: Optional[Dict] = None               # the real frames' own scores (held-out only)
    truth_video: Optional[Path] = None          # real frames from this video instead of the recording

    def real_frames(self, layout: DatasetLayout) -> Iterator[np.ndarray]:
        """The true frame for every scored frame, in order."""
        if self.truth_video is None:
            for index in self.frames:
                yield read_frame(layout, index)
            return
        yield from video_frames(self.truth_video, len(self.frames))


def read_frame(layout: DatasetLayout, index: int) -> np.ndarray:
    import cv2

    path = layout.frame_path(int(index))
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise UserError(f"{path} is missing or unreadable — run again: {process_command(layout)}")
    return frame


def video_frames(path: Path, count: int) -> Iterator[np.ndarray]:
    """The first ``count`` decoded BGR frames of ``path``; fewer is a UserError."""
    _, frames = decoded_frames(path)      # FFmpeg, or OpenCV's decoder where there is no ffmpeg
    produced = 0
    try:
        for frame in frames:
            if produced == count:
                break
            produced += 1
            yield frame
    finally:
        frames.close()
    if produced < count:
        raise UserError(f"--truth_video {path} has {produced} frames but the audio needs {count} — "
                        "give the video of exactly this audio (25 fps)")


def check_truth_video(path: Path, frame_size: Tuple[int, int]) -> None:
    """A truth video must be 25 fps and framed like the recording (frame k beside generated frame k)."""
    if not path.is_file():
        raise UserError(f"--truth_video {path} does not exist — check the path")
    info = probe(path)
    if not info.has_video:
        raise UserError(f"--truth_video {path} has no video stream")
    if info.average_fps is None or abs(info.average_fps - FPS) > FPS_TOLERANCE:
        raise UserError(f"--truth_video {path} runs at {info.average_fps} fps, not {FPS} — convert it "
                        f"(ffmpeg -i {path.name} -vf fps={FPS} out.mp4) so frame k matches generated frame k")
    if tuple(info.display_size) != tuple(frame_size):
        raise UserError(f"--truth_video {path} is {info.display_size[0]}x{info.display_size[1]} but the recording is "
                        f"{frame_size[0]}x{frame_size[1]} — the truth must be framed like the recording")


def recording_samples(layout: DatasetLayout, frame_count: int) -> np.ndarray:
    """aud.wav as exactly frame_count x 640 samples (preprocessing already made it so)."""
    return fit_to_frames(load_audio(layout.audio_wav), frame_count)


def heldout_reference(layout: DatasetLayout, boxes: np.ndarray, asr: str, fraction: float) -> Reference:
    """The recording's held-out tail (data_utils.dataset.split_frames) as the reference."""
    frame_count = len(boxes)
    _, tail = split_frames(frame_count, fraction)
    if len(tail) < MIN_EVAL_FRAMES:
        raise UserError(f"the held-out tail of {layout.root} has only {len(tail)} frames "
                        f"(--val_fraction {fraction:g} of {frame_count}) — at least {MIN_EVAL_FRAMES} "
                        "are needed: give a larger --val_fraction (and train with the same one)")
    samples = recording_samples(layout, frame_count)
    features = None
    feature_file = layout.features(asr)
    if feature_file.is_file():
        features = np.load(feature_file).astype(np.float32)
        if len(features) != frame_count:
            log.warning("%s has %d rows for %d frames: SyncNet scores skipped", feature_file,
                        len(features), frame_count)
            features = None
    scored = samples[tail[0] * SAMPLES_PER_FRAME:(tail[-1] + 1) * SAMPLES_PER_FRAME]
    return Reference(frames=tail, crop_boxes=boxes[tail], samples=scored,
                     energy=metrics.audio_energy(samples, frame_count)[tail],
                     features=features, feature_rows=tail)


def audio_reference(renderer, boxes: np.ndarray, audio_path: Path, start_frame: int,
                    truth_video: Optional[Path]) -> Reference:
    """New audio as the reference: the frames ``renderer`` pastes onto, and the truth video's frames if any."""
    samples = load_audio(audio_path)
    count = frame_count_for_samples(len(samples))
    start = renderer.check_start_frame(start_frame)
    frames = pingpong_indices(start, count, len(boxes))
    features = renderer.featurizer(samples, count)
    if truth_video is not None:
        check_truth_video(Path(truth_video), renderer.frame_size)
    return Reference(frames=frames, crop_boxes=boxes[frames], samples=samples,
                     energy=metrics.audio_energy(samples, count), features=np.asarray(features, np.float32),
                     feature_rows=np.arange(count), truth_video=Path(truth_video) if truth_video else None)


def stored_mouth_boxes(layout: DatasetLayout, frames: np.ndarray, frame_shape) -> Optional[np.ndarray]:
    """Mouth regions from preprocessing's landmarks of the recording frames (for a truth video: the
    frames whose head pose it has), when no detector can run here; None without landmarks.npy."""
    if not layout.landmarks_array.is_file():
        return None
    landmarks = np.load(layout.landmarks_array)
    if len(landmarks) <= int(np.max(frames)):
        return None
    return metrics.mouth_boxes(landmarks[frames], frame_shape)


def measure_recording(layout: DatasetLayout, reference: Reference, syncnet, asr: str, device,
                      show_progress: bool, track_landmarks: bool = True) -> Reference:
    """The real frames' landmarks, mouth boxes and own scores (the table's "recording" row).

    Two passes over the frames: the mouth boxes, which the frame-to-frame change
    is measured in, come from the landmarks of the first. ``track_landmarks=False``
    (no detector here): the lip scores are NaN and the mouth boxes come from
    preprocessing's landmarks.
    """
    track = LandmarkTrack() if track_landmarks else None
    embedder = sync_embedder(syncnet, reference.features, asr, device)
    shape = None
    for k, frame in enumerate(progress_bar(reference.real_frames(layout), enabled=show_progress,
                                           total=len(reference.frames), desc="truth", unit="frame", leave=False)):
        shape = frame.shape
        if track is not None:
            track.add(frame)
        if embedder is not None:
            embedder.add(frame, reference.crop_boxes[k], reference.feature_rows[k])
    if track is not None:
        landmarks = track.result()
        found = _faces_found(landmarks, reference.truth_video or f"the held-out frames of {layout.root}")
        mouth_boxes = metrics.mouth_boxes(interpolate_missing(landmarks, found), shape)
        opening = metrics.mouth_opening(landmarks)
        scores = {"lmd": 0.0, "opening_correlation": 1.0, "opening_offset": 0, "opening_best_correlation": 1.0,
                  "opening_ratio": 1.0, "face_found": float(found.mean()),
                  "mouth_opening": float(np.nanmean(opening))}
    else:
        landmarks, opening = None, None
        mouth_boxes = stored_mouth_boxes(layout, reference.frames, shape)
        scores = dict.fromkeys(LANDMARK_SCORES, float("nan"))
    changes, previous = [], None
    if mouth_boxes is not None:
        for k, frame in enumerate(reference.real_frames(layout)):
            if previous is not None:
                changes.append(metrics.mouth_change(previous, frame, mouth_boxes[k]))
            previous = frame
    scores.update(metrics.stability(changes, changes))
    if opening is not None:
        scores.update(metrics.opening_energy_scores(opening, reference.energy))
    if embedder is not None:
        scores.update(metrics.sync_confidence(*embedder.result()))
    return dataclasses.replace(reference, landmarks=landmarks, mouth_boxes=mouth_boxes, real_changes=changes,
                               scores=scores)


def _faces_found(landmarks: np.ndarray, source) -> np.ndarray:
    """(T,) where the real frames show a face; none at all is a UserError, some missing a warning."""
    found = np.isfinite(landmarks).all(axis=(1, 2))
    if not found.any():
        raise UserError(f"no face found in any of the {len(landmarks)} frames of {source} "
                        "— evaluate on another stretch (--val_fraction) or check the video")
    if not found.all():
        # Those frames keep NaN landmarks (no lip measure there); their mouth box,
        # needed for the picture measures, comes from the neighbouring frames.
        log.warning("no face found in %d of the %d frames of %s: lip measures skip them",
                    int((~found).sum()), len(found), source)
    return found
