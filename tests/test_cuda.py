"""What only a CUDA GPU can check (marker ``cuda``, skipped without one):

- mixed precision: float16 autocast, GradScaler loss scaling, gradient accumulation;
- channels_last: the Trainer's memory format gives the same output as the default one;
- float16 inference (the render path's TorchUNet) agreeing with float32;
- DDP + SyncBatchNorm under torchrun on NCCL, with one process (one GPU is what
  a single-GPU box gives NCCL; see OneProcessJob);
- resume on the GPU: an interrupted run resumed from latest.pth ends where the
  uninterrupted one does.
torch.compile is not used by the project, so there is nothing of it to check.

    pytest -q -m cuda tests/test_cuda.py          # benchmarks/gpu_check.sh runs exactly this

The data is built here without mediapipe or ffmpeg (a GPU box may have neither):
frames of the bundled clip decoded by OpenCV, one crop box around the mouth
from the clip's true lip landmarks, and seeded random audio features. Two CPU
tests keep that builder and the torchrun worker from rotting on machines
without a GPU.

Run as a script (``python tests/test_cuda.py --dataset_dir D --save_dir S
--device cuda --result R.json`` under torchrun) it is the worker of the DDP test.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):       # run as the torchrun worker: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pytest
import torch
from torch import nn

import train_328
from data_utils.dataset import feature_metadata_path, open_person
from data_utils.layout import DatasetLayout
from data_utils.timebase import model_audio_input
from lipsync.core import checkpoints as ckpt
from lipsync.core.devices import resolve_device
from lipsync.render.backends import TorchUNet
from lipsync.train.distributed import Distributed, seed_everything
from lipsync.train.options import TrainConfig
from lipsync.train.trainer import Trainer
from lipsync.train.unet_task import UNetTask
from models.unet_328 import WIDTHS, LipSyncUNet
from tests.training_helpers import randomise_batch_norm

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIP = REPO_ROOT / "tests" / "data" / "talker_a_4s.mp4"
CLIP_TRUTH = REPO_ROOT / "tests" / "data" / "talker_a_4s_truth.npz"   # lips_xy: (frames, 40, 2) pixels

HAS_CUDA = torch.cuda.is_available()

FRAMES = 40                  # 36 train + 4 held-out frames (VAL_FRACTION): 9 steps of batch 4
VAL_FRACTION = 0.1
BATCH_SIZE = 4
FEATURES_PER_FRAME = 64      # small audio windows: (4, 16, 16) for ave
FEATURE_SEED = 0
# The crop box: its side about the face width (data_utils/crop.py's crop) = 2.2 mouth widths,
# the mouth centre 30 % down from its top (below the nose, like a landmark crop).
CROP_SIDE_PER_MOUTH_WIDTH = 2.2
MOUTH_ROW_FRACTION = 0.3

GRADSCALER_INITIAL_SCALE = 2.0 ** 16     # torch's default; each overflowing step halves it
# channels_last and contiguous layouts pick different cuDNN kernels (TF32 by default): the
# sigmoid outputs in [0, 1] may differ this much, a wrong layout would differ by far more.
CHANNELS_LAST_TOLERANCE = 1e-2
# float16 against float32 inference, in uint8 grey levels of the generated crop. Emulated on
# a CPU in pure float16 the difference is at most 1 level (mean 0.03); autocast keeps more
# in float32, so these leave room for other GPUs' kernels without hiding a real fault.
FP16_MEAN_LEVELS = 0.5
FP16_MAX_LEVELS = 8
FP32_CPU_MEAN_LEVELS = 0.5   # float32 GPU (TF32 convolutions) against float32 CPU
HEAD_GAIN = 20.0             # spreads a random model's output over 0-255 like a trained one's
# Resume: CUDA's atomic adds (bilinear upsampling's backward) make two runs differ in the
# last bits; Adam can turn a last-bit gradient difference into up to one step of lr.
RESUME_LOSS_RTOL = 1e-3
RESUME_WEIGHT_ATOL = 2e-3
RESUME_LR = 1e-3
# Below the GPU check's share for the whole CUDA subset (150 s): a hung NCCL job fails this test
# alone, and pytest still writes the report with every other test's outcome.
TORCHRUN_TIMEOUT_S = 90
CPU_WORKER_FRAMES = 12


def needs_cuda(test):
    """The ``cuda`` marker (pytest -m cuda selects these), skipped without a CUDA device."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")(test))


# --------------------------------------------------------------------------- data

def build_gpu_dataset(root: Path, frames: int = FRAMES) -> Path:
    """A training dataset from the bundled clip needing only OpenCV and numpy (see the docstring)."""
    import cv2

    layout = DatasetLayout(Path(root))
    layout.frames_dir.mkdir(parents=True)
    capture = cv2.VideoCapture(str(CLIP))
    try:
        for index in range(frames):
            found, frame = capture.read()
            assert found, f"OpenCV could not decode frame {index} of {CLIP}"
            assert cv2.imwrite(str(layout.frame_path(index)), frame)
    finally:
        capture.release()
    lips = np.load(CLIP_TRUTH)["lips_xy"].astype(np.float64)
    centre_x, centre_y = lips.reshape(-1, 2).mean(axis=0)
    side = CROP_SIDE_PER_MOUTH_WIDTH * np.ptp(lips[..., 0], axis=1).mean()
    x0, y0 = int(round(centre_x - side / 2)), int(round(centre_y - MOUTH_ROW_FRACTION * side))
    box = np.array([x0, y0, x0 + int(round(side)), y0 + int(round(side))], dtype=np.int32)
    np.save(layout.crop_boxes, np.tile(box, (frames, 1)))
    rng = np.random.default_rng(FEATURE_SEED)
    np.save(layout.features("ave"), np.tanh(rng.standard_normal((frames, FEATURES_PER_FRAME))).astype(np.float32))
    feature_metadata_path(layout, "ave").write_text(json.dumps(
        {"asr": "ave", "encoder": "seeded random features (tests/test_cuda.py)",
         "per_frame_shape": [FEATURES_PER_FRAME], "frames": frames}))
    return layout.root


@pytest.fixture(scope="module")
def gpu_dataset(tmp_path_factory) -> Path:
    """Shared by the tests of this module: they write only into their own save folders."""
    return build_gpu_dataset(tmp_path_factory.mktemp("cuda data") / "talker")


def train_args(dataset_dir, save_dir, *extra):
    return ["--dataset_dir", str(dataset_dir), "--save_dir", str(save_dir), "--asr", "ave", "--model_size", "tiny",
            "--batch_size", str(BATCH_SIZE), "--num_workers", "0", "--device", "cuda", "--perceptual", "off",
            "--val_fraction", str(VAL_FRACTION), "--quiet", *map(str, extra)]


def unet_trainer(dataset_dir, save_dir, model_size="tiny", device="cuda", **changes) -> Trainer:
    torch.manual_seed(0)
    config = TrainConfig(dataset_dir=dataset_dir, save_dir=save_dir, model_size=model_size, batch_size=BATCH_SIZE,
                         num_workers=0, device=device, perceptual="off", val_fraction=VAL_FRACTION,
                         show_progress=False, **changes)
    person = open_person(dataset_dir, "ave", show_progress=False)
    model = LipSyncUNet("ave", person.audio_shape, WIDTHS[model_size])
    return Trainer(UNetTask(model, person, config), config)


def test_gpu_test_data_opens_as_a_training_dataset(gpu_dataset, tmp_path):
    """CPU: the builder gives real face crops and features the Trainer accepts."""
    person = open_person(gpu_dataset, "ave", show_progress=False)
    assert person.frame_count == FRAMES and person.audio_shape == (4, 16, 16)
    crop = person.crop(0)
    assert crop.shape == (328, 328, 3) and crop.std() > 10          # a picture, not a black square
    trainer = unet_trainer(gpu_dataset, tmp_path / "ck", device="cpu")
    assert len(trainer.train_loader) == (FRAMES - round(FRAMES * VAL_FRACTION)) // BATCH_SIZE


# --------------------------------------------------------------------------- mixed precision

@needs_cuda
def test_amp_step_with_loss_scaling_and_gradient_accumulation(gpu_dataset, tmp_path):
    save = tmp_path / "amp"
    train_328.main(train_args(gpu_dataset, save, "--epochs", 1, "--amp", "--grad_accum", 2))
    latest = torch.load(save / "latest.pth", weights_only=False)
    scale = latest["scaler"]["scale"]                   # an enabled GradScaler saved its state
    skipped = int(round(np.log2(GRADSCALER_INITIAL_SCALE / scale)))  # steps skipped for inf/NaN gradients
    micro_batches = (FRAMES - round(FRAMES * VAL_FRACTION)) // BATCH_SIZE       # 9
    optimizer_steps = -(-micro_batches // 2)            # every 2nd micro-batch, and the epoch's last one
    assert 0 <= skipped < optimizer_steps, scale
    assert latest["optimizer"]["state"][0]["step"] + skipped == optimizer_steps
    assert np.isfinite(latest["history"][0]["train_loss"])
    assert all(value.dtype != torch.float16 and torch.isfinite(value.float()).all()
               for value in latest["model"].values())   # master weights stay float32
    trainer = unet_trainer(gpu_dataset, tmp_path / "dtype", amp=True)
    batch = next(iter(trainer.train_loader))
    with trainer.autocast():
        image6, _, audio = trainer.task.inputs(batch, trainer.device, train=True)
        assert trainer.model(image6, audio).dtype == torch.float16


@needs_cuda
def test_channels_last_training_model_matches_the_default_layout(gpu_dataset, tmp_path):
    trainer = unet_trainer(gpu_dataset, tmp_path / "ck", model_size="mobile")
    convolutions = [module.weight for module in trainer.model.modules() if isinstance(module, nn.Conv2d)
                    and module.weight.ndim == 4 and module.weight.shape[-1] > 1]
    assert convolutions and all(weight.is_contiguous(memory_format=torch.channels_last) for weight in convolutions)
    batch = next(iter(trainer.train_loader))
    image6, _, audio = trainer.task.inputs(batch, trainer.device, train=False)
    assert image6.is_contiguous(memory_format=torch.channels_last)
    default = LipSyncUNet("ave", trainer.model.audio_shape, WIDTHS["mobile"]).to(trainer.device)
    default.load_state_dict(trainer.model.state_dict())
    trainer.model.eval()
    default.eval()
    with torch.no_grad():
        fast = trainer.model(image6, audio)
        plain = default(image6.contiguous(), audio)
    assert torch.isfinite(fast).all()
    assert (fast - plain).abs().max().item() < CHANNELS_LAST_TOLERANCE
    # and one training step in channels_last runs and gives finite losses
    trainer.train_model.train()
    terms = trainer.train_step(batch, 0, last_micro_step=True)
    assert all(np.isfinite(value) for value in terms.values())


# --------------------------------------------------------------------------- inference

@needs_cuda
@pytest.mark.parametrize("model_size", ["full", "mobile"])
def test_fp16_inference_agrees_with_fp32(gpu_dataset, model_size):
    person = open_person(gpu_dataset, "ave", show_progress=False)
    torch.manual_seed(0)
    model = LipSyncUNet("ave", person.audio_shape, WIDTHS[model_size])
    randomise_batch_norm(model)
    with torch.no_grad():
        model.head.weight *= HEAD_GAIN
    frames = range(8)
    crops = np.stack([person.crop(frame) for frame in frames])
    audio = np.stack([model_audio_input(person.features, frame, "ave") for frame in frames]).astype(np.float32)
    generated = {}
    benchmark = torch.backends.cudnn.benchmark          # TorchUNet turns it on; later tests compare runs
    try:
        for name, device, half in (("cpu", "cpu", False), ("fp32", "cuda", False), ("fp16", "cuda", True)):
            generated[name] = TorchUNet(model, device, half)(crops, audio).astype(np.int16)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    assert generated["fp32"].shape == (8, 320, 320, 3) and generated["fp32"].std() > 20
    half_error = np.abs(generated["fp16"] - generated["fp32"])
    assert half_error.mean() <= FP16_MEAN_LEVELS and half_error.max() <= FP16_MAX_LEVELS, \
        (half_error.mean(), half_error.max())
    assert np.abs(generated["fp32"] - generated["cpu"]).mean() <= FP32_CPU_MEAN_LEVELS


# --------------------------------------------------------------------------- torchrun

class OneProcessJob(Distributed):
    """A torchrun job of one process that takes the multi-process path anyway.

    The Trainer uses DDP, SyncBatchNorm and collectives only when there are
    several ranks (Distributed.enabled), and NCCL cannot run two ranks on one
    GPU. With this one rank the DDP wrapper, the no_sync accumulation, the
    SyncBatchNorm conversion and every collective go through NCCL; only the
    cross-GPU statistics exchange itself (world size > 1) is left out.
    """

    @property
    def enabled(self) -> bool:
        return True


def ddp_worker(argv=None) -> dict:
    """Train 2 epochs as OneProcessJob under torchrun; writes what it saw to --result."""
    parser = argparse.ArgumentParser()
    for option in ("--dataset_dir", "--save_dir", "--device", "--result"):
        parser.add_argument(option, required=True)
    args = parser.parse_args(argv)
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    seed_everything(0)
    config = TrainConfig(dataset_dir=args.dataset_dir, save_dir=args.save_dir, model_size="tiny",
                         batch_size=BATCH_SIZE, epochs=2, grad_accum=2, num_workers=0, device=args.device,
                         perceptual="off", val_fraction=VAL_FRACTION, amp=device.type == "cuda", show_progress=False)
    person = open_person(config.dataset_dir, "ave", show_progress=False)
    model = LipSyncUNet("ave", person.audio_shape, WIDTHS["tiny"])
    trainer = Trainer(UNetTask(model, person, config), config, OneProcessJob(0, 1, 0, device))
    history = trainer.fit()
    result = {"backend": torch.distributed.get_backend(),
              "ddp": isinstance(trainer.train_model, nn.parallel.DistributedDataParallel),
              "sync_batch_norm": sum(isinstance(module, nn.SyncBatchNorm) for module in trainer.model.modules()),
              "losses": [entry["train_loss"] for entry in history]}
    torch.distributed.destroy_process_group()
    Path(args.result).write_text(json.dumps(result))
    return result


def run_ddp_worker(dataset_dir, save_dir, device: str) -> dict:
    result_path = Path(save_dir).parent / f"ddp_{device}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(Path(__file__).resolve()), "--dataset_dir", str(dataset_dir), "--save_dir", str(save_dir),
               "--device", device, "--result", str(result_path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S, env=environment)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(result_path.read_text())


def test_one_process_torchrun_worker_on_cpu_with_gloo(tmp_path):
    """CPU: the worker of the NCCL test runs (gloo; no SyncBatchNorm on CPU), on 12 frames: 2 steps an epoch."""
    result = run_ddp_worker(build_gpu_dataset(tmp_path / "talker", CPU_WORKER_FRAMES), tmp_path / "ddp run", "cpu")
    assert result["backend"] == "gloo" and result["ddp"] and result["sync_batch_norm"] == 0
    assert len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
    assert sorted(path.name for path in (tmp_path / "ddp run").glob("*.pth")) == ["2.pth", "best.pth", "latest.pth"]


@needs_cuda
def test_ddp_and_sync_batch_norm_under_torchrun_on_nccl(gpu_dataset, tmp_path):
    save = tmp_path / "ddp run"
    result = run_ddp_worker(gpu_dataset, save, "cuda")
    assert result["backend"] == "nccl" and result["ddp"]
    plain = LipSyncUNet("ave", (4, 16, 16), WIDTHS["tiny"])
    batch_norms = sum(isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) for module in plain.modules())
    assert result["sync_batch_norm"] == batch_norms > 0          # every one of them converted
    assert len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
    # the SyncBatchNorm checkpoint loads into the plain model inference uses, with trained statistics
    model, config = ckpt.load_unet(save / "latest.pth", "cpu", asr="ave", model_size="tiny")
    assert isinstance(model, LipSyncUNet) and config["model_size"] == "tiny"
    means = [module.running_mean for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    assert all(torch.isfinite(mean).all() for mean in means) and any(mean.abs().sum() > 0 for mean in means)


# --------------------------------------------------------------------------- resume

@needs_cuda
def test_resume_on_cuda_continues_like_the_uninterrupted_run(gpu_dataset, tmp_path, capsys):
    extra = ["--epochs", 4, "--save_interval", 2, "--lr", RESUME_LR, "--lr_schedule", "cosine", "--augment",
             "--amp", "--grad_accum", 2]
    whole = tmp_path / "whole"
    train_328.main(train_args(gpu_dataset, whole, *extra))

    def interrupt(trainer, epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    parts = tmp_path / "parts"
    with pytest.raises(SystemExit) as stopped:
        train_328.main(train_args(gpu_dataset, parts, *extra), callbacks=[interrupt])
    assert stopped.value.code == 130
    train_328.main(train_args(gpu_dataset, parts, *extra, "--resume"))
    capsys.readouterr()
    straight = torch.load(whole / "latest.pth", weights_only=False)
    resumed = torch.load(parts / "latest.pth", weights_only=False)
    assert resumed["epoch"] == straight["epoch"] == 4 and len(resumed["history"]) == 4
    assert resumed["optimizer"]["state"][0]["step"] == straight["optimizer"]["state"][0]["step"]
    assert resumed["scaler"]["scale"] == straight["scaler"]["scale"]
    assert resumed["rng"][0]["cuda"].numel() > 0               # the GPU's random state travels too
    for left, right in zip(straight["history"], resumed["history"]):
        assert right["train_loss"] == pytest.approx(left["train_loss"], rel=RESUME_LOSS_RTOL)
        assert right["val_l1"] == pytest.approx(left["val_l1"], rel=RESUME_LOSS_RTOL)
    for key, value in straight["model"].items():
        if value.is_floating_point():
            assert torch.allclose(value, resumed["model"][key], rtol=0, atol=RESUME_WEIGHT_ATOL), key
        else:
            assert torch.equal(value, resumed["model"][key]), key


if __name__ == "__main__":
    ddp_worker()
