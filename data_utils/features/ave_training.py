"""Learning a person's AVE audio encoder from their own recording.

No pretrained SyncTalk AVE weights can be downloaded or shipped here, so the
default ``--asr ave`` encoder is learned per person by an audio-visual
contrastive stage: the mel window of frame i (0.2 s of audio centred on it)
should match the mouth crops of the same moment (frames i-2 .. i+2, the
region the lip-sync model repaints) better than mouth crops of other moments
at least MIN_NEGATIVE_GAP frames away. The audio side is the AVE conv encoder
(512 values per frame, models/audio_encoders.py), so what it learns are audio
features that predict the mouth shape.

The last part of the recording is held out (never trained on, separated by a
gap). Proof that it learned: on that tail, the in-sync pair scores higher than
off-sync pairs; the fraction is printed and stored in ave.pth (and copied to
aud_ave.json).
"""
import argparse
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

if __package__ in (None, ""):
    # Run as a file (python data_utils/features/ave_training.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
from torch.nn import functional as F

from data_utils.audio import SILENCE_MEL_VALUE
from data_utils.crop import CROP_BORDER, CROP_SIZE, MASK_BOTTOM, MASK_LEFT, MASK_RIGHT, MASK_TOP, cut_crop
from data_utils.features.ave import AVE_CHECKPOINT_FORMAT, ave_mel_windows, read_ave_checkpoint
from data_utils.features.dataset_audio import frame_aligned_samples, require_audio_and_frames
from data_utils.layout import DatasetLayout, process_command
from lipsync.core.atomic import save_torch_atomic
from lipsync.core.console import configure_console_logging
from lipsync.core.devices import DEVICES, device_name
from lipsync.core.errors import UserError, exit_on_user_error
from models.audio_encoders import SyncScorer

log = logging.getLogger(__name__)

MIN_NEGATIVE_GAP = 5            # frames: closer moments look and sound too alike to be negatives
MOUTH_CUT_SIZE = 96             # the face crop is cut at this size before taking the mouth region
MOUTH_SIZE = (48, 60)           # (H, W) of one grayscale mouth crop fed to the mouth encoder
MOUTH_CONTEXT = 2               # frames each side: 5 crops = 0.2 s, the span of one mel window
HELDOUT_GAP = 8                 # frames between training and held-out parts: no shared audio or crops
# Below this held-out sync accuracy the learned encoder is weak (measured: 0.97 on a synthetic
# 3-minute recording, 0.60 on a real 20 s phone recording).
WEAK_AVE_ACCURACY = 0.8
# What to do about such an encoder: preprocessing's warning and evaluation's motion line both say it.
WEAK_AVE_REMEDY = ("record a longer video (3-5 minutes of speech), use --asr hubert, or give released AVE weights "
                   "with --ave_checkpoint")
MIN_HELDOUT_FRAMES = 20
MIN_TRAIN_FRAMES = 32
SHIFT_PX = 3                    # mouth crop jitter during training: the box is not pixel-exact
# Audio augmentation (AveTrainConfig.audio_augment), in normalised log-mel units (1 unit = 12.5 dB):
# a level change, a band of mel bins and a few mel frames replaced by silence, a little noise.
GAIN_UNITS = 0.5                # +-6 dB
MAX_MASKED_BANDS = 12           # of 80
MAX_MASKED_MEL_FRAMES = 2       # of 16 (25 ms)
NOISE_UNITS = 0.05


@dataclass
class AveTrainConfig:
    """Defaults learn a 5-minute recording in a few CPU minutes (benchmarks/bench_audio_features.py).

    On the 40 s fixture 100 steps already rank 91% of held-out pairs right and
    300 steps 94%; a 5-minute recording gets 8 passes (about 530 steps).
    """
    width: float = 0.5                  # AVE hidden channel scale (1.0 is the released layout): 4x less compute
    embed_dim: int = 128
    batch_size: int = 96
    epochs: float = 8.0                 # passes over the training frames ...
    min_steps: int = 300                # ... but never fewer / more steps than this
    max_steps: int = 1000
    learning_rate: float = 1e-3
    temperature: float = 0.1
    audio_augment: bool = True          # level, band and time masking, noise on the mel windows (RESULTS.md)
    mouth_shift_px: int = SHIFT_PX      # the mouth crops' random shift
    weight_decay: float = 0.0           # AdamW's decoupled decay (0: Adam)
    heldout_fraction: float = 0.15
    seed: int = 0

    def steps_for(self, train_frames: int) -> int:
        wanted = int(round(self.epochs * train_frames / self.batch_size))
        return int(np.clip(wanted, self.min_steps, self.max_steps))


# =============================================================================
# Data
# =============================================================================

def mouth_region(box_crop: np.ndarray) -> np.ndarray:
    """The repainted lower-face region of a MOUTH_CUT_SIZE face crop, resized to MOUTH_SIZE."""
    import cv2

    scale = MOUTH_CUT_SIZE / CROP_SIZE
    top, bottom = int(round((CROP_BORDER + MASK_TOP) * scale)), int(round((CROP_BORDER + MASK_BOTTOM) * scale))
    left, right = int(round((CROP_BORDER + MASK_LEFT) * scale)), int(round((CROP_BORDER + MASK_RIGHT) * scale))
    height, width = MOUTH_SIZE
    return cv2.resize(box_crop[top:bottom, left:right], (width, height), interpolation=cv2.INTER_AREA)


def load_mouth_crops(layout: DatasetLayout, frames: int, progress: bool = True) -> np.ndarray:
    """(frames, H, W) uint8 grayscale mouth regions from full_body_img/ and crop_boxes.npy."""
    import cv2
    from tqdm import tqdm

    if not layout.crop_boxes.exists():
        raise UserError(f"{layout.crop_boxes} does not exist — run: {process_command(layout)}")
    boxes = np.load(layout.crop_boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != frames:
        raise UserError(f"{layout.crop_boxes} has shape {boxes.shape}, expected ({frames}, 4) for the "
                        f"{frames} frames in {layout.frames_dir} — re-run preprocessing with --force")

    def load(index):
        path = layout.frame_path(index)
        frame = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if frame is None:
            raise UserError(f"{path} is missing or unreadable — re-run preprocessing with --force")
        return mouth_region(cut_crop(frame, boxes[index], size=MOUTH_CUT_SIZE))

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # cv2 releases the GIL while decoding JPEGs
        crops = list(tqdm(pool.map(load, range(frames)), total=frames, desc="mouth crops",
                          unit="frame", disable=not progress))
    return np.stack(crops)


def mouth_stacks(crops, indices) -> np.ndarray:
    """(len(indices), 5, H, W) crops of frames i-2 .. i+2 (clamped at the ends)."""
    offsets = np.arange(-MOUTH_CONTEXT, MOUTH_CONTEXT + 1)
    frame_index = np.clip(np.asarray(indices)[:, None] + offsets[None, :], 0, len(crops) - 1)
    return crops[frame_index]


def heldout_count(frames: int, heldout_fraction: float) -> int:
    """How many frames at the end of a recording of ``frames`` frames are held out."""
    return max(MIN_HELDOUT_FRAMES, int(np.ceil(frames * heldout_fraction)))


def split_frames(frames: int, heldout_fraction: float) -> Tuple[int, int]:
    """(training frames 0..train_end-1, held-out frames heldout_start..frames-1)."""
    heldout = heldout_count(frames, heldout_fraction)
    heldout_start = frames - heldout
    train_end = heldout_start - HELDOUT_GAP
    if train_end < MIN_TRAIN_FRAMES:
        raise UserError(f"the recording has only {frames} frames ({frames / 25:.1f} s); learning the AVE "
                        f"encoder needs at least {MIN_TRAIN_FRAMES + HELDOUT_GAP + MIN_HELDOUT_FRAMES} — "
                        "record a longer video (about 5 minutes is recommended) or pass --ave_checkpoint")
    return train_end, heldout_start


# =============================================================================
# Training
# =============================================================================

def _as_tensor_crops(stacks: np.ndarray, device):
    return torch.from_numpy(stacks).to(device).float().div_(127.5).sub_(1.0)


def _jitter(crops, generator, shift_px: int = SHIFT_PX):
    """Random shift (same for a sample's 5 crops) and brightness/contrast change."""
    batch = crops.shape[0]
    padded = F.pad(crops, (shift_px,) * 4, mode="replicate")
    height, width = crops.shape[-2:]
    shifts = torch.randint(0, 2 * shift_px + 1, (batch, 2), generator=generator)
    shifted = torch.stack([padded[b, :, y:y + height, x:x + width] for b, (y, x) in enumerate(shifts.tolist())])
    gain = 1 + 0.2 * (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5)
    bias = 0.2 * (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5)
    return (shifted * gain.to(crops.device) + bias.to(crops.device)).clamp_(-1, 1)


def _augment_audio(windows, generator):
    """(B, 1, 80, 16) mel windows with a random level, one masked band, masked frames and noise each."""
    batch, _, bands, frames = windows.shape
    low, high = float(SILENCE_MEL_VALUE), -float(SILENCE_MEL_VALUE)
    gain = GAIN_UNITS * (2 * torch.rand(batch, 1, 1, 1, generator=generator) - 1)
    out = windows + gain.to(windows.device)
    band_width = torch.randint(0, MAX_MASKED_BANDS + 1, (batch,), generator=generator)
    band_start = (torch.rand(batch, generator=generator) * (bands - band_width)).long()
    frame_width = torch.randint(0, MAX_MASKED_MEL_FRAMES + 1, (batch,), generator=generator)
    frame_start = (torch.rand(batch, generator=generator) * (frames - frame_width)).long()
    rows = torch.arange(bands)[None, :]
    columns = torch.arange(frames)[None, :]
    masked_rows = (rows >= band_start[:, None]) & (rows < (band_start + band_width)[:, None])
    masked_columns = (columns >= frame_start[:, None]) & (columns < (frame_start + frame_width)[:, None])
    masked = (masked_rows[:, :, None] | masked_columns[:, None, :])[:, None].to(windows.device)
    out = out.masked_fill(masked, low)
    out = out + NOISE_UNITS * torch.randn(out.shape, generator=generator).to(windows.device)
    return out.clamp_(low, high)


def contrastive_loss(audio_embedding, mouth_embedding, frame_index, temperature: float):
    """Symmetric InfoNCE: each mel window against every mouth stack of the batch and vice versa.

    The pair of the same frame is the positive; frames closer than
    MIN_NEGATIVE_GAP (other than itself) are left out rather than counted as negatives.
    """
    logits = audio_embedding @ mouth_embedding.T / temperature
    gap = (frame_index[:, None] - frame_index[None, :]).abs()
    excluded = (gap < MIN_NEGATIVE_GAP) & (gap > 0)
    logits = logits.masked_fill(excluded, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def sync_accuracy(model, mel_windows, crops, indices, device) -> Dict[str, float]:
    """How often the in-sync pair beats off-sync pairs (>= MIN_NEGATIVE_GAP apart) among ``indices``.

    ``pair_accuracy``: fraction of (frame, off-sync frame) pairs where the
    frame's mel window scores higher with its own mouth crops; chance is 0.5.
    ``frame_accuracy``: fraction of frames whose in-sync score beats most of
    their off-sync pairs.
    """
    model.eval()
    with torch.inference_mode():
        audio = model.embed_audio(torch.from_numpy(mel_windows[indices]).to(device))
        mouth = model.embed_mouth(_as_tensor_crops(mouth_stacks(crops, indices), device))
        scores = (audio @ mouth.T).cpu().numpy()
    positions = np.asarray(indices)
    off_sync = np.abs(positions[:, None] - positions[None, :]) >= MIN_NEGATIVE_GAP
    beaten = (np.diag(scores)[:, None] > scores) & off_sync
    per_frame = beaten.sum(axis=1) / np.maximum(off_sync.sum(axis=1), 1)
    return {"pair_accuracy": float(beaten.sum() / max(off_sync.sum(), 1)),
            "frame_accuracy": float(np.mean(per_frame > 0.5))}


def train_sync_model(mel_windows: np.ndarray, crops: np.ndarray, config: AveTrainConfig, device="cpu",
                     progress: bool = True, steps: Optional[int] = None):
    """Train the AVE encoder + mouth encoder; returns (model, report dict)."""
    from tqdm import tqdm

    frames = len(mel_windows)
    if len(crops) != frames:
        raise UserError(f"{len(crops)} mouth crops for {frames} audio windows — the dataset is inconsistent; "
                        "re-run preprocessing with --force")
    train_end, heldout_start = split_frames(frames, config.heldout_fraction)
    steps = config.steps_for(train_end) if steps is None else int(steps)
    batch = min(config.batch_size, train_end)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = SyncScorer(config.width, 2 * MOUTH_CONTEXT + 1, config.embed_dim).to(device)
    heldout = np.arange(heldout_start, frames)
    before = sync_accuracy(model, mel_windows, crops, heldout, device)
    optimiser = (torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
                 if config.weight_decay else torch.optim.Adam(model.parameters(), lr=config.learning_rate))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.learning_rate, total_steps=max(steps, 1),
                                                   pct_start=0.1)
    losses = []
    started = time.time()
    bar = tqdm(range(steps), desc="learning AVE encoder", unit="step", disable=not progress)
    for _ in bar:
        model.train()
        indices = np.sort(rng.choice(train_end, size=batch, replace=False))
        windows = torch.from_numpy(mel_windows[indices]).to(device)
        if config.audio_augment:
            windows = _augment_audio(windows, generator)
        audio = model.embed_audio(windows)
        mouth = model.embed_mouth(_jitter(_as_tensor_crops(mouth_stacks(crops, indices), device), generator,
                                          config.mouth_shift_px))
        loss = contrastive_loss(audio, mouth, torch.from_numpy(indices).to(device), config.temperature)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.time() - started
    after = sync_accuracy(model, mel_windows, crops, heldout, device)
    window = max(1, min(50, len(losses) // 5))
    report = {
        "frames": frames, "train_frames": train_end, "heldout_frames": len(heldout),
        "heldout_start_frame": int(heldout_start), "steps": steps, "batch_size": batch,
        "loss_first": float(np.mean(losses[:window])) if losses else None,
        "loss_last": float(np.mean(losses[-window:])) if losses else None,
        "heldout_sync_accuracy": after["pair_accuracy"],
        "heldout_frames_in_sync_best": after["frame_accuracy"],
        "heldout_sync_accuracy_untrained": before["pair_accuracy"],
        "train_seconds": round(seconds, 2), "device": str(device),
    }
    return model.eval(), report


def train_ave_encoder(dataset_dir, config: Optional[AveTrainConfig] = None, device="cpu", force: bool = False,
                      progress: bool = True, steps: Optional[int] = None) -> Dict:
    """Learn dataset_dir/ave.pth from the recording (skipped when it exists, unless ``force``).

    Returns the training report (held-out accuracy etc.), also stored in ave.pth.
    """
    layout = DatasetLayout(Path(dataset_dir))
    config = config or AveTrainConfig()
    if layout.ave_encoder.exists() and not force:
        stored = read_ave_checkpoint(layout.ave_encoder)   # an unreadable file is reported, not silently replaced
        report = stored.get("report", {}) if isinstance(stored, dict) else {}
        log.info("%s exists: keeping it (held-out sync accuracy %s)", layout.ave_encoder,
                 _percent(report.get("heldout_sync_accuracy")))
        return report
    frames = require_audio_and_frames(layout)
    split_frames(frames, config.heldout_fraction)   # fail early for a too-short recording
    started = time.time()
    samples = frame_aligned_samples(layout, frames)
    mel_windows = ave_mel_windows(samples, frames)
    crops = load_mouth_crops(layout, frames, progress)
    prepare_seconds = time.time() - started
    model, report = train_sync_model(mel_windows, crops, config, device, progress, steps)
    report["prepare_seconds"] = round(prepare_seconds, 2)
    save_torch_atomic(layout.ave_encoder, {
        "format": AVE_CHECKPOINT_FORMAT,
        "width": config.width,
        "conv_stack": {key: value.cpu() for key, value in model.audio_encoder.conv_stack.state_dict().items()},
        "audio_head": {key: value.cpu() for key, value in model.audio_head.state_dict().items()},
        "mouth_encoder": {key: value.cpu() for key, value in model.mouth_encoder.state_dict().items()},
        "config": asdict(config),
        "report": report,
    })
    message = (f"AVE encoder learned from {report['train_frames']} frames in "
               f"{report['train_seconds'] + prepare_seconds:.0f} s: on the held-out last {report['heldout_frames']} "
               f"frames the in-sync pair beats off-sync pairs {_percent(report['heldout_sync_accuracy'])} of the "
               f"time (untrained {_percent(report['heldout_sync_accuracy_untrained'])}, chance 50%) -> "
               f"{layout.ave_encoder}")
    (print if progress else log.info)(message)   # the report line the user waits for; once
    if report["heldout_sync_accuracy"] < WEAK_AVE_ACCURACY:
        log.warning("the AVE encoder learned from %s tells in-sync from off-sync audio only %s of the time "
                    "(chance 50%%): lip sync will follow the audio weakly — %s",
                    layout.root, _percent(report["heldout_sync_accuracy"]), WEAK_AVE_REMEDY)
    return report


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Learn a person's AVE audio encoder (dataset/NAME/ave.pth).")
    parser.add_argument("dataset_dir", help="processed dataset folder (aud.wav, full_body_img/, crop_boxes.npy)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: from the length)")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="device to train on (default cpu)")
    parser.add_argument("--force", action="store_true", help="retrain even if ave.pth exists")
    return parser


@exit_on_user_error
def main(argv=None) -> Dict:
    args = build_parser().parse_args(argv)
    configure_console_logging()
    return train_ave_encoder(args.dataset_dir, device=device_name(args.device), force=args.force, steps=args.steps)


if __name__ == "__main__":
    main()
