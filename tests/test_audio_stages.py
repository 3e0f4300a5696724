"""--audio_stages N: the audio embedding scales and shifts the channels of the first N decoder
stages (FiLM) besides its fusion at the bottleneck. The model of N starts exactly as the one
without (zero modulation, every other weight drawn alike), the modulation learns and reaches the
picture, a checkpoint keeps N and renders the same through torch and ONNX, and checkpoints saved
before the option load as N = 0."""
import numpy as np
import pytest
import torch

import train_328
from benchmarks.audio_readout import fit_readout
from lipsync.core import checkpoints as ckpt
from lipsync.core.errors import UserError
from lipsync.evaluate.metrics import opening_scores
from lipsync.render.api import load_renderer
from models.unet_328 import DOWNSAMPLINGS, WIDTHS, LipSyncUNet
from tests.training_helpers import (responsive_random_weights, tiny_unet_inputs, tiny_unet_pair,
                                    tiny_unet_saved_before, train_tiny_epoch_and_render_both_backends)

TINY_AUDIO = (4, 16, 16)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_the_modulated_model_starts_as_the_plain_one():
    plain, modulated, extra = tiny_unet_pair(TINY_AUDIO, audio_stages=3)
    assert extra == sorted(f"audio_film.{index}.{kind}" for index in range(3) for kind in ("weight", "bias"))
    # Each stage's (scale, shift) has its stage's channels: tiny decoder outputs 16, 16, 8 wide.
    assert [layer.out_features for layer in modulated.audio_film] == [32, 32, 16]
    image, audio = tiny_unet_inputs(TINY_AUDIO)
    with torch.no_grad():
        assert torch.equal(plain(image, audio), modulated(image, audio))


def test_the_modulation_learns_and_changes_the_picture():
    torch.manual_seed(0)
    model = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"], audio_stages=DOWNSAMPLINGS)
    image, audio = tiny_unet_inputs(TINY_AUDIO)
    model(image, audio).mean().backward()
    for layer in model.audio_film:
        assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    model.eval()
    responsive_random_weights(model)       # torch's default init paints the same face for any input
    with torch.no_grad():
        for layer in model.audio_film:
            torch.nn.init.zeros_(layer.weight)
        before = model(image, audio)
        torch.nn.init.normal_(model.audio_film[0].weight, std=0.5)
        after = model(image, audio)
    assert (after - before).abs().mean() > 1e-3


def test_out_of_range_stages_are_refused_in_one_line(capsys):
    with pytest.raises(ValueError, match="audio_stages"):
        LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"], audio_stages=DOWNSAMPLINGS + 1)
    with pytest.raises(SystemExit) as exit_info:
        train_328.main(["--name", "nobody", "--audio_stages", str(DOWNSAMPLINGS + 1), "--quiet"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --audio_stages counts decoder stages: 0 to {DOWNSAMPLINGS}, " \
                                             f"got {DOWNSAMPLINGS + 1}"


def test_train_then_render_with_modulated_stages_through_torch_and_onnx(processed_clip, tmp_path):
    person, checkpoint, samples = train_tiny_epoch_and_render_both_backends(processed_clip, tmp_path,
                                                                            "--audio_stages", "3")
    assert ckpt.read_checkpoint(checkpoint)["config"]["audio_stages"] == 3
    model, _ = ckpt.load_unet(checkpoint)
    assert model.audio_stages == 3 and float(model.audio_film[0].weight.detach().abs().sum()) > 0   # trained away from 0

    # The modulation reaches the picture: with weights that respond to their input (one epoch's
    # barely do), silencing it draws another lower face.
    with load_renderer(dataset_dir=person.root, checkpoint=str(checkpoint), device="cpu",
                       silence_hold=False) as renderer:
        torch.manual_seed(0)
        responsive_random_weights(renderer.unet.model)
        modulated = list(renderer.render(samples))
        for layer in renderer.unet.model.audio_film:
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
        unmodulated = list(renderer.render(samples))
    assert min(np.abs(a.astype(int) - b).mean() for a, b in zip(modulated, unmodulated)) > 0.5


def test_a_checkpoint_saved_before_the_option_loads_unmodulated(tmp_path):
    path = tiny_unet_saved_before(tmp_path, "audio_stages", TINY_AUDIO)
    loaded, loaded_config = ckpt.load_unet(path)
    assert loaded.audio_stages == 0 and ckpt.unet_options_of(loaded_config)["audio_stages"] == 0
    assert len(loaded.audio_film) == 0


def test_the_readout_recovers_an_opening_the_embedding_holds():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(400, 16))
    openings = 0.03 + 0.01 * embeddings[:, 2] - 0.005 * embeddings[:, 7]
    openings[::50] = np.nan                       # frames without a face are skipped, not fitted
    predict = fit_readout(embeddings[:300], openings[:300])
    scores = opening_scores(predict(embeddings[300:]), openings[300:])
    assert scores["opening_correlation"] > 0.999 and scores["opening_offset"] == 0
    assert abs(scores["opening_ratio"] - 1) < 0.01
    noise = fit_readout(rng.normal(size=(300, 16)), openings[:300])
    assert opening_scores(noise(embeddings[300:]), openings[300:])["opening_correlation"] < 0.5


def test_a_readout_from_too_few_faces_is_refused_in_one_line():
    openings = np.full(20, np.nan)
    openings[:5] = 0.02
    with pytest.raises(UserError, match="^5 frames with a face are too few to fit a read-out$"):
        fit_readout(np.random.default_rng(0).normal(size=(20, 16)), openings)
