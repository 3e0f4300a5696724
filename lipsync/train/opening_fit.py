"""Fit the person's mouth-opening reader (models/opening_reader.py) before the U-Net trains.

The targets are the inner-lip gaps of the recording's landmarks (the measure
evaluate_328.py scores the drawn mouth with). The lips' boxes are jittered in
colour, shifted a few pixels and sometimes blurred, so the reader also reads the
softer mouths the U-Net draws early on. It is fitted in a forked random state:
the U-Net's own training draws exactly what it would without it.
"""
import logging
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data_utils import crop
from data_utils.dataset import PersonData, load_landmarks
from data_utils.model_input import ColourJitter, inner_rgb_batch
from lipsync.core.errors import UserError
from lipsync.core.progress import progress_bar
from lipsync.evaluate.metrics import correlation, mouth_opening
from models.opening_reader import GAP_SCALE, MouthOpeningReader, lips_box

log = logging.getLogger("training")

FIT_STEPS = 600
FIT_BATCH = 32
FIT_LR = 1e-3
MAX_SHIFT_PX = 4
BLUR_CHANCE = 0.3
CROPS_PER_READ = 64              # crops turned into lips' boxes at a time (memory, not speed)
MIN_FIT_FRAMES = 8
MIN_CHECK_FRAMES = 3             # a correlation needs a few frames to mean anything


def _lips_with_margin(person: PersonData, frames: Sequence[int]) -> torch.Tensor:
    """(N, 3, 120 + 2 m, 180 + 2 m) uint8 RGB: each frame's lips' box with MAX_SHIFT_PX around it."""
    m = MAX_SHIFT_PX
    rows = slice(crop.LIP_TOP - m, crop.LIP_BOTTOM + m)
    columns = slice(crop.LIP_LEFT - m, crop.LIP_RIGHT + m)
    boxes = []
    for start in range(0, len(frames), CROPS_PER_READ):
        crops = torch.from_numpy(np.stack([person.crop(int(f)) for f in frames[start:start + CROPS_PER_READ]]))
        boxes.append((inner_rgb_batch(crops)[:, :, rows, columns] * 255).round().to(torch.uint8))
    return torch.cat(boxes)


def _augmented(boxes: torch.Tensor, jitter: ColourJitter, generator: torch.Generator) -> torch.Tensor:
    """Shifted (up to MAX_SHIFT_PX), colour-jittered, sometimes blurred lips' boxes, float in [0, 1]."""
    m = MAX_SHIFT_PX
    dy, dx = (int(value) for value in torch.randint(0, 2 * m + 1, (2,), generator=generator))
    height, width = boxes.shape[2] - 2 * m, boxes.shape[3] - 2 * m
    images, = jitter(boxes[:, :, dy:dy + height, dx:dx + width].float() / 255)
    if float(torch.rand(1, generator=generator)) < BLUR_CHANCE:
        images = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    return images


def fit_opening_reader(person: PersonData, train_frames: Sequence[int], val_frames: Sequence[int], device,
                       seed: int, steps: Optional[int] = None, show_progress: bool = True) -> MouthOpeningReader:
    """The frozen reader, fitted to ``train_frames`` for ``steps`` (FIT_STEPS); its correlation on
    ``val_frames`` is logged."""
    steps = FIT_STEPS if steps is None else steps
    gaps = mouth_opening(load_landmarks(person, "--opening_weight")) * GAP_SCALE
    train = np.array([frame for frame in train_frames if np.isfinite(gaps[frame])])
    if len(train) < MIN_FIT_FRAMES:
        raise UserError(f"--opening_weight: only {len(train)} training frames of {person.layout.root} have a face's "
                        f"landmarks, too few to learn how this mouth opens — use a longer recording or "
                        f"--opening_weight 0")
    boxes = _lips_with_margin(person, train)
    targets = torch.from_numpy(gaps[train]).float()
    jitter = ColourJitter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reader = MouthOpeningReader().to(device)
        optimizer = torch.optim.Adam(reader.parameters(), lr=FIT_LR)
        generator = torch.Generator().manual_seed(seed)
        for _ in progress_bar(range(steps), desc="opening reader", enabled=show_progress):
            picks = torch.randint(len(train), (FIT_BATCH,), generator=generator)
            images = _augmented(boxes[picks], jitter, generator).to(device)
            loss = F.smooth_l1_loss(reader.read_box(images), targets[picks].to(device), beta=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    reader.eval().requires_grad_(False)
    held_out = [frame for frame in val_frames if np.isfinite(gaps[frame])]
    check = "no held-out frames to check it on"
    if len(held_out) >= MIN_CHECK_FRAMES:
        crops = inner_rgb_batch(torch.from_numpy(np.stack([person.crop(int(f)) for f in held_out])))
        with torch.no_grad():
            read = reader.read_box(lips_box(crops).to(device)).cpu().numpy()
        check = (f"on the {len(held_out)} held-out frames it reads the landmarks' inner-lip gap at "
                 f"r {correlation(read, gaps[held_out]):.2f}")
    log.info("opening reader: fitted on %d frames in %d steps; %s", len(train), steps, check)
    return reader
