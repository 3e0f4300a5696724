"""Scoring checkpoints: render, detect, measure, compare, choose.

    python evaluate_328.py --name May                  # every checkpoint on the held-out tail -> best.pth
    python evaluate_328.py --name May --checkpoint 120 --audio_path other_speaker.wav

Held-out tail: the last ``--val_fraction`` of the recording, the contiguous
stretch training never learned from (data_utils.dataset.split_frames, with the
fraction the run was trained with). Each checkpoint renders that stretch from
its own audio, through the same render path as inference_328.py
(lipsync.render.renderer), starting a little earlier so the first frames' audio
windows see the real audio before them, as they would in a full render.
Generated frame k is then compared with real frame k (lipsync.evaluate.metrics):
PSNR/SSIM of the frame and the mouth, LMD, the mouth-opening track and its
offset, SyncNet distance/confidence (when checkpoint/NAME/syncnet/best.pth
exists), stability, and mouth opening against loudness. The real frames get
the same measurements (the "recording" row), so each number has its ceiling
beside it.

New audio (``--audio_path``): there is no truth, so only the measures that need
none are reported: SyncNet distance/confidence and mouth opening against
loudness. When a video of the person really speaking that audio exists
(``--truth_video``, 25 fps, the recording's framing, frame k at the head pose
of recording frame start_frame + k, as the bundled fixture's
heldout_a_truth.mp4 is), every held-out measure is made against it instead.

Outputs, in checkpoint/NAME/evaluation/<heldout | audio_STEM>/:
    scores.json         every checkpoint's scores, the reference row, the choice
    table.md            the same as a table (also printed)
    epoch_E.json        one checkpoint's scores, reused by a re-run while the
                        checkpoint, the frames and the SyncNet are unchanged
    epoch_E_side_by_side.mp4   truth | generated with the audio
    epoch_E_strip.png   a few frames' crops: truth above, generated below
    strip.png           truth and every checkpoint's row, one above the other
and checkpoint/NAME/best.pth: a copy of the winning checkpoint (written
atomically) with a ``selection`` entry saying which metric it won on, its
value and every candidate's score; ``inference_328.py --checkpoint best`` uses it.
"""
import dataclasses
import logging
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from data_utils import crop
from lipsync.evaluate import metrics
from lipsync.core.atomic import write_json_atomic, write_text_atomic
from lipsync.core.errors import UserError
from data_utils.landmarks import create_landmarker, interpolate_missing
from data_utils.layout import CHECKPOINT_ROOT, DATASET_ROOT, DatasetLayout, checkpoint_dir
from data_utils.timebase import FPS, SAMPLES_PER_FRAME, WINDOW_BEFORE, frame_count_for_samples, model_audio_input

log = logging.getLogger("evaluation")

SCORES_VERSION = 1                 # bump when a metric's definition changes: cached scores are redone
EVALUATION_SUBDIR = "evaluation"
HELDOUT_SUBDIR = "heldout"
DEFAULT_VAL_FRACTION = 0.05        # train_328.py's default; used when the run does not say
MIN_EVAL_FRAMES = 10               # fewer frames say nothing about sync
DEFAULT_BATCH_SIZE = 8
SYNC_BATCH = 32                    # crops per SyncNet call
# Below this fraction of generated frames with a detectable face, the landmark
# metrics describe a handful of frames: such a checkpoint is not chosen by them.
MIN_FACE_FOUND = 0.9
STRIP_COLUMNS = 6                  # frames shown in a strip
STRIP_TILE_PX = 160                # each frame's 328 crop, shown at this size
SIDE_BY_SIDE_MAX_HEIGHT = 720      # taller recordings are scaled down in the comparison video
LABEL_SCALE = 0.6
LABEL_MARGIN_PX = 8

# Metrics a checkpoint can be chosen by, and which direction is better.
SELECTION_METRICS: Dict[str, str] = {
    "lmd": "lower", "mouth_ssim": "higher", "mouth_psnr": "higher", "ssim": "higher", "psnr": "higher",
    "opening_correlation": "higher", "lse_d": "lower", "lse_c": "higher", "energy_correlation": "higher",
}
DEFAULT_SELECT_BY = "lmd"
LANDMARK_METRICS = ("lmd", "opening_correlation")
# A SyncNet that cannot find the sync point of the real frames (their LSE-C below
# this) has not learned sync: its scores of generated frames mean nothing. Real
# speech scored by a SyncNet with ~80 % held-out pair accuracy gives 0.2 or more.
MIN_INFORMATIVE_LSE_C = 0.05
SYNCNET_METRICS = ("lse_d", "lse_c")


# --------------------------------------------------------------------------- landmark tracks

class LandmarkTrack:
    """Face-mesh landmarks of one video, fed a frame at a time.

    A fresh detector per video: the detector tracks the face from frame to
    frame, so two videos scored with each other's tracking state would differ
    for that reason alone. Frames without a face get NaN rows.
    """

    def __init__(self, backend: str = "mediapipe"):
        self._detector = create_landmarker(backend)
        self._points = []
        self._count = self._detector.scheme.count

    def add(self, frame_bgr: np.ndarray) -> None:
        found = self._detector.detect(frame_bgr)
        if found is None:
            found = np.full((self._count, 2), np.nan, dtype=np.float32)
        self._points.append(np.asarray(found, dtype=np.float32))

    def result(self) -> np.ndarray:
        """(frames, points, 2) float32, NaN where no face was found; closes the detector."""
        self._detector.close()
        if not self._points:
            return np.zeros((0, self._count, 2), dtype=np.float32)
        return np.stack(self._points)


def detect_landmarks(frames: Iterable[np.ndarray], backend: str = "mediapipe") -> np.ndarray:
    """(frames, points, 2) landmarks of a frame sequence, NaN rows where no face was found."""
    track = LandmarkTrack(backend)
    for frame in frames:
        track.add(frame)
    return track.result()


# --------------------------------------------------------------------------- SyncNet embeddings

class SyncEmbedder:
    """Collects (frame crop, audio window) pairs and embeds them with a trained SyncNet.

    ``features`` are the (N, *per_frame) audio features the windows come from;
    ``add`` takes a frame, its crop box and the feature row of its instant.
    """

    def __init__(self, syncnet, features: np.ndarray, asr: str, device):
        self.syncnet, self.features, self.asr, self.device = syncnet, features, asr, device
        self._crops: List[np.ndarray] = []
        self._rows: List[int] = []
        self._faces: List[np.ndarray] = []
        self._voices: List[np.ndarray] = []

    def add(self, frame_bgr: np.ndarray, box, feature_row: int) -> None:
        self._crops.append(crop.cut_crop(frame_bgr, box))
        self._rows.append(int(feature_row))
        if len(self._crops) == SYNC_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._crops:
            return
        import torch

        from data_utils.dataset import inner_rgb_batch

        with torch.inference_mode():
            images = inner_rgb_batch(torch.from_numpy(np.stack(self._crops)).to(self.device))
            audio = torch.from_numpy(np.stack([model_audio_input(self.features, row, self.asr)
                                               for row in self._rows])).to(self.device)
            face, voice = self.syncnet.embeddings(images, audio)
        self._faces.append(face.float().cpu().numpy())
        self._voices.append(voice.float().cpu().numpy())
        self._crops, self._rows = [], []

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        """(face, audio) embeddings, (N, E) each, L2-normalised."""
        self._flush()
        return np.concatenate(self._faces), np.concatenate(self._voices)


def load_evaluation_syncnet(path: Optional[Path], asr: str, audio_shape, device):
    """The trained SyncNet for the sync scores and its held-out pair accuracy, or (None, None)."""
    from lipsync.core.checkpoints import load_syncnet, read_checkpoint

    if path is None or not Path(path).is_file():
        log.info("no SyncNet at %s: SyncNet distance/confidence are skipped "
                 "(train one: python train_syncnet.py --name NAME)", path)
        return None, None
    try:
        model, _ = load_syncnet(path, device, asr=asr, audio_shape=audio_shape)
    except UserError as error:
        log.warning("SyncNet distance/confidence skipped: %s", error)
        return None, None
    accuracy = (read_checkpoint(path).get("metrics") or {}).get("val_pair_accuracy")
    return model, accuracy


# --------------------------------------------------------------------------- pictures

def _label(image: np.ndarray, text: str) -> np.ndarray:
    import cv2

    height = image.shape[0]
    scale = LABEL_SCALE * max(1.0, height / 512)
    position = (LABEL_MARGIN_PX, LABEL_MARGIN_PX + int(20 * scale))
    for colour, thickness in (((0, 0, 0), 4), ((255, 255, 255), 1)):   # outlined: readable on any background
        cv2.putText(image, text, position, cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                    max(1, int(thickness * scale)), cv2.LINE_AA)
    return image


def side_by_side(left: np.ndarray, right: np.ndarray, left_label: str, right_label: str) -> np.ndarray:
    """Two frames next to each other, labelled, scaled to at most SIDE_BY_SIDE_MAX_HEIGHT."""
    import cv2

    pair = np.concatenate([_label(left.copy(), left_label), _label(right.copy(), right_label)], axis=1)
    if pair.shape[0] > SIDE_BY_SIDE_MAX_HEIGHT:
        scale = SIDE_BY_SIDE_MAX_HEIGHT / pair.shape[0]
        size = (int(round(pair.shape[1] * scale / 2)) * 2, SIDE_BY_SIDE_MAX_HEIGHT)
        pair = cv2.resize(pair, size, interpolation=cv2.INTER_AREA)
    return pair


def strip_tile(frame: np.ndarray, box) -> np.ndarray:
    """The frame's 328 model crop at STRIP_TILE_PX: the face from the nose down."""
    import cv2

    return cv2.resize(crop.cut_crop(frame, box), (STRIP_TILE_PX, STRIP_TILE_PX), interpolation=cv2.INTER_AREA)


def strip_picks(count: int, columns: int = STRIP_COLUMNS) -> List[int]:
    """Evenly spaced frame positions for a strip."""
    return sorted(set(np.linspace(0, count - 1, min(columns, count)).round().astype(int).tolist()))


def write_png(path: Path, image: np.ndarray) -> Path:
    import cv2

    from lipsync.core.atomic import write_bytes_atomic

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise UserError(f"could not encode {path.name} as PNG")
    write_bytes_atomic(path, encoded.tobytes())
    return path


def strip_row(tiles: Sequence[np.ndarray], label: str) -> np.ndarray:
    return _label(np.concatenate(list(tiles), axis=1), label)


# --------------------------------------------------------------------------- scoring one rendered clip

class ClipScorer:
    """Measures one generated clip frame by frame, against real frames when there are any.

    Holds only per-frame numbers, landmarks, the previous frame pair and a few
    strip tiles: a long clip is scored in constant image memory.
    """

    def __init__(self, crop_boxes: np.ndarray, mouth_boxes: Optional[np.ndarray] = None,
                 embedder: Optional[SyncEmbedder] = None, feature_rows: Optional[Sequence[int]] = None,
                 writer=None, labels: Tuple[str, str] = ("truth", "generated"), picks: Sequence[int] = ()):
        self.crop_boxes, self.mouth_boxes = crop_boxes, mouth_boxes
        self.embedder, self.feature_rows = embedder, feature_rows
        self.writer, self.labels, self.picks = writer, labels, set(picks)
        self.track = LandmarkTrack()
        self.quality: Dict[str, List[float]] = {"psnr": [], "ssim": [], "mouth_psnr": [], "mouth_ssim": []}
        self.changes: List[float] = []
        self.tiles: List[np.ndarray] = []
        self.real_tiles: List[np.ndarray] = []
        self._previous: Optional[np.ndarray] = None
        self.count = 0

    def add(self, generated: np.ndarray, real: Optional[np.ndarray] = None) -> None:
        k = self.count
        box = self.crop_boxes[k]
        if real is not None and self.mouth_boxes is not None:
            mouth = self.mouth_boxes[k]
            self.quality["psnr"].append(metrics.psnr(generated, real))
            self.quality["ssim"].append(metrics.ssim(generated, real))
            self.quality["mouth_psnr"].append(metrics.psnr(generated, real, mouth))
            self.quality["mouth_ssim"].append(metrics.ssim(generated, real, mouth))
            if self._previous is not None:
                self.changes.append(metrics.mouth_change(self._previous, generated, mouth))
        self._previous = generated
        self.track.add(generated)
        if self.embedder is not None:
            self.embedder.add(generated, box, self.feature_rows[k])
        if self.writer is not None:
            left = real if real is not None else generated
            self.writer.write(side_by_side(left, generated, *self.labels))
        if k in self.picks:
            self.tiles.append(strip_tile(generated, box))
            if real is not None:
                self.real_tiles.append(strip_tile(real, box))
        self.count += 1

    def finish(self) -> Dict:
        """Image and stability numbers, the landmarks, and the SyncNet embeddings (if any)."""
        landmarks = self.track.result()
        scores = {key: float(np.mean(values)) for key, values in self.quality.items() if values}
        embeddings = self.embedder.result() if self.embedder is not None else None
        return {"scores": scores, "landmarks": landmarks, "changes": self.changes, "embeddings": embeddings}


# --------------------------------------------------------------------------- options

@dataclass
class EvalOptions:
    """What to evaluate and how; evaluate_328.py fills it from its options."""
    name: Optional[str] = None
    dataset_dir: Optional[Path] = None
    checkpoint_dir: Optional[Path] = None      # default checkpoint/NAME
    checkpoint: Optional[str] = None           # None: every numbered epoch; else an epoch, best, latest or a path
    audio_path: Optional[Path] = None          # new audio instead of the held-out tail
    truth_video: Optional[Path] = None         # the person really speaking audio_path, if filmed
    start_frame: int = 0                       # recording frame new audio starts from
    val_fraction: Optional[float] = None       # None: what the run was trained with
    select_by: str = DEFAULT_SELECT_BY
    select: bool = True                        # write best.pth when every checkpoint was scored
    syncnet_checkpoint: Optional[Path] = None  # default checkpoint/NAME/syncnet/best.pth
    device: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    # lipsync.render.options.RenderOptions fields (silence_hold, mouth_scale, colour_match, ...): score the
    # video exactly as inference_328.py would render it with the same options
    render_options: Dict = dataclasses.field(default_factory=dict)
    output_dir: Optional[Path] = None          # default checkpoint/NAME/evaluation/<heldout | audio_STEM>
    write_video: bool = True
    force: bool = False                        # re-score checkpoints whose scores are cached
    ave_checkpoint: Optional[Path] = None
    hubert_model: Optional[str] = None
    wenet_model: Optional[Path] = None
    dataset_root: Path = DATASET_ROOT
    checkpoint_root: Path = CHECKPOINT_ROOT
    show_progress: bool = True

    def check(self) -> "EvalOptions":
        if self.name is None and self.dataset_dir is None:
            raise UserError("say which person to evaluate: --name NAME (dataset/NAME, checkpoint/NAME)")
        if self.select_by not in SELECTION_METRICS:
            raise UserError(f"--select_by {self.select_by!r} is not a metric — choose one of: "
                            f"{', '.join(SELECTION_METRICS)}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise UserError(f"--val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be at least 1, got {self.batch_size}")
        if self.truth_video is not None and self.audio_path is None:
            raise UserError("--truth_video is the person speaking --audio_path: give --audio_path too")
        return self

    @property
    def layout(self) -> DatasetLayout:
        if self.dataset_dir is not None:
            return DatasetLayout(Path(self.dataset_dir))
        return DatasetLayout.for_name(self.name, self.dataset_root)

    @property
    def run_dir(self) -> Path:
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir)
        return checkpoint_dir(self.name or self.layout.name, self.checkpoint_root)


# --------------------------------------------------------------------------- helpers

def describe_machine(device) -> str:
    """One line naming the machine the scores were made on (README tables need it)."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, torch {torch.__version__}"
    if str(device).startswith("cuda"):
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


def finite_or_none(value):
    """JSON has no NaN: not-a-number and infinities become null."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def checkpoint_stamp(path: Path) -> Dict:
    stat = Path(path).stat()
    return {"file": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def checkpoint_epoch(path: Path) -> int:
    from lipsync.core.checkpoints import read_checkpoint

    if Path(path).stem.isdigit():
        return int(Path(path).stem)
    return int(read_checkpoint(path).get("epoch", 0))


def trained_val_fraction(run_dir: Path) -> Optional[float]:
    """The --val_fraction the run in ``run_dir`` was trained with (from latest.pth), if recorded."""
    from lipsync.core.checkpoints import LATEST, read_checkpoint

    latest = Path(run_dir) / LATEST
    if not latest.is_file():
        return None
    try:
        args = read_checkpoint(latest).get("args") or {}
    except UserError:
        return None
    value = args.get("val_fraction")
    return float(value) if value else None


def checkpoints_to_score(options: EvalOptions) -> Tuple[List[Path], bool]:
    """(checkpoint files, whether that is every numbered epoch of the run)."""
    from lipsync.core.checkpoints import numbered_epochs, resolve_checkpoint

    run_dir = options.run_dir
    if options.checkpoint is not None:
        return [resolve_checkpoint(run_dir, options.checkpoint)], False
    epochs = numbered_epochs(run_dir)
    if not epochs:
        name = options.name or options.layout.name
        where = f"{run_dir} does not exist" if not run_dir.is_dir() else f"{run_dir} holds no 10.pth, 20.pth, ..."
        raise UserError(f"nothing to evaluate: {where} — train first: python train_328.py --name {name}, "
                        "or pick a file with --checkpoint PATH")
    return list(epochs.values()), True


def check_processed(layout: DatasetLayout) -> None:
    from data_utils.dataset import process_command

    if not layout.root.is_dir():
        raise UserError(f"{layout.root} does not exist — evaluation compares with the processed recording; "
                        f"run: {process_command(layout)}")
    for needed in (layout.crop_boxes, layout.frames_dir, layout.audio_wav):
        if not needed.exists():
            raise UserError(f"{layout.root} is not processed (no {needed.name}) — run: {process_command(layout)}")


def read_frame(layout: DatasetLayout, index: int) -> np.ndarray:
    import cv2

    path = layout.frame_path(int(index))
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        from data_utils.dataset import process_command

        raise UserError(f"{path} is missing or unreadable — run again: {process_command(layout)}")
    return frame


def check_truth_video(path: Path, frame_size: Tuple[int, int]) -> None:
    """A truth video must be 25 fps and framed like the recording (frame k beside generated frame k)."""
    from data_utils.ffmpeg import probe

    if not path.is_file():
        raise UserError(f"--truth_video {path} does not exist — check the path")
    info = probe(path)
    if not info.has_video:
        raise UserError(f"--truth_video {path} has no video stream")
    if info.average_fps is None or abs(info.average_fps - FPS) > 0.01:
        raise UserError(f"--truth_video {path} runs at {info.average_fps} fps, not {FPS} — convert it "
                        f"(ffmpeg -i {path.name} -vf fps={FPS} out.mp4) so frame k matches generated frame k")
    if tuple(info.display_size) != tuple(frame_size):
        raise UserError(f"--truth_video {path} is {info.display_size[0]}x{info.display_size[1]} but the recording is "
                        f"{frame_size[0]}x{frame_size[1]} — the truth must be framed like the recording")


def recording_samples(layout: DatasetLayout, frame_count: int) -> np.ndarray:
    """aud.wav as exactly frame_count x 640 samples (preprocessing already made it so)."""
    from data_utils.audio import load_audio

    samples = load_audio(layout.audio_wav)
    fitted = np.zeros(frame_count * SAMPLES_PER_FRAME, dtype=np.float32)
    fitted[:min(len(samples), len(fitted))] = samples[:len(fitted)]
    return fitted


def preroll_frames(asr: str, first_frame: int) -> int:
    """Frames rendered before the first scored one, so its audio window sees the real
    audio before it (window + the encoder's context) rather than silence."""
    from lipsync.render.featurizer import FEATURE_CONTEXT_FRAMES

    return int(min(first_frame, WINDOW_BEFORE + FEATURE_CONTEXT_FRAMES[asr]))


def _progress(iterable, total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, unit="frame", disable=not enabled,
                dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------- the reference: real frames

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


def video_frames(path: Path, count: int) -> Iterator[np.ndarray]:
    """The first ``count`` decoded BGR frames of ``path``; fewer is a UserError."""
    from data_utils.ffmpeg import probe
    from data_utils.video import FrameReader

    reader = FrameReader(probe(path))
    produced = 0
    try:
        for frame in reader:
            if produced == count:
                break
            produced += 1
            yield frame
    finally:
        reader.close()
    if produced < count:
        raise UserError(f"--truth_video {path} has {produced} frames but the audio needs {count} — "
                        "give the video of exactly this audio (25 fps)")


def measure_recording(layout: DatasetLayout, reference: Reference, syncnet, asr: str, device,
                      show_progress: bool) -> Reference:
    """The real frames' landmarks, mouth boxes and own scores (the table's "recording" row).

    Two passes over the JPEGs: the mouth boxes, which the frame-to-frame change
    is measured in, come from the landmarks of the first.
    """
    track = LandmarkTrack()
    embedder = SyncEmbedder(syncnet, reference.features, asr, device) \
        if syncnet is not None and reference.features is not None else None
    shape = None
    for k, frame in enumerate(_progress(reference.real_frames(layout), len(reference.frames), "truth",
                                        show_progress)):
        shape = frame.shape
        track.add(frame)
        if embedder is not None:
            embedder.add(frame, reference.crop_boxes[k], reference.feature_rows[k])
    landmarks = track.result()
    found = np.isfinite(landmarks).all(axis=(1, 2))
    source = reference.truth_video or f"the held-out frames of {layout.root}"
    if not found.any():
        raise UserError(f"no face found in any of the {len(landmarks)} frames of {source} "
                        "— evaluate on another stretch (--val_fraction) or check the video")
    if not found.all():
        # Those frames keep NaN landmarks (no lip measure there); their mouth box,
        # needed for the picture measures, comes from the neighbouring frames.
        log.warning("no face found in %d of the %d frames of %s: lip measures skip them",
                    int((~found).sum()), len(found), source)
    mouth_boxes = metrics.mouth_boxes(interpolate_missing(landmarks, found), shape)
    changes, previous = [], None
    for k, frame in enumerate(reference.real_frames(layout)):
        if previous is not None:
            changes.append(metrics.mouth_change(previous, frame, mouth_boxes[k]))
        previous = frame
    opening = metrics.mouth_opening(landmarks)
    scores = {"lmd": 0.0, "opening_correlation": 1.0, "opening_offset": 0, "opening_best_correlation": 1.0,
              "opening_ratio": 1.0, "face_found": float(found.mean()), "mouth_opening": float(np.nanmean(opening))}
    scores.update(metrics.stability(changes, changes))
    scores.update(metrics.opening_energy_scores(opening, reference.energy))
    if embedder is not None:
        scores.update(metrics.sync_confidence(*embedder.result()))
    return dataclasses.replace(reference, landmarks=landmarks, mouth_boxes=mouth_boxes, real_changes=changes,
                               scores=scores)


# --------------------------------------------------------------------------- one checkpoint

@dataclass
class CheckpointResult:
    path: Path
    epoch: int
    scores: Dict
    side_by_side: Optional[Path] = None
    strip: Optional[Path] = None
    reused: bool = False

    def as_dict(self) -> Dict:
        return {"checkpoint": str(self.path), "epoch": self.epoch, "scores": self.scores,
                "side_by_side": str(self.side_by_side) if self.side_by_side else None,
                "strip": str(self.strip) if self.strip else None, "reused": self.reused}


class Evaluation:
    """One evaluate_328.py run: a person, some checkpoints, the held-out tail or new audio."""

    def __init__(self, options: EvalOptions):
        from lipsync.core.devices import device_name

        self.options = options.check()
        self.layout = options.layout
        check_processed(self.layout)
        self.run_dir = options.run_dir
        self.checkpoints, self.complete = checkpoints_to_score(options)
        self.device = device_name(options.device)
        self.boxes = np.load(self.layout.crop_boxes)
        self.frame_count = len(self.boxes)
        self.heldout = options.audio_path is None
        self.has_truth = self.heldout or options.truth_video is not None
        if self.heldout:
            self.output_dir = Path(options.output_dir or self.run_dir / EVALUATION_SUBDIR / HELDOUT_SUBDIR)
        else:
            self.output_dir = Path(options.output_dir or
                                   self.run_dir / EVALUATION_SUBDIR / f"audio_{Path(options.audio_path).stem}")
        self.syncnet_path = Path(options.syncnet_checkpoint) if options.syncnet_checkpoint else \
            self.run_dir / "syncnet" / "best.pth"
        self.val_fraction = None
        self.reference: Optional[Reference] = None
        self.syncnet = None
        self.syncnet_accuracy: Optional[float] = None
        self.asr: Optional[str] = None

    # ------------------------------------------------------------------ setup that needs the first model
    def _renderer(self, path: Path):
        from lipsync.render.api import load_renderer

        options = self.options
        return load_renderer(dataset_dir=self.layout.root, checkpoint=str(path), device=self.device,
                             batch_size=options.batch_size, ave_checkpoint=options.ave_checkpoint,
                             hubert_model=options.hubert_model, wenet_model=options.wenet_model,
                             checkpoint_root=options.checkpoint_root, dataset_root=options.dataset_root,
                             **options.render_options)

    def _prepare(self, renderer) -> None:
        """SyncNet and the reference, once, from the first checkpoint's encoder and features."""
        if self.reference is not None:
            return
        asr = renderer.asr
        self.asr = asr
        if self.heldout:
            self.reference = self._heldout_reference(asr)
        else:
            self.reference = self._audio_reference(renderer)
        audio_shape = None
        if self.reference.features is not None:
            from data_utils.timebase import FEATURE_SPECS

            audio_shape = FEATURE_SPECS[asr].window_shape(self.reference.features.shape[1:])
        self.syncnet, self.syncnet_accuracy = load_evaluation_syncnet(self.syncnet_path, asr, audio_shape,
                                                                      self.device)
        if self.options.select_by in SYNCNET_METRICS and self.syncnet is None and self.complete \
                and self.options.select:
            raise UserError(f"--select_by {self.options.select_by} needs a trained SyncNet at {self.syncnet_path} — "
                            f"train it (python train_syncnet.py --name {self.layout.name}) or choose --select_by lmd")
        if self.has_truth:
            self.reference = measure_recording(self.layout, self.reference, self.syncnet, asr, self.device,
                                               self.options.show_progress)
            real_confidence = self.reference.scores.get("lse_c")
            if real_confidence is not None and real_confidence < MIN_INFORMATIVE_LSE_C:
                log.warning("the SyncNet %s finds no sync point even in the real frames (LSE-C %.3f < %.2f): it has "
                            "not learned sync (too little data or training), so LSE-D/LSE-C say nothing here",
                            self.syncnet_path, real_confidence, MIN_INFORMATIVE_LSE_C)

    def _heldout_reference(self, asr: str) -> Reference:
        from data_utils.dataset import split_frames

        trained = trained_val_fraction(self.run_dir)
        fraction = self.options.val_fraction or trained or DEFAULT_VAL_FRACTION
        if trained is not None and fraction > trained + 1e-9:
            log.warning("--val_fraction %g is larger than the %g the run was trained with: the first "
                        "held-out frames were seen in training and score too well", fraction, trained)
        self.val_fraction = fraction
        _, tail = split_frames(self.frame_count, fraction)
        if len(tail) < MIN_EVAL_FRAMES:
            raise UserError(f"the held-out tail of {self.layout.root} has only {len(tail)} frames "
                            f"(--val_fraction {fraction:g} of {self.frame_count}) — at least {MIN_EVAL_FRAMES} "
                            "are needed: give a larger --val_fraction (and train with the same one)")
        samples = recording_samples(self.layout, self.frame_count)
        features = None
        feature_file = self.layout.features(asr)
        if feature_file.is_file():
            features = np.load(feature_file).astype(np.float32)
            if len(features) != self.frame_count:
                log.warning("%s has %d rows for %d frames: SyncNet scores skipped", feature_file,
                            len(features), self.frame_count)
                features = None
        scored = samples[tail[0] * SAMPLES_PER_FRAME:(tail[-1] + 1) * SAMPLES_PER_FRAME]
        return Reference(frames=tail, crop_boxes=self.boxes[tail], samples=scored,
                         energy=metrics.audio_energy(samples, self.frame_count)[tail],
                         features=features, feature_rows=tail)

    def _audio_reference(self, renderer) -> Reference:
        from data_utils.audio import load_audio
        from lipsync.render.frames import pingpong_indices

        samples = load_audio(self.options.audio_path)
        count = frame_count_for_samples(len(samples))
        start = renderer.check_start_frame(self.options.start_frame)
        frames = pingpong_indices(start, count, self.frame_count)
        features = renderer.featurizer(samples, count)
        truth = self.options.truth_video
        if truth is not None:
            check_truth_video(Path(truth), renderer.frame_size)
        return Reference(frames=frames, crop_boxes=self.boxes[frames], samples=samples,
                         energy=metrics.audio_energy(samples, count), features=np.asarray(features, np.float32),
                         feature_rows=np.arange(count), truth_video=Path(truth) if truth else None)

    # ------------------------------------------------------------------ caching
    def _cache_key(self, path: Path) -> Dict:
        reference = self.reference
        key = {"version": SCORES_VERSION, "checkpoint": checkpoint_stamp(path),
               "render_options": dict(sorted(self.options.render_options.items())),
               "frames": [int(reference.frames[0]), int(reference.frames[-1]), int(len(reference.frames))],
               "syncnet": checkpoint_stamp(self.syncnet_path) if self.syncnet is not None else None}
        if not self.heldout:
            audio = Path(self.options.audio_path)
            key["audio"] = {"file": str(audio.resolve()), **checkpoint_stamp(audio)}
            key["start_frame"] = int(self.options.start_frame)
        if reference.truth_video is not None:
            key["truth_video"] = {"file": str(reference.truth_video.resolve()), **checkpoint_stamp(reference.truth_video)}
        return key

    def _cached(self, path: Path, epoch: int) -> Optional[CheckpointResult]:
        import json

        file = self.output_dir / f"epoch_{epoch}.json"
        if self.options.force or not file.is_file():
            return None
        try:
            stored = json.loads(file.read_text())
        except (OSError, ValueError):
            return None
        if stored.get("key") != finite_or_none(self._cache_key(path)):
            return None
        result = stored["result"]
        if self.options.write_video and not (result.get("side_by_side") and Path(result["side_by_side"]).is_file()):
            return None
        scores = {key: (float("nan") if value is None else value) for key, value in result["scores"].items()}
        return CheckpointResult(path, epoch, scores,
                                Path(result["side_by_side"]) if result.get("side_by_side") else None,
                                Path(result["strip"]) if result.get("strip") else None, reused=True)

    # ------------------------------------------------------------------ scoring
    def score_checkpoint(self, path: Path) -> CheckpointResult:
        epoch = checkpoint_epoch(path)
        renderer = self._renderer(path)
        try:
            self._prepare(renderer)
            if renderer.asr != self.asr:
                raise UserError(f"{path} was trained with --asr {renderer.asr} but {self.checkpoints[0]} "
                                f"with --asr {self.asr} — evaluate them separately (--checkpoint)")
            cached = self._cached(path, epoch)
            if cached is not None:
                log.info("epoch %d: scores of an unchanged checkpoint reused from %s", epoch, self.output_dir)
                return cached
            return self._render_and_score(renderer, path, epoch)
        finally:
            renderer.close()

    def _generated_frames(self, renderer) -> Iterator[np.ndarray]:
        from lipsync.render.api import render

        reference = self.reference
        if not self.heldout:
            yield from render(renderer, reference.samples, int(reference.frames[0]))
            return
        first = int(reference.frames[0])
        preroll = preroll_frames(renderer.asr, first)
        samples = recording_samples(self.layout, self.frame_count)[(first - preroll) * SAMPLES_PER_FRAME:]
        for k, frame in enumerate(render(renderer, samples, first - preroll)):
            if k >= preroll:
                yield frame

    def _render_and_score(self, renderer, path: Path, epoch: int) -> CheckpointResult:
        from lipsync.render.video_writer import VideoWriter, write_wav

        reference = self.reference
        count = len(reference.frames)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        embedder = SyncEmbedder(self.syncnet, reference.features, self.asr, self.device) \
            if self.syncnet is not None and reference.features is not None else None
        labels = ("truth", f"epoch {epoch}") if self.has_truth else ("recording", f"epoch {epoch}")
        video_path = self.output_dir / f"epoch_{epoch}_side_by_side.mp4"
        audio_file = self.output_dir / ".scored_audio.wav"
        writer = None
        if self.options.write_video:
            write_wav(audio_file, reference.samples)
            width, height = renderer.frame_size
            size = side_by_side(np.zeros((height, width, 3), np.uint8), np.zeros((height, width, 3), np.uint8),
                                "", "").shape
            writer = VideoWriter(video_path, size[1], size[0], audio=audio_file)
        scorer = ClipScorer(reference.crop_boxes, reference.mouth_boxes, embedder, reference.feature_rows,
                            writer, labels, strip_picks(count))
        frames = _progress(self._generated_frames(renderer), count, f"epoch {epoch}", self.options.show_progress)
        real_frames = reference.real_frames(self.layout) if self.has_truth else None
        try:
            for generated in frames:
                scorer.add(generated, next(real_frames) if real_frames is not None else None)
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            audio_file.unlink(missing_ok=True)
        if scorer.count != count:
            raise RuntimeError(f"rendered {scorer.count} frames for {count} scored frames")
        measured = scorer.finish()
        scores = self._summarise(measured)
        strip = self._write_strip(epoch, scorer)
        result = CheckpointResult(path, epoch, scores, video_path if writer is not None else None, strip)
        write_json_atomic(self.output_dir / f"epoch_{epoch}.json",
                          finite_or_none({"key": self._cache_key(path), "result": result.as_dict()}))
        return result

    def _summarise(self, measured: Dict) -> Dict:
        reference = self.reference
        scores = dict(measured["scores"])
        landmarks = measured["landmarks"]
        opening = metrics.mouth_opening(landmarks)
        found = np.isfinite(opening)
        scores["face_found"] = float(found.mean())
        scores["mouth_opening"] = float(np.nanmean(opening)) if found.any() else float("nan")
        if self.has_truth:
            scores.update(metrics.lip_sync_scores(landmarks, reference.landmarks))
            scores.update(metrics.stability(measured["changes"], reference.real_changes))
        scores.update(metrics.opening_energy_scores(opening, reference.energy))
        if measured["embeddings"] is not None:
            scores.update(metrics.sync_confidence(*measured["embeddings"]))
        return scores

    def _write_strip(self, epoch: int, scorer: ClipScorer) -> Path:
        rows = []
        if scorer.real_tiles:
            rows.append(strip_row(scorer.real_tiles, "truth"))
        rows.append(strip_row(scorer.tiles, f"epoch {epoch}"))
        return write_png(self.output_dir / f"epoch_{epoch}_strip.png", np.concatenate(rows, axis=0))

    # ------------------------------------------------------------------ the whole run
    def run(self) -> Dict:
        results = []
        for path in self.checkpoints:
            result = self.score_checkpoint(path)
            log.info("epoch %d: %s", result.epoch, format_scores(result.scores, self.has_truth))
            results.append(result)
        best = None
        if self.options.select and self.complete:
            best = choose_best(results, self.options.select_by)
            if best is not None:
                write_best(self.run_dir, best, self.options.select_by, results, self.describe())
            elif self.has_truth:
                log.warning("no checkpoint has a %s score: best.pth left as it was", self.options.select_by)
            else:
                log.info("new audio without --truth_video has no %s: best.pth left as it was "
                         "(choose with --select_by lse_c or energy_correlation)", self.options.select_by)
        report = self.report(results, best)
        write_json_atomic(self.output_dir / "scores.json", finite_or_none(report))
        table = format_table(report)
        write_text_atomic(self.output_dir / "table.md", table + "\n")
        combined = self._combined_strip(results)
        report["table"] = table
        report["strip"] = str(combined) if combined else None
        return report

    def describe(self) -> Dict:
        reference = self.reference
        return {"name": self.layout.name, "dataset": str(self.layout.root), "run": str(self.run_dir),
                "mode": "heldout" if self.heldout else "audio",
                "audio": str(self.options.audio_path) if not self.heldout else str(self.layout.audio_wav),
                "truth": ("held-out tail" if self.heldout else
                          str(self.options.truth_video) if self.options.truth_video else None),
                "frames": {"first": int(reference.frames[0]), "last": int(reference.frames[-1]),
                           "count": int(len(reference.frames))},
                "val_fraction": self.val_fraction, "syncnet": str(self.syncnet_path) if self.syncnet else None,
                "syncnet_pair_accuracy": self.syncnet_accuracy,
                "render_options": dict(self.options.render_options),
                "device": str(self.device), "machine": describe_machine(self.device)}

    def report(self, results: List[CheckpointResult], best: Optional[CheckpointResult]) -> Dict:
        report = self.describe()
        report.update({
            "reference": self.reference.scores,
            "checkpoints": [result.as_dict() for result in results],
            "select_by": self.options.select_by,
            "best": ({"epoch": best.epoch, "checkpoint": str(best.path), "metric": self.options.select_by,
                      "value": best.scores[self.options.select_by],
                      "better": SELECTION_METRICS[self.options.select_by],
                      "path": str(self.run_dir / "best.pth")} if best is not None else None),
            "output_dir": str(self.output_dir),
        })
        return report

    def _combined_strip(self, results: List[CheckpointResult]) -> Optional[Path]:
        import cv2

        rows = []
        for index, result in enumerate(results):
            if result.strip is None or not Path(result.strip).is_file():
                continue
            image = cv2.imread(str(result.strip))
            if image is None:
                continue
            if self.has_truth:
                half = image.shape[0] // 2
                if not rows:
                    rows.append(image[:half])
                rows.append(image[half:])
            else:
                rows.append(image)
        if not rows or len({row.shape[1] for row in rows}) != 1:
            return None
        return write_png(self.output_dir / "strip.png", np.concatenate(rows, axis=0))


# --------------------------------------------------------------------------- choosing and best.pth

def choose_best(results: Sequence[CheckpointResult], metric: str) -> Optional[CheckpointResult]:
    """The checkpoint with the best ``metric``; ties go to the later epoch.

    Landmark metrics only count where the face was found in at least
    MIN_FACE_FOUND of the generated frames (unless none reaches that).
    """
    lower = SELECTION_METRICS[metric] == "lower"
    candidates = [result for result in results
                  if result.scores.get(metric) is not None and math.isfinite(result.scores[metric])]
    if metric in LANDMARK_METRICS:
        reliable = [result for result in candidates if result.scores.get("face_found", 0) >= MIN_FACE_FOUND]
        candidates = reliable or candidates
    if not candidates:
        return None
    return min(candidates, key=lambda result: (result.scores[metric] if lower else -result.scores[metric],
                                               -result.epoch))


def write_best(run_dir: Path, best: CheckpointResult, metric: str, results: Sequence[CheckpointResult],
               described: Dict) -> Path:
    """checkpoint/NAME/best.pth: the winner's weights and config plus why it won (atomic)."""
    from lipsync.core.atomic import save_torch_atomic
    from lipsync.core.checkpoints import BEST, read_checkpoint

    state = read_checkpoint(best.path)
    state["selection"] = finite_or_none({
        "by": "evaluate_328.py", "metric": metric, "better": SELECTION_METRICS[metric],
        "value": best.scores[metric], "epoch": best.epoch, "source": Path(best.path).name,
        "frames": described["frames"], "mode": described["mode"],
        "scores": {str(result.epoch): result.scores for result in results},
    })
    path = Path(run_dir) / BEST
    save_torch_atomic(path, state)
    log.info("best: epoch %d by %s = %.4f (%s is better) -> %s", best.epoch, metric, best.scores[metric],
             SELECTION_METRICS[metric], path)
    return path


# --------------------------------------------------------------------------- table

# (key, heading, format) of the table columns; held-out and new-audio runs show different ones.
HELDOUT_COLUMNS = (
    ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("mouth_psnr", "mouth PSNR", "{:.2f}"),
    ("mouth_ssim", "mouth SSIM", "{:.3f}"), ("lmd", "LMD", "{:.4f}"),
    ("opening_correlation", "open r", "{:.2f}"), ("opening_offset", "offset", "{:+d}"),
    ("opening_ratio", "open ratio", "{:.2f}"), ("lse_d", "LSE-D", "{:.3f}"), ("lse_c", "LSE-C", "{:.3f}"),
    ("change_ratio", "change ratio", "{:.2f}"), ("energy_correlation", "energy r", "{:.2f}"),
)
AUDIO_COLUMNS = (
    ("lse_d", "LSE-D", "{:.3f}"), ("lse_c", "LSE-C", "{:.3f}"), ("sync_offset", "sync offset", "{:+d}"),
    ("energy_correlation", "energy r", "{:.2f}"), ("energy_offset", "energy offset", "{:+d}"),
    ("mouth_opening", "mean opening", "{:.3f}"), ("face_found", "face found", "{:.0%}"),
)


def _cell(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if "d}" in pattern:
        value = int(value)
    return pattern.format(value)


def format_scores(scores: Dict, heldout: bool = True) -> str:
    columns = HELDOUT_COLUMNS if heldout else AUDIO_COLUMNS
    return "  ".join(f"{heading} {_cell(scores.get(key), pattern)}" for key, heading, pattern in columns)


def format_table(report: Dict) -> str:
    """A markdown table: one row per checkpoint (the chosen one starred), the recording first."""
    heldout = report["mode"] == "heldout"
    has_truth = report.get("truth") is not None
    columns = HELDOUT_COLUMNS if has_truth else AUDIO_COLUMNS
    lines = ["| checkpoint | " + " | ".join(heading for _, heading, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    if has_truth and report.get("reference"):
        reference = report["reference"]
        cells = ["—" if key in ("psnr", "ssim", "mouth_psnr", "mouth_ssim") else _cell(reference.get(key), pattern)
                 for key, _, pattern in columns]
        lines.append("| recording (truth) | " + " | ".join(cells) + " |")
    best_epoch = report["best"]["epoch"] if report.get("best") else None
    for entry in report["checkpoints"]:
        name = f"{entry['epoch']}" + (" *" if entry["epoch"] == best_epoch else "")
        lines.append(f"| {name} | " + " | ".join(_cell(entry["scores"].get(key), pattern)
                                                for key, _, pattern in columns) + " |")
    frames = report["frames"]
    length = f"{frames['count']} frames, {frames['count'] / FPS:.1f} s"
    if heldout:
        where = f"held-out tail, frames {frames['first']}-{frames['last']} ({length})"
    elif has_truth:
        where = f"{report['audio']} ({length}) against {report['truth']}"
    else:
        where = f"{report['audio']} ({length}), no ground truth"
    lines.append("")
    lines.append(f"{report['name']}: {where}; machine: {report['machine']}")
    if report.get("best"):
        best = report["best"]
        lines.append(f"* best: epoch {best['epoch']} by {best['metric']} = {best['value']:.4f} "
                     f"({best['better']} is better) -> {best['path']}")
    if report.get("syncnet") is None:
        lines.append("LSE-D/LSE-C: n/a without a trained SyncNet (python train_syncnet.py --name NAME)")
    else:
        accuracy = report.get("syncnet_pair_accuracy")
        note = f"LSE-D/LSE-C by {report['syncnet']}"
        if accuracy is not None:
            note += f" (held-out pair accuracy {accuracy:.0%})"
        real = (report.get("reference") or {}).get("lse_c")
        if real is not None and real < MIN_INFORMATIVE_LSE_C:
            note += f"; it finds no sync point in the real frames (LSE-C {real:.3f}), so its scores are not informative"
        lines.append(note)
    return "\n".join(lines)


def evaluate(options: EvalOptions) -> Dict:
    """Score the checkpoints ``options`` names; returns the report (also written as JSON and a table)."""
    return Evaluation(options).run()
