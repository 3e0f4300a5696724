"""The model input, defined once for training and inference.

``build_model_input`` (numpy, one frame) and ``model_input_batch`` (torch, a batch on
the training device) give identical values: the reference crop's RGB, then the target
crop's RGB with the lower face blacked out (data_utils.crop.mask_lower_face), both the
inner 320 x 320 of a 328 crop. A model trained with --reference_frames K > 1 sees K
reference crops, in order, before the masked target. ``choose_reference_index`` (and
``choose_reference_indices`` for K) says which frames are the references;
``ColourJitter`` is the training augmentation applied to all of them alike.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from data_utils import crop
from data_utils.crop import CROP_SHAPE


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
    (B, 3, 320, 320), float RGB in [0, 1]. ``reference_u8`` may also be
    (B, K, 328, 328, 3): K references, giving (B, 3 (K + 1), 320, 320). With
    ``augment`` the same colour change is applied to the target and its
    references before masking.
    """
    if reference_u8.dim() == target_u8.dim():
        reference_u8 = reference_u8[:, None]
    truth = inner_rgb_batch(target_u8)
    references = [inner_rgb_batch(reference_u8[:, k]) for k in range(reference_u8.shape[1])]
    if augment is not None:
        truth, *references = augment(truth, *references)
    masked = truth * _keep_mask(truth.device)
    return torch.cat([*references, masked], dim=1), truth


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


def choose_reference_indices(frame_index: int, candidates: Sequence[int], rng: np.random.Generator,
                             count: int) -> List[int]:
    """``count`` training references for ``frame_index``: the first is ``choose_reference_index``'s
    (the same draw), the others further distinct frames of ``candidates`` where there are enough."""
    first = choose_reference_index(frame_index, candidates, rng)
    if count == 1:
        return [first]
    candidates = np.asarray(candidates)
    others = candidates[(candidates != frame_index) & (candidates != first)]
    if len(others) == 0:
        return [first] * count
    more = rng.choice(others, size=count - 1, replace=len(others) < count - 1)
    return [first, *(int(index) for index in more)]


def spread_reference_indices(frames: Sequence[int], count: int) -> List[int]:
    """The fixed extra references inference gives a model trained with ``count`` + 1 of them:
    ``count`` frames spread evenly over ``frames`` (the recording's frames with a face)."""
    frames = np.asarray(frames)
    if count <= 0 or len(frames) == 0:
        return []
    positions = (np.arange(count) + 0.5) * len(frames) / count
    return [int(frames[int(position)]) for position in positions]


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

