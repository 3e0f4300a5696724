"""--mask_to_edges: the U-Net blacks its masked target out from the mask's top row to the crop's
bottom and side edges, where the jaw and its shadow show the mouth's opening
(benchmarks/mask_leak.py measures how much). The model starts as the one without, draws the
same whatever those strips hold, a checkpoint keeps the flag and renders the same through torch
and ONNX, and checkpoints saved before the option load without it."""
import numpy as np
import pytest
import torch

from benchmarks import mask_leak
from benchmarks.mask_leak import MIN_FRAMES, held_out_r, regions
from data_utils.crop import INNER_SIZE, MASK_BOTTOM, MASK_LEFT, MASK_RIGHT, MASK_TOP
from lipsync.core import checkpoints as ckpt
from models.unet_328 import WIDTHS, LipSyncUNet
from tests.training_helpers import (make_small_dataset, responsive_random_weights, run_main,
                                    tiny_unet_saved_before, train_tiny_epoch_and_render_both_backends)

TINY_AUDIO = (4, 16, 16)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _models():
    torch.manual_seed(5)
    plain = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"], mask_to_edges=False).eval()
    torch.manual_seed(5)
    edged = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"], mask_to_edges=True).eval()
    for model in (plain, edged):
        torch.manual_seed(1)
        responsive_random_weights(model)       # torch's default init paints the same face for any input
    return plain, edged


def _inputs():
    generator = torch.Generator().manual_seed(2)
    return (torch.rand(2, 6, INNER_SIZE, INNER_SIZE, generator=generator),
            torch.randn(2, *TINY_AUDIO, generator=generator))


def test_the_strips_beside_and_below_the_mask_no_longer_reach_the_model():
    plain, edged = _models()
    assert plain.state_dict().keys() == edged.state_dict().keys()      # no new weights, same start
    assert all(torch.equal(value, edged.state_dict()[name]) for name, value in plain.state_dict().items())
    image, audio = _inputs()
    changed = image.clone()
    changed[:, 3:, MASK_BOTTOM:, :] = 1.0                   # the neck band of the masked target
    changed[:, 3:, MASK_TOP:MASK_BOTTOM, :MASK_LEFT] = 0.0   # and its side strips
    changed[:, 3:, MASK_TOP:MASK_BOTTOM, MASK_RIGHT:] = 0.0
    with torch.no_grad():
        assert torch.equal(edged(image, audio), edged(changed, audio))
        assert (plain(image, audio) - plain(changed, audio)).abs().max() > 1e-4
        # The nose band and the reference still count.
        nose = image.clone()
        nose[:, 3:, :MASK_TOP] = 0.0
        reference = image.clone()
        reference[:, :3, MASK_BOTTOM:] = 1.0
        assert (edged(image, audio) - edged(nose, audio)).abs().max() > 1e-4
        assert (edged(image, audio) - edged(reference, audio)).abs().max() > 1e-4


def test_train_then_render_with_the_mask_to_the_edges_through_torch_and_onnx(processed_clip, tmp_path):
    _, checkpoint, _ = train_tiny_epoch_and_render_both_backends(processed_clip, tmp_path, "--mask_to_edges")
    assert ckpt.read_checkpoint(checkpoint)["config"]["mask_to_edges"] is True
    model, _ = ckpt.load_unet(checkpoint)
    assert model.mask_to_edges


def test_a_checkpoint_saved_before_the_option_loads_without_it(tmp_path):
    path = tiny_unet_saved_before(tmp_path, "mask_to_edges", TINY_AUDIO)
    loaded, loaded_config = ckpt.load_unet(path)
    assert not loaded.mask_to_edges and not ckpt.unet_options_of(loaded_config)["mask_to_edges"]


def test_the_leak_regions_split_the_crop():
    named = regions()
    nose, sides, neck = (named[name] for name in ("nose band (above the mask)", "side strips",
                                                  "neck band (below the mask)"))
    repainted = named["the repainted region (the ceiling)"]
    assert not (nose & sides).any() and not (nose & neck).any() and not (sides & neck).any()
    assert not ((nose | sides | neck) & repainted).any()
    assert (nose | sides | neck | repainted).all()
    assert np.array_equal(named["all the masked target shows"], nose | sides | neck)
    assert np.array_equal(named["all it shows with --mask_to_edges"], nose)


def test_the_leak_read_out_finds_an_opening_the_pixels_show_and_none_in_noise():
    rng = np.random.default_rng(0)
    frames = 600
    openings = np.abs(np.sin(np.arange(frames) * 0.37)) * 0.08 + rng.normal(0, 0.002, frames)
    noise = rng.normal(size=(frames, 40))
    leaky = noise.copy()
    leaky[:, 7] += 400 * openings                # one pixel darkens as the jaw drops
    assert held_out_r(leaky, openings) > 0.9
    assert abs(held_out_r(noise, openings)) < 0.3


def test_the_leak_read_out_refuses_a_recording_too_short_to_score_in_one_line(processed_clip, tmp_path, capsys):
    short = make_small_dataset(processed_clip, tmp_path / "short clip", 20)
    code, lines = run_main(mask_leak.main, ["--dataset_dir", str(short)], capsys)
    assert code != 0 and len(lines) == 1
    assert str(short) in lines[0] and "20 frames" in lines[0] and str(MIN_FRAMES) in lines[0]
