"""Training speed: data loader (crop cache vs JPEG decoding), seconds per step, peak memory.

    python benchmarks/bench_train.py --dataset_dir dataset/May --asr ave
    python benchmarks/bench_train.py                       # the bundled 4 s clip, processed into a temp dir
    python benchmarks/bench_train.py --dataset_dir dataset/May --devices cuda --perceptual --json out.json

Prints, per line, what was measured and on which device:
- data loader samples/s with one process (num_workers 0 = per worker), from
  the uint8 crop cache and from decoding full_body_img/*.jpg, and their ratio
  (target: cache >= 10x);
- seconds per U-Net training step (forward, losses, backward, Adam) and peak
  memory per model size, on CPU and, when CUDA is present, on the GPU with and
  without --amp (on CPU too with --cpu_amp: bfloat16), with the time 200 epochs
  of a 5-minute recording would take. --devices picks cpu, cuda or both.
The perceptual loss is timed with randomly initialised VGG19 layers when the
torchvision weights are not cached: same cost, no download.
"""
import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from data_utils.crop_cache import JpegCrops
from data_utils.dataset import LipSyncDataset, load_crop_boxes, open_person
from data_utils.preprocess import process_video
from data_utils.timebase import FPS
from lipsync.train.distributed import peak_memory_mb
from lipsync.train.options import TrainConfig
from lipsync.train.trainer import Trainer
from lipsync.train.unet_task import UNetTask
from models.perceptual import VGG19_LAYERS, VGGPerceptualLoss, build_perceptual_loss
from models.unet_328 import WIDTHS, LipSyncUNet
from tests.training_helpers import write_test_features

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_CLIP = REPO_ROOT / "tests" / "data" / "talker_a_4s.mp4"
RECORDING_MINUTES = 5            # the yardstick: 5 minutes, 200 epochs
EPOCHS = 200
WARMUP_STEPS = 2


def bundled_dataset(workdir: Path) -> Path:
    """Process the bundled clip and give it test features (no encoder download or training)."""
    root = workdir / "talker"
    root.mkdir(parents=True)
    shutil.copy(BUNDLED_CLIP, root / "talker.mp4")
    process_video(root / "talker.mp4", show_progress=False)
    write_test_features(root, "ave", per_frame_shape=(512,))
    return root


def loader_rate(dataset, samples: int) -> float:
    order = np.random.default_rng(0).permutation(len(dataset))[:samples]
    started = time.perf_counter()
    for item in order:
        dataset[int(item)]
    return len(order) / (time.perf_counter() - started)


def bench_loader(person, samples: int):
    frames = np.arange(person.frame_count)
    cached = LipSyncDataset(person, frames, frames)
    jpeg_person = type(person)(person.layout, person.asr, JpegCrops(person.layout, load_crop_boxes(person.layout)),
                               person.features)
    decoded = LipSyncDataset(jpeg_person, frames, frames)
    loader_rate(cached, 8)                                 # page the cache in once, as training does
    cache_rate = loader_rate(cached, samples)
    jpeg_rate = loader_rate(decoded, samples)
    return cache_rate, jpeg_rate


def perceptual_for_timing(enabled: bool):
    if not enabled:
        return None, "off"
    loss = build_perceptual_loss("auto")
    if loss is not None:
        return loss, "VGG19 (torchvision weights)"
    from torchvision.models.vgg import cfgs, make_layers

    return VGGPerceptualLoss(make_layers(cfgs["E"])[:VGG19_LAYERS[-1] + 1]), "VGG19 (random weights, timing only)"


def bench_steps(person, dataset_dir, model_size, batch_size, steps, device, amp, perceptual):
    torch.manual_seed(0)
    config = TrainConfig(dataset_dir=dataset_dir, save_dir=Path(tempfile.mkdtemp()), model_size=model_size,
                         batch_size=batch_size, num_workers=0, device=device, amp=amp, perceptual="off",
                         val_fraction=0.0, show_progress=False)
    model = LipSyncUNet(person.asr, person.audio_shape, WIDTHS[model_size])
    trainer = Trainer(UNetTask(model, person, config, perceptual=perceptual), config)
    batch = next(iter(trainer.train_loader))
    trainer.train_model.train()
    dev = trainer.device
    for step in range(WARMUP_STEPS):
        trainer.train_step(batch, step, False)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    started = time.perf_counter()
    for step in range(steps):
        trainer.train_step(batch, step, False)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = (time.perf_counter() - started) / steps
    return seconds, peak_memory_mb(dev)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", help="processed dataset with aud_<asr>.npy (default: the bundled clip)")
    parser.add_argument("--asr", default="ave")
    parser.add_argument("--loader_samples", type=int, default=200)
    parser.add_argument("--cpu_sizes", nargs="+", default=["tiny", "mobile"], choices=list(WIDTHS))
    parser.add_argument("--gpu_sizes", nargs="+", default=["full", "base", "mobile"], choices=list(WIDTHS))
    parser.add_argument("--cpu_batch_size", type=int, default=4)
    parser.add_argument("--gpu_batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after 2 warm-up)")
    parser.add_argument("--gpu_steps", type=int, default=20)
    parser.add_argument("--devices", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CPU sizes, and the GPU sizes when CUDA is present (default)")
    parser.add_argument("--cpu_amp", action="store_true", help="also time the CPU sizes with --amp (bfloat16)")
    parser.add_argument("--perceptual", action="store_true", help="include the VGG19 perceptual loss")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    workdir = Path(tempfile.mkdtemp(prefix="bench_train_"))
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else bundled_dataset(workdir)
    person = open_person(dataset_dir, args.asr, show_progress=False)
    figures = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
               "torch": torch.__version__, "dataset": str(dataset_dir), "frames": person.frame_count}
    print(f"dataset {dataset_dir}: {person.frame_count} frames, audio window {person.audio_shape}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    cache_rate, jpeg_rate = bench_loader(person, min(args.loader_samples, person.frame_count))
    figures["loader"] = {"cache_samples_per_s": cache_rate, "jpeg_samples_per_s": jpeg_rate,
                         "ratio": cache_rate / jpeg_rate}
    print(f"data loader, one worker: crop cache {cache_rate:.0f} samples/s, JPEG decoding {jpeg_rate:.0f} "
          f"samples/s -> {cache_rate / jpeg_rate:.1f}x")

    perceptual, perceptual_name = perceptual_for_timing(args.perceptual)
    frames_5min = RECORDING_MINUTES * 60 * FPS
    runs = []
    if args.devices in ("auto", "cpu"):
        runs += [("cpu", size, amp, args.cpu_batch_size, args.steps) for size in args.cpu_sizes
                 for amp in ((False, True) if args.cpu_amp else (False,))]
    if args.devices == "cuda" or (args.devices == "auto" and torch.cuda.is_available()):
        runs += [("cuda", size, amp, args.gpu_batch_size, args.gpu_steps)
                 for size in args.gpu_sizes for amp in (False, True)]
    else:
        print("no CUDA device: GPU figures skipped" if args.devices == "auto" else "--devices cpu: GPU figures skipped")
    figures["steps"] = []
    for device, size, amp, batch_size, steps in runs:
        seconds, memory = bench_steps(person, dataset_dir, size, batch_size, steps, device, amp, perceptual)
        hours = frames_5min * EPOCHS / batch_size * seconds / 3600
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        figures["steps"].append({"device": device, "device_name": name, "model_size": size, "amp": amp,
                                 "batch_size": batch_size, "seconds_per_step": seconds, "peak_memory_mb": memory,
                                 "samples_per_s": batch_size / seconds, "hours_5min_200_epochs": hours,
                                 "perceptual": perceptual_name})
        print(f"{name}: {size:6s} batch {batch_size} amp {'on ' if amp else 'off'} perceptual {perceptual_name}: "
              f"{seconds:.3f} s/step, {batch_size / seconds:.1f} samples/s, peak memory {memory:.0f} MB "
              f"-> 200 epochs of a 5-min recording: {hours:.1f} h")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    return figures


if __name__ == "__main__":
    main()
