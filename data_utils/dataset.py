"""From a processed dataset folder to training batches.

- ``check_dataset``: is dataset/NAME ready for training with this --asr? One
  clear error per missing piece, naming the command that makes it.
- ``PersonData`` / ``open_person``: one person's frames (through the crop cache,
  data_utils/crop_cache.py), audio windows and train/held-out split.
- ``LipSyncDataset`` / ``SyncPairDataset``: what one training sample is.
"""
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from data_utils.crop_cache import JpegCrops, build_crop_cache, crop_cache_is_current, open_crop_cache
from data_utils.features.extract import metadata_path
from data_utils.layout import DatasetLayout, process_command
from data_utils.lip_codes import lip_codes
from data_utils.lip_twins import NO_TWIN, lip_twins
from data_utils.model_input import choose_reference_indices
from data_utils.timebase import ASR_CHOICES, FEATURE_SPECS, model_audio_input
from lipsync.core.errors import UserError

log = logging.getLogger("dataset")

# An off-sync pair takes its audio at least this far from the face's own frame:
# 5 frames = 200 ms, beyond the +-2 frame slack SyncNet-style sync scores allow.
MIN_OFFSYNC_FRAMES = 5
MIN_PAIR_FRAMES = 2 * MIN_OFFSYNC_FRAMES + 1   # the middle frame of a split still has a far partner


# --------------------------------------------------------------------------- dataset checks

def feature_metadata_path(layout: DatasetLayout, asr: str) -> Path:
    """aud_<asr>.json next to the features (which encoder made them), from data_utils/features/extract.py."""
    return metadata_path(layout.features(asr))


def read_feature_metadata(layout: DatasetLayout, asr: str) -> Dict:
    path = feature_metadata_path(layout, asr)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is damaged — recompute the features: {process_command(layout, asr)}") from None


def check_dataset(dataset_dir, asr: str) -> DatasetLayout:
    """Raise a UserError naming the fix unless ``dataset_dir`` is ready for ``asr``."""
    layout = DatasetLayout(Path(dataset_dir))
    if asr not in ASR_CHOICES:
        raise UserError(f"unknown --asr {asr!r} — choose one of: {', '.join(ASR_CHOICES)}")
    if not layout.root.is_dir():
        raise UserError(f"{layout.root} does not exist — put the recording at {layout.source_video()} "
                        f"and run: {process_command(layout, asr)}")
    for needed in (layout.crop_boxes, layout.frames_dir):
        if not needed.exists():
            raise UserError(f"{layout.root} is not processed (no {needed.name}) — run: "
                            f"{process_command(layout, asr)}")
    features = layout.features(asr)
    if not features.is_file():
        others = [other for other in ASR_CHOICES if other != asr and layout.features(other).is_file()]
        if others:
            have = ", ".join(f"{other} ({layout.features(other).name})" for other in others)
            raise UserError(f"{layout.root} has audio features for {have} but not for --asr {asr} "
                            f"({features.name}) — run: {process_command(layout, asr)}, "
                            f"or train with --asr {others[0]}")
        raise UserError(f"{layout.root} has no audio features for --asr {asr} ({features.name}) — run: "
                        f"{process_command(layout, asr)}")
    metadata = read_feature_metadata(layout, asr)
    if metadata.get("asr", asr) != asr:
        raise UserError(f"{features} holds features for --asr {metadata['asr']} "
                        f"({feature_metadata_path(layout, asr).name}), not {asr} — recompute them: "
                        f"{process_command(layout, asr)}")
    return layout


def load_features(layout: DatasetLayout, asr: str, frame_count: int) -> np.ndarray:
    """The (N, *per_frame) float32 features, checked against the frame count and encoder."""
    path = layout.features(asr)
    try:
        features = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        raise UserError(f"{path} is damaged or not a .npy file — recompute it: "
                        f"{process_command(layout, asr)}") from None
    spec = FEATURE_SPECS[asr]
    if features.ndim != len(spec.per_frame_shape) + 1:
        raise UserError(f"{path} has per-frame shape {features.shape[1:]}, which is not {asr} "
                        f"(expected {len(spec.per_frame_shape)} axes like {spec.per_frame_shape}) — "
                        f"recompute it: {process_command(layout, asr)}")
    try:
        spec.window_shape(features.shape[1:])
    except ValueError as error:
        raise UserError(f"{path}: {error} — recompute it: {process_command(layout, asr)}") from None
    if len(features) != frame_count:
        raise UserError(f"{path} has {len(features)} frames of features but {layout.root} has "
                        f"{frame_count} video frames — recompute them: {process_command(layout, asr)}")
    return np.asarray(features, dtype=np.float32)


def load_crop_boxes(layout: DatasetLayout) -> np.ndarray:
    try:
        boxes = np.load(layout.crop_boxes)
    except (OSError, ValueError):
        raise UserError(f"{layout.crop_boxes} is damaged — run again: {process_command(layout)}") from None
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise UserError(f"{layout.crop_boxes} has shape {boxes.shape}, expected (frames, 4) — "
                        f"run again: {process_command(layout)}")
    return boxes


# --------------------------------------------------------------------------- the data of one person

DEFAULT_VAL_FRACTION = 0.05     # held-out tail of the recording: --val_fraction's default everywhere


def split_frames(frame_count: int, val_fraction: float) -> Tuple[np.ndarray, np.ndarray]:
    """Train frames and a contiguous held-out tail of ``val_fraction`` of the recording.

    A tail, not random frames: neighbouring frames are near-copies, so only a
    separate stretch of the recording measures generalisation.
    """
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    held_out = int(round(frame_count * val_fraction))
    if val_fraction > 0:
        held_out = max(held_out, 1)
    if frame_count - held_out < 1:
        raise UserError(f"{frame_count} frames leave nothing to train on with --val_fraction {val_fraction}")
    indices = np.arange(frame_count)
    return indices[:frame_count - held_out], indices[frame_count - held_out:]


@dataclass
class PersonData:
    """Everything training reads from dataset/NAME for one --asr."""
    layout: DatasetLayout
    asr: str
    crops: object                       # np.memmap (N, 328, 328, 3) BGR, or JpegCrops
    features: np.ndarray                # (N, *per_frame) float32
    feature_metadata: Dict = field(default_factory=dict)
    face_found: Optional[np.ndarray] = None   # (N,) bool; None: every frame has a face

    def split(self, val_fraction: float) -> Tuple[np.ndarray, np.ndarray]:
        """``split_frames`` without the frames where preprocessing found no face.

        Their landmarks (and so their crops) were interpolated: they show
        whatever covered the face, and must never be a target or a reference.
        """
        train, held_out = split_frames(self.frame_count, val_fraction)
        if self.face_found is None:
            return train, held_out
        train, held_out = train[self.face_found[train]], held_out[self.face_found[held_out]]
        if len(train) == 0:
            raise UserError(f"{self.layout.face_found} says no training frame shows a face — "
                            "re-run preprocessing on a recording where the face is visible")
        return train, held_out

    @property
    def frame_count(self) -> int:
        return len(self.features)

    @property
    def audio_shape(self) -> Tuple[int, int, int]:
        return FEATURE_SPECS[self.asr].window_shape(self.features.shape[1:])

    def audio(self, frame_index: int) -> np.ndarray:
        return model_audio_input(self.features, frame_index, self.asr)

    def crop(self, frame_index: int) -> np.ndarray:
        return np.array(self.crops[frame_index])          # a private, writable copy

    def describe_features(self) -> Dict:
        """Feature facts the checkpoint keeps, so inference can check its features match."""
        metadata = dict(self.feature_metadata)
        metadata.setdefault("asr", self.asr)
        metadata.setdefault("per_frame_shape", list(self.features.shape[1:]))
        return metadata


def open_person(dataset_dir, asr: str, use_cache: bool = True, build_cache: bool = True,
                show_progress: bool = True) -> PersonData:
    """Check dataset_dir, make sure the crop cache exists, open crops and features.

    ``build_cache=False`` expects the cache to exist already (DDP ranks other
    than 0, after rank 0 built it).
    """
    layout = check_dataset(dataset_dir, asr)
    boxes = load_crop_boxes(layout)
    features = load_features(layout, asr, len(boxes))
    if use_cache:
        if build_cache:
            build_crop_cache(layout, boxes, show_progress)
        elif not crop_cache_is_current(layout, boxes):
            raise UserError(f"{layout.crop_cache} is missing or out of date")
        crops = open_crop_cache(layout, len(boxes))
    else:
        crops = JpegCrops(layout, boxes)
    face_found = None
    if layout.face_found.exists():
        face_found = np.load(layout.face_found).astype(bool)
        if len(face_found) != len(boxes):
            raise UserError(f"{layout.face_found} has {len(face_found)} frames but the dataset has "
                            f"{len(boxes)} — re-run: {process_command(layout)}")
    return PersonData(layout, asr, crops, features, read_feature_metadata(layout, asr), face_found)


def load_landmarks(person: PersonData, needed_by: str) -> np.ndarray:
    """The dataset's (N, points, 2) landmarks.npy, with one clear line naming ``needed_by`` when it is
    missing or does not match the recording."""
    path = person.layout.landmarks_array
    try:
        landmarks = np.load(path)
    except (OSError, ValueError):
        raise UserError(f"{path} is missing or damaged: {needed_by} need the landmarks — re-run: "
                        f"{process_command(person.layout)}") from None
    if landmarks.ndim != 3 or len(landmarks) != person.frame_count:
        raise UserError(f"{path} has {landmarks.shape[0] if landmarks.ndim else 0} frames of landmarks but the "
                        f"dataset has {person.frame_count} — re-run: {process_command(person.layout)}")
    return landmarks


def load_lip_twins(person: PersonData, frames: Sequence[int]) -> np.ndarray:
    """data_utils.lip_twins.lip_twins of ``frames`` from the dataset's landmarks.npy."""
    return lip_twins(load_landmarks(person, "lip twins"), frames)


def load_lip_codes(person: PersonData, fit_frames: Sequence[int], dims: int) -> np.ndarray:
    """(N, dims) data_utils.lip_codes.lip_codes of every frame, fitted on ``fit_frames``."""
    return lip_codes(load_landmarks(person, "lip codes"), fit_frames, dims)


# --------------------------------------------------------------------------- samples

def _sample_rng(seed: int, epoch: int, frame_index: int) -> np.random.Generator:
    # A function of (seed, epoch, frame) only: the same in any worker process,
    # for any worker count, and after a resume.
    return np.random.default_rng([seed, epoch, frame_index])


class _FrameSamples(Dataset):
    """Samples of some frames of one person, with per-frame randomness drawn from
    (seed, epoch, frame): the same for any worker count and after a resume."""

    def __init__(self, person: PersonData, frames: Sequence[int], seed: int = 0):
        self.person = person
        self.frames = np.asarray(frames)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.frames)

    def rng(self, frame_index: int) -> np.random.Generator:
        return _sample_rng(self.seed, self.epoch, frame_index)


class LipSyncDataset(_FrameSamples):
    """U-Net samples: target crop, reference crop (another frame), audio window.

    ``references`` are the frames a reference may come from (the same split, so
    validation never sees training frames as references). ``set_epoch`` changes
    the random reference each epoch; validation keeps epoch 0, so its
    references, and therefore its scores, are the same every epoch.
    ``twins`` (data_utils/lip_twins.py, a row per frame of ``frames``): with the
    chance ``twin_share`` a sample's audio is one of its frame's lip twins'.
    ``lip_codes`` (data_utils/lip_codes.py, a row per frame of the recording): each sample
    also gets its target's lip code, which the U-Net learns to draw (and its audio to predict).
    """

    def __init__(self, person: PersonData, frames: Sequence[int], references: Sequence[int],
                 seed: int = 0, reference_frames: int = 1, twins: Optional[np.ndarray] = None,
                 twin_share: float = 0.0, lip_codes: Optional[np.ndarray] = None):
        super().__init__(person, frames, seed)
        self.lip_codes = None if lip_codes is None else np.asarray(lip_codes, dtype=np.float32)
        self.references = np.asarray(references)
        self.reference_frames = int(reference_frames)
        # Each frame's twins without the NO_TWIN padding, once: the loader draws from them every sample.
        self.twins = (None if twins is None or twin_share <= 0
                      else [row[row != NO_TWIN] for row in np.asarray(twins)])
        self.twin_share = float(twin_share)

    def __getitem__(self, item: int) -> Dict:
        frame = int(self.frames[item])
        rng = self.rng(frame)
        chosen = choose_reference_indices(frame, self.references, rng, self.reference_frames)
        # (328, 328, 3) for one reference, (K, 328, 328, 3) for K.
        reference = (self.person.crop(chosen[0]) if len(chosen) == 1
                     else np.stack([self.person.crop(index) for index in chosen]))
        sample = {
            "target": torch.from_numpy(self.person.crop(frame)),
            "reference": torch.from_numpy(reference),
            "audio": torch.from_numpy(self.person.audio(self._audio_frame(item, frame, rng))),
            "frame": frame,
        }
        if self.lip_codes is not None:
            sample["lip_code"] = torch.from_numpy(self.lip_codes[frame].copy())
        return sample

    def _audio_frame(self, item: int, frame: int, rng: np.random.Generator) -> int:
        """The frame whose audio the sample gets: its own, or with the chance twin_share a lip twin's.
        Drawn after the references, so that without twins every sample is what it was before."""
        if self.twins is None:
            return frame
        twins = self.twins[item]
        if len(twins) == 0 or rng.random() >= self.twin_share:
            return frame
        return int(rng.choice(twins))


def offsync_index(frame_index: int, candidates: np.ndarray, rng: np.random.Generator) -> int:
    """A frame at least MIN_OFFSYNC_FRAMES away from ``frame_index`` (its audio is off-sync)."""
    far = candidates[np.abs(candidates - frame_index) >= MIN_OFFSYNC_FRAMES]
    if len(far) == 0:
        raise UserError(f"{len(candidates)} frames are too few for off-sync pairs "
                        f"(need frames {MIN_OFFSYNC_FRAMES} apart)")
    return int(far[rng.integers(len(far))])


class SyncPairDataset(_FrameSamples):
    """SyncNet samples: a face crop, its own audio window and an off-sync one."""

    def __init__(self, person: PersonData, frames: Sequence[int], seed: int = 0, split: str = "training"):
        super().__init__(person, frames, seed)
        if len(self.frames) < MIN_PAIR_FRAMES:
            raise UserError(f"the {split} part of {person.layout.root} has {len(self.frames)} frames; "
                            f"SyncNet needs at least {MIN_PAIR_FRAMES} to pair every face with audio "
                            f"{MIN_OFFSYNC_FRAMES} frames away — use a longer recording or another --val_fraction")

    def __getitem__(self, item: int) -> Dict:
        frame = int(self.frames[item])
        other = offsync_index(frame, self.frames, self.rng(frame))
        return {
            "target": torch.from_numpy(self.person.crop(frame)),
            "audio": torch.from_numpy(self.person.audio(frame)),
            "offsync_audio": torch.from_numpy(self.person.audio(other)),
            "frame": frame,
        }
