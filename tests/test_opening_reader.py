"""The mouth-opening reader (models/opening_reader.py), its fitting (lipsync/train/opening_fit.py)
and its term in the U-Net objective (--opening_weight)."""
import logging

import numpy as np
import pytest
import torch

import train_328
from data_utils.dataset import open_person
from data_utils.layout import DatasetLayout
from data_utils.model_input import inner_rgb_batch
from lipsync.evaluate.metrics import correlation, mouth_opening
from lipsync.train import opening_fit
from lipsync.train.objective import ObjectiveSettings, UNetObjective
from models.opening_reader import GAP_SCALE, MouthOpeningReader
from tests.conftest import CLIP_FRAMES_25FPS
from tests.training_helpers import base_args, make_small_dataset, run_main

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

FIT_TEST_STEPS = 150


def test_the_fitted_reader_reads_held_out_openings_and_leaves_the_random_state_alone(processed_clip, tmp_path,
                                                                                      caplog):
    dataset = make_small_dataset(processed_clip, tmp_path / "talker", CLIP_FRAMES_25FPS)
    person = open_person(dataset, "ave", show_progress=False)
    frames = np.arange(CLIP_FRAMES_25FPS)
    train, held_out = frames[frames % 5 != 0], frames[frames % 5 == 0]
    state = torch.random.get_rng_state()
    with caplog.at_level(logging.INFO, logger="training"):
        reader = opening_fit.fit_opening_reader(person, train, held_out, "cpu", seed=0, steps=FIT_TEST_STEPS,
                                                show_progress=False)
    assert torch.equal(state, torch.random.get_rng_state())
    assert not any(parameter.requires_grad for parameter in reader.parameters()) and not reader.training
    gaps = mouth_opening(np.load(DatasetLayout(dataset).landmarks_array))[held_out]
    crops = inner_rgb_batch(torch.from_numpy(np.stack([person.crop(int(frame)) for frame in held_out])))
    with torch.no_grad():
        read = reader(crops).numpy() / GAP_SCALE
    assert correlation(read, gaps) > 0.7
    assert "opening reader: fitted on 80 frames" in caplog.text and "held-out frames" in caplog.text


def _settings(opening_weight: float, warmup: int = 1) -> ObjectiveSettings:
    return ObjectiveSettings(sync_balance="adaptive", sync_ratio=3.0, sync_weight=10.0, sync_warmup_epochs=warmup,
                             lip_weight=4.0, opening_weight=opening_weight)


def test_the_opening_term_joins_after_the_warm_up_with_its_gradient_at_the_chosen_ratio():
    torch.manual_seed(0)
    reader = MouthOpeningReader().eval().requires_grad_(False)
    objective = UNetObjective(_settings(opening_weight=0.5), opening_reader=reader)
    truth = torch.rand(2, 3, 320, 320)
    prediction = torch.rand(2, 3, 320, 320, requires_grad=True)
    audio = torch.zeros(2, 1)
    objective.set_epoch(0)
    assert "opening" not in objective(prediction, truth, audio)
    objective.set_epoch(1)
    terms = objective(prediction, truth, audio)
    assert terms["opening"] > 0
    picture_l1, = torch.autograd.grad(terms["l1"], prediction, retain_graph=True)
    picture_opening, = torch.autograd.grad(terms["opening_weight"] * terms["opening"], prediction)
    assert float(picture_opening.norm() / picture_l1.norm()) == pytest.approx(0.5, rel=1e-4)
    # Only the lips' box reaches the reader.
    outside = torch.ones(320, 320, dtype=torch.bool)
    outside[60:180, 70:250] = False
    assert float(picture_opening[:, :, outside].abs().max()) == 0.0


def test_no_opening_term_without_its_weight():
    objective = UNetObjective(_settings(opening_weight=0.0, warmup=0), opening_reader=MouthOpeningReader().eval())
    terms = objective(torch.rand(1, 3, 320, 320, requires_grad=True), torch.rand(1, 3, 320, 320), torch.zeros(1, 1))
    assert "opening" not in terms


def test_training_with_the_opening_term_and_without_its_landmarks(processed_clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(opening_fit, "FIT_STEPS", 20)
    dataset = make_small_dataset(processed_clip, tmp_path / "talker", 24)
    save = tmp_path / "run"
    train_328.main(base_args(dataset, save, "--epochs", 2, "--sync_warmup_epochs", 1, "--opening_weight", 1))
    state = torch.load(save / "latest.pth", weights_only=False)
    first, second = state["history"]
    assert state["args"]["opening_weight"] == 1
    assert "train_opening" not in first and second["train_opening"] > 0 and second["train_opening_weight"] > 0
    log = (save / "training.log").read_text()
    assert log.count("opening reader: fitted on") == 1

    landmarks_file = DatasetLayout(dataset).landmarks_array
    landmarks_file.unlink()
    code, lines = run_main(train_328.main, base_args(dataset, tmp_path / "again", "--epochs", 1,
                                                     "--sync_warmup_epochs", 0, "--opening_weight", 1), capsys)
    assert code == 2 and len(lines) == 1 and "landmarks.npy" in lines[0] and "--opening_weight" in lines[0], lines
    code, lines = run_main(train_328.main, base_args(dataset, tmp_path / "bad", "--opening_weight", "-1"), capsys)
    assert code == 2 and len(lines) == 1 and "--opening_weight" in lines[0], lines
