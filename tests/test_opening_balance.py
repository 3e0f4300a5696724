"""--opening_balance: frames whose mouth opening is rare in the recording count more in L1."""
import numpy as np
import pytest
import torch

import train_328
from data_utils.layout import DatasetLayout
from lipsync.core import checkpoints as ckpt
from lipsync.core.errors import UserError
from lipsync.evaluate.metrics import mouth_opening
from lipsync.train.objective import ObjectiveSettings, UNetObjective
from lipsync.train.opening_balance import MAX_WEIGHT, balance_weights, frame_weights
from lipsync.train.options import TrainConfig
from tests.training_helpers import SMALL_FRAMES, base_args, run_main

# Speech as a recording shows it: many closed or small openings, few wide ones.
SKEWED_OPENINGS = np.concatenate([np.full(60, 0.002), np.full(30, 0.03), np.full(10, 0.08)])


def test_rare_openings_weigh_more_and_the_mean_weight_stays_1():
    weights = balance_weights(SKEWED_OPENINGS, strength=0.5)
    assert weights.mean() == pytest.approx(1.0)
    closed, middle, wide = weights[0], weights[60], weights[-1]
    assert closed < middle < wide
    # The inverse square root of each group's share (the smoothing spreads a little between bins).
    assert wide / closed == pytest.approx(np.sqrt(60 / 10), rel=0.15)


def test_strength_1_evens_the_openings_out_and_0_counts_every_frame_alike():
    weights = balance_weights(SKEWED_OPENINGS, strength=1.0)
    group_totals = [weights[:60].sum(), weights[60:90].sum(), weights[90:].sum()]
    assert max(group_totals) / min(group_totals) < 1.3
    assert np.array_equal(balance_weights(SKEWED_OPENINGS, strength=0.0), np.ones(len(SKEWED_OPENINGS)))


def test_weights_are_capped_and_frames_without_a_face_count_as_the_mean():
    openings = np.concatenate([np.full(200, 0.001), [0.09], [np.nan]])
    weights = balance_weights(openings, strength=2.0)
    assert weights.max() <= MAX_WEIGHT + 1e-9
    assert weights[:-1].mean() == pytest.approx(1.0) and weights[-1] == 1.0


def test_frame_weights_follow_the_recordings_landmarks(small):
    layout = DatasetLayout(small)
    frames = np.arange(SMALL_FRAMES - 1)
    weights = frame_weights(layout, frames, 1.0)
    openings = mouth_opening(np.load(layout.landmarks_array))[frames]
    assert weights.shape == (SMALL_FRAMES,) and weights[frames].mean() == pytest.approx(1.0, rel=1e-5)
    assert weights[-1] == 1.0                                   # not a training frame
    assert not np.allclose(weights[frames], 1.0)
    layout.landmarks_array.unlink()
    with pytest.raises(UserError, match="--opening_balance needs the recording's landmarks"):
        frame_weights(layout, frames, 1.0)


def test_sample_weights_scale_each_samples_l1():
    objective = UNetObjective(ObjectiveSettings("adaptive", 3.0, 10.0, 2, lip_weight=4.0))
    generator = torch.Generator().manual_seed(0)
    prediction, truth = (torch.rand(2, 3, 320, 320, generator=generator) for _ in range(2))
    audio = torch.zeros(2, 1)
    plain = objective(prediction, truth, audio)["l1"]
    assert objective(prediction, truth, audio, torch.ones(2))["l1"] == pytest.approx(float(plain), rel=1e-6)
    first_only = objective(prediction, truth, audio, torch.tensor([2.0, 0.0]))["l1"]
    assert first_only == pytest.approx(float(objective(prediction[:1], truth[:1], audio[:1])["l1"]), rel=1e-6)


@pytest.mark.parametrize("strength", ["-0.5", "3"])
def test_a_strength_outside_0_to_2_is_one_line(small, tmp_path, capsys, strength):
    code, lines = run_main(train_328.main, base_args(small, tmp_path / "run", "--opening_balance", strength), capsys)
    assert code == 2 and len(lines) == 1 and "--opening_balance" in lines[0]


def test_training_with_the_balance_changes_the_steps_and_is_kept_on_resume(small, tmp_path, capsys):
    plain, balanced = tmp_path / "plain", tmp_path / "balanced"
    train_328.main(base_args(small, plain, "--epochs", 1))
    train_328.main(base_args(small, balanced, "--epochs", 1, "--opening_balance", "1"))
    plain_weights = ckpt.read_checkpoint(plain / ckpt.LATEST)["model"]
    balanced_weights = ckpt.read_checkpoint(balanced / ckpt.LATEST)["model"]
    assert any(not torch.equal(plain_weights[key], balanced_weights[key]) for key in plain_weights)
    code, lines = run_main(train_328.main, base_args(small, balanced, "--epochs", 2, "--resume"), capsys)
    assert code == 2 and len(lines) == 1 and "--opening_balance 1.0 (now 0.0)" in lines[0]
    assert "opening_balance" in TrainConfig(dataset_dir=tmp_path, save_dir=tmp_path,
                                            opening_balance=0.5).changed_since({})
