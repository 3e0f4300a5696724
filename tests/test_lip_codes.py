"""Lip codes (data_utils/lip_codes.py, train_328.py --lip_code_dims): on the bundled clip's real
landmarks the first code is the mouth's opening, wherever the head is; a training sample carries
its target's code; the U-Net with codes starts as the one without, draws what it is told, predicts
the code from the audio when it is told none, and a trained checkpoint keeps the option and renders
the same through torch and ONNX; checkpoints saved before the option load without codes."""
import numpy as np
import pytest
import torch

import train_328
from data_utils.dataset import LipSyncDataset, load_lip_codes, open_person
from data_utils.layout import DatasetLayout
from data_utils.lip_codes import lip_codes
from lipsync.core import checkpoints as ckpt
from lipsync.evaluate.metrics import correlation, mouth_opening
from lipsync.train.objective import ObjectiveSettings, UNetObjective
from models.unet_328 import WIDTHS, LipSyncUNet
from tests.conftest import CLIP_FRAMES_25FPS
from tests.training_helpers import (base_args, make_small_dataset, responsive_random_weights, run_main,
                                    tiny_unet_inputs, tiny_unet_pair, tiny_unet_saved_before,
                                    train_tiny_epoch_and_render_both_backends)

TINY_AUDIO = (4, 16, 16)
CODE_TEST_FRAMES = 24

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_the_first_code_is_the_opening_wherever_the_head_is(processed_clip):
    landmarks = np.load(DatasetLayout(processed_clip).landmarks_array).astype(np.float64)
    fit = np.arange(len(landmarks) - 5)
    codes = lip_codes(landmarks, fit, 2)
    assert codes.shape == (len(landmarks), 2) and codes.dtype == np.float32
    assert np.allclose(codes[fit].mean(axis=0), 0, atol=1e-5) and np.allclose(codes[fit].std(axis=0), 1, atol=1e-4)
    assert abs(correlation(codes[:, 0], mouth_opening(landmarks))) > 0.9
    moved = landmarks.copy()
    moved[::2] = moved[::2] * 1.3 + np.array([25.0, -40.0])
    assert np.allclose(lip_codes(moved, fit, 2), codes, atol=1e-4)
    # Fitted on other frames, the same landmarks give other codes: the fit frames define them.
    assert not np.allclose(lip_codes(landmarks, fit[::3], 2), codes, atol=1e-3)
    with pytest.raises(ValueError, match="dims"):
        lip_codes(landmarks, fit, 0)


def test_a_sample_carries_its_targets_code_and_nothing_else_changes(processed_clip, tmp_path):
    dataset = make_small_dataset(processed_clip, tmp_path / "talker", CLIP_FRAMES_25FPS)
    person = open_person(dataset, "ave", show_progress=False)
    train, _ = person.split(0.05)
    codes = load_lip_codes(person, train, 2)
    plain = LipSyncDataset(person, train, train, seed=2)
    coded = LipSyncDataset(person, train, train, seed=2, lip_codes=codes)
    for item, frame in enumerate(train):
        sample, with_code = plain[item], coded[item]
        assert "lip_code" not in sample
        assert np.array_equal(with_code["lip_code"].numpy(), codes[frame])
        for key in ("target", "reference", "audio"):
            assert torch.equal(sample[key], with_code[key])


def test_the_coded_model_starts_as_the_plain_one_and_draws_what_it_is_told():
    plain, coded, extra = tiny_unet_pair(TINY_AUDIO, lip_code_dims=2)
    assert extra == sorted(
        f"lip_code_{part}.{kind}" for part in ("head", "in") for kind in ("weight", "bias"))
    image, audio = tiny_unet_inputs(TINY_AUDIO)
    with torch.no_grad():
        assert torch.equal(plain(image, audio), coded(image, audio))
        drawn, predicted = coded(image, audio, return_lip_code=True)
        assert predicted.shape == (2, 2) and torch.equal(drawn, coded(image, audio))
        assert plain(image, audio, return_lip_code=True)[1] is None

    responsive_random_weights(coded)
    with torch.no_grad():
        drawn, predicted = coded(image, audio, return_lip_code=True)
        # Told the code it predicts, it draws what it draws untold; told another, another mouth.
        assert torch.allclose(coded(image, audio, lip_code=predicted), drawn)
        other = coded(image, audio, lip_code=predicted + 3.0)
    assert (other - drawn).abs().mean() > 1e-3


def test_the_code_loss_trains_the_audio_to_predict_the_code():
    torch.manual_seed(0)
    model = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"], lip_code_dims=2)
    objective = UNetObjective(ObjectiveSettings("adaptive", 3.0, 10.0, 0, 4.0, lip_code_weight=1.0))
    image, audio = tiny_unet_inputs(TINY_AUDIO)
    truth = image[:, 3:]
    true_code = torch.tensor([[1.0, -0.5], [-1.0, 0.5]])
    drawn, predicted = model(image, audio, lip_code=true_code, return_lip_code=True)
    terms = objective(drawn, truth, audio, predicted, true_code)
    assert torch.isclose(terms["lip_code"], ((predicted - true_code) ** 2).mean())
    assert torch.isclose(terms["total"], terms["l1"] + terms["lip_code"])
    terms["total"].backward()
    assert model.lip_code_head.weight.grad.abs().sum() > 0
    assert model.lip_code_in.weight.grad.abs().sum() > 0          # the told code reaches the picture
    assert model.audio.parameters().__next__().grad is not None


def test_train_then_render_with_lip_codes_through_torch_and_onnx(processed_clip, tmp_path):
    _, checkpoint, _ = train_tiny_epoch_and_render_both_backends(processed_clip, tmp_path, "--lip_code_dims", "2")
    state = ckpt.read_checkpoint(checkpoint)
    assert state["config"]["lip_code_dims"] == 2
    model, _ = ckpt.load_unet(checkpoint)
    assert model.lip_code_dims == 2 and float(model.lip_code_in.weight.detach().abs().sum()) > 0
    latest = torch.load(checkpoint.parent / "latest.pth", weights_only=False)
    entry = latest["history"][0]
    assert entry["train_lip_code"] > 0 and entry["val_lip_code_mse"] > 0


def test_training_with_codes_and_without_their_landmarks(processed_clip, tmp_path, capsys):
    dataset = make_small_dataset(processed_clip, tmp_path / "talker", CODE_TEST_FRAMES)
    landmarks_file = DatasetLayout(dataset).landmarks_array
    landmarks_file.unlink()
    code, lines = run_main(train_328.main, base_args(dataset, tmp_path / "run", "--epochs", 1,
                                                     "--lip_code_dims", "2"), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "landmarks.npy" in lines[0] and "lip codes" in lines[0] and "process.py" in lines[0], lines
    code, lines = run_main(train_328.main, base_args(dataset, tmp_path / "bad", "--lip_code_dims", "-1"), capsys)
    assert code == 2 and len(lines) == 1 and "--lip_code_dims" in lines[0], lines
    code, lines = run_main(train_328.main, base_args(dataset, tmp_path / "bad_weight", "--lip_code_dims", "2",
                                                     "--lip_code_weight", "-0.5"), capsys)
    assert code == 2 and len(lines) == 1 and "--lip_code_weight" in lines[0] and "-0.5" in lines[0], lines


def test_a_checkpoint_saved_before_the_option_loads_without_codes(tmp_path):
    path = tiny_unet_saved_before(tmp_path, "lip_code_dims", TINY_AUDIO)
    loaded, loaded_config = ckpt.load_unet(path)
    assert loaded.lip_code_dims == 0 and ckpt.unet_options_of(loaded_config)["lip_code_dims"] == 0
    assert loaded.lip_code_head is None
