"""--ema_decay: the averaged weights are validated and saved; the optimizer's steps stay the same."""
import pytest
import torch
from torch import nn

import train_328
from lipsync.train.options import TrainConfig
from lipsync.train.weight_average import WeightAverage
from tests.training_helpers import SMALL_FRAMES, base_args, run_main

DECAY = 0.9


def weights_after(values):
    """A one-parameter model and BatchNorm counter stepped through ``values``, and its average."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    average = None
    for step, value in enumerate(values):
        with torch.no_grad():
            model[0].weight.fill_(value)
            model[1].num_batches_tracked.fill_(step + 1)
        if average is None:
            average = WeightAverage(model, DECAY)
        average.update(model)
    return model, average


def test_the_average_is_the_bias_corrected_weighted_mean_of_the_steps_weights():
    values = [4.0, -2.0, 7.0, 1.0]
    _, average = weights_after(values)
    counts = [DECAY ** (len(values) - 1 - step) for step in range(len(values))]
    expected = sum(count * value for count, value in zip(counts, values)) / sum(counts)
    assert average.model[0].weight.item() == pytest.approx(expected, rel=1e-6)
    assert average.model[1].num_batches_tracked.item() == len(values)     # counters are copied, not averaged
    # The first step's average is that step's weights: nothing of the weights before training is kept.
    _, first = weights_after([3.0])
    assert first.model[0].weight.item() == 3.0
    assert not first.model[0].weight.requires_grad


def test_resetting_and_loading_an_average():
    model, average = weights_after([1.0, 5.0])
    saved_weights, saved_state = average.model.state_dict(), average.state()
    copy = WeightAverage(model, DECAY)
    copy.load(saved_weights, saved_state)
    assert copy.steps == 2 and torch.equal(copy.model[0].weight, average.model[0].weight)
    copy.reset(model)
    assert copy.steps == 0 and copy.model[0].weight.item() == 5.0


@pytest.mark.parametrize("decay", ["1", "-0.1", "1.5"])
def test_a_decay_outside_0_to_1_is_one_line(small, tmp_path, capsys, decay):
    code, lines = run_main(train_328.main, base_args(small, tmp_path / "run", "--ema_decay", decay), capsys)
    assert code == 2 and len(lines) == 1 and "--ema_decay" in lines[0] and "below 1" in lines[0]


def test_training_steps_the_same_weights_and_saves_their_average_and_resumes_exactly(small, tmp_path):
    plain, averaged, parts = tmp_path / "plain", tmp_path / "averaged", tmp_path / "parts"
    train_328.main(base_args(small, plain, "--epochs", 3))
    train_328.main(base_args(small, averaged, "--epochs", 3, "--ema_decay", "0.5"))
    live = torch.load(plain / "latest.pth", weights_only=False)
    with_average = torch.load(averaged / "latest.pth", weights_only=False)
    # Training is unchanged: the live weights equal those of the run without an average, bit for bit.
    for key, value in live["model"].items():
        assert torch.equal(value, with_average["live_model"][key]), key
    steps = (SMALL_FRAMES - 1) // 4 * 3
    assert with_average["weight_average"] == {"steps": steps, "decay": 0.5}
    # What inference loads (numbered, best and latest's model) is the average, not the last step.
    numbered = torch.load(averaged / "3.pth", weights_only=True)["model"]
    assert all(torch.equal(numbered[key], value) for key, value in with_average["model"].items())
    assert any(not torch.equal(numbered[key], value) for key, value in with_average["live_model"].items()
               if value.is_floating_point())
    # Validation scores the average: the held-out L1 differs from the plain run's.
    assert with_average["history"][-1]["val_l1"] != live["history"][-1]["val_l1"]
    # Stopped after epoch 1 and resumed: the same live weights, average and step count as straight through.
    train_328.main(base_args(small, parts, "--epochs", 1, "--ema_decay", "0.5"))
    train_328.main(base_args(small, parts, "--epochs", 3, "--ema_decay", "0.5", "--resume"))
    resumed = torch.load(parts / "latest.pth", weights_only=False)
    assert resumed["weight_average"] == with_average["weight_average"]
    for part in ("model", "live_model"):
        for key, value in with_average[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)


def test_a_run_saved_without_an_average_resumes_with_one_from_its_weights(small, tmp_path, capsys):
    run = tmp_path / "run"
    train_328.main(base_args(small, run, "--epochs", 1))
    before = torch.load(run / "latest.pth", weights_only=False)["model"]
    # Adding an average to a run is a change of what it saves: --resume says so in one line.
    code, lines = run_main(train_328.main, base_args(small, run, "--epochs", 2, "--ema_decay", "0.5", "--resume"),
                           capsys)
    assert code == 2 and len(lines) == 1 and "--ema_decay 0.0 (now 0.5)" in lines[0]
    train_328.main(base_args(small, run, "--epochs", 2, "--ema_decay", "0.5", "--resume", "--accept_changed_options"))
    after = torch.load(run / "latest.pth", weights_only=False)
    assert after["weight_average"]["steps"] == (SMALL_FRAMES - 1) // 4     # started again at the resume
    assert any(not torch.equal(before[key], value) for key, value in after["model"].items()
               if value.is_floating_point())
    # Runs saved before the option existed had no average.
    assert "ema_decay" in TrainConfig(dataset_dir=tmp_path, save_dir=tmp_path, ema_decay=0.5).changed_since({})
    assert "ema_decay" not in TrainConfig(dataset_dir=tmp_path, save_dir=tmp_path).changed_since({})
