"""train_328.py --widths: the U-Net's channel widths given as five counts instead of a
--model_size name. The run trains that network, its checkpoint records the widths and renders
from them alone, --resume keeps them (and says what to type when they changed), and bad counts
are refused in one line."""
import numpy as np
import pytest
import torch

import train_328
from data_utils.audio import load_audio
from lipsync.core import checkpoints as ckpt
from lipsync.render.api import load_renderer
from models.unet_328 import CUSTOM_WIDTHS
from tests.training_helpers import base_args, cut_to_frames, person_with_ave_features, run_main

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

WIDE_BOTTOM = (4, 8, 16, 32, 64)       # the tiny width's high-resolution stages, wider low-resolution ones
AVE_WIDTH = 0.25
FRAMES = 12


def test_a_run_with_its_own_widths_trains_saves_and_renders_them(processed_clip, tmp_path):
    person = person_with_ave_features(processed_clip, tmp_path, "talker", AVE_WIDTH)
    cut_to_frames(person.layout, FRAMES)
    run = tmp_path / "run"
    train_328.main(base_args(person.root, run, "--epochs", 1, "--widths", *WIDE_BOTTOM))
    config = ckpt.read_checkpoint(run / "1.pth")["config"]
    assert config["widths"] == list(WIDE_BOTTOM) and config["model_size"] == CUSTOM_WIDTHS
    model, _ = ckpt.load_unet(run / "1.pth")
    assert model.widths == WIDE_BOTTOM
    embedding = [layer for layer in model.audio.modules() if isinstance(layer, torch.nn.Linear)][-1]
    assert embedding.out_features == WIDE_BOTTOM[-1]            # the audio meets the bottleneck at its width

    samples = load_audio(person.layout.audio_wav)[:int(0.2 * 16000)]
    with load_renderer(dataset_dir=person.root, checkpoint=str(run / "1.pth"), device="cpu",
                       silence_hold=False) as renderer:
        frames = list(renderer.render(samples))
    assert len(frames) == 5 and all(frame.dtype == np.uint8 and frame.ndim == 3 for frame in frames)


def test_resume_keeps_the_widths_and_says_what_to_type(small, tmp_path, capsys):
    run = tmp_path / "run"
    train_328.main(base_args(small, run, "--epochs", 1, "--widths", *WIDE_BOTTOM))
    # Other widths, or a named size, would be another network: refused with what to type.
    code, lines = run_main(train_328.main, base_args(small, run, "--epochs", 2, "--resume", "--widths",
                                                     4, 8, 16, 32, 32), capsys)
    assert code == 2 and len(lines) == 1
    assert "--widths 4 8 16 32 64 (now 4 8 16 32 32)" in lines[0] and "use --widths 4 8 16 32 64" in lines[0]
    code, lines = run_main(train_328.main, base_args(small, run, "--epochs", 2, "--resume"), capsys)
    assert code == 2 and len(lines) == 1
    assert "has model size custom (widths 4 8 16 32 64), not tiny" in lines[0]
    assert "use --widths 4 8 16 32 64" in lines[0]
    train_328.main(base_args(small, run, "--epochs", 2, "--resume", "--widths", *WIDE_BOTTOM))
    assert ckpt.read_checkpoint(run / "latest.pth")["epoch"] == 2


def test_a_named_run_resumed_with_widths_is_told_to_drop_them(small, tmp_path, capsys):
    run = tmp_path / "run"
    train_328.main(base_args(small, run, "--epochs", 1))
    code, lines = run_main(train_328.main, base_args(small, run, "--epochs", 2, "--resume", "--widths",
                                                     *WIDE_BOTTOM), capsys)
    assert code == 2 and len(lines) == 1
    assert "has model size tiny (widths 4 8 8 16 16), not custom" in lines[0]
    assert "use --model_size tiny without --widths" in lines[0]


def test_a_width_below_one_is_refused_in_one_line(small, tmp_path, capsys):
    code, lines = run_main(train_328.main, base_args(small, tmp_path / "run", "--widths", 4, 8, 0, 16, 16), capsys)
    assert code == 2 and lines == ["error: --widths takes 5 channel counts of at least 1, got 4 8 0 16 16"]
