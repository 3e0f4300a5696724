"""A dataset cannot be corrupted by two runs at once, and a re-run of preprocessing repairs
exactly what was damaged: the fix an error message prints must fix it."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data_utils import preprocess
from data_utils.features.extract import prepare_dataset_features
from data_utils.layout import DatasetLayout
from data_utils.process import main as process_main
from lipsync.core.errors import UserError
from lipsync.core.locks import folder_lock
from models.audio_encoders import AveAudioEncoder
from tests.conftest import CLIP, CLIP_FRAMES_25FPS, REPO_ROOT, cli_error_line, ffmpeg

LOCK_WAIT_SECONDS = 60


def must_not_run(*args, **kwargs):
    raise AssertionError("a stage whose outputs are sound ran again")


def test_a_second_run_on_a_dataset_in_use_stops_with_one_line(processed_copy, capsys):
    with folder_lock(processed_copy, "preprocessing"):
        line = cli_error_line(process_main, capsys, [str(processed_copy / "talker.mp4"), "--quiet"])
    assert f"{processed_copy} is in use: preprocessing by pid" in line and "wait for that run" in line
    # Released with the first run: the same command now goes through.
    assert process_main([str(processed_copy / "talker.mp4"), "--quiet"])["frames"] == CLIP_FRAMES_25FPS


def test_two_processes_at_once_leave_one_complete_dataset(tmp_path, capsys):
    root = tmp_path / "two at once"
    root.mkdir()
    shutil.copy(CLIP, root / "two at once.mp4")
    first = subprocess.Popen([sys.executable, str(REPO_ROOT / "data_utils" / "process.py"),
                              str(root / "two at once.mp4"), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = root / ".lock"
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while not (lock.exists() and lock.read_text()) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()
    line = cli_error_line(process_main, capsys, [str(root / "two at once.mp4"), "--quiet"])
    assert "is in use: preprocessing by pid" in line
    _, errors = first.communicate(timeout=300)
    assert first.returncode == 0, errors
    layout = DatasetLayout(root)
    assert len(list(layout.frames_dir.glob("*.jpg"))) == CLIP_FRAMES_25FPS
    assert np.load(layout.crop_boxes).shape == (CLIP_FRAMES_25FPS, 4)


def test_missing_and_damaged_frames_are_rewritten_and_nothing_else(processed_copy, monkeypatch):
    layout = DatasetLayout(processed_copy)
    originals = {index: layout.frame_path(index).read_bytes() for index in (7, 41)}
    layout.frame_path(41).unlink()
    layout.frame_path(7).write_bytes(originals[7][:1000])          # cut off mid-file
    layout.landmark_path(3).unlink()
    untouched = {path: path.stat().st_mtime_ns for path in
                 (layout.landmarks_array, layout.audio_wav, layout.crop_boxes, layout.frame_path(8))}
    for stage_function in ("extract_frames_and_landmarks", "extract_audio", "compute_crop_boxes"):
        monkeypatch.setattr(preprocess, stage_function, must_not_run)
    report = preprocess.process_video(processed_copy / "talker.mp4", show_progress=False)
    assert report["frames"] == CLIP_FRAMES_25FPS
    for index, content in originals.items():
        assert layout.frame_path(index).read_bytes() == content    # the same decode, the same encoder
    assert np.allclose(np.loadtxt(layout.landmark_path(3)), np.load(layout.landmarks_array)[3], atol=0.01)
    assert {path: path.stat().st_mtime_ns for path in untouched} == untouched


def test_a_truncated_wav_is_remade_and_later_stages_stay(processed_copy, monkeypatch):
    layout = DatasetLayout(processed_copy)
    original = layout.audio_wav.read_bytes()
    layout.audio_wav.write_bytes(original[:len(original) // 2])
    boxes_written = layout.crop_boxes.stat().st_mtime_ns
    monkeypatch.setattr(preprocess, "compute_crop_boxes", must_not_run)
    monkeypatch.setattr(preprocess, "extract_frames_and_landmarks", must_not_run)
    preprocess.process_video(processed_copy / "talker.mp4", show_progress=False)
    assert layout.audio_wav.read_bytes() == original
    assert layout.crop_boxes.stat().st_mtime_ns == boxes_written


def test_damaged_landmarks_redo_their_stage(processed_copy):
    layout = DatasetLayout(processed_copy)
    good = np.load(layout.landmarks_array)
    np.save(layout.landmarks_array, good[:10])                       # a valid file, the wrong content
    preprocess.process_video(processed_copy / "talker.mp4", show_progress=False)
    np.testing.assert_allclose(np.load(layout.landmarks_array), good, atol=1e-4)


def test_replaced_content_of_the_same_shape_is_caught(processed_copy):
    """A valid array of the right shape that is not what the stage wrote (another run's, say)."""
    layout = DatasetLayout(processed_copy)
    good = np.load(layout.crop_boxes)
    np.save(layout.crop_boxes, good[::-1].copy())
    preprocess.process_video(processed_copy / "talker.mp4", show_progress=False)
    np.testing.assert_array_equal(np.load(layout.crop_boxes), good)


def test_a_failed_run_on_another_video_keeps_the_folders_progress(processed_copy, tmp_path, monkeypatch, capsys):
    silent = processed_copy / "other.mp4"
    ffmpeg("-i", CLIP, "-an", "-c:v", "copy", silent)              # no sound: refused
    line = cli_error_line(process_main, capsys, [str(silent), "--output_dir", str(processed_copy), "--quiet"])
    assert "has no audio track" in line
    faceless = tmp_path / "faceless.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=320x240:r=25:d=2", "-f", "lavfi", "-i", "sine=d=2",
           "-shortest", "-pix_fmt", "yuv420p", faceless)
    shutil.copy(faceless, processed_copy / "faceless.mp4")
    line = cli_error_line(process_main, capsys, [str(processed_copy / "faceless.mp4"), "--quiet"])
    assert "no face found" in line
    for stage_function in ("convert_to_25fps", "extract_frames_and_landmarks", "extract_audio",
                           "compute_crop_boxes"):
        monkeypatch.setattr(preprocess, stage_function, must_not_run)
    assert preprocess.process_video(processed_copy / "talker.mp4", show_progress=False)["frames"] == \
        CLIP_FRAMES_25FPS


@pytest.fixture
def released_ave(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ave.pth"
    torch.save(AveAudioEncoder(1.0).conv_stack.state_dict(), path)
    return path


def test_truncated_features_are_computed_again(processed_copy, released_ave):
    output = prepare_dataset_features(processed_copy, "ave", ave_checkpoint=released_ave, progress=False)
    good = np.load(output)
    output.write_bytes(output.read_bytes()[:4096])
    with pytest.raises(ValueError):
        np.load(output)
    prepare_dataset_features(processed_copy, "ave", ave_checkpoint=released_ave, progress=False)
    np.testing.assert_allclose(np.load(output), good, atol=1e-6)



def test_a_second_training_into_the_same_checkpoint_folder_stops_with_one_line(processed_clip, tmp_path, capsys):
    import train_328
    from tests.training_helpers import make_small_dataset

    small = make_small_dataset(processed_clip, tmp_path / "talker", 20)
    run = tmp_path / "run"
    argv = ["--dataset_dir", str(small), "--save_dir", str(run), "--model_size", "tiny", "--batch_size", "4",
            "--num_workers", "0", "--device", "cpu", "--perceptual", "off", "--epochs", "1", "--quiet"]
    with folder_lock(run, "training"):
        line = cli_error_line(train_328.main, capsys, argv)
    assert f"{run} is in use: training by pid" in line
    assert not (run / "latest.pth").exists()
    train_328.main(argv)
    assert (run / "latest.pth").is_file()


# --------------------------------------------------------------------------- outputs that cannot be written

def test_output_dir_that_is_a_file_blames_the_output(tmp_path, capsys):
    video = tmp_path / "talker.mp4"
    shutil.copy(CLIP, video)
    blocker = tmp_path / "not a folder"
    blocker.write_text("x")
    line = cli_error_line(process_main, capsys, [str(video), "--output_dir", str(blocker), "--quiet"])
    assert f"{blocker} is a file, not a folder — choose another --output_dir" in line
    inside = cli_error_line(process_main, capsys, [str(video), "--output_dir", str(blocker / "May"), "--quiet"])
    assert str(blocker) in inside and "--output_dir" in inside and "check that the file plays" not in inside


def test_output_dir_without_permission_blames_the_output(tmp_path, capsys):
    video = tmp_path / "talker.mp4"
    shutil.copy(CLIP, video)
    forbidden = Path("/sys/lipsync_test_dataset")          # refused even to root
    line = cli_error_line(process_main, capsys, [str(video), "--output_dir", str(forbidden), "--quiet"])
    assert f"cannot write {forbidden}" in line and "--output_dir" in line


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    import os as os_module

    from lipsync.core import atomic

    path = tmp_path / "latest.pth"
    atomic.save_torch_atomic(path, {"epoch": 1})
    before = path.read_bytes()

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os_module, "fsync", disk_full)
    with pytest.raises(UserError, match=f"no space left on the disk of {path}") as failed:
        atomic.save_torch_atomic(path, {"epoch": 2})
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*partial*"))


def test_torchs_own_write_failure_on_a_full_disk_is_the_same_line(tmp_path, monkeypatch):
    from collections import namedtuple

    from lipsync.core import atomic

    def failing_save(obj, handle):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 0))
    with pytest.raises(UserError, match="no space left on the disk"):
        atomic.save_torch_atomic(tmp_path / "10.pth", {"epoch": 10})
    assert not (tmp_path / "10.pth").exists()
