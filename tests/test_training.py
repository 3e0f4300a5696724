"""Training on the bundled clip, CPU, tiny widths: the crop cache, loss going
down, checkpoint names and intervals, exact resume, SyncNet with real
negatives, DDP with gloo, and one clear line for every bad input."""
import errno
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train_328
import train_syncnet
from lipsync.core import checkpoints as ckpt
from data_utils.crop_cache import JpegCrops, build_crop_cache, cache_info_path
from data_utils.dataset import MIN_OFFSYNC_FRAMES, SyncPairDataset, load_crop_boxes, open_person
from lipsync.core.errors import UserError
from data_utils.layout import DatasetLayout
from data_utils.timebase import FEATURE_SPECS
from lipsync.train.distributed import Distributed
from lipsync.train.options import TrainConfig
from lipsync.train.trainer import Trainer
from lipsync.train.unet_task import UNetTask
from models.unet_328 import WIDTHS, LipSyncUNet
from tests.training_helpers import SMALL_FRAMES, base_args, make_small_dataset, run_main, write_test_features

REPO_ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


# --------------------------------------------------------------------------- data

def test_crop_cache_equals_jpeg_crops_and_is_built_once(small):
    layout = DatasetLayout(small)
    boxes = load_crop_boxes(layout)
    person = open_person(small, "ave", show_progress=False)
    jpeg = JpegCrops(layout, boxes)
    for frame in (0, 7, SMALL_FRAMES - 1):
        np.testing.assert_array_equal(person.crop(frame), jpeg[frame])
    assert person.crop(0).std() > 10                   # a real picture, not zeros
    stamp = layout.crop_cache.stat().st_mtime_ns
    open_person(small, "ave", show_progress=False)
    assert layout.crop_cache.stat().st_mtime_ns == stamp   # reused, not rebuilt
    assert not list(small.glob(".*partial*"))
    # New crop boxes invalidate the cache.
    boxes[3] += 2
    np.save(layout.crop_boxes, boxes)
    build_crop_cache(layout, boxes, show_progress=False)
    np.testing.assert_array_equal(open_person(small, "ave", show_progress=False).crop(3), jpeg[3])
    assert cache_info_path(layout).is_file()


# A crop-cache builder. The slow one, once inside the build, waits for the fast one to be about
# to build too, then goes on slowly, so the two overlap.
CACHE_BUILDER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from data_utils import crop_cache
from data_utils.dataset import load_crop_boxes
from data_utils.layout import DatasetLayout
layout, markers, slow = DatasetLayout(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "slow"
if slow:
    cut = crop_cache.JpegCrops.__getitem__
    def slow_cut(self, index):
        (markers / "slow builder started").touch()
        deadline = time.monotonic() + 60
        while not (markers / "fast builder starts").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        return cut(self, index)
    crop_cache.JpegCrops.__getitem__ = slow_cut
else:
    (markers / "fast builder starts").touch()
crop_cache.build_crop_cache(layout, load_crop_boxes(layout), show_progress=False)
"""


def test_two_processes_building_the_crop_cache_at_once_both_succeed(small, tmp_path):
    # The U-Net and SyncNet trained side by side both build the cache on start; sharing its
    # temporary file, one used to die (SIGBUS, or a vanished file at the rename).
    layout = DatasetLayout(small)
    assert not layout.crop_cache.exists()

    def builder(speed):
        return subprocess.Popen([sys.executable, "-c", CACHE_BUILDER, str(REPO_ROOT), str(small), str(tmp_path),
                                 speed], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = builder("slow")
    deadline = time.monotonic() + 60
    while not (tmp_path / "slow builder started").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "slow builder started").exists(), first.communicate()[0]
    second = builder("fast")
    for process in (first, second):
        output = process.communicate(timeout=120)[0]
        assert process.returncode == 0, output
    jpeg = JpegCrops(layout, load_crop_boxes(layout))
    person = open_person(small, "ave", show_progress=False)
    for frame in range(SMALL_FRAMES):
        np.testing.assert_array_equal(person.crop(frame), jpeg[frame])
    assert not list(small.glob(".*partial*"))


def test_a_crop_cache_lock_that_cannot_be_created_stops_with_one_line_naming_it(small, monkeypatch):
    # An unwritable dataset folder (a read-only disk, another user's folder) with no current
    # cache. Tests run as root, which no permission stops, so the OS's refusal is the one
    # thing faked here.
    from lipsync.core import locks

    layout = DatasetLayout(small)
    boxes = load_crop_boxes(layout)
    build_crop_cache(layout, boxes, show_progress=False)
    opening = locks.os.open

    def refuse_lock_files(path, *arguments, **keywords):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return opening(path, *arguments, **keywords)

    monkeypatch.setattr(locks.os, "open", refuse_lock_files)
    # A current cache needs no lock: such a folder still trains.
    assert build_crop_cache(layout, boxes, show_progress=False) == layout.crop_cache
    cache_info_path(layout).unlink()                  # now it has to be rebuilt
    with pytest.raises(UserError) as refused:
        build_crop_cache(layout, boxes, show_progress=False)
    message = str(refused.value)
    assert "\n" not in message and ".crops_328.u8.lock" in message and "permissions" in message


def test_syncnet_pairs_use_real_offsync_audio(small):
    person = open_person(small, "ave", show_progress=False)
    dataset = SyncPairDataset(person, np.arange(SMALL_FRAMES), seed=0)
    for item in range(SMALL_FRAMES):
        sample = dataset[item]
        assert not torch.equal(sample["audio"], sample["offsync_audio"])
        matches = [other for other in range(SMALL_FRAMES)
                   if torch.equal(torch.from_numpy(person.audio(other)), sample["offsync_audio"])]
        assert matches and all(abs(other - item) >= MIN_OFFSYNC_FRAMES for other in matches)


# --------------------------------------------------------------------------- learning

def test_a_few_steps_lower_the_loss_and_zero_gradients_each_step(small, tmp_path):
    torch.manual_seed(0)
    config = TrainConfig(dataset_dir=small, save_dir=tmp_path / "ck", model_size="tiny", batch_size=2,
                         lr=5e-3, num_workers=0, device="cpu", perceptual="off", show_progress=False)
    person = open_person(small, "ave", show_progress=False)
    model = LipSyncUNet("ave", person.audio_shape, WIDTHS["tiny"])
    trainer = Trainer(UNetTask(model, person, config), config)
    batch = next(iter(trainer.train_loader))
    trainer.train_model.train()
    with torch.no_grad():
        before = float(trainer.task.losses(trainer.train_model, batch, trainer.device)["l1"])
    for step in range(12):
        trainer.train_step(batch, step, last_micro_step=False)
        assert all(parameter.grad is None for parameter in model.parameters())   # zeroed every step
    with torch.no_grad():
        after = float(trainer.task.losses(trainer.train_model, batch, trainer.device)["l1"])
    assert after < 0.8 * before, (before, after)


def test_checkpoints_every_interval_and_exact_resume(small, tmp_path, capsys):
    extra = ["--epochs", 4, "--save_interval", 3, "--lr_schedule", "cosine", "--augment", "--see_res",
             "--lr", "1e-3"]
    whole = tmp_path / "whole"
    train_328.main(base_args(small, whole, *extra))
    names = sorted(path.name for path in whole.glob("*.pth"))
    assert names == ["3.pth", "4.pth", "best.pth", "latest.pth"]    # interval 3, plus the final epoch
    assert sorted(path.name for path in (whole / "samples").iterdir()) == [
        f"epoch_{epoch:04d}.png" for epoch in range(1, 5)]
    assert (whole / "loss_curve.png").stat().st_size > 1000
    log_lines = [line for line in (whole / "training.log").read_text().splitlines() if " epoch " in f" {line}"]
    epoch_lines = [line for line in log_lines if "val_psnr" in line]
    assert len(epoch_lines) == 4 and all("train_loss" in line and "val_l1" in line for line in epoch_lines)

    latest = torch.load(whole / "latest.pth", weights_only=False)
    assert latest["epoch"] == 4 and latest["finished"]
    for key in ("model", "optimizer", "scaler", "scheduler", "args", "rng", "history", "config"):
        assert key in latest
    assert latest["config"]["asr"] == "ave" and latest["config"]["widths"] == list(WIDTHS["tiny"])
    assert latest["config"]["features"]["per_frame_shape"] == [64]
    model, config = ckpt.load_unet(ckpt.resolve_checkpoint(whole), "cpu", asr="ave", model_size="tiny")
    assert ckpt.resolve_checkpoint(whole).name == "4.pth" and config["model_size"] == "tiny"
    assert ckpt.resolve_checkpoint(whole, 3).name == "3.pth"
    assert ckpt.resolve_checkpoint(whole, "best").name == "best.pth"

    # The same run, interrupted after epoch 2 (Ctrl-C), then resumed.
    parts = tmp_path / "parts"

    def interrupt(trainer, epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        train_328.main(base_args(small, parts, *extra), callbacks=[interrupt])
    assert stopped.value.code == 130
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith("interrupted: finished epochs are kept; continue with: python train_328.py ")
    continue_with = shlex.split(said.split("continue with: ", 1)[1])[2:]  # the printed command continues
    assert continue_with == [str(word) for word in base_args(small, parts, *extra, "--resume")]
    assert sorted(path.name for path in parts.glob("*.pth")) == ["best.pth", "latest.pth"]
    code, lines = run_main(train_328.main, base_args(small, parts, *extra), capsys)
    assert code == 2 and len(lines) == 1 and "--resume" in lines[0]       # never silently restarted
    train_328.main(continue_with)
    assert sorted(path.name for path in parts.glob("*.pth")) == names
    resumed = torch.load(parts / "latest.pth", weights_only=False)
    assert resumed["epoch"] == 4 and len(resumed["history"]) == 4
    for key, value in latest["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert latest["optimizer"]["state"][0]["step"] == resumed["optimizer"]["state"][0]["step"]
    for left, right in zip(latest["history"], resumed["history"]):
        assert left["train_loss"] == right["train_loss"] and left["val_l1"] == right["val_l1"]
    # A finished run resumed again has nothing to do.
    train_328.main(base_args(small, parts, *extra, "--resume"))
    assert torch.load(parts / "latest.pth", weights_only=False)["epoch"] == 4


def test_gradient_accumulation_and_amp(small, tmp_path):
    save = tmp_path / "accumulate"
    train_328.main(base_args(small, save, "--epochs", 1, "--grad_accum", 2, "--amp"))
    latest = torch.load(save / "latest.pth", weights_only=False)
    micro_batches = (SMALL_FRAMES - 1) // 4                              # 2 micro-batches of 4
    assert latest["optimizer"]["state"][0]["step"] == micro_batches // 2
    assert np.isfinite(latest["history"][0]["train_loss"])


def test_syncnet_training_then_unet_with_sync_loss(processed_clip, tmp_path, capsys):
    # SyncNet needs 11+ frames per split (every face gets audio 5+ frames away): 40 frames, 30% held out.
    data = make_small_dataset(processed_clip, tmp_path / "talker", 40)
    save = tmp_path / "ck"
    argv = ["--dataset_dir", str(data), "--save_dir", str(save / "syncnet"), "--model_size", "tiny",
            "--batch_size", "8", "--epochs", "2", "--num_workers", "0", "--device", "cpu", "--quiet"]
    code, lines = run_main(train_syncnet.main, argv + ["--val_fraction", "0.05"], capsys)
    assert len(lines) == 1 and "held-out part" in lines[0] and "has 2 frames" in lines[0]
    train_syncnet.main(argv + ["--val_fraction", "0.3"])
    log_text = (save / "syncnet" / "training.log").read_text()
    assert "val_accuracy" in log_text and "val_pair_accuracy" in log_text
    accuracy = torch.load(save / "syncnet" / "latest.pth", weights_only=False)["history"][-1]["val_accuracy"]
    assert 0.0 <= accuracy <= 1.0
    fixed = ("--sync_balance", "fixed", "--sync_warmup_epochs", "0")
    train_328.main(base_args(data, save, "--epochs", 1, "--use_syncnet", "--val_fraction", "0.3", *fixed))
    entry = torch.load(save / "latest.pth", weights_only=False)["history"][0]
    assert entry["train_sync"] > 0 and "val_sync_accuracy" in entry
    assert entry["train_loss"] == pytest.approx(entry["train_l1"] + 10 * entry["train_sync"], rel=1e-4)
    lighter = tmp_path / "ck_light"
    train_328.main(base_args(data, lighter, "--epochs", 1, "--use_syncnet", "--val_fraction", "0.3", *fixed,
                             "--syncnet_checkpoint", str(save / "syncnet" / "best.pth"), "--sync_weight", "0.5"))
    entry = torch.load(lighter / "latest.pth", weights_only=False)["history"][0]
    assert entry["train_loss"] == pytest.approx(entry["train_l1"] + 0.5 * entry["train_sync"], rel=1e-4)
    # The default objective: reconstruction alone for the warm-up epochs, then the balanced sync term.
    default = tmp_path / "ck_default"
    train_328.main(base_args(data, default, "--epochs", 3, "--use_syncnet", "--val_fraction", "0.3",
                             "--syncnet_checkpoint", str(save / "syncnet" / "best.pth")))
    history = torch.load(default / "latest.pth", weights_only=False)["history"]
    assert "train_sync" not in history[0] and "train_sync" not in history[1]
    assert history[2]["train_sync"] > 0 and 0 < history[2]["train_sync_weight"] <= 10
    # During the warm-up the sync loss is absent, and the U-Net's start follows from --seed alone:
    # one warm-up epoch gives exactly the weights of a run without SyncNet.
    plain, warm = tmp_path / "ck_plain", tmp_path / "ck_warm"
    train_328.main(base_args(data, plain, "--epochs", 1, "--val_fraction", "0.3"))
    train_328.main(base_args(data, warm, "--epochs", 1, "--val_fraction", "0.3", "--use_syncnet",
                             "--syncnet_checkpoint", str(save / "syncnet" / "best.pth"), "--sync_warmup_epochs", "1"))
    plain_weights = torch.load(plain / "latest.pth", weights_only=False)["model"]
    warm_weights = torch.load(warm / "latest.pth", weights_only=False)["model"]
    assert all(torch.equal(plain_weights[key], warm_weights[key]) for key in plain_weights)


# --------------------------------------------------------------------------- torchrun

def test_ddp_two_cpu_processes_with_gloo(small, tmp_path):
    save = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO_ROOT / "train_328.py"), *base_args(small, save, "--epochs", 2, "--batch_size", 2,
                                                           "--save_interval", 1, "--augment")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in save.glob("*.pth")) == ["1.pth", "2.pth", "best.pth", "latest.pth"]
    log_text = (save / "training.log").read_text()
    assert "2 process(es)" in log_text
    # 11 train frames / (2 processes x batch 2) = 2 steps per epoch (drop_last).
    assert "2 steps per epoch" in log_text
    assert log_text.count("epoch 1/2") == 1 and log_text.count("epoch 2/2") == 1   # rank 0 logs alone
    latest = torch.load(save / "latest.pth", weights_only=False)
    assert latest["optimizer"]["state"][0]["step"] == 4
    # each rank draws its own augmentation, and resume gets every rank's random state back
    first, second = latest["rng"]
    assert not torch.equal(first["torch"], second["torch"])
    assert "destroy_process_group" not in result.stderr


def test_batch_norm_is_synchronised_only_between_gpus():
    gpus, cpus = torch.device("cuda", 0), torch.device("cpu")
    assert Distributed(0, 2, 0, gpus).syncs_batch_norm
    assert not Distributed(0, 2, 0, cpus).syncs_batch_norm        # torch has no SyncBatchNorm on CPU
    assert not Distributed(0, 1, 0, gpus).syncs_batch_norm
    # what the Trainer does on GPUs keeps the checkpoint loadable by a plain model (inference, one GPU)
    audio_shape = FEATURE_SPECS["ave"].window_shape()
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(LipSyncUNet("ave", audio_shape, WIDTHS["tiny"]))
    assert any(isinstance(module, torch.nn.SyncBatchNorm) for module in synced.modules())
    plain = LipSyncUNet("ave", audio_shape, WIDTHS["tiny"])
    assert plain.load_state_dict(synced.state_dict(), strict=True).missing_keys == []


# --------------------------------------------------------------------------- bad input

def test_unprocessed_dataset_names_the_command(tmp_path, capsys):
    raw = tmp_path / "May"
    raw.mkdir()
    (raw / "May.mp4").write_bytes(b"")
    code, lines = run_main(train_328.main, base_args(raw, tmp_path / "ck"), capsys)
    assert code == 2 and len(lines) == 1
    assert "is not processed" in lines[0] and "python data_utils/process.py --input_video" in lines[0]
    code, lines = run_main(train_328.main, base_args(tmp_path / "nobody", tmp_path / "ck"), capsys)
    assert len(lines) == 1 and "does not exist" in lines[0] and "process.py" in lines[0]


def test_the_person_is_named_once(tmp_path, capsys):
    # --name and --dataset_dir resolve in one place (data_utils.layout.chosen_dataset_dir) for
    # train_328.py, train_syncnet.py and the benchmarks that train or read a dataset.
    code, lines = run_main(train_328.main, ["--asr", "ave"], capsys)
    assert code == 2 and lines == ["error: say which person to train: --name NAME (dataset/NAME) or --dataset_dir DIR"]
    code, lines = run_main(train_328.main, ["--name", "May", "--dataset_dir", str(tmp_path)], capsys)
    assert code == 2 and lines == ["error: give either --name or --dataset_dir, not both"]


def test_features_for_another_asr(small, tmp_path, capsys):
    argv = base_args(small, tmp_path / "ck")
    argv[argv.index("ave")] = "hubert"
    code, lines = run_main(train_328.main, argv, capsys)
    assert code == 2 and len(lines) == 1
    assert "has audio features for ave" in lines[0] and "--asr hubert" in lines[0]
    # Features whose metadata says another encoder made them.
    features = DatasetLayout(small).features("wenet")
    write_test_features(small, "ave")
    features.write_bytes(DatasetLayout(small).features("ave").read_bytes())
    features.with_suffix(".json").write_text('{"asr": "ave"}')
    argv[argv.index("hubert")] = "wenet"
    code, lines = run_main(train_328.main, argv, capsys)
    assert len(lines) == 1 and "holds features for --asr ave" in lines[0]


def test_a_checkpoint_of_the_old_default_width_still_loads_and_resuming_it_says_what_to_type(small, tmp_path,
                                                                                             capsys):
    # Before "base" became the default, runs were "full" width: their checkpoints keep loading as full.
    person = open_person(small, "ave", show_progress=False)
    model = LipSyncUNet("ave", person.audio_shape, WIDTHS["full"])
    config = ckpt.unet_config(model, person.describe_features())
    run = tmp_path / "old run"
    ckpt.save_checkpoint(run / "latest.pth", model.state_dict(), config, 1, optimizer={}, args={"model_size": "full"})
    loaded, loaded_config = ckpt.load_unet(run / "latest.pth", "cpu")
    assert loaded.widths == WIDTHS["full"] and loaded_config["model_size"] == "full"
    argv = [arg for arg in base_args(small, run, "--epochs", 2, "--resume")]
    at = argv.index("--model_size")
    del argv[at:at + 2]                                        # the new default: base
    code, lines = run_main(train_328.main, argv, capsys)
    assert code == 2 and len(lines) == 1 and "use --model_size full" in lines[0]


def test_checkpoint_from_another_asr_or_width(small, tmp_path, capsys):
    save = tmp_path / "ck"
    train_328.main(base_args(small, save, "--epochs", 1))
    path = ckpt.resolve_checkpoint(save)
    with pytest.raises(UserError, match="trained with --asr ave, not --asr hubert"):
        ckpt.load_unet(path, "cpu", asr="hubert")
    with pytest.raises(UserError, match="model size tiny .* not full"):
        ckpt.load_unet(path, "cpu", model_size="full")
    argv = base_args(small, save, "--epochs", 2, "--resume")
    argv[argv.index("tiny")] = "mobile"
    code, lines = run_main(train_328.main, argv, capsys)
    assert code == 2 and len(lines) == 1 and "model size tiny" in lines[0]
    broken = tmp_path / "broken.pth"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="damaged or not a checkpoint"):
        ckpt.load_unet(broken)
    with pytest.raises(UserError, match="does not exist"):
        ckpt.resolve_checkpoint(save, 7)
    with pytest.raises(UserError, match="train first"):
        ckpt.resolve_checkpoint(tmp_path / "nothing_here")


def test_batch_size_larger_than_the_dataset(small, tmp_path, capsys):
    code, lines = run_main(train_328.main, base_args(small, tmp_path / "ck") + ["--batch_size", "64"], capsys)
    assert code == 2 and len(lines) == 1
    assert "--batch_size 64 is larger than the 11 training frames" in lines[0]


@pytest.mark.parametrize("option, value, message", [
    ("--sync_weight", "-1", "--sync_weight cannot be negative, got -1.0"),
    ("--sync_ratio", "-0.5", "--sync_ratio cannot be negative, got -0.5"),
    ("--sync_warmup_epochs", "-2", "--sync_warmup_epochs cannot be negative, got -2"),
    ("--lr", "0", "--lr must be positive, got 0.0"),
    ("--epochs", "0", "--epochs must be at least 1, got 0"),
    ("--max_minutes", "-1", "--max_minutes cannot be negative, got -1"),
    ("--lip_weight", "0.5", "--lip_weight counts the lips' pixels that many times; it must be at least 1, got 0.5"),
    ("--reference_frames", "0", "--reference_frames must be at least 1, got 0"),
])
def test_option_values_out_of_range(small, tmp_path, capsys, option, value, message):
    code, lines = run_main(train_328.main, base_args(small, tmp_path / "ck") + [option, value], capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "ck" / "latest.pth").exists()


def test_cuda_requested_but_absent(small, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = base_args(small, tmp_path / "ck")
    argv[argv.index("cpu")] = "cuda"
    code, lines = run_main(train_328.main, argv, capsys)
    assert code == 2 and len(lines) == 1
    assert "--device cuda was requested but PyTorch sees no CUDA GPU" in lines[0]


def test_missing_syncnet_and_missing_name(small, tmp_path, capsys):
    code, lines = run_main(train_328.main, base_args(small, tmp_path / "ck", "--use_syncnet"), capsys)
    assert len(lines) == 1 and "no SyncNet checkpoint" in lines[0] and "train_syncnet.py" in lines[0]
    code, lines = run_main(train_328.main, ["--asr", "ave"], capsys)
    assert len(lines) == 1 and "--name NAME" in lines[0]


# --------------------------------------------------------------------------- training_328.sh

def _script_sandbox(tmp_path):
    """training_328.sh in a folder of its own, with a stand-in python that records its calls."""
    root = tmp_path / "repo"
    (root / "dataset" / "May").mkdir(parents=True)
    (root / "dataset" / "May" / "May.mp4").write_bytes(b"video")
    (root / "training_328.sh").write_text((REPO_ROOT / "training_328.sh").read_text())
    fake = tmp_path / "fake_python"
    fake.write_text('#!/usr/bin/env bash\necho "$*" >> "$CALLS"\n[ "$1" != "${FAIL_ON:-none}" ]\n')
    fake.chmod(0o755)
    return root, fake


def _run_script(root, fake, *arguments, fail_on="none"):
    calls = root / "calls.txt"
    calls.unlink(missing_ok=True)
    environment = {**os.environ, "PYTHON": str(fake), "CALLS": str(calls), "FAIL_ON": fail_on,
                   "UNET_ARGS": "--model_size tiny --epochs 3", "EVALUATE_ARGS": "--no_video"}
    result = subprocess.run(["bash", str(root / "training_328.sh"), *arguments], capture_output=True,
                            text=True, env=environment, timeout=60)
    made = calls.read_text().splitlines() if calls.exists() else []
    return result, made


def test_training_script_runs_stages_in_order_stops_at_failure_and_skips_finished(tmp_path):
    root, fake = _script_sandbox(tmp_path)
    result, calls = _run_script(root, fake, "May", "cpu")
    assert result.returncode == 0, result.stderr
    assert [call.split()[0] for call in calls] == ["data_utils/process.py", "train_syncnet.py", "train_328.py",
                                                   "evaluate_328.py"]
    assert "--input_video dataset/May/May.mp4 --output_dir dataset/May --asr ave --device cpu" in calls[0]
    assert "--resume" in calls[1] and "--use_syncnet --resume --model_size tiny --epochs 3" in calls[2]
    assert calls[3] == "evaluate_328.py --name May --last 1 --device cpu --no_video"
    assert result.stdout.count("== [") == 4 and "warning" not in result.stderr

    # The checkpoints are finished when the check after them fails: a warning, and the run succeeds.
    result, calls = _run_script(root, fake, "May", "cpu", fail_on="evaluate_328.py")
    assert result.returncode == 0 and len(calls) == 4
    assert "warning: the held-out check failed" in result.stderr and "== done" in result.stdout

    result, calls = _run_script(root, fake, "May", "cpu", "hubert", fail_on="train_syncnet.py")
    assert result.returncode != 0
    assert [call.split()[0] for call in calls] == ["data_utils/process.py", "train_syncnet.py"]
    assert "--asr hubert" in calls[0]

    (root / "checkpoint" / "May" / "syncnet").mkdir(parents=True)
    (root / "checkpoint" / "May" / "syncnet" / "summary.json").write_text("{}")
    result, calls = _run_script(root, fake, "May", "0")
    assert result.returncode == 0 and "SyncNet already trained" in result.stdout
    assert [call.split()[0] for call in calls] == ["data_utils/process.py", "train_328.py", "evaluate_328.py"]
    assert "--device cuda" in calls[1] and "--device cuda" in calls[2]

    (root / "checkpoint" / "May" / "syncnet" / "summary.json").unlink()
    result, calls = _run_script(root, fake, "May", "0,1")
    assert result.returncode == 0, result.stderr
    torchrun = "-m torch.distributed.run --standalone --nproc_per_node 2"
    assert calls[1].startswith(f"{torchrun} train_syncnet.py") and calls[2].startswith(f"{torchrun} train_328.py")
    assert calls[3].startswith("evaluate_328.py")                    # one process renders the check
    assert calls[0].startswith("data_utils/process.py")              # preprocessing stays one process
    for bad in ("0,", "a", "0,,1"):
        result, calls = _run_script(root, fake, "May", bad)
        assert result.returncode == 2 and calls == [] and "GPU must be an index" in result.stderr

    result, calls = _run_script(root, fake, "Nobody", "0")
    assert result.returncode == 2 and calls == []
    assert "dataset/Nobody/Nobody.mp4 does not exist" in result.stderr
    result, calls = _run_script(root, fake, "May")
    assert result.returncode == 2 and "usage: bash training_328.sh NAME GPU [ASR]" in result.stderr


def test_patience_stops_when_the_held_out_score_stops_improving(small, tmp_path, monkeypatch):
    scores = iter([0.5, 0.4, 0.45, 0.41, 0.3, 0.2])          # best at epoch 2, then two worse epochs

    def scripted_validate(self, model, loader, device, autocast):
        return {"val_l1": next(scores), "val_psnr": 20.0}

    monkeypatch.setattr(UNetTask, "validate", scripted_validate)
    save = tmp_path / "ck"
    train_328.main(base_args(small, save, "--epochs", 6, "--patience", 2, "--save_interval", 10))
    assert sorted(path.name for path in save.glob("*.pth")) == ["4.pth", "best.pth", "latest.pth"]
    assert torch.load(save / "best.pth", weights_only=False)["epoch"] == 2
    assert "stopping early: val_l1 has not improved for 2 epochs" in (save / "training.log").read_text()


def test_max_minutes_stops_after_the_epoch_that_crosses_it_and_resume_continues(small, tmp_path):
    save = tmp_path / "timed"
    # 0.0001 min = 6 ms: the first epoch crosses it, so the 50-epoch run stops after epoch 1.
    train_328.main(base_args(small, save, "--epochs", 50, "--save_interval", 10, "--max_minutes", 0.0001))
    assert sorted(path.name for path in save.glob("*.pth")) == ["1.pth", "best.pth", "latest.pth"]
    assert not (save / "summary.json").exists()           # not finished: training_328.sh must not skip it
    assert "stopping: --max_minutes 0.0001 reached after epoch 1 of 50" in (save / "training.log").read_text()
    assert "resuming after epoch" not in (save / "training.log").read_text()
    model, config = ckpt.load_unet(save / "1.pth", "cpu", asr="ave", model_size="tiny")
    assert config["model_size"] == "tiny" and isinstance(model, LipSyncUNet)
    latest = torch.load(save / "latest.pth", weights_only=False)
    assert latest["epoch"] == 1 and not latest["finished"] and latest["args"]["max_minutes"] == 0.0001
    # Resumed without a limit it continues from epoch 1 to the end.
    train_328.main(base_args(small, save, "--epochs", 3, "--save_interval", 10, "--resume"))
    resumed = torch.load(save / "latest.pth", weights_only=False)
    assert resumed["epoch"] == 3 and resumed["finished"] and len(resumed["history"]) == 3
    assert f"resuming after epoch 1 from {save / 'latest.pth'}" in (save / "training.log").read_text()
    assert resumed["history"][0]["train_loss"] == latest["history"][0]["train_loss"]
    assert (save / "summary.json").is_file()


def test_metrics_go_to_tensorboard_when_it_is_installed(small, tmp_path, monkeypatch):
    import types

    written = []

    class RecordingWriter:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, key, value, step):
            written.append((key, value, step))

        def close(self):
            written.append(("closed",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = RecordingWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    save = tmp_path / "ck"
    train_328.main(base_args(small, save, "--epochs", 1))
    assert written[0] == ("dir", str(save / "tensorboard")) and written[-1] == ("closed",)
    keys = {entry[0] for entry in written[1:-1]}
    assert {"train_loss", "val_l1", "val_psnr", "lr"} <= keys
    assert all(entry[2] == 1 for entry in written[1:-1])


def test_frames_without_a_face_are_never_targets_or_references(small):
    """Preprocessing interpolated their landmarks: their crops show no real mouth."""
    layout = DatasetLayout(small)
    found = np.load(layout.face_found)
    found[[3, 4, 5]] = False
    found[-1] = False
    np.save(layout.face_found, found)
    person = open_person(small, "ave", show_progress=False)
    train, held_out = person.split(0.25)
    assert not {3, 4, 5} & set(train.tolist())
    assert len(found) - 1 not in held_out and len(held_out) == round(len(found) * 0.25) - 1
    np.save(layout.face_found, found[:-2])
    with pytest.raises(UserError, match="face_found.npy has"):
        open_person(small, "ave", show_progress=False)


def test_training_keeps_a_best_pth_chosen_by_evaluation(small, tmp_path, caplog):
    """evaluate_328.py's choice outranks the held-out L1 until evaluation is re-run."""
    save = tmp_path / "run"
    train_328.main(base_args(small, save, "--epochs", 1, "--lr", "1e-2"))
    chosen = torch.load(save / "best.pth", weights_only=False)
    chosen["selection"] = {"by": "evaluate_328.py", "metric": "lmd", "epoch": 1}
    torch.save(chosen, save / "best.pth")
    train_328.main(base_args(small, save, "--epochs", 3, "--lr", "1e-2", "--resume"))
    kept = torch.load(save / "best.pth", weights_only=False)
    assert kept["selection"]["metric"] == "lmd" and kept["epoch"] == 1
    latest = torch.load(save / "latest.pth", weights_only=False)
    assert latest["epoch"] == 3 and latest["best_score"] < latest["history"][0]["val_l1"], \
        "held-out L1 must have improved after epoch 1, or this test shows nothing"


# --------------------------------------------------------------------------- honest resume

def test_a_damaged_latest_pth_points_to_resume_from_which_continues(small, tmp_path, capsys):
    run = tmp_path / "run"
    train_328.main(base_args(small, run, "--epochs", 2, "--save_interval", 1))
    latest = run / "latest.pth"
    latest.write_bytes(latest.read_bytes()[:2000])                        # cut off mid-write by a crash
    code, lines = run_main(train_328.main, base_args(small, run, "--epochs", 3, "--resume"), capsys)
    assert code == 2 and len(lines) == 1
    assert "is damaged" in lines[0] and "--resume_from 2 instead of --resume (epochs saved: 1, 2)" in lines[0]
    train_328.main(base_args(small, run, "--epochs", 3, "--save_interval", 1, "--resume_from", 2))
    resumed = ckpt.read_checkpoint(latest)
    assert resumed["epoch"] == 3 and (run / "3.pth").is_file()
    assert [entry["epoch"] for entry in resumed["history"]] == [3]       # the damaged history is gone
    assert f"resuming after epoch 2 from {run / '2.pth'}" in (run / "training.log").read_text()
    train_328.main(base_args(small, run, "--epochs", 3, "--save_interval", 1, "--resume_from", 3))
    assert f"already trained to epoch 3 of 3 ({run / '3.pth'}): nothing to do" in (run / "training.log").read_text()
    weights_2 = ckpt.read_checkpoint(run / "2.pth")["model"]
    assert any(not torch.equal(weights_2[key], value) for key, value in resumed["model"].items())


def test_resume_refuses_a_changed_hyperparameter_unless_accepted(small, tmp_path, capsys):
    run = tmp_path / "run"
    extra = ("--lr_schedule", "cosine", "--lr", "1e-3")
    train_328.main(base_args(small, run, "--epochs", 2, *extra))
    changed = base_args(small, run, "--epochs", 4, "--resume", "--lr_schedule", "cosine", "--lr", "5e-4")
    code, lines = run_main(train_328.main, changed, capsys)
    assert code == 2 and len(lines) == 1
    assert "--lr 0.001 (now 0.0005)" in lines[0] and "--epochs 2 (now 4)" in lines[0]
    assert "--accept_changed_options" in lines[0]
    assert ckpt.read_checkpoint(run / "latest.pth")["epoch"] == 2           # nothing was trained
    train_328.main(changed + ["--accept_changed_options"])
    latest = ckpt.read_checkpoint(run / "latest.pth")
    assert latest["epoch"] == 4 and latest["args"]["lr"] == 5e-4
    # After epochs 3 and 4 the rate follows the new cosine schedule over 4 epochs from 5e-4, as if it had
    # been used throughout (each history entry holds the rate after its epoch's schedule step).
    rates = {entry["epoch"]: entry["lr"] for entry in latest["history"]}
    for epoch in (3, 4):
        assert rates[epoch] == pytest.approx(5e-4 * (1 + math.cos(math.pi * epoch / 4)) / 2, abs=1e-12)
    assert rates[1] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 1 / 2)) / 2)   # the old run's record stays


def test_resume_says_what_to_type_to_keep_a_value_the_defaults_no_longer_give(small, tmp_path, capsys):
    run = tmp_path / "run"
    train_328.main(base_args(small, run, "--epochs", 1, "--lr", "5e-4"))
    code, lines = run_main(train_328.main, base_args(small, run, "--epochs", 2, "--resume"), capsys)
    assert code == 2 and len(lines) == 1
    assert f"--lr 0.0005 (now {TrainConfig.lr})" in lines[0] and "use --lr 0.0005" in lines[0]
    train_328.main(base_args(small, run, "--epochs", 2, "--resume", "--lr", "5e-4"))
    assert ckpt.read_checkpoint(run / "latest.pth")["epoch"] == 2


def test_a_sync_run_saved_before_the_balance_options_resumes_as_it_trained(tmp_path):
    # Such a run trained with a fixed weight from its first epoch: resuming it under the new defaults
    # would change its objective, so both options are named, with what to type.
    config = TrainConfig(dataset_dir=tmp_path, save_dir=tmp_path, use_syncnet=True)
    old_run = {"use_syncnet": True, "sync_weight": 10.0, "lr": config.lr}
    assert config.changed_since(old_run) == ["sync_balance", "sync_warmup_epochs", "lip_weight", "mask_to_edges",
                                             "head_levels"]
    assert config.how_to_keep("sync_balance", old_run) == "use --sync_balance fixed"
    assert config.how_to_keep("sync_warmup_epochs", old_run) == "use --sync_warmup_epochs 0"
    assert config.how_to_keep("lip_weight", old_run) == "use --lip_weight 1.0"
    assert config.how_to_keep("head_levels", old_run) == "use --head_levels 1"
    # A switch that is on by default now (--mask_to_edges) is kept off with its --no- form.
    assert config.how_to_keep("mask_to_edges", old_run) == "add --no-mask_to_edges"
    kept = TrainConfig(dataset_dir=tmp_path, save_dir=tmp_path, use_syncnet=True, sync_balance="fixed",
                       sync_warmup_epochs=0, lip_weight=1.0, mask_to_edges=False, head_levels=1)
    assert kept.changed_since(old_run) == []
    assert kept.how_to_keep("mask_to_edges", {"mask_to_edges": True}) == "drop --no-mask_to_edges"
    # Without the sync loss in both runs, its options do not matter; the lips' weight always does.
    assert TrainConfig(dataset_dir=tmp_path, save_dir=tmp_path).changed_since({"use_syncnet": False}) == \
        ["lip_weight", "mask_to_edges", "head_levels"]
    assert TrainConfig(dataset_dir=tmp_path, save_dir=tmp_path, reference_frames=2).changed_since(
        {"use_syncnet": False, "lip_weight": 4.0, "mask_to_edges": True, "head_levels": 3}) == ["reference_frames"]


def test_resume_may_train_longer_without_a_cosine_schedule(small, tmp_path):
    run = tmp_path / "run"
    train_328.main(base_args(small, run, "--epochs", 1))
    train_328.main(base_args(small, run, "--epochs", 2, "--resume"))
    assert ckpt.read_checkpoint(run / "latest.pth")["epoch"] == 2
