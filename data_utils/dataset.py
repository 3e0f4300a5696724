"""From a processed dataset folder to training batches.

- ``check_dataset``: is dataset/NAME ready for training with this --asr? One
  clear error per missing piece, naming the command that makes it.
- The crop cache: every frame's 328 crop (data_utils.crop.cut_crop with the
  smoothed crop box) cut once into dataset/NAME/crops_328.u8, a raw uint8
  (N, 328, 328, 3) BGR array that training memory-maps, so the training loop
  never decodes a JPEG. ``JpegCrops`` is the slow path it replaces (kept for
  the benchmark and as the reference the cache is checked against).
- The model input, defined once for training and inference:
  ``build_model_input`` (numpy, one frame) and ``model_input_batch`` (torch,
  a batch on the training device) give identical values.
- ``LipSyncDataset`` / ``SyncPairDataset``: what one training sample is.
"""
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from data_utils import crop
from data_utils.features.extract import metadata_path
from data_utils.layout import DatasetLayout, process_command
from data_utils.timebase import ASR_CHOICES, FEATURE_SPECS, model_audio_input
from lipsync.core.atomic import atomic_path, write_json_atomic
from lipsync.core.errors import UserError

log = logging.getLogger("dataset")

CACHE_VERSION = 1
CROP_SHAPE = (crop.CROP_SIZE, crop.CROP_SIZE, 3)
CROP_BYTES = int(np.prod(CROP_SHAPE))
CACHE_WRITER_THREADS = 4           # cv2 decodes and warps outside the GIL
# An off-sync pair takes its audio at least this far from the face's own frame:
# 5 frames = 200 ms, beyond the +-2 frame slack SyncNet-style sync scores allow.
MIN_OFFSYNC_FRAMES = 5
MIN_PAIR_FRAMES = 2 * MIN_OFFSYNC_FRAMES + 1   # the middle frame of a split still has a far partner


# --------------------------------------------------------------------------- the model input

def _inner_rgb01(crop_328_bgr: np.ndarray) -> np.ndarray:
    """(328, 328, 3) BGR uint8 -> (320, 320, 3) RGB float32 in [0, 1]."""
    inner = crop_328_bgr[crop.INNER, crop.INNER, ::-1]
    return inner.astype(np.float32) / 255.0


def build_model_input(target_crop_328: np.ndarray, reference_crop_328: np.ndarray) -> np.ndarray:
    """The U-Net input (6, 320, 320) float32: reference RGB, then masked target RGB.

    Both crops are 328 x 328 BGR uint8 as cut by data_utils.crop.cut_crop; the
    4 px border is dropped and the target's lower face is blacked out with
    data_utils.crop.mask_lower_face. See ``choose_reference_index`` for which
    frame the reference is.
    """
    for name, image in (("target", target_crop_328), ("reference", reference_crop_328)):
        if image.shape != CROP_SHAPE or image.dtype != np.uint8:
            raise ValueError(f"{name} crop must be {CROP_SHAPE} uint8, got {image.shape} {image.dtype}")
    masked = crop.mask_lower_face(_inner_rgb01(target_crop_328))
    reference = _inner_rgb01(reference_crop_328)
    return np.ascontiguousarray(np.concatenate([reference, masked], axis=2).transpose(2, 0, 1))


def _keep_mask(device) -> torch.Tensor:
    """(320, 320) 1 outside / 0 inside the repainted region: crop.inner_mask, inverted."""
    return torch.from_numpy(1.0 - crop.inner_mask()).to(device)


def model_input_batch(target_u8: torch.Tensor, reference_u8: torch.Tensor,
                      augment: Optional["ColourJitter"] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batched ``build_model_input`` on the tensors' device.

    (B, 328, 328, 3) BGR uint8 crops -> image6 (B, 6, 320, 320) and the truth
    (B, 3, 320, 320), float RGB in [0, 1]. With ``augment`` the same colour
    change is applied to the target and its reference before masking.
    """
    truth, reference = inner_rgb_batch(target_u8), inner_rgb_batch(reference_u8)
    if augment is not None:
        truth, reference = augment(truth, reference)
    masked = truth * _keep_mask(truth.device)
    return torch.cat([reference, masked], dim=1), truth


def inner_rgb_batch(crops_u8: torch.Tensor) -> torch.Tensor:
    """(B, 328, 328, 3) BGR uint8 -> (B, 3, 320, 320) contiguous RGB float in [0, 1]."""
    rgb = crops_u8[:, crop.INNER, crop.INNER, :].flip(-1).permute(0, 3, 1, 2)
    return rgb.contiguous().float() / 255.0


def choose_reference_index(frame_index: int, candidates: Optional[Sequence[int]] = None,
                           rng: Optional[np.random.Generator] = None) -> int:
    """The frame whose unmasked crop is the model's reference for ``frame_index``.

    Training (``rng`` given): a random *other* frame of the same person from
    ``candidates``, so the model cannot copy the mouth and must draw it from the
    audio; the reference only tells it what the person looks like.
    Inference (no ``rng``): the frame itself, its crop before masking, which
    matches the target's pose and lighting exactly.
    """
    if rng is None:
        return int(frame_index)
    candidates = np.asarray(candidates)
    others = candidates[candidates != frame_index]
    if len(others) == 0:
        return int(frame_index)
    return int(others[rng.integers(len(others))])


@dataclass
class ColourJitter:
    """Brightness, contrast and per-channel colour jitter (the guide's augmentation).

    Parameters are drawn from torch's global generator (saved in checkpoints, so
    a resumed run draws the same ones) and applied identically to every image
    passed in one call.
    """
    brightness: float = 0.1
    contrast: float = 0.1
    colour: float = 0.05

    def __call__(self, *images: torch.Tensor):
        batch = images[0].shape[0]

        def uniform(spread, *shape):
            return ((torch.rand(batch, *shape) * 2 - 1) * spread).to(images[0].device)

        shift = uniform(self.brightness, 1, 1, 1)
        gain = 1 + uniform(self.contrast, 1, 1, 1)
        tint = 1 + uniform(self.colour, 3, 1, 1)
        out = []
        for image in images:
            mean = image.mean(dim=(1, 2, 3), keepdim=True)
            out.append(((image - mean) * gain + mean + shift).mul(tint).clamp(0, 1))
        return tuple(out)


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


# --------------------------------------------------------------------------- crop sources

class JpegCrops:
    """Crops cut on demand from full_body_img/i.jpg (decodes a JPEG per access)."""

    def __init__(self, layout: DatasetLayout, boxes: np.ndarray):
        self.layout, self.boxes = layout, boxes

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, index: int) -> np.ndarray:
        import cv2

        path = self.layout.frame_path(index)
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise UserError(f"{path} is missing or unreadable — run again: {process_command(self.layout)}")
        return crop.cut_crop(frame, self.boxes[index])


def cache_info_path(layout: DatasetLayout) -> Path:
    return layout.crop_cache.with_suffix(".json")


def _cache_key(boxes: np.ndarray) -> Dict:
    return {"version": CACHE_VERSION, "frames": int(len(boxes)), "shape": list(CROP_SHAPE),
            "crop_boxes_sha256": hashlib.sha256(np.ascontiguousarray(boxes).tobytes()).hexdigest()}


def crop_cache_is_current(layout: DatasetLayout, boxes: np.ndarray) -> bool:
    info = cache_info_path(layout)
    if not (info.is_file() and layout.crop_cache.is_file()):
        return False
    try:
        recorded = json.loads(info.read_text())
    except (OSError, ValueError):
        return False
    return (recorded == _cache_key(boxes)
            and layout.crop_cache.stat().st_size == len(boxes) * CROP_BYTES)


def build_crop_cache(layout: DatasetLayout, boxes: np.ndarray, show_progress: bool = True) -> Path:
    """Cut every frame's 328 crop into crops_328.u8 (atomically); skip if already current."""
    if crop_cache_is_current(layout, boxes):
        return layout.crop_cache
    from tqdm import tqdm

    info = cache_info_path(layout)
    if info.exists():
        info.unlink()                       # the old cache no longer matches: never trust it again
    source = JpegCrops(layout, boxes)
    log.info("cutting %d crops into %s (once; later runs reuse it)", len(boxes), layout.crop_cache)
    with atomic_path(layout.crop_cache) as temporary:
        array = np.memmap(temporary, dtype=np.uint8, mode="w+", shape=(len(boxes),) + CROP_SHAPE)

        def cut(index):
            array[index] = source[index]

        with ThreadPoolExecutor(CACHE_WRITER_THREADS) as pool:
            for _ in tqdm(pool.map(cut, range(len(boxes))), total=len(boxes), desc="crop cache",
                          disable=not show_progress, dynamic_ncols=True):
                pass
        array.flush()
        del array
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
    write_json_atomic(info, _cache_key(boxes))
    return layout.crop_cache


def open_crop_cache(layout: DatasetLayout, frame_count: int) -> np.memmap:
    """The cache as a read-only (N, 328, 328, 3) uint8 memory map."""
    return np.memmap(layout.crop_cache, dtype=np.uint8, mode="r", shape=(frame_count,) + CROP_SHAPE)


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
    """

    def __init__(self, person: PersonData, frames: Sequence[int], references: Sequence[int],
                 seed: int = 0):
        super().__init__(person, frames, seed)
        self.references = np.asarray(references)

    def __getitem__(self, item: int) -> Dict:
        frame = int(self.frames[item])
        reference = choose_reference_index(frame, self.references, self.rng(frame))
        return {
            "target": torch.from_numpy(self.person.crop(frame)),
            "reference": torch.from_numpy(self.person.crop(reference)),
            "audio": torch.from_numpy(self.person.audio(frame)),
            "frame": frame,
        }


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
