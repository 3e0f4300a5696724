"""--head_levels N: the U-Net's colour head reads the outputs of the last N decoder stages, the
coarser ones upsampled to full resolution. The model of N starts exactly as the one whose head
reads the full-resolution stage alone (the coarse weights start at zero, every other weight drawn
alike), the coarse path learns and reaches the picture, a checkpoint keeps N and renders the same
through torch and ONNX, and checkpoints saved before the option load as N = 1."""
import pytest
import torch

import train_328
from lipsync.core import checkpoints as ckpt
from models.unet_328 import DOWNSAMPLINGS, WIDTHS, LipSyncUNet
from tests.training_helpers import (responsive_random_weights, tiny_unet_inputs, tiny_unet_pair,
                                    tiny_unet_saved_before, train_tiny_epoch_and_render_both_backends)

TINY_AUDIO = (4, 16, 16)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.mark.parametrize("levels", [2, 3])
def test_the_wider_head_starts_as_the_plain_one(levels):
    plain, wider, extra = tiny_unet_pair(TINY_AUDIO, head_levels=levels)
    assert extra == ["coarse_head.weight"]
    # Tiny's decoder stages at 160 and 80 pixels are 8 and 8 channels wide.
    assert wider.coarse_head.in_channels == sum(WIDTHS["tiny"][1:levels])
    image, audio = tiny_unet_inputs(TINY_AUDIO)
    with torch.no_grad():
        assert torch.equal(plain(image, audio), wider(image, audio))


def test_the_coarse_path_learns_and_changes_the_colours():
    torch.manual_seed(0)
    model = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"], head_levels=3)
    image, audio = tiny_unet_inputs(TINY_AUDIO)
    drawn = model(image, audio)
    torch.nn.functional.l1_loss(drawn, image[:, 3:]).backward()
    assert model.coarse_head.weight.grad.abs().sum() > 0
    model.eval()
    responsive_random_weights(model)
    with torch.no_grad():
        torch.nn.init.zeros_(model.coarse_head.weight)
        before = model(image, audio)
        # Only the 160 x 160 stage's columns: its upsampled features alone recolour the picture.
        model.coarse_head.weight[:, -WIDTHS["tiny"][1]:] = 0.5
        after = model(image, audio)
    assert (after - before).abs().mean() > 1e-3


def test_the_head_reads_the_upsampled_stages():
    """What the docstring promises: one 1x1 convolution of the full-resolution output beside the coarser
    stages' outputs upsampled to full resolution (computed cheaper, mixed before upsampling)."""
    torch.manual_seed(0)
    model = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"], head_levels=3).eval()
    responsive_random_weights(model)
    torch.nn.init.normal_(model.coarse_head.weight, std=0.5)
    outputs = {}

    def keeper(index):
        def keep(module, args, output):
            outputs[index] = output
        return keep

    for index in (-3, -2, -1):
        model.up[index].register_forward_hook(keeper(index))
    image, audio = tiny_unet_inputs(TINY_AUDIO)
    with torch.no_grad():
        drawn = model(image, audio)
        upsampled = [torch.nn.functional.interpolate(outputs[index], size=(320, 320), mode="bilinear",
                                                     align_corners=False) for index in (-3, -2)]
        expected = torch.sigmoid(model.head(outputs[-1]) + model.coarse_head(torch.cat(upsampled, dim=1)))
    assert torch.allclose(drawn, expected, atol=1e-5)
    assert (drawn - torch.sigmoid(model.head(outputs[-1]))).abs().mean() > 1e-3


def test_out_of_range_levels_are_refused_in_one_line(capsys):
    for levels in (0, DOWNSAMPLINGS + 1):
        with pytest.raises(ValueError, match="head_levels"):
            LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"], head_levels=levels)
        with pytest.raises(SystemExit) as exit_info:
            train_328.main(["--name", "nobody", "--head_levels", str(levels), "--quiet"])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == (f"error: --head_levels counts decoder stages: 1 to "
                                                   f"{DOWNSAMPLINGS}, got {levels}")


def test_train_then_render_with_the_wider_head_through_torch_and_onnx(processed_clip, tmp_path):
    _, checkpoint, _ = train_tiny_epoch_and_render_both_backends(processed_clip, tmp_path, "--head_levels", "2")
    assert ckpt.read_checkpoint(checkpoint)["config"]["head_levels"] == 2
    model, _ = ckpt.load_unet(checkpoint)
    # Trained away from zero: the coarse stage draws part of the colours.
    assert model.head_levels == 2 and float(model.coarse_head.weight.detach().abs().sum()) > 0


def test_a_checkpoint_saved_before_the_option_loads_with_one_level(tmp_path):
    path = tiny_unet_saved_before(tmp_path, "head_levels", TINY_AUDIO)
    loaded, loaded_config = ckpt.load_unet(path)
    assert loaded.head_levels == 1 and ckpt.unet_options_of(loaded_config)["head_levels"] == 1
    assert loaded.coarse_head is None
