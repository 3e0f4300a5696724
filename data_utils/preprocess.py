"""Preprocessing: one recording in, a training-ready dataset folder out.

Stages, each complete or absent (written under a temporary name, renamed when
done, recorded in ``.process_state.json``):

1. video     constant 25 fps, rotation applied -> NAME_25fps.mp4 (skipped when
             the source already is exactly that)
2. frames    every frame decoded once: JPEG to full_body_img/ and face landmarks
             to landmarks/ + landmarks.npy, frames without a face interpolated
3. audio     aud.wav, 16 kHz mono PCM16, exactly frames x 640 samples
4. crops     crop_boxes.npy, the temporally smoothed crop squares (data_utils/crop.py)
5. features  aud_<asr>.npy when --asr is given (data_utils/features/extract.py)

A re-run skips finished stages whose inputs are unchanged and redoes the rest,
so Ctrl-C at any point followed by a re-run yields a complete dataset.
"""
import collections
import concurrent.futures
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from data_utils import crop
from data_utils.audio import fit_to_frames, load_audio
from data_utils.features import extract as audio_features
from data_utils.ffmpeg import MediaInfo, audio_start_offset, first_decoded_time, last_error_line, probe
from data_utils.landmarks import create_landmarker, format_lms, interpolate_missing, missing_ranges
from data_utils.layout import DatasetLayout
from data_utils.output_check import broken_jpeg_frames, frames_problem, npy_problem, wav_problem
from data_utils.stage_state import StageState
from data_utils.timebase import ASR_CHOICES, FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from data_utils.video import (CONVERSION_CRF, JPEG_QUALITY, FrameReader, convert_to_25fps, encode_frame_jpeg,
                              inspect_source, needs_conversion, write_frame_jpeg)
from lipsync.core.atomic import (atomic_directory, atomic_path, save_numpy_atomic, write_bytes_atomic,
                                 write_json_atomic, write_text_atomic)
from lipsync.core.errors import UserError
from lipsync.core.fingerprint import file_fingerprint
from lipsync.core.locks import folder_lock
from lipsync.core.progress import progress_bar

log = logging.getLogger("preprocess")

# Frames without a face are interpolated, up to a point: beyond these the
# recording cannot teach a face model and the user should fix or trim it.
MAX_MISSING_FACE_FRACTION = 0.05
MAX_MISSING_FACE_SECONDS = 2.0
# Decide "face too small" from the first detections instead of after the whole video.
FACE_SIZE_CHECK_AFTER_FRAMES = 25

JPEG_WRITER_THREADS = 2
MAX_PENDING_JPEG_WRITES = 32   # bounds memory while writer threads catch up
FRAME_COUNT_TOLERANCE = 1      # decoded frames may differ from duration x 25 by this


def _format_time(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)}:{seconds:05.2f}"


# --------------------------------------------------------------------------- stage 2: frames

def rewrite_frames(frames_info: MediaInfo, layout: DatasetLayout, indices, show_progress: bool = True) -> int:
    """Decode the 25 fps video again and rewrite only frames ``indices`` (each atomically); returns how many."""
    wanted = set(int(index) for index in indices)
    reader = FrameReader(frames_info)
    written = 0
    try:
        for index, frame in enumerate(progress_bar(reader, total=int(round((frames_info.duration or 0) * FPS)),
                                                   desc="repair frames", unit="frame", enabled=show_progress)):
            if index in wanted:
                path = layout.frame_path(index)
                write_bytes_atomic(path, encode_frame_jpeg(path, frame))
                written += 1
                if written == len(wanted):
                    break
    finally:
        reader.close()
    return written


def _missing_face_error(video: Path, found: np.ndarray, max_fraction: float,
                        max_seconds: float) -> Optional[str]:
    ranges = missing_ranges(found)
    missing = int((~found).sum())
    longest = max((last - first + 1 for first, last in ranges), default=0)
    if missing <= max_fraction * len(found) and longest <= max_seconds * FPS:
        return None
    spans = ", ".join(f"{_format_time(first / FPS)}-{_format_time((last + 1) / FPS)}"
                      for first, last in ranges[:8])
    more = f" and {len(ranges) - 8} more" if len(ranges) > 8 else ""
    return (f"{video}: no face found in {missing} of {len(found)} frames "
            f"({100 * missing / len(found):.1f}%; at {spans}{more}) — trim those parts or "
            f"re-record with the face visible (limits: {max_fraction:.0%} of frames, "
            f"{max_seconds:g} s in a row; see --max_missing_fraction / --max_missing_seconds)")


def _check_face_size(video: Path, widths: List[float]) -> None:
    median = float(np.median(widths))
    if median < crop.MIN_FACE_WIDTH_PX:
        raise UserError(f"{video}: the face is only about {median:.0f} px wide — it must be at least "
                        f"{crop.MIN_FACE_WIDTH_PX} px; record closer to the camera or at a higher resolution")


def _sound_outlasts_picture(source: MediaInfo, frame_count: int) -> bool:
    """Whether a recording's duration is its sound's, which goes on after its last frame.

    A file's duration is that of its longest stream. When the frames stop
    early, a complete file still has its sound up to the end; a cut-off file
    lost both (they are stored interleaved).
    """
    try:
        sound_end = load_audio(source.path, clock="file").size / SAMPLE_RATE
    except UserError:         # sound that cannot be decoded to its end: the file is damaged
        return False
    outlasts = sound_end >= source.duration - FRAME_COUNT_TOLERANCE / FPS
    if outlasts:
        log.info("%s: the sound goes on %.2f s after the last frame; the dataset ends with the picture",
                 source.path.name, source.duration - frame_count / FPS)
    return outlasts


def extract_frames_and_landmarks(frames_info: MediaInfo, layout: DatasetLayout, backend: str,
                                 source: MediaInfo, max_missing_fraction: float = MAX_MISSING_FACE_FRACTION,
                                 max_missing_seconds: float = MAX_MISSING_FACE_SECONDS,
                                 show_progress: bool = True) -> Dict:
    """Decode once; write every frame as JPEG and its landmarks; returns the stage summary.

    ``frames_info`` is the 25 fps video that is decoded, ``source`` the user's
    recording: errors name the user's file, and the frame count is checked
    against the duration the recording claims (a cut-off file converts fine
    but comes out short).
    """
    info = source
    # The picture spans the file's duration less any time before its first frame (a camera or
    # editor may start the picture after the sound).
    picture_start = float(first_decoded_time(frames_info.path, "v") or 0.0)
    expected = int(round((source.duration - picture_start) * FPS))
    landmarker = create_landmarker(backend)
    reader = FrameReader(frames_info)
    detections: List[Optional[np.ndarray]] = []
    widths: List[float] = []
    pending = collections.deque()
    try:
        with atomic_directory(layout.frames_dir) as frames_dir, \
                concurrent.futures.ThreadPoolExecutor(JPEG_WRITER_THREADS) as writers:
            for index, frame in enumerate(progress_bar(reader, total=expected, desc="frames + landmarks",
                                                       unit="frame", enabled=show_progress)):
                pending.append(writers.submit(write_frame_jpeg, frames_dir / f"{index}.jpg", frame))
                points = landmarker.detect(frame)
                detections.append(points)
                if points is not None:
                    widths.append(float(crop.face_width(points)))
                    if len(widths) == FACE_SIZE_CHECK_AFTER_FRAMES:
                        _check_face_size(info.path, widths)
                while len(pending) > MAX_PENDING_JPEG_WRITES or (pending and pending[0].done()):
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
            decoder_errors = reader.close()
            count = len(detections)
            if count == 0:
                raise UserError(f"{info.path}: no frame could be decoded ({last_error_line(decoder_errors)}) — "
                                "the file is damaged; copy or export it again")
            if count < expected - FRAME_COUNT_TOLERANCE and not _sound_outlasts_picture(info, count):
                raise UserError(f"{info.path}: the video ends after {count / FPS:.2f} s although it says "
                                f"{info.duration:.2f} s (truncated or damaged file) — copy or export it again")
            found = np.array([points is not None for points in detections])
            if not found.any():
                raise UserError(f"{info.path}: no face found in any frame — the face must be visible, "
                                f"roughly frontal and at least {crop.MIN_FACE_WIDTH_PX} px wide")
            if len(widths) < FACE_SIZE_CHECK_AFTER_FRAMES:
                _check_face_size(info.path, widths)
            message = _missing_face_error(info.path, found, max_missing_fraction, max_missing_seconds)
            if message:
                raise UserError(message)
            point_count = next(points for points in detections if points is not None).shape[0]
            stacked = np.stack([points if points is not None else np.zeros((point_count, 2), np.float32)
                                for points in detections])
            landmarks = interpolate_missing(stacked, found)
            with atomic_directory(layout.landmarks_dir) as landmarks_dir:
                for index, points in enumerate(landmarks):
                    (landmarks_dir / f"{index}.lms").write_text(format_lms(points))
            save_numpy_atomic(layout.landmarks_array, landmarks)
            save_numpy_atomic(layout.face_found, found)
    finally:
        for future in pending:
            future.cancel()
        reader.close()
        landmarker.close()
    missing = np.flatnonzero(~found)
    return {
        "frames": count,
        "landmark_points": int(point_count),
        "missing_face_frames": missing.tolist(),
        "missing_face_ranges_s": [[first / FPS, (last + 1) / FPS] for first, last in missing_ranges(found)],
        "face_width_px": {"median": round(float(np.median(widths)), 1),
                          "min": round(float(np.min(widths)), 1)},
    }


# --------------------------------------------------------------------------- stage 3: audio

def extract_audio(video: Path, output: Path, frame_count: int, recording: Optional[Path] = None) -> Dict:
    """16 kHz mono PCM16 wav cut or zero-padded to exactly ``frame_count`` video frames.

    Decoding is data_utils.audio.load_audio's, the same that inference uses on
    new audio, so training and inference hear a recording alike; it starts at
    the first video frame's time, so an audio stream that starts later or
    earlier than the picture stays in sync with the frames. The gap reported
    is measured on ``recording`` (the user's file, default ``video``): it is
    what the user can check in their editor.
    """
    import soundfile  # only preprocessing writes wav files

    recording = recording or video
    offset = audio_start_offset(recording)
    if abs(offset) >= 1 / FPS:
        log.info("%s: the audio starts about %.0f ms %s the first video frame; aligning it to the frames",
                 recording.name, abs(offset) * 1000, "after" if offset > 0 else "before")
    samples = load_audio(video, clock="video")
    target = frame_count * SAMPLES_PER_FRAME
    decoded = samples.size
    fitted = fit_to_frames(samples, frame_count)
    with atomic_path(output) as temporary:
        soundfile.write(str(temporary), fitted, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return {"samples": target, "decoded_samples": int(decoded), "audio_start_offset_ms": round(1000 * offset, 1),
            "padded_or_cut_ms": round(1000 * (target - decoded) / SAMPLE_RATE, 1)}


# --------------------------------------------------------------------------- stage 4: crops

def compute_crop_boxes(layout: DatasetLayout) -> Dict:
    landmarks = np.load(layout.landmarks_array)
    boxes = crop.crop_boxes(landmarks)
    save_numpy_atomic(layout.crop_boxes, boxes)
    sides = boxes[:, 2] - boxes[:, 0]
    return {"frames": len(boxes), "side_px": {"median": int(np.median(sides)), "min": int(sides.min()),
                                             "max": int(sides.max())}}


# --------------------------------------------------------------------------- stage 5: features

def compute_features(layout: DatasetLayout, asr: str, feature_options: Dict, force: bool,
                     show_progress: bool = True) -> Dict:
    path = audio_features.prepare_dataset_features(layout.root, asr, force=force,
                                                   progress=show_progress, **feature_options)
    return {"asr": asr, "file": Path(path).name}


# --------------------------------------------------------------------------- checking finished stages

def frames_stage_problem(layout: DatasetLayout, frame_count: int):
    """What is wrong with the frames stage's outputs (JPEGs, .lms files, arrays), or None."""
    found = frames_problem(layout.frames_dir, frame_count)
    if found:
        return found
    missing_lms = [index for index in range(frame_count) if not layout.landmark_path(index).is_file()]
    if missing_lms:
        return f"{layout.landmarks_dir.name}/ lacks {len(missing_lms)} of {frame_count} .lms files"
    return npy_problem(layout.landmarks_array, (frame_count,)) or npy_problem(layout.face_found, (frame_count,))


def repair_frames_stage(frames_info: MediaInfo, layout: DatasetLayout, frame_count: int,
                        show_progress: bool = True) -> bool:
    """Rewrite missing or damaged JPEGs and .lms files from the video and landmarks.npy; False if
    the landmarks arrays themselves are damaged (then the stage must be redone)."""
    if npy_problem(layout.landmarks_array, (frame_count,)) or npy_problem(layout.face_found, (frame_count,)):
        return False
    if not layout.frames_dir.is_dir() or not layout.landmarks_dir.is_dir():
        return False
    broken = broken_jpeg_frames(layout.frames_dir, frame_count)
    if broken and rewrite_frames(frames_info, layout, broken, show_progress) != len(broken):
        return False
    landmarks = np.load(layout.landmarks_array)
    for index in range(frame_count):
        if not layout.landmark_path(index).is_file():
            write_text_atomic(layout.landmark_path(index), format_lms(landmarks[index]))
    return True


# --------------------------------------------------------------------------- driver

class Preprocessor:
    """Runs the stages in order, skipping those already complete."""

    def __init__(self, video_path: Path, layout: DatasetLayout, force: bool,
                 max_missing_fraction: float = MAX_MISSING_FACE_FRACTION,
                 max_missing_seconds: float = MAX_MISSING_FACE_SECONDS, show_progress: bool = True):
        self.show_progress = show_progress
        self.missing_limits = {"max_missing_fraction": max_missing_fraction,
                               "max_missing_seconds": max_missing_seconds}
        self.video_path = video_path
        self.layout = layout
        self.force = force
        self.info = inspect_source(video_path)      # bad input fails before anything is written
        self.state: Optional[StageState] = None     # read in run(), under the dataset's lock
        self.redid_earlier_stage = force

    def run_stage(self, stage: str, settings: Dict, work, files=lambda summary: (),
                  problem=lambda summary: None, repair=None) -> Dict:
        """Run ``work`` unless the stage finished with these settings and its outputs still verify.

        ``files(summary)``: the stage's file outputs (their sha256 is recorded and compared);
        ``problem(summary)``: a cheap check of the outputs, a phrase or None; ``repair(summary)``
        fixes what ``problem`` found in place (True when it did) without redoing the stage. A stage
        redone because its outputs were damaged leaves later stages alone when it gives the same
        summary: it made the same outputs again.
        """
        record = None if self.redid_earlier_stage else self.state.recorded(stage, settings)
        if record is not None:
            summary = record["summary"]
            changed = self.state.changed_outputs(record)
            damage = ", ".join(f"{name} changed or is missing" for name in changed) or problem(summary)
            if damage is None:
                log.info("%s: already done, skipping", stage)
                return summary
            if not changed and repair is not None and repair(summary) and problem(summary) is None:
                log.warning("%s: %s — repaired", stage, damage)
                return summary
            log.warning("%s: %s — redoing this stage", stage, damage)
        log.info("%s: running", stage)
        started = time.perf_counter()
        new_summary = work()
        if record is None or new_summary != record["summary"]:
            self.state.forget_from(stage)
            self.redid_earlier_stage = True
        self.state.mark_done(stage, settings, new_summary, time.perf_counter() - started, files(new_summary))
        return new_summary

    def video_stage(self) -> Dict:
        converted = self.layout.video_25fps(self.video_path)
        if not needs_conversion(self.info):
            if converted.exists():
                converted.unlink()  # left from an earlier source that needed it
            return {"video": self.video_path.name, "converted": False}
        convert_to_25fps(self.info, converted, self.show_progress)
        return {"video": converted.name, "converted": True}

    def run(self, asr: Optional[str], landmarks_backend: str, feature_options: Dict) -> Dict:
        """Every stage in order; the caller holds the dataset folder's lock."""
        layout, info = self.layout, self.info
        self.state = StageState(layout, file_fingerprint(self.video_path), self.force)
        video_summary = self.run_stage(
            "video", {"fps": FPS, "crf": CONVERSION_CRF}, self.video_stage,
            files=lambda summary: [layout.root / summary["video"]] if summary["converted"] else [])
        if video_summary["converted"]:
            frames_video = layout.root / video_summary["video"]
            frames_info = probe(frames_video)
        else:
            frames_video, frames_info = self.video_path, info
        frames_summary = self.run_stage(
            "frames", {"backend": landmarks_backend, "jpeg_quality": JPEG_QUALITY, **self.missing_limits},
            lambda: extract_frames_and_landmarks(frames_info, layout, landmarks_backend, info,
                                                 **self.missing_limits, show_progress=self.show_progress),
            files=lambda summary: [layout.landmarks_array, layout.face_found],
            problem=lambda summary: frames_stage_problem(layout, summary["frames"]),
            repair=lambda summary: repair_frames_stage(frames_info, layout, summary["frames"], self.show_progress))
        frame_count = frames_summary["frames"]
        audio_summary = self.run_stage(
            "audio", {"sample_rate": SAMPLE_RATE, "frames": frame_count, "clock": "first video frame"},
            lambda: extract_audio(frames_video, layout.audio_wav, frame_count, self.video_path),
            files=lambda summary: [layout.audio_wav],
            problem=lambda summary: wav_problem(layout.audio_wav, frame_count * SAMPLES_PER_FRAME, SAMPLE_RATE))
        crops_summary = self.run_stage(
            "crops", {"sigma": crop.CROP_SMOOTHING_SIGMA_FRAMES, "crop_size": crop.CROP_SIZE},
            lambda: compute_crop_boxes(layout),
            files=lambda summary: [layout.crop_boxes],
            problem=lambda summary: npy_problem(layout.crop_boxes, (frame_count, 4)))
        features_summary = None
        if asr:
            features_summary = self.run_stage(
                "features", {"asr": asr, **{key: str(value) for key, value in feature_options.items()}},
                lambda: compute_features(layout, asr, feature_options, self.redid_earlier_stage,
                                         self.show_progress),
                files=lambda summary: [layout.root / summary["file"]],
                problem=lambda summary: npy_problem(layout.root / summary["file"], (frame_count,)))
        report = {
            "name": layout.name,
            "source": {"file": self.video_path.name, "width": info.width, "height": info.height,
                       "reported_fps": info.average_fps, "rotation": info.rotation,
                       "duration_s": info.duration},
            "video": frames_video.name,
            "converted_to_25fps": video_summary["converted"],
            "fps": FPS,
            "frames": frame_count,
            "duration_s": round(frame_count / FPS, 3),
            "audio": {"file": layout.audio_wav.name, "sample_rate": SAMPLE_RATE, **audio_summary},
            "landmarks": {"backend": landmarks_backend, "points": frames_summary["landmark_points"]},
            "face_width_px": frames_summary["face_width_px"],
            "missing_face": {"count": len(frames_summary["missing_face_frames"]),
                             "frames": frames_summary["missing_face_frames"],
                             "ranges_s": frames_summary["missing_face_ranges_s"]},
            "crop_boxes": {"file": layout.crop_boxes.name, **crops_summary},
            "features": features_summary,
            "stage_seconds": {stage: record["seconds"] for stage, record in self.state.stages.items()},
        }
        write_json_atomic(layout.report, report)
        return report


def process_video(video_path, output_dir=None, asr: Optional[str] = None,
                  landmarks_backend: str = "mediapipe", force: bool = False,
                  feature_options: Optional[Dict] = None, show_progress: bool = True,
                  max_missing_fraction: float = MAX_MISSING_FACE_FRACTION,
                  max_missing_seconds: float = MAX_MISSING_FACE_SECONDS) -> Dict:
    """Turn ``video_path`` into a dataset folder; returns the report (also written as JSON).

    ``feature_options`` go to the audio-feature stage (ave_checkpoint, hubert_model,
    wenet_model, device).
    """
    if asr is not None and asr not in ASR_CHOICES:
        raise UserError(f"unknown --asr {asr!r} — choose one of: {', '.join(ASR_CHOICES)}")
    video_path = Path(video_path)
    layout = DatasetLayout.for_video(video_path, output_dir)
    preprocessor = Preprocessor(video_path, layout, force, max_missing_fraction, max_missing_seconds, show_progress)
    with folder_lock(layout.root, "preprocessing", "--output_dir"):
        return preprocessor.run(asr, landmarks_backend, feature_options or {})
