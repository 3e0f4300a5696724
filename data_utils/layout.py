"""Names of everything under dataset/NAME/ and checkpoint/NAME/ (the contract of
../shared/TRAINING_GUIDE.md), defined once."""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from data_utils.timebase import FEATURE_SPECS
from lipsync.core.commands import shell_command
from lipsync.core.errors import UserError

DATASET_ROOT = Path("dataset")
CHECKPOINT_ROOT = Path("checkpoint")
RESULT_ROOT = Path("result")


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one person's processed dataset folder."""
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))     # a str from a caller works too

    @classmethod
    def for_video(cls, video_path, output_dir=None) -> "DatasetLayout":
        video_path = Path(video_path)
        return cls(Path(output_dir) if output_dir is not None else video_path.parent)

    @classmethod
    def for_name(cls, name: str, dataset_root=DATASET_ROOT) -> "DatasetLayout":
        return cls(Path(dataset_root) / name)

    @property
    def name(self) -> str:
        return self.root.name

    def source_video(self) -> Path:
        return self.root / f"{self.name}.mp4"

    def video_25fps(self, source: Path) -> Path:
        return self.root / f"{Path(source).stem}_25fps.mp4"

    @property
    def audio_wav(self) -> Path:           # 16 kHz mono PCM16, exactly frames x 640 samples
        return self.root / "aud.wav"

    @property
    def frames_dir(self) -> Path:          # 0.jpg, 1.jpg, ... every 25 fps frame
        return self.root / "full_body_img"

    @property
    def landmarks_dir(self) -> Path:       # 0.lms, 1.lms, ... one "x y" line per landmark
        return self.root / "landmarks"

    @property
    def landmarks_array(self) -> Path:     # (N, points, 2) float32, same values as landmarks/
        return self.root / "landmarks.npy"

    @property
    def face_found(self) -> Path:          # (N,) bool: False where landmarks were interpolated
        return self.root / "face_found.npy"

    @property
    def crop_boxes(self) -> Path:          # (N, 4) int32 smoothed (x0, y0, x1, y1), data_utils/crop.py
        return self.root / "crop_boxes.npy"

    @property
    def report(self) -> Path:              # process_report.json: counts, missing faces, timings
        return self.root / "process_report.json"

    @property
    def state(self) -> Path:               # which preprocessing stages are complete, and for what input
        return self.root / ".process_state.json"

    def frame_path(self, index: int) -> Path:
        return self.frames_dir / f"{index}.jpg"

    def landmark_path(self, index: int) -> Path:
        return self.landmarks_dir / f"{index}.lms"

    def features(self, asr: str) -> Path:
        return self.root / FEATURE_SPECS[asr].filename

    @property
    def ave_encoder(self) -> Path:         # the person's own audio-visual encoder (AVE) weights
        return self.root / "ave.pth"

    @property
    def crop_cache(self) -> Path:          # uint8 memory-mapped 328 crops for training
        return self.root / "crops_328.u8"

    def processed_outputs(self) -> Sequence[Path]:
        """What every later stage reads: without these the folder is not a processed dataset."""
        return (self.crop_boxes, self.frames_dir, self.audio_wav)

    def is_processed(self) -> bool:
        return all(path.exists() for path in self.processed_outputs())

    def require_processed(self, why: str = "", asr: Optional[str] = None, needed: Optional[Sequence[Path]] = None):
        """Raise a UserError naming the preprocessing command unless the folder is processed.

        ``why`` completes "does not exist — " for a missing folder (what the caller wanted it for);
        ``needed`` narrows the outputs checked (default: processed_outputs()).
        """
        if not self.root.is_dir():
            reason = why or f"put the recording at {self.source_video()} and"
            raise UserError(f"{self.root} does not exist — {reason} run: {process_command(self, asr)}")
        for path in (needed if needed is not None else self.processed_outputs()):
            if not path.exists():
                raise UserError(f"{self.root} is not processed (no {path.name}) — run: {process_command(self, asr)}")
        return self


def process_command(layout: DatasetLayout, asr: Optional[str] = None) -> str:
    """The preprocessing command that (re)makes ``layout``'s outputs: every error that needs it prints this."""
    return shell_command("python", "data_utils/process.py", "--input_video", layout.source_video(),
                         "--output_dir", layout.root, *(("--asr", asr) if asr else ()))


def chosen_dataset_dir(name: Optional[str], dataset_dir, purpose: str) -> Path:
    """The processed recording a command line names: dataset/NAME (--name) or --dataset_dir, exactly one of
    them. ``purpose`` completes "say which person to ..." when neither is given."""
    if not name and not dataset_dir:
        raise UserError(f"say which person to {purpose}: --name NAME (dataset/NAME) or --dataset_dir DIR")
    if name and dataset_dir:
        raise UserError("give either --name or --dataset_dir, not both")
    return Path(dataset_dir) if dataset_dir else DatasetLayout.for_name(name).root


def checkpoint_dir(name: str, checkpoint_root=CHECKPOINT_ROOT) -> Path:
    return Path(checkpoint_root) / name
