"""Helpers for the training tests: audio features for a processed test clip.

The tests must not download or train a real audio encoder, so features come
from a fixed random projection of the clip's own log-mel spectrogram, averaged
per video frame: real, speech-driven values of the right layout (N, per_frame)
aligned to the frames, written where data_utils/features/extract.py writes them.
"""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from data_utils.audio import MEL_HOP, load_audio, melspectrogram
from data_utils.dataset import read_feature_metadata
from data_utils.features.extract import prepare_dataset_features
from data_utils.layout import DatasetLayout
from data_utils.timebase import FEATURE_SPECS, SAMPLES_PER_FRAME
from lipsync.core.checkpoints import save_checkpoint, unet_config
from lipsync.render.video_writer import write_wav
from models.audio_encoders import AveAudioEncoder
from models.unet_328 import OPTIONS_BEFORE_THEY_EXISTED, WIDTHS, LipSyncUNet

PROJECTION_SEED = 1234
# Small per-frame sizes keep tiny models tiny: 16 x 64 values -> (4, 16, 16) for ave.
TEST_PER_FRAME = {"ave": (64,), "wenet": (64,), "hubert": (2, 32)}


def write_test_features(dataset_dir, asr: str = "ave", per_frame_shape=None) -> Path:
    layout = DatasetLayout(Path(dataset_dir))
    per_frame_shape = tuple(per_frame_shape or TEST_PER_FRAME[asr])
    frames = len(np.load(layout.crop_boxes))
    mel = melspectrogram(load_audio(layout.audio_wav))               # (M, 80) at 80 per second
    mel_per_frame = SAMPLES_PER_FRAME / MEL_HOP                     # 3.2
    rows = []
    for frame in range(frames):
        start = int(frame * mel_per_frame)
        stop = max(int((frame + 1) * mel_per_frame), start + 1)
        chunk = mel[start:stop] if start < len(mel) else mel[-1:]
        rows.append(chunk.mean(axis=0))
    rows = np.stack(rows)
    projection = np.random.default_rng(PROJECTION_SEED).standard_normal(
        (rows.shape[1], int(np.prod(per_frame_shape)))) / np.sqrt(rows.shape[1])
    features = np.tanh(rows @ projection).astype(np.float32).reshape((frames,) + per_frame_shape)
    path = layout.features(asr)
    np.save(path, features)
    path.with_suffix(".json").write_text(json.dumps(
        {"asr": asr, "encoder": "test projection of the log-mel spectrogram",
         "per_frame_shape": list(per_frame_shape), "frames": frames}))
    assert FEATURE_SPECS[asr].window_shape(per_frame_shape)
    return path


SMALL_FRAMES = 12          # 11 train + 1 held-out frame: an epoch is two CPU steps (the ``small`` fixture)


def base_args(dataset_dir, save_dir, *extra):
    """train_328.py's options for a few-second CPU run on a small dataset."""
    return ["--dataset_dir", str(dataset_dir), "--save_dir", str(save_dir), "--asr", "ave",
            "--model_size", "tiny", "--batch_size", "4", "--num_workers", "0", "--device", "cpu",
            "--perceptual", "off", "--quiet", *map(str, extra)]


def run_main(main, argv, capsys):
    """main(argv) that must fail with a UserError: (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return stopped.value.code, capsys.readouterr().err.strip().splitlines()


def make_small_dataset(processed_clip, destination, frames: int = 20, asr: str = "ave") -> Path:
    """A copy of the processed test clip cut to its first ``frames`` frames, with features.

    Real frames, crops and speech, few enough that a CPU epoch takes seconds.
    """
    destination = Path(destination)
    shutil.copytree(processed_clip, destination)
    layout = DatasetLayout(destination)
    for per_frame_array in (layout.crop_boxes, layout.face_found, layout.landmarks_array):
        np.save(per_frame_array, np.load(per_frame_array)[:frames])
    for path in layout.frames_dir.glob("*.jpg"):
        if int(path.stem) >= frames:
            path.unlink()
    write_test_features(destination, asr)
    return destination


def responsive_random_weights(model) -> None:
    """He-normal weights for every convolution and linear layer: a random model whose picture
    depends on its inputs, as a trained one's does. With torch's default init the random tiny
    U-Net paints the same flat mouth for any audio (0.00001 grey levels apart), so a test that
    watches the mouth move would be watching encoder noise."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


def randomise_batch_norm(model) -> None:
    """Trained-looking batch-norm statistics, so exports and fusions must handle them."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)


def person_with_ave_features(processed_clip, base, name: str, ave_width: float):
    """dataset_root/NAME: a copy of the processed clip with a small random AVE encoder
    (ave.pth, seeded) and its real aud_ave.npy, ready for a checkpoint under checkpoint_root."""
    base = Path(base)
    dataset_root, checkpoint_root = base / "dataset", base / "checkpoint"
    root = dataset_root / name
    shutil.copytree(processed_clip, root)
    layout = DatasetLayout(root)
    torch.manual_seed(0)
    encoder = AveAudioEncoder(ave_width)
    randomise_batch_norm(encoder)
    torch.save(encoder.conv_stack.state_dict(), layout.ave_encoder)
    prepare_dataset_features(root, "ave", ave_checkpoint=layout.ave_encoder, progress=False)
    return SimpleNamespace(root=root, layout=layout, dataset_root=dataset_root, checkpoint_root=checkpoint_root,
                           ave=layout.ave_encoder, base=base)


def save_tiny_unet_checkpoint(model, person, name: str, epoch: int) -> Path:
    """checkpoint_root/NAME/EPOCH.pth for a tiny ``model`` trained on ``person``'s ave features."""
    config = unet_config(model, read_feature_metadata(person.layout, "ave"))
    return save_checkpoint(person.checkpoint_root / name / f"{epoch}.pth", model.state_dict(), config, epoch)


def cut_to_frames(layout, frames: int) -> None:
    """Keep a processed dataset's first ``frames`` frames: every per-frame array, the frames, the audio."""
    for per_frame_array in (layout.crop_boxes, layout.face_found, layout.landmarks_array, layout.features("ave")):
        np.save(per_frame_array, np.load(per_frame_array)[:frames])
    for path in layout.frames_dir.glob("*.jpg"):
        if int(path.stem) >= frames:
            path.unlink()
    write_wav(layout.audio_wav, load_audio(layout.audio_wav)[:frames * SAMPLES_PER_FRAME])


def tiny_unet_inputs(audio_shape, batch: int = 2):
    """(image6, audio) of ``batch`` random U-Net inputs, the same every call."""
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(batch, 6, 320, 320, generator=generator),
            torch.randn(batch, *audio_shape, generator=generator))


def tiny_unet_pair(audio_shape, seed: int = 3, **option):
    """(plain, optioned, names only the optioned one has): two tiny U-Nets drawn from the same seed, in
    eval mode, the first with each option ``option`` names at its value before it existed, the second
    with ``option``; every weight the plain one has must be drawn alike."""
    torch.manual_seed(seed)
    before = {name: OPTIONS_BEFORE_THEY_EXISTED[name] for name in option}
    plain = LipSyncUNet("ave", audio_shape, WIDTHS["tiny"], **before).eval()
    torch.manual_seed(seed)
    optioned = LipSyncUNet("ave", audio_shape, WIDTHS["tiny"], **option).eval()
    plain_state, optioned_state = plain.state_dict(), optioned.state_dict()
    assert all(torch.equal(optioned_state[name], value) for name, value in plain_state.items())
    return plain, optioned, sorted(set(optioned_state) - set(plain_state))


def tiny_unet_saved_before(tmp_path, option: str, audio_shape=(4, 16, 16)) -> Path:
    """A tiny U-Net checkpoint whose config lacks ``option``, as one saved before the option existed
    (built as every U-Net was before any of its options existed)."""
    torch.manual_seed(0)
    model = LipSyncUNet("ave", audio_shape, WIDTHS["tiny"], **OPTIONS_BEFORE_THEY_EXISTED)
    config = unet_config(model, {})
    del config[option]
    return save_checkpoint(tmp_path / "1.pth", model.state_dict(), config, 1)


def train_tiny_epoch_and_render_both_backends(processed_clip, tmp_path, *options, frames: int = 12,
                                              seconds: float = 0.4):
    """One tiny U-Net epoch with ``options`` on the first ``frames`` frames of a copy of the clip, then
    ``seconds`` of its audio rendered through torch and onnxruntime, which must agree within 2 levels.

    Returns the person, the checkpoint and the audio samples rendered."""
    import train_328
    from lipsync.render.api import load_renderer

    person = person_with_ave_features(processed_clip, tmp_path, "talker", 0.25)
    cut_to_frames(person.layout, frames)
    run_dir = Path(tmp_path) / "checkpoint"
    train_328.main(["--dataset_dir", str(person.root), "--save_dir", str(run_dir), "--asr", "ave",
                    "--model_size", "tiny", "--batch_size", "4", "--num_workers", "0", "--device", "cpu",
                    "--perceptual", "off", "--quiet", "--epochs", "1", *options])
    checkpoint = run_dir / "1.pth"
    samples = load_audio(person.layout.audio_wav)[:int(seconds * 16000)]
    renders = {}
    for backend in ("torch", "onnx"):
        with load_renderer(dataset_dir=person.root, checkpoint=str(checkpoint), device="cpu", backend=backend,
                           silence_hold=False) as renderer:
            renders[backend] = list(renderer.render(samples))
    assert len(renders["torch"]) == len(renders["onnx"]) == round(seconds * 25)
    for mine, reference in zip(renders["onnx"], renders["torch"]):
        assert np.abs(mine.astype(int) - reference).max() <= 2
    return person, checkpoint, samples
