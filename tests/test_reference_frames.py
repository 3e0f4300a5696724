"""--reference_frames K: the U-Net sees K reference crops. Training draws K different other
frames (the first as one reference would), the model of K starts as the one-reference model
but for the extra references' filters, and inference gives each frame its own crop plus K - 1
fixed crops spread over the recording, through both backends."""
import numpy as np
import pytest
import torch

import train_328
from data_utils.audio import load_audio
from data_utils.crop import cut_crop
from data_utils.dataset import LipSyncDataset, open_person
from data_utils.layout import DatasetLayout
from data_utils.model_input import (choose_reference_index, choose_reference_indices, model_input_batch,
                                    spread_reference_indices)
from lipsync.core import checkpoints as ckpt
from lipsync.render.api import load_renderer
from models.unet_328 import WIDTHS, LipSyncUNet
from tests.training_helpers import (cut_to_frames, person_with_ave_features, responsive_random_weights,
                                    tiny_unet_saved_before)

TINY_AUDIO = (4, 16, 16)
AVE_WIDTH = 0.25            # a small AVE encoder: inference needs one, its quality does not matter here
FRAMES = 12

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_training_draws_distinct_other_frames_the_first_as_one_reference_would():
    candidates = np.arange(50)
    for frame in (0, 7, 49):
        single = choose_reference_index(frame, candidates, np.random.default_rng(frame))
        several = choose_reference_indices(frame, candidates, np.random.default_rng(frame), 3)
        assert several[0] == single and frame not in several and len(set(several)) == 3
    assert choose_reference_indices(1, [0, 1], np.random.default_rng(0), 3) == [0, 0, 0]   # too few: repeat
    assert spread_reference_indices(np.arange(100, 200), 2) == [125, 175]


def test_many_references_come_first_in_the_input_and_one_reference_is_unchanged():
    crops = torch.randint(0, 256, (2, 4, 328, 328, 3), dtype=torch.uint8)
    target, references = crops[:, 0], crops[:, 1:]
    image, truth = model_input_batch(target, references)
    assert image.shape == (2, 12, 320, 320)
    for k in range(3):
        one, _ = model_input_batch(target, references[:, k])
        assert torch.equal(image[:, 3 * k:3 * k + 3], one[:, :3]) and torch.equal(image[:, -3:], one[:, 3:])


def test_the_extra_references_filters_are_the_only_change_from_the_one_reference_start():
    torch.manual_seed(3)
    one = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"]).state_dict()
    torch.manual_seed(3)
    two = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"], reference_frames=2).state_dict()
    for name, value in one.items():
        if name == "stem.0.0.weight":
            assert two[name].shape[1] == 9
            assert torch.equal(two[name][:, :3], value[:, :3]) and torch.equal(two[name][:, 6:], value[:, 3:])
        else:
            assert torch.equal(two[name], value), name


def test_train_then_render_with_two_references_through_torch_and_onnx(processed_clip, tmp_path):
    person = person_with_ave_features(processed_clip, tmp_path, "talker", AVE_WIDTH)
    cut_to_frames(person.layout, FRAMES)
    dataset = person.root
    run_dir = tmp_path / "checkpoint"
    train_328.main(["--dataset_dir", str(dataset), "--save_dir", str(run_dir), "--asr", "ave",
                    "--model_size", "tiny", "--batch_size", "4", "--num_workers", "0", "--device", "cpu",
                    "--perceptual", "off", "--quiet", "--epochs", "1", "--reference_frames", "2"])
    checkpoint = run_dir / "1.pth"
    assert ckpt.read_checkpoint(checkpoint)["config"]["reference_frames"] == 2

    sample = LipSyncDataset(open_person(dataset, "ave", show_progress=False), [3], np.arange(FRAMES),
                            reference_frames=2)[0]
    assert sample["reference"].shape == (2, 328, 328, 3)

    samples = load_audio(DatasetLayout(dataset).audio_wav)[:int(0.4 * 16000)]
    with load_renderer(dataset_dir=dataset, checkpoint=str(checkpoint), device="cpu") as renderer:
        torch_frames = list(renderer.render(samples))
        spread, = spread_reference_indices(np.arange(FRAMES), 1)
        expected = cut_crop(renderer._read_frame(spread), renderer.boxes[spread])
        assert np.array_equal(renderer.unet.extra_references.numpy(), expected[None])
    with load_renderer(dataset_dir=dataset, checkpoint=str(checkpoint), device="cpu", backend="onnx") as renderer:
        onnx_frames = list(renderer.render(samples))
    assert len(torch_frames) == len(onnx_frames) == 10
    for mine, reference in zip(onnx_frames, torch_frames):
        assert np.abs(mine.astype(int) - reference).max() <= 2

    # The extra reference reaches the picture: with weights that respond to their input (one
    # epoch's barely do), another extra reference draws another lower face.
    with load_renderer(dataset_dir=dataset, checkpoint=str(checkpoint), device="cpu",
                       silence_hold=False) as renderer:
        torch.manual_seed(0)
        responsive_random_weights(renderer.unet.model)
        before = list(renderer.render(samples))
        renderer.unet.use_extra_references(np.zeros((1, 328, 328, 3), np.uint8))
        after = list(renderer.render(samples))
    assert min(np.abs(a.astype(int) - b).mean() for a, b in zip(before, after)) > 0.5


def test_a_one_reference_checkpoint_saved_before_the_option_loads_as_one_reference(tmp_path):
    path = tiny_unet_saved_before(tmp_path, "reference_frames", TINY_AUDIO)
    loaded, loaded_config = ckpt.load_unet(path)
    assert loaded.reference_frames == 1 and ckpt.unet_options_of(loaded_config)["reference_frames"] == 1
