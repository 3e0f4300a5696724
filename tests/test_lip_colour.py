"""The lips' redness (lipsync/core/lip_colour.py) is read from the lips' box only, from its reddest
tenth; benchmarks/lip_colour.py draws the held-out tail with a saved checkpoint and reports it beside
the truth's (a missing epoch is one line)."""
import json

import numpy as np
import pytest
import torch

from benchmarks import lip_colour
from data_utils.crop import LIP_BOTTOM, LIP_LEFT, LIP_RIGHT, LIP_TOP
from data_utils.dataset import DEFAULT_VAL_FRACTION, LipSyncDataset, open_person
from data_utils.model_input import model_input_batch
from lipsync.core.checkpoints import save_checkpoint, unet_config
from models.unet_328 import WIDTHS, LipSyncUNet
from tests.training_helpers import make_small_dataset, run_main

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_redness_reads_the_reddest_tenth_of_the_lips_box():
    image = torch.full((1, 3, 320, 320), 0.5)
    box_rows, box_cols = LIP_BOTTOM - LIP_TOP, LIP_RIGHT - LIP_LEFT
    red_rows = box_rows // 10                        # exactly a tenth of the box
    image[0, 0, LIP_TOP:LIP_TOP + red_rows, LIP_LEFT:LIP_RIGHT] = 0.8
    image[0, 1, LIP_TOP:LIP_TOP + red_rows, LIP_LEFT:LIP_RIGHT] = 0.3
    assert red_rows * box_cols == round(0.1 * box_rows * box_cols)
    assert lip_colour.redness(image)[0] == pytest.approx(0.5)
    # Red outside the box is not the lips'.
    outside = torch.full((1, 3, 320, 320), 0.5)
    outside[0, 0, :LIP_TOP] = 1.0
    assert lip_colour.redness(outside)[0] == pytest.approx(0.0)


def test_the_command_draws_the_tail_with_a_checkpoint(processed_clip, tmp_path, capsys):
    dataset = make_small_dataset(processed_clip, tmp_path / "talker", 40)
    person = open_person(dataset, "ave", show_progress=False)
    torch.manual_seed(0)
    model = LipSyncUNet("ave", person.audio_shape, WIDTHS["tiny"]).eval()
    run = tmp_path / "run"
    config = unet_config(model, person.describe_features())
    save_checkpoint(run / "3.pth", model.state_dict(), config, 3)
    assert lip_colour.main(["--dataset_dir", str(dataset), "--checkpoint_dir", str(run),
                            "--json", str(tmp_path / "colour.json")]) == 0
    figures = json.loads((tmp_path / "colour.json").read_text())
    assert set(figures) == {"truth", "epoch 3"}
    assert "epoch 3 | " in capsys.readouterr().out

    _, tail = person.split(DEFAULT_VAL_FRACTION)
    samples = [LipSyncDataset(person, tail, tail, 0)[item] for item in range(len(tail))]
    batch = torch.utils.data.default_collate(samples)
    image6, truth = model_input_batch(batch["target"], batch["reference"])
    assert figures["truth"] == pytest.approx(float(np.mean(lip_colour.redness(truth))), abs=1e-6)
    with torch.no_grad():
        drawn = model(image6, batch["audio"])
    assert figures["epoch 3"] == pytest.approx(float(np.mean(lip_colour.redness(drawn))), abs=1e-6)
    assert figures["truth"] > 0.05 and abs(figures["epoch 3"] - figures["truth"]) > 1e-3

    code, lines = run_main(lip_colour.main, ["--dataset_dir", str(dataset), "--checkpoint_dir", str(run),
                                             "--epochs", "7"], capsys)
    assert code == 2 and len(lines) == 1 and "epoch 7" in lines[0] and "[3]" in lines[0], lines
