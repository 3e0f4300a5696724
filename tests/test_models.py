"""The networks: U-Net shapes, widths, audio use and ONNX export; the checkpoint's record of its options; SyncNet;
the VGG19 perceptual loss's weight loading; the one model-input definition."""
import inspect

import numpy as np
import pytest
import torch

from data_utils import crop
from data_utils.crop import CROP_SHAPE
from data_utils.model_input import ColourJitter, build_model_input, choose_reference_index, model_input_batch
from lipsync.core import checkpoints as ckpt
from lipsync.core.errors import UserError
from data_utils.timebase import FEATURE_SPECS
from models.perceptual import VGG19_LAYERS, build_perceptual_loss
from models.syncnet import FACE_ROWS, SyncNet
from models.unet_328 import MASK_TO_EDGES, OPTIONS_BEFORE_THEY_EXISTED, WIDTHS, LipSyncUNet, width_name

TINY_AUDIO = (4, 16, 16)
SYNCTALK_UNET_328_GFLOP = 9.8     # its published unet_328, counted as benchmarks/model_cost.py counts


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def seeded(seed=0):
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def test_unet_tiny_maps_six_channels_and_audio_to_an_rgb_crop():
    seeded()
    # Train mode: batch statistics, as in training (untrained running statistics damp everything).
    model = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"]).train()
    image6 = torch.rand(2, 6, 320, 320)
    audio = torch.randn(2, *TINY_AUDIO)
    with torch.no_grad():
        out = model(image6, audio)
        other_audio = model(image6, torch.randn(2, *TINY_AUDIO))
        other_reference = model(torch.cat([torch.rand(2, 3, 320, 320), image6[:, 3:]], 1), audio)
    assert out.shape == (2, 3, 320, 320)
    assert float(out.min()) >= 0 and float(out.max()) <= 1          # sigmoid RGB
    # Both the audio branch and the reference reach the output.
    assert (out - other_audio).abs().max() > 1e-3
    assert (out - other_reference).abs().max() > 1e-3


@pytest.mark.parametrize("asr", ["ave", "hubert", "wenet"])
def test_unet_builds_for_every_encoder_and_width(asr):
    audio_shape = FEATURE_SPECS[asr].window_shape()
    sizes = {}
    for name, widths in WIDTHS.items():
        model = LipSyncUNet(asr, audio_shape, widths)
        assert model.widths == widths and width_name(model.widths) == name
        assert model.audio.per_frame == int(np.prod(FEATURE_SPECS[asr].per_frame_shape))
        sizes[name] = sum(parameter.numel() for parameter in model.parameters())
    assert WIDTHS["full"] == (32, 64, 128, 256, 512)
    assert sizes["tiny"] < sizes["mobile"] < sizes["base"] < sizes["full"]
    # Five stride-2 stages of inverted residual blocks: 320 -> 10 at the bottleneck.
    strides = [module.stride[0] for module in model.down.modules()
               if isinstance(module, torch.nn.Conv2d) and module.groups > 1]
    assert strides.count(2) == 5


def test_unet_exports_to_onnx_and_matches_torch(tmp_path):
    import onnxruntime

    seeded(1)
    model = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"]).eval()
    image6 = torch.rand(1, 6, 320, 320)
    audio = torch.randn(1, *TINY_AUDIO)
    path = tmp_path / "unet.onnx"
    torch.onnx.export(model, (image6, audio), str(path), opset_version=17, dynamo=False,
                      input_names=["image6", "audio"], output_names=["image"],
                      dynamic_axes={"image6": {0: "batch"}, "audio": {0: "batch"}, "image": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch_image, batch_audio = torch.rand(3, 6, 320, 320), torch.randn(3, *TINY_AUDIO)
    (onnx_out,) = session.run(None, {"image6": batch_image.numpy(), "audio": batch_audio.numpy()})
    with torch.no_grad():
        torch_out = model(batch_image, batch_audio).numpy()
    assert onnx_out.shape == (3, 3, 320, 320)
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4)


def test_a_checkpoint_records_every_unet_option_and_loads_as_the_model_it_saved(tmp_path):
    # An option the record missed would load as its old value: a silently different model.
    built_with = set(inspect.signature(LipSyncUNet).parameters) - {"asr", "audio_shape", "widths"}
    assert built_with == set(OPTIONS_BEFORE_THEY_EXISTED)
    unusual = {"reference_frames": 2, "audio_stages": 2, "mask_to_edges": not MASK_TO_EDGES, "lip_code_dims": 2,
               "head_levels": 3}
    assert set(unusual) == built_with
    torch.manual_seed(0)
    model = LipSyncUNet("ave", TINY_AUDIO, WIDTHS["tiny"], **unusual)
    path = ckpt.save_checkpoint(tmp_path / "1.pth", model.state_dict(), ckpt.unet_config(model, {}), 1)
    loaded, config = ckpt.load_unet(path)
    assert loaded.options() == unusual and ckpt.unet_options_of(config) == unusual
    assert config["model_size"] == "tiny" and tuple(config["audio_shape"]) == TINY_AUDIO
    assert all(torch.equal(loaded.state_dict()[name], value) for name, value in model.state_dict().items())


def test_syncnet_scores_the_mouth_band_with_unit_embeddings():
    seeded(2)
    model = SyncNet("ave", TINY_AUDIO, "tiny").eval()
    faces = torch.rand(3, 3, 320, 320)
    audio = torch.randn(3, *TINY_AUDIO)
    with torch.no_grad():
        logits = model(faces, audio)
        face, voice = model.embeddings(faces, audio)
        outside = faces.clone()
        outside[:, :, :FACE_ROWS.start] = 0           # the nose area is not painted, not judged
        outside[:, :, FACE_ROWS.stop:] = 1
        same = model(outside, audio)
        inside = faces.clone()
        inside[:, :, FACE_ROWS] = 0
        changed = model(inside, audio)
    assert logits.shape == (3,)
    torch.testing.assert_close(face.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(voice.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(same, logits)
    assert (changed - logits).abs().max() > 1e-4


def _random_crop(rng):
    return rng.integers(0, 256, CROP_SHAPE, dtype=np.uint8)


def test_model_input_is_one_definition_for_numpy_and_torch():
    rng = seeded(3)
    targets = [_random_crop(rng) for _ in range(2)]
    references = [_random_crop(rng) for _ in range(2)]
    single = np.stack([build_model_input(t, r) for t, r in zip(targets, references)])
    batched, truth = model_input_batch(torch.from_numpy(np.stack(targets)),
                                       torch.from_numpy(np.stack(references)))
    np.testing.assert_array_equal(batched.numpy(), single)
    assert single.shape == (2, 6, 320, 320) and single.dtype == np.float32
    # Channels 0-2: the reference's inner 320 in RGB; 3-5: the target, lower face black.
    np.testing.assert_array_equal(single[0, :3], references[0][crop.INNER, crop.INNER, ::-1]
                                  .transpose(2, 0, 1) / np.float32(255))
    target_rgb = targets[0][crop.INNER, crop.INNER, ::-1].transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_array_equal(truth[0].numpy(), target_rgb)
    hidden = crop.inner_mask() > 0
    assert np.all(single[0, 3:][:, hidden] == 0)
    np.testing.assert_array_equal(single[0, 3:][:, ~hidden], target_rgb[:, ~hidden])
    with pytest.raises(ValueError, match="328"):
        build_model_input(targets[0][:320, :320], references[0])


def test_colour_jitter_changes_target_and_reference_alike_and_keeps_the_mask_black():
    rng = seeded(4)
    target = torch.from_numpy(_random_crop(rng))[None]
    reference = torch.from_numpy(_random_crop(rng))[None]
    torch.manual_seed(5)
    image6, truth = model_input_batch(target, reference, ColourJitter(0.1, 0.1, 0.05))
    plain6, plain_truth = model_input_batch(target, reference)
    assert (truth - plain_truth).abs().mean() > 1e-3
    hidden = torch.from_numpy(crop.inner_mask() > 0)
    assert torch.all(image6[:, 3:][:, :, hidden] == 0)
    torch.testing.assert_close(image6[:, 3:][:, :, ~hidden], truth[:, :, ~hidden])


def test_reference_is_another_frame_in_training_and_the_frame_itself_at_inference():
    rng = np.random.default_rng(0)
    picks = {choose_reference_index(5, np.arange(10), rng) for _ in range(200)}
    assert 5 not in picks and picks <= set(range(10)) and len(picks) == 9
    assert choose_reference_index(7) == 7


def _fake_vgg19_file(path):
    """A VGG19 weights file with torchvision's key layout and random values."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(6)
    features = make_layers(cfgs["E"])[:VGG19_LAYERS[-1] + 1]
    torch.save({f"features.{key}": value for key, value in features.state_dict().items()}, path)
    return path


def test_perceptual_loss_loads_vgg19_weights_and_compares_features(tmp_path):
    weights = _fake_vgg19_file(tmp_path / "vgg19.pth")
    loss = build_perceptual_loss("on", weights)
    truth = torch.rand(1, 3, 64, 64)
    prediction = truth.clone().requires_grad_(True)
    assert float(loss(prediction, truth).detach()) == 0.0
    worse = loss(truth.flip(-1).requires_grad_(True), truth)
    assert float(worse.detach()) > 0
    darker = (truth * 0.5).requires_grad_(True)
    loss(darker, truth).backward()
    assert darker.grad is not None and darker.grad.abs().sum() > 0      # it trains the U-Net ...
    assert all(not parameter.requires_grad for parameter in loss.parameters())   # ... not VGG


def test_perceptual_loss_without_weights_warns_unless_requested(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with caplog.at_level("WARNING"):
        assert build_perceptual_loss("auto") is None
    assert "training without the perceptual loss" in caplog.text
    assert build_perceptual_loss("off") is None
    with pytest.raises(UserError, match="VGG19 weights not found at .*--perceptual off"):
        build_perceptual_loss("on")
    with pytest.raises(UserError, match="VGG19 weights not found at .*missing.pth"):
        build_perceptual_loss("auto", tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable VGG19 weights file"):
        build_perceptual_loss("on", garbage)


def test_model_cost_prints_one_line_per_size_and_marks_the_default(capsys):
    from benchmarks import model_cost
    from lipsync.train.options import TrainConfig

    rows = model_cost.main([])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(WIDTHS)
    assert [line for line in lines if line.endswith(" *")] == [
        line for line in lines if line.startswith(TrainConfig.model_size + " ")]
    costs = {size: (parameters, gflop) for size, parameters, gflop in rows}
    assert costs["full"][0] == pytest.approx(20.2, abs=0.05)        # the figures issue 11 measured
    assert costs["full"][1] == pytest.approx(24.2, abs=0.1)
    assert costs["tiny"][1] < costs["mobile"][1] < costs["base"][1] < costs["full"][1]
    # The default costs no more than SyncTalk_2D's unet_328 (9.8 GFLOP per frame, issue 11).
    assert TrainConfig.model_size == "base" and costs["base"][1] <= SYNCTALK_UNET_328_GFLOP
