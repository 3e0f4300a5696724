"""A file from elsewhere never runs code when loaded: every place the project reads a
.pth (inference, evaluation, resume, SyncNet, the AVE encoder, the VGG weights) is fed a
pickle whose loading would call os.system, and must refuse it with one line while the
command it carries never runs."""
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate_328
import inference_328
import train_328
from lipsync.core.checkpoints import load_torch_file, read_checkpoint
from lipsync.core.errors import UserError
from tests.conftest import HELDOUT_WAV, cli_error_line
from tests.training_helpers import make_small_dataset

SMALL_FRAMES = 20
LOADING_THREADS, LOADS_PER_THREAD = 4, 50


class _RunsCommand:
    """Pickles to a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def malicious_pth(path: Path, marker: Path, layout: str = "checkpoint") -> Path:
    """A .pth that, loaded with full pickle, creates ``marker``; shaped like a real file of its kind."""
    payload = _RunsCommand(f"touch '{marker}'")
    if layout == "checkpoint":
        content = {"model": {"weight": payload}, "config": {"kind": "unet_328", "asr": "ave"}, "epoch": 1}
    else:
        content = {"state_dict": payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path


def assert_refused(line: str, marker: Path, path: Path) -> None:
    assert not marker.exists(), "the file's code ran"
    assert str(path) in line and "system" in line, line


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code ran"


@pytest.fixture
def small(processed_clip, tmp_path) -> Path:
    return make_small_dataset(processed_clip, tmp_path / "dataset" / "talker", SMALL_FRAMES)


def test_the_loader_refuses_code_and_names_what_it_asked_for(tmp_path, marker):
    path = malicious_pth(tmp_path / "evil.pth", marker)
    with pytest.raises(UserError, match=r"asks to run or build posix\.system"):
        read_checkpoint(path)
    with pytest.raises(UserError, match="system"):
        load_torch_file(path)
    assert not marker.exists()
    # The control: the same payload loaded the unsafe way does run (so the test can fail).
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_the_loader_still_reads_what_training_stores(tmp_path):
    """Tensors, numbers, containers and numpy's random state (in latest.pth) load back."""
    state = {"model": {"w": torch.arange(3.0)}, "config": {"asr": "ave", "widths": [8, 16]}, "epoch": 2,
             "rng": [{"numpy": np.random.get_state(), "torch": torch.get_rng_state()}],
             "history": [{"epoch": 1, "l1": 0.5}], "args": {"lr": 1e-4, "dataset_dir": "dataset/x"}}
    torch.save(state, tmp_path / "latest.pth")
    loaded = read_checkpoint(tmp_path / "latest.pth")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    np.testing.assert_array_equal(loaded["rng"][0]["numpy"][1], state["rng"][0]["numpy"][1])
    assert loaded["history"] == state["history"] and loaded["args"] == state["args"]


def test_inference_checkpoint(small, tmp_path, marker, capsys):
    evil = malicious_pth(tmp_path / "evil.pth", marker)
    line = cli_error_line(inference_328.main, capsys,
                          ["--name", "talker", "--dataset_dir", str(small), "--checkpoint", str(evil),
                           "--audio_path", str(HELDOUT_WAV), "--device", "cpu",
                           "--output", str(tmp_path / "out.mp4"), "--no_progress"])
    assert_refused(line, marker, evil)


def test_evaluation_checkpoint(small, tmp_path, marker, capsys):
    evil = malicious_pth(tmp_path / "evil.pth", marker)
    line = cli_error_line(evaluate_328.main, capsys,
                          ["--name", "talker", "--dataset_dir", str(small), "--checkpoint", str(evil),
                           "--checkpoint_dir", str(tmp_path / "run"), "--device", "cpu"])
    assert_refused(line, marker, evil)


def train_args(dataset_dir, save_dir, *extra):
    return ["--dataset_dir", str(dataset_dir), "--save_dir", str(save_dir), "--asr", "ave", "--model_size",
            "tiny", "--batch_size", "4", "--num_workers", "0", "--device", "cpu", "--perceptual", "off",
            "--epochs", "1", "--quiet", *map(str, extra)]


def test_resume_from_a_foreign_latest_pth(small, tmp_path, marker, capsys):
    run = tmp_path / "run"
    evil = malicious_pth(run / "latest.pth", marker)
    line = cli_error_line(train_328.main, capsys, train_args(small, run, "--resume"))
    assert_refused(line, marker, evil)


def test_syncnet_checkpoint_for_the_sync_loss(small, tmp_path, marker, capsys):
    evil = malicious_pth(tmp_path / "syncnet.pth", marker)
    line = cli_error_line(train_328.main, capsys,
                          train_args(small, tmp_path / "run", "--use_syncnet", "--syncnet_checkpoint", evil))
    assert_refused(line, marker, evil)


def test_ave_encoder_checkpoint(tmp_path, marker, capsys):
    from data_utils import audio_features

    evil = malicious_pth(tmp_path / "ave.pth", marker, layout="weights")
    wav = tmp_path / "voice.wav"
    shutil.copy(HELDOUT_WAV, wav)
    line = cli_error_line(audio_features.main, capsys,
                          ["--asr", "ave", "--wav", str(wav), "--ave_checkpoint", str(evil), "--device", "cpu"])
    assert not marker.exists() and str(evil) in line, line


def test_vgg_weights_for_the_perceptual_loss(small, tmp_path, marker, capsys):
    evil = malicious_pth(tmp_path / "vgg19.pth", marker, layout="weights")
    line = cli_error_line(train_328.main, capsys,
                          train_args(small, tmp_path / "run", "--perceptual", "on", "--vgg_weights", evil))
    assert not marker.exists() and str(evil) in line, line


def test_hubert_folder_with_a_malicious_bin(tmp_path, marker, capsys):
    from transformers import HubertConfig

    from data_utils import audio_features

    folder = tmp_path / "hubert"
    HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4,
                 num_conv_pos_embedding_groups=2).save_pretrained(folder)
    torch.save({"weight": _RunsCommand(f"touch '{marker}'")}, folder / "pytorch_model.bin")
    wav = tmp_path / "voice.wav"
    shutil.copy(HELDOUT_WAV, wav)
    line = cli_error_line(audio_features.main, capsys,
                          ["--asr", "hubert", "--wav", str(wav), "--hubert_model", str(folder), "--device", "cpu"])
    assert not marker.exists() and "ask to run code" in line and str(folder) in line, line


def test_loads_from_many_threads_at_once_all_read_numpy_state(tmp_path):
    # The ablation reads two arms' latest.pth from two threads; a per-call allow-list (torch's
    # safe_globals context) let one thread's exit remove the other's numpy permission mid-load.
    path = tmp_path / "latest.pth"
    torch.save({"model": {}, "config": {}, "rng": {"numpy": np.random.get_state()}}, path)
    failures = []

    def load_many():
        for _ in range(LOADS_PER_THREAD):
            try:
                load_torch_file(path)
            except UserError as error:
                failures.append(str(error))

    threads = [threading.Thread(target=load_many) for _ in range(LOADING_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
